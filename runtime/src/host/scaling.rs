//! `slipway:deploy/scaling`: instance counts per revision.

use std::future::Future;
use std::sync::Arc;

use crate::bindings::strategy::slipway::deploy::scaling::Host;
use crate::bindings::{ApiError, ReplicaCounts};
use crate::driver::{Counts, DriverError, wait_until};
use crate::events::EventKind;
use crate::failure::Stop;
use crate::guest::GuestState;
use crate::host::RolloutEnv;

impl Host for GuestState {
    async fn scale(&mut self, revision: u32, replicas: u32) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let limit = self.limits.max_replicas;
        if replicas > limit {
            return Ok(Err(self.invalid(format!(
                "scale: {replicas} replicas for revision {revision} is over the limit of {limit}"
            ))));
        }
        let result = self.env.cluster.scale(revision, replicas).await;
        Ok(result.map_err(|e| self.driver_error(e)))
    }

    async fn counts(&mut self, revision: u32) -> wasmtime::Result<Result<ReplicaCounts, ApiError>> {
        self.enter()?;
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let result = self.env.cluster.counts(revision);
        Ok(result.map(ReplicaCounts::from).map_err(|e| self.driver_error(e)))
    }

    async fn wait_ready(
        &mut self,
        revision: u32,
        ready: u32,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<ReplicaCounts, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let limit = self.limits.max_replicas;
        if ready > limit {
            return Ok(Err(self.invalid(format!(
                "wait-ready: {ready} replicas for revision {revision} is over the limit of {limit}"
            ))));
        }
        let result = self
            .bounded_wait(
                timeout_ms,
                |env, timeout| async move { env.cluster.wait_ready(revision, ready, timeout).await },
                |counts, timed_out| EventKind::Waited {
                    revision,
                    wanted: ready,
                    ready: counts.map_or(0, |c| c.ready),
                    timed_out,
                },
            )
            .await;
        Ok(result)
    }

    async fn wait_stopped(
        &mut self,
        revision: u32,
        current: u32,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<ReplicaCounts, ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        let result = self
            .bounded_wait(
                timeout_ms,
                |env, timeout| async move {
                    let what = format!("stopping down to {current} instances");
                    wait_until(&env.cluster, revision, timeout, &what, |c| c.current <= current).await
                },
                |counts, timed_out| EventKind::WaitedStopped {
                    revision,
                    at_most: current,
                    current: counts.map_or(0, |c| c.current),
                    timed_out,
                },
            )
            .await;
        Ok(result)
    }
}

impl GuestState {
    /// Runs a host-side wait for at most `timeout_ms`, cut short by the rollout's deadline
    /// (then `aborted`, as the deadline) or an abort; records `event` of the counts it ended
    /// with and whether it timed out.
    async fn bounded_wait<F>(
        &mut self,
        timeout_ms: u64,
        wait: impl FnOnce(Arc<RolloutEnv>, u64) -> F,
        event: impl FnOnce(Option<Counts>, bool) -> EventKind,
    ) -> Result<ReplicaCounts, ApiError>
    where
        F: Future<Output = Result<Counts, DriverError>>,
    {
        let remaining = self.env.remaining_ms();
        let clamped = timeout_ms > remaining;
        let env = self.env.clone();
        let result = match env.unless_aborted(wait(env.clone(), timeout_ms.min(remaining))).await {
            Ok(result) => result,
            Err(_) => return Err(self.stop(Stop::Aborted)),
        };
        self.env.record(match &result {
            Ok(counts) => event(Some(*counts), false),
            Err(DriverError::Timeout { counts, .. }) => event(Some(*counts), true),
            Err(_) => event(None, true),
        });
        match result {
            Err(DriverError::Timeout { .. }) if clamped => Err(self.stop(Stop::Deadline)),
            other => other.map(ReplicaCounts::from).map_err(|e| self.driver_error(e)),
        }
    }
}
