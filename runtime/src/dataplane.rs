//! The data plane: every app's built-in router and instances, in a process of their own
//! (`slipway dataplane`), so traffic outlives the runner.
//!
//! ```text
//!  slipway serve (control plane)                 slipway dataplane (data plane)
//!  API, store, rollouts, Wasm guests  ──socket──▶ routers (listeners), instances (children),
//!  PlaneClient / RemoteApp                        probes, output files
//!         DATA/dataplane.sock (0600), DATA/dataplane.pid, DATA/dataplane.log
//! ```
//!
//! `serve` connects to the data plane of its data directory, starting one if none runs; it
//! adopts whatever the data plane runs (the data plane's state is the truth about instances)
//! and re-sends what it wants, idempotently. A runner killed, restarted or upgraded leaves
//! traffic alone: the data plane keeps routing and keeps restarting crashed instances. A
//! runner stopped on purpose (SIGTERM, Ctrl-C) stops the data plane and every instance with
//! it, unless it runs with `--keep-running`.
//!
//! **Invariant:** only the data plane starts instances, and its instances die with it
//! (parent-death signal): no instance outlives the data plane, and no data plane outlives a
//! runner stopped on purpose without `--keep-running`.

pub mod client;
pub mod protocol;
pub mod server;

/// The data plane's socket, in the data directory.
pub const SOCKET: &str = "dataplane.sock";
/// The data plane's process id, in the data directory, while it runs.
pub const PID_FILE: &str = "dataplane.pid";
/// Where the data plane logs, in the data directory.
pub const LOG_FILE: &str = "dataplane.log";
