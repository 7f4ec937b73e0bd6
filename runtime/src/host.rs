//! The host side of the WIT interfaces: one file per interface under `host/`, all working
//! against the [`RolloutEnv`] of the rollout the guest belongs to.
//!
//! **Invariant:** host functions never panic on guest input. Bad arguments come back to the
//! guest as `error::invalid`; budget overruns trap the guest with a [`GuestLimit`].

mod clock;
mod hook_env;
mod lifecycle;
mod logging;
mod metrics;
mod outbound_http;
mod routing;
mod scaling;
mod traffic;
mod types;
mod v0_1;
mod verification;
mod wasi_clock;

pub(crate) use v0_1::Translate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::bindings::{ApiError, Revision, TimedOut};
use crate::driver::{Cluster, DriverError};
use crate::events::{EventKind, Timeline};
use crate::failure::{GuestLimit, Stop};
use crate::guest::GuestState;
use crate::hooks::{Grants, HookRunner};

/// What the host functions of one rollout act on.
pub struct RolloutEnv {
    pub app: String,
    pub rollout: String,
    pub cluster: Cluster,
    pub hooks: Arc<dyn HookRunner>,
    pub timeline: Timeline,
    /// Revisions the guest may name: the target, the active one and the others.
    pub revisions: Vec<u32>,
    /// The cluster-clock time the rollout started.
    pub started_at_ms: u64,
    /// The cluster-clock time of the progress deadline.
    pub deadline_ms: u64,
    /// Seeds the guest's WASI randomness.
    pub seed: u64,
    /// The revision being deployed and the one serving before.
    pub target: Revision,
    pub active: Option<Revision>,
    /// What a hook running in this environment may do beyond the common interfaces.
    pub grants: Grants,
    /// Pause, resume and abort from operators.
    pub control: Arc<RolloutControl>,
}

/// How operators steer a running rollout: a paused rollout holds at its next host call; an
/// aborted one gets `aborted` from every host call and is rolled back by the host.
#[derive(Debug)]
pub struct RolloutControl {
    paused: watch::Sender<bool>,
    aborted: watch::Sender<bool>,
    /// Time spent paused does not count against the progress deadline.
    paused_ms: AtomicU64,
    pause_started: AtomicU64,
    was_aborted: AtomicBool,
}

impl Default for RolloutControl {
    fn default() -> Self {
        RolloutControl {
            paused: watch::channel(false).0,
            aborted: watch::channel(false).0,
            paused_ms: AtomicU64::new(0),
            pause_started: AtomicU64::new(0),
            was_aborted: AtomicBool::new(false),
        }
    }
}

impl RolloutControl {
    /// Holds the rollout at its next host call. Returns false if it was already paused.
    pub fn pause(&self, now_ms: u64) -> bool {
        let changed = self.paused.send_if_modified(|p| !std::mem::replace(p, true));
        if changed {
            self.pause_started.store(now_ms, Ordering::SeqCst);
        }
        changed
    }

    /// Lets a paused rollout go on. Returns false if it was not paused.
    pub fn resume(&self, now_ms: u64) -> bool {
        let changed = self.paused.send_if_modified(|p| std::mem::replace(p, false));
        if changed {
            let started = self.pause_started.load(Ordering::SeqCst);
            self.paused_ms
                .fetch_add(now_ms.saturating_sub(started), Ordering::SeqCst);
        }
        changed
    }

    pub fn abort(&self) {
        self.was_aborted.store(true, Ordering::SeqCst);
        self.aborted.send_replace(true);
        self.paused.send_replace(false);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn is_aborted(&self) -> bool {
        self.was_aborted.load(Ordering::SeqCst)
    }

    /// Resolves when the rollout is aborted.
    pub async fn aborted(&self) {
        let mut receiver = self.aborted.subscribe();
        let _ = receiver.wait_for(|a| *a).await;
    }

    async fn hold_while_paused(&self) {
        let mut receiver = self.paused.subscribe();
        let _ = receiver.wait_for(|p| !*p).await;
    }
}

impl RolloutEnv {
    /// An environment that belongs to no rollout, for a module's parameter check: an empty
    /// simulated cluster behind it, which the guest cannot reach (every host call traps).
    pub(crate) fn detached(module: &str) -> RolloutEnv {
        let cluster = Arc::new(crate::sim::SimCluster::new(crate::sim::SimConfig::default())).cluster();
        let now = cluster.now_ms();
        RolloutEnv {
            app: String::new(),
            rollout: format!("params-check of {module}"),
            cluster,
            hooks: Arc::new(crate::hooks::NoHooks),
            timeline: Timeline::default(),
            revisions: Vec::new(),
            started_at_ms: now,
            deadline_ms: now,
            seed: 0,
            target: Revision { number: 0, replicas: 0 },
            active: None,
            grants: Grants::default(),
            control: Arc::new(RolloutControl::default()),
        }
    }

    /// The same rollout, seen by a hook with `grants`.
    pub(crate) fn for_hook(&self, grants: Grants) -> RolloutEnv {
        RolloutEnv {
            app: self.app.clone(),
            rollout: self.rollout.clone(),
            cluster: self.cluster.clone(),
            hooks: self.hooks.clone(),
            timeline: self.timeline.clone(),
            revisions: self.revisions.clone(),
            started_at_ms: self.started_at_ms,
            deadline_ms: self.deadline_ms,
            seed: self.seed.rotate_left(7),
            target: self.target,
            active: self.active,
            grants,
            control: self.control.clone(),
        }
    }

