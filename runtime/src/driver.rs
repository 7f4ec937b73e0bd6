//! What the host API drives, as two seams and a clock:
//!
//! - [`Compute`]: the instances of each revision of one app — define, scale, observe, wait,
//!   probe, stop. The instance driver runs them as local processes or containers (in the
//!   data plane), [`kubernetes`] as ReplicaSets in a cluster, the simulator in virtual time.
//! - [`Router`]: how requests reach them — endpoints per revision, weights, maintenance,
//!   drain, per-revision traffic. The built-in router or HAProxy (in the data plane), or the
//!   cluster's Service or Gateway API route.
//! - [`Clock`]: the rollout's time (virtual under simulation).
//!
//! [`Cluster`] composes one of each for the host API. Drivers speak their own types, not the
//! WIT bindings' (those are converted in `host/`), keep what is read synchronously in a
//! cache, report what happens as [`DriverEvent`]s on a channel, and fail with errors that
//! carry their source.
//!
//! Strategies cannot tell the drivers apart, which is the point: a strategy tried under
//! `slipway simulate` behaves the same in production.

pub mod compute;
pub mod kubernetes;
pub mod router;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use self::router::builtin::traffic::TrafficStats;
use crate::events::RevisionSnapshot;
use crate::spec::duration;

/// At most this many revisions may carry traffic at once (as in OpenShift routes).
pub const MAX_ROUTED_REVISIONS: usize = 4;

/// The highest route weight.
pub const MAX_WEIGHT: u32 = 256;

/// What is observed about one revision's instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// The replica count last asked for.
    pub desired: u32,
    /// Instances that exist: starting, ready, not ready or draining.
    pub current: u32,
    /// Instances passing their readiness probe and not on their way out.
    pub ready: u32,
    /// Instances that crashed or failed to start since the revision was defined.
    pub failed: u32,
}

/// Readiness probed afresh on every instance of a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub probed: u32,
    pub ready: u32,
    /// One line per instance that failed, saying why.
    pub failures: Vec<String>,
}

/// An HTTP request sent to every ready instance of a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResult {
    pub checked: u32,
    pub passed: u32,
    /// One line per instance that did not answer as expected.
    pub failures: Vec<String>,
}

/// Where a ready instance takes requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The instance's name, unique within the app.
    pub instance: String,
    pub addr: SocketAddr,
}

/// Something that happened to an app's instances, with every revision's counts right after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverEvent {
    /// When, by the driver's clock (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// The driver's [`Compute::generation`] after it: later events have higher ones.
    pub generation: u64,
    pub revision: u32,
    pub what: Happened,
    pub counts: BTreeMap<u32, Counts>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Happened {
    Scaled {
        from: u32,
        to: u32,
    },
    Started {
        instance: String,
    },
    Ready {
        instance: String,
    },
    /// A ready instance stopped passing its readiness probe.
    NotReady {
        instance: String,
    },
    /// A stopping instance left its endpoints and drains before it is signalled.
    Draining {
        instance: String,
    },
    /// It exited on its own; it is replaced after `restart_in_ms`.
    Crashed {
        instance: String,
        status: String,
        restart_in_ms: u64,
        /// Its last lines of output, oldest first.
        last_output: Vec<String>,
    },
    Stopped {
        instance: String,
    },
    /// An instance could not be started at all.
    StartFailed {
        message: String,
    },
}

