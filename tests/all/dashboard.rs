//! The dashboard in a real browser: Debian's Chromium (`.ci/run` installs it) driven by
//! playwright-core from npm (`tests/browser`, pinned by its lockfile), against a real
//! `slipway serve` running hello. The browser side is `tests/browser/dashboard.test.js`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use slipway::spec;
use slipway::store::{RolloutEnd, RolloutKind, RolloutState, Store};

use crate::runner::{DEPLOY, HelloSpec, READ, Server, free_port, unique_dir, write_spec};
use crate::support::{guest, npm_ci, workspace};

/// `npm ci` in tests/browser, once per test process.
fn browser_toolchain() -> std::path::PathBuf {
    static READY: OnceLock<()> = OnceLock::new();
    let dir = workspace().join("tests/browser");
    READY.get_or_init(|| npm_ci(&dir, "the browser tests"));
    dir
}

/// Revisions of the app "archive": 10,000 deploys, each ended, their revisions long pruned
/// by retention (as on a runner that has deployed it for years).
const ARCHIVE_REVISIONS: u32 = 10_000;

fn seed_long_history(data: &Path, listen: SocketAddr) {
    std::fs::create_dir_all(data).unwrap();
    let store = Store::open(&data.join("slipway.db")).unwrap();
    let spec = spec::parse_toml(
        &HelloSpec {
            listen,
            ..HelloSpec::default()
        }
        .toml()
        .replace("\"hello\"", "\"archive\""),
    )
    .unwrap()
    .to_json();
    store.upsert_app("archive", &spec).unwrap();
    for number in 1..=ARCHIVE_REVISIONS {
        let id = format!("archive-{number}-0");
        store
            .record_rollout("archive", number, RolloutKind::Deploy, &id)
            .unwrap();
        store
            .record_end(&RolloutEnd {
                app: "archive",
                rollout: &id,
                kind: RolloutKind::Deploy,
                target: number,
                state: RolloutState::Failed,
                previous: None,
                summary: "revision never became ready",
                failure: None,
            })
            .unwrap();
    }
}

#[test]
fn the_dashboard_runs_deployments_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium` (as .ci/run does), or set CHROMIUM"
    );
    let dir = browser_toolchain();
    let data = unique_dir("dashboard");
    let archive = SocketAddr::from(([127, 0, 0, 1], free_port()));
    seed_long_history(&data, archive);
    let server = Server::start_with(&data, free_port(), &[]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let v1 = HelloSpec {
        listen,
        ..HelloSpec::default()
    };
    let deployed = server.cli(&["deploy", write_spec(&v1.toml()).to_str().unwrap()]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    // A soak long enough for the page to see the rollout running before it succeeds.
    let v2 = HelloSpec {
        version: "v2",
        soak: "4s",
        ..v1
    };

    let screenshots = workspace().join("target/dashboard");
    let _ = std::fs::remove_dir_all(&screenshots);
    let mut command = Command::new("node");
    command
        .args(["--test", "--test-reporter=spec", "dashboard.test.js"])
        .current_dir(&dir)
        .env("SLIPWAY_API", &server.api)
        .env("SLIPWAY_DEPLOY_TOKEN", DEPLOY)
        .env("SLIPWAY_READ_TOKEN", READ)
        .env("SLIPWAY_ARCHIVE_REVISIONS", ARCHIVE_REVISIONS.to_string())
        .env("SLIPWAY_V2_SPEC", write_spec(&v2.toml()))
        .env("SLIPWAY_MODULE", guest("example-strategy-waves"))
        .env("SLIPWAY_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium);
    // `SLIPWAY_README_IMAGE=docs/images/dashboard-app.png` refreshes the README's picture.
    if let Ok(image) = std::env::var("SLIPWAY_README_IMAGE") {
        command.env("SLIPWAY_README_IMAGE", workspace().join(image));
    }
    let output = command.output().expect("run node");
    assert!(
        output.status.success(),
        "the browser test failed (screenshots in {}):\n{}{}",
        screenshots.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout);
    for line in said.lines().filter(|line| line.contains("archive:")) {
        eprintln!("{}", line.trim());
    }
    for page in [
        "sign-in",
        "apps",
        "app",
        "modules",
        "logs",
        "app-read-only",
        "phone-app",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
