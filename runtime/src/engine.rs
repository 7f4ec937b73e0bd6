//! The one place a `wasmtime::Engine` is built, and the limits every guest runs under.
//!
//! **Invariant:** no other module calls `Engine::new`. Precompiled artifacts are only valid
//! for the engine configuration that produced them, so a second configuration would silently
//! split the module cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. One tick is the unit of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits for one guest invocation. Defaults follow DESIGN §5.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory a guest may grow to, in bytes (default 64 MiB).
    pub memory_bytes: usize,
    /// CPU time a guest may spend running its own code, counted in epoch ticks of
    /// [`EPOCH_TICK`] (default 10 s). Time spent waiting in host calls does not count.
    pub cpu_ticks: u64,
    /// Host calls one invocation may make in all (default 1,000,000). A strategy that polls
    /// without sleeping hits this long before it hurts the runner.
    pub host_calls: u64,
    /// Bytes of log messages one invocation may write in all (default 1 MiB).
    pub log_bytes: usize,
    /// Longest single log message; longer ones are truncated (default 4 KiB).
    pub log_line_bytes: usize,
    /// How much of the guest's stderr is kept for the failure report (default 8 KiB).
    pub stderr_tail_bytes: usize,
    /// The most replicas one revision may have, in a spec, a scale by hand or a strategy's
    /// `scale` (default and at most [`crate::spec::MAX_REPLICAS`]).
    pub max_replicas: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            cpu_ticks: 1_000,
            host_calls: 1_000_000,
            log_bytes: 1 << 20,
            log_line_bytes: 4 << 10,
            stderr_tail_bytes: 8 << 10,
            max_replicas: crate::spec::MAX_REPLICAS,
        }
    }
}

/// The guest's native (wasm) stack. A guest that recurses deeper traps with a stack overflow.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Components that can be live at once across all rollouts and hooks when the pooling
/// allocator is in use. A Rust component uses several core instances, so the core-instance
/// pool is sized well above it.
const POOL_COMPONENTS: u32 = 1_000;

/// The shared wasmtime engine and its epoch ticker.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    pooled: bool,
    _ticker: Arc<EpochTicker>,
}

impl WasmEngine {
    /// Builds the engine: component model, async host calls, epoch interruption, and the
    /// pooling allocator when this machine's address space can hold it.
    pub fn new() -> anyhow::Result<Self> {
        let (engine, pooled) = match Engine::new(&config(true)) {
            Ok(engine) => (engine, true),
            Err(error) => {
                tracing::warn!(%error, "pooling allocator unavailable; falling back to on-demand allocation");
                (
                    Engine::new(&config(false)).map_err(|e| anyhow::anyhow!("build the wasmtime engine: {e:#}"))?,
                    false,
                )
            }
        };
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(WasmEngine {
            engine,
            pooled,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// A short hex key that changes whenever precompiled artifacts from this engine would
    /// no longer load: wasmtime version, target and configuration.
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

fn config(pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.async_stack_size(2 << 20);
    config.parallel_compilation(true);
    if pooling {
        let defaults = Limits::default();
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_COMPONENTS)
            .total_core_instances(POOL_COMPONENTS * 8)
            .total_memories(POOL_COMPONENTS * 4)
            .total_tables(POOL_COMPONENTS * 8)
            .total_stacks(POOL_COMPONENTS)
            .max_memory_size(defaults.memory_bytes)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_core_instances_per_component(64)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .table_elements(100_000)
            .max_unused_warm_slots(100)
            // Resetting the start of a table slot by rewriting it is cheaper than asking the
            // kernel to drop and re-fault its pages; measured 12.5 → 6.5 µs per instantiation.
            // (The same for linear memory made it slower: guests touch little of it.)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Each memory slot reserves address space up front; keep the reservation at the
        // memory cap plus a guard instead of wasmtime's 4 GiB default.
        config.memory_reservation(defaults.memory_bytes as u64);
        config.memory_guard_size(2 << 20);
    }
    config
}

/// Where rollouts, and with them every strategy and hook, run: a runtime of their own whose
/// threads run at the lowest priority (nice 19). Guests
/// that spin (each within its CPU budget) then cannot take CPU from the data plane, the
/// apps, or the runner's API; on an idle machine they run at full speed.
pub fn guest_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // One thread: guests mostly wait on host calls, and on a small machine a second
            // spinning thread would share a physical core with the data plane.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("slipway-guest")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .expect("start the guest runtime")
        })
        .handle()
        .clone()
}

/// Gives the calling thread the lowest priority of the normal scheduling class (nice 19).
///
/// Not `SCHED_IDLE`: the kernel counts a CPU that runs only idle-class threads as free and
/// wakes traffic threads onto it, behind the spinning guest, which measured worse for the
/// router's tail latency than nice 19 does.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid(2) and setpriority(2) take and return plain integers; on Linux,
    // PRIO_PROCESS with a thread id changes that one thread's nice value.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if result != 0 {
        tracing::warn!("could not lower the priority of a guest thread");
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a plain thread, so a guest that
/// spins is interrupted even when every async worker is busy.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("slipway-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