/// Why a driver call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    /// The revision is not known to the driver.
    #[error("revision {0} is not part of this rollout")]
    UnknownRevision(u32),
    /// An argument made no sense.
    #[error("{0}")]
    Invalid(String),
    /// A wait ended before its condition held; carries what was observed.
    #[error("{message}")]
    Timeout { message: String, counts: Counts },
    /// The infrastructure failed: which driver, what it was doing, and why.
    #[error("{driver}: {message}")]
    Infrastructure {
        driver: &'static str,
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl DriverError {
    /// An infrastructure failure of `driver`, with its cause.
    pub fn infrastructure(
        driver: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DriverError::Infrastructure {
            driver,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// The instances of each revision of one app.
///
/// Reads (`counts`, `revisions`, `generation`) are answered from a cache the driver keeps
/// current; changes are reported as [`DriverEvent`]s on [`Compute::events`].
#[async_trait]
pub trait Compute: Send + Sync {
    /// Sets the desired instance count of `revision`; returns once the change is under way.
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError>;
    /// What is observed about `revision` now.
    fn counts(&self, revision: u32) -> Result<Counts, DriverError>;
    /// Every revision with instances, desired instances or a definition, and its counts.
    fn revisions(&self) -> BTreeMap<u32, Counts>;
    /// A counter that moves on whenever something about the instances changes.
    fn generation(&self) -> u64;
    /// Waits until [`Compute::generation`] is past `seen`, or `timeout_ms` passes by the
    /// driver's clock; returns the generation then.
    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64;
    /// Probes every instance of `revision` now.
    async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError>;
    /// Sends `GET path` to every ready instance of `revision`.
    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<HttpResult, DriverError>;
    /// What happens from now on.
    fn events(&self) -> broadcast::Receiver<DriverEvent>;
}

/// How requests reach the ready instances of each revision of one app.
#[async_trait]
pub trait Router: Send + Sync {
    /// Replaces all weights at once (revisions not listed get 0). Already validated.
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError>;
    /// The weights now, only revisions with a weight above 0.
    fn weights(&self) -> Vec<(u32, u32)>;
    /// Turns the maintenance page on or off.
    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError>;
    /// Whether the maintenance page is on.
    fn maintenance(&self) -> bool;
    /// `revision`'s traffic over the last `window`, as the router saw it. A router that does
    /// not measure traffic says so.
    async fn traffic(&self, revision: u32, window: Duration) -> Result<TrafficStats, DriverError> {
        let _ = (revision, window);
        Err(DriverError::Invalid(
            "this app's router does not measure traffic per revision".into(),
        ))
    }
}

/// The time rollouts are measured in.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch (virtual in simulations).
    fn now_ms(&self) -> u64;
    /// Waits by this clock.
    async fn sleep_ms(&self, ms: u64);
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

#[async_trait]
impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        crate::store::now_ms()
    }

    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One app's compute, router and clock: what the host API acts on.
#[derive(Clone)]
pub struct Cluster {
    pub compute: Arc<dyn Compute>,
    pub router: Arc<dyn Router>,
    pub clock: Arc<dyn Clock>,
}

impl Cluster {
    pub fn new(compute: Arc<dyn Compute>, router: Arc<dyn Router>, clock: Arc<dyn Clock>) -> Cluster {
        Cluster { compute, router, clock }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub async fn sleep_ms(&self, ms: u64) {
        self.clock.sleep_ms(ms).await;
    }

    pub async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        self.compute.scale(revision, replicas).await
    }

    pub fn counts(&self, revision: u32) -> Result<Counts, DriverError> {
        self.compute.counts(revision)
    }

    pub fn generation(&self) -> u64 {
        self.compute.generation()
    }

    pub async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        self.compute.wait_change(seen, timeout_ms).await
    }

    /// Waits until `revision` has at least `ready` ready instances, or `timeout_ms` passes.
    pub async fn wait_ready(&self, revision: u32, ready: u32, timeout_ms: u64) -> Result<Counts, DriverError> {
        let what = format!("{ready} ready instances");
        wait_until(self, revision, timeout_ms, &what, |c| c.ready >= ready).await
    }

    /// Replaces the route's weights, after checking them against the rules every router
    /// enforces and that every revision named is known.
    pub async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        validate_weights(weights)?;
        let known = self.compute.revisions();
        if let Some((revision, _)) = weights.iter().find(|(r, _)| !known.contains_key(r)) {
            return Err(DriverError::UnknownRevision(*revision));
        }
        self.router.set_weights(weights).await
    }

    pub fn weights(&self) -> Vec<(u32, u32)> {
        self.router.weights()
    }

    pub async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        self.router.set_maintenance(on).await
    }

    pub fn maintenance(&self) -> bool {
        self.router.maintenance()
    }

    /// `revision`'s traffic over the last `window`, after checking the revision is known.
    pub async fn traffic(&self, revision: u32, window: Duration) -> Result<TrafficStats, DriverError> {
        self.compute.counts(revision)?;
        self.router.traffic(revision, window).await
    }

    pub async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError> {
        self.compute.probe(revision).await
    }

    pub async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<HttpResult, DriverError> {
        self.compute.check_http(revision, path, status, timeout).await
    }

    /// Every revision's instances and weight now.
    pub fn snapshot(&self) -> BTreeMap<u32, RevisionSnapshot> {
        snapshot(&self.compute.revisions(), &self.router.weights())
    }
}

/// Every revision's counts and weight, side by side.
pub fn snapshot(counts: &BTreeMap<u32, Counts>, weights: &[(u32, u32)]) -> BTreeMap<u32, RevisionSnapshot> {
    let mut revisions: BTreeMap<u32, RevisionSnapshot> = counts
        .iter()
        .map(|(revision, c)| {
            (
                *revision,
                RevisionSnapshot {
                    desired: c.desired,
                    current: c.current,
                    ready: c.ready,
                    weight: 0,
                },
            )
        })
        .collect();
    for (revision, weight) in weights {
        revisions.entry(*revision).or_default().weight = *weight;
    }
    revisions
}

/// Waits until `holds` is true of `revision`'s counts, or `timeout_ms` passes by the cluster's
/// clock: a check at every change, no polling. Returns the counts that satisfied it, or a
/// `Timeout` carrying the last ones (`what` says what was awaited, for its message).
pub async fn wait_until(
    cluster: &Cluster,
    revision: u32,
    timeout_ms: u64,
    what: &str,
    holds: impl Fn(&Counts) -> bool,
) -> Result<Counts, DriverError> {
    let start = cluster.now_ms();
    loop {
        let seen = cluster.generation();
        let counts = cluster.counts(revision)?;
        if holds(&counts) {
            return Ok(counts);
        }
        let waited = cluster.now_ms().saturating_sub(start);
        if waited >= timeout_ms {
            let mut message = format!(
                "revision {revision}: {what} did not happen within {}: {} of {} instances ready",
                duration::format(Duration::from_millis(timeout_ms)),
                counts.ready,
                counts.desired
            );
            if counts.failed > 0 {
                message.push_str(&format!(" ({} crashed)", counts.failed));
            }
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
