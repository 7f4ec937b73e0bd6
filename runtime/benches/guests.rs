//! The router's tail latency while strategies spin: an app of 3 `hello` replicas under
//! keep-alive load, measured idle and then with six apps deploying at once with a strategy
//! that spins without calling the host, each round on a fresh runner. Run with
//! `cargo bench -p slipway --bench guests`.
//!
//! Goal: the app's p99 through the router with the guests spinning stays within 2× of its
//! idle p99 (issue: "guests cannot starve traffic"). Strategies run on a runtime of their
//! own at the lowest priority; before that, the same load saw a median of 492 ms.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Runner, free_port, median};

const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_secs(4);
const CONNECTIONS: usize = 4;
const SPINNING_APPS: usize = 6;

fn main() {
    let hello = support::hello();
    support::build(
        &["fixture-spin"],
        "wasm-guest",
        Some("wasm32-wasip2"),
        Some(&support::workspace().join("target/guests")),
    );
    let spin = support::workspace().join("target/guests/wasm32-wasip2/wasm-guest/fixture_spin.wasm");

    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "round", "idle p50", "idle p99", "busy p50", "busy p99", "ratio"
    );
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let (idle, busy, spun) = one_round(&hello, &spin, round);
        let ratio = busy.p99.as_secs_f64() / idle.p99.as_secs_f64();
        println!(
            "{round:<6} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?} {ratio:>6.2}x   ({} and {} requests, {} failed; guests used {:.1} CPU-s)",
            idle.p50,
            idle.p99,
            busy.p50,
            busy.p99,
            idle.count,
            busy.count,
            idle.failed + busy.failed,
            spun.as_secs_f64()
        );
        ratios.push((ratio * 1000.0) as u64);
    }
    let ratio = median(ratios) as f64 / 1000.0;
    println!("median p99 ratio, spinning to idle: {ratio:.2}x (goal ≤ 2.00x)");
}

/// Idle and busy latencies of one round, on a runner of its own.
fn one_round(hello: &Path, spin: &Path, round: usize) -> (Latencies, Latencies, Duration) {
    let runner = Runner::start(&format!("guests-{round}"));
    let output = runner.cli(&["module", "push", spin.to_str().unwrap(), "--name", "spin"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let web = free_port();
    runner.deploy("web", &spec("web", web, hello, 3, "builtin:rolling"), true);
    let addr = SocketAddr::from(([127, 0, 0, 1], web));
    load(addr, Duration::from_millis(500)); // warm up
    let idle = load(addr, WINDOW);
    for i in 0..SPINNING_APPS {
        let name = format!("spin{i}");
        runner.deploy(&name, &spec(&name, free_port(), hello, 1, "spin"), false);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = support::cpu_time(runner.pid());
    let busy = load(addr, WINDOW);
    let spun = support::cpu_time(runner.pid()) - before;
    // The guests run on one thread at the lowest priority: short of a whole core, something
    // else wanted the CPU; far short, the round measured nothing.
    assert!(
        spun > WINDOW / 2,
        "the guests spun only {spun:?} in {WINDOW:?}: nothing was measured"
    );
    (idle, busy, spun)
}

fn spec(name: &str, port: u16, hello: &Path, replicas: u32, strategy: &str) -> String {
    format!(
        r#"name = "{name}"
replicas = {replicas}
listen = "127.0.0.1:{port}"

[process]
command = "{hello}"

[probe]
http = "/healthz"

[strategy]
module = "{strategy}"
"#,
        hello = hello.display()
    )
}

struct Latencies {
    p50: Duration,
    p99: Duration,
    count: usize,
    failed: usize,
}

/// Keep-alive load on `addr` for `time`: [`CONNECTIONS`] connections, each sending `GET /`
/// back to back with a 2 ms pause.
fn load(addr: SocketAddr, time: Duration) -> Latencies {
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new((Vec::<Duration>::new(), 0usize)));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let mut connection = None;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let answer = get(&mut connection, addr);
                    let took = started.elapsed();
                    let mut samples = samples.lock().unwrap();
                    match answer {
                        Ok(()) => samples.0.push(took),
                        Err(_) => {
                            samples.1 += 1;
                            connection = None;
                        }
                    }
                    drop(samples);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let (mut latencies, failed) = std::mem::take(&mut *samples.lock().unwrap());
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Latencies {
        p50: at(0.5),
        p99: at(0.99),
        count: latencies.len(),
        failed,
    }
}

/// One `GET /` on a kept-alive connection (opened when there is none); a 2xx is `Ok`.
fn get(connection: &mut Option<BufReader<TcpStream>>, addr: SocketAddr) -> std::io::Result<()> {
    if connection.is_none() {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().unwrap();
    reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let ok = line.split(' ').nth(1).is_some_and(|status| status.starts_with('2'));
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
        }
    }
    std::io::copy(&mut reader.by_ref().take(length as u64), &mut std::io::sink())?;
    if ok {
        Ok(())
    } else {
        Err(std::io::ErrorKind::Other.into())
    }
}
