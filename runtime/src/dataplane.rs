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

/// How the tokio runtime of every Slipway process is built, the data plane's above all:
/// the router's fairness depends on it.
///
/// Woken connections go to a worker's local queue of 256 tasks and overflow into the shared
/// queue, which a worker looks at only every `global_queue_interval` tasks (31 and up by
/// default). With a thousand keep-alive clients the overflow waits while fresh wake-ups
/// jump ahead: measured with one worker at 1,000 connections, p50 8–12 ms but p90 100 ms
/// and p99 160–200 ms. Looking at the shared queue every other task serves connections in
/// the order they became ready (p90 37 ms, p99 50 ms, as nginx) at the same throughput;
/// with fewer clients than the local queue holds it costs one atomic load per task.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().global_queue_interval(2);
    builder
}
