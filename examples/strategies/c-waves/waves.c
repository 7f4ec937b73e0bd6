// Example custom strategy in C: moves the app from the active revision to the target in
// waves of a fixed number of replicas. The same strategy as ../rust-waves, ../python-waves
// and ../js-waves.
//
// Each wave scales the target up by `wave-size`, waits for the new instances to be ready,
// splits traffic in proportion to the ready instances that stay, and scales the active
// revision down by the same amount. The last step sends all traffic to the target. The
// app's `pre` and `post` hooks run before the first wave and after the last.
//
// Parameters (the spec's strategy `params`, a JSON document):
//   wave-size        replicas per wave, at least 1 (default 1)
//   timeout-seconds  how long each wave may wait for its instances (default 120)
//
// Build with `make` (see README.md). The bindings, strategy.h and strategy.c, are in
// sdk/c/strategy, generated from sdk/wit/deploy.wit by wit-bindgen's C generator.
//
// How the generated bindings work, in short:
// - The export is `exports_slipway_deploy_strategy_handler_run(ctx, ret, err)`: fill `*ret`
//   and return true, or fill `*err` and return false.
// - Host calls that return `result<T, error>` return true with `*ret` filled, or false with
//   `*err` filled. Returning such an error as it is from `run` fails the rollout with it
//   (what `?` does in Rust); its strings are already on the heap.
// - Arguments given to the export (`ctx`) belong to the guest: free them when done.
// - Strings given to host calls are only borrowed: a literal or a stack buffer is fine.
// - Strings returned to the host (the summary, an error's message) must be on the heap:
//   see heap_string below.

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"

typedef slipway_deploy_types_error_t host_error_t;
typedef slipway_deploy_types_replica_counts_t counts_t;
typedef slipway_deploy_types_route_weight_t route_weight_t;

// ---------------------------------------------------------------------------------------
// Strings and errors

