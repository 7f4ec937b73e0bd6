//! A simulated cluster in virtual time: the test backbone for strategies and the engine
//! behind `slipway simulate`.
//!
//! Time only moves when a strategy waits (`sleep`, `wait-ready`), jumping straight to the
//! next thing that happens, so a ten-minute rollout replays in milliseconds. Every random
//! choice comes from one seeded generator, so the same inputs and seed give the same trace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::bindings::{HookPoint, HookStatus};
use crate::driver::{
    Clock, Cluster, Compute, Counts, DriverError, DriverEvent, Happened, HttpResult, ProbeResult, Router, TrafficStats,
};
use crate::events::RevisionSnapshot;
use crate::hooks::{HookRunner, WasmHooks};
use crate::host::RolloutEnv;

/// Where virtual time starts: a fixed instant, so traces do not depend on the machine's clock.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Knobs for the simulated instances of the revisions marked faulty (the rollout's target).
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Mean time from start to ready.
    pub start_delay_ms: u64,
    /// Spread of the start delay, as a fraction of it (0.25 → ±25%).
    pub start_jitter: f64,
    /// Fraction of new instances that start but never pass their readiness probe.
    pub fail_readiness: f64,
    /// Fraction of new instances that crash while starting (they are restarted).
    pub crash: f64,
    /// Time before a crashed instance is replaced.
    pub restart_backoff_ms: u64,
    /// Fraction of ready instances that fail an HTTP check.
    pub fail_http: f64,
    /// Requests per second reaching the app's route (0: no traffic is modelled).
    pub traffic_rps: f64,
    /// Each revision's share of answers that are 5xx (default 0).
    pub error_rates: BTreeMap<u32, f64>,
    /// Each revision's median latency (default [`DEFAULT_SIM_LATENCY`]).
    pub latencies: BTreeMap<u32, Duration>,
}

/// The median latency of a simulated revision unless told otherwise.
pub const DEFAULT_SIM_LATENCY: Duration = Duration::from_millis(10);

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            start_delay_ms: 2_000,
            start_jitter: 0.25,
            fail_readiness: 0.0,
            crash: 0.0,
            restart_backoff_ms: 1_000,
            fail_http: 0.0,
            traffic_rps: 0.0,
            error_rates: BTreeMap::new(),
            latencies: BTreeMap::new(),
        }
    }
}

/// The simulated compute, router and clock of one app.
pub struct SimCluster {
    state: Mutex<SimState>,
    events: broadcast::Sender<DriverEvent>,
}

struct SimState {
    config: SimConfig,
    now: u64,
    rng: u64,
    revisions: BTreeMap<u32, SimRevision>,
    weights: BTreeMap<u32, u32>,
    maintenance: bool,
    /// Every route change: from when, each revision's share of the traffic (none in
    /// maintenance), for the traffic model.
    route_history: Vec<(u64, BTreeMap<u32, f64>)>,
    /// Moves on with every event (see [`Cluster::generation`]).
    generation: u64,
}

#[derive(Default)]
struct SimRevision {
    faulty: bool,
    desired: u32,
    instances: Vec<SimInstance>,
    /// Replacements for crashed instances, due at these times.
    restarts: Vec<u64>,
    failed: u32,
    started: u32,
}

struct SimInstance {
    id: String,
    created: u64,
    ready_at: Option<u64>,
    crash_at: Option<u64>,
    http_ok: bool,
}

impl SimInstance {
    fn ready(&self, now: u64) -> bool {
        self.ready_at.is_some_and(|t| t <= now)
    }
}