    /// The cluster-clock time of the progress deadline, moved out by time spent paused.
    pub(crate) fn deadline_ms(&self) -> u64 {
        self.deadline_ms + self.control.paused_ms.load(Ordering::SeqCst)
    }

    /// Runs `work` unless the rollout is aborted first.
    pub(crate) async fn unless_aborted<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
        tokio::select! {
            result = work => Ok(result),
            () = self.control.aborted() => Err(aborted_error()),
        }
    }

    pub(crate) fn record(&self, kind: EventKind) {
        self.timeline.push(self.cluster.now_ms(), kind, None);
    }

    /// Records `kind` with every revision's instances and weight right after it.
    pub(crate) fn record_with_state(&self, kind: EventKind) {
        self.timeline
            .push(self.cluster.now_ms(), kind, Some(self.cluster.snapshot()));
    }

    /// Replaces the route's weights and records the change.
    pub(crate) async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        self.cluster.set_weights(weights).await?;
        let weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        self.record_with_state(EventKind::WeightsChanged { weights });
        Ok(())
    }

    /// Turns maintenance on or off and records the change.
    pub(crate) async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        self.cluster.set_maintenance(on).await?;
        self.record_with_state(EventKind::Maintenance { on });
        Ok(())
    }

    /// The time left before the progress deadline.
    pub(crate) fn remaining_ms(&self) -> u64 {
        self.deadline_ms().saturating_sub(self.cluster.now_ms())
    }

    pub(crate) fn deadline_error(&self) -> ApiError {
        let secs = (self.deadline_ms - self.started_at_ms) / 1000;
        ApiError::Aborted(format!("the rollout's progress deadline of {secs} s passed"))
    }
}

/// What every host call answers once an operator aborted the rollout.
pub fn aborted_error() -> ApiError {
    ApiError::Aborted("the rollout was aborted by an operator".to_string())
}

/// Calls a guest may still make after it was told to stop, to log why or read state on its
/// way out, before the host stops it. Actions (scale, sleep, …) are not among them.
const CALLS_AFTER_STOP: u64 = 1_000;

impl GuestState {
    /// Counts a host call against the budget; traps the guest when the budget is spent, or
    /// when it was told to stop and keeps calling.
    pub(crate) fn enter(&mut self) -> wasmtime::Result<()> {
        if self.budget.detached {
            return Err(wasmtime::Error::new(GuestLimit::Detached));
        }
        self.budget.host_calls += 1;
        if let Some(stop) = self.budget.stopped {
            self.budget.calls_after_stop += 1;
            if self.budget.calls_after_stop > CALLS_AFTER_STOP {
                return Err(wasmtime::Error::new(GuestLimit::KeptGoing(stop)));
            }
        }
        if self.budget.host_calls > self.limits.host_calls {
            return Err(wasmtime::Error::new(GuestLimit::HostCalls(self.limits.host_calls)));
        }
        Ok(())
    }

    /// Enters a call that acts on the rollout: holds while the rollout is paused, and
    /// refuses the call once it is aborted or its deadline passed. A guest that was already
    /// told so and acts again is stopped: it is not returning.
    pub(crate) async fn enter_action(&mut self) -> wasmtime::Result<Result<(), ApiError>> {
        self.enter()?;
        if let Some(stop) = self.budget.stopped {
            return Err(wasmtime::Error::new(GuestLimit::KeptGoing(stop)));
        }
        if self.env.control.is_paused() {
            let control = self.env.control.clone();
            tokio::select! {
                () = control.hold_while_paused() => {}
                () = control.aborted() => {}
            }
        }
        if self.env.control.is_aborted() {
            return Ok(Err(self.stop(Stop::Aborted)));
        }
        if self.env.remaining_ms() == 0 {
            return Ok(Err(self.stop(Stop::Deadline)));
        }
        Ok(Ok(()))
    }

    /// Tells the guest to stop, and remembers that it was told.
    pub(crate) fn stop(&mut self, stop: Stop) -> ApiError {
        self.budget.stopped.get_or_insert(stop);
        match stop {
            Stop::Deadline => self.env.deadline_error(),
            Stop::Aborted => aborted_error(),
        }
    }

    /// Checks that `revision` belongs to this rollout.
    pub(crate) fn known(&self, revision: u32) -> Result<(), ApiError> {
        if self.env.revisions.contains(&revision) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "revision {revision} is not part of this rollout (it involves revisions {:?})",
                self.env.revisions
            )))
        }
    }

    /// Rejects a call as invalid, remembering it so a failure that follows is classified.
    pub(crate) fn invalid(&mut self, message: String) -> ApiError {
        self.budget.last_invalid = Some(message.clone());
        ApiError::Invalid(message)
    }

    /// Maps a driver error to the guest's error type.
    pub(crate) fn driver_error(&mut self, error: DriverError) -> ApiError {
        match error {
            DriverError::UnknownRevision(revision) => {
                ApiError::NotFound(format!("revision {revision} is not part of this rollout"))
            }
            DriverError::Invalid(message) => self.invalid(message),
            DriverError::Timeout { message, counts } => ApiError::Timeout(TimedOut {
                message,
                counts: Some(counts.into()),
            }),
            error @ DriverError::Infrastructure { .. } => ApiError::Infrastructure(error.to_string()),
        }
    }
}
