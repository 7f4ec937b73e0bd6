//! The instance driver: supervises every instance of each revision of one app, whether it
//! runs as a local process (the embedded default, [`super::process`]) or as a container
//! ([`super::container`]); each revision says which in its [`Workload`].
//!
//! Each instance gets its own address and a readiness probe loop. A crashed instance is
//! replaced after a backoff. Stopping an instance takes it out of rotation, has the router
//! drain its in-flight requests, then sends SIGTERM and SIGKILL after the grace period. Its
//! output goes to a file of its own (see [`OutputFiles`]), never into memory.
//!
//! The driver knows its router only as [`Backends`]: it tells it which instances of each
//! revision are ready, and asks it to drain one before stopping it.
//!
//! **Invariant:** whoever runs this driver reaps every child it starts. Processes die with it
//! (parent-death signal); containers outlive it and are adopted by the next one
//! ([`InstanceDriver::adopt`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::container::{ContainerConfig, Containers, Found};
use super::output::{OutputFiles, last_lines};
use super::process::{self, ProcessConfig};
use crate::driver::{Compute, Counts, DriverError, DriverEvent, Endpoint, Happened, HttpResult, ProbeResult};
use crate::probe::{ProbeCheck, Thresholds, probe_once};

/// The first restart of a crashed instance waits this long; each crash in a row doubles it.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
/// The least time an instance gets between SIGTERM and SIGKILL (unless its grace period is
/// shorter).
const TERM_AT_LEAST: Duration = Duration::from_secs(2);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// A starting instance is probed every [`QUICK_PROBE_INTERVAL`] for its first
/// [`QUICK_PROBING`], every [`FIRST_PROBE_INTERVAL`] until [`FIRST_PROBING`], then every
/// [`FAST_PROBE_INTERVAL`] until it has been starting for [`FAST_PROBING`], and after that at
/// intervals that double up to the configured one. Most apps are ready within milliseconds to
/// a second; this sees them ready about as soon as they listen, for the price of a refused
/// connect per probe while they are not.
const QUICK_PROBE_INTERVAL: Duration = Duration::from_millis(1);
const QUICK_PROBING: Duration = Duration::from_millis(20);
const FIRST_PROBE_INTERVAL: Duration = Duration::from_millis(2);
const FIRST_PROBING: Duration = Duration::from_millis(100);
const FAST_PROBE_INTERVAL: Duration = Duration::from_millis(10);
const FAST_PROBING: Duration = Duration::from_secs(1);
/// Lines of an instance's output quoted when it crashes.
const CRASH_LINES: usize = 5;
/// Driver events kept for a slow listener before it misses some.
const EVENT_BACKLOG: usize = 4096;

/// What a compute driver needs from the router in front of its instances.
#[async_trait]
pub trait Backends: Send + Sync {
    /// The ready instances of `revision` are now `endpoints` (replacing what was said before).
    fn set_endpoints(&self, revision: u32, endpoints: Vec<Endpoint>);
    /// Waits until no request is in flight to `instance` (after it left its endpoints), or
    /// `timeout`; returns whether it drained.
    async fn drain(&self, instance: &str, timeout: Duration) -> bool;
}

/// How the driver looks after an instance, whatever runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Supervision {
    /// SIGTERM, then this long, then SIGKILL.
    pub grace: Duration,
    pub probe: ProbeCheck,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// How the instances of one revision run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Process(ProcessConfig),
    Container(ContainerConfig),
}

impl Workload {
    pub fn supervision(&self) -> &Supervision {
        match self {
            Workload::Process(config) => &config.supervision,
            Workload::Container(config) => &config.supervision,
        }
    }

    /// The environment given to every instance, and to `exec` hooks.
    pub fn env(&self) -> (&BTreeMap<String, String>, &BTreeMap<String, crate::spec::SecretSource>) {
        match self {
            Workload::Process(config) => (&config.env, &config.secret_env),
            Workload::Container(config) => (&config.env, &config.secret_env),
        }
    }
}

