//! Hostile guests: each fails its own rollout with the right kind and a clear message, while
//! a well-behaved rollout on the same runner completes.
//!
//! The tests run on a current-thread runtime: if a spinning guest did not yield at every
//! epoch tick, the other rollout could not make progress at all.

use slipway::engine::Limits;
use slipway::events::RolloutOutcome;
use slipway::failure::FailureKind;
use slipway::modules::{LoadError, World};

use crate::support::{Sim, load, load_guest, loader};

/// Tight limits so the hostile cases end quickly; the defaults are far larger.
fn test_limits() -> Limits {
    Limits {
        cpu_ticks: 50,
        host_calls: 200_000,
        log_bytes: 256 << 10,
        ..Limits::default()
    }
}

async fn fails_alone(fixture: &str, kind: FailureKind, needle: &str) {
    let hostile = load_guest(fixture).await;
    let good = load("builtin:rolling").await;
    let mut bad_sim = Sim::new(3);
    bad_sim.plan.limits = test_limits();
    let (bad, ok) = tokio::join!(bad_sim.run(&hostile), Sim::new(3).run(&good));

    assert_eq!(
        ok.report.outcome,
        RolloutOutcome::Succeeded,
        "the neighbour of {fixture}:\n{}",
        ok.trace()
    );
    assert_eq!(
        bad.report.outcome,
        RolloutOutcome::RolledBack,
        "{fixture}:\n{}",
        bad.trace()
    );
    let failure = bad.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, kind, "{fixture}: {failure}");
    assert!(
        failure.message.contains(needle),
        "{fixture}: {needle:?} not in {failure}"
    );
    assert!(
        failure.module.ends_with(&format!("{}.wasm", fixture.replace('-', "_"))),
        "{failure}"
    );
    assert!(failure.digest.starts_with("sha256:"), "{failure}");
    assert_eq!(
        (bad.last[&1].ready, bad.last[&1].weight),
        (3, 256),
        "{fixture}: the previous revision serves"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_infinite_loop_hits_the_cpu_budget() {
    fails_alone("fixture-spin", FailureKind::CpuDeadline, "CPU budget").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_memory_bomb_hits_the_memory_cap() {
    fails_alone("fixture-memory-bomb", FailureKind::MemoryLimit, "over the cap").await;
}

#[tokio::test(flavor = "current_thread")]
async fn deep_recursion_overflows_the_stack() {
    fails_alone("fixture-deep-recursion", FailureKind::StackOverflow, "stack").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_is_reported_with_the_guests_message() {
    fails_alone("fixture-panic", FailureKind::Panic, "the canary exploded").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_host_call_flood_hits_the_call_budget() {
    fails_alone("fixture-call-flood", FailureKind::HostCallLimit, "host calls").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_log_flood_hits_the_log_budget() {
    fails_alone("fixture-log-flood", FailureKind::LogLimit, "log").await;
}

#[tokio::test(flavor = "current_thread")]
async fn nonsense_arguments_are_refused_as_invalid_calls() {
    fails_alone("fixture-invalid-call", FailureKind::InvalidCall, "weight 1000").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_hook_component_cannot_run_as_a_strategy() {
    let hook = load_guest("fixture-wrong-world").await;
    assert_eq!(hook.world, World::Hook);
    let run = Sim::new(2).run(&hook).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::InvalidModule);
    assert!(failure.message.contains("hook component"), "{failure}");
    assert_eq!((run.last[&1].ready, run.last[&1].weight), (2, 256));
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused_with_what_they_are() {
    let cases: [(&[u8], &str); 4] = [
        (b"#!/bin/sh\necho hello\n", "not WebAssembly"),
        (b"\0asm\x01\0\0\0", "core WebAssembly module"),
        (b"\0asm\x0d\0\x01\0garbage", "invalid"),
        (b"", "not WebAssembly"),
    ];
    for (bytes, needle) in cases {
        let error = loader().load("upload", bytes.to_vec()).await.unwrap_err();
        assert!(error.to_string().contains(needle), "{needle:?} not in {error}");
    }
    let error = loader().load_reference("builtin:yolo").await.unwrap_err();
    assert!(matches!(error, LoadError::UnknownBuiltin(_)));
    assert!(
        error.to_string().contains("rolling, recreate, blue-green, canary"),
        "{error}"
    );
}

#[tokio::test]
async fn a_well_behaved_custom_strategy_succeeds() {
    let good = load_guest("fixture-well-behaved").await;
    let run = Sim::new(4).run(&good).await;
    assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
    assert_eq!((run.last[&2].ready, run.last[&2].weight), (4, 256));
}

#[tokio::test]
async fn the_progress_deadline_aborts_a_slow_strategy_and_rolls_back() {
    let canary = load("builtin:canary").await;
    let mut sim = Sim::new(3).params(r#"{"pause-seconds": 400}"#);
    sim.plan.progress_deadline = std::time::Duration::from_secs(600);
    let run = sim.run(&canary).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    assert!(failure.message.contains("progress deadline of 600 s"), "{failure}");
}
