//! The same strategies, unchanged, on every engine: local processes or containers (Podman),
//! behind the built-in router or HAProxy. Each rolls v1 → v2 under keep-alive load, and no
//! request may fail (recreate aside, whose gap is its maintenance page by design).

use std::process::Command;
use std::time::Duration;

use crate::acme::{https_get, plain_redirect, served_serial};
use crate::containers::{engine, image, listed};
use crate::lifecycle::{deploy, listen, push, runtime, sample, text};
use crate::load::{Load, assert_wrk_clean, wrk_by_host};
use crate::runner::{HelloSpec, Server, free_port, unique_dir};
use crate::support::exclusive;

const HAPROXY: &str = "[router]\nkind = \"haproxy\"\n";

/// The four built-ins and the Rust example strategy, with the parameters a user would give.
pub(crate) const STRATEGIES: &[(&str, &str)] = &[
    ("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }"),
    ("builtin:blue-green", "{ verify-path = \"/healthz\" }"),
    ("builtin:canary", "{ steps = [50, 100], pause-seconds = 0 }"),
    ("builtin:recreate", "{}"),
    ("waves", "{ wave-size = 2 }"),
];

/// Rolls every strategy on one engine; each app is new, on its own address.
fn every_strategy(container: bool, tables: &str) {
    let _serial = exclusive();
    let server = if container {
        Server::start_with(&unique_dir("data"), free_port(), &[("DOCKER_HOST", engine())])
    } else {
        Server::start()
    };
    push(&server, "example-strategy-waves", "waves");
    let image = container.then(image);
    for (index, (strategy, params)) in STRATEGIES.iter().enumerate() {
        let name = format!("engine-{index}");
        let web = listen();
        let v1 = HelloSpec {
            listen: web,
            strategy,
            params,
            image,
            tables,
            ..HelloSpec::default()
        };
        let named = |spec: &HelloSpec| {
            spec.toml()
                .replacen("name = \"hello\"", &format!("name = \"{name}\""), 1)
        };
        let first = server.cli(&["deploy", crate::runner::write_spec(&named(&v1)).to_str().unwrap()]);
        assert!(first.status.success(), "{strategy}: {}", text(&first));
        let runtime = runtime();
        let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(2)) });
        std::thread::sleep(Duration::from_millis(300));
        let v2 = HelloSpec { version: "v2", ..v1 };
        let second = server.cli(&["deploy", crate::runner::write_spec(&named(&v2)).to_str().unwrap()]);
        assert!(second.status.success(), "{strategy}: {}", text(&second));
        std::thread::sleep(Duration::from_millis(300));
        let tally = runtime.block_on(load.stop());
        assert!(tally.ok > 50, "{strategy}: {tally:?}");
        assert_eq!(tally.failed, 0, "{strategy}: requests failed: {tally:?}");
        if *strategy != "builtin:recreate" {
            assert_eq!(tally.unavailable, 0, "{strategy}: 503s: {tally:?}");
        }
        let after = sample(web);
        assert_eq!(
            after.by_version.keys().collect::<Vec<_>>(),
            ["v2"],
            "{strategy}: {after:?}"
        );
        // Done with it: its instances (and containers) go, the next app starts clean.
        let deleted = server.cli(&["delete", &name]);
        assert!(deleted.status.success(), "{}", text(&deleted));
    }
    if container {
        for index in 0..STRATEGIES.len() {
            assert!(listed(&server.data, &format!("engine-{index}"), true).is_empty());
        }
    }
}

#[test]
fn every_strategy_on_processes_and_the_builtin_router() {
    every_strategy(false, "");
}

#[test]
fn every_strategy_on_processes_and_haproxy() {
    every_strategy(false, HAPROXY);
}

#[test]
fn every_strategy_on_containers_and_the_builtin_router() {
    every_strategy(true, "");
}

#[test]
fn every_strategy_on_containers_and_haproxy() {
    every_strategy(true, HAPROXY);
}

