//! `slipway:deploy/hook-env`: capabilities a hook may be granted in the app's spec. A call
//! to one that was not granted returns `denied`, which the hook can see and handle.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::bindings::hook::slipway::deploy::hook_env::Host;
use crate::bindings::{ApiError, ExecOutput};
use crate::events::EventKind;
use crate::fakes::Fakes;
use crate::guest::GuestState;
use crate::hooks::ExecEnv;
use crate::host::RolloutEnv;

/// Output kept from an `exec`, from its end.
const EXEC_OUTPUT_TAIL: usize = 4 << 10;
/// The longest an `exec` may run.
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

impl Host for GuestState {
    async fn exec(&mut self, args: Vec<String>, timeout_ms: u64) -> wasmtime::Result<Result<ExecOutput, ApiError>> {
        if let Err(error) = self.enter_action().await? {
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
        let ran = match self.env.grants.fakes.clone() {
            Some(fakes) => fake_exec(&fakes, &args, timeout, &self.env).await,
            None => run_command(&exec, &args, timeout, &self.env).await,
        };
        let (exit_code, tail) = match ran {
            Ok(ran) => ran,
            Err(error) => return Ok(Err(error)),
        };
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
                crate::failure::cap(args.join(" "), crate::failure::MAX_GUEST_TEXT),
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

/// Runs `args` as a command in `exec`'s environment: its exit code (none when killed at
/// `timeout`) and the tail of its output.
async fn run_command(
    exec: &ExecEnv,
    args: &[String],
    timeout: Duration,
    env: &RolloutEnv,
) -> Result<(Option<i32>, String), ApiError> {
    let program = &args[0];
    let secrets = crate::secrets::resolve(&exec.secret_env)
        .map_err(|error| ApiError::Infrastructure(format!("exec of {program:?}: {error}")))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(&args[1..])
        .envs(&exec.env)
        .envs(secrets)
        .env("SLIPWAY_APP", &env.app)
        .env("SLIPWAY_REVISION", env.target.number.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(dir) = &exec.workdir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|error| ApiError::Infrastructure(format!("exec: cannot start {program:?}: {error}")))?;
    // Both streams feed one buffer as they arrive, so the tail interleaves them the way a
    // terminal would, and whatever came before a timeout is kept.
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        let output = output.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut output = output.lock().unwrap();
                output.extend_from_slice(&chunk[..n]);
                let excess = output.len().saturating_sub(EXEC_OUTPUT_TAIL);
                output.drain(..excess);
            }
        })
    })
    .collect();
    let exit_code = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.ok().and_then(|s| s.code()),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            output
                .lock()
                .unwrap()
                .extend_from_slice(format!("\n[killed after {} ms]", timeout.as_millis()).as_bytes());
            None
        }
    };
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    let output = output.lock().unwrap().clone();
    let tail = String::from_utf8_lossy(&output[output.len().saturating_sub(EXEC_OUTPUT_TAIL)..]).into_owned();
    Ok((exit_code, tail))
}

/// Answers `exec` of `args` from a simulation's fakes, taking the fake's time on the
/// simulated clock.
async fn fake_exec(
    fakes: &Fakes,
    args: &[String],
    timeout: Duration,
    env: &RolloutEnv,
) -> Result<(Option<i32>, String), ApiError> {
    let (exit, output, takes) = match fakes.exec_for(args) {
        Some(fake) => (fake.exit, fake.output.clone(), fake.takes),
        None if fakes.answer_unmatched => (0, String::new(), Duration::ZERO),
        None => {
            let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            return Err(ApiError::Infrastructure(format!(
                "exec of {:?}: no fake in this scenario answers it; add one, e.g. [[scenario.exec]] args = [{}] exit = 0",
                args[0],
                quoted.join(", ")
            )));
        }
    };
    if takes > timeout {
        env.cluster.sleep_ms(timeout.as_millis() as u64).await;
        return Ok((None, format!("{output}\n[killed after {} ms]", timeout.as_millis())));
    }
    env.cluster.sleep_ms(takes.as_millis() as u64).await;
    Ok((Some(exit), output))
}
