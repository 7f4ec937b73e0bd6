// {{name}}: a Slipway lifecycle hook. It runs `params.command` in the target revision's
// environment (its working directory and environment, like a migration before the new code
// serves) and fails with the end of the command's output if it exits with anything but 0.
// Change `run` to make it yours; `slipway test scenarios.toml` checks it.
//
// The bindings in bindings/ (hook.h, hook.c, hook_component_type.o) are generated from
// wit/deploy.wit; do not edit them. How they work, in short:
// - Host calls that return `result<T, error>` return true with `*ret` filled, or false with
//   `*err` filled.
// - Strings handed to host calls are only borrowed: literals and stack buffers are fine.
// - The error message a hook returns MUST be heap memory (see fail): the generated code
//   frees it after the host has copied it.
// - `ctx` belongs to the guest: free it before returning.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hook.h"

#define MAX_ARGS 32
#define EXAMPLE "{\"command\": [\"./migrate\", \"--up\"]}"

// Sets the hook's error message (heap memory, for the host to take) and returns false.
static bool fail(hook_string_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fail(hook_string_t *err, const char *fmt, ...) {
    char text[1024];
    va_list args;
    va_start(args, fmt);
    int len = vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (len >= (int)sizeof text) {
        // Cut short: drop a last character cut in half; the host takes only UTF-8.
        size_t end = sizeof text - 1;
        while (end > 0 && ((unsigned char)text[end - 1] & 0xC0) == 0x80) end--;
        if (end > 0 && (unsigned char)text[end - 1] >= 0xC0) end--;
        text[end] = '\0';
    }
    hook_string_dup(err, text);
    return false;
}

// The hook's `params`: {"command": ["PROGRAM", "ARG", ...]}, strings without escapes.
// Reads the strings into `args` (pointing into `text`, which it changes); false if the
// params are not of that form.
static bool read_command(char *text, hook_string_t *args, size_t *count) {
    char *p = strstr(text, "\"command\"");
    if (p == NULL) return false;
    p = strchr(p + strlen("\"command\""), '[');
    if (p == NULL) return false;
    p++;
    *count = 0;
    for (;;) {
        p += strspn(p, " \t\r\n,");
        if (*p == ']') return *count > 0 && args[0].len > 0;
        if (*p != '"' || *count == MAX_ARGS) return false;
        char *start = ++p;
        char *end = strchr(start, '"');
        if (end == NULL || memchr(start, '\\', (size_t)(end - start)) != NULL) return false;
        args[*count].ptr = (uint8_t *)start;
        args[*count].len = (size_t)(end - start);
        (*count)++;
        p = end + 1;
    }
}

static bool run(const slipway_deploy_types_hook_context_t *ctx, hook_string_t *err) {
    char text[2048] = "";
    if (ctx->params.len >= sizeof text) return fail(err, "{{name}}: params are over %zu bytes", sizeof text - 1);
    memcpy(text, ctx->params.ptr, ctx->params.len);
    hook_string_t args[MAX_ARGS];
    size_t count = 0;
    if (!read_command(text, args, &count))
        return fail(err, "{{name}}: params.command must be the program and its arguments, e.g. " EXAMPLE);
    // printf reaches the rollout's log (stdout as info, stderr as warn), a line each.
    printf("{{name}}: running %.*s for revision %u\n", (int)args[0].len, (const char *)args[0].ptr,
           ctx->target.number);
    fflush(stdout);
    // exec needs grants = ["exec"] on the hook in the app's spec.
    hook_list_string_t list = {args, count};
    slipway_deploy_hook_env_exec_output_t output;
    slipway_deploy_hook_env_error_t error;
    if (!slipway_deploy_hook_env_exec(&list, 300 * 1000, &output, &error)) {
        bool ok = fail(err, "{{name}}: could not run the command (host error %d)", (int)error.tag);
        slipway_deploy_hook_env_error_free(&error);
        return ok;
    }
    bool ok = output.exit_code.is_some && output.exit_code.val == 0;
    if (ok) {
        printf("{{name}}: the command succeeded\n");
        fflush(stdout);
    } else if (output.exit_code.is_some) {
        fail(err, "{{name}}: the command exited with %d: %.*s", (int)output.exit_code.val, (int)output.output_tail.len,
             (const char *)output.output_tail.ptr);
    } else {
        fail(err, "{{name}}: the command was killed: %.*s", (int)output.output_tail.len,
             (const char *)output.output_tail.ptr);
    }
    slipway_deploy_hook_env_exec_output_free(&output);
    return ok;
}

bool exports_slipway_deploy_hook_handler_run(exports_slipway_deploy_hook_handler_hook_context_t *ctx,
                                             hook_string_t *err) {
    bool ok = run(ctx, err);
    slipway_deploy_types_hook_context_free(ctx);
    return ok;
}
