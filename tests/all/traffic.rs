//! The built-in router measures each revision's traffic — requests by status class,
//! connection errors, latency quantiles over a window — and `slipway traffic` (and
//! `GET /v1/apps/{app}/traffic`) shows it: the ground the traffic analysis stands on.

use std::time::Duration;

use serde_json::Value;

use crate::lifecycle::{deploy, listen, runtime, text};
use crate::load::Load;
use crate::runner::{HelloSpec, Server};
use crate::support::exclusive;

#[test]
fn the_builtin_router_measures_what_a_revision_answers_and_how_fast() {
    measured("");
}

#[test]
fn haproxy_measures_what_a_revision_answers_and_how_fast() {
    measured("[router]\nkind = \"haproxy\"\n");
}

fn measured(tables: &str) {
    let _serial = exclusive();
    let server = Server::start();
    let web = listen();
    // One answer in twenty is a 500, every answer takes at least 20 ms; /healthz is green.
    let spec = HelloSpec {
        listen: web,
        extra_env: ", HELLO_ERROR_RATE = \"0.05\", HELLO_RESPONSE_DELAY_MS = \"20\"",
        tables,
        ..HelloSpec::default()
    };
    let out = deploy(&server, &spec);
    assert!(out.status.success(), "{}", text(&out));

    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(1)) });
    std::thread::sleep(Duration::from_secs(2));
    let tally = runtime.block_on(load.stop());
    assert!(tally.ok > 100, "{tally:?}");
    // HAProxy sends its line for a request once the request is done; give them a moment.
    std::thread::sleep(Duration::from_millis(200));

    let out = server.cli(&["traffic", "hello", "--window", "30s", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &report["stats"];
    assert_eq!(report["revision"], 1, "{report}");
    assert_eq!(stats["window_ms"], 30_000);
    // Every request the load sent went through the router, and nothing else did (probes go
    // to the instances directly).
    let requests = stats["requests"].as_u64().unwrap();
    assert_eq!(
        requests,
        tally.ok + tally.failed + tally.unavailable,
        "{report} {tally:?}"
    );
    assert_eq!(
        stats["by_class"][4].as_u64().unwrap(),
        tally.failed,
        "{report} {tally:?}"
    );
    let rate = stats["by_class"][4].as_u64().unwrap() as f64 / requests as f64;
    assert!((0.04..=0.06).contains(&rate), "5xx share {rate} in {report}");
    assert_eq!(stats["connection_errors"], 0);
    let p50 = stats["p50_us"].as_u64().unwrap();
    let p99 = stats["p99_us"].as_u64().unwrap();
    assert!(p50 >= 20_000, "p50 {p50} µs is below hello's 20 ms");
    assert!(p99 >= p50 && p99 < 2_000_000, "p99 {p99} µs");

    let human = server.cli(&["traffic", "hello"]);
    assert!(human.status.success(), "{}", text(&human));
    let said = text(&human);
    assert!(
        said.contains("hello r1, last 60 s:") && said.contains("% errors"),
        "{said}"
    );

    // Asking wrongly says what is wrong.
    let missing = server.cli(&["traffic", "hello", "--revision", "9"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("revision 9 of hello is not running"),
        "{}",
        text(&missing)
    );
    let wide = server.cli(&["traffic", "hello", "--window", "1h"]);
    assert!(!wide.status.success());
    assert!(
        text(&wide).contains("is not a duration from 1s to 300s"),
        "{}",
        text(&wide)
    );
}
