//! The process driver, the embedded default: every instance of a revision is a child process
//! of the runner, fronted by the built-in router.
//!
//! Each instance gets its own port (`PORT`), its own process group, and a readiness probe
//! loop. A crashed instance is replaced after a backoff. Stopping an instance takes it out of
//! rotation, drains its in-flight requests, then sends SIGTERM to its process group and
//! SIGKILL after the grace period.
//!
//! **Invariant:** the runner reaps every child it starts, and children die with the runner:
//! each is started with a parent-death signal, so even a runner killed with SIGKILL leaves no
//! instance behind.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::bindings::{HttpCheckReport, ProbeReport, ReplicaCounts};
use crate::driver::router::builtin::{Backend, BuiltinRouter, RouteTable, RoutedRevision};
use crate::driver::{Cluster, DriverError, validate_weights};
use crate::events::{EventKind, RevisionSnapshot, Timeline};
use crate::probe::{ProbeCheck, Thresholds, probe_once};
use crate::spec::SecretSource;

/// Lines of output kept per instance.
const OUTPUT_LINES: usize = 50;
/// The first restart of a crashed instance waits this long; each crash in a row doubles it.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// A starting instance is probed every [`FIRST_PROBE_INTERVAL`] for its first
/// [`FIRST_PROBING`], then every [`FAST_PROBE_INTERVAL`] until it has been starting for
/// [`FAST_PROBING`], and after that at intervals that double up to the configured one. Most
/// apps are ready within milliseconds to a second; this sees them ready about as soon as they
/// listen, for the price of a refused connect per probe while they are not.
const FIRST_PROBE_INTERVAL: Duration = Duration::from_millis(2);
const FIRST_PROBING: Duration = Duration::from_millis(100);
const FAST_PROBE_INTERVAL: Duration = Duration::from_millis(10);
const FAST_PROBING: Duration = Duration::from_secs(1);

/// How to run and probe the instances of one revision.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Resolved at every start, never kept.
    pub secret_env: BTreeMap<String, SecretSource>,
    pub workdir: Option<PathBuf>,
    /// SIGTERM, then this long, then SIGKILL.
    pub grace: Duration,
    pub probe: ProbeCheck,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The instances of one app, and its router.
pub struct ProcessDriver {
    app: String,
    router: Arc<BuiltinRouter>,
    state: Mutex<DriverState>,
    /// Held for the whole of a reconcile, so two of them (after crashes, a scale) can never
    /// both count the same missing instances and start them twice.
    reconciling: Mutex<()>,
    changed: watch::Sender<u64>,
    timeline: Mutex<Option<Timeline>>,
    this: Weak<ProcessDriver>,
}

#[derive(Default)]
struct DriverState {
    revisions: BTreeMap<u32, RevisionInstances>,
    weights: BTreeMap<u32, u32>,
    maintenance: bool,
    next_instance: u64,
}

struct RevisionInstances {
    config: Arc<ProcessConfig>,
    desired: u32,
    instances: Vec<Arc<Instance>>,
    failed: u32,
    crashes_in_a_row: u32,
    restart_after: Option<Instant>,
}

struct Instance {
    id: String,
    /// Start order within the driver: a higher number started later.
    seq: u64,
    revision: u32,
    backend: Arc<Backend>,
    pid: Mutex<Option<u32>>,
    ready: AtomicBool,
    stopping: AtomicBool,
    exited: watch::Sender<bool>,
    output: Mutex<VecDeque<String>>,
}