impl SimCluster {
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed ^ 0x5eed_5eed_5eed_5eed;
        SimCluster {
            state: Mutex::new(SimState {
                config,
                now: SIM_EPOCH_MS,
                rng,
                revisions: BTreeMap::new(),
                weights: BTreeMap::new(),
                maintenance: false,
                route_history: Vec::new(),
                generation: 0,
            }),
            events: broadcast::channel(1 << 16).0,
        }
    }

    /// This simulation as the host API's cluster.
    pub fn cluster(self: &Arc<Self>) -> Cluster {
        Cluster::new(self.clone(), self.clone(), self.clone())
    }

    /// Adds a revision with `ready` instances already up and passing their probes.
    pub fn add_ready_revision(&self, revision: u32, ready: u32, weight: u32) {
        let mut state = self.state.lock().unwrap();
        let now = state.now;
        let entry = state.revisions.entry(revision).or_default();
        for _ in 0..ready {
            entry.started += 1;
            let id = format!("r{revision}-{}", entry.started);
            entry.instances.push(SimInstance {
                id,
                created: now,
                ready_at: Some(now),
                crash_at: None,
                http_ok: true,
            });
        }
        entry.desired = ready;
        if weight > 0 {
            state.weights.insert(revision, weight);
        }
        state.note_route();
    }

    /// Adds a revision with no instances whose instances the failure knobs apply to.
    pub fn add_faulty_revision(&self, revision: u32) {
        self.state.lock().unwrap().revisions.entry(revision).or_default().faulty = true;
    }

    /// The state of every revision now.
    pub fn snapshot(&self) -> BTreeMap<u32, RevisionSnapshot> {
        crate::driver::snapshot(&self.revisions(), &self.weights())
    }

    fn emit(&self, state: &mut SimState, revision: u32, what: Happened) {
        state.generation += 1;
        let counts = state.revisions.keys().map(|r| (*r, state.counts(*r))).collect();
        // Nobody listening is fine.
        let _ = self.events.send(DriverEvent {
            at_ms: state.now,
            generation: state.generation,
            revision,
            what,
            counts,
        });
    }

    /// Moves virtual time to `until`, applying every readiness change, crash and restart in
    /// order.
    fn advance(&self, state: &mut SimState, until: u64) {
        while let Some(at) = state.next_change().filter(|&t| t <= until) {
            state.now = at;
            self.apply_changes(state);
        }
        state.now = state.now.max(until);
    }

    fn apply_changes(&self, state: &mut SimState) {
        let now = state.now;
        let numbers: Vec<u32> = state.revisions.keys().copied().collect();
        for number in numbers {
            let backoff = state.config.restart_backoff_ms;
            let revision = state.revisions.get_mut(&number).unwrap();
            let mut events = Vec::new();
            revision.instances.retain(|instance| {
                if instance.crash_at == Some(now) {
                    events.push(Happened::Crashed {
                        instance: instance.id.clone(),
                        status: "exit status: 1".into(),
                        restart_in_ms: backoff,
                        last_output: Vec::new(),
                    });
                    false
                } else {
                    if instance.ready_at == Some(now) {
                        events.push(Happened::Ready {
                            instance: instance.id.clone(),
                        });
                    }
                    true
                }
            });
            let crashed = events.iter().filter(|e| matches!(e, Happened::Crashed { .. })).count();
            revision.failed += crashed as u32;
            revision.restarts.extend(std::iter::repeat_n(now + backoff, crashed));
            let due = revision.restarts.iter().filter(|&&t| t == now).count();
            revision.restarts.retain(|&t| t != now);
            for event in events {
                self.emit(&mut *state, number, event);
            }
            for _ in 0..due {
                let id = state.start_instance(number);
                self.emit(&mut *state, number, Happened::Started { instance: id });
            }
        }
    }

    fn revision_error(state: &SimState, revision: u32) -> Result<(), DriverError> {
        if state.revisions.contains_key(&revision) {
            Ok(())
        } else {
            Err(DriverError::UnknownRevision(revision))
        }
    }
}

