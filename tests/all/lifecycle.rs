//! The lifecycle on a real runner: hooks with failure policies and capabilities, instant
//! rollback versus redeploy, retention, pause / resume / abort, maintenance mode, and crash
//! recovery after SIGKILL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::load::{Load, Tally};
use crate::runner::{DEPLOY, HelloSpec, Server, alive, free_port, write_spec};
use crate::support::{exclusive, guest};

pub(crate) fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub(crate) fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn deploy(server: &Server, spec: &HelloSpec) -> std::process::Output {
    server.cli(&["deploy", write_spec(&spec.toml()).to_str().unwrap()])
}

pub(crate) fn push(server: &Server, package: &str, name: &str) {
    let wasm = guest(package);
    let output = server.cli_as(DEPLOY, &["module", "push", wasm.to_str().unwrap(), "--name", name]);
    assert!(output.status.success(), "{}", text(&output));
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every answer for a moment; returns the tally.
pub(crate) fn sample(addr: SocketAddr) -> Tally {
    runtime().block_on(async {
        let load = Load::start(addr, "/", 2, Duration::from_millis(2));
        tokio::time::sleep(Duration::from_millis(400)).await;
        load.stop().await
    })
}

/// The events stored so far (without following the rollout).
pub(crate) fn events(server: &Server, rollout: &str) -> Vec<serde_json::Value> {
    let answer = server.get_json(&format!("/v1/rollouts/{rollout}/events"));
    answer["events"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn latest_rollout(server: &Server) -> serde_json::Value {
    let history = server.get_json("/v1/apps/hello/revisions");
    history["rollouts"].as_array().unwrap().last().unwrap().clone()
}

pub(crate) fn wait_rollout_end(server: &Server, rollout: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = server.get_json(&format!("/v1/rollouts/{rollout}"));
        if state["state"] != "running" {
            return state;
        }
        assert!(Instant::now() < deadline, "rollout {rollout} did not end: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn hook_table(point: &str, module: &str, params: &str, policy: &str, grants: &str) -> String {
    format!(
        "[hooks.{point}]\nmodule = \"{module}\"\nparams = {params}\npolicy = \"{policy}\"\ntimeout = \"20s\"\ngrants = {grants}\n"
    )
}

#[test]
fn hook_failure_policies_abort_retry_and_ignore() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-hook-fail", "always-fails");
    push(&server, "fixture-hook-flaky", "flaky");
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

    // abort: the rollout fails and rolls back; v1 still serves.
    let tables = hook_table("pre", "always-fails", "{}", "abort", "[]");
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v2",
            tables: &tables,
            ..HelloSpec::default()
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("pre hook failed"), "{}", text(&output));
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v1"]);

    // retry: the hook fails on its first attempt and succeeds on the second.
    let tables = hook_table("pre", "flaky", "{ succeed-at = 2 }", "retry", "[]");
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v3",
            tables: &tables,
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("retrying in 1 s"), "{}", text(&output));
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v3"]);

    // ignore: the failure is recorded and the rollout goes on.
    let tables = hook_table("post", "always-fails", "{}", "ignore", "[]");
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v4",
            tables: &tables,
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    let rollout = latest_rollout(&server);
    let recorded = events(&server, rollout["id"].as_str().unwrap());
    assert!(
        recorded
            .iter()
            .any(|e| e["event"] == "hook" && e["point"] == "post" && e["outcome"] == "failure-ignored"),
        "{recorded:?}"
    );
    let history = server.get_json("/v1/apps/hello/revisions");
    let v4 = history["revisions"].as_array().unwrap().last().unwrap();
    assert!(
        v4["hooks"]["post"]["digest"].as_str().unwrap().starts_with("sha256:"),
        "the hook digest is recorded: {v4}"
    );
}

#[test]
fn exec_runs_in_the_revisions_environment_only_when_granted() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-hook-exec", "exec");
    let addr = listen();
    let params = r#"{ args = ["sh", "-c", "echo migrating to $VERSION of $SLIPWAY_APP"] }"#;
    let granted = hook_table("pre", "exec", params, "abort", r#"["exec"]"#);
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v7",
            tables: &granted,
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("migrating to v7 of hello"),
        "the output reaches the events: {}",
        text(&output)
    );

    let denied = hook_table("pre", "exec", params, "abort", "[]");
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v8",
            tables: &denied,
            ..HelloSpec::default()
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("denied"), "{}", text(&output));
    assert!(text(&output).contains("not granted `exec`"), "{}", text(&output));
}

