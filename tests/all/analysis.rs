//! Host API 0.2.0 on a real runner: canary analysis of live traffic under wrk keep-alive load
//! (a version that answers 5% 500s while passing readiness is caught at the first step and
//! rolled back; a good one passes every step), parameter checks at submission, and modules
//! built against other API versions (0.1.0 runs, 0.3.0 is refused).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lifecycle::{deploy, latest_rollout, listen, push, text};
use crate::runner::{ADMIN, HelloSpec, Server};
use crate::support::{exclusive, guest};

/// Steps, pause and analysis of the canary under test: a 5-second window, at least 100
/// requests, the default 1% error limit.
const CANARY: &str = "{ steps = [10, 50, 100], pause-seconds = 3, \
                      analysis = { window-seconds = 5, min-requests = 100, timeout-seconds = 30 } }";
/// The first step's share of traffic: weight 26 of 256.
const FIRST_STEP_SHARE: f64 = 26.0 / 256.0;
const WINDOW_SECONDS: f64 = 5.0;

/// What wrk reported.
#[derive(Debug)]
struct WrkReport {
    requests: u64,
    seconds: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// wrk with keep-alive connections against `url`, until [`stop_wrk`].
fn start_wrk(url: &str) -> Child {
    Command::new("wrk")
        .args(["-t2", "-c16", "-d120s", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk (apt-get install wrk)")
}

/// Stops wrk as Ctrl-C would, and reads its summary.
fn stop_wrk(wrk: Child) -> WrkReport {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wrk.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = wrk.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let number_after = |label: &str| -> Option<f64> {
        let line = said.lines().find(|l| l.contains(label))?;
        let rest = &line[line.find(label)? + label.len()..];
        rest.trim().split([' ', ',']).next()?.parse().ok()
    };
    // "  123456 requests in 30.01s, 15.21MB read"
    let summary = said
        .lines()
        .find(|l| l.contains(" requests in "))
        .unwrap_or_else(|| panic!("{said}"));
    let mut words = summary.split_whitespace();
    let requests = words.next().unwrap().parse().unwrap();
    let seconds = words
        .nth(2)
        .unwrap()
        .trim_end_matches(',')
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let socket_errors = said
        .lines()
        .find(|l| l.contains("Socket errors:"))
        .map(|line| {
            line.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    WrkReport {
        requests,
        seconds,
        non_2xx: number_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64,
        socket_errors,
    }
}

#[test]
fn canary_analysis_passes_a_good_version_and_catches_one_that_fails_five_percent() {
    let _serial = exclusive();
    let server = Server::start();
    let web = listen();
    let v1 = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    };
    let out = deploy(&server, &v1);
    assert!(out.status.success(), "{}", text(&out));

    let wrk = start_wrk(&format!("http://{web}/"));
    std::thread::sleep(Duration::from_secs(1));

    // A good version passes every step, each judged on its own traffic.
    let v2 = HelloSpec {
        listen: web,
        version: "v2",
        strategy: "builtin:canary",
        params: CANARY,
        ..HelloSpec::default()
    };
    let out = deploy(&server, &v2);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let good = latest_rollout(&server);
    let events = crate::lifecycle::events(&server, good["id"].as_str().unwrap());
    let verdicts: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("revision 2: ") && m.contains(" — "))
        .collect();
    assert_eq!(verdicts.len(), 2, "one analysis per step below 100%: {events:?}");
    assert!(
        verdicts
            .iter()
            .all(|v| v.contains("0% errors") && v.contains("— passed (at most 1% errors)")),
        "{verdicts:?}"
    );
    assert!(
        good["summary"]
            .as_str()
            .unwrap()
            .contains("last analysis: revision 2: "),
        "{good}"
    );

    // A version whose readiness probe passes but that answers one request in twenty with a
    // 500 is caught at the first step and rolled back.
    let v3 = HelloSpec {
        listen: web,
        version: "v3",
        strategy: "builtin:canary",
        params: CANARY,
        extra_env: ", HELLO_ERROR_RATE = \"0.05\"",
        ..HelloSpec::default()
    };
    let out = deploy(&server, &v3);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    std::thread::sleep(Duration::from_secs(1));
    let report = stop_wrk(wrk);

    let bad = latest_rollout(&server);
    assert_eq!(bad["state"], "rolled-back", "{bad}");
    let failure = bad["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        failure.contains("analysis at step 10%: revision 3: ")
            && failure.contains("failed: over the limit of at most 1% errors"),
        "{bad}"
    );
    println!("rolled back: {failure}");
    let events = crate::lifecycle::events(&server, bad["id"].as_str().unwrap());
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "weights-changed" && e["weights"]["3"] == 128),
        "the bad version never reached the 50% step: {events:?}"
    );

    // Every request was answered: only the bad version's own 500s failed, and no more of them
    // than its first step's share of the traffic over one analysis window.
    let rate = report.requests as f64 / report.seconds;
    let bound = FIRST_STEP_SHARE * rate * WINDOW_SECONDS;
    println!(
        "wrk: {} requests in {:.1} s ({rate:.0}/s), {} answered 5xx, {} socket errors; \
         bound = step share {FIRST_STEP_SHARE:.3} × {rate:.0}/s × {WINDOW_SECONDS} s window = {bound:.0} \
         (at 5% errors about {:.0} expected)",
        report.requests,
        report.seconds,
        report.non_2xx,
        report.socket_errors,
        bound * 0.05
    );
    assert_eq!(report.socket_errors, 0, "{report:?}");
    assert!(report.non_2xx > 0, "the bad version was never exposed: {report:?}");
    assert!(
        (report.non_2xx as f64) <= bound,
        "{} failed requests reached users, over the bound of {bound:.0}: {report:?}",
        report.non_2xx
    );
}

#[test]
fn a_strategy_refuses_bad_parameters_when_the_spec_is_submitted() {
    let _serial = exclusive();
    let server = Server::start();
    let web = listen();
    let bad = HelloSpec {
        listen: web,
        params: "{ max-surge = \"lots\" }",
        ..HelloSpec::default()
    };
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/hello",
        Some(ADMIN),
        "application/toml",
        bad.toml().as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("strategy.params: builtin:rolling refused them") && body.contains("max-surge"),
        "{body}"
    );
    let out = deploy(&server, &bad);
    assert!(!out.status.success());
    assert!(text(&out).contains("refused them"), "{}", text(&out));
    // Nothing was recorded.
    let (status, _) = server.request("GET", "/v1/apps/hello", Some(ADMIN), "", b"");
    assert_eq!(status, 404);

