//! Starting on existing data: restoring every app, then resuming interrupted rollouts.
//!
//! **The recovery rule.** Instances die with the runner (their parent-death signal), so on
//! start each app gets back, in this order: its router; its active revision at the size it
//! last had; every revision it was keeping for instant rollback (with the rest of its destroy
//! delay); its hand-set route, or all traffic on the active revision; its maintenance state.
//! Then each interrupted rollout resumes with `resumed = true`, but only once the active
//! revision serves at full size again (or the progress deadline passes), and hooks that
//! already succeeded in it are not run again.
//!
//! **Invariant:** the runner always starts. Whatever it cannot restore of one app — a route
//! naming a revision that is gone, a port that is taken, a stored spec it cannot read, a
//! rollout it cannot resume — becomes that app's notice (shown by `slipway status` and the
//! API) and an app event; every other app comes back.

use super::deploy::RolloutJob;
use super::{DeployError, Runner, process_config, route_of};
use crate::driver::MAX_WEIGHT;
use crate::events::{Event, EventKind, HookOutcome};
use crate::modules::World;
use crate::spec;
use crate::store::{self, AppRow, RevisionState, RolloutEnd, RolloutKind, RolloutRow, RolloutState};

impl Runner {
    /// Restores every app and resumes interrupted rollouts. Fails only when the database
    /// itself cannot be read.
    pub(super) async fn restore(&self) -> anyhow::Result<()> {
        for app in self.store.apps()? {
            let problems = self.restore_app(&app).await;
            let notice = (!problems.is_empty()).then(|| {
                format!(
                    "after the runner restarted, not everything could be restored: {}",
                    problems.join("; ")
                )
            });
            if let Some(notice) = &notice {
                tracing::warn!(app = %app.name, %notice);
            }
            if notice.is_some() || app.notice.is_some() {
                self.store.set_notice(&app.name, notice.as_deref())?;
            }
        }
        for rollout in self.store.unfinished_rollouts()? {
            if let Err(error) = self.resume(&rollout).await {
                let reason = format!("could not resume after a runner restart: {error}");
                tracing::warn!(rollout = %rollout.id, %reason);
                self.store.record_end(&RolloutEnd {
                    app: &rollout.app,
                    rollout: &rollout.id,
                    kind: rollout.kind,
                    target: rollout.target,
                    state: RolloutState::Failed,
                    previous: None,
                    summary: &reason,
                    failure: None,
                })?;
                self.store
                    .set_notice(&rollout.app, Some(&format!("rollout {}: {reason}", rollout.id)))?;
            }
        }
        Ok(())
    }