#[test]
fn outbound_http_reaches_only_allowed_hosts() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-hook-http", "webhook");
    // A webhook receiver that records what it got.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = receiver.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in receiver.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).unwrap_or(0);
            log.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    let addr = listen();
    let params = format!(r#"{{ url = "http://127.0.0.1:{hook_port}/notify" }}"#);
    let refused = hook_table("post", "webhook", &params, "abort", r#"["http:hooks.example.com"]"#);
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            tables: &refused,
            ..HelloSpec::default()
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("denied"), "{}", text(&output));
    assert!(received.lock().unwrap().is_empty(), "nothing reached the receiver");

    let allowed = hook_table("post", "webhook", &params, "abort", r#"["http:127.0.0.1"]"#);
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            version: "v2",
            tables: &allowed,
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        received.lock().unwrap().contains("\"app\":\"hello\""),
        "{}",
        received.lock().unwrap()
    );
}

#[test]
fn rollback_within_the_destroy_delay_is_instant_and_loses_no_request() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let kept = HelloSpec {
        listen: addr,
        strategy: "builtin:blue-green",
        lifecycle: "destroy-delay = \"5m\"",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &kept).status.success());
    assert!(deploy(&server, &HelloSpec { version: "v2", ..kept }).status.success());
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"][0]["state"], "keeping", "{history}");

    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 8, Duration::from_millis(5)) });
    std::thread::sleep(Duration::from_millis(300));
    let output = server.cli(&["rollback", "hello"]);
    std::thread::sleep(Duration::from_millis(300));
    let tally = runtime.block_on(load.stop());
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("rolled back instantly"), "{}", text(&output));
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v1"]);
    let rollout = latest_rollout(&server);
    assert_eq!(rollout["kind"], "rollback");
    let recorded = events(&server, rollout["id"].as_str().unwrap());
    assert!(
        !recorded.iter().any(|e| e["event"] == "instance-started"),
        "no instance starts: {recorded:?}"
    );
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(
        history["revisions"].as_array().unwrap().len(),
        2,
        "no new revision: {history}"
    );
    assert_eq!(
        (
            history["revisions"][0]["state"].as_str(),
            history["revisions"][1]["state"].as_str()
        ),
        (Some("running"), Some("keeping"))
    );
}

