//! Instances as local processes: each is a child of the data plane in a process group of its
//! own, listening on the `PORT` it is given.
//!
//! **Invariant:** children die with the data plane: each is started with a parent-death
//! signal, so even a SIGKILL of the data plane leaves no instance behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::instances::Supervision;
use crate::spec::SecretSource;

/// How to run the instances of one revision as processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Resolved at every start, never kept.
    pub secret_env: BTreeMap<String, SecretSource>,
    pub workdir: Option<PathBuf>,
    #[serde(flatten)]
    pub supervision: Supervision,
}

/// Starts `instance` of `revision` of `app`, listening on `port`, with its output piped.
pub fn spawn(
    app: &str,
    revision: u32,
    instance: &str,
    port: u16,
    config: &ProcessConfig,
) -> Result<tokio::process::Child, String> {
    let secrets = crate::secrets::resolve(&config.secret_env)?;
    let mut command = tokio::process::Command::new(&config.program);
    command
        .args(&config.args)
        .envs(&config.env)
        .envs(secrets)
        .env("PORT", port.to_string())
        .env("SLIPWAY_APP", app)
        .env("SLIPWAY_REVISION", revision.to_string())
        .env("SLIPWAY_INSTANCE", instance)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(dir) = &config.workdir {
        command.current_dir(dir);
    }
    set_parent_death_signal(&mut command);
    command.spawn().map_err(|e| format!("{:?}: {e}", config.program))
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// Children get SIGTERM when their parent dies, however it dies.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}
