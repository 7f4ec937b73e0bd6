//! The host owns the safety rules, seen from outside on a real runner: success is checked by
//! the host, a version that falls over soon after it is ready is caught by the soak, and a
//! rollback puts maintenance back the way it was.

use std::time::Duration;

use crate::lifecycle::{deploy, hook_table, listen, push, runtime, sample, text};
use crate::load::Load;
use crate::runner::{HelloSpec, Server};
use crate::support::exclusive;

#[test]
fn a_strategy_that_reports_success_but_routes_nowhere_is_rolled_back() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-misbehave", "misbehave");
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    for mode in ["zero-weights", "target-zero"] {
        let params = format!("{{ mode = \"{mode}\" }}");
        let output = deploy(
            &server,
            &HelloSpec {
                version: "v2",
                strategy: "misbehave",
                params: &params,
                ..spec
            },
        );
        assert_eq!(output.status.code(), Some(1), "{mode}: {}", text(&output));
        assert!(text(&output).contains("success-check"), "{mode}: {}", text(&output));
        let tally = sample(addr);
        assert_eq!(tally.failed + tally.unavailable, 0, "{mode}: {tally:?}");
        assert_eq!(tally.by_version.keys().collect::<Vec<_>>(), vec!["v1"], "{mode}");
        let history = server.get_json("/v1/apps/hello/revisions");
        let last = history["rollouts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["state"], "rolled-back", "{mode}: {last}");
        assert_eq!(last["failure"]["kind"], "success-check", "{mode}: {last}");
    }
}

#[test]
fn a_rollback_puts_maintenance_back_as_it_was() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-hook-ok", "ok-hook");
    let addr = listen();
    let tables: String = ["pre", "mid", "post", "rollback"]
        .iter()
        .map(|point| hook_table(point, "ok-hook", "{}", "abort", "[]"))
        .collect();
    let spec = HelloSpec {
        listen: addr,
        strategy: "builtin:recreate",
        params: "{ timeout-seconds = 5 }",
        tables: &tables,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let broken = HelloSpec {
        version: "v2",
        extra_env: ", HELLO_NEVER_READY = \"1\"",
        ..spec
    };
    let output = deploy(&server, &broken);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("rolled back"), "{}", text(&output));

    // The recreate strategy turned maintenance on; its rollback turned it off again.
    let tally = sample(addr);
    assert_eq!(tally.unavailable + tally.failed, 0, "{tally:?}");
    assert_eq!(tally.by_version.keys().collect::<Vec<_>>(), vec!["v1"]);
    assert_eq!(server.get_json("/v1/apps/hello")["maintenance"], false);
    assert!(!text(&server.cli(&["status", "hello"])).contains("MAINTENANCE"));

    // An app an operator put in maintenance stays there after a failed rollout.
    assert!(server.cli(&["maintenance", "hello", "on"]).status.success());
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v3",
            ..broken
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let tally = sample(addr);
    assert!(tally.ok == 0 && tally.unavailable > 0, "{tally:?}");
    assert_eq!(server.get_json("/v1/apps/hello")["maintenance"], true);
    assert!(text(&server.cli(&["status", "hello"])).contains("MAINTENANCE"));
}

#[test]
fn a_version_that_crashes_soon_after_it_is_ready_is_caught_by_the_soak() {
    let _serial = exclusive();
    for strategy in ["builtin:rolling", "builtin:blue-green"] {
        let server = Server::start();
        let addr = listen();
        let spec = HelloSpec {
            listen: addr,
            strategy,
            soak: "3s",
            ..HelloSpec::default()
        };
        assert!(deploy(&server, &spec).status.success());
        let runtime = runtime();
        let load = runtime.block_on(async { Load::start(addr, "/", 4, Duration::from_millis(3)) });
        let output = deploy(
            &server,
            &HelloSpec {
                version: "v2",
                extra_env: ", HELLO_CRASH_AFTER_MS = \"1000\"",
                ..spec
            },
        );
        std::thread::sleep(Duration::from_millis(500));
        let tally = runtime.block_on(load.stop());
        assert_eq!(output.status.code(), Some(1), "{strategy}: {}", text(&output));
        assert!(text(&output).contains("soak"), "{strategy}: {}", text(&output));
        let after = sample(addr);
        assert_eq!(after.failed + after.unavailable, 0, "{strategy}: {after:?}");
        assert_eq!(after.by_version.keys().collect::<Vec<_>>(), vec!["v1"], "{strategy}");
        // The host saw the first crash and rolled back before the app ran out of instances.
        assert_eq!(
            tally.failed + tally.unavailable,
            0,
            "{strategy}: during the rollout: {tally:?}"
        );
    }
}