/// What the driver holds on to for a running instance.
#[derive(Clone, Debug)]
enum Handle {
    Process(u32),
    Container(String),
}

/// The instances of one app.
pub struct InstanceDriver {
    app: String,
    backends: Arc<dyn Backends>,
    output: OutputFiles,
    containers: Arc<Containers>,
    state: Mutex<DriverState>,
    /// Held for the whole of a reconcile, so two of them (after crashes, a scale) can never
    /// both count the same missing instances and start them twice.
    reconciling: Mutex<()>,
    changed: watch::Sender<u64>,
    events: broadcast::Sender<DriverEvent>,
    this: Weak<InstanceDriver>,
}

#[derive(Default)]
struct DriverState {
    revisions: BTreeMap<u32, RevisionInstances>,
    next_instance: u64,
    /// Moves on with every event; published through `changed`.
    generation: u64,
}

struct RevisionInstances {
    config: Arc<Workload>,
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
    addr: SocketAddr,
    /// None while a container is being created, and once the instance has exited.
    handle: Mutex<Option<Handle>>,
    ready: AtomicBool,
    stopping: AtomicBool,
    exited: watch::Sender<bool>,
}

impl Instance {
    fn live(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst) && !*self.exited.borrow()
    }

    fn serving(&self) -> bool {
        self.live() && self.ready.load(Ordering::SeqCst)
    }

    fn pid(&self) -> Option<u32> {
        match *self.handle.lock().unwrap() {
            Some(Handle::Process(pid)) => Some(pid),
            _ => None,
        }
    }
}

impl InstanceDriver {
    /// A driver for `app` whose instances sit behind `backends`, write their output to
    /// `output`, and run as containers in `containers` where their revision says so.
    pub fn new(
        app: &str,
        backends: Arc<dyn Backends>,
        output: OutputFiles,
        containers: Arc<Containers>,
    ) -> Arc<InstanceDriver> {
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Arc::new_cyclic(|this| InstanceDriver {
            app: app.to_string(),
            backends,
            output,
            containers,
            state: Mutex::new(DriverState::default()),
            reconciling: Mutex::new(()),
            changed,
            events,
            this: this.clone(),
        })
    }

