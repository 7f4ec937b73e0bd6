//! The CLI and the HTTP API as people and scripts meet them: every event shown once, output
//! that survives a closed pipe, errors as JSON, deleting an app, one rule for module names,
//! and secrets that reach instances and nothing else.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::lifecycle::{deploy, hook_table, latest_rollout, listen, push, sample, text, wait_rollout_end};
use crate::runner::{DEPLOY, HelloSpec, READ, Server, free_port, unique_dir, write_spec};
use crate::support::{exclusive, workspace};

#[test]
fn deploy_shows_every_event_once_and_route_changes_too() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        params: "{ max-surge = 1, max-unavailable = 0 }",
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let output = deploy(&server, &HelloSpec { version: "v2", ..spec });
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("route     r1="), "route events are shown: {shown}");
    assert!(shown.contains("route     r2=256"), "{shown}");
    let progress: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("progress"))
        .map(|l| l.split_once("progress").unwrap().1)
        .collect();
    for pair in progress.windows(2) {
        assert_ne!(pair[0], pair[1], "a progress report shown twice in a row: {shown}");
    }
    // Every stored event is shown: as many timeline lines as events.
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    let stored = crate::lifecycle::events(&server, &rollout).len();
    let lines = shown
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(lines, stored, "{shown}");
}

#[test]
fn output_into_a_closed_pipe_is_not_a_crash_and_logs_carry_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["simulate", "--strategy", "builtin:rolling", "--replicas", "30"])
        .env("SLIPWAY_CACHE_DIR", workspace().join("target/test-module-cache"))
        .env("SLIPWAY_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (as with `| head -1`); the simulation still ends as it would.
    let output = child.wait_with_output().unwrap();
    assert!(first.contains("rollout"), "{first}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("DEBUG"), "the guest's debug lines are logged: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal"
    );
}

