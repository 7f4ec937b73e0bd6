//! The runner stops (SIGTERM) or dies (SIGKILL) with apps in every state, and comes back: it
//! always starts, restores what it can, says what it could not, resumes rollouts without
//! losing a request once the restored revision serves, and keeps instance counts exact.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lifecycle::{deploy, latest_rollout, listen, runtime, sample, text, wait_rollout_end};
use crate::load::Load;
use crate::runner::{ADMIN, HelloSpec, Server, alive, children_of, write_spec};
use crate::support::{exclusive, workspace};

/// Waits until `check` holds for the app's status, or fails with the last status seen.
fn wait_status(
    server: &Server,
    app: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = server.get_json(&format!("/v1/apps/{app}"));
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{app}: {what} never happened: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(status: &serde_json::Value, revision: u32) -> u64 {
    status["instances"]["revisions"][revision.to_string()]["ready"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the killed runner's instances have died with it.
fn instances_gone(children: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while children.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "instances outlived the runner: {children:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_or_kill(server: &mut Server, kill: bool) {
    if kill {
        let children = children_of(server.pid());
        server.kill();
        instances_gone(&children);
    } else {
        assert!(server.stop().success());
    }
}

#[test]
fn a_runner_with_a_hand_set_split_route_starts_again() {
    let _serial = exclusive();
    for kill in [false, true] {
        let mut server = Server::start();
        let addr = listen();
        let spec = HelloSpec {
            listen: addr,
            strategy: "builtin:blue-green",
            lifecycle: "destroy-delay = \"10m\"",
            ..HelloSpec::default()
        };
        assert!(deploy(&server, &spec).status.success());
        assert!(deploy(&server, &HelloSpec { version: "v2", ..spec }).status.success());
        let output = server.cli(&["route", "hello", "1=128", "2=128"]);
        assert!(output.status.success(), "{}", text(&output));

        stop_or_kill(&mut server, kill);
        // Starting again must work: before, `serve` exited 2 here.
        let server = Server::start_in(&server.data);
        let status = wait_status(&server, "hello", "both revisions ready", |s| {
            ready(s, 1) == 3 && ready(s, 2) == 3
        });
        assert!(status["notice"].is_null(), "everything was restored: {status}");
        assert_eq!(status["instances"]["revisions"]["1"]["weight"], 128, "{status}");
        let tally = sample(addr);
        assert_eq!(tally.failed + tally.unavailable, 0, "{tally:?}");
        assert!(
            tally.by_version.contains_key("v1") && tally.by_version.contains_key("v2"),
            "the split route is back: {tally:?}"
        );
        let history = server.get_json("/v1/apps/hello/revisions");
        assert_eq!(history["revisions"][0]["state"], "keeping", "{history}");
    }
}

#[test]
fn what_cannot_be_restored_is_reported_on_its_app_and_stops_nothing_else() {
    let _serial = exclusive();
    let mut server = Server::start();
    let (hello, other) = (listen(), listen());
    let spec = HelloSpec {
        listen: hello,
        strategy: "builtin:blue-green",
        lifecycle: "destroy-delay = \"4s\"",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    assert!(deploy(&server, &HelloSpec { version: "v2", ..spec }).status.success());
    assert!(server.cli(&["route", "hello", "1=128", "2=128"]).status.success());
    let second = HelloSpec {
        listen: other,
        ..HelloSpec::default()
    }
    .toml()
    .replace("name = \"hello\"", "name = \"other\"");
    assert!(
        server
            .cli(&["deploy", write_spec(&second).to_str().unwrap()])
            .status
            .success()
    );
    let third_addr = listen();
    let third = HelloSpec {
        listen: third_addr,
        ..HelloSpec::default()
    }
    .toml()
    .replace("name = \"hello\"", "name = \"third\"");
    assert!(
        server
            .cli(&["deploy", write_spec(&third).to_str().unwrap()])
            .status
            .success()
    );

    stop_or_kill(&mut server, true);
    // Revision 1's destroy delay runs out while the runner is down, and another program takes
    // the third app's port.
    std::thread::sleep(Duration::from_secs(5));
    let squatter = std::net::TcpListener::bind(third_addr).unwrap();
    let server = Server::start_in(&server.data);

    let status = wait_status(&server, "hello", "revision 2 ready", |s| ready(s, 2) == 3);
    let notice = status["notice"].as_str().unwrap_or_default();
    assert!(notice.contains("route") && notice.contains("1=128"), "{status}");
    let tally = sample(hello);
    assert_eq!(tally.failed + tally.unavailable, 0, "{tally:?}");
    assert_eq!(tally.by_version.keys().collect::<Vec<_>>(), vec!["v2"], "{tally:?}");

    let status = server.get_json("/v1/apps/third");
    assert!(
        status["notice"].as_str().unwrap_or_default().contains("cannot listen"),
        "{status}"
    );
    wait_status(&server, "other", "its revision ready", |s| ready(s, 1) == 3);
    assert_eq!(sample(other).failed, 0, "the other app is untouched");
    let output = server.cli(&["status"]);
    assert!(
        text(&output).contains("! after the runner restarted"),
        "{}",
        text(&output)
    );
    let history = server.cli(&["history", "hello"]);
    assert!(
        text(&history).contains("not everything could be restored"),
        "{}",
        text(&history)
    );
    drop(squatter);
}

/// Kills the runner `after` into a rolling rollout whose new instances take 1.5 s to start,
/// starts it again, and counts every request from then on.
fn kill_during_rolling(after: Duration, never_ready: bool) {
    let mut server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        params: "{ max-surge = 1, max-unavailable = 0, timeout-seconds = 8 }",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let env = if never_ready {
        ", HELLO_NEVER_READY = \"1\""
    } else {
        ", HELLO_START_DELAY_MS = \"1500\""
    };
    let started = server.cli(&[
        "deploy",
        "--no-wait",
        write_spec(
            &HelloSpec {
                version: "v2",
                extra_env: env,
                ..spec
            }
            .toml(),
        )
        .to_str()
        .unwrap(),
    ]);
    assert!(started.status.success(), "{}", text(&started));
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    std::thread::sleep(after);
    stop_or_kill(&mut server, true);

    let server = Server::start_in(&server.data);
    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 6, Duration::from_millis(3)) });
    let end = wait_rollout_end(&server, &rollout);
    std::thread::sleep(Duration::from_millis(300));
    let tally = runtime.block_on(load.stop());
    let expected = if never_ready { "rolled-back" } else { "succeeded" };
    assert_eq!(end["state"], expected, "killed {after:?} in: {end}");
    assert!(tally.ok > 50, "killed {after:?} in: {tally:?}");
    assert_eq!(
        tally.lost_after_ok, 0,
        "killed {after:?} in: requests failed after the restored revision served: {tally:?}"
    );
}

#[test]
fn a_rolling_rollout_resumed_after_a_crash_keeps_the_restored_revision_serving() {
    let _serial = exclusive();
    for after in [500, 1500, 3000] {
        kill_during_rolling(Duration::from_millis(after), false);
    }
}

#[test]
fn a_never_ready_target_resumed_after_a_crash_is_rolled_back_without_downtime() {
    let _serial = exclusive();
    kill_during_rolling(Duration::from_millis(1000), true);
}

#[test]
fn instances_that_crash_together_come_back_to_exactly_the_desired_count() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    assert!(
        deploy(
            &server,
            &HelloSpec {
                listen: addr,
                ..HelloSpec::default()
            }
        )
        .status
        .success()
    );
    for round in 0..3 {
        let instances = children_of(server.pid());
        assert_eq!(instances.len(), 3, "round {round}: {instances:?}");
        for pid in &instances {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_status(&server, "hello", "three ready again", |s| ready(s, 1) == 3);
        // Restarts come with backoff; watch long enough for all of them to have happened.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let status = server.get_json("/v1/apps/hello");
            let revision = &status["instances"]["revisions"]["1"];
            assert!(
                revision["current"].as_u64() <= Some(3) && revision["desired"] == 3,
                "round {round}: more instances than desired: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(children_of(server.pid()).len(), 3, "round {round}");
    }
    assert_eq!(sample(addr).failed, 0);
}

#[test]
fn deploy_follows_its_rollout_across_a_runner_restart() {
    let _serial = exclusive();
    let mut server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        params: "{ max-surge = 1, max-unavailable = 0 }",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let v2 = write_spec(
        &HelloSpec {
            version: "v2",
            extra_env: ", HELLO_START_DELAY_MS = \"1000\"",
            ..spec
        }
        .toml(),
    );
    let follower = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["deploy", v2.to_str().unwrap()])
        .env("SLIPWAY_SERVER", &server.api)
        .env("SLIPWAY_TOKEN", ADMIN)
        .current_dir(workspace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let port = server.port();
    stop_or_kill(&mut server, true);
    std::thread::sleep(Duration::from_secs(1));
    let _server = Server::start_with(&server.data, port, &[]);

    let output = follower.wait_with_output().unwrap();
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(shown.contains("reconnecting"), "{shown}");
    assert!(
        shown.contains("(resumed)"),
        "it went on following the resumed rollout: {shown}"
    );
    assert!(shown.contains("succeeded"), "{shown}");
    let starts = shown.matches("rollout   hello: revision 1 → revision 2").count();
    assert_eq!(starts, 2, "the first start and the resumed one, each once: {shown}");
}
