//! The built-in strategies against the simulator: their invariants, at every step.

use slipway::events::{EventKind, RolloutOutcome};
use slipway::failure::FailureKind;

use crate::support::{Sim, load};

/// For each configuration and seed: never more than replicas + surge instances, never fewer
/// than replicas - unavailable ready, and all of revision 2 serving at the end.
#[tokio::test]
async fn rolling_keeps_surge_and_availability_bounds_at_every_step() {
    let rolling = load("builtin:rolling").await;
    let cases = [
        (10, r#"{}"#, 3, 2),
        (10, r#"{"max-surge": 0, "max-unavailable": "10%"}"#, 0, 1),
        (10, r#"{"max-surge": "20%", "max-unavailable": 0}"#, 2, 0),
        (7, r#"{"max-surge": 1, "max-unavailable": 1}"#, 1, 1),
        (1, r#"{}"#, 1, 0),
        (25, r#"{"max-surge": "50%", "max-unavailable": "50%"}"#, 13, 12),
    ];
    for (replicas, params, surge, unavailable) in cases {
        for seed in 1..=4 {
            let run = Sim::new(replicas)
                .params(params)
                .seed(seed)
                .crash(0.1)
                .run(&rolling)
                .await;
            assert_eq!(
                run.report.outcome,
                RolloutOutcome::Succeeded,
                "{params} seed {seed}:\n{}",
                run.trace()
            );
            for event in run.events() {
                let Some(state) = &event.state else { continue };
                let instances: u32 = state.values().map(|s| s.current).sum();
                let ready: u32 = state.values().map(|s| s.ready).sum();
                assert!(
                    instances <= replicas + surge,
                    "{params} seed {seed}: {instances} instances > {replicas} + {surge} at {event}\n{}",
                    run.trace()
                );
                assert!(
                    ready + unavailable >= replicas,
                    "{params} seed {seed}: only {ready} ready (< {replicas} - {unavailable}) at {event}\n{}",
                    run.trace()
                );
            }
            assert_eq!(
                (run.last[&2].ready, run.last[&2].weight),
                (replicas, 256),
                "{}",
                run.trace()
            );
            assert_eq!((run.last[&1].current, run.last[&1].weight), (0, 0), "{}", run.trace());
        }
    }
}

#[tokio::test]
async fn blue_green_switches_all_traffic_once_the_target_is_fully_ready() {
    let blue_green = load("builtin:blue-green").await;
    let run = Sim::new(5).seed(3).crash(0.2).run(&blue_green).await;
    assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
    let switches: Vec<_> = run
        .events()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::WeightsChanged { weights } if weights.contains_key(&2)))
        .collect();
    assert_eq!(switches.len(), 1, "traffic moves in exactly one step:\n{}", run.trace());
    let state = switches[0].state.as_ref().unwrap();
    assert_eq!(state[&2].ready, 5, "the target is fully ready when traffic moves");
    assert_eq!(
        (state[&1].weight, state[&2].weight),
        (0, 256),
        "all traffic moves at once"
    );
    for event in run.events() {
        if let (Some(state), EventKind::Scaled { .. } | EventKind::InstanceReady { .. }) = (&event.state, &event.kind)
            && state[&2].weight == 0
        {
            assert_eq!(
                state[&1].weight, 256,
                "the old revision serves everything until the switch"
            );
        }
    }
    assert_eq!(
        run.last[&1].current, 5,
        "the old revision is kept at full size for instant rollback"
    );
}

#[tokio::test]
async fn recreate_stops_the_old_revision_runs_mid_then_verifies_one_replica_first() {
    let recreate = load("builtin:recreate").await;
    let run = Sim::new(4).seed(2).run(&recreate).await;
    assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
    let hook = |name: &'static str| move |k: &EventKind| matches!(k, EventKind::Hook { point, .. } if point == name);
    let pre = run.position(hook("pre")).unwrap();
    let maintenance_on = run
        .position(|k| matches!(k, EventKind::Maintenance { on: true }))
        .unwrap();
    let old_down = run
        .position(|k| matches!(k, EventKind::Scaled { revision: 1, to: 0, .. }))
        .unwrap();
    let mid = run.position(hook("mid")).unwrap();
    let first = run
        .position(|k| matches!(k, EventKind::Scaled { revision: 2, to: 1, .. }))
        .unwrap();
    let first_ready = run
        .position(|k| matches!(k, EventKind::InstanceReady { revision: 2, .. }))
        .unwrap();
    let rest = run
        .position(|k| matches!(k, EventKind::Scaled { revision: 2, to: 4, .. }))
        .unwrap();
    let maintenance_off = run
        .position(|k| matches!(k, EventKind::Maintenance { on: false }))
        .unwrap();
    let post = run.position(hook("post")).unwrap();
    let order = [
        pre,
        maintenance_on,
        old_down,
        mid,
        first,
        first_ready,
        rest,
        maintenance_off,
        post,
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "order {order:?}:\n{}",
        run.trace()
    );
    for event in run.events() {
        if let Some(state) = &event.state {
            assert!(
                state[&1].current == 0 || state[&2].current == 0,
                "old and new never run together: {event}"
            );
        }
    }
}

#[tokio::test]
async fn canary_moves_traffic_in_its_steps_with_pauses_between() {
    let canary = load("builtin:canary").await;
    for (params, expected) in [
        (r#"{}"#, vec![26, 128, 256]),
        (r#"{"steps": [20, 40, 100], "pause-seconds": 30}"#, vec![51, 102, 256]),
    ] {
        let run = Sim::new(10).params(params).run(&canary).await;
        assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
        let steps: Vec<(u64, u32)> = run
            .events()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::WeightsChanged { weights } => Some((e.at_ms, weights.get(&2).copied().unwrap_or(0))),
                _ => None,
            })
            .collect();
        let weights: Vec<u32> = steps.iter().map(|s| s.1).collect();
        assert_eq!(weights, expected, "{params}:\n{}", run.trace());
        let pause = if params.contains("pause-seconds") {
            30_000
        } else {
            10_000
        };
        assert!(
            steps.windows(2).all(|w| w[1].0 - w[0].0 >= pause),
            "a pause between steps: {steps:?}"
        );
    }
}

/// A target that never becomes ready fails the rollout, and after the automatic rollback the
/// previous revision serves all traffic at full size.
#[tokio::test]
async fn a_target_that_never_becomes_ready_is_rolled_back_for_every_builtin() {
    for name in ["rolling", "recreate", "blue-green", "canary"] {
        let strategy = load(&format!("builtin:{name}")).await;
        let run = Sim::new(6)
            .params(r#"{"timeout-seconds": 120}"#)
            .fail_readiness(1.0)
            .run(&strategy)
            .await;
        assert_eq!(
            run.report.outcome,
            RolloutOutcome::RolledBack,
            "{name}:\n{}",
            run.trace()
        );
        let failure = run.report.failure.as_ref().unwrap();
        assert_eq!(failure.kind, FailureKind::StrategyError, "{name}: {failure}");
        assert!(failure.message.contains("timeout"), "{name}: {failure}");
        assert_eq!(
            (run.last[&1].ready, run.last[&1].weight),
            (6, 256),
            "{name}:\n{}",
            run.trace()
        );
        assert_eq!(
            (run.last[&2].current, run.last[&2].weight),
            (0, 0),
            "{name}:\n{}",
            run.trace()
        );
    }
}

#[tokio::test]
async fn bad_parameters_fail_before_anything_changes() {
    for (name, params, needle) in [
        ("rolling", r#"{"max-surge": "lots"}"#, "max-surge"),
        ("rolling", r#"{"max-surge": 0, "max-unavailable": 0}"#, "max-surge"),
        ("canary", r#"{"steps": [50, 10]}"#, "steps"),
        ("blue-green", r#"{"verify-pth": "/"}"#, "verify-pth"),
        ("recreate", r#"{"maintenance": "yes"}"#, "maintenance"),
    ] {
        let strategy = load(&format!("builtin:{name}")).await;
        let run = Sim::new(3).params(params).run(&strategy).await;
        let failure = run
            .report
            .failure
            .as_ref()
            .unwrap_or_else(|| panic!("{name} {params} succeeded"));
        assert!(failure.message.contains(needle), "{name} {params}: {failure}");
        let started = run.position(|k| matches!(k, EventKind::StrategyFailed { .. })).unwrap();
        assert!(
            !run.events()[..started]
                .iter()
                .any(|e| matches!(e.kind, EventKind::Scaled { .. } | EventKind::WeightsChanged { .. })),
            "{name} {params} changed something before failing:\n{}",
            run.trace()
        );
    }
}

#[tokio::test]
async fn the_same_inputs_and_seed_give_the_same_trace() {
    let rolling = &load("builtin:rolling").await;
    let trace = |seed| async move {
        let run = Sim::new(8).seed(seed).crash(0.3).run(rolling).await;
        serde_json::to_string(&run.report.events).unwrap()
    };
    assert_eq!(trace(11).await, trace(11).await);
    assert_ne!(trace(11).await, trace(12).await);
}

#[tokio::test]
async fn a_first_deploy_brings_the_target_up_and_routes_to_it() {
    for name in ["rolling", "recreate", "blue-green", "canary"] {
        let strategy = load(&format!("builtin:{name}")).await;
        let mut sim = Sim::new(3);
        sim.plan.active = None;
        let run = sim.run(&strategy).await;
        assert_eq!(
            run.report.outcome,
            RolloutOutcome::Succeeded,
            "{name}:\n{}",
            run.trace()
        );
        assert_eq!((run.last[&2].ready, run.last[&2].weight), (3, 256), "{name}");
    }
}
