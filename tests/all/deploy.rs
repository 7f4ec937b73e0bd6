//! End to end on one machine: the real `slipway serve`, the real `hello` app as child
//! processes, the built-in router, and a keep-alive load that counts every failed request
//! while revisions roll.

use std::net::SocketAddr;
use std::time::Duration;

use crate::load::{Load, Tally};
use crate::runner::{ADMIN, DEPLOY, READ, Server, alive, free_port, hello_spec, write_spec};
use crate::support::{exclusive, guest};

fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Deploys v1 with `strategy`, then rolls to v2 under load; returns the tally and the runner.
fn roll_under_load(strategy: &str, params: &str) -> (Server, SocketAddr, Tally) {
    let server = Server::start();
    let addr = listen();
    let v1 = write_spec(&hello_spec(addr, "v1", strategy, params, ""));
    let first = server.cli(&["deploy", v1.to_str().unwrap()]);
    assert!(first.status.success(), "first deploy failed:\n{}", text(&first));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = runtime.block_on(async { Load::start(addr, "/", 8, Duration::from_millis(5)) });
    std::thread::sleep(Duration::from_millis(500));
    let v2 = write_spec(&hello_spec(addr, "v2", strategy, params, ""));
    let second = server.cli(&["deploy", v2.to_str().unwrap()]);
    assert!(second.status.success(), "deploy of v2 failed:\n{}", text(&second));
    std::thread::sleep(Duration::from_millis(500));
    let tally = runtime.block_on(load.stop());
    (server, addr, tally)
}