impl SimState {
    /// Records the route now in force, for the traffic model.
    fn note_route(&mut self) {
        let total: u32 = self.weights.values().sum();
        let shares = if self.maintenance || total == 0 {
            BTreeMap::new()
        } else {
            self.weights
                .iter()
                .map(|(r, w)| (*r, f64::from(*w) / f64::from(total)))
                .collect()
        };
        let now = self.now;
        self.route_history.retain(|(since, _)| *since < now);
        self.route_history.push((now, shares));
    }

    fn random(&mut self) -> f64 {
        (splitmix64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_change(&self) -> Option<u64> {
        let now = self.now;
        self.revisions
            .values()
            .flat_map(|r| {
                let instance_times = r.instances.iter().flat_map(|i| [i.ready_at, i.crash_at]).flatten();
                instance_times.chain(r.restarts.iter().copied())
            })
            .filter(|&t| t > now)
            .min()
    }

    /// Starts one instance of `number`, drawing its fate from the generator.
    fn start_instance(&mut self, number: u32) -> String {
        let now = self.now;
        let config = self.config.clone();
        let faulty = self.revisions[&number].faulty;
        let jitter = 1.0 + config.start_jitter * (2.0 * self.random() - 1.0);
        let delay = ((config.start_delay_ms as f64) * jitter).round().max(1.0) as u64;
        let (never_ready, crashes, http_ok) = if faulty {
            (
                self.random() < config.fail_readiness,
                self.random() < config.crash,
                self.random() >= config.fail_http,
            )
        } else {
            (false, false, true)
        };
        let (ready_at, crash_at) = match (crashes, never_ready) {
            (true, _) => (None, Some(now + delay / 2 + 1)),
            (false, true) => (None, None),
            (false, false) => (Some(now + delay), None),
        };
        let revision = self.revisions.get_mut(&number).unwrap();
        revision.started += 1;
        let id = format!("r{number}-{}", revision.started);
        revision.instances.push(SimInstance {
            id: id.clone(),
            created: now,
            ready_at,
            crash_at,
            http_ok,
        });
        id
    }

    fn counts(&self, number: u32) -> Counts {
        let revision = &self.revisions[&number];
        Counts {
            desired: revision.desired,
            current: revision.instances.len() as u32,
            ready: revision.instances.iter().filter(|i| i.ready(self.now)).count() as u32,
            failed: revision.failed,
        }
    }
}

#[async_trait]
impl Clock for SimCluster {
    fn now_ms(&self) -> u64 {
        self.state.lock().unwrap().now
    }

    async fn sleep_ms(&self, ms: u64) {
        let mut state = self.state.lock().unwrap();
        let until = state.now.saturating_add(ms);
        self.advance(&mut state, until);
    }
}

#[async_trait]
impl Compute for SimCluster {
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        let mut state = self.state.lock().unwrap();
        Self::revision_error(&state, revision)?;
        let from = std::mem::replace(&mut state.revisions.get_mut(&revision).unwrap().desired, replicas);
        self.emit(&mut state, revision, Happened::Scaled { from, to: replicas });
        let current = state.revisions[&revision].instances.len() as u32;
        let pending = state.revisions[&revision].restarts.len() as u32;
        if replicas > current + pending {
            for _ in 0..(replicas - current - pending) {
                let id = state.start_instance(revision);
                self.emit(&mut state, revision, Happened::Started { instance: id });
            }
        } else {
            let now = state.now;
            let entry = state.revisions.get_mut(&revision).unwrap();
            // Pending restarts go first, then instances that are not ready (newest first),
            // then ready ones: scaling down never removes a ready instance while an unready
            // one could go instead.
            let mut excess = (current + pending) - replicas;
            let cancelled = excess.min(pending);
            entry.restarts.truncate((pending - cancelled) as usize);
            excess -= cancelled;
            entry
                .instances
                .sort_by_key(|i| (i.ready(now), std::cmp::Reverse(i.created)));
            let stopped: Vec<String> = entry.instances.drain(..excess as usize).map(|i| i.id).collect();
            entry.instances.sort_by_key(|i| i.created);
            for id in stopped {
                self.emit(&mut state, revision, Happened::Stopped { instance: id });
            }
        }
        Ok(())
    }

    fn counts(&self, revision: u32) -> Result<Counts, DriverError> {
        let state = self.state.lock().unwrap();
        Self::revision_error(&state, revision)?;
        Ok(state.counts(revision))
    }

    fn revisions(&self) -> BTreeMap<u32, Counts> {
        let state = self.state.lock().unwrap();
        state.revisions.keys().map(|r| (*r, state.counts(*r))).collect()
    }

    fn generation(&self) -> u64 {
        self.state.lock().unwrap().generation
    }

    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        let mut state = self.state.lock().unwrap();
        if state.generation <= seen {
            let deadline = state.now.saturating_add(timeout_ms);
            let until = state.next_change().filter(|&t| t <= deadline).unwrap_or(deadline);
            self.advance(&mut state, until);
        }
        state.generation
    }

