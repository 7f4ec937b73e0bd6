//! Shared helpers: building guests, loading modules, running simulated rollouts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use slipway::bindings::Revision;
use slipway::engine::WasmEngine;
use slipway::events::{Event, EventKind, RevisionSnapshot, Timeline};
use slipway::hooks::NoHooks;
use slipway::modules::{LoadedModule, ModuleLoader};
use slipway::rollout::{self, RolloutPlan, RolloutReport};
use slipway::sim::{SIM_EPOCH_MS, SimCluster, SimConfig};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where guests built by the tests land (the runtime's build script uses the same place).
fn guest_dir() -> PathBuf {
    workspace().join("target/guests/wasm32-wasip2/wasm-guest")
}

/// Rust guests the tests build: the fixtures and the Rust example strategy.
const TEST_GUESTS: &[&str] = &[
    "fixture-spin",
    "fixture-memory-bomb",
    "fixture-deep-recursion",
    "fixture-panic",
    "fixture-call-flood",
    "fixture-log-flood",
    "fixture-invalid-call",
    "fixture-wrong-world",
    "fixture-well-behaved",
    "fixture-misbehave",
    "fixture-api-0-1-0",
    "fixture-api-0-3-0",
    "fixture-prometheus-gate",
    "fixture-hook-ok",
    "fixture-hook-fail",
    "fixture-hook-flaky",
    "fixture-hook-exec",
    "fixture-hook-http",
    "example-strategy-waves",
    "example-hook-migrate",
    "example-hook-notify",
];

/// `npm ci` in `dir` (a package with a lockfile), failing with npm's message.
pub fn npm_ci(dir: &Path, for_what: &str) {
    let install = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run npm ({e}): Node.js 20 and npm are needed for {for_what}"));
    assert!(
        install.status.success(),
        "npm ci in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&install.stderr)
    );
}

/// The component built from `package`, building all test guests on first use.
pub fn guest(package: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace())
            .args([
                "build",
                "--locked",
                "--profile",
                "wasm-guest",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(workspace().join("target/guests"));
        for package in TEST_GUESTS {
            command.args(["-p", package]);
        }
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
        ] {
            command.env_remove(var);
        }
        let status = command.status().expect("run cargo to build the test guests");
        assert!(status.success(), "building the test guests failed");
    });
    let path = guest_dir().join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// One engine and loader for the whole test binary, with a precompile cache under target/.
pub fn loader() -> &'static ModuleLoader {
    static LOADER: OnceLock<ModuleLoader> = OnceLock::new();
    LOADER.get_or_init(|| {
        let engine = WasmEngine::new().expect("build the engine");
        ModuleLoader::new(engine, Some(workspace().join("target/test-module-cache"))).expect("create the loader")
    })
}

pub async fn load(reference: &str) -> LoadedModule {
    loader()
        .load_reference(reference)
        .await
        .unwrap_or_else(|e| panic!("load {reference}: {e}"))
}

pub async fn load_guest(package: &str) -> LoadedModule {
    let path = guest(package);
    load(path.to_str().unwrap()).await
}

/// A simulated rollout from revision 1 (at `replicas`, all ready, all traffic) to 2.
pub struct Sim {
    pub config: SimConfig,
    pub plan: RolloutPlan,
}

impl Sim {
    pub fn new(replicas: u32) -> Self {
        let plan = RolloutPlan::new(
            "app",
            "test-rollout",
            Revision { number: 2, replicas },
            Some(Revision { number: 1, replicas }),
        );
        Sim {
            config: SimConfig::default(),
            plan,
        }
    }

    pub fn params(mut self, json: &str) -> Self {
        self.plan.params = json.to_string();
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self.plan.seed = seed;
        self
    }

    pub fn fail_readiness(mut self, fraction: f64) -> Self {
        self.config.fail_readiness = fraction;
        self
    }

    pub fn crash(mut self, fraction: f64) -> Self {
        self.config.crash = fraction;
        self
    }

    pub async fn run(self, module: &LoadedModule) -> Outcome {
        let timeline = Timeline::new(SIM_EPOCH_MS);
        let cluster = Arc::new(SimCluster::new(self.config));
        if let Some(active) = self.plan.active {
            cluster.add_ready_revision(active.number, active.replicas, 256);
        }
        cluster.add_faulty_revision(self.plan.target.number);
        let report = rollout::run(module, &self.plan, cluster.cluster(), Arc::new(NoHooks), timeline).await;
        let last = cluster.snapshot();
        Outcome { report, last }
    }
}

pub struct Outcome {
    pub report: RolloutReport,
    /// Every revision's state when the rollout ended.
    pub last: std::collections::BTreeMap<u32, RevisionSnapshot>,
}

impl Outcome {
    pub fn events(&self) -> &[Event] {
        &self.report.events
    }

    /// The timeline as text, for assertion messages.
    pub fn trace(&self) -> String {
        self.events()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Position of the first event matching `f`.
    pub fn position(&self, f: impl Fn(&EventKind) -> bool) -> Option<usize> {
        self.events().iter().position(|e| f(&e.kind))
    }
}

/// Serializes tests that measure or print a lot, so parallel tests don't interleave.
#[allow(dead_code)]
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