// Formats a string into heap memory for the host to take.
//
// Every string the strategy returns (the outcome's summary, an error's message) MUST be
// heap memory (malloc, strdup, strategy_string_dup): after the host has copied the result,
// the generated post-return code calls free() on each of its strings. A string literal set
// with strategy_string_set() would be handed to free(), which is undefined behaviour that
// passes silently (the message may even arrive intact), so nothing warns you.
static void heap_string(strategy_string_t *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void heap_string(strategy_string_t *out, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int len = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    if (len <= 0) {
        out->ptr = NULL;
        out->len = 0;
        return;
    }
    char *buf = malloc((size_t)len + 1);
    if (buf == NULL) abort();
    va_start(args, fmt);
    vsnprintf(buf, (size_t)len + 1, fmt, args);
    va_end(args);
    out->ptr = (uint8_t *)buf;
    out->len = (size_t)len;
}

// Sets `err` to the host API's `invalid` error with a heap-allocated message; returns false
// so that callers can `return invalid(err, ...)`.
static bool invalid(host_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool invalid(host_error_t *err, const char *fmt, ...) {
    char message[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    err->tag = SLIPWAY_DEPLOY_TYPES_ERROR_INVALID;
    heap_string(&err->val.invalid, "%s", message);
    return false;
}

// Writes a line to the rollout's log. The host only borrows the string: a stack buffer is fine.
static void log_line(slipway_deploy_types_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_line(slipway_deploy_types_log_level_t level, const char *fmt, ...) {
    char line[512];
    va_list args;
    va_start(args, fmt);
    int len = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (len < 0) return;
    strategy_string_t message = {(uint8_t *)line, strlen(line)};
    slipway_deploy_logging_log(level, &message);
}

static void progress(uint8_t percent, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void progress(uint8_t percent, const char *fmt, ...) {
    char line[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    strategy_string_t message = {(uint8_t *)line, strlen(line)};
    slipway_deploy_lifecycle_progress(percent, &message);
}

// ---------------------------------------------------------------------------------------
// Parameters: a minimal JSON reader for one flat object of non-negative integers. It refuses
// unknown names, repeated names and values that are not non-negative integers, naming the key.

struct params {
    uint32_t wave_size;
    uint64_t timeout_seconds;
};

struct cursor {
    const char *p;
    const char *end;
};

static void skip_ws(struct cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

// Moves past a JSON string that starts at c->p (a quote); false if it does not end.
static bool skip_string(struct cursor *c) {
    c->p++;  // the opening quote
    while (c->p < c->end) {
        char ch = *c->p++;
        if (ch == '\\') {
            if (c->p == c->end) return false;
            c->p++;
        } else if (ch == '"') {
            return true;
        }
    }
    return false;
}

// Moves past one JSON value (string, object, array, number or literal) without checking it
// closely; false if it is cut short.
static bool skip_value(struct cursor *c) {
    if (c->p == c->end) return false;
    if (*c->p == '"') return skip_string(c);
    if (*c->p == '{' || *c->p == '[') {
        int depth = 0;
        while (c->p < c->end) {
            char ch = *c->p;
            if (ch == '"') {
                if (!skip_string(c)) return false;
                continue;
            }
            c->p++;
            if (ch == '{' || ch == '[') depth++;
            if ((ch == '}' || ch == ']') && --depth == 0) return true;
        }
        return false;
    }
    const char *start = c->p;
    while (c->p < c->end && strchr(",}] \t\r\n", *c->p) == NULL) c->p++;
    return c->p > start;
}

// Reads a non-negative integer from [text, text + len): 0 when it is one of at most `max`,
// 1 when it is not a non-negative integer at all, 2 when it is one but larger than `max`.
static int read_uint(const char *text, size_t len, uint64_t max, uint64_t *out) {
    if (len == 0) return 1;
    uint64_t value = 0;
    bool too_large = false;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9') return 1;
        uint64_t digit = (uint64_t)(text[i] - '0');
        if (too_large || value > (max - digit) / 10) {
            too_large = true;
            continue;
        }
        value = value * 10 + digit;
    }
    if (too_large) return 2;
    *out = value;
    return 0;
}

// How many of the `len` bytes at `s` to show in a message: at most `max`, cut back to the
// start of a UTF-8 character, since every string handed to the host must be valid UTF-8.
static int shown(const char *s, size_t len, size_t max) {
    if (len <= max) return (int)len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return (int)max;
}

#define PARAMS "strategy parameters: "
#define EXPECTED "expected one of `wave-size`, `timeout-seconds`"

static bool parse_params(const strategy_string_t *raw, struct params *out, host_error_t *err) {
    out->wave_size = 1;
    out->timeout_seconds = 120;

    struct cursor c = {(const char *)raw->ptr, (const char *)raw->ptr + raw->len};
    skip_ws(&c);
    if (c.p == c.end) return true;  // no parameters: the defaults
    if (*c.p != '{') return invalid(err, PARAMS "expected a JSON object");
    c.p++;
    skip_ws(&c);

    bool seen[2] = {false, false};
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            skip_ws(&c);
            if (c.p == c.end || *c.p != '"') return invalid(err, PARAMS "not JSON: expected a field name");
            const char *key = c.p + 1;
            if (!skip_string(&c)) return invalid(err, PARAMS "not JSON: a field name does not end");
            size_t key_bytes = (size_t)(c.p - 1 - key);
            int key_len = shown(key, key_bytes, 100);  // for messages

            skip_ws(&c);
            if (c.p == c.end || *c.p != ':')
                return invalid(err, PARAMS "not JSON: expected `:` after `%.*s`", key_len, key);
            c.p++;
            skip_ws(&c);
            const char *value = c.p;
            if (!skip_value(&c)) return invalid(err, PARAMS "not JSON: the value of `%.*s` is missing or cut short", key_len, key);
            size_t value_len = (size_t)(c.p - value);

            int field;
            uint64_t max;
            if (key_bytes == 9 && memcmp(key, "wave-size", 9) == 0) {
                field = 0;
                max = UINT32_MAX;
            } else if (key_bytes == 15 && memcmp(key, "timeout-seconds", 15) == 0) {
                field = 1;
                max = UINT64_MAX;
            } else {
                return invalid(err, PARAMS "unknown field `%.*s`, " EXPECTED, key_len, key);
            }
            if (seen[field]) return invalid(err, PARAMS "duplicate field `%.*s`", key_len, key);
            seen[field] = true;

            uint64_t number;
            int bad = read_uint(value, value_len, max, &number);
            if (bad) {
                int value_shown = shown(value, value_len, 60);
                const char *more = (size_t)value_shown < value_len ? "…" : "";
                if (bad == 2)
                    return invalid(err, PARAMS "`%.*s` must be at most %llu, found %.*s%s", key_len, key,
                                   (unsigned long long)max, value_shown, value, more);
                return invalid(err, PARAMS "`%.*s` must be a non-negative integer, found %.*s%s", key_len, key,
                               value_shown, value, more);
            }
            if (field == 0) {
                out->wave_size = (uint32_t)number;
            } else {
                out->timeout_seconds = number;
            }

            skip_ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            return invalid(err, PARAMS "not JSON: expected `,` or `}` after the value of `%.*s`", key_len, key);
        }
    }
    skip_ws(&c);
    if (c.p != c.end) return invalid(err, PARAMS "not JSON: trailing characters after the object");
    if (out->wave_size < 1) return invalid(err, PARAMS "wave-size must be at least 1");
    return true;
}

// ---------------------------------------------------------------------------------------
// The strategy

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

static uint8_t percent(uint32_t done, uint32_t total) {
    if (total == 0) return 100;
    uint64_t p = (uint64_t)done * 100 / total;
    return (uint8_t)(p > 100 ? 100 : p);
}

// Splits the route's 256 weight units in proportion to the shares, giving every revision
// with a non-zero share at least 1 and leaving out the rest (the rule of the Rust SDK's
// `split_weights`). Returns how many entries it wrote to `out`.
static size_t split_weights(const route_weight_t *shares, size_t n, route_weight_t *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += shares[i].weight;
    size_t written = 0;
    if (total == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        if (shares[i].weight == 0) continue;
        uint64_t weight = (uint64_t)shares[i].weight * 256 / total;
        out[written].revision = shares[i].revision;
        out[written].weight = (uint32_t)(weight < 1 ? 1 : weight);
        written++;
    }
    return written;
}

// Runs the app's hook at `point`; its failure policy decides whether an error comes back.
static bool run_hook(slipway_deploy_types_hook_point_t point, const char *name, host_error_t *err) {
    slipway_deploy_types_hook_status_t status;
    if (!slipway_deploy_lifecycle_run_hook(point, &status, err)) return false;
    if (status == SLIPWAY_DEPLOY_TYPES_HOOK_STATUS_SUCCEEDED) {
        log_line(SLIPWAY_DEPLOY_TYPES_LOG_LEVEL_INFO, "%s hook succeeded", name);
    } else if (status == SLIPWAY_DEPLOY_TYPES_HOOK_STATUS_FAILURE_IGNORED) {
        log_line(SLIPWAY_DEPLOY_TYPES_LOG_LEVEL_WARN, "%s hook failed; its policy ignores that", name);
    }
    return true;
}

static bool waves(const slipway_deploy_types_rollout_context_t *ctx, slipway_deploy_types_outcome_t *ret,
                  host_error_t *err) {
    struct params params;
    if (!parse_params(&ctx->params, &params, err)) return false;
    uint64_t timeout_ms = params.timeout_seconds > UINT64_MAX / 1000 ? UINT64_MAX : params.timeout_seconds * 1000;
    slipway_deploy_types_revision_t target = ctx->target;
    // On a redeploy of the serving revision there is nothing to move away from.
    bool has_active = ctx->active.is_some && ctx->active.val.number != target.number;
    uint32_t active = has_active ? ctx->active.val.number : 0;

    if (!run_hook(SLIPWAY_DEPLOY_TYPES_HOOK_POINT_PRE, "pre", err)) return false;

    // Start from what the host observes, so that a resumed rollout carries on where it was.
    counts_t counts;
    if (!slipway_deploy_scaling_counts(target.number, &counts, err)) return false;
    uint32_t target_up = min_u32(counts.desired, target.replicas);
    uint32_t active_left = 0;
    if (has_active) {
        if (!slipway_deploy_scaling_counts(active, &counts, err)) return false;
        active_left = counts.desired;
    }

    uint32_t wave = 0;
    while (target_up < target.replicas) {
        wave++;
        uint32_t step = min_u32(params.wave_size, target.replicas - target_up);
        target_up += step;
        progress(percent(target_up - step, target.replicas), "wave %u: scaling revision %u to %u", wave,
                 target.number, target_up);

        if (!slipway_deploy_scaling_scale(target.number, target_up, err)) return false;
        if (!slipway_deploy_scaling_wait_ready(target.number, target_up, timeout_ms, &counts, err)) return false;
        uint32_t ready = counts.ready;

        // Traffic follows the ready instances that remain after this wave, so no weight
        // points at instances that are about to be drained.
        route_weight_t shares[2] = {{target.number, ready}, {0, 0}};
        size_t n = 1;
        if (has_active) {
            active_left = active_left > step ? active_left - step : 0;
            if (!slipway_deploy_scaling_counts(active, &counts, err)) return false;
            shares[n++] = (route_weight_t){active, min_u32(counts.ready, active_left)};
        }
        route_weight_t weights[2];
        slipway_deploy_routing_list_route_weight_t list = {weights, split_weights(shares, n, weights)};
        if (!slipway_deploy_routing_set_weights(&list, err)) return false;

        char described[64] = "";
        for (size_t i = 0; i < list.len; i++) {
            size_t used = strlen(described);
            snprintf(described + used, sizeof described - used, "%sr%u=%u", i ? " " : "", weights[i].revision,
                     weights[i].weight);
        }
        log_line(SLIPWAY_DEPLOY_TYPES_LOG_LEVEL_INFO, "wave %u: %u ready on revision %u, weights %s", wave, ready,
                 target.number, described);

        if (has_active && !slipway_deploy_scaling_scale(active, active_left, err)) return false;
    }

    route_weight_t all[1] = {{target.number, 256}};
    slipway_deploy_routing_list_route_weight_t list = {all, 1};
    if (!slipway_deploy_routing_set_weights(&list, err)) return false;
    // The active revision had more replicas than the target: retire the rest.
    if (has_active && active_left > 0 && !slipway_deploy_scaling_scale(active, 0, err)) return false;
    progress(100, "revision %u serves all traffic", target.number);

    if (!run_hook(SLIPWAY_DEPLOY_TYPES_HOOK_POINT_POST, "post", err)) return false;

    // Heap memory: the generated post-return code frees it (see heap_string).
    heap_string(&ret->summary, "%u of %u replicas on revision %u in %u wave(s) of up to %u", target.replicas,
                target.replicas, target.number, wave, params.wave_size);
    return true;
}

// The export. `ctx` and the strings in it belong to the guest: free them before returning.
bool exports_slipway_deploy_strategy_handler_run(exports_slipway_deploy_strategy_handler_rollout_context_t *ctx,
                                                 exports_slipway_deploy_strategy_handler_outcome_t *ret,
                                                 exports_slipway_deploy_strategy_handler_error_t *err) {
    bool ok = waves(ctx, ret, err);
    slipway_deploy_types_rollout_context_free(ctx);
    return ok;
}