#[test]
fn rollback_after_the_destroy_delay_redeploys_and_retention_prunes_the_oldest() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        strategy: "builtin:blue-green",
        lifecycle: "destroy-delay = \"0s\"\nretained = 2",
        ..HelloSpec::default()
    };
    for version in ["v1", "v2", "v3", "v4", "v5"] {
        let output = deploy(&server, &HelloSpec { version, ..spec });
        assert!(output.status.success(), "{}", text(&output));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let history = loop {
        let history = server.get_json("/v1/apps/hello/revisions");
        let numbers: Vec<u64> = history["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["number"].as_u64().unwrap())
            .collect();
        if numbers == vec![3, 4, 5] {
            break history;
        }
        assert!(
            Instant::now() < deadline,
            "retained = 2 keeps revisions 3 and 4 besides the running 5: {history}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(history["revisions"][0]["state"], "retained", "{history}");

    let output = server.cli(&["rollback", "hello"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("revision 4"), "{}", text(&output));
    let history = server.get_json("/v1/apps/hello/revisions");
    let latest = history["revisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(latest["number"], 6, "a redeploy makes a new revision: {history}");
    assert_eq!(latest["reason"], "redeploy of revision 4", "{latest}");
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v4"]);

    // Changing the retention settings changes no revision.
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v4",
            lifecycle: "destroy-delay = \"0s\"\nretained = 1",
            ..spec
        },
    );
    assert!(text(&output).contains("unchanged"), "{}", text(&output));
    let after = server.get_json("/v1/apps/hello/revisions");
    assert!(after["revisions"].as_array().unwrap().len() <= 3, "{after}");
}

#[test]
fn pause_resume_and_abort_a_rollout_under_load() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let canary = HelloSpec {
        listen: addr,
        strategy: "builtin:canary",
        params: "{ steps = [50, 100], pause-seconds = 1 }",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &canary).status.success());
    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 8, Duration::from_millis(5)) });

    let started = server.cli(&[
        "deploy",
        "--no-wait",
        write_spec(
            &HelloSpec {
                version: "v2",
                ..canary
            }
            .toml(),
        )
        .to_str()
        .unwrap(),
    ]);
    assert!(started.status.success(), "{}", text(&started));
    let paused = server.cli(&["pause", "hello"]);
    assert!(text(&paused).contains("paused"), "{}", text(&paused));
    std::thread::sleep(Duration::from_secs(3));
    let rollout = latest_rollout(&server);
    assert_eq!(rollout["state"], "running", "a paused rollout holds: {rollout}");
    let status = server.get_json("/v1/apps/hello");
    assert_eq!(
        status["rollout_paused"], true,
        "the app says its rollout is paused: {status}"
    );
    let resumed = server.cli(&["resume", "hello"]);
    assert!(text(&resumed).contains("resumed"), "{}", text(&resumed));
    assert!(
        server.get_json("/v1/apps/hello").get("rollout_paused").is_none(),
        "not paused once resumed"
    );
    assert_eq!(
        wait_rollout_end(&server, rollout["id"].as_str().unwrap())["state"],
        "succeeded"
    );

    let slow = HelloSpec {
        version: "v3",
        extra_env: ", HELLO_START_DELAY_MS = \"3000\"",
        ..canary
    };
    let started = server.cli(&["deploy", "--no-wait", write_spec(&slow.toml()).to_str().unwrap()]);
    assert!(started.status.success(), "{}", text(&started));
    std::thread::sleep(Duration::from_millis(1000));
    let aborted = server.cli(&["abort", "hello"]);
    assert!(text(&aborted).contains("aborted"), "{}", text(&aborted));
    let rollout = latest_rollout(&server);
    let end = wait_rollout_end(&server, rollout["id"].as_str().unwrap());
    assert_eq!(end["state"], "aborted", "{end}");
    std::thread::sleep(Duration::from_millis(300));
    let tally = runtime.block_on(load.stop());
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    assert_eq!(
        sample(addr).by_version.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "the abort rolled back to v2"
    );
}

#[test]
fn maintenance_holds_during_recreate_stays_after_a_failure_and_clears_after_success() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        strategy: "builtin:recreate",
        params: "{ timeout-seconds = 5 }",
        lifecycle: "maintenance-during-deploy = true",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    assert_eq!(
        sample(addr).by_version.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "maintenance cleared after success"
    );

    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(addr, "/", 4, Duration::from_millis(5)) });
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v2",
            extra_env: ", HELLO_START_DELAY_MS = \"1000\"",
            ..spec
        },
    );
    let tally = runtime.block_on(load.stop());
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(
        tally.unavailable > 0,
        "the maintenance page answered during the gap: {tally:?}"
    );
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v2"]);

    let output = deploy(
        &server,
        &HelloSpec {
            version: "v3",
            extra_env: ", HELLO_NEVER_READY = \"1\"",
            ..spec
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let (status, body) = server.request(
        "GET",
        "/v1/apps/hello",
        Some(crate::runner::READ),
        "application/json",
        b"",
    );
    assert!(
        status == 200 && body.contains("\"maintenance\":true"),
        "maintenance stays on after a failure: {body}"
    );
    let (status, page) = http_get(addr);
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("maintenance"), "{page}");
    assert!(server.cli(&["maintenance", "hello", "off"]).status.success());
    assert_eq!(
        sample(addr).by_version.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "the rolled-back v2 serves again"
    );
}

fn http_get(addr: SocketAddr) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    (
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        answer,
    )
}