/// HAProxy processes started for `data`.
fn haproxies(data: &std::path::Path) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("{}/haproxy/haproxy.cfg", data.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn haproxy_serves_through_a_runner_kill_and_stops_with_the_runner() {
    let _serial = exclusive();
    let mut server = Server::start();
    let web = listen();
    let spec = HelloSpec {
        listen: web,
        tables: HAPROXY,
        ..HelloSpec::default()
    };
    let output = deploy(&server, &spec);
    assert!(output.status.success(), "{}", text(&output));
    assert!(!haproxies(&server.data).is_empty(), "HAProxy runs for the app");
    let metrics = server.request("GET", "/metrics", None, "", b"").1;
    assert!(
        metrics.contains("slipway_haproxy_requests_total{app=\"hello\",revision=\"1\"}"),
        "{metrics}"
    );
    // Maintenance answers the built-in router's page.
    let on = server.cli(&["maintenance", "hello", "on"]);
    assert!(on.status.success(), "{}", text(&on));
    let during = sample(web);
    assert!(during.ok == 0 && during.unavailable > 0, "{during:?}");
    let off = server.cli(&["maintenance", "hello", "off"]);
    assert!(off.status.success(), "{}", text(&off));

    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(2)) });
    std::thread::sleep(Duration::from_millis(300));
    let data = server.data.clone();
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let server = Server::start_in(&data);
    std::thread::sleep(Duration::from_millis(500));
    let tally = runtime.block_on(load.stop());
    assert!(tally.ok > 50, "{tally:?}");
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    drop(server);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !haproxies(&data).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy outlived a runner stopped on purpose"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn haproxy_and_containers_serve_while_the_whole_of_slipway_is_down() {
    let _serial = exclusive();
    let data = unique_dir("data");
    let start = || Server::start_with(&data, free_port(), &[("DOCKER_HOST", engine())]);
    let mut server = start();
    let web = listen();
    let spec = HelloSpec {
        listen: web,
        image: Some(image()),
        tables: HAPROXY,
        ..HelloSpec::default()
    };
    let output = deploy(&server, &spec);
    assert!(output.status.success(), "{}", text(&output));
    let haproxy = haproxies(&data);
    assert!(!haproxy.is_empty());

    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(2)) });
    std::thread::sleep(Duration::from_millis(300));
    // Runner and data plane die; HAProxy and the containers do not.
    let plane = server.plane_pid().expect("a data plane runs");
    server.kill();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plane as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::thread::sleep(Duration::from_secs(1));
    let while_down = load.snapshot();
    assert!(while_down.ok > 0, "{while_down:?}");
    drop(server);
    // A new runner and data plane adopt HAProxy, its routes and the containers as they are.
    let mut server = start();
    std::thread::sleep(Duration::from_secs(1));
    let tally = runtime.block_on(load.stop());
    assert!(tally.ok > 100, "{tally:?}");
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    assert_eq!(haproxies(&data), haproxy, "the same HAProxy serves on");
    // And it still takes changes: a rollout on the adopted HAProxy loses nothing.
    let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(2)) });
    let v2 = HelloSpec { version: "v2", ..spec };
    let output = deploy(&server, &v2);
    assert!(output.status.success(), "{}", text(&output));
    let tally = runtime.block_on(load.stop());
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");
    assert_eq!(sample(web).by_version.keys().collect::<Vec<_>>(), ["v2"]);
    assert!(server.stop().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !listed(&data, "hello", true).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "containers outlived a runner stopped on purpose"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn haproxy_missing_or_a_router_change_in_place_is_refused_with_the_reason() {
    // No HAProxy where it is said to be: the deploy fails saying how to get one.
    let server = Server::start_with(
        &unique_dir("data"),
        free_port(),
        &[("SLIPWAY_HAPROXY", "/nonexistent/haproxy")],
    );
    let spec = HelloSpec {
        listen: listen(),
        tables: HAPROXY,
        ..HelloSpec::default()
    };
    let output = deploy(&server, &spec);
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(shown.contains("cannot start haproxy"), "{shown}");
    assert!(shown.contains("SLIPWAY_HAPROXY"), "{shown}");

    // An app on the built-in router cannot move to HAProxy in place; it keeps serving.
    let server = Server::start();
    let web = listen();
    let builtin = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    };
    assert!(deploy(&server, &builtin).status.success());
    let moved = deploy(
        &server,
        &HelloSpec {
            tables: HAPROXY,
            ..builtin
        },
    );
    let shown = text(&moved);
    assert!(!moved.status.success(), "{shown}");
    assert!(
        shown.contains("routed by builtin and cannot move to haproxy in place"),
        "{shown}"
    );
    assert!(shown.contains("delete the app and deploy it again"), "{shown}");
    let after = sample(web);
    assert!(after.ok > 0 && after.failed == 0, "{after:?}");
}