    /// Makes `revision` known with how to run it. Idempotent.
    pub fn define(&self, revision: u32, config: Workload) {
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

    /// How `revision` is run, if it is defined.
    pub fn config(&self, revision: u32) -> Option<Workload> {
        let state = self.state.lock().unwrap();
        state.revisions.get(&revision).map(|r| (*r.config).clone())
    }

    /// The instances running now: (revision, instance, pid, address, ready).
    pub fn instances(&self) -> Vec<(u32, String, Option<u32>, SocketAddr, bool)> {
        let state = self.state.lock().unwrap();
        state
            .revisions
            .values()
            .flat_map(|r| r.instances.iter())
            .map(|i| (i.revision, i.id.clone(), i.pid(), i.addr, i.serving()))
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

    /// Reports a change, with every revision's counts and a new generation taken together.
    fn emit(&self, revision: u32, what: Happened) {
        let (generation, counts) = {
            let mut state = self.state.lock().unwrap();
            state.generation += 1;
            (state.generation, counts_of(&state))
        };
        // Nobody listening is fine: events are for whoever follows.
        let _ = self.events.send(DriverEvent {
            at_ms: crate::store::now_ms(),
            generation,
            revision,
            what,
            counts,
        });
        self.changed.send_if_modified(|seen| {
            let newer = generation > *seen;
            if newer {
                *seen = generation;
            }
            newer
        });
    }

    /// Every revision's counts and the generation they are from.
    pub fn observed(&self) -> (u64, BTreeMap<u32, Counts>) {
        let state = self.state.lock().unwrap();
        (state.generation, counts_of(&state))
    }

    /// Tells the router which instances of `revision` are ready now.
    fn publish(&self, revision: u32) {
        let endpoints = {
            let state = self.state.lock().unwrap();
            state
                .revisions
                .get(&revision)
                .map(|r| {
                    r.instances
                        .iter()
                        .filter(|i| i.serving())
                        .map(|i| Endpoint {
                            instance: i.id.clone(),
                            addr: i.addr,
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        self.backends.set_endpoints(revision, endpoints);
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
                let excess = live.len() - desired;
                for instance in live.into_iter().take(excess) {
                    instance.stopping.store(true, Ordering::SeqCst);
                    to_stop.push(instance);
                }
            }
        }
        if !to_stop.is_empty() {
            self.publish(revision);
        }
        for instance in to_stop {
            let this = self.this.upgrade().expect("driver alive");
            tokio::spawn(async move { this.stop_instance(instance).await });
        }
        for _ in 0..to_start {
            if let Err(error) = self.start_instance(revision) {
                tracing::warn!(app = %self.app, revision, %error, "could not start an instance");
                {
                    let mut state = self.state.lock().unwrap();
                    if let Some(rev) = state.revisions.get_mut(&revision) {
                        rev.failed += 1;
                        rev.crashes_in_a_row += 1;
                        let backoff = backoff(rev.crashes_in_a_row);
                        rev.restart_after = Some(Instant::now() + backoff);
                        retry_in = Some(backoff);
                    }
                }
                self.emit(revision, Happened::StartFailed { message: error });
                break;
            }
        }
        if let Some(delay) = retry_in {
            self.reconcile_after(revision, delay);
        }
    }

    /// Reconciles `revision` again once `delay` (a crash backoff) has passed.
    fn reconcile_after(&self, revision: u32, delay: Duration) {
        let this = self.this.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(this) = this.upgrade() {
                this.reconcile(revision);
            }
        });
    }

    fn start_instance(&self, revision: u32) -> Result<(), String> {
        let (id, seq, config) = {
            let mut state = self.state.lock().unwrap();
            state.next_instance += 1;
            let id = format!("{}-r{revision}-{}", self.app, state.next_instance);
            (id, state.next_instance, state.revisions[&revision].config.clone())
        };
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let instance = match &*config {
            Workload::Process(process) => {
                let mut child = process::spawn(&self.app, revision, &id, port, process)?;
                self.output.capture(&id, child.stdout.take(), child.stderr.take());
                let instance = self.add_instance(&id, seq, revision, addr, child.id().map(Handle::Process));
                let this = self.this.upgrade().expect("driver alive");
                let supervised = instance.clone();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    this.on_exit(
                        &supervised,
                        status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    );
                });
                instance
            }
            Workload::Container(container) => {
                // Creating a container takes a while (and pulling its image longer): the
                // instance counts as starting meanwhile.
                let instance = self.add_instance(&id, seq, revision, addr, None);
                let this = self.this.upgrade().expect("driver alive");
                let (starting, container) = (instance.clone(), container.clone());
                tokio::spawn(async move { this.launch_container(starting, container).await });
                instance
            }
        };
        let this = self.this.upgrade().expect("driver alive");
        tokio::spawn(async move { this.probe_loop(instance, config).await });
        Ok(())
    }

    /// Records a new instance of `revision` and reports it started.
    fn add_instance(
        &self,
        id: &str,
        seq: u64,
        revision: u32,
        addr: SocketAddr,
        handle: Option<Handle>,
    ) -> Arc<Instance> {
        let (exited, _) = watch::channel(false);
        let instance = Arc::new(Instance {
            id: id.to_string(),
            seq,
            revision,
            addr,
            handle: Mutex::new(handle),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            exited,
        });
        self.state
            .lock()
            .unwrap()
            .revisions
            .get_mut(&revision)
            .expect("revision")
            .instances
            .push(instance.clone());
        self.emit(
            revision,
            Happened::Started {
                instance: id.to_string(),
            },
        );
        instance
    }

    async fn launch_container(self: Arc<Self>, instance: Arc<Instance>, config: ContainerConfig) {
        let started = self
            .containers
            .start(
                &self.app,
                instance.revision,
                &instance.id,
                instance.seq,
                instance.addr,
                &config,
            )
            .await;
        match started {
            Ok(container) => {
                *instance.handle.lock().unwrap() = Some(Handle::Container(container.clone()));
                if instance.stopping.load(Ordering::SeqCst) {
                    // Stopped while it was being created: nothing was routed to it.
                    self.containers.kill(&container, "SIGKILL").await;
                }
                self.supervise_container(instance, container, 0);
            }
            Err(message) => {
                tracing::warn!(app = %self.app, instance = %instance.id, %message, "could not start a container");
                self.start_failed(&instance, message);
            }
        }
    }

    /// `instance` never ran: it is forgotten, counted as failed, and retried after a backoff.
    fn start_failed(&self, instance: &Arc<Instance>, message: String) {
        let retry_in = {
            let mut state = self.state.lock().unwrap();
            let rev = state.revisions.get_mut(&instance.revision);
            rev.map(|rev| {
                rev.instances.retain(|i| !Arc::ptr_eq(i, instance));
                rev.failed += 1;
                rev.crashes_in_a_row += 1;
                let backoff = backoff(rev.crashes_in_a_row);
                rev.restart_after = Some(Instant::now() + backoff);
                backoff
            })
        };
        let _ = instance.exited.send(true);
        self.emit(instance.revision, Happened::StartFailed { message });
        if let Some(delay) = retry_in {
            self.reconcile_after(instance.revision, delay);
        }
    }

    /// Follows a running container's output and waits for it to end.
    fn supervise_container(self: &Arc<Self>, instance: Arc<Instance>, container: String, since: i64) {
        let (writer, reader) = tokio::io::duplex(64 << 10);
        self.output
            .capture(&instance.id, Some(reader), None::<tokio::io::DuplexStream>);
        let containers = self.containers.clone();
        let followed = container.clone();
        tokio::spawn(async move { containers.follow_output(followed, since, writer).await });
        let this = self.clone();
        tokio::spawn(async move {
            let status = this.containers.wait(&container).await;
            // Removed before the exit is reported: a data plane that stops once its last
            // instance has exited must not leave the container behind.
            if let Err(error) = this.containers.remove(&container).await {
                tracing::debug!(%container, %error, "removing an exited container failed");
            }
            this.on_exit(&instance, status);
        });
    }

    /// Takes over the running containers of `revision` that a data plane before this one
    /// started, so that none is restarted that was healthy. Containers already known are left
    /// alone; exited ones are removed.
    pub async fn adopt(self: &Arc<Self>, revision: u32) -> Result<usize, DriverError> {
        let Some(config) = self.config(revision) else {
            return Err(DriverError::UnknownRevision(revision));
        };
        if !matches!(config, Workload::Container(_)) {
            return Ok(0);
        }
        let found = self
            .containers
            .find(&self.app, revision)
            .await
            .map_err(|message| DriverError::Infrastructure {
                driver: "containers",
                message,
                source: None,
            })?;
        // Probed first, all together, so that the router is told once, with every instance
        // that serves: a router that kept routing to them (HAProxy) loses none meanwhile.
        let supervision = config.supervision().clone();
        let probes = found
            .iter()
            .map(|f| probe_once(&supervision.probe, f.addr, supervision.probe_timeout));
        let passed = futures_util::future::join_all(probes).await;
        let config = Arc::new(config);
        let mut adopted = 0;
        for (
            Found {
                id,
                instance,
                seq,
                addr,
            },
            passed,
        ) in found.into_iter().zip(passed)
        {
            let known = {
                let mut state = self.state.lock().unwrap();
                state.next_instance = state.next_instance.max(seq);
                state
                    .revisions
                    .values()
                    .flat_map(|r| r.instances.iter())
                    .any(|i| i.id == instance)
            };
            if known {
                continue;
            }
            let adopted_instance =
                self.add_instance(&instance, seq, revision, addr, Some(Handle::Container(id.clone())));
            if passed.is_ok() {
                adopted_instance.ready.store(true, Ordering::SeqCst);
                self.emit(
                    revision,
                    Happened::Ready {
                        instance: instance.clone(),
                    },
                );
            }
            // Output from now on: what came before is in the file already.
            let now = (crate::store::now_ms() / 1000) as i64;
            self.supervise_container(adopted_instance.clone(), id, now);
            let this = self.clone();
            let config = config.clone();
            tokio::spawn(async move { this.probe_loop(adopted_instance, config).await });
            adopted += 1;
        }
        if adopted > 0 {
            self.publish(revision);
        }
        Ok(adopted)
    }

    fn on_exit(&self, instance: &Arc<Instance>, status: String) {
        let was_serving = instance.serving();
        instance.ready.store(false, Ordering::SeqCst);
        *instance.handle.lock().unwrap() = None;
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
        if was_serving {
            self.publish(instance.revision);
        }
        if crashed {
            tracing::warn!(app = %self.app, instance = %instance.id, %status, "instance exited unexpectedly");
            self.emit(
                instance.revision,
                Happened::Crashed {
                    instance: instance.id.clone(),
                    status,
                    restart_in_ms: restart_in.as_millis() as u64,
                    last_output: last_lines(&self.output.path(&instance.id), CRASH_LINES),
                },
            );
            self.reconcile(instance.revision);
        } else {
            self.emit(
                instance.revision,
                Happened::Stopped {
                    instance: instance.id.clone(),
                },
            );
        }
        self.output.closed(&instance.id);
    }

    async fn probe_loop(&self, instance: Arc<Instance>, workload: Arc<Workload>) {
        let config = workload.supervision();
        let mut thresholds = Thresholds::new(config.success_threshold, config.failure_threshold);
        if instance.ready.load(Ordering::SeqCst) {
            thresholds = thresholds.already_ready();
        }
        let mut exited = instance.exited.subscribe();
        let started = Instant::now();
        let mut delay = QUICK_PROBE_INTERVAL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = exited.wait_for(|e| *e) => return,
            }
            if !instance.live() {
                return;
            }
            let passed = probe_once(&config.probe, instance.addr, config.probe_timeout)
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
                self.publish(instance.revision);
                let id = instance.id.clone();
                let what = if ready {
                    Happened::Ready { instance: id }
                } else {
                    Happened::NotReady { instance: id }
                };
                self.emit(instance.revision, what);
            }
            delay = if ready {
                config.probe_interval
            } else if started.elapsed() < QUICK_PROBING {
                QUICK_PROBE_INTERVAL.min(config.probe_interval)
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
    ///
    /// The drain may take the whole grace period; SIGTERM then still gets [`TERM_AT_LEAST`].
    async fn stop_instance(&self, instance: Arc<Instance>) {
        // A ready instance had requests routed to it (a reconcile may already have marked it
        // stopping, so `serving` would say no).
        let was_routed = instance.ready.load(Ordering::SeqCst);
        instance.stopping.store(true, Ordering::SeqCst);
        self.publish(instance.revision);
        self.emit(
            instance.revision,
            Happened::Draining {
                instance: instance.id.clone(),
            },
        );
        let grace = self
            .state
            .lock()
            .unwrap()
            .revisions
            .get(&instance.revision)
            .map(|r| r.config.supervision().grace)
            .unwrap_or(Duration::from_secs(30));
        let started = Instant::now();
        if was_routed {
            self.backends.drain(&instance.id, grace).await;
        }
        let mut exited = instance.exited.subscribe();
        if *exited.borrow() {
            return;
        }
        self.signal(&instance, Signal::SIGTERM).await;
        // A drain can use up the grace period (a WebSocket never ends by itself); the app
        // still gets a moment to exit on SIGTERM.
        let remaining = grace.saturating_sub(started.elapsed()).max(TERM_AT_LEAST.min(grace));
        if tokio::time::timeout(remaining, exited.wait_for(|e| *e)).await.is_err() {
            tracing::warn!(app = %self.app, instance = %instance.id, "did not stop within its grace period; killing it");
            self.signal(&instance, Signal::SIGKILL).await;
            let _ = exited.wait_for(|e| *e).await;
        }
    }

    /// Signals an instance: its process group, or its container's main process. A container
    /// still being created is stopped as soon as it exists.
    async fn signal(&self, instance: &Instance, signal: Signal) {
        let handle = instance.handle.lock().unwrap().clone();
        match handle {
            Some(Handle::Process(pid)) => process::signal_group(pid, signal),
            Some(Handle::Container(id)) => self.containers.kill(&id, signal.as_str()).await,
            None => {}
        }
    }

    async fn check(
        &self,
        revision: u32,
        check: &ProbeCheck,
        timeout: Duration,
        serving_only: bool,
    ) -> Result<(u32, Vec<String>), DriverError> {
        let instances: Vec<Arc<Instance>> = {
            let state = self.state.lock().unwrap();
            let rev = state
                .revisions
                .get(&revision)
                .ok_or(DriverError::UnknownRevision(revision))?;
            rev.instances
                .iter()
                .filter(|i| if serving_only { i.serving() } else { i.live() })
                .cloned()
                .collect()
        };
        let results =
            futures_util::future::join_all(instances.iter().map(|i| probe_once(check, i.addr, timeout))).await;
        let failures = instances
            .iter()
            .zip(&results)
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{}: {e}", i.id)))
            .collect();
        Ok((instances.len() as u32, failures))
    }
}

fn backoff(crashes: u32) -> Duration {
    RESTART_BACKOFF
        .saturating_mul(1 << crashes.saturating_sub(1).min(6))
        .min(MAX_RESTART_BACKOFF)
}

fn counts_of(state: &DriverState) -> BTreeMap<u32, Counts> {
    state.revisions.iter().map(|(number, r)| (*number, counts(r))).collect()
}

fn counts(r: &RevisionInstances) -> Counts {
    Counts {
        desired: r.desired,
        current: r.instances.len() as u32,
        ready: r.instances.iter().filter(|i| i.serving()).count() as u32,
        failed: r.failed,
    }
}

/// A port nobody listens on right now, for the next instance.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[async_trait]
impl Compute for InstanceDriver {
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        let from = {
            let mut state = self.state.lock().unwrap();
            let rev = state
                .revisions
                .get_mut(&revision)
                .ok_or(DriverError::UnknownRevision(revision))?;
            std::mem::replace(&mut rev.desired, replicas)
        };
        self.emit(revision, Happened::Scaled { from, to: replicas });
        self.reconcile(revision);
        Ok(())
    }

    fn counts(&self, revision: u32) -> Result<Counts, DriverError> {
        let state = self.state.lock().unwrap();
        let rev = state
            .revisions
            .get(&revision)
            .ok_or(DriverError::UnknownRevision(revision))?;
        Ok(counts(rev))
    }

    fn revisions(&self) -> BTreeMap<u32, Counts> {
        counts_of(&self.state.lock().unwrap())
    }

    fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), changes.wait_for(|g| *g > seen)).await;
        self.generation()
    }

    async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError> {
        let config = self.config(revision).ok_or(DriverError::UnknownRevision(revision))?;
        let supervision = config.supervision();
        let (probed, failures) = self
            .check(revision, &supervision.probe, supervision.probe_timeout, false)
            .await?;
        Ok(ProbeResult {
            probed,
            ready: probed - failures.len() as u32,
            failures,
        })
    }

    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<HttpResult, DriverError> {
        let check = ProbeCheck::Http {
            path: path.to_string(),
            status,
        };
        let (checked, failures) = self.check(revision, &check, timeout, true).await?;
        Ok(HttpResult {
            checked,
            passed: checked - failures.len() as u32,
            failures,
        })
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }
}
