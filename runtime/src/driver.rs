//! What the host API drives: the compute and routing of one app, behind one trait.
//!
//! The simulator ([`crate::sim`]) implements it in virtual time; the process driver and the
//! built-in router implement it for real. Strategies cannot tell the difference, which is the
//! point: a strategy tried under `slipway simulate` behaves the same in production.

pub mod compute;
pub mod router;

use async_trait::async_trait;

use crate::bindings::{HttpCheckReport, ProbeReport, ReplicaCounts};
use crate::spec::duration;

/// At most this many revisions may carry traffic at once (as in OpenShift routes).
pub const MAX_ROUTED_REVISIONS: usize = 4;

/// The highest route weight.
pub const MAX_WEIGHT: u32 = 256;

/// Why a driver call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    /// The revision is not part of this rollout.
    #[error("revision {0} is not part of this rollout")]
    UnknownRevision(u32),
    /// An argument made no sense.
    #[error("{0}")]
    Invalid(String),
    /// A wait ended before its condition held; carries what was observed.
    #[error("{message}")]
    Timeout { message: String, counts: ReplicaCounts },
    /// The infrastructure failed.
    #[error("{0}")]
    Infrastructure(String),
}

/// Compute, routing, readiness and time for one app during one rollout.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Milliseconds since the Unix epoch by this cluster's clock (virtual in simulations).
    fn now_ms(&self) -> u64;
    /// Waits by this cluster's clock.
    async fn sleep_ms(&self, ms: u64);

    /// Sets the desired instance count of `revision`; returns once the change is under way.
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError>;
    /// What is observed about `revision` now.
    fn counts(&self, revision: u32) -> Result<ReplicaCounts, DriverError>;
    /// Waits until `revision` has at least `ready` ready instances, or `timeout_ms` passes.
    async fn wait_ready(&self, revision: u32, ready: u32, timeout_ms: u64) -> Result<ReplicaCounts, DriverError>;

    /// Replaces all route weights at once (revisions not listed get 0).
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError>;
    /// The route weights now, only revisions with a weight above 0.
    fn weights(&self) -> Vec<(u32, u32)>;
    /// Turns the maintenance page on or off.
    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError>;
    /// Whether the maintenance page is on.
    fn maintenance(&self) -> bool;

    /// A counter that moves on whenever something about the instances changes (one starts,
    /// becomes ready or not, crashes, stops).
    fn generation(&self) -> u64;
    /// Waits until [`Cluster::generation`] is past `seen`, or `timeout_ms` passes; returns the
    /// generation then. Lets the host wait on a condition without polling: read the
    /// generation, check the condition, wait for a change, check again.
    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64;

    /// Probes every instance of `revision` now.
    async fn probe(&self, revision: u32) -> Result<ProbeReport, DriverError>;
    /// Sends `GET path` to every ready instance of `revision`.
    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        expect_status: u16,
        timeout_ms: u32,
    ) -> Result<HttpCheckReport, DriverError>;
}

/// Waits until `holds` is true of `revision`'s counts, or `timeout_ms` passes by the cluster's
/// clock: a check at every change, no polling. Returns the counts that satisfied it, or a
/// `Timeout` carrying the last ones (`what` says what was awaited, for its message).
pub async fn wait_until(
    cluster: &dyn Cluster,
    revision: u32,
    timeout_ms: u64,
    what: &str,
    holds: impl Fn(&ReplicaCounts) -> bool,
) -> Result<ReplicaCounts, DriverError> {
    let start = cluster.now_ms();
    loop {
        let seen = cluster.generation();
        let counts = cluster.counts(revision)?;
        if holds(&counts) {
            return Ok(counts);
        }
        let waited = cluster.now_ms().saturating_sub(start);
        if waited >= timeout_ms {
            let message = format!(
                "revision {revision}: {what} did not happen within {}",
                duration::format(std::time::Duration::from_millis(timeout_ms))
            );
            return Err(DriverError::Timeout { message, counts });
        }
        cluster.wait_change(seen, timeout_ms - waited).await;
    }
}

/// Checks route weights against the rules every router enforces.
pub fn validate_weights(weights: &[(u32, u32)]) -> Result<(), DriverError> {
    let routed = weights.iter().filter(|(_, w)| *w > 0).count();
    if routed > MAX_ROUTED_REVISIONS {
        return Err(DriverError::Invalid(format!(
            "{routed} revisions have a weight above 0; a route splits traffic across at most {MAX_ROUTED_REVISIONS}"
        )));
    }
    for (revision, weight) in weights {
        if *weight > MAX_WEIGHT {
            return Err(DriverError::Invalid(format!(
                "weight {weight} for revision {revision} is out of range; weights run from 0 to {MAX_WEIGHT}"
            )));
        }
        if weights.iter().filter(|(r, _)| r == revision).count() > 1 {
            return Err(DriverError::Invalid(format!("revision {revision} is listed twice")));
        }
    }
    Ok(())
}