    async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError> {
        let state = self.state.lock().unwrap();
        Self::revision_error(&state, revision)?;
        let now = state.now;
        let instances = &state.revisions[&revision].instances;
        let failures = instances
            .iter()
            .filter(|i| !i.ready(now))
            .map(|i| match i.ready_at {
                Some(_) => format!("{}: starting for {} ms", i.id, now - i.created),
                None => format!("{}: readiness probe failing for {} ms", i.id, now - i.created),
            })
            .collect();
        Ok(ProbeResult {
            probed: instances.len() as u32,
            ready: instances.iter().filter(|i| i.ready(now)).count() as u32,
            failures,
        })
    }

    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        _timeout: Duration,
    ) -> Result<HttpResult, DriverError> {
        let state = self.state.lock().unwrap();
        Self::revision_error(&state, revision)?;
        let now = state.now;
        let ready: Vec<&SimInstance> = state.revisions[&revision]
            .instances
            .iter()
            .filter(|i| i.ready(now))
            .collect();
        let failures: Vec<String> = ready
            .iter()
            .filter(|i| !i.http_ok)
            .map(|i| format!("{}: GET {path} answered 500, expected {status}", i.id))
            .collect();
        Ok(HttpResult {
            checked: ready.len() as u32,
            passed: (ready.len() - failures.len()) as u32,
            failures,
        })
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }
}

#[async_trait]
impl Router for SimCluster {
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        let mut state = self.state.lock().unwrap();
        state.weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        state.note_route();
        Ok(())
    }

    /// Modelled, deterministic for a seed: the route's requests per second split by the
    /// weights in force over the window, each revision's error rate applied to its share,
    /// and a latency distribution around its median (p90 at 1.5×, p99 at 3×).
    async fn traffic(&self, revision: u32, window: Duration) -> Result<TrafficStats, DriverError> {
        let state = self.state.lock().unwrap();
        let window_ms = window.as_millis().min(u128::from(state.now)) as u64;
        let from = state.now - window_ms;
        let mut requests = 0.0;
        for (index, (since, shares)) in state.route_history.iter().enumerate() {
            let until = state.route_history.get(index + 1).map_or(state.now, |(next, _)| *next);
            let (start, end) = ((*since).max(from), until.min(state.now));
            if end > start {
                let share = shares.get(&revision).copied().unwrap_or(0.0);
                requests += state.config.traffic_rps * share * (end - start) as f64 / 1000.0;
            }
        }
        let requests = requests.round() as u64;
        let rate = state.config.error_rates.get(&revision).copied().unwrap_or(0.0);
        let errors = (requests as f64 * rate).round() as u64;
        let median = state
            .config
            .latencies
            .get(&revision)
            .copied()
            .unwrap_or(DEFAULT_SIM_LATENCY);
        let us = |factor: f64| (requests > 0).then_some((median.as_micros() as f64 * factor) as u64);
        Ok(TrafficStats {
            window_ms,
            requests,
            by_class: [0, requests - errors, 0, 0, errors],
            connection_errors: 0,
            p50_us: us(1.0),
            p90_us: us(1.5),
            p99_us: us(3.0),
        })
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
        let mut state = self.state.lock().unwrap();
        state.maintenance = on;
        state.note_route();
        Ok(())
    }

    fn maintenance(&self) -> bool {
        self.state.lock().unwrap().maintenance
    }
}

