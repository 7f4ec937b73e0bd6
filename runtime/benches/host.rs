//! The strategy host's overheads: compiling a built-in, instantiating a precompiled one, and
//! one guest → host call. Run with `cargo bench -p slipway --bench host`.
//!
//! Targets (DESIGN §8 and the engine issue): instantiate ≤ 10 µs, host call ≤ 0.3 µs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway::bindings::Revision;
use slipway::engine::{Limits, WasmEngine};
use slipway::events::Timeline;
use slipway::hooks::NoHooks;
use slipway::modules::ModuleLoader;
use slipway::rollout::{self, RolloutPlan};
use slipway::sim::{SIM_EPOCH_MS, SimCluster, SimConfig};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let engine = WasmEngine::new().unwrap();
    println!("pooling allocator: {}", if engine.pooled() { "on" } else { "off" });

    // Compile: no cache, so every load compiles from the component bytes.
    let uncached = ModuleLoader::new(engine.clone(), None).unwrap();
    let mut compile = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        uncached.load_builtin("rolling").await.unwrap();
        compile.push(start.elapsed());
    }
    let compile = median(compile);

    // Instantiate a precompiled built-in through its InstancePre, with a fresh store each time.
    let cache = tempdir();
    let loader = ModuleLoader::new(engine.clone(), Some(cache.clone())).unwrap();
    let rolling = loader.load_builtin("rolling").await.unwrap();
    let env = bench_env();
    let rounds = 5_000;
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            slipway::guest::instantiate_only(&rolling, env.clone(), &Limits::default())
                .await
                .unwrap();
        }
        samples.push(start.elapsed() / rounds);
    }
    let instantiate = median(samples);

    // Host calls: the same guest with N calls and with none; the difference over N.
    let calls = build_guest("fixture-bench-calls");
    let bench_calls = loader.load_reference(calls.to_str().unwrap()).await.unwrap();
    let n = 2_000_000u64;
    let mut samples = Vec::new();
    for _ in 0..5 {
        let with = run_calls(&bench_calls, n).await;
        let without = run_calls(&bench_calls, 0).await;
        samples.push(with.saturating_sub(without) / n as u32);
    }
    let host_call = median(samples);

    println!(
        "compile builtin:rolling (Component::new + link): {:>10.2} ms",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "instantiate precompiled builtin:rolling:         {:>10.2} µs   target ≤ 10 µs   ({})",
        instantiate.as_secs_f64() * 1e6,
        verdict(instantiate <= Duration::from_micros(10))
    );
    println!(
        "guest → host call round trip (clock.now):        {:>10.3} µs   target ≤ 0.3 µs  ({})",
        host_call.as_secs_f64() * 1e6,
        verdict(host_call <= Duration::from_nanos(300))
    );
    let _ = std::fs::remove_dir_all(cache);
}

async fn run_calls(module: &slipway::modules::LoadedModule, calls: u64) -> Duration {
    let timeline = Timeline::new(SIM_EPOCH_MS);
    let sim = Arc::new(SimCluster::new(SimConfig::default()));
    sim.add_faulty_revision(1);
    // No replicas: the fixture only calls the host, and the host's success check asks
    // nothing of a revision scaled to zero.
    let mut plan = RolloutPlan::new("bench", "bench", Revision { number: 1, replicas: 0 }, None);
    plan.soak = Duration::ZERO;
    plan.params = format!("{{\"calls\": {calls}}}");
    plan.limits.host_calls = u64::MAX;
    let start = Instant::now();
    let report = rollout::run(module, &plan, sim.cluster(), Arc::new(NoHooks), timeline).await;
    let elapsed = start.elapsed();
    assert!(report.outcome.is_success(), "{}", report.summary);
    elapsed
}

fn bench_env() -> Arc<slipway::host::RolloutEnv> {
    let timeline = Timeline::new(SIM_EPOCH_MS);
    let sim = Arc::new(SimCluster::new(SimConfig::default()));
    Arc::new(slipway::host::RolloutEnv {
        app: "bench".into(),
        rollout: "bench".into(),
        cluster: sim.cluster(),
        hooks: Arc::new(NoHooks),
        timeline,
        revisions: vec![1],
        started_at_ms: SIM_EPOCH_MS,
        deadline_ms: u64::MAX,
        seed: 1,
        target: Revision { number: 1, replicas: 1 },
        active: None,
        grants: Default::default(),
        control: Default::default(),
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("slipway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn build_guest(package: &str) -> std::path::PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--profile",
            "wasm-guest",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
            "--target-dir",
        ])
        .arg(workspace.join("target/guests"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success());
    workspace
        .join("target/guests/wasm32-wasip2/wasm-guest")
        .join(format!("{}.wasm", package.replace('-', "_")))
}