impl Instance {
    fn live(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst) && !*self.exited.borrow()
    }
    fn serving(&self) -> bool {
        self.live() && self.ready.load(Ordering::SeqCst)
    }
    fn output_tail(&self) -> String {
        self.output
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl ProcessDriver {
    pub fn new(app: &str, router: Arc<BuiltinRouter>) -> Arc<ProcessDriver> {
        let (changed, _) = watch::channel(0);
        Arc::new_cyclic(|this| ProcessDriver {
            app: app.to_string(),
            router,
            state: Mutex::new(DriverState::default()),
            reconciling: Mutex::new(()),
            changed,
            timeline: Mutex::new(None),
            this: this.clone(),
        })
    }

    pub fn router(&self) -> &Arc<BuiltinRouter> {
        &self.router
    }

    /// Makes `revision` known with how to run it. Idempotent.
    pub fn add_revision(&self, revision: u32, config: ProcessConfig) {
        let mut state = self.state.lock().unwrap();
        state.revisions.entry(revision).or_insert_with(|| RevisionInstances {
            config: Arc::new(config),
            desired: 0,
            instances: Vec::new(),
            failed: 0,
            crashes_in_a_row: 0,
            restart_after: None,
        });
    }

    /// Where instance events go while a rollout runs.
    pub fn set_timeline(&self, timeline: Option<Timeline>) {
        *self.timeline.lock().unwrap() = timeline;
    }

    /// Every revision's instances and weight now.
    pub fn snapshot(&self) -> BTreeMap<u32, RevisionSnapshot> {
        let state = self.state.lock().unwrap();
        snapshot(&state)
    }

    /// Revisions with at least one instance (running, starting or stopping).
    pub fn revisions_with_instances(&self) -> Vec<u32> {
        let state = self.state.lock().unwrap();
        state
            .revisions
            .iter()
            .filter(|(_, r)| !r.instances.is_empty() || r.desired > 0)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Stops every instance (gracefully, in parallel) and waits until all have exited.
    pub async fn stop_all(&self) {
        let instances: Vec<Arc<Instance>> = {
            let mut state = self.state.lock().unwrap();
            for revision in state.revisions.values_mut() {
                revision.desired = 0;
            }
            state
                .revisions
                .values()
                .flat_map(|r| r.instances.iter().cloned())
                .collect()
        };
        let stops = instances.into_iter().map(|instance| self.stop_instance(instance));
        futures_util::future::join_all(stops).await;
    }

    fn emit(&self, kind: EventKind) {
        let timeline = self.timeline.lock().unwrap().clone();
        if let Some(timeline) = timeline {
            let state = snapshot(&self.state.lock().unwrap());
            timeline.push(crate::store::now_ms(), kind, Some(state));
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Rebuilds the router's table from the serving instances, weights and maintenance flag.
    fn publish(&self) {
        let table = {
            let state = self.state.lock().unwrap();
            RouteTable {
                maintenance: state.maintenance,
                revisions: state
                    .weights
                    .iter()
                    .filter_map(|(number, weight)| {
                        let revision = state.revisions.get(number)?;
                        let backends = revision
                            .instances
                            .iter()
                            .filter(|i| i.serving())
                            .map(|i| i.backend.clone())
                            .collect();
                        Some(RoutedRevision {
                            revision: *number,
                            weight: *weight,
                            backends,
                        })
                    })
                    .collect(),
            }
        };
        self.router.update(table);
    }

    /// Starts or stops instances of `revision` until it matches its desired count.
    fn reconcile(&self, revision: u32) {
        let _one_at_a_time = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        let mut to_start = 0;
        let mut to_stop = Vec::new();
        let mut retry_in = None;
        {
            let mut state = self.state.lock().unwrap();
            let Some(rev) = state.revisions.get_mut(&revision) else {
                return;
            };
            let mut live: Vec<Arc<Instance>> = rev.instances.iter().filter(|i| i.live()).cloned().collect();
            let desired = rev.desired as usize;
            if live.len() < desired {
                match rev.restart_after {
                    Some(at) if at > Instant::now() => retry_in = Some(at - Instant::now()),
                    _ => to_start = desired - live.len(),
                }
            } else if live.len() > desired {
                // Not-ready instances go first, then the newest: never remove a ready instance
                // while an unready one could go instead.
                live.sort_by_key(|i| (i.ready.load(Ordering::SeqCst), std::cmp::Reverse(i.seq)));
                for instance in live
                    .into_iter()
                    .take(rev.instances.iter().filter(|i| i.live()).count() - desired)
                {
                    instance.stopping.store(true, Ordering::SeqCst);
                    to_stop.push(instance);
                }
            }
        }
        if !to_stop.is_empty() {
            self.publish();
            self.notify();
        }
        for instance in to_stop {
            let this = self.this.upgrade().expect("driver alive");
            tokio::spawn(async move { this.stop_instance(instance).await });
        }
        for _ in 0..to_start {
            if let Err(error) = self.start_instance(revision) {
                tracing::warn!(app = %self.app, revision, %error, "could not start an instance");
                let mut state = self.state.lock().unwrap();
                if let Some(rev) = state.revisions.get_mut(&revision) {
                    rev.failed += 1;
                    rev.crashes_in_a_row += 1;
                    let backoff = backoff(rev.crashes_in_a_row);
                    rev.restart_after = Some(Instant::now() + backoff);
                    retry_in = Some(backoff);
                }
                drop(state);
                self.emit(EventKind::Log {
                    level: "error".into(),
                    message: format!("revision {revision}: cannot start {error}"),
                });
                break;
            }
        }
        if let Some(delay) = retry_in {
            let this = self.this.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(this) = this.upgrade() {
                    this.reconcile(revision);
                }
            });
        }
    }

    fn start_instance(&self, revision: u32) -> Result<(), String> {
        let (id, seq, config) = {
            let mut state = self.state.lock().unwrap();
            state.next_instance += 1;
            let id = format!("{}-r{revision}-{}", self.app, state.next_instance);
            (id, state.next_instance, state.revisions[&revision].config.clone())
        };
        let secrets = crate::secrets::resolve(&config.secret_env)?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = tokio::process::Command::new(&config.program);
        command
            .args(&config.args)
            .envs(&config.env)
            .envs(secrets)
            .env("PORT", port.to_string())
            .env("SLIPWAY_APP", &self.app)
            .env("SLIPWAY_REVISION", revision.to_string())
            .env("SLIPWAY_INSTANCE", &id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &config.workdir {
            command.current_dir(dir);
        }
        set_parent_death_signal(&mut command);
        let mut child = command.spawn().map_err(|e| format!("{:?}: {e}", config.program))?;
        let (exited, _) = watch::channel(false);
        let instance = Arc::new(Instance {
            id: id.clone(),
            seq,
            revision,
            backend: Backend::new(id.clone(), addr),
            pid: Mutex::new(child.id()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            exited,
            output: Mutex::new(VecDeque::new()),
        });
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let instance = instance.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut output = instance.output.lock().unwrap();
                    if output.len() == OUTPUT_LINES {
                        output.pop_front();
                    }
                    output.push_back(line);
                }
            });
        }
        self.state
            .lock()
            .unwrap()
            .revisions
            .get_mut(&revision)
            .expect("revision")
            .instances
            .push(instance.clone());
        self.notify();
        self.emit(EventKind::InstanceStarted { revision, instance: id });

        let this = self.this.upgrade().expect("driver alive");
        let supervised = instance.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            this.on_exit(
                &supervised,
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            );
        });
        let this = self.this.upgrade().expect("driver alive");
        tokio::spawn(async move { this.probe_loop(instance, config).await });
        Ok(())
    }

    fn on_exit(&self, instance: &Arc<Instance>, status: String) {
        instance.ready.store(false, Ordering::SeqCst);
        *instance.pid.lock().unwrap() = None;
        let _ = instance.exited.send(true);
        let crashed = !instance.stopping.load(Ordering::SeqCst);
        let mut restart_in = Duration::ZERO;
        {
            let mut state = self.state.lock().unwrap();
            if let Some(rev) = state.revisions.get_mut(&instance.revision) {
                rev.instances.retain(|i| !Arc::ptr_eq(i, instance));
                if crashed {
                    rev.failed += 1;
                    rev.crashes_in_a_row += 1;
                    restart_in = backoff(rev.crashes_in_a_row);
                    rev.restart_after = Some(Instant::now() + restart_in);
                }
            }
        }
        self.publish();
        self.notify();
        if crashed {
            let tail = instance.output_tail();
            tracing::warn!(app = %self.app, instance = %instance.id, %status, "instance exited unexpectedly");
            self.emit(EventKind::InstanceCrashed {
                revision: instance.revision,
                instance: instance.id.clone(),
                restart_in_ms: restart_in.as_millis() as u64,
            });
            if !tail.is_empty() {
                let last: Vec<&str> = tail
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                self.emit(EventKind::Log {
                    level: "warn".into(),
                    message: format!("{} exited ({status}); last output: {}", instance.id, last.join(" | ")),
                });
            }
            self.reconcile(instance.revision);
        } else {
            self.emit(EventKind::InstanceStopped {
                revision: instance.revision,
                instance: instance.id.clone(),
            });
        }
    }

    async fn probe_loop(&self, instance: Arc<Instance>, config: Arc<ProcessConfig>) {
        let mut thresholds = Thresholds::new(config.success_threshold, config.failure_threshold);
        let mut exited = instance.exited.subscribe();
        let started = Instant::now();
        let mut delay = FIRST_PROBE_INTERVAL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = exited.wait_for(|e| *e) => return,
            }
            if !instance.live() {
                return;
            }
            let passed = probe_once(&config.probe, instance.backend.addr(), config.probe_timeout)
                .await
                .is_ok();
            let ready = thresholds.record(passed);
            if ready != instance.ready.swap(ready, Ordering::SeqCst) && instance.live() {
                if ready {
                    let mut state = self.state.lock().unwrap();
                    if let Some(rev) = state.revisions.get_mut(&instance.revision) {
                        rev.crashes_in_a_row = 0;
                        rev.restart_after = None;
                    }
                }
                self.publish();
                self.notify();
                if ready {
                    self.emit(EventKind::InstanceReady {
                        revision: instance.revision,
                        instance: instance.id.clone(),
                    });
                } else {
                    self.emit(EventKind::Log {
                        level: "warn".into(),
                        message: format!("{} stopped passing its readiness probe", instance.id),
                    });
                }
            }
            delay = if ready {
                config.probe_interval
            } else if started.elapsed() < FIRST_PROBING {
                FIRST_PROBE_INTERVAL.min(config.probe_interval)
            } else if started.elapsed() < FAST_PROBING {
                FAST_PROBE_INTERVAL.min(config.probe_interval)
            } else {
                (delay * 2).min(config.probe_interval)
            };
        }
    }

    /// Takes `instance` out of rotation, drains it, and stops its process group.
    async fn stop_instance(&self, instance: Arc<Instance>) {
        instance.stopping.store(true, Ordering::SeqCst);
        self.publish();
        self.notify();
        let grace = self
            .state
            .lock()
            .unwrap()
            .revisions
            .get(&instance.revision)
            .map(|r| r.config.grace)
            .unwrap_or(Duration::from_secs(30));
        let started = Instant::now();
        if instance.ready.load(Ordering::SeqCst) {
            self.router.drain(&instance.backend, grace).await;
        }
        let mut exited = instance.exited.subscribe();
        if *exited.borrow() {
            return;
        }
        signal(&instance, Signal::SIGTERM);
        let remaining = grace.saturating_sub(started.elapsed());
        if tokio::time::timeout(remaining, exited.wait_for(|e| *e)).await.is_err() {
            tracing::warn!(app = %self.app, instance = %instance.id, "did not stop within its grace period; killing it");
            signal(&instance, Signal::SIGKILL);
            let _ = exited.wait_for(|e| *e).await;
        }
    }

    fn wait_error(&self, revision: u32, ready: u32, timeout_ms: u64) -> DriverError {
        let counts = self.counts(revision).unwrap_or(ReplicaCounts {
            desired: 0,
            current: 0,
            ready: 0,
            failed: 0,
        });
        let mut message = format!(
            "revision {revision}: {} of {ready} wanted instances ready after {} s",
            counts.ready,
            timeout_ms / 1000
        );
        if counts.failed > 0 {
            message.push_str(&format!(" ({} crashed)", counts.failed));
        }
        DriverError::Timeout { message, counts }
    }
}