/// One simulated rollout from revision 1 (ready, all traffic) to revision 2 (the faulty
/// one: `cluster`'s faults apply to it): what `slipway simulate` and `slipway test` run.
#[derive(Clone, Debug)]
pub struct SimRollout {
    pub replicas: u32,
    /// The strategy's parameters, as JSON.
    pub params: String,
    pub cluster: SimConfig,
    /// Hooks that fail whatever they are (policy `abort`), real or not.
    pub failing_hooks: Vec<HookPoint>,
    /// What the real hooks' `exec` and outbound HTTP calls answer.
    pub fakes: crate::fakes::Fakes,
    pub deadline: Duration,
    pub rollback: bool,
    pub soak: Duration,
}

impl SimRollout {
    /// Runs `module` as the strategy, with `hooks` (real hook modules, whose calls out are
    /// answered by [`SimRollout::fakes`]): the report, and every revision as it ended.
    pub async fn run(
        &self,
        module: &crate::modules::LoadedModule,
        hooks: &WasmHooks,
    ) -> (crate::rollout::RolloutReport, BTreeMap<u32, RevisionSnapshot>) {
        use crate::bindings::Revision;
        let sim = Arc::new(SimCluster::new(self.cluster.clone()));
        sim.add_ready_revision(1, self.replicas, 256);
        sim.add_faulty_revision(2);
        let mut real = hooks.clone();
        let fakes = Arc::new(self.fakes.clone());
        for hook in real.hooks.values_mut() {
            hook.grants.fakes = Some(fakes.clone());
        }
        let hooks = Arc::new(SimHooks {
            failing: self.failing_hooks.clone(),
            real,
        });
        let revision = |number| Revision {
            number,
            replicas: self.replicas,
        };
        let mut plan = crate::rollout::RolloutPlan::new("simulated", "sim-1", revision(2), Some(revision(1)));
        plan.params = self.params.clone();
        plan.auto_rollback = self.rollback;
        plan.progress_deadline = self.deadline;
        plan.soak = self.soak;
        plan.seed = self.cluster.seed;
        let timeline = crate::events::Timeline::new(SIM_EPOCH_MS);
        let report = crate::rollout::run(module, &plan, sim.cluster(), hooks, timeline).await;
        (report, sim.snapshot())
    }
}

/// A simulation's hooks: the points told to fail fail (policy `abort`); the others run
/// their real hook module, if one is configured.
#[derive(Debug, Default)]
pub struct SimHooks {
    pub failing: Vec<HookPoint>,
    pub real: WasmHooks,
}

#[async_trait]
impl HookRunner for SimHooks {
    async fn run_hook(&self, point: HookPoint, env: &std::sync::Arc<RolloutEnv>) -> Result<HookStatus, String> {
        if self.failing.contains(&point) {
            Err("simulated hook failure".to_string())
        } else {
            self.real.run_hook(point, env).await
        }
    }
}

