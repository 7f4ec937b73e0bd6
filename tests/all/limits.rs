//! Limits a user or an adversary can reach over the API, counted from outside the runner:
//! the size of what a guest leaves behind, how long a guest can sleep, the memory parallel
//! uploads take, and how many times a module is compiled when many apps start at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::lifecycle::{deploy, listen, push, text};
use crate::runner::{DEPLOY, HelloSpec, READ, Server};
use crate::support::exclusive;

/// A field of `/proc/PID/status` in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix("kB")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn huge_guest_output_stays_small_everywhere_it_is_kept() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-misbehave", "misbehave");
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let big = 24 << 20;
    let summary = format!("{{ mode = \"huge-summary\", bytes = {big} }}");
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v2",
            strategy: "misbehave",
            params: &summary,
            ..spec
        },
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        output.stdout.len() < 256 << 10,
        "the CLI printed {} bytes",
        output.stdout.len()
    );
    let error = format!("{{ mode = \"huge-error\", bytes = {big} }}");
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v3",
            strategy: "misbehave",
            params: &error,
            ..spec
        },
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.len() + output.stderr.len() < 256 << 10);

    let (status, body) = server.request_accept("GET", "/v1/apps/hello/revisions", Some(READ), "application/json", b"");
    assert_eq!(status, 200);
    assert!(body.len() < 256 << 10, "GET revisions returned {} bytes", body.len());
    let stored: u64 = ["slipway.db", "slipway.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(server.data.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(stored < 16 << 20, "the database holds {stored} bytes");
    let rss = status_kb(server.pid(), "VmRSS");
    assert!(rss < 300 << 10, "the runner holds {rss} kB");
}

#[test]
fn a_guest_sleeping_on_wasi_clocks_is_stopped_at_the_deadline() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-misbehave", "misbehave");
    let addr = listen();
    let spec = HelloSpec {
        listen: addr,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &spec).status.success());
    let started = Instant::now();
    let output = deploy(
        &server,
        &HelloSpec {
            version: "v2",
            strategy: "misbehave",
            params: "{ mode = \"wasi-sleep\", ms = 600000 }",
            deadline: "3s",
            ..spec
        },
    );
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("deadline"), "{}", text(&output));
    // The deadline is 3 s; before, the sleep ran 30 s past it (to the wall-clock backstop).
    assert!(took < Duration::from_secs(20), "the rollout ended after {took:?}");
}

/// Sends `size` bytes as a module upload; returns the status, or 0 when the runner cut the
/// connection while the bytes were still going (it refuses as soon as the limit is passed).
fn upload(api: &str, size: usize) -> u16 {
    let addr = api.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /v1/modules?name=big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEPLOY}\r\nContent-Type: application/wasm\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    while sent < size {
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn parallel_uploads_stay_near_one_cap_of_memory() {
    let _serial = exclusive();
    let server = Server::start();
    let before = status_kb(server.pid(), "VmRSS");
    let api = server.api.clone();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let uploads: Vec<_> = (0..16).map(|_| scope.spawn(|| upload(&api, 100 << 20))).collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 413 || *s == 0), "{statuses:?}");
    assert!(statuses.contains(&413), "{statuses:?}");
    let peak = status_kb(server.pid(), "VmHWM");
    eprintln!("runner RSS before {before} kB, peak {peak} kB during 16 parallel 100 MB uploads");
    // Before, each upload was read whole into memory: a peak of 676 MiB. Now each costs a
    // chunk in flight.
    assert!(peak < before + (96 << 10), "peak {peak} kB from {before} kB");
    let (_, modules) = server.request_accept("GET", "/v1/modules", Some(READ), "application/json", b"");
    assert!(modules.contains("\"modules\":[]"), "nothing was kept: {modules}");
    let leftovers = std::fs::read_dir(server.data.join("uploads")).unwrap().count();
    assert_eq!(leftovers, 0, "refused uploads leave no files behind");
}

#[test]
fn simultaneous_first_deploys_compile_each_module_once() {
    let _serial = exclusive();
    let server = Server::start();
    let specs: Vec<String> = (0..20)
        .map(|i| {
            HelloSpec {
                listen: listen(),
                ..HelloSpec::default()
            }
            .toml()
            .replace("name = \"hello\"", &format!("name = \"app{i}\""))
            .replace("replicas = 3", "replicas = 1")
        })
        .collect();
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let puts: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let server = &server;
                scope.spawn(move || {
                    let path = format!("/v1/apps/app{i}");
                    server.request("PUT", &path, Some(DEPLOY), "application/toml", spec.as_bytes())
                })
            })
            .collect();
        puts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status != 202).collect();
    assert!(refused.is_empty(), "every deploy is accepted: {refused:?}");
    let (_, metrics) = server.request("GET", "/metrics", None, "text/plain", b"");
    assert!(
        metrics.contains("slipway_modules_loaded_total{how=\"compiled\"} 1\n"),
        "builtin:rolling is compiled once for 20 apps:\n{metrics}"
    );
}
