//! The runner stops (SIGTERM) or dies (SIGKILL) with apps in every state, and comes back: it
//! always starts, adopts what the data plane kept running (or restores it, when the data
//! plane went too), says what it could not restore, resumes rollouts without losing a
//! request, and keeps instance counts exact.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lifecycle::{deploy, latest_rollout, listen, runtime, sample, text, wait_rollout_end};
use crate::load::Load;
use crate::runner::{ADMIN, HelloSpec, Server, alive, write_spec};
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

/// Waits until `pids` have all gone.
fn gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the runner with SIGTERM (which stops everything), or kills it with SIGKILL (which
/// leaves the data plane serving).
fn stop_or_kill(server: &mut Server, kill: bool) {
    if kill {
        server.kill();
        // An instance the runner was stopping when it died may still finish stopping (a
        // rolling step retires old instances); once that settles, every instance stays.
        let instances = settled_instances(server);
        assert!(!instances.is_empty(), "instances outlive a killed runner");
        std::thread::sleep(Duration::from_secs(1));
        let dead: Vec<_> = instances.iter().filter(|pid| !alive(**pid)).collect();
        assert!(
            dead.is_empty(),
            "instances {dead:?} stopped after the runner was killed"
        );
    } else {
        let plane = server.plane_pid();
        let instances = server.instances();
        assert!(server.stop().success());
        gone(&instances);
        gone(&plane.into_iter().collect::<Vec<_>>());
    }
}

/// The data plane's instances once they have stayed the same for a second (within 20 s).
fn settled_instances(server: &Server) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let sorted = || {
        let mut pids = server.instances();
        pids.sort_unstable();
        pids
    };
    let mut seen = sorted();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sorted();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the instances kept changing after the runner was killed: {seen:?}"
        );
    }
}

/// Kills the runner and its data plane, as losing the machine would: everything is restored
/// from the store when the runner starts again.
fn kill_everything(server: &mut Server) {
    let plane = server.plane_pid().expect("a data plane runs");
    let instances = server.instances();
    server.kill();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plane as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    gone(&instances);
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

    kill_everything(&mut server);
    // Revision 1's destroy delay runs out while nothing runs, and another program takes the
    // third app's port.
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

/// Kills the runner `after` into a rollout whose new instances take 1.5 s to start (or never
/// become ready), starts it again, and counts every request. With `everything`, the data
/// plane is killed too (the machine went down): the app is restored from the store.
fn kill_during(strategy: &str, after: Duration, never_ready: bool, everything: bool) {
    let mut server = Server::start();
    let addr = listen();
    let params = if strategy == "builtin:rolling" {
        "{ max-surge = 1, max-unavailable = 0, timeout-seconds = 8 }"
    } else {
        "{ timeout-seconds = 8 }"
    };
    let spec = HelloSpec {
        listen: addr,
        strategy,
        params,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let runtime = runtime();
    let before = runtime.block_on(async { Load::start(addr, "/", 6, Duration::from_millis(3)) });
    let env = if never_ready {
        ", HELLO_NEVER_READY = \"1\""
    } else {
        ", HELLO_START_DELAY_MS = \"1500\""
    };
    let next = HelloSpec {
        version: "v2",
        extra_env: env,
        ..spec
    };
    let started = server.cli(&["deploy", "--no-wait", write_spec(&next.toml()).to_str().unwrap()]);
    assert!(started.status.success(), "{}", text(&started));
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    std::thread::sleep(after);
    if everything {
        kill_everything(&mut server);
    } else {
        stop_or_kill(&mut server, true);
    }

    let server = Server::start_in(&server.data);
    let after_restart = runtime.block_on(async { Load::start(addr, "/", 6, Duration::from_millis(3)) });
    let end = wait_rollout_end(&server, &rollout);
    std::thread::sleep(Duration::from_millis(300));
    let throughout = runtime.block_on(before.stop());
    let since_restart = runtime.block_on(after_restart.stop());
    let expected = if never_ready { "rolled-back" } else { "succeeded" };
    let at = format!("{strategy}, killed {after:?} in (everything: {everything})");
    assert_eq!(end["state"], expected, "{at}: {end}");
    assert!(since_restart.ok > 50, "{at}: {since_restart:?}");
    if everything {
        // Nothing served while nothing ran; once the restored revision serves, nothing fails.
        assert_eq!(since_restart.lost_after_ok, 0, "{at}: {since_restart:?}");
    } else {
        // The data plane kept serving: not one request failed.
        assert_eq!(throughout.failed + throughout.unavailable, 0, "{at}: {throughout:?}");
    }
}

#[test]
fn a_rolling_rollout_keeps_serving_through_a_runner_killed_at_any_point() {
    let _serial = exclusive();
    for after in [500, 1500, 3000] {
        kill_during("builtin:rolling", Duration::from_millis(after), false, false);
    }
}

#[test]
fn a_blue_green_rollout_keeps_serving_through_a_runner_killed_mid_way() {
    let _serial = exclusive();
    kill_during("builtin:blue-green", Duration::from_millis(1000), false, false);
}

#[test]
fn a_never_ready_target_is_rolled_back_without_downtime_after_a_runner_crash() {
    let _serial = exclusive();
    kill_during("builtin:rolling", Duration::from_millis(1000), true, false);
}

#[test]
fn when_everything_went_down_mid_rollout_the_restored_revision_serves_throughout() {
    let _serial = exclusive();
    for after in [500, 1500, 3000] {
        kill_during("builtin:rolling", Duration::from_millis(after), false, true);
    }
}

#[test]
fn a_runner_killed_while_idle_is_adopted_with_no_request_lost() {
    let _serial = exclusive();
    let mut server = Server::start();
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
    let mut instances = server.instances();
    instances.sort_unstable();
    assert_eq!(instances.len(), 3);
    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 6, Duration::from_millis(3)) });
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    let server = Server::start_in(&server.data);
    wait_status(&server, "hello", "its instances adopted", |s| ready(s, 1) == 3);
    std::thread::sleep(Duration::from_millis(500));
    let tally = runtime.block_on(load.stop());
    assert_eq!(tally.failed + tally.unavailable, 0, "{tally:?}");
    assert!(tally.ok > 100, "{tally:?}");
    let mut now = server.instances();
    now.sort_unstable();
    assert_eq!(
        now, instances,
        "the same instances, adopted: none restarted, no second copy"
    );
}

#[test]
fn an_upgrade_with_keep_running_loses_no_request() {
    let _serial = exclusive();
    let data = crate::runner::unique_dir("data");
    let port = crate::runner::free_port();
    let mut server = Server::start_with(&data, port, &[("SLIPWAY_KEEP_RUNNING", "true")]);
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
    let instances = server.instances();
    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 6, Duration::from_millis(3)) });
    std::thread::sleep(Duration::from_millis(300));
    // The old runner stops on purpose, leaving the data plane; the new one adopts it.
    assert!(server.stop().success());
    assert!(instances.iter().all(|pid| alive(*pid)), "traffic kept running");
    let server = Server::start_with(&data, port, &[]);
    wait_status(&server, "hello", "its instances adopted", |s| ready(s, 1) == 3);
    // And a deploy through the new runner works as ever.
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v2",
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    std::thread::sleep(Duration::from_millis(300));
    let tally = runtime.block_on(load.stop());
    assert_eq!(tally.failed + tally.unavailable, 0, "{tally:?}");
    assert!(
        tally.by_version.contains_key("v1") && tally.by_version.contains_key("v2"),
        "{tally:?}"
    );
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
        let instances = server.instances();
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
        assert_eq!(server.instances().len(), 3, "round {round}");
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
