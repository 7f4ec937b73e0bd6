//! `slipway:deploy/scaling`: instance counts per revision.

use crate::bindings::strategy::slipway::deploy::scaling::Host;
use crate::bindings::{ApiError, ReplicaCounts};
use crate::driver::{DriverError, wait_until};
use crate::events::EventKind;
use crate::failure::Stop;
use crate::guest::GuestState;
use crate::spec::MAX_REPLICAS;

impl Host for GuestState {
    async fn scale(&mut self, revision: u32, replicas: u32) -> wasmtime::Result<Result<(), ApiError>> {
        if let Err(error) = self.enter_action().await? {
            return Ok(Err(error));
        }
        if let Err(error) = self.known(revision) {
            return Ok(Err(error));
        }
        if replicas > MAX_REPLICAS {
            return Ok(Err(self.invalid(format!(
                "scale: {replicas} replicas for revision {revision} is over the limit of {MAX_REPLICAS}"
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
        Ok(result.map_err(|e| self.driver_error(e)))
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
        if ready > MAX_REPLICAS {
            return Ok(Err(self.invalid(format!(
                "wait-ready: {ready} replicas for revision {revision} is over the limit of {MAX_REPLICAS}"
            ))));
        }
        let remaining = self.env.remaining_ms();
        let clamped = timeout_ms > remaining;
        let env = self.env.clone();
        let result = match env
            .unless_aborted(env.cluster.wait_ready(revision, ready, timeout_ms.min(remaining)))
            .await
        {
            Ok(result) => result,
            Err(_) => return Ok(Err(self.stop(Stop::Aborted))),
        };
        let (observed, timed_out) = match &result {
            Ok(counts) => (counts.ready, false),
            Err(DriverError::Timeout { counts, .. }) => (counts.ready, true),
            Err(_) => (0, true),
        };
        self.env.record(EventKind::Waited {
            revision,
            wanted: ready,
            ready: observed,
            timed_out,
        });
        Ok(match result {
            Err(DriverError::Timeout { .. }) if clamped => Err(self.stop(Stop::Deadline)),
            other => other.map_err(|e| self.driver_error(e)),
        })
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
        let remaining = self.env.remaining_ms();
        let clamped = timeout_ms > remaining;
        let env = self.env.clone();
        let what = format!("stopping down to {current} instances");
        let wait = wait_until(env.cluster.as_ref(), revision, timeout_ms.min(remaining), &what, |c| {
            c.current <= current
        });
        let result = match env.unless_aborted(wait).await {
            Ok(result) => result,
            Err(_) => return Ok(Err(self.stop(Stop::Aborted))),
        };
        let (left, timed_out) = match &result {
            Ok(counts) => (counts.current, false),
            Err(DriverError::Timeout { counts, .. }) => (counts.current, true),
            Err(_) => (0, true),
        };
        self.env.record(EventKind::WaitedStopped {
            revision,
            at_most: current,
            current: left,
            timed_out,
        });
        Ok(match result {
            Err(DriverError::Timeout { .. }) if clamped => Err(self.stop(Stop::Deadline)),
            other => other.map_err(|e| self.driver_error(e)),
        })
    }
}
