//! Running one guest invocation in its sandbox: a fresh store, no ambient capabilities, a
//! memory cap, a CPU budget that yields, host-call and log budgets, and its output: each
//! line on stdout and stderr into the rollout's log, and stderr's tail kept for a failure.
//!
//! **Invariant:** a store is used for exactly one call and then dropped. After a trap an
//! instance may be in any state, so nothing of it is ever reused.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{self, HookContext, Outcome, RolloutContext};
use crate::engine::{EPOCH_TICK, Limits};
use crate::events::EventKind;
use crate::failure::{self, FailureKind, GuestFailure, GuestLimit};
use crate::host::RolloutEnv;
use crate::host::Translate;
use crate::modules::{LoadedModule, ModulePre, World};

/// The store's data for one invocation.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    pub(crate) env: Arc<RolloutEnv>,
    pub(crate) limits: Limits,
    pub(crate) budget: Budget,
}

/// What the invocation has used so far.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pub host_calls: u64,
    pub log_bytes: usize,
    pub cpu_ticks: u64,
    /// The last call the host rejected as invalid, to classify a failure that follows it.
    pub last_invalid: Option<String>,
    /// Set once the host told the guest to stop (deadline or abort).
    pub stopped: Option<crate::failure::Stop>,
    /// Host calls since it was told to stop.
    pub calls_after_stop: u64,
    /// The last progress report, so a repeat is not recorded again.
    pub last_progress: Option<(u8, String)>,
    /// The call belongs to no rollout (a parameter check): every host API call traps.
    pub detached: bool,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The linkers for the two worlds. Each world gets only its own interfaces: a hook cannot
/// reach `scaling` even if its component asks for it.
pub(crate) struct Linkers {
    pub strategy: Linker<GuestState>,
    pub hook: Linker<GuestState>,
}

pub(crate) fn linkers(engine: &Engine) -> anyhow::Result<Linkers> {
    let mut strategy = Linker::new(engine);
    add_wasi(&mut strategy)?;
    bindings::strategy::Strategy::add_to_linker::<_, HasSelf<_>>(&mut strategy, |s| s)?;
    bindings::v0_1::strategy::Strategy::add_to_linker::<_, HasSelf<_>>(&mut strategy, |s| s)?;
    let mut hook = Linker::new(engine);
    add_wasi(&mut hook)?;
    bindings::hook::Hook::add_to_linker::<_, HasSelf<_>>(&mut hook, |s| s)?;
    bindings::v0_1::hook::Hook::add_to_linker::<_, HasSelf<_>>(&mut hook, |s| s)?;
    Ok(Linkers { strategy, hook })
}

