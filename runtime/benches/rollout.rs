//! Rollout wall time against its physical limit, for rolling, blue-green and recreate at 3
//! and 30 replicas. Run with `cargo bench -p slipway --bench rollout` (it builds
//! `examples/hello` in release mode first).
//!
//! The physical limit of a rollout is the time its instances need to start, measured in the
//! same run on the same machine: the strategy's waves of new instances, each wave's time
//! being that of starting that many `hello` processes at once until every one answers its
//! readiness probe (polled every millisecond), plus for recreate the time the old ones take
//! to stop. Nothing a runner does can be faster; the ratio is what the runner adds: probe
//! latency, strategy steps, host calls, recording events. Goal: ≤ 1.5×.
//!
//! Rollout wall time is what the runner records (the rollout's start to its end), median of
//! several deploys, with the soak off (it is a deliberate wait, not overhead).
//!
//! Two apps: `hello` as it is, ready a few milliseconds after it starts, where every
//! millisecond the runner adds shows; and `hello` taking 100 ms to start, closer to a real
//! service, where what matters is that the runner adds no waits of its own.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Runner, free_port, median};

const ROUNDS: usize = 7;

fn main() {
    let hello = support::hello();

    for start_delay_ms in [0u64, 100] {
        println!("\nhello starting in {start_delay_ms} ms (plus its own start-up)");
        println!(
            "{:<11} {:>8} {:>12} {:>16} {:>7}",
            "strategy", "replicas", "rollout", "physical limit", "ratio"
        );
        let app = App {
            hello: &hello,
            start_delay_ms,
        };
        for replicas in [3u32, 30] {
            for strategy in ["rolling", "blue-green", "recreate"] {
                let waves = waves(strategy, replicas);
                let mut limit = waves.iter().map(|&k| start_time(&app, k)).sum::<Duration>();
                if strategy == "recreate" {
                    limit += stop_time(&app, replicas);
                }
                let rollout = rollout_time(&app, strategy, replicas);
                println!(
                    "{strategy:<11} {replicas:>8} {:>10.1}ms {:>14.1}ms {:>6.2}x   waves {waves:?}",
                    ms(rollout),
                    ms(limit),
                    rollout.as_secs_f64() / limit.as_secs_f64()
                );
            }
        }
    }
}

/// The app deployed and measured.
struct App<'a> {
    hello: &'a Path,
    start_delay_ms: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The batches of new instances a strategy starts, one after the other, with default
/// parameters: rolling's are bounded by max-surge 25% and max-unavailable 25% (old instances
/// go as new ones are ready), blue-green starts all at once, recreate one and then the rest.
fn waves(strategy: &str, replicas: u32) -> Vec<u32> {
    match strategy {
        "rolling" => {
            let surge = replicas.div_ceil(4);
            let unavailable = replicas / 4;
            let (mut old, mut new, mut waves) = (replicas, 0u32, Vec::new());
            while new < replicas {
                let room = (replicas + surge).saturating_sub(old + new);
                let add = room.min(replicas - new);
                waves.push(add);
                new += add;
                // Once they are ready, old instances go down to the availability floor.
                old = old.saturating_sub((old + new).saturating_sub(replicas - unavailable));
                old = old.min(replicas - new.min(replicas));
            }
            waves
        }
        "blue-green" => vec![replicas],
        _ => vec![1, replicas - 1],
    }
}

fn spawn_hello(app: &App, port: u16) -> Child {
    Command::new(app.hello)
        .env("PORT", port.to_string())
        .env("HELLO_START_DELAY_MS", app.start_delay_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn healthy(port: u16) -> bool {
    support::answers(port, "/healthz")
}

/// Median time for `count` hello processes started together to all pass their probe.
fn start_time(app: &App, count: u32) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let started = Instant::now();
        let mut children: Vec<Child> = ports.iter().map(|p| spawn_hello(app, *p)).collect();
        let mut waiting = ports.clone();
        while !waiting.is_empty() {
            waiting.retain(|p| !healthy(*p));
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        samples.push(started.elapsed());
        stop_all(&mut children);
    }
    median(samples)
}

/// Median time for `count` ready hello processes to stop after SIGTERM.
fn stop_time(app: &App, count: u32) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let mut children: Vec<Child> = ports.iter().map(|p| spawn_hello(app, *p)).collect();
        for port in &ports {
            while !healthy(*port) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let started = Instant::now();
        stop_all(&mut children);
        samples.push(started.elapsed());
    }
    median(samples)
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// Median wall time of a rollout as the runner records it.
fn rollout_time(app: &App, strategy: &str, replicas: u32) -> Duration {
    let runner = Runner::start(&format!("rollout-{strategy}-{replicas}-{}", app.start_delay_ms));
    let listen = free_port();
    let mut samples = Vec::new();
    for round in 0..=ROUNDS {
        runner.deploy(
            &format!("spec-{round}"),
            &spec(app, strategy, replicas, listen, round),
            true,
        );
        if round == 0 {
            continue; // the first deploy has nothing to replace
        }
        let history = runner.cli(&["history", "hello", "--output", "json"]);
        let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
        let last = history["rollouts"].as_array().unwrap().last().unwrap().clone();
        let took = last["finished_at"].as_u64().unwrap() - last["started_at"].as_u64().unwrap();
        samples.push(Duration::from_millis(took));
    }
    median(samples)
}

fn spec(app: &App, strategy: &str, replicas: u32, listen: u16, version: usize) -> String {
    format!(
        r#"name = "hello"
replicas = {replicas}
listen = "127.0.0.1:{listen}"

[process]
command = "{hello}"
env = {{ VERSION = "v{version}", HELLO_START_DELAY_MS = "{delay}" }}

[probe]
http = "/healthz"

[strategy]
module = "builtin:{strategy}"

[lifecycle]
soak = "0s"
"#,
        hello = app.hello.display(),
        delay = app.start_delay_ms
    )
}