    let good = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    };
    let out = deploy(&server, &good);
    assert!(out.status.success(), "{}", text(&out));
    for patch in [
        r#"{"strategy": {"module": "builtin:canary", "params": {"steps": [50, 10]}}}"#,
        r#"{"strategy": {"module": "builtin:canary", "params": {"analysis": {"max-error-rate": "lots"}}}}"#,
    ] {
        let (status, body) = server.request(
            "PATCH",
            "/v1/apps/hello",
            Some(ADMIN),
            "application/merge-patch+json",
            patch.as_bytes(),
        );
        assert_eq!(status, 422, "{patch}: {body}");
        assert!(body.contains("builtin:canary refused them"), "{body}");
    }
    assert!(
        server
            .request(
                "PATCH",
                "/v1/apps/hello",
                Some(ADMIN),
                "application/merge-patch+json",
                br#"{"strategy": {"module": "builtin:canary", "params": {"analysis": {"max-error-rate": "lots"}}}}"#
            )
            .1
            .contains("is not an error rate")
    );
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"].as_array().unwrap().len(), 1, "{history}");
}

#[test]
fn a_module_built_against_0_1_0_deploys_and_one_built_for_0_3_0_is_refused() {
    let _serial = exclusive();
    let server = Server::start();
    push(&server, "fixture-api-0-1-0", "old-api");
    let spec = HelloSpec {
        listen: listen(),
        strategy: "old-api",
        ..HelloSpec::default()
    };
    let out = deploy(&server, &spec);
    assert!(out.status.success(), "{}", text(&out));
    let rollout = latest_rollout(&server);
    assert!(
        rollout["summary"].as_str().unwrap().contains("built against 0.1.0"),
        "{rollout}"
    );
    let modules = server.get_json("/v1/modules");
    assert!(modules.to_string().contains("old-api"), "{modules}");

    let future = guest("fixture-api-0-3-0");
    let out = server.cli(&["module", "push", future.to_str().unwrap(), "--name", "future"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("slipway:deploy@0.3.0") && said.contains("upgrade the runner"),
        "{said}"
    );
}

/// A Prometheus of its own, on a free port, with an empty configuration: instant queries such
/// as `vector(0.25)` need no data.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = crate::runner::unique_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
        let port = crate::runner::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (apt-get install prometheus)");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_strategy_granted_a_prometheus_queries_it_and_one_without_the_grant_is_denied() {
    let _serial = exclusive();
    let prometheus = Prometheus::start();
    let server = Server::start();
    push(&server, "fixture-prometheus-gate", "gate");
    let web = listen();
    let grant = format!("grants = [\"prometheus:{}\"]", prometheus.url);
    let gated = |query: &str, grant: &str| {
        let params = format!("{{ query = \"{query}\", max = 0.5 }}\n{grant}");
        let spec = HelloSpec {
            listen: web,
            strategy: "gate",
            params: &params,
            ..HelloSpec::default()
        };
        let out = deploy(&server, &spec);
        (out.status.success(), latest_rollout(&server), text(&out))
    };

    // Prometheus may take a moment before it answers queries.
    let (ok, rollout, said) = gated("vector(0.25)", &grant);
    assert!(ok, "{said}");
    assert!(
        rollout["summary"].as_str().unwrap().contains("prometheus said 0.25"),
        "{rollout}"
    );

    let (ok, rollout, said) = gated("vector(0.75)", &grant);
    assert!(!ok, "{said}");
    assert!(
        rollout["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("vector(0.75) = 0.75, over 0.5"),
        "{rollout}"
    );

    let (ok, rollout, said) = gated("sum(no_such_metric)", &grant);
    assert!(!ok, "{said}");
    let failure = rollout["failure"]["message"].as_str().unwrap();
    assert!(failure.contains("no series matched"), "{rollout}");

    let (ok, rollout, said) = gated("vector(0.25)", "");
    assert!(!ok, "{said}");
    let failure = rollout["failure"]["message"].as_str().unwrap();
    assert!(failure.contains("grants no Prometheus"), "{rollout}");
}

/// The same analyses in `slipway simulate`'s modelled traffic: 200 requests per second.
mod simulated {
    use slipway::events::{EventKind, RolloutOutcome};

    use crate::support::{Sim, load};

    fn traffic(mut sim: Sim, errors: &[(u32, f64)]) -> Sim {
        sim.config.traffic_rps = 200.0;
        for &(revision, rate) in errors {
            sim.config.error_rates.insert(revision, rate);
        }
        sim
    }

    /// The weights the rollout set, in order.
    fn routes(run: &crate::support::Outcome) -> Vec<Vec<(u32, u32)>> {
        run.events()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::WeightsChanged { weights } => Some(weights.iter().map(|(r, w)| (*r, *w)).collect()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn blue_green_switches_back_when_the_traffic_after_the_switch_fails() {
        let module = load("builtin:blue-green").await;
        let sim = traffic(Sim::new(4), &[(2, 0.05)]).params(r#"{"analysis": {"window-seconds": 20}}"#);
        let run = sim.run(&module).await;
        assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
        let failure = run.report.failure.as_ref().unwrap();
        assert!(
            failure.message.contains("analysis after the switch: revision 2: ")
                && failure.message.contains("over the limit of at most 1% errors"),
            "{}",
            run.trace()
        );
        // All traffic went to 2, and straight back to 1 by the strategy itself.
        let routes = routes(&run);
        assert_eq!(routes[0], [(2, 256)], "{}", run.trace());
        assert_eq!(routes[1], [(1, 256)], "{}", run.trace());
    }

    #[tokio::test]
    async fn blue_green_keeps_a_good_switch_and_says_so() {
        let module = load("builtin:blue-green").await;
        let sim = traffic(Sim::new(4), &[(1, 0.02), (2, 0.025)])
            .params(r#"{"analysis": {"window-seconds": 20, "max-error-rate": "+1%"}}"#);
        let run = sim.run(&module).await;
        assert_eq!(run.report.outcome, RolloutOutcome::Succeeded, "{}", run.trace());
        assert!(
            run.report.summary.contains("analysis: revision 2: ")
                && run.report.summary.contains("passed (at most 1 point above the stable "),
            "{}",
            run.report.summary
        );
    }

    #[tokio::test]
    async fn a_canary_step_without_enough_traffic_waits_then_fails_saying_so() {
        let module = load("builtin:canary").await;
        let sim =
            Sim::new(4).params(r#"{"steps": [25, 100], "analysis": {"window-seconds": 10, "timeout-seconds": 60}}"#);
        let run = sim.run(&module).await;
        assert_eq!(run.report.outcome, RolloutOutcome::RolledBack, "{}", run.trace());
        let failure = &run.report.failure.as_ref().unwrap().message;
        assert!(
            failure.contains("only 0 requests in the last 10 s, fewer than the 100 the analysis needs; waited 60 s"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_canary_judged_relative_to_a_stable_revision_that_fails_too() {
        let module = load("builtin:canary").await;
        let params = r#"{"steps": [10, 50, 100], "analysis": {"window-seconds": 20, "max-error-rate": "+1%"}}"#;
        let good = traffic(Sim::new(10), &[(1, 0.02), (2, 0.025)])
            .params(params)
            .run(&module)
            .await;
        assert_eq!(good.report.outcome, RolloutOutcome::Succeeded, "{}", good.trace());
        let worse = traffic(Sim::new(10), &[(1, 0.02), (2, 0.04)])
            .params(params)
            .run(&module)
            .await;
        assert_eq!(worse.report.outcome, RolloutOutcome::RolledBack, "{}", worse.trace());
        assert!(
            worse
                .report
                .failure
                .as_ref()
                .unwrap()
                .message
                .contains("analysis at step 10%"),
            "{}",
            worse.trace()
        );
    }
}