/// SplitMix64: small, fast and good enough for simulation choices and guest seeds.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(config: SimConfig) -> Cluster {
        let sim = Arc::new(SimCluster::new(config));
        sim.add_ready_revision(1, 3, 256);
        sim.add_faulty_revision(2);
        sim.cluster()
    }

    #[tokio::test]
    async fn traffic_follows_the_weights_in_force_and_each_revisions_error_rate() {
        let sim = cluster(SimConfig {
            traffic_rps: 100.0,
            error_rates: BTreeMap::from([(2, 0.1)]),
            latencies: BTreeMap::from([(2, Duration::from_millis(80))]),
            ..SimConfig::default()
        });
        sim.sleep_ms(10_000).await;
        sim.set_weights(&[(1, 192), (2, 64)]).await.unwrap();
        sim.sleep_ms(10_000).await;
        let window = Duration::from_secs(10);
        let two = sim.traffic(2, window).await.unwrap();
        assert_eq!((two.requests, two.by_class[4], two.window_ms), (250, 25, 10_000));
        assert_eq!((two.p50_us, two.p99_us), (Some(80_000), Some(240_000)));
        let one = sim.traffic(1, Duration::from_secs(20)).await.unwrap();
        assert_eq!((one.requests, one.by_class[4]), (1000 + 750, 0));
        assert_eq!(one.p50_us, Some(DEFAULT_SIM_LATENCY.as_micros() as u64));
        sim.set_maintenance(true).await.unwrap();
        sim.sleep_ms(10_000).await;
        assert_eq!(sim.traffic(2, window).await.unwrap().requests, 0);
    }

    #[tokio::test]
    async fn instances_become_ready_after_their_start_delay() {
        let sim = cluster(SimConfig {
            start_jitter: 0.0,
            ..SimConfig::default()
        });
        sim.scale(2, 2).await.unwrap();
        assert_eq!(sim.counts(2).unwrap().ready, 0);
        let counts = sim.wait_ready(2, 2, 10_000).await.unwrap();
        assert_eq!(counts.ready, 2);
        assert_eq!(sim.now_ms() - SIM_EPOCH_MS, 2_000);
    }

    #[tokio::test]
    async fn never_ready_instances_time_out_in_virtual_time() {
        let sim = cluster(SimConfig {
            fail_readiness: 1.0,
            ..SimConfig::default()
        });
        sim.scale(2, 1).await.unwrap();
        let err = sim.wait_ready(2, 1, 600_000).await.unwrap_err();
        assert!(matches!(err, DriverError::Timeout { .. }));
        assert_eq!(sim.now_ms() - SIM_EPOCH_MS, 600_000);
    }

    #[tokio::test]
    async fn crashed_instances_are_restarted() {
        let sim = cluster(SimConfig {
            crash: 1.0,
            start_jitter: 0.0,
            ..SimConfig::default()
        });
        sim.scale(2, 1).await.unwrap();
        sim.sleep_ms(1_500).await;
        let counts = sim.counts(2).unwrap();
        assert_eq!(counts.failed, 1);
        assert_eq!(counts.current, 0);
        sim.sleep_ms(1_000).await;
        assert_eq!(
            sim.counts(2).unwrap().current,
            1,
            "the replacement started after the backoff"
        );
    }

    #[tokio::test]
    async fn scaling_down_removes_unready_instances_first() {
        let sim = cluster(SimConfig::default());
        sim.scale(1, 5).await.unwrap();
        sim.scale(1, 3).await.unwrap();
        assert_eq!(
            sim.counts(1).unwrap(),
            Counts {
                desired: 3,
                current: 3,
                ready: 3,
                failed: 0
            }
        );
    }

    #[tokio::test]
    async fn same_seed_same_story() {
        let run = |seed| async move {
            let sim = Arc::new(SimCluster::new(SimConfig {
                seed,
                fail_readiness: 0.3,
                crash: 0.2,
                ..SimConfig::default()
            }));
            sim.add_faulty_revision(2);
            let mut events = sim.events();
            let cluster = sim.cluster();
            cluster.scale(2, 8).await.unwrap();
            let _ = cluster.wait_ready(2, 8, 30_000).await;
            let mut story = Vec::new();
            while let Ok(event) = events.try_recv() {
                story.push(event);
            }
            serde_json::to_string(&story).unwrap()
        };
        assert_eq!(run(7).await, run(7).await);
        assert_ne!(run(7).await, run(8).await);
    }
}
