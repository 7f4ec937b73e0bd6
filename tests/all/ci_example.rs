//! `examples/ci`: the deploy job that its GitHub Actions workflow and GitLab CI job run,
//! `deploy.sh`, run as they run it (the environment in, the exit status out) against a local
//! runner with a freshly minted deploy-scope token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::lifecycle::{listen, sample, text};
use crate::runner::{ADMIN, READ, Server, free_port, hello, unique_dir};
use crate::support::{exclusive, guest, workspace};

/// A new deploy token, as `examples/ci/README.md` mints one (`openssl rand -hex 32`).
fn mint() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` with `from` replaced by `to`, which must be there.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in:\n{text}");
    text.replace(from, to)
}

/// A spec from `examples/`, on `addr`, written to a fresh directory.
fn example_spec(file: &str, edits: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(workspace().join(file)).unwrap();
    for (from, to) in edits {
        text = replaced(&text, from, to);
    }
    let path = unique_dir("ci-spec").join("slipway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Job<'a> {
    server: &'a Server,
    releases: PathBuf,
    out: PathBuf,
}

impl Job<'_> {
    /// Runs `examples/ci/deploy.sh` with the environment the CI files give it. The app and the
    /// strategy are built already (the test suite's builds), so the job installs and pushes
    /// them rather than building them again.
    fn run(&self, token: Option<&str>, spec: &Path, version: &str) -> Output {
        let slipway_dir = Path::new(env!("CARGO_BIN_EXE_slipway")).parent().unwrap();
        let path = format!(
            "{}:{}",
            slipway_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("bash");
        command
            .arg(workspace().join("examples/ci/deploy.sh"))
            .current_dir(workspace())
            .env("PATH", path)
            .env("SLIPWAY_SERVER", &self.server.api)
            .env("SPEC", spec)
            .env("VERSION", version)
            .env("BUILD_APP", "")
            .env("APP_BINARY", hello())
            .env("RELEASES_DIR", &self.releases)
            .env("STRATEGY_WASM", guest("example-strategy-waves"))
            .env("OUT_DIR", &self.out)
            .env_remove("SLIPWAY")
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_DATA_DIR")
            .env_remove("STRATEGY_NAME")
            .env_remove("RECONNECT");
        if let Some(token) = token {
            command.env("SLIPWAY_TOKEN", token);
        }
        command.output().expect("run examples/ci/deploy.sh")
    }

    /// The JSON document `slipway deploy --output json` left.
    fn document(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.out.join("rollout.json")).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("rollout.json is not JSON ({e}): {text}"))
    }

    /// The exit status the job recorded for the CI's last step.
    fn recorded_exit(&self) -> String {
        std::fs::read_to_string(self.out.join("exit-code"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn versions(addr: SocketAddr) -> Vec<String> {
    let tally = sample(addr);
    assert_eq!(tally.failed, 0, "{tally:?}");
    tally.by_version.keys().cloned().collect()
}

#[test]
fn the_ci_job_deploys_fails_with_the_rollout_and_needs_a_deploy_token() {
    let _serial = exclusive();
    let minted = mint();
    let server = Server::start_with(
        &unique_dir("data"),
        free_port(),
        &[("SLIPWAY_TOKENS", &format!("admin:{ADMIN},read:{READ},deploy:{minted}"))],
    );
    let job = Job {
        server: &server,
        releases: unique_dir("ci-releases"),
        out: unique_dir("ci-out"),
    };
    let addr = listen();
    let releases = job.releases.display().to_string();
    let spec = example_spec(
        "examples/ci/slipway.toml",
        &[
            ("listen = \"127.0.0.1:8080\"", format!("listen = \"{addr}\"")),
            ("/srv/hello/releases", releases),
        ],
    );

    // A good version: the strategy pushed, the binary installed, the rollout followed to
    // success, in JSON.
    let output = job.run(Some(&minted), &spec, "ci-1");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("uploaded"), "{}", text(&output));
    assert_eq!(job.recorded_exit(), "0");
    let document = job.document();
    assert_eq!(document["rollout"]["state"], "succeeded", "{document}");
    assert_eq!(document["rollout"]["kind"], "deploy", "{document}");
    assert_eq!(document["rollout"]["target"], 1, "{document}");
    assert!(!document["events"].as_array().unwrap().is_empty(), "{document}");
    assert!(job.releases.join("ci-1/hello").exists());
    assert_eq!(versions(addr), ["ci-1"]);
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"][0]["strategy"], "waves", "{history}");

    // The same commit again: nothing to do, and that is a success.
    let output = job.run(Some(&minted), &spec, "ci-1");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(job.document()["result"], "unchanged");
    assert!(text(&output).contains("already at revision 1"), "{}", text(&output));

    // A version whose rollout fails (examples/hello/slipway-broken.toml: never ready) fails
    // the job with 1, and the version before goes on serving.
    let broken = example_spec(
        "examples/hello/slipway-broken.toml",
        &[
            ("listen = \"127.0.0.1:8080\"", format!("listen = \"{addr}\"")),
            (
                "command = \"target/release/hello\"",
                format!("command = \"{}\"", hello().display()),
            ),
            ("timeout-seconds = 20", "timeout-seconds = 5".into()),
        ],
    );
    let output = job.run(Some(&minted), &broken, "ci-2");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(job.recorded_exit(), "1");
    let document = job.document();
    assert_eq!(document["rollout"]["state"], "rolled-back", "{document}");
    assert_eq!(document["rollout"]["target"], 2, "{document}");
    assert!(!document["rollout"]["failure"].is_null(), "{document}");
    assert_eq!(server.get_json("/v1/apps/hello")["active_revision"], 1);
    assert_eq!(versions(addr), ["ci-1"]);

    // The failed job run again: the spec is the failed revision's, so the runner has nothing
    // to do, but that revision does not serve and the job fails again.
    let output = job.run(Some(&minted), &broken, "ci-2");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("is not serving"), "{}", text(&output));

    // A token of the read scope is refused (2) before anything is deployed.
    let spec_3 = example_spec(
        "examples/ci/slipway.toml",
        &[
            ("listen = \"127.0.0.1:8080\"", format!("listen = \"{addr}\"")),
            ("/srv/hello/releases", job.releases.display().to_string()),
        ],
    );
    let output = job.run(Some(READ), &spec_3, "ci-3");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("this needs a token with the deploy scope; yours has read"),
        "{}",
        text(&output)
    );
    assert_eq!(job.recorded_exit(), "2");
    let history = server.get_json("/v1/apps/hello/revisions");
    assert_eq!(history["revisions"].as_array().unwrap().len(), 2, "{history}");

    // And without a token the job does not fall back to a local admin token.
    let output = job.run(None, &spec_3, "ci-3");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("set SLIPWAY_TOKEN"), "{}", text(&output));
    assert_eq!(versions(addr), ["ci-1"]);
}
