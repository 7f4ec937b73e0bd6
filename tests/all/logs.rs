//! `slipway logs` and `GET /v1/apps/{app}/logs`: instances' output, read back from the files
//! the data plane writes, chosen by revision or instance, and followed as it grows.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::lifecycle::{deploy, listen, text};
use crate::runner::{ADMIN, HelloSpec, Server};

#[test]
fn logs_show_each_instances_output_by_revision_and_instance() {
    let server = Server::start();
    let web = listen();
    let v1 = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &v1).status.success());
    let v2 = HelloSpec { version: "v2", ..v1 };
    assert!(deploy(&server, &v2).status.success());

    let all = server.cli(&["logs", "hello"]);
    assert!(all.status.success(), "{}", text(&all));
    let shown = String::from_utf8_lossy(&all.stdout).into_owned();
    // Every line is prefixed with its instance; both revisions' instances are there.
    assert!(shown.lines().all(|l| l.starts_with("hello-r")), "{shown}");
    assert!(shown.contains("hello v1 listening on"), "{shown}");
    assert!(shown.contains("hello v2 listening on"), "{shown}");

    let second = server.cli(&["logs", "hello", "--revision", "2"]);
    let shown = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(shown.contains("hello v2 listening on"), "{shown}");
    assert!(!shown.contains("hello v1"), "{shown}");
    let instance = shown.split(" | ").next().unwrap().to_string();
    let one = server.cli(&["logs", "hello", "--instance", &instance, "--tail", "1"]);
    let shown = String::from_utf8_lossy(&one.stdout).into_owned();
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.starts_with(&format!("{instance} | ")), "{shown}");

    // Mistakes are named.
    let missing = server.cli(&["logs", "hello", "--instance", "hello-r9-99"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("no output from an instance \"hello-r9-99\""),
        "{}",
        text(&missing)
    );
    let (status, body) = server.request("GET", "/v1/apps/hello/logs?tail=many", Some(ADMIN), "", b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tail must be a whole number"), "{body}");
    let (status, body) = server.request("GET", "/v1/apps/nope/logs", Some(ADMIN), "", b"");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn followed_logs_stream_new_instances_output() {
    let server = Server::start();
    let web = listen();
    let spec = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "GET /v1/apps/hello/logs?tail=0&follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A fourth instance starts and says so.
    let scaled = server.cli(&["scale", "hello", "4"]);
    assert!(scaled.status.success(), "{}", text(&scaled));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("hello v1 listening on") {
        assert!(Instant::now() < deadline, "nothing new followed: {seen}");
        if let Ok(n) = stream.read(&mut buffer) {
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/plain"), "{seen}");
}
