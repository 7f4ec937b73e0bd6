//! Starting on existing data: adopting what the data plane runs, restoring what it does not,
//! then resuming interrupted rollouts.
//!
//! **The recovery rule.** Traffic and instances live in the data plane, which outlives the
//! runner. A runner that starts while its data plane runs *adopts* every app there as it is:
//! the same instances (no restart, no second copy), weights and maintenance state. Only what
//! the data plane does not have is restored from the store (a first start, or a data plane
//! that itself was stopped): the app's router; its active revision at the size it last had;
//! every revision it was keeping for instant rollback, for the rest of its destroy delay;
//! its hand-set route, or all traffic on the active revision; its maintenance state. Then each
//! interrupted rollout resumes with `resumed = true`, but only once the active revision
//! serves what it is asked to (at once, when adopted), and hooks that already succeeded in
//! it are not run again.
//!
//! **Invariant:** the runner always starts. Whatever it cannot restore of one app — a route
//! naming a revision that is gone, a port that is taken, a stored spec it cannot read, a
//! rollout it cannot resume — becomes that app's notice (shown by `slipway status` and the
//! API) and an app event; every other app comes back.

use std::time::Duration;

use super::deploy::RolloutJob;
use super::{AppHandle, DeployError, Engine, Runner, route_of};
use crate::driver::MAX_WEIGHT;
use crate::events::{Event, EventKind, HookOutcome};
use crate::modules::World;
use crate::spec;
use crate::store::{self, AppRow, RevisionRow, RevisionState, RolloutEnd, RolloutKind, RolloutRow, RolloutState};

impl Runner {
    /// Adopts or restores every app and resumes interrupted rollouts. Fails only when the
    /// database itself cannot be read.
    pub(super) async fn restore(&self) -> anyhow::Result<()> {
        let apps = self.store.apps()?;
        for orphan in self
            .plane
            .adopted()
            .keys()
            .filter(|name| !apps.iter().any(|a| &a.name == *name))
        {
            // The store does not know it (deleted while the runner was away): stop it.
            tracing::warn!(app = %orphan, "the data plane ran an app the store does not know; stopping it");
            let adopted = &self.plane.adopted()[orphan];
            if let Ok(app) = self
                .plane
                .app(orphan, adopted.listen, adopted.router, adopted.front.clone())
                .await
            {
                let _ = app.remove().await;
            }
        }
        for app in apps {
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
        let app_spec = match spec::parse_json(app.spec.clone()) {
            Ok(spec) => spec,
            Err(error) => return vec![format!("its stored spec cannot be read ({error}); deploy it again")],
        };
        let adopted = self.plane.adopted().get(&app.name).cloned();
        let handle = match self.app_handle(&app_spec).await {
            Ok(handle) => handle,
            Err(error) if app_spec.kubernetes.is_some() => {
                return vec![format!(
                    "its cluster could not be reached ({error}); its pods and route keep running there; restart the runner once the cluster answers"
                )];
            }
            Err(error) => {
                return vec![format!(
                    "its router could not start ({error}); free the address and restart the runner, or deploy it with another listen address"
                )];
            }
        };
        let revisions = match self.store.revisions(&app.name) {
            Ok(revisions) => revisions,
            Err(error) => return vec![format!("its revisions cannot be read ({error})")],
        };
        match (&handle.engine, adopted) {
            (Engine::Plane(_), Some(state)) => {
                let running = |revision: u32| state.runs(revision);
                self.adopt(app, &handle, &revisions, &running, state.instances.len())
                    .await
            }
            // The cluster keeps a Kubernetes app running: adopted when it has the active
            // revision's ReplicaSet (or nothing was active yet), set up again otherwise.
            (Engine::Kubernetes(kube), _) if app.active_revision.is_none_or(|active| kube.runs(active)) => {
                let running = |revision: u32| kube.runs(revision);
                self.adopt(app, &handle, &revisions, &running, kube.pods()).await
            }
            _ => self.recreate(app, &handle, &revisions).await,
        }
    }

    /// The data plane kept the app running: its instances, weights and maintenance stay as
    /// they are. Only the destroy delays of kept revisions are picked up again.
    async fn adopt(
        &self,
        app: &AppRow,
        handle: &AppHandle,
        revisions: &[RevisionRow],
        runs: &dyn Fn(u32) -> bool,
        instances: usize,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for revision in revisions {
            let active = app.active_revision == Some(revision.number);
            let running = runs(revision.number);
            if active && !running {
                problems.push(format!(
                    "the data plane does not run its active revision {}; redeploy it",
                    revision.number
                ));
            }
            if active || !running {
                continue;
            }
            match revision.state {
                RevisionState::Keeping => {
                    let left = self.kept_for(app, revision);
                    self.schedule_destroy(&app.name, revision.number, left, handle.cluster.clone());
                }
                RevisionState::Destroying => {
                    self.schedule_destroy(&app.name, revision.number, Duration::ZERO, handle.cluster.clone());
                }
                _ => {}
            }
        }
        tracing::info!(
            app = %app.name,
            instances,
            "adopted the app as it runs"
        );
        problems
    }

    /// The data plane does not have the app (a first start, or the data plane was stopped):
    /// it is set up again from the store.
    async fn recreate(&self, app: &AppRow, handle: &AppHandle, revisions: &[RevisionRow]) -> Vec<String> {
        let mut problems = Vec::new();
        let cluster = handle.cluster.clone();
        let mut restored = Vec::new();
        for revision in revisions {
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
            let left = self.kept_for(app, revision);
            if !active && (revision.state == RevisionState::Destroying || left.is_zero()) {
                // Its instances stopped with the data plane and its time is up: destroyed.
                let done = self
                    .store
                    .set_revision_state(&app.name, revision.number, RevisionState::Retained, None);
                self.log_store(done);
                continue;
            }
            if let Err(error) = handle.engine.define(revision.number, &spec).await {
                problems.push(format!("revision {} could not be defined ({error})", revision.number));
                continue;
            }
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

    /// What is left of `revision`'s destroy delay (which runs from when it began to be kept).
    fn kept_for(&self, app: &AppRow, revision: &RevisionRow) -> Duration {
        let delay = self
            .revision_spec(revision, &app.spec)
            .map(|spec| spec.lifecycle.destroy_delay)
            .unwrap_or_default();
        let until = revision.updated_at + delay.as_millis() as u64;
        Duration::from_millis(until.saturating_sub(store::now_ms()))
    }

    /// Resumes a rollout the previous runner did not finish.
    async fn resume(&self, rollout: &RolloutRow) -> Result<(), DeployError> {
        let app = self.app_row(&rollout.app)?;
        if rollout.kind == RolloutKind::Rollback {
            // An instant rollback has no strategy to resume; the revision serving stands.
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