#[test]
fn haproxy_shares_one_port_among_apps_by_host_and_path_and_deploys_them_under_load() {
    let _serial = exclusive();
    let server = Server::start();
    let web = listen();
    let app = |name: &str, version: &str, route: &str, extra_env: &'static str| {
        let spec = HelloSpec {
            listen: web,
            version,
            strategy: "builtin:blue-green",
            params: "{ verify-path = \"/healthz\" }",
            extra_env,
            ..HelloSpec::default()
        }
        .toml()
        .replacen("name = \"hello\"", &format!("name = \"{name}\""), 1);
        format!("{spec}\n[router]\nkind = \"haproxy\"\n{route}\n")
    };
    let deploy = |name: &str, version: &str, route: &str, extra_env: &'static str| {
        let out = server.cli(&[
            "deploy",
            crate::runner::write_spec(&app(name, version, route, extra_env))
                .to_str()
                .unwrap(),
        ]);
        assert!(out.status.success(), "{name} {version}: {}", text(&out));
    };
    deploy("shop", "shop1", "hosts = [\"shop.test\", \"*.shop.test\"]", "");
    deploy("blog", "blog1", "hosts = [\"blog.test\"]", "");
    // Under shop.test, /env belongs to another app.
    deploy(
        "api",
        "api1",
        "hosts = [\"shop.test\"]\npath-prefix = \"/env\"",
        ", HELLO_SHOW_ENV = \"VERSION\"",
    );
    let get = |host: &str, path: &str| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-H", &format!("Host: {host}")])
            .arg(format!("http://{web}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("shop.test", "/"), "hello from shop1\n");
    assert_eq!(get("www.shop.test:8080", "/"), "hello from shop1\n");
    assert_eq!(get("blog.test", "/"), "hello from blog1\n");
    assert_eq!(get("shop.test", "/env"), "VERSION=api1\n");
    assert_eq!(get("elsewhere.test", "/"), "no app is routed here for this host");
    // The app learns how the client came, whatever the client claimed.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-H", "Host: shop.test:8080"])
        .args(["-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-Host: evil.test"])
        .args(["-H", "Forwarded: for=203.0.113.9"])
        .arg(format!("http://{web}/headers"))
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    for line in [
        "x-forwarded-proto: http\n",
        "x-forwarded-host: shop.test:8080\n",
        "x-forwarded-for: 127.0.0.1\n",
        "forwarded: for=203.0.113.9\n",
        "forwarded: for=127.0.0.1;host=\"shop.test:8080\";proto=http\n",
    ] {
        assert!(seen.contains(line), "{line:?} not in\n{seen}");
    }
    assert!(!seen.contains("https") && !seen.contains("evil"), "{seen}");
    // A host already routed on the address is refused, naming both apps.
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/thief",
        Some(crate::runner::ADMIN),
        "application/toml",
        app("thief", "x", "hosts = [\"blog.test\"]", "").as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("blog.test on 127.0.0.1:")
            && body.contains("routed to app blog already, and app thief claims it too"),
        "{body}"
    );

    // Both apps deployed blue-green while wrk loads both by host name.
    let loads = [
        wrk_by_host(format!("http://{web}/"), "shop.test", 10),
        wrk_by_host(format!("http://{web}/"), "blog.test", 10),
    ];
    std::thread::sleep(Duration::from_secs(1));
    deploy("shop", "shop2", "hosts = [\"shop.test\", \"*.shop.test\"]", "");
    deploy("blog", "blog2", "hosts = [\"blog.test\"]", "");
    for load in loads {
        assert_wrk_clean(&load.join().unwrap());
    }
    assert_eq!(get("shop.test", "/"), "hello from shop2\n");
    assert_eq!(get("blog.test", "/"), "hello from blog2\n");
    assert_eq!(get("shop.test", "/env"), "VERSION=api1\n");
    // Each app's traffic is its own, though they share a frontend: api saw the two /env.
    let traffic = server.get_json("/v1/apps/api/traffic?window=60s");
    assert_eq!(traffic["stats"]["requests"], 2, "{traffic}");
}

#[test]
fn haproxy_serves_https_by_sni_from_files_redirects_and_reads_a_renewed_certificate() {
    let _serial = exclusive();
    let ca = unique_dir("haproxy-ca");
    let issue = |host: &str| {
        let out = Command::new("sh")
            .arg(crate::support::workspace().join("tests/tls/issue.sh"))
            .arg(&ca)
            .arg(host)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    issue("shop.test");
    issue("blog.test");
    let root = ca.join("ca.pem");
    let server = Server::start();
    let (web, https) = (listen(), listen());
    let deploy = |name: &str, version: &str| {
        let spec = HelloSpec {
            listen: web,
            version,
            strategy: "builtin:blue-green",
            params: "{ verify-path = \"/healthz\" }",
            ..HelloSpec::default()
        }
        .toml()
        .replacen("name = \"hello\"", &format!("name = \"{name}\""), 1);
        let host = format!("{name}.test");
        let spec = format!(
            "{spec}\n[router]\nkind = \"haproxy\"\nhosts = [\"{host}\"]\nredirect-https = true\n[router.tls]\nlisten = \"{https}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.join(format!("{host}.pem")).display(),
            ca.join(format!("{host}.key")).display()
        );
        let out = server.cli(&["deploy", crate::runner::write_spec(&spec).to_str().unwrap()]);
        assert!(out.status.success(), "{name} {version}: {}", text(&out));
    };
    deploy("shop", "shop1");
    deploy("blog", "blog1");
    // Each name over its own certificate (curl checks the name against it).
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from shop1\n")
    );
    assert_eq!(
        https_get(&root, "blog.test", https, "/").as_deref(),
        Ok("hello from blog1\n")
    );
    // Plain HTTP is redirected, path and query kept.
    assert_eq!(
        plain_redirect(web, "shop.test", "/cart?x=1"),
        format!("308 https://shop.test:{}/cart?x=1", https.port())
    );

    // A renewed certificate is served within seconds, without a reload.
    let before = served_serial(&root, "shop.test", https);
    issue("shop.test");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_serial(&root, "shop.test", https) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy still serves the old certificate"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A blue-green deploy under load over HTTPS fails no request.
    let load = wrk_by_host(format!("https://127.0.0.1:{}/", https.port()), "shop.test", 8);
    std::thread::sleep(Duration::from_secs(1));
    deploy("shop", "shop2");
    assert_wrk_clean(&load.join().unwrap());
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from shop2\n")
    );
}
