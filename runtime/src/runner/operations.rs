//! Operations on a running app or rollout: pause, resume and abort; scale, route and
//! maintenance by hand; deleting an app.

use std::collections::BTreeMap;

use super::{DeployError, Runner};
use crate::driver::validate_weights;
use crate::protocol::{Deleted, MaintenanceSet, Routed, Scaled, Steer, Steered, TrafficReport};

impl Runner {
    /// Pauses, resumes or aborts a running rollout.
    pub fn steer(&self, rollout: &str, action: Steer) -> Result<Steered, DeployError> {
        let control = self.live.lock().unwrap().get(rollout).map(|l| l.control.clone());
        let Some(control) = control else {
            return Err(match self.store.rollout(rollout)? {
                Some(row) => DeployError::NotPossible(format!("rollout {rollout} is {}, not running", row.state)),
                None => DeployError::UnknownRollout(rollout.to_string()),
            });
        };
        let now = crate::store::now_ms();
        let changed = match action {
            Steer::Pause => control.pause(now),
            Steer::Resume => control.resume(now),
            Steer::Abort => {
                let was = control.is_aborted();
                control.abort();
                !was
            }
        };
        Ok(Steered {
            rollout: rollout.to_string(),
            action,
            changed,
            paused: control.is_paused(),
            aborted: control.is_aborted(),
        })
    }

    /// Scales the app's running revision by hand (no new revision).
    pub async fn scale(&self, app: &str, replicas: u32) -> Result<Scaled, DeployError> {
        if replicas > self.limits.max_replicas {
            return Err(DeployError::InvalidSpec(format!(
                "replicas: {replicas} is over the limit of {}",
                self.limits.max_replicas
            )));
        }
        let row = self.app_row(app)?;
        let active = row
            .active_revision
            .ok_or_else(|| DeployError::NotPossible(format!("{app} has no running revision to scale")))?;
        self.not_while_rolling(app)?;
        self.store.set_scale(app, Some(replicas))?;
        self.existing_handle(app)?
            .cluster
            .scale(active, replicas)
            .await
            .map_err(|e| DeployError::NotPossible(e.to_string()))?;
        Ok(Scaled {
            app: app.to_string(),
            revision: active,
            replicas,
        })
    }

    /// Sets route weights by hand: A/B across up to four revisions, 0–256 each. The route
    /// must send traffic somewhere, and only to revisions with ready instances.
    pub async fn route(&self, app: &str, weights: &BTreeMap<u32, u32>) -> Result<Routed, DeployError> {
        self.app_row(app)?;
        self.not_while_rolling(app)?;
        let pairs: Vec<(u32, u32)> = weights.iter().map(|(r, w)| (*r, *w)).collect();
        validate_weights(&pairs).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        if pairs.iter().all(|(_, w)| *w == 0) {
            return Err(DeployError::InvalidSpec(format!(
                "weights: every weight is 0, so {app} would answer 503 to every request; to take it offline on purpose, turn on its maintenance page with `slipway maintenance {app} on` (PUT /v1/apps/{app}/maintenance {{\"on\": true}})"
            )));
        }
        let handle = self.existing_handle(app)?;
        for (revision, weight) in &pairs {
            let serving = handle.cluster.counts(*revision).map(|c| c.ready > 0).unwrap_or(false);
            if *weight > 0 && !serving {
                return Err(DeployError::NotPossible(format!(
                    "revision {revision} has no ready instance to send traffic to; roll back or redeploy it first"
                )));
            }
        }
        handle
            .cluster
            .set_weights(&pairs)
            .await
            .map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let stored: serde_json::Map<String, serde_json::Value> =
            weights.iter().map(|(r, w)| (r.to_string(), (*w).into())).collect();
        self.store.set_route(app, Some(&serde_json::Value::Object(stored)))?;
        Ok(Routed {
            app: app.to_string(),
            weights: weights.clone(),
        })
    }

    /// Turns the app's maintenance page on or off.
    pub async fn maintenance(&self, app: &str, on: bool) -> Result<MaintenanceSet, DeployError> {
        self.app_row(app)?;
        self.store.set_maintenance(app, on)?;
        if let Ok(handle) = self.existing_handle(app) {
            handle
                .cluster
                .set_maintenance(on)
                .await
                .map_err(|e| DeployError::NotPossible(e.to_string()))?;
        }
        Ok(MaintenanceSet {
            app: app.to_string(),
            maintenance: on,
        })
    }

    /// A revision's traffic (the active one unless named) over the last `window`, as the
    /// app's router measured it.
    pub async fn traffic(
        &self,
        app: &str,
        revision: Option<u32>,
        window: std::time::Duration,
    ) -> Result<TrafficReport, DeployError> {
        let row = self.app_row(app)?;
        let revision = revision.or(row.active_revision).ok_or_else(|| {
            DeployError::NotPossible(format!(
                "app {app} has no active revision yet; name one with revision=N"
            ))
        })?;
        let handle = self.existing_handle(app)?;
        let stats = handle.cluster.traffic(revision, window).await.map_err(|e| match e {
            crate::driver::DriverError::UnknownRevision(r) => {
                DeployError::UnknownRevision(format!("revision {r} of {app} is not running"))
            }
            other => DeployError::NotPossible(other.to_string()),
        })?;
        Ok(TrafficReport {
            app: app.to_string(),
            revision,
            stats,
        })
    }

    /// Deletes an app: stops its instances (gracefully) and its router, and keeps its
    /// history readable. Refused while a rollout of it runs.
    pub async fn delete(&self, app: &str) -> Result<Deleted, DeployError> {
        self.app_row(app)?;
        let mut stopped = 0;
        if let Ok(handle) = self.existing_handle(app) {
            // Holding the app's rollout slot keeps a deploy from starting while it goes.
            let _claim = self.claim(&handle)?;
            self.apps.lock().unwrap().remove(app);
            stopped = handle.cluster.snapshot().values().map(|s| s.current).sum();
            handle
                .engine
                .remove()
                .await
                .map_err(|e| DeployError::NotPossible(e.to_string()))?;
        }
        self.certificates.forget(app, true);
        self.store.delete_app(app)?;
        Ok(Deleted {
            app: app.to_string(),
            stopped,
        })
    }
}
