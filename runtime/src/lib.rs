//! Slipway: a deployment runner whose strategies and lifecycle hooks are sandboxed
//! WebAssembly components. See `ARCHITECTURE.md` at the repository root for the codemap.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod acme;
pub mod api;
pub mod auth;
pub mod bindings;
pub mod civil;
pub mod cli;
pub mod dataplane;
pub mod driver;
pub mod engine;
pub mod events;
pub mod failure;
pub mod fakes;
pub mod files;
pub mod guest;
pub mod hooks;
pub mod host;
pub mod json;
pub mod modules;
pub mod probe;
pub mod protocol;
pub mod rollout;
pub mod runner;
pub mod scenario;
pub mod secrets;
pub mod sim;
pub mod spec;
pub mod store;