#[test]
fn every_api_error_is_json_with_a_code() {
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    let cases: [(&str, String, &[u8], u16, &str); 5] = [
        ("POST", format!("/v1/rollouts/{rollout}/explode"), b"", 404, "not-found"),
        ("PATCH", "/v1/apps".into(), b"{}", 405, "method-not-allowed"),
        ("DELETE", "/v1/modules".into(), b"", 405, "method-not-allowed"),
        (
            "PUT",
            "/v1/apps/hello/scale".into(),
            br#"{"replicas": 3, "replicas": 5}"#,
            400,
            "bad-request",
        ),
        (
            "PUT",
            "/v1/apps/hello/scale".into(),
            br#"{"replicas": 1001}"#,
            422,
            "invalid-spec",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = server.request(method, &path, Some(DEPLOY), "application/json", body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        let error: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{answer:?}"));
        assert_eq!(error["code"], code, "{method} {path}: {answer}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    // A spec with a key twice says so, and nothing is deployed.
    let spec_json = server.get_json("/v1/apps/hello")["spec"].to_string();
    let twice = spec_json.replacen("\"replicas\":3", "\"replicas\":3,\"replicas\":5", 1);
    assert_ne!(twice, spec_json);
    let (status, answer) = server.request(
        "PUT",
        "/v1/apps/hello",
        Some(DEPLOY),
        "application/json",
        twice.as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("\\\"replicas\\\" appears twice"), "{answer}");
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"].as_array().unwrap().len(), 1, "nothing deployed");
    assert_eq!(sample(addr).failed, 0);
}

#[test]
fn a_module_name_that_uploads_is_a_name_specs_can_use() {
    let server = Server::start();
    push(&server, "fixture-hook-ok", "migrate-v2.1");
    let addr = listen();
    let tables = hook_table("pre", "migrate-v2.1", "{}", "abort", "[]");
    let output = deploy(
        &server,
        &HelloSpec {
            listen: addr,
            tables: &tables,
            ..HelloSpec::default()
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("hook      pre: succeeded"), "{}", text(&output));
}

#[test]
fn deleting_an_app_stops_it_and_keeps_its_history() {
    let _serial = exclusive();
    let server = Server::start();
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());

    // Not while a rollout runs.
    let slow = HelloSpec {
        version: "v2",
        extra_env: ", HELLO_START_DELAY_MS = \"1500\"",
        ..spec
    };
    assert!(
        server
            .cli(&["deploy", "--no-wait", write_spec(&slow.toml()).to_str().unwrap()])
            .status
            .success()
    );
    let refused = server.cli(&["delete", "hello"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("still running"), "{}", text(&refused));
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    assert_eq!(wait_rollout_end(&server, &rollout)["state"], "succeeded");

    let output = server.cli(&["delete", "hello"]);
    assert!(output.status.success(), "{}", text(&output));
    // Three, and perhaps an old one still draining from the rollout.
    assert!(text(&output).contains("instances stopped"), "{}", text(&output));
    assert!(server.instances().is_empty(), "its instances are gone");
    assert!(std::net::TcpStream::connect(addr).is_err(), "its route is closed");
    assert!(text(&server.cli(&["status"])).contains("no apps yet"));
    let history = server.cli(&["history", "hello"]);
    assert!(history.status.success(), "{}", text(&history));
    assert!(text(&history).contains("was deleted"), "{}", text(&history));
    let (status, answer) = server.request("GET", "/v1/apps/hello", Some(READ), "application/json", b"");
    assert_eq!(status, 404, "{answer}");

    // The name can be used again; revision numbers go on.
    assert!(deploy(&server, &HelloSpec { version: "v3", ..spec }).status.success());
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(
        history["revisions"].as_array().unwrap().last().unwrap()["number"],
        3,
        "{history}"
    );
    assert_eq!(sample(addr).by_version.keys().collect::<Vec<_>>(), vec!["v3"]);
}

#[test]
fn secrets_reach_instances_and_nothing_else() {
    let _serial = exclusive();
    let secrets = unique_dir("secrets");
    let file = secrets.join("db");
    std::fs::write(&file, "postgres://app:s3cr3t-from-file@db/app\n").unwrap();
    let data = unique_dir("data");
    let server = Server::start_with(&data, free_port(), &[("SLIPWAY_TEST_API_KEY", "k3y-from-env")]);
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        extra_env: ", HELLO_SHOW_ENV = \"DATABASE_URL,API_KEY\"",
        ..HelloSpec::default()
    }
    .toml()
    .replace(
        "grace-period = \"10s\"",
        &format!(
            "grace-period = \"10s\"\nsecret-env = {{ DATABASE_URL = \"file:{}\", API_KEY = \"env:SLIPWAY_TEST_API_KEY\" }}",
            file.display()
        ),
    );
    let output = server.cli(&["deploy", write_spec(&spec).to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));

    let answer = http_get(addr, "/env");
    assert!(
        answer.contains("DATABASE_URL=postgres://app:s3cr3t-from-file@db/app"),
        "{answer}"
    );
    assert!(answer.contains("API_KEY=k3y-from-env"), "{answer}");

    for path in ["/v1/apps/hello", "/v1/apps/hello/revisions", "/v1/apps"] {
        let (_, body) = server.request_accept("GET", path, Some(READ), "application/json", b"");
        assert!(
            !body.contains("s3cr3t") && !body.contains("k3y-from-env"),
            "{path}: {body}"
        );
        assert!(body.contains("file:"), "the reference is shown: {body}");
    }
    let rollout = latest_rollout(&server)["id"].as_str().unwrap().to_string();
    let events = serde_json::to_string(&crate::lifecycle::events(&server, &rollout)).unwrap();
    assert!(!events.contains("s3cr3t") && !events.contains("k3y-from-env"));
    for name in ["slipway.db", "slipway.db-wal"] {
        let path = data.join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("s3cr3t") && !text.contains("k3y-from-env"),
                "{name} holds a secret"
            );
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert_eq!(mode(&data), 0o700, "the data directory is private");

    // A secret that cannot be read is refused before anything starts, naming it.
    let missing = spec.replace(&file.display().to_string(), "/nonexistent/secret");
    let output = server.cli(&["deploy", write_spec(&missing).to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("DATABASE_URL") && text(&output).contains("/nonexistent/secret"));
    assert_eq!(
        server.get_json("/v1/apps/hello/revisions")["revisions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A value where a reference belongs is refused by the spec.
    let literal = spec.replace("env:SLIPWAY_TEST_API_KEY", "hunter2");
    let output = server.cli(&["deploy", write_spec(&literal).to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("reference"), "{}", text(&output));
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
