//! Apps as containers, against a real engine: Podman's Docker-compatible API service. The
//! image is built here from the `hello` binary (`podman import` of a root filesystem holding
//! it and the libraries it links), since no registry is reachable.
//!
//! Needs `podman` (and `runc`); `.ci/run` installs them and starts the API service on
//! /run/podman/podman.sock. Without that service, the tests start one of their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::lifecycle::{deploy, listen, runtime, sample, text};
use crate::load::Load;
use crate::runner::{HelloSpec, Server, hello, unique_dir};
use crate::support::exclusive;

/// The engine's socket, as DOCKER_HOST; started here if no service runs.
pub(crate) fn engine() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let podman = Command::new("podman").arg("--version").output();
        assert!(
            podman.is_ok_and(|o| o.status.success()),
            "podman is not installed: apt-get install -y podman runc (.ci/run does)"
        );
        let system = "/run/podman/podman.sock";
        if answers(system) {
            return format!("unix://{system}");
        }
        let socket = unique_dir("podman").join("podman.sock");
        // Started in the background (it outlives the test process) and gone on its own once
        // idle for ten minutes, after the tests.
        let started = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "podman system service --time=600 unix://{} </dev/null >/dev/null 2>&1 &",
                socket.display()
            ))
            .status()
            .expect("start podman system service");
        assert!(started.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(socket.to_str().unwrap()) {
            assert!(Instant::now() < deadline, "podman system service did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("unix://{}", socket.display())
    })
}

/// Whether an engine answers on `socket`.
fn answers(socket: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.write_all(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// An image holding `hello` as `/hello`, built once per build of `hello`.
pub(crate) fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        engine();
        let binary = hello();
        let digest = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(std::fs::read(&binary).unwrap())[..6])
        };
        let name = format!("localhost/slipway-hello:{digest}");
        let exists = Command::new("podman")
            .args(["image", "exists", &name])
            .status()
            .unwrap();
        if exists.success() {
            return name;
        }
        let root = unique_dir("rootfs");
        std::fs::copy(&binary, root.join("hello")).unwrap();
        let ldd = Command::new("ldd").arg(&binary).output().unwrap();
        for library in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
        {
            let target = root.join(library.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(library, target).unwrap();
        }
        let tar: PathBuf = root.with_extension("tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(packed.success());
        let imported = Command::new("podman")
            .args(["import", "--change", "CMD [\"/hello\"]"])
            .arg(&tar)
            .arg(&name)
            .output()
            .unwrap();
        assert!(imported.status.success(), "podman import: {}", text(&imported));
        name
    })
}

/// A runner whose data plane talks to the test engine.
fn server() -> Server {
    let port = crate::runner::free_port();
    Server::start_with(&unique_dir("data"), port, &[("DOCKER_HOST", engine())])
}

/// The ids of running containers of `app` (any revision), and their revisions.
fn containers(data: &Path, app: &str) -> Vec<(String, String)> {
    listed(data, app, false)
}

/// Every container of `app`, running or not, as `(id, revision)`.
pub(crate) fn listed(data: &Path, app: &str, all: bool) -> Vec<(String, String)> {
    let mut command = Command::new("podman");
    command.args(["ps", "--no-trunc"]);
    if all {
        command.arg("--all");
    }
    let listed = command
        .arg("--filter")
        .arg(format!("label=io.slipway.app={app}"))
        .arg("--filter")
        .arg(format!(
            "label=io.slipway.owner={}",
            slipway::driver::compute::container::owner(data)
        ))
        .args(["--format", "{{.ID}} {{.Labels}}"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "podman ps: {}", text(&listed));
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| {
            let (id, labels) = line.split_once(' ')?;
            let revision = labels
                .split([' ', ',', '[', ']', '{', '}'])
                .find_map(|label| label.strip_prefix("io.slipway.revision:"))
                .unwrap_or("?")
                .to_string();
            Some((id.to_string(), revision))
        })
        .collect()
}