/// SIGKILL the runner in the middle of a rollout, start it again on the same data, and check
/// that nothing was lost, the rollout ended and traffic is served.
fn crash_mid_rollout(strategy: &str, params: &str) {
    let _serial = exclusive();
    let mut server = Server::start();
    let data = server.data.clone();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        strategy,
        params,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let started = server.cli(&[
        "deploy",
        "--no-wait",
        write_spec(
            &HelloSpec {
                version: "v2",
                extra_env: ", HELLO_START_DELAY_MS = \"1500\"",
                ..spec
            }
            .toml(),
        )
        .to_str()
        .unwrap(),
    ]);
    assert!(started.status.success(), "{}", text(&started));
    std::thread::sleep(Duration::from_millis(1200));
    let before = server.get_json("/v1/apps/hello/revisions");
    let rollout = before["rollouts"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let events_before = events(&server, &rollout).len();
    let children = server.instances();
    assert!(!children.is_empty());
    server.kill();
    assert!(
        children.iter().all(|pid| alive(*pid)),
        "instances keep running when the runner dies: {children:?}"
    );

    let server = Server::start_in(&data);
    let end = wait_rollout_end(&server, &rollout);
    assert_eq!(
        end["state"], "succeeded",
        "the interrupted rollout resumed and finished: {end}"
    );
    let recorded = events(&server, &rollout);
    assert!(
        recorded.len() > events_before,
        "the events from before the crash are kept and new ones follow"
    );
    assert!(
        recorded
            .iter()
            .any(|e| e["event"] == "rollout-started" && e["resumed"] == true),
        "{recorded:?}"
    );
    let after = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(
        after["revisions"].as_array().unwrap().len(),
        before["revisions"].as_array().unwrap().len(),
        "no revision lost"
    );
    let tally = sample(addr);
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert_eq!(tally.by_version.keys().collect::<Vec<_>>(), vec!["v2"], "{tally:?}");
}

#[test]
fn a_rolling_rollout_survives_a_runner_crash() {
    crash_mid_rollout("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }");
}

#[test]
fn a_blue_green_rollout_survives_a_runner_crash() {
    crash_mid_rollout("builtin:blue-green", "{}");
}

#[test]
fn scale_and_route_by_hand() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let kept = HelloSpec {
        listen: addr,
        strategy: "builtin:blue-green",
        lifecycle: "destroy-delay = \"5m\"",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &kept).status.success());
    assert!(deploy(&server, &HelloSpec { version: "v2", ..kept }).status.success());

    let output = server.cli(&["scale", "hello", "5"]);
    assert!(output.status.success(), "{}", text(&output));
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get_json("/v1/apps/hello")["instances"]["revisions"]["2"]["ready"] != 5 {
        assert!(Instant::now() < deadline, "revision 2 did not reach 5 ready instances");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        server.get_json("/v1/apps/hello/revisions")["revisions"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "scaling makes no revision"
    );

    // A/B: the kept v1 and the running v2 share the traffic.
    let output = server.cli(&["route", "hello", "1=128", "2=128"]);
    assert!(output.status.success(), "{}", text(&output));
    let tally = sample(addr);
    assert!(
        tally.by_version.contains_key("v1") && tally.by_version.contains_key("v2"),
        "{tally:?}"
    );
    // Out of range is refused, and so is a route that sends traffic nowhere: that is what
    // maintenance mode is for.
    let refused = server.cli(&["route", "hello", "1=300"]);
    assert!(
        !refused.status.success() && text(&refused).contains("0 to 256"),
        "{}",
        text(&refused)
    );
    let nowhere = server.cli(&["route", "hello", "1=0", "2=0"]);
    assert!(
        !nowhere.status.success() && text(&nowhere).contains("slipway maintenance hello on"),
        "{}",
        text(&nowhere)
    );
    for body in [r#"{"weights": {"2": 0}}"#, r#"{"weights": {}}"#] {
        let (status, answer) = server.request(
            "PUT",
            "/v1/apps/hello/route",
            Some(DEPLOY),
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer.contains("maintenance"), "{answer}");
    }
    let tally = sample(addr);
    assert!(
        tally.failed == 0 && tally.unavailable == 0,
        "the refused routes changed nothing: {tally:?}"
    );
    assert!(server.cli(&["route", "hello", "2=256"]).status.success());
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v2"]);
}

#[test]
fn with_automatic_rollback_off_a_failed_revision_is_left_for_inspection() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        params: "{ max-surge = 1, max-unavailable = 0, timeout-seconds = 3 }",
        lifecycle: "auto-rollback = false",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v2",
            extra_env: ", HELLO_NEVER_READY = \"1\"",
            ..spec
        },
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("left as is for inspection"), "{}", text(&output));
    let app = server.get_json("/v1/apps/hello");
    assert_eq!(
        app["instances"]["revisions"]["2"]["current"], 1,
        "the failed revision's instance is still there: {app}"
    );
    assert_eq!(
        sample(addr).by_version.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "traffic untouched"
    );
}
