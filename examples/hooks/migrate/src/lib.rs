//! Example lifecycle hook: runs a migration command in the target revision's environment,
//! like OpenShift's `execNewPod` pre-hook.
//!
//! The command runs with `hook-env.exec`: in the working directory and with the environment
//! of the target revision's instances (plus `SLIPWAY_APP` and `SLIPWAY_REVISION`), so it
//! migrates the database to the schema the new code expects before any of it serves
//! traffic. The hook fails, with the end of the command's output, when the command exits
//! with anything but 0 or is killed; the hook's `policy` then decides what happens to the
//! rollout.
//!
//! Parameters (the hook's `params` in the spec):
//!
//! - `command` (required): the program and its arguments, e.g. `["./migrate", "--up"]`.
//! - `timeout-seconds`: how long the command may run before it is killed (default 300).
//!   The hook's own `timeout` caps it, so set that higher.
//!
//! The hook needs `grants = ["exec"]`. Build and upload it (from the workspace root):
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --release -p example-hook-migrate
//! slipway module push target/wasm32-wasip2/release/example_hook_migrate.wasm --name migrate
//! ```
//!
//! and use it in `slipway.toml`:
//!
//! ```toml
//! [hooks.pre]
//! module = "migrate"
//! params = { command = ["./migrate", "--up"], timeout-seconds = 300 }
//! timeout = "6m"
//! policy = "abort"
//! grants = ["exec"]
//! ```

use serde::Deserialize;
use slipway_sdk::hook::{Hook, HookContext, HookPoint, LogLevel, clock, hook_env, logging};

/// Example parameters, shown in the error for a missing or malformed `command`.
const EXAMPLE: &str = r#"params = { command = ["./migrate", "--up"], timeout-seconds = 300 }"#;

/// How many of the last lines of the command's output go into a failure (joined with " | ",
/// as events are one line each).
const TAIL_LINES: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    command: Option<Vec<String>>,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    300
}

struct Migrate;

impl Hook for Migrate {
    fn run(ctx: HookContext) -> Result<(), String> {
        let raw = if ctx.params.trim().is_empty() {
            "{}"
        } else {
            ctx.params.as_str()
        };
        let params: Params =
            serde_json::from_str(raw).map_err(|e| format!("migrate: bad params ({e}); expected e.g. {EXAMPLE}"))?;
        let command = match params.command {
            Some(command) if command.first().is_some_and(|program| !program.is_empty()) => command,
            Some(_) => {
                return Err(format!(
                    "migrate: params.command is empty; give the program first, e.g. {EXAMPLE}"
                ));
            }
            None => {
                return Err(format!(
                    "migrate: params.command is required: the migration command, e.g. {EXAMPLE}"
                ));
            }
        };
        if params.timeout_seconds == 0 {
            return Err(format!(
                "migrate: params.timeout-seconds must be at least 1, e.g. {EXAMPLE}"
            ));
        }
        let shown = command.join(" ");

        let again = if ctx.attempt > 1 {
            format!(", attempt {}", ctx.attempt)
        } else {
            String::new()
        };
        logging::log(
            LogLevel::Info,
            &format!(
                "migrate: running `{shown}` for revision {} at {}{again} (timeout {} s)",
                ctx.target.number,
                point_name(ctx.point),
                params.timeout_seconds
            ),
        );
        let started = clock::now();
        let output = hook_env::exec(&command, params.timeout_seconds.saturating_mul(1000))
            .map_err(|e| format!("migrate: could not run `{shown}`: {}", slipway_sdk::hook::describe(&e)))?;
        let seconds = clock::now().saturating_sub(started) as f64 / 1000.0;
        let tail = last_lines(&output.output_tail, TAIL_LINES);

        match output.exit_code {
            Some(0) => {
                // The host logs the end of the output itself; repeat only the last line.
                let output_note = match last_lines(&output.output_tail, 1) {
                    last if last.is_empty() => String::from(" (no output)"),
                    last => format!(": {last}"),
                };
                logging::log(
                    LogLevel::Info,
                    &format!("migrate: `{shown}` succeeded in {seconds:.1} s{output_note}"),
                );
                Ok(())
            }
            Some(code) => Err(format!(
                "migrate: `{shown}` exited with code {code} after {seconds:.1} s: {tail}"
            )),
            None => Err(format!(
                "migrate: `{shown}` was killed after {seconds:.1} s (timeout of {} s, or a signal): {tail}",
                params.timeout_seconds
            )),
        }
    }
}

/// The last `n` non-blank lines of `text`, joined with " | ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn point_name(point: HookPoint) -> &'static str {
    match point {
        HookPoint::Pre => "pre",
        HookPoint::Mid => "mid",
        HookPoint::Post => "post",
        HookPoint::Rollback => "rollback",
    }
}

slipway_sdk::export_hook!(Migrate);
