//! {{name}}: a Slipway lifecycle hook. It runs `params.command` in the target revision's
//! environment (its working directory and environment, like a migration before the new code
//! serves) and fails with the end of the command's output if it exits with anything but 0.
//! Change `run` to make it yours; `slipway test scenarios.toml` checks it.

use serde::Deserialize;
use slipway_sdk::hook::{Hook, HookContext, LogLevel, hook_env, logging};

/// The hook's `params` in the app's spec; an unknown name fails the hook, naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    command: Vec<String>,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    300
}

struct MyHook;

impl Hook for MyHook {
    fn run(ctx: HookContext) -> Result<(), String> {
        let params: Params = serde_json::from_str(&ctx.params)
            .map_err(|e| format!("{{name}}: params: {e}; expected e.g. {{\"command\": [\"./migrate\", \"--up\"]}}"))?;
        if params.command.first().is_none_or(|program| program.is_empty()) {
            return Err("{{name}}: params.command is empty; give the program first".into());
        }
        let shown = params.command.join(" ");
        // println! reaches the rollout's log, as does logging::log.
        println!("{{name}}: running `{shown}` for revision {}", ctx.target.number);
        // `exec` needs grants = ["exec"] on the hook in the app's spec.
        let output = hook_env::exec(&params.command, params.timeout_seconds.saturating_mul(1000))
            .map_err(|e| format!("{{name}}: could not run `{shown}`: {}", slipway_sdk::hook::describe(&e)))?;
        match output.exit_code {
            Some(0) => {
                logging::log(LogLevel::Info, &format!("{{name}}: `{shown}` succeeded"));
                Ok(())
            }
            Some(code) => Err(format!("{{name}}: `{shown}` exited with {code}: {}", output.output_tail.trim())),
            None => Err(format!("{{name}}: `{shown}` was killed: {}", output.output_tail.trim())),
        }
    }
}

slipway_sdk::export_hook!(MyHook);