/// Waits until no container of `app` is left, running or not.
fn all_removed(data: &Path, app: &str) {
    wait_for("removing every container", || listed(data, app, true).is_empty());
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within a minute");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A runner with hello's revision 1 deployed as three containers; `extra_env` is added to
/// hello's environment.
fn deployed(extra_env: &'static str) -> (Server, std::net::SocketAddr) {
    let server = server();
    let web = listen();
    let spec = HelloSpec {
        listen: web,
        image: Some(image()),
        extra_env,
        ..HelloSpec::default()
    };
    let output = deploy(&server, &spec);
    assert!(output.status.success(), "{}", text(&output));
    (server, web)
}

/// Everything the app's instances wrote, from their output files.
fn output_of(server: &Server) -> String {
    std::fs::read_dir(server.data.join("output/hello"))
        .unwrap()
        .flatten()
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
        .collect()
}

#[test]
fn containers_roll_out_and_stop_with_no_failed_request() {
    let _serial = exclusive();
    let (mut server, web) = deployed("");
    assert_eq!(
        containers(&server.data, "hello").len(),
        3,
        "three containers of revision 1"
    );
    let before = sample(web);
    assert!(before.ok > 0 && before.failed == 0, "{before:?}");

    // Bridge (published port) to host network, under keep-alive load.
    let runtime = runtime();
    let load = runtime.block_on(async { Load::start(web, "/", 4, Duration::from_millis(2)) });
    let v2 = HelloSpec {
        listen: web,
        image: Some(image()),
        version: "v2",
        network: "host",
        ..HelloSpec::default()
    };
    let output = deploy(&server, &v2);
    assert!(output.status.success(), "{}", text(&output));
    let tally = runtime.block_on(load.stop());
    assert!(tally.ok > 100, "{tally:?}");
    assert_eq!(
        (tally.failed, tally.unavailable),
        (0, 0),
        "requests failed during a container rollout: {tally:?}"
    );
    // The last instance of revision 1 may still be draining as the deploy returns.
    wait_for("revision 1's containers gone", || {
        let running = containers(&server.data, "hello");
        running.len() == 3 && running.iter().all(|(_, revision)| revision == "2")
    });
    let after = sample(web);
    assert_eq!(after.by_version.keys().collect::<Vec<_>>(), ["v2"], "{after:?}");

    // Their output reached the instance's output files, from the engine.
    let logs = output_of(&server);
    assert!(logs.contains("hello v2 listening on"), "{logs}");
    let shown = server.cli(&["logs", "hello", "--revision", "2"]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert_eq!(
        shown.lines().filter(|l| l.contains("hello v2 listening on")).count(),
        3,
        "{shown}"
    );

    // Stopping the runner on purpose stops and removes every container.
    assert!(server.stop().success());
    all_removed(&server.data, "hello");
}

#[test]
fn a_data_plane_that_died_adopts_its_running_containers() {
    let _serial = exclusive();
    let (mut server, web) = deployed("");
    let mut before: Vec<String> = containers(&server.data, "hello")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    before.sort();
    assert_eq!(before.len(), 3);

    // The machine's Slipway dies whole: runner and data plane. The containers go on.
    let plane = server.plane_pid().expect("a data plane runs");
    server.kill();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plane as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for("the data plane's death", || !crate::runner::alive(plane));
    assert_eq!(
        containers(&server.data, "hello").len(),
        3,
        "containers outlive the data plane"
    );

    let data = server.data.clone();
    drop(server);
    let mut server = Server::start_with(&data, crate::runner::free_port(), &[("DOCKER_HOST", engine())]);
    wait_for("the app serving again", || sample(web).ok > 0);
    let mut after: Vec<String> = containers(&server.data, "hello")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    after.sort();
    assert_eq!(after, before, "the running containers were adopted, none replaced");
    let status = server.get_json("/v1/apps/hello");
    wait_for("all three ready", || {
        server.get_json("/v1/apps/hello")["instances"]["revisions"]["1"]["ready"] == 3
    });
    assert_eq!(status["active_revision"], 1, "{status}");
    let tally = sample(web);
    assert_eq!((tally.failed, tally.unavailable), (0, 0), "{tally:?}");

    assert!(server.stop().success());
    all_removed(&server.data, "hello");
}

#[test]
fn an_image_the_engine_lacks_fails_the_rollout_with_the_reason() {
    let _serial = exclusive();
    let server = server();
    let web = listen();
    let spec = HelloSpec {
        listen: web,
        image: Some("localhost/slipway-no-such-image:1"),
        deadline: "5s",
        ..HelloSpec::default()
    };
    let text_spec = spec.toml().replace("[container]\n", "[container]\npull = \"never\"\n");
    let path = crate::runner::write_spec(&text_spec);
    let output = server.cli(&["deploy", path.to_str().unwrap()]);
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("localhost/slipway-no-such-image:1 is not in the container engine"),
        "{shown}"
    );
    assert!(containers(&server.data, "hello").is_empty());
}

#[test]
fn a_container_that_crashes_is_replaced() {
    let _serial = exclusive();
    // Each container exits 3 s after it starts listening, like a version that dies soon.
    let (mut server, _) = deployed(", HELLO_CRASH_AFTER_MS = \"3000\"");
    let first: Vec<String> = containers(&server.data, "hello")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(first.len(), 3);
    wait_for("a crashed container replaced", || {
        containers(&server.data, "hello")
            .iter()
            .any(|(id, _)| !first.contains(id))
    });
    // Desired holds, and the crash is in the instance's output, read from the engine.
    let status = server.get_json("/v1/apps/hello");
    assert_eq!(status["instances"]["revisions"]["1"]["desired"], 3, "{status}");
    let logs = output_of(&server);
    assert!(logs.contains("crashing 3000 ms after starting"), "{logs}");
    assert!(server.stop().success());
    all_removed(&server.data, "hello");
}

#[test]
fn no_container_engine_fails_the_rollout_saying_how_to_start_one() {
    let data = unique_dir("data");
    let server = Server::start_with(
        &data,
        crate::runner::free_port(),
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let spec = HelloSpec {
        listen: listen(),
        image: Some("localhost/slipway-hello:any"),
        ..HelloSpec::default()
    };
    let output = deploy(&server, &spec);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("cannot reach the container engine at unix:///nonexistent/docker.sock"),
        "{shown}"
    );
    assert!(shown.contains("podman system service"), "{shown}");
    // The runner and its other apps are fine.
    assert_eq!(
        server.get_json("/v1/apps/hello")["active_revision"],
        serde_json::Value::Null
    );
}