/// After a rollout, every answer comes from v2.
fn all_v2(addr: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tally = runtime.block_on(async {
        let load = Load::start(addr, "/", 2, Duration::from_millis(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        load.stop().await
    });
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(tally.ok > 20, "{tally:?}");
    assert_eq!(tally.by_version.keys().collect::<Vec<_>>(), vec!["v2"], "{tally:?}");
}

#[test]
fn rolling_update_loses_no_request() {
    let _serial = exclusive();
    let (_server, addr, tally) = roll_under_load("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }");
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    assert!(
        tally.by_version.contains_key("v1") && tally.by_version.contains_key("v2"),
        "{tally:?}"
    );
    all_v2(addr);
}

#[test]
fn blue_green_loses_no_request() {
    let _serial = exclusive();
    let (server, addr, tally) = roll_under_load("builtin:blue-green", "{ verify-path = \"/healthz\" }");
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    all_v2(addr);
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"][1]["state"], "running", "{history}");
}

#[test]
fn canary_loses_no_request() {
    let _serial = exclusive();
    let (_server, addr, tally) = roll_under_load("builtin:canary", "{ steps = [25, 50, 100], pause-seconds = 1 }");
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    all_v2(addr);
}

#[test]
fn recreate_answers_only_maintenance_during_the_gap() {
    let _serial = exclusive();
    let (_server, addr, tally) = roll_under_load("builtin:recreate", "{}");
    assert_eq!(tally.failed, 0, "no connection errors, only 503 answers: {tally:?}");
    assert!(tally.unavailable > 0, "recreate has a gap, served as 503: {tally:?}");
    all_v2(addr);
}

#[test]
fn a_revision_that_never_becomes_ready_is_rolled_back_without_losing_requests() {
    let _serial = exclusive();
    let (server, addr, _) = roll_under_load(
        "builtin:rolling",
        "{ max-surge = 1, max-unavailable = 0, timeout-seconds = 5 }",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = runtime.block_on(async { Load::start(addr, "/", 8, Duration::from_millis(5)) });
    let v3 = write_spec(&hello_spec(
        addr,
        "v3",
        "builtin:rolling",
        "{ max-surge = 1, max-unavailable = 0, timeout-seconds = 5 }",
        ", HELLO_NEVER_READY = \"1\"",
    ));
    let output = server.cli(&["deploy", v3.to_str().unwrap()]);
    let tally = runtime.block_on(load.stop());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("rolled-back"), "{}", text(&output));
    assert!(
        text(&output).contains("revision 3"),
        "the reason names the revision: {}",
        text(&output)
    );
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    all_v2(addr);
    let app = server.get_json("/v1/apps/hello");
    assert_eq!(app["active_revision"], 2, "{app}");
    assert_eq!(
        app["instances"]["revisions"]["2"]["ready"], 3,
        "v2 still serves at full size: {app}"
    );
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"][2]["state"], "failed", "{history}");
}

#[test]
fn a_custom_strategy_uploaded_over_http_is_used_by_a_deploy() {
    let _serial = exclusive();
    let server = Server::start();
    let wasm = guest("example-strategy-waves");
    let push = server.cli_as(DEPLOY, &["module", "push", wasm.to_str().unwrap(), "--name", "waves"]);
    assert!(push.status.success(), "{}", text(&push));
    assert!(text(&push).contains("uploaded"), "{}", text(&push));
    let modules = server.get_json("/v1/modules");
    let digest = modules["modules"][0]["digest"].as_str().unwrap().to_string();

    let addr = listen();
    let spec = write_spec(&hello_spec(addr, "v1", "waves", "{ wave-size = 2 }", ""));
    let output = server.cli(&["deploy", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let pinned = write_spec(&hello_spec(
        addr,
        "v2",
        &format!("waves@{digest}"),
        "{ wave-size = 2 }",
        "",
    ));
    let output = server.cli(&["deploy", pinned.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"][1]["strategy_digest"], digest.as_str(), "{history}");
    all_v2(addr);

    // The module's lifecycle: listed with the revisions that keep it, which it cannot be
    // deleted from under; the same component under another name is its own upload.
    let push = server.cli_as(DEPLOY, &["module", "push", wasm.to_str().unwrap(), "--name", "spare"]);
    assert!(push.status.success(), "{}", text(&push));
    let modules = server.get_json("/v1/modules");
    let listed = |name: &str| {
        modules["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {modules}"))
    };
    assert_eq!(
        listed("waves")["pinned_by"],
        serde_json::json!([{"app": "hello", "revision": 1}, {"app": "hello", "revision": 2}])
    );
    assert_eq!(listed("spare")["pinned_by"], serde_json::json!([]));
    assert_eq!(listed("spare")["api_version"], "0.2.0");
    let list = server.cli(&["module", "list"]);
    assert!(text(&list).contains("in use by hello r1, hello r2"), "{}", text(&list));
    let rm = server.cli_as(DEPLOY, &["module", "rm", "waves"]);
    assert!(!rm.status.success());
    assert!(
        text(&rm).contains("module waves is in use by hello revision 1 (waves@")
            && text(&rm).contains("hello revision 2"),
        "{}",
        text(&rm)
    );
    let (status, body) = server.request("DELETE", "/v1/modules/waves", Some(DEPLOY), "application/json", b"");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"code\":\"module-in-use\""), "{body}");
    let (status, body) = server.request("DELETE", "/v1/modules/waves", Some(READ), "application/json", b"");
    assert_eq!(status, 403, "{body}");
    let (status, body) = server.request("DELETE", "/v1/modules/nothing", Some(DEPLOY), "application/json", b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("there is no uploaded module nothing"), "{body}");
    let (status, body) = server.request(
        "DELETE",
        "/v1/modules/waves@sha256:12",
        Some(DEPLOY),
        "application/json",
        b"",
    );
    assert_eq!(status, 400, "{body}");
    let file = server
        .data
        .join("modules")
        .join(format!("{}.wasm", digest.trim_start_matches("sha256:")));
    let rm = server.cli_as(DEPLOY, &["module", "rm", &format!("spare@{digest}")]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(text(&rm).contains(&format!("deleted spare@{digest}")), "{}", text(&rm));
    assert!(file.exists(), "waves still needs the component");
    // Once no app keeps a revision using it, it goes, file and all.
    let (status, body) = server.request("DELETE", "/v1/apps/hello", Some(ADMIN), "application/json", b"");
    assert!(status < 300, "{status} {body}");
    let rm = server.cli_as(DEPLOY, &["module", "rm", "waves"]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(!file.exists());
    assert_eq!(server.get_json("/v1/modules")["modules"], serde_json::json!([]));
}

#[test]
fn a_large_upload_answers_before_it_compiles_and_a_deploy_waits_for_it() {
    let _serial = exclusive();
    let server = Server::start();
    // 12 MB of JavaScript engine: seconds to compile, more from a debug build.
    let wasm = crate::examples::js_example();
    let started = std::time::Instant::now();
    let push = server.cli_as(
        DEPLOY,
        &["module", "push", wasm.to_str().unwrap(), "--name", "js-waves"],
    );
    let answered = started.elapsed();
    assert!(push.status.success(), "{}", text(&push));
    assert!(text(&push).contains("compiling in the background"), "{}", text(&push));
    let modules = server.get_json("/v1/modules");
    assert_eq!(modules["modules"][0]["compile"], "compiling", "{modules}");
    assert_eq!(modules["modules"][0]["world"], "strategy", "{modules}");
    assert_eq!(modules["modules"][0]["api_version"], "0.2.0", "{modules}");
    // The deploy waits for the compile, then rolls out with it.
    let addr = listen();
    let spec = write_spec(&hello_spec(addr, "v1", "js-waves", "{ wave-size = 2 }", ""));
    let output = server.cli(&["deploy", spec.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("wave(s) of up to 2"), "{}", text(&output));
    let modules = server.get_json("/v1/modules");
    assert_eq!(modules["modules"][0]["compile"], "ready", "{modules}");
    assert_eq!(
        modules["modules"][0]["pinned_by"],
        serde_json::json!([{"app": "hello", "revision": 1}])
    );
    eprintln!(
        "upload answered in {answered:?}; upload to a finished deploy {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = Server::start();
    let addr = listen();
    let good = hello_spec(addr, "v1", "builtin:rolling", "{}", "");
    let deployed = server.cli(&["deploy", write_spec(&good).to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let before = server.get_json("/v1/apps/hello/revisions");

    // Malformed TOML, from the CLI and from the API: line and column.
    let broken = write_spec(&good.replace("replicas = 3", "replicas = = 3"));
    let output = server.cli(&["deploy", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("slipway.toml:2:"), "{}", text(&output));
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/hello",
        Some(DEPLOY),
        "application/toml",
        good.replace("replicas = 3", "replica = 3").as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("replica") && body.contains("\"code\":\"invalid-spec\""),
        "{body}"
    );

    // An unknown module.
    let unknown = write_spec(
        &good
            .replace("builtin:rolling", "no-such-strategy")
            .replace("\"v1\"", "\"v9\""),
    );
    let output = server.cli(&["deploy", unknown.to_str().unwrap()]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        text(&output).contains("no module named \"no-such-strategy\""),
        "{}",
        text(&output)
    );

    // Uploads: not Wasm, too large, no name.
    let (status, body) = server.request(
        "POST",
        "/v1/modules?name=junk",
        Some(DEPLOY),
        "application/wasm",
        b"#!/bin/sh\necho hi\n",
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not WebAssembly"), "{body}");
    let huge = vec![0u8; slipway::modules::MAX_MODULE_BYTES + 1];
    let (status, body) = server.request("POST", "/v1/modules?name=huge", Some(DEPLOY), "application/wasm", &huge);
    assert_eq!(status, 413, "{body}");
    let (status, _) = server.request("POST", "/v1/modules", Some(DEPLOY), "application/wasm", b"\0asm");
    assert_eq!(status, 400);

    // Tokens: missing, wrong, and too weak a scope.
    let (status, body) = server.request("GET", "/v1/apps", None, "application/json", b"");
    assert_eq!(status, 401, "{body}");
    let (status, _) = server.request(
        "GET",
        "/v1/apps",
        Some("not-a-valid-token-at-all"),
        "application/json",
        b"",
    );
    assert_eq!(status, 401);
    let (status, body) = server.request(
        "PATCH",
        "/v1/apps/hello",
        Some(READ),
        "application/json",
        br#"{"replicas": 2}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("deploy scope"), "{body}");

    // PATCH of an unknown app.
    let (status, body) = server.request(
        "PATCH",
        "/v1/apps/nope",
        Some(DEPLOY),
        "application/json",
        br#"{"replicas": 2}"#,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"code\":\"unknown-app\""), "{body}");

    // Operations that make no sense in this state, or with these numbers.
    let (status, body) = server.request(
        "POST",
        "/v1/modules?name=../etc/passwd",
        Some(DEPLOY),
        "application/wasm",
        b"\0asm",
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("\"code\":\"invalid-module-name\"") && body.contains("is not a module name"),
        "{body}"
    );
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/hello/scale",
        Some(DEPLOY),
        "application/json",
        br#"{"replicas": 5000}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("over the limit"), "{body}");
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/hello/route",
        Some(DEPLOY),
        "application/json",
        br#"{"weights": {"7": 10}}"#,
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no ready instance"), "{body}");
    let (status, body) = server.request("POST", "/v1/apps/hello/retry", Some(DEPLOY), "application/json", b"");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("only a failed revision can be retried"), "{body}");
    let (status, body) = server.request("POST", "/v1/apps/hello/rollback", Some(DEPLOY), "application/json", b"");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("nothing to roll back to"), "{body}");

    let after = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(before["revisions"], after["revisions"], "nothing changed");
    assert_eq!(server.get_json("/v1/modules")["modules"], serde_json::json!([]));
    let _ = ADMIN;
}

#[test]
fn a_patch_from_ci_starts_a_rollout_and_an_unchanged_spec_does_not() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = write_spec(&hello_spec(addr, "v1", "builtin:rolling", "{}", ""));
    assert!(server.cli(&["deploy", spec.to_str().unwrap()]).status.success());
    let again = server.cli(&["deploy", spec.to_str().unwrap()]);
    assert!(text(&again).contains("unchanged"), "{}", text(&again));

    let (status, body) = server.request(
        "PATCH",
        "/v1/apps/hello",
        Some(DEPLOY),
        "application/json",
        br#"{"process": {"env": {"VERSION": "v2"}}}"#,
    );
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["revision"], 2);
    let (status, body) = server.request(
        "PATCH",
        "/v1/apps/hello",
        Some(DEPLOY),
        "application/json",
        br#"{"replicas": 2}"#,
    );
    assert_eq!(status, 409, "a rollout is running: {body}");
    assert!(
        body.contains(answer["rollout"].as_str().unwrap()),
        "the conflict names the running rollout: {body}"
    );
    let rollout = answer["rollout"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = server.get_json(&format!("/v1/rollouts/{rollout}"));
        if state["state"] != "running" {
            assert_eq!(state["state"], "succeeded", "{state}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rollout did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    all_v2(addr);
    let metrics = server.request("GET", "/metrics", None, "text/plain", b"").1;
    assert!(
        metrics.contains("slipway_rollouts_total{outcome=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slipway_router_requests_total{app=\"hello\""),
        "{metrics}"
    );
}

#[test]
fn stopping_the_runner_leaves_no_child_processes() {
    let mut server = Server::start();
    let addr = listen();
    let spec = write_spec(&hello_spec(addr, "v1", "builtin:rolling", "{}", ""));
    assert!(server.cli(&["deploy", spec.to_str().unwrap()]).status.success());
    let plane = server.plane_pid().expect("a data plane runs");
    let children = server.instances();
    assert_eq!(
        children.len(),
        3,
        "three instances run as the data plane's children: {children:?}"
    );
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    for pid in children.into_iter().chain([plane]) {
        assert!(!alive(pid), "{pid} outlived a runner stopped on purpose");
    }
}
