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

/// Runs the `misbehave` fixture in `mode` (more parameters in `extra`, as JSON members).
async fn misbehave(mode: &str, extra: &str, deadline_s: u64) -> crate::support::Outcome {
    let module = load_guest("fixture-misbehave").await;
    let mut sim = Sim::new(3).params(&format!(r#"{{"mode": "{mode}"{extra}}}"#));
    sim.plan.progress_deadline = std::time::Duration::from_secs(deadline_s);
    sim.run(&module).await
}

#[tokio::test]
async fn the_host_refuses_a_success_that_routes_nowhere() {
    let run = misbehave("zero-weights", "", 600).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::SuccessCheck, "{failure}");
    assert!(failure.message.contains("sends no traffic"), "{failure}");
    assert_eq!((run.last[&1].ready, run.last[&1].weight), (3, 256), "{}", run.trace());
    assert_eq!(run.last[&2].desired, 0, "the target was removed");
}

#[tokio::test]
async fn the_host_refuses_a_success_that_routes_to_an_empty_target() {
    let run = misbehave("target-zero", "", 600).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::SuccessCheck, "{failure}");
    assert!(failure.message.contains("no ready instance"), "{failure}");
    assert_eq!((run.last[&1].ready, run.last[&1].weight), (3, 256));
}

#[tokio::test]
async fn guest_text_is_capped_before_it_is_kept() {
    let big = 24 << 20;
    let run = misbehave("huge-summary", &format!(r#", "bytes": {big}"#), 600).await;
    assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
    assert!(
        run.report.summary.len() < 5 << 10,
        "{} bytes kept",
        run.report.summary.len()
    );
    assert!(run.report.summary.contains("more bytes cut"));
    let run = misbehave("huge-error", &format!(r#", "bytes": {big}"#), 600).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert!(failure.message.len() < 5 << 10, "{} bytes kept", failure.message.len());
    let stored = serde_json::to_string(run.events()).unwrap();
    assert!(stored.len() < 64 << 10, "the timeline holds {} bytes", stored.len());
}

#[tokio::test]
async fn a_strategys_own_invalid_error_stays_its_own() {
    let run = misbehave("handled-invalid", "", 600).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::StrategyError, "{failure}");
    assert!(failure.message.contains("my own complaint"), "{failure}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_that_ignores_its_deadline_fails_with_deadline() {
    let run = misbehave("ignore-deadline", "", 30).await;
    assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    assert!(failure.message.contains("went on instead of returning"), "{failure}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_stack_overflow_in_linear_memory_is_reported_as_one() {
    let run = misbehave("big-frames", "", 600).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::StackOverflow, "{failure}");
    assert!(failure.message.contains("frames deep"), "{failure}");
}

#[tokio::test]
async fn a_trap_quotes_what_the_guest_last_wrote_to_stderr() {
    let run = misbehave("trap-with-stderr", "", 600).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Trap, "{failure}");
    assert!(failure.message.contains("Error: boom"), "{failure}");
}

#[tokio::test]
async fn wasi_sleeps_follow_the_rollouts_clock() {
    // Ten minutes of std::thread::sleep in virtual time: no real wait.
    let started = std::time::Instant::now();
    let run = misbehave("wasi-sleep", r#", "ms": 600000"#, 3600).await;
    assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it slept in real time"
    );
    let ended = run.events().last().unwrap().at_ms;
    assert!(ended >= 600_000, "the timeline shows the sleep: ended at {ended} ms");

    // And a sleep longer than the deadline ends at the deadline.
    let run = misbehave("wasi-sleep", r#", "ms": 600000"#, 30).await;
    let failure = run.report.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    let failed_at = run
        .events()
        .iter()
        .find(|e| matches!(e.kind, slipway::events::EventKind::StrategyFailed { .. }))
        .unwrap()
        .at_ms;
    assert!(failed_at <= 31_000, "failed at {failed_at} ms");
}