    /// Brings one app back; returns what could not be restored, in words.
    async fn restore_app(&self, app: &AppRow) -> Vec<String> {
        let mut problems = Vec::new();
        let app_spec = match spec::parse_json(app.spec.clone()) {
            Ok(spec) => spec,
            Err(error) => return vec![format!("its stored spec cannot be read ({error}); deploy it again")],
        };
        let handle = match self.app_handle(&app_spec).await {
            Ok(handle) => handle,
            Err(error) => {
                return vec![format!(
                    "its router could not start ({error}); free the address and restart the runner, or deploy it with another listen address"
                )];
            }
        };
        let cluster = handle.cluster.clone();
        let revisions = match self.store.revisions(&app.name) {
            Ok(revisions) => revisions,
            Err(error) => return vec![format!("its revisions cannot be read ({error})")],
        };
        let mut restored = Vec::new();
        for revision in &revisions {
            let active = app.active_revision == Some(revision.number);
            if !active && !matches!(revision.state, RevisionState::Keeping | RevisionState::Destroying) {
                continue;
            }
            let spec = match self.revision_spec(revision, &app.spec) {
                Ok(spec) => spec,
                Err(error) => {
                    problems.push(format!("revision {} cannot be run ({error})", revision.number));
                    continue;
                }
            };
            // The destroy delay runs from when the revision began to be kept.
            let kept_until = revision.updated_at + spec.lifecycle.destroy_delay.as_millis() as u64;
            if !active && (revision.state == RevisionState::Destroying || kept_until <= store::now_ms()) {
                // Its instances died with the runner and its time is up: it is destroyed.
                let done = self
                    .store
                    .set_revision_state(&app.name, revision.number, RevisionState::Retained, None);
                self.log_store(done);
                continue;
            }
            handle.driver.define(revision.number, process_config(&spec));
            let replicas = if active {
                app.scale.unwrap_or(spec.replicas)
            } else {
                spec.replicas
            };
            if let Err(error) = cluster.scale(revision.number, replicas).await {
                problems.push(format!("revision {} could not be started ({error})", revision.number));
                continue;
            }
            restored.push(revision.number);
            if !active {
                let left = std::time::Duration::from_millis(kept_until.saturating_sub(store::now_ms()));
                self.schedule_destroy(&app.name, revision.number, left, cluster.clone());
            }
        }

        let mut weights: Vec<(u32, u32)> = app
            .active_revision
            .filter(|a| restored.contains(a))
            .map(|a| vec![(a, MAX_WEIGHT)])
            .unwrap_or_default();
        if let Some(route) = route_of(&app.route) {
            let (kept, lost): (Vec<_>, Vec<_>) =
                route.into_iter().partition(|(revision, _)| restored.contains(revision));
            if !lost.is_empty() {
                let names: Vec<String> = lost.iter().map(|(r, w)| format!("{r}={w}")).collect();
                problems.push(format!(
                    "its hand-set route named revisions that no longer run ({}), so they get no traffic; set the route again with `slipway route {}`",
                    names.join(" "),
                    app.name
                ));
            }
            if kept.iter().any(|(_, w)| *w > 0) {
                weights = kept;
            } else if !lost.is_empty() {
                problems.push("all traffic goes to the active revision instead".to_string());
            }
        }
        if !weights.is_empty()
            && let Err(error) = cluster.set_weights(&weights).await
        {
            problems.push(format!("its route could not be set ({error})"));
        }
        if let Err(error) = cluster.set_maintenance(app.maintenance).await {
            problems.push(format!("its maintenance page could not be restored ({error})"));
        }
        if let Some(active) = app.active_revision {
            tracing::info!(app = %app.name, revision = active, "restored the running revision");
        }
        problems
    }

    /// Resumes a rollout the previous runner did not finish.
    async fn resume(&self, rollout: &RolloutRow) -> Result<(), DeployError> {
        let app = self.app_row(&rollout.app)?;
        if rollout.kind == RolloutKind::Rollback {
            // An instant rollback has no strategy to resume; the restored revision stands.
            return Err(DeployError::NotPossible(
                "an instant rollback was interrupted; the revision that was active before it serves, so run the rollback again if it is still wanted".into(),
            ));
        }
        let revision = self
            .store
            .revision(&rollout.app, rollout.target)?
            .ok_or_else(|| DeployError::UnknownRevision(format!("revision {} is gone", rollout.target)))?;
        let spec = self.revision_spec(&revision, &app.spec)?;
        let strategy = self
            .resolve_pinned(&revision.strategy, &revision.strategy_digest, World::Strategy)
            .await?;
        let mut hooks = self.resolve_hooks(&spec, Some(&revision.hooks)).await?;
        let stored = self.store.events(&rollout.id)?;
        for event in &stored {
            if let Ok(Event {
                kind:
                    EventKind::Hook {
                        point,
                        outcome: HookOutcome::Succeeded,
                        ..
                    },
                ..
            }) = serde_json::from_value::<Event>(event.clone())
                && let Some((name, _)) = hooks.hooks.remove_entry(point.as_str())
            {
                hooks.done.push(name);
            }
        }
        let handle = self.app_handle(&spec).await?;
        let claim = self.claim(&handle)?;
        claim.name(&rollout.id);
        self.launch(
            RolloutJob {
                id: rollout.id.clone(),
                kind: rollout.kind,
                spec,
                number: rollout.target,
                active: app.active_revision.filter(|a| *a != rollout.target),
                strategy,
                hooks,
                resumed: true,
                first_seq: stored.len() as u64,
            },
            claim,
        );
        Ok(())
    }
}
