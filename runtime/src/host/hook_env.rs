//! `slipway:deploy/hook-env`: capabilities a hook may be granted in the app's spec. A call
//! to one that was not granted returns `denied`, which the hook can see and handle.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::bindings::hook::slipway::deploy::hook_env::Host;
use crate::bindings::{ApiError, ExecOutput};
use crate::events::EventKind;
use crate::guest::GuestState;

/// Output kept from an `exec`, from its end.
const EXEC_OUTPUT_TAIL: usize = 4 << 10;
/// The longest an `exec` may run.
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

impl Host for GuestState {
    async fn exec(&mut self, args: Vec<String>, timeout_ms: u64) -> wasmtime::Result<Result<ExecOutput, ApiError>> {
        if let Err(error) = self.enter_action()? {
            return Ok(Err(error));
        }
        let program = args.first().cloned().unwrap_or_default();
        let Some(exec) = self.env.grants.exec.clone() else {
            return Ok(Err(ApiError::Denied(format!(
                "exec of {program:?}: this hook is not granted `exec`; add grants = [\"exec\"] to the hook in the app's spec"
            ))));
        };
        if program.is_empty() {
            return Ok(Err(
                self.invalid("exec: args is empty; the first item is the program to run".into())
            ));
        }
        let timeout = Duration::from_millis(timeout_ms)
            .min(MAX_EXEC_TIMEOUT)
            .min(Duration::from_millis(self.env.remaining_ms()));
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&args[1..])
            .envs(&exec.env)
            .env("SLIPWAY_APP", &self.env.app)
            .env("SLIPWAY_REVISION", self.env.target.number.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &exec.workdir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return Ok(Err(ApiError::Infrastructure(format!(
                    "exec: cannot start {program:?}: {error}"
                ))));
            }
        };
        let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let read = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            out.extend_from_slice(&err);
            out
        };
        let (exit_code, output) = match tokio::time::timeout(timeout, async { tokio::join!(child.wait(), read) }).await
        {
            Ok((status, output)) => (status.ok().and_then(|s| s.code()), output),
            Err(_) => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait().await;
                (None, format!("killed after {} ms", timeout.as_millis()).into_bytes())
            }
        };
        let tail = String::from_utf8_lossy(&output[output.len().saturating_sub(EXEC_OUTPUT_TAIL)..]).into_owned();
        let shown: Vec<&str> = tail
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        self.env.record(EventKind::Log {
            level: if exit_code == Some(0) { "info" } else { "warn" }.into(),
            message: format!(
                "exec {} → {}: {}",
                args.join(" "),
                exit_code.map_or("killed".to_string(), |c| format!("exit {c}")),
                shown.join(" | ")
            ),
        });
        Ok(Ok(ExecOutput {
            exit_code,
            output_tail: tail,
        }))
    }
}