/// WASI 0.2 with no capabilities, and with its monotonic clock replaced by the rollout's
/// (`host/wasi_clock.rs`), so that WASI sleeps and polls follow the rollout's time.
fn add_wasi(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl GuestState {
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Runs a strategy's `run` export to completion, or to a [`GuestFailure`].
pub async fn run_strategy(
    module: &LoadedModule,
    ctx: RolloutContext,
    env: Arc<RolloutEnv>,
    limits: &Limits,
    wall_clock: Duration,
) -> Result<Outcome, GuestFailure> {
    if module.world != World::Strategy {
        return Err(wrong_world(module, World::Strategy));
    }
    let (mut store, stderr) = new_store(module.pre.engine(), env, limits);
    let call = async {
        match module.pre.as_ref() {
            ModulePre::Strategy { pre, .. } => {
                let instance = pre.instantiate_async(&mut store).await?;
                instance
                    .slipway_deploy_strategy_handler()
                    .call_run(&mut store, &ctx)
                    .await
            }
            ModulePre::StrategyV0_1(pre) => {
                let instance = pre.instantiate_async(&mut store).await?;
                let ctx = ctx.clone().translate();
                let result = instance
                    .slipway_deploy_strategy_handler()
                    .call_run(&mut store, &ctx)
                    .await?;
                Ok(result.translate())
            }
            ModulePre::Hook(_) | ModulePre::HookV0_1(_) => Err(wasmtime::Error::new(WrongWorld(World::Strategy))),
        }
    };
    let result = tokio::time::timeout(wall_clock, call).await;
    let last_invalid = store.data().budget.last_invalid.clone();
    let stopped = store.data().budget.stopped;
    match result {
        Err(_) => Err(failure(
            module,
            FailureKind::Deadline,
            format!(
                "the strategy was still running after {} s of wall-clock time",
                wall_clock.as_secs()
            ),
            &stderr,
        )),
        Ok(Err(error)) => {
            let (kind, message) = failure::classify(&error, &stderr.tail());
            Err(failure(module, kind, message, &stderr))
        }
        Ok(Ok(Err(api_error))) => {
            let (kind, message) = failure::from_strategy_error(&api_error, last_invalid.as_deref(), stopped);
            Err(failure(module, kind, message, &stderr))
        }
        Ok(Ok(Ok(outcome))) => Ok(Outcome {
            summary: failure::cap(outcome.summary, failure::MAX_GUEST_TEXT),
        }),
    }
}

/// Runs a hook's `run` export. `Err` carries the hook's own message or its failure report.
pub async fn run_hook(
    module: &LoadedModule,
    ctx: HookContext,
    env: Arc<RolloutEnv>,
    limits: &Limits,
    timeout: Duration,
) -> Result<(), HookFailure> {
    if module.world != World::Hook {
        return Err(HookFailure::Guest(wrong_world(module, World::Hook)));
    }
    let (mut store, stderr) = new_store(module.pre.engine(), env, limits);
    let call = async {
        match module.pre.as_ref() {
            ModulePre::Hook(pre) => {
                let instance = pre.instantiate_async(&mut store).await?;
                instance.slipway_deploy_hook_handler().call_run(&mut store, &ctx).await
            }
            ModulePre::HookV0_1(pre) => {
                let instance = pre.instantiate_async(&mut store).await?;
                let ctx = ctx.clone().translate();
                instance.slipway_deploy_hook_handler().call_run(&mut store, &ctx).await
            }
            ModulePre::Strategy { .. } | ModulePre::StrategyV0_1(_) => {
                Err(wasmtime::Error::new(WrongWorld(World::Hook)))
            }
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(HookFailure::Guest(failure(
            module,
            FailureKind::Deadline,
            format!("the hook did not finish within its {} s timeout", timeout.as_secs()),
            &stderr,
        ))),
        Ok(Err(error)) => {
            let (kind, message) = failure::classify(&error, &stderr.tail());
            Err(HookFailure::Guest(failure(module, kind, message, &stderr)))
        }
        Ok(Ok(Err(message))) => Err(HookFailure::Returned(failure::cap(message, failure::MAX_GUEST_TEXT))),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// Instantiates a strategy in a fresh store and drops it: the fixed cost of every
/// invocation, measured by the benchmarks.
pub async fn instantiate_only(module: &LoadedModule, env: Arc<RolloutEnv>, limits: &Limits) -> anyhow::Result<()> {
    let (mut store, _stderr) = new_store(module.pre.engine(), env, limits);
    match module.pre.as_ref() {
        ModulePre::Strategy { pre, .. } => {
            pre.instantiate_async(&mut store).await?;
        }
        ModulePre::StrategyV0_1(pre) => {
            pre.instantiate_async(&mut store).await?;
        }
        _ => anyhow::bail!("{} is not a strategy", module.name),
    }
    Ok(())
}

/// Asks a strategy that exports `params-check` whether `params` (JSON) are acceptable:
/// `Ok(None)` when they are or the module does not check, `Ok(Some(message))` with the
/// module's words when they are not. The call gets no host API: a `validate` that calls one
/// fails, as does one that traps or runs out of a budget (`Err`).
pub async fn check_params(
    module: &LoadedModule,
    params: &str,
    limits: &Limits,
) -> Result<Option<String>, GuestFailure> {
    let ModulePre::Strategy {
        pre,
        params_check: Some(validate),
    } = module.pre.as_ref()
    else {
        return Ok(None);
    };
    let env = Arc::new(RolloutEnv::detached(&module.name));
    let (mut store, stderr) = new_store(pre.engine(), env, limits);
    store.data_mut().budget.detached = true;
    let call = async {
        let instance = pre.instance_pre().instantiate_async(&mut store).await?;
        let func = instance.get_typed_func::<(&str,), (Result<(), String>,)>(&mut store, validate)?;
        let (answer,) = func.call_async(&mut store, (params,)).await?;
        Ok::<_, wasmtime::Error>(answer)
    };
    match tokio::time::timeout(PARAMS_CHECK_TIME, call).await {
        Err(_) => Err(failure(
            module,
            FailureKind::Deadline,
            format!(
                "params-check.validate did not answer within {} s",
                PARAMS_CHECK_TIME.as_secs()
            ),
            &stderr,
        )),
        Ok(Err(error)) => {
            let (kind, message) = failure::classify(&error, &stderr.tail());
            Err(failure(module, kind, message, &stderr))
        }
        Ok(Ok(answer)) => Ok(answer
            .err()
            .map(|message| failure::cap(message, failure::MAX_GUEST_TEXT))),
    }
}

/// How long a strategy's parameter check may take.
const PARAMS_CHECK_TIME: Duration = Duration::from_secs(5);

/// The module was asked to act as the other world.
#[derive(Debug, thiserror::Error)]
#[error("the module is not a {0} component")]
struct WrongWorld(World);

/// How a hook failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookFailure {
    /// The hook ran and returned an error of its own.
    #[error("{0}")]
    Returned(String),
    /// The hook trapped, ran out of a budget, or could not run.
    #[error("{0}")]
    Guest(GuestFailure),
}

fn wrong_world(module: &LoadedModule, expected: World) -> GuestFailure {
    GuestFailure {
        module: module.name.clone(),
        digest: module.digest.clone(),
        kind: FailureKind::InvalidModule,
        message: format!(
            "the module is a {} component, but a {expected} was expected",
            module.world
        ),
        stderr_tail: String::new(),
    }
}

fn failure(module: &LoadedModule, kind: FailureKind, message: String, stderr: &TailPipe) -> GuestFailure {
    GuestFailure {
        module: module.name.clone(),
        digest: module.digest.clone(),
        kind,
        message: failure::cap(message, failure::MAX_GUEST_TEXT),
        stderr_tail: stderr.tail(),
    }
}

fn new_store(engine: &Engine, env: Arc<RolloutEnv>, limits: &Limits) -> (Store<GuestState>, TailPipe) {
    // `console.log`, `print`, `println!`: every language's plain output reaches the log.
    let budget = Arc::new(Mutex::new(limits.log_bytes));
    let lines = |level| Lines::new(env.clone(), level, limits.log_line_bytes, budget.clone());
    let stdout = TailPipe::new(0).logging(lines("info"));
    let stderr = TailPipe::new(limits.stderr_tail_bytes).logging(lines("warn"));
    // No preopened directories, no environment, no arguments, no network: the guest reaches
    // the world only through the host API. Its clocks and randomness are the rollout's, so a
    // simulation replays exactly.
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout)
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(RolloutClock(env.clone()))
        .monotonic_clock(RolloutClock(env.clone()))
        .secure_random(SeededRandom(env.seed))
        .insecure_random(SeededRandom(env.seed.rotate_left(17)));
    let state = GuestState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        memory: MemoryCap {
            cap: limits.memory_bytes,
        },
        env,
        limits: limits.clone(),
        budget: Budget::default(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        state.budget.cpu_ticks += 1;
        if state.budget.cpu_ticks > state.limits.cpu_ticks {
            let ms = state.limits.cpu_ticks * EPOCH_TICK.as_millis() as u64;
            return Err(wasmtime::Error::new(GuestLimit::Cpu(ms)));
        }
        // Yield at every tick so a spinning guest never holds a runner thread.
        Ok(UpdateDeadline::Yield(1))
    });
    (store, stderr)
}

/// Caps linear memory growth; the guest traps when it asks for more.
struct MemoryCap {
    cap: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Err(wasmtime::Error::new(GuestLimit::Memory { desired, cap: self.cap }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The guest's WASI randomness: seeded from the rollout, so a simulation replays exactly.
/// Strategies need randomness for jitter and sampling, not for secrets.
struct SeededRandom(u64);

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(crate::sim::splitmix64(&mut self.0) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(crate::sim::splitmix64(&mut self.0))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dest.chunks_mut(8) {
            let bytes = crate::sim::splitmix64(&mut self.0).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// The rollout's clock, as WASI sees it.
struct RolloutClock(Arc<RolloutEnv>);

impl wasmtime_wasi::HostWallClock for RolloutClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.cluster.now_ms())
    }
}

impl wasmtime_wasi::HostMonotonicClock for RolloutClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.cluster.now_ms().saturating_sub(self.0.started_at_ms) * 1_000_000
    }
}

/// A guest's output stream: it keeps only its last `capacity` bytes, so a guest can write as
/// much as it likes without growing the runner's memory and a panic message at the end
/// survives, and with `logging`, logs each line.
#[derive(Clone)]
pub(crate) struct TailPipe {
    capacity: usize,
    buffer: Arc<Mutex<VecDeque<u8>>>,
    lines: Option<Arc<Lines>>,
}

impl TailPipe {
    fn new(capacity: usize) -> Self {
        TailPipe {
            capacity,
            buffer: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            lines: None,
        }
    }

    fn logging(mut self, lines: Lines) -> Self {
        self.lines = Some(Arc::new(lines));
        self
    }

    fn push(&self, bytes: &[u8]) {
        if let Some(lines) = &self.lines {
            lines.write(bytes);
        }
        if self.capacity == 0 {
            return;
        }
        let mut buffer = self.buffer.lock().unwrap();
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (buffer.len() + bytes.len()).saturating_sub(self.capacity);
        buffer.drain(..overflow);
        buffer.extend(bytes);
    }

    pub(crate) fn tail(&self) -> String {
        let buffer = self.buffer.lock().unwrap();
        let (a, b) = buffer.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A guest output stream as the rollout's log: a `log` event per line at `level`, each cut at
/// `line_cap` bytes, until the guest's output as a whole (stdout and stderr share `budget`)
/// has used the log's byte budget; then one warning, and the rest is not logged (the guest
/// goes on). A line left open when the guest's store goes away is logged then.
pub(crate) struct Lines {
    env: Arc<RolloutEnv>,
    level: &'static str,
    line_cap: usize,
    budget: Arc<Mutex<usize>>,
    partial: Mutex<Vec<u8>>,
}

impl Lines {
    fn new(env: Arc<RolloutEnv>, level: &'static str, line_cap: usize, budget: Arc<Mutex<usize>>) -> Lines {
        Lines {
            env,
            level,
            line_cap: line_cap.max(1),
            budget,
            partial: Mutex::new(Vec::new()),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap();
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            match piece.strip_suffix(b"\n") {
                Some(end) => {
                    partial.extend_from_slice(end);
                    self.emit(std::mem::take(&mut *partial));
                }
                None => {
                    partial.extend_from_slice(piece);
                    if partial.len() >= self.line_cap {
                        self.emit(std::mem::take(&mut *partial));
                    }
                }
            }
        }
    }

    fn emit(&self, line: Vec<u8>) {
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let mut left = self.budget.lock().unwrap();
        if *left == 0 {
            return;
        }
        if line.len() > *left {
            *left = 0;
            self.env.record(EventKind::Log {
                level: "warn".into(),
                message: "the guest's output went over the log's byte budget; the rest of it is not logged".into(),
            });
            return;
        }
        *left -= line.len();
        self.env.record(EventKind::Log {
            level: self.level.into(),
            message: failure::cap(line.to_string(), self.line_cap),
        });
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let partial = std::mem::take(self.partial.get_mut().unwrap());
        if !partial.is_empty() {
            self.emit(partial);
        }
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_reach_the_log_within_the_budget() {
        let env = Arc::new(RolloutEnv::detached("test"));
        let budget = Arc::new(Mutex::new(60));
        let stdout = TailPipe::new(0).logging(Lines::new(env.clone(), "info", 16, budget.clone()));
        let stderr = TailPipe::new(64).logging(Lines::new(env.clone(), "warn", 16, budget));
        stdout.push(b"wave 1 ");
        stdout.push(b"done\n\nsecond\r\n");
        stderr.push(b"a line far longer than sixteen bytes\n");
        stderr.push(b"open");
        drop(stderr);
        stdout.push(b"over the budget\n");
        stdout.push(b"and after it\n");
        let logged: Vec<(String, String)> = env
            .timeline
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Log { level, message } => Some((level, message)),
                _ => None,
            })
            .collect();
        let expected = [
            ("info", "wave 1 done"),
            ("info", "second"),
            ("warn", "a line far longe …[20 more bytes cut]"),
            ("warn", "open"),
            (
                "warn",
                "the guest's output went over the log's byte budget; the rest of it is not logged",
            ),
        ];
        let logged: Vec<(&str, &str)> = logged.iter().map(|(l, m)| (l.as_str(), m.as_str())).collect();
        assert_eq!(logged, expected);
    }

    #[test]
    fn tail_pipe_keeps_the_end() {
        let pipe = TailPipe::new(8);
        pipe.push(b"hello ");
        pipe.push(b"world!");
        assert_eq!(pipe.tail(), "o world!");
        pipe.push(b"a very long line indeed");
        assert_eq!(pipe.tail(), "e indeed");
    }
}
