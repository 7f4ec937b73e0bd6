//! The built-in router as a front door: apps sharing one HTTPS port by host name, each with
//! its own certificate from an ACME CA (Pebble; chosen by SNI), plain HTTP redirected to
//! HTTPS, a host claimed twice refused, and blue-green deploys of both under wrk load over
//! HTTPS without a failed request.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::acme::{Pebble, acme_spec, https_get, plain_redirect, wait_certificate, wait_served};
use crate::lifecycle::{listen, text};
use crate::load::{assert_wrk_clean, wrk_by_host};
use crate::runner::{ADMIN, HelloSpec, Server, free_port, unique_dir, write_spec};
use crate::support::exclusive;

/// hello as `name`, answering for `host` on the shared plain and HTTPS addresses, with its
/// certificate from ACME and plain HTTP redirected to HTTPS.
fn spec(name: &str, host: &str, version: &str, plain: SocketAddr, https: SocketAddr) -> String {
    let spec = acme_spec(name, host, version, plain, https);
    spec.replace("[router]\n", "[router]\nredirect-https = true\n")
}

#[test]
fn two_apps_share_one_https_port_by_host_and_deploy_blue_green_under_load_without_a_failed_request() {
    let _serial = exclusive();
    let (plain, https) = (listen(), listen());
    // Let's Encrypt's test CA, validating on the shared plain port.
    let pebble = Pebble::start(plain.port(), Duration::from_secs(3600));
    let env = pebble.runner_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&unique_dir("front-data"), free_port(), &env);
    let deploy = |name: &str, host: &str, version: &str| {
        let out = server.cli(&[
            "deploy",
            write_spec(&spec(name, host, version, plain, https)).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{name} {version}: {}", text(&out));
    };
    deploy("shop", "shop.test", "v1");
    deploy("blog", "blog.test", "v1");
    for app in ["shop", "blog"] {
        wait_certificate(&server, app, "valid", Duration::from_secs(60));
    }
    let root = pebble.root();
    for host in ["shop.test", "blog.test"] {
        wait_served(&root, host, https);
    }

    // Each name gets its app, over a certificate for that name.
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from v1\n")
    );
    assert_eq!(https_get(&root, "blog.test", https, "/healthz").as_deref(), Ok("ok\n"));
    // Browsers get HTTP/2 (ALPN).
    let version = Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}", "--cacert"])
        .arg(&root)
        .arg("--resolve")
        .arg(format!("shop.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://shop.test:{}/", https.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), "2");
    // Plain HTTP is redirected, path and query kept.
    assert_eq!(
        plain_redirect(plain, "shop.test", "/cart?x=1"),
        format!("308 https://shop.test:{}/cart?x=1", https.port())
    );
    // A third app claiming a host already served is refused, naming both apps.
    let thief = spec("thief", "shop.test", "v1", plain, https);
    let (status, body) = server.request(
        "PUT",
        "/v1/apps/thief",
        Some(ADMIN),
        "application/toml",
        thief.as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("shop.test on 127.0.0.1:")
            && body.contains("routed to app shop already, and app thief claims it too"),
        "{body}"
    );

    // Both apps deployed blue-green while wrk loads both over HTTPS.
    let url = format!("https://127.0.0.1:{}/", https.port());
    let loads = [
        wrk_by_host(url.clone(), "shop.test", 12),
        wrk_by_host(url, "blog.test", 12),
    ];
    std::thread::sleep(Duration::from_secs(1));
    deploy("shop", "shop.test", "v2");
    deploy("blog", "blog.test", "v2");
    for load in loads {
        assert_wrk_clean(&load.join().unwrap());
    }
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from v2\n")
    );
    assert_eq!(
        https_get(&root, "blog.test", https, "/").as_deref(),
        Ok("hello from v2\n")
    );
}

#[test]
fn an_apps_limits_reach_its_router_and_bad_traffic_gets_413_and_431() {
    let _serial = exclusive();
    let server = Server::start();
    let web = listen();
    let toml = HelloSpec {
        listen: web,
        ..HelloSpec::default()
    }
    .toml();
    let limited = format!(
        "{toml}\n[router]\nmax-body-size = \"1KiB\"\nmax-header-size = \"8KiB\"\nheader-timeout = \"2s\"\naccess-log = true\n"
    );
    let out = server.cli(&["deploy", write_spec(&limited).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let status = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(format!("http://{web}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&[]), "200");
    assert_eq!(status(&["--data-binary", &"x".repeat(2048)]), "413");
    assert_eq!(status(&["-H", &format!("X-Big: {}", "x".repeat(10 << 10))]), "431");
    // A client that sends half a head and stalls is cut off after the header timeout.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(web).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(9),
        "cut off after {waited:?}"
    );
    // Each request the router answered is a line in the app's access log (the 431 is hyper's
    // own answer to a head it would not read, before any app is chosen).
    let log = server.data.join("output/hello/access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let statuses = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let statuses: Vec<u64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["status"].as_u64())
            .collect();
        if statuses.len() >= 2 || std::time::Instant::now() > deadline {
            break statuses;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(statuses, [200, 413], "{}", log.display());

    // Bad limits are refused with what to write instead.
    let bad = format!("{toml}\n[router]\nmax-header-size = \"1KiB\"\n");
    let (code, body) = server.request("PUT", "/v1/apps/hello", Some(ADMIN), "application/toml", bad.as_bytes());
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("max-header-size") && body.contains("8KiB"), "{body}");
}