fn signal(instance: &Instance, signal: Signal) {
    if let Some(pid) = *instance.pid.lock().unwrap() {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

fn backoff(crashes: u32) -> Duration {
    RESTART_BACKOFF
        .saturating_mul(1 << crashes.saturating_sub(1).min(6))
        .min(MAX_RESTART_BACKOFF)
}

fn snapshot(state: &DriverState) -> BTreeMap<u32, RevisionSnapshot> {
    state
        .revisions
        .iter()
        .filter(|(number, r)| r.desired > 0 || !r.instances.is_empty() || state.weights.contains_key(number))
        .map(|(number, r)| {
            let current = r.instances.len() as u32;
            let ready = r.instances.iter().filter(|i| i.serving()).count() as u32;
            let weight = state.weights.get(number).copied().unwrap_or(0);
            (
                *number,
                RevisionSnapshot {
                    desired: r.desired,
                    current,
                    ready,
                    weight,
                },
            )
        })
        .collect()
}

/// A port nobody listens on right now, for the next instance.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Children get SIGTERM when the runner dies, however it dies.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[async_trait]
impl Cluster for ProcessDriver {
    fn now_ms(&self) -> u64 {
        crate::store::now_ms()
    }

    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        let from = {
            let mut state = self.state.lock().unwrap();
            let rev = state
                .revisions
                .get_mut(&revision)
                .ok_or(DriverError::UnknownRevision(revision))?;
            let from = rev.desired;
            rev.desired = replicas;
            from
        };
        self.emit(EventKind::Scaled {
            revision,
            from,
            to: replicas,
        });
        self.reconcile(revision);
        Ok(())
    }

    fn counts(&self, revision: u32) -> Result<ReplicaCounts, DriverError> {
        let state = self.state.lock().unwrap();
        let rev = state
            .revisions
            .get(&revision)
            .ok_or(DriverError::UnknownRevision(revision))?;
        Ok(ReplicaCounts {
            desired: rev.desired,
            current: rev.instances.len() as u32,
            ready: rev.instances.iter().filter(|i| i.serving()).count() as u32,
            failed: rev.failed,
        })
    }

    async fn wait_ready(&self, revision: u32, ready: u32, timeout_ms: u64) -> Result<ReplicaCounts, DriverError> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let counts = self.counts(revision)?;
            if counts.ready >= ready {
                return Ok(counts);
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Err(self.wait_error(revision, ready, timeout_ms));
            }
        }
    }

    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        validate_weights(weights)?;
        let shown = {
            let mut state = self.state.lock().unwrap();
            for (revision, _) in weights {
                if !state.revisions.contains_key(revision) {
                    return Err(DriverError::UnknownRevision(*revision));
                }
            }
            state.weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
            state.weights.clone()
        };
        self.publish();
        self.emit(EventKind::WeightsChanged { weights: shown });
        Ok(())
    }

    fn weights(&self) -> Vec<(u32, u32)> {
        self.state
            .lock()
            .unwrap()
            .weights
            .iter()
            .map(|(r, w)| (*r, *w))
            .collect()
    }

    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        self.state.lock().unwrap().maintenance = on;
        self.publish();
        self.emit(EventKind::Maintenance { on });
        Ok(())
    }

    fn maintenance(&self) -> bool {
        self.state.lock().unwrap().maintenance
    }

    fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), changes.wait_for(|g| *g > seen)).await;
        self.generation()
    }

    async fn probe(&self, revision: u32) -> Result<ProbeReport, DriverError> {
        let (instances, config) = {
            let state = self.state.lock().unwrap();
            let rev = state
                .revisions
                .get(&revision)
                .ok_or(DriverError::UnknownRevision(revision))?;
            (
                rev.instances.iter().filter(|i| i.live()).cloned().collect::<Vec<_>>(),
                rev.config.clone(),
            )
        };
        let results = futures_util::future::join_all(
            instances
                .iter()
                .map(|i| probe_once(&config.probe, i.backend.addr(), config.probe_timeout)),
        )
        .await;
        let failures: Vec<String> = instances
            .iter()
            .zip(&results)
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{}: {e}", i.id)))
            .collect();
        Ok(ProbeReport {
            revision,
            probed: instances.len() as u32,
            ready: (instances.len() - failures.len()) as u32,
            failures,
        })
    }

    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        expect_status: u16,
        timeout_ms: u32,
    ) -> Result<HttpCheckReport, DriverError> {
        let instances: Vec<Arc<Instance>> = {
            let state = self.state.lock().unwrap();
            let rev = state
                .revisions
                .get(&revision)
                .ok_or(DriverError::UnknownRevision(revision))?;
            rev.instances.iter().filter(|i| i.serving()).cloned().collect()
        };
        let check = ProbeCheck::Http {
            path: path.to_string(),
            status: expect_status,
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let results =
            futures_util::future::join_all(instances.iter().map(|i| probe_once(&check, i.backend.addr(), timeout)))
                .await;
        let failures: Vec<String> = instances
            .iter()
            .zip(&results)
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{}: {e}", i.id)))
            .collect();
        Ok(HttpCheckReport {
            checked: instances.len() as u32,
            passed: (instances.len() - failures.len()) as u32,
            failures,
        })
    }
}
