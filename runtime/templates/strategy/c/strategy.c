// {{name}}: a Slipway deployment strategy. It brings the new revision up whole beside the
// active one, moves all traffic to it once every instance is ready, then retires the active
// revision. Change `run` to make it yours; `slipway test scenarios.toml` checks it.
//
// The bindings in bindings/ (strategy.h, strategy.c, strategy_component_type.o) are
// generated from wit/deploy.wit; do not edit them. How they work, in short:
// - Host calls that return `result<T, error>` return true with `*ret` filled, or false with
//   `*err` filled; returning that error from `run` fails the rollout (Slipway rolls back).
// - Strings handed to host calls are only borrowed: literals and stack buffers are fine.
// - Strings returned to the host (the summary, an error's message) MUST be heap memory
//   (see heap_string): the generated code frees them after the host has copied them.
// - `ctx` belongs to the guest: free it before returning.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"

typedef slipway_deploy_types_error_t host_error_t;

// Formats a string into heap memory, for the host to take (and free).
static void heap_string(strategy_string_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void heap_string(strategy_string_t *out, const char *fmt, ...) {
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    strategy_string_dup(out, text);
}

// printf reaches the rollout's log (stdout as info, stderr as warn), a line each.

// The spec's `[strategy] params`: `{}` or `{"timeout-seconds": N}`; anything else is refused
// before anything changes.
static bool read_params(const strategy_string_t *raw, unsigned long long *timeout_seconds, host_error_t *err) {
    char text[256] = "";
    if (raw->len >= sizeof text) goto bad;
    memcpy(text, raw->ptr, raw->len);
    int end = 0;
    if (sscanf(text, " { } %n", &end) == 0 && end > 0 && text[end] == '\0') return true;
    end = 0;
    if (sscanf(text, " { \"timeout-seconds\" : %llu } %n", timeout_seconds, &end) == 1 && end > 0 && text[end] == '\0')
        return true;
bad:
    err->tag = SLIPWAY_DEPLOY_TYPES_ERROR_INVALID;
    heap_string(&err->val.invalid, "strategy parameters: expected {} or {\"timeout-seconds\": N}, got %.200s", text);
    return false;
}

static bool run(const slipway_deploy_types_rollout_context_t *ctx, slipway_deploy_types_outcome_t *ret,
                host_error_t *err) {
    unsigned long long timeout_seconds = 300;
    if (!read_params(&ctx->params, &timeout_seconds, err)) return false;
    slipway_deploy_types_revision_t target = ctx->target;
    if (!slipway_deploy_scaling_scale(target.number, target.replicas, err)) return false;
    // A timeout comes back as an error: returning it fails the rollout, and Slipway rolls back.
    slipway_deploy_types_replica_counts_t counts;
    if (!slipway_deploy_scaling_wait_ready(target.number, target.replicas, timeout_seconds * 1000, &counts, err))
        return false;
    printf("%u of %u ready on revision %u\n", counts.ready, target.replicas, target.number);
    fflush(stdout);
    slipway_deploy_types_route_weight_t all[1] = {{target.number, 256}};
    slipway_deploy_routing_list_route_weight_t weights = {all, 1};
    if (!slipway_deploy_routing_set_weights(&weights, err)) return false;
    if (ctx->active.is_some && ctx->active.val.number != target.number) {
        if (!slipway_deploy_scaling_scale(ctx->active.val.number, 0, err)) return false;
    }
    heap_string(&ret->summary, "%u replicas on revision %u", target.replicas, target.number);
    return true;
}

bool exports_slipway_deploy_strategy_handler_run(exports_slipway_deploy_strategy_handler_rollout_context_t *ctx,
                                                 exports_slipway_deploy_strategy_handler_outcome_t *ret,
                                                 exports_slipway_deploy_strategy_handler_error_t *err) {
    bool ok = run(ctx, ret, err);
    slipway_deploy_types_rollout_context_free(ctx);
    return ok;
}
