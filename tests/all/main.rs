//! Slipway's end-to-end tests, compiled as one binary.
//!
//! They drive the real engine, the real built-in strategies and the real `slipway` binary.
//! Guest fixtures (`tests/fixtures/*`) and example strategies are built for `wasm32-wasip2`
//! on first use; the Python example needs `componentize-py` (installed by `.ci/run`).

mod acme;
mod analysis;
mod authoring;
mod ci_example;
mod cli;
mod containers;
mod dashboard;
mod dataplane;
mod deploy;
mod engines;
mod examples;
mod front;
mod guard;
mod kube_fake;
mod kubernetes;
mod lifecycle;
mod limits;
mod load;
mod logs;
mod openapi;
mod recovery;
mod runner;
mod sandbox;
mod scenarios;
mod strategies;
mod support;
mod surfaces;
mod traffic;
mod websocket;
mod wit;
