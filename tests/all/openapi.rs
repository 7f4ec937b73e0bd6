//! The API against its own OpenAPI document, checked by schemathesis (from PyPI; `.ci/run`
//! installs it): a real `slipway serve` running hello, every operation called with data made
//! from the document, valid and invalid, and every answer checked against it.

use std::net::SocketAddr;
use std::process::Command;

use crate::runner::{ADMIN, Server, free_port, hello_spec, unique_dir, write_spec};
use crate::support::workspace;

/// Test cases per operation and phase; with a fixed seed, the run is the same each time.
const EXAMPLES: &str = "40";

#[test]
fn the_server_answers_as_its_openapi_document_says() {
    let st = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    // Apps the fuzzer deploys with hosts share the front door: keep it off the real ports.
    let (front, front_tls) = (free_port().to_string(), free_port().to_string());
    let server = Server::start_with(
        &unique_dir("openapi"),
        free_port(),
        &[
            ("SLIPWAY_FRONT_HTTP", &format!("127.0.0.1:{front}")),
            ("SLIPWAY_FRONT_HTTPS", &format!("127.0.0.1:{front_tls}")),
            // The fuzzer finds hello and scales it as far as the runner lets it: keep that
            // to a few processes on a shared machine.
            ("SLIPWAY_MAX_REPLICAS", "4"),
        ],
    );
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let spec = write_spec(&hello_spec(listen, "v1", "builtin:rolling", "{}", ""));
    let deployed = server.cli(&["deploy", spec.to_str().unwrap()]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );

    // Reads and rollout operations also run against hello and its rollout, so that their
    // answers, not only their errors, are checked against the document (the fuzzer finds
    // hello for the others itself, from the answers it gets).
    let history = server.get_json("/v1/apps/hello/revisions");
    let rollout = history["rollouts"][0]["id"].as_str().expect("hello's rollout");
    let config = server.data.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[operations]]
include-name = ["GET /v1/apps/{{app}}", "GET /v1/apps/{{app}}/revisions", "GET /v1/apps/{{app}}/traffic"]
parameters = {{ app = "hello" }}

[[operations]]
include-name = "GET /v1/apps/{{app}}/logs"
parameters = {{ app = "hello", follow = "false" }}

[[operations]]
include-name = "GET /ui/{{file}}"
parameters = {{ file = "main.js" }}

[[operations]]
include-name = ["GET /v1/rollouts/{{id}}", "GET /v1/rollouts/{{id}}/events", "POST /v1/rollouts/{{id}}/pause"]
parameters = {{ id = "{rollout}" }}
"#
        ),
    )
    .unwrap();

    // Its reports, and the cache of failures it keeps in its working directory.
    let reports = workspace().join("target/schemathesis");
    std::fs::create_dir_all(&reports).unwrap();
    let output = Command::new(&st)
        .current_dir(&reports)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/v1/openapi.json", server.api), "--url", &server.api])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        // Every check but one: a request can fit the document's shapes and still break a
        // rule of the spec that a schema cannot say (a name matching the path, one of
        // process, container and kubernetes, a free port): 4xx with a message, not 2xx.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--seed", "20261201", "--max-examples", EXAMPLES])
        .args([
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&reports)
        .output()
        .unwrap_or_else(|e| panic!("run {st} (pip install schemathesis==4.32.5, as .ci/run does): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers that break the document:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "{}",
        stdout
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
