//! Deploy and PATCH, running a rollout to its end, and the end every rollout shares.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{AppHandle, Claim, DeployAccepted, DeployError, LiveRollout, Numbered, Runner, workload};
use crate::bindings::Revision;
use crate::driver::{Cluster, wait_until};
use crate::events::{Event, EventKind, RolloutOutcome, Timeline};
use crate::hooks::WasmHooks;
use crate::host::RolloutControl;
use crate::modules::{LoadedModule, World};
use crate::rollout::{self, RolloutPlan};
use crate::spec::{self, Spec};
use crate::store::{self, NewRevision, RevisionState, RolloutEnd, RolloutKind, RolloutState};

/// Everything needed to run one rollout of one revision.
pub(super) struct RolloutJob {
    pub id: String,
    pub kind: RolloutKind,
    pub spec: Spec,
    pub number: u32,
    pub active: Option<u32>,
    pub strategy: LoadedModule,
    pub hooks: WasmHooks,
    /// Set when the runner restarted in the middle of this rollout.
    pub resumed: bool,
    /// Events already stored for it (by a previous runner).
    pub first_seq: u64,
}

/// How a rollout ended, for [`Runner::finish`].
pub(super) struct Ending<'a> {
    pub app: &'a str,
    pub id: &'a str,
    pub kind: RolloutKind,
    pub target: u32,
    /// The revision that served before.
    pub previous: Option<u32>,
    pub state: RolloutState,
    pub summary: &'a str,
    pub failure: Option<serde_json::Value>,
    pub spec: &'a Spec,
    pub cluster: &'a Cluster,
}

/// How long the destroying step waits for a retired revision's instances to stop.
const DESTROY_WAIT: Duration = Duration::from_secs(120);

impl Runner {
    /// Records `spec` as the app's desired state: a new revision and its rollout, unless it
    /// equals the latest revision (settings such as the destroy delay change no revision).
    pub async fn deploy(&self, spec: Spec) -> Result<DeployAccepted, DeployError> {
        spec::validate(&spec).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        if spec.replicas > self.limits.max_replicas {
            return Err(DeployError::InvalidSpec(format!(
                "replicas: {} is over this runner's limit of {} (slipway serve --max-replicas)",
                spec.replicas, self.limits.max_replicas
            )));
        }
        let digest = super::revision_digest(&spec);
        if let Some(latest) = self.store.latest_revision(&spec.name)?
            && latest.spec_digest == digest
            && self.store.app(&spec.name)?.is_some()
        {
            self.store.upsert_app(&spec.name, &spec.to_json())?;
            self.prune(&spec.name)?;
            return Ok(DeployAccepted::Unchanged {
                app: spec.name.clone(),
                revision: latest.number,
            });
        }
        self.not_while_rolling(&spec.name)?;
        self.check_secrets(&spec)?;
        let _modules = self.module_use.read().await;
        let strategy = self.resolve(&spec.strategy.module, World::Strategy).await?;
        self.check_strategy_params(&spec, &strategy).await?;
        let hooks = self.resolve_hooks(&spec, None).await?;
        self.start_new_revision(spec, strategy, hooks, RolloutKind::Deploy, None)
            .await
    }

    /// Applies a JSON merge patch to the app's current spec and deploys the result.
    pub async fn patch(&self, app: &str, patch: &serde_json::Value) -> Result<DeployAccepted, DeployError> {
        let row = self.app_row(app)?;
        let current = spec::parse_json(row.spec).map_err(|e| DeployError::Internal(e.to_string()))?;
        let next = spec::merge_patch(&current, patch).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        if next.name != app {
            return Err(DeployError::InvalidSpec(format!("name: a PATCH cannot rename {app:?}")));
        }
        self.deploy(next).await
    }

    /// Asks the strategy whether it accepts the spec's parameters, if it checks them
    /// (`params-check`): a refusal is the spec's error, in the module's words.
    pub(super) async fn check_strategy_params(&self, spec: &Spec, strategy: &LoadedModule) -> Result<(), DeployError> {
        let params = serde_json::Value::Object(spec.strategy.params.clone()).to_string();
        match crate::guest::check_params(strategy, &params, &self.limits).await {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(DeployError::InvalidSpec(format!(
                "strategy.params: {} refused them: {message}",
                strategy.name
            ))),
            Err(failure) => Err(DeployError::BadModule(format!(
                "{}: its parameter check failed ({}): {}; fix the module, or use one without params-check",
                strategy.name,
                failure.kind.as_str(),
                failure.message
            ))),
        }
    }

    /// Refuses a spec whose secrets cannot be read now, before anything starts.
    pub(super) fn check_secrets(&self, spec: &Spec) -> Result<(), DeployError> {
        if spec.kubernetes.is_some() {
            // Its secrets are the cluster's Secrets, read by the kubelet.
            return Ok(());
        }
        crate::secrets::check(workload(spec).env().1).map_err(DeployError::InvalidSpec)
    }

    pub(super) async fn start_new_revision(
        &self,
        spec: Spec,
        strategy: LoadedModule,
        hooks: WasmHooks,
        kind: RolloutKind,
        reason: Option<String>,
    ) -> Result<DeployAccepted, DeployError> {
        let handle = self.app_handle(&spec).await?;
        let claim = self.claim(&handle)?;
        let app_spec = spec.to_json();
        let revision_spec = super::revision_spec_json(&spec);
        let hook_digests = hooks.digests();
        let recorded = self.store.record_revision(
            &NewRevision {
                app: &spec.name,
                app_spec: &app_spec,
                spec: &revision_spec,
                spec_digest: &super::revision_digest(&spec),
                strategy: &strategy.name,
                strategy_digest: &strategy.digest,
                hooks: &hook_digests,
                reason: reason.as_deref(),
                kind,
            },
            |number| super::rollout_id(&spec.name, number),
        )?;
        claim.name(&recorded.rollout);
        let app = spec.name.clone();
        self.launch(
            RolloutJob {
                id: recorded.rollout.clone(),
                kind,
                spec,
                number: recorded.number,
                active: recorded.active,
                strategy,
                hooks,
                resumed: false,
                first_seq: 0,
            },
            claim,
        );
        Ok(DeployAccepted::Started {
            app,
            revision: recorded.number,
            rollout: recorded.rollout,
            note: None,
        })
    }

    /// Makes the rollout followable and runs it in the background.
    pub(super) fn launch(&self, job: RolloutJob, claim: Claim) {
        let control = self.go_live(&job.id);
        let runner = self.arc();
        // Rollouts run guests: on the guest runtime, at a lower priority than traffic.
        crate::engine::guest_runtime().spawn(async move { runner.run_rollout(job, claim, control).await });
    }

    /// Registers a rollout for followers and operators.
    pub(super) fn go_live(&self, id: &str) -> Arc<RolloutControl> {
        let control = Arc::new(RolloutControl::default());
        let (sender, _) = broadcast::channel(1024);
        self.live.lock().unwrap().insert(
            id.to_string(),
            LiveRollout {
                sender,
                control: control.clone(),
            },
        );
        control
    }

    async fn run_rollout(self: Arc<Self>, job: RolloutJob, claim: Claim, control: Arc<RolloutControl>) {
        let RolloutJob {
            id,
            kind,
            spec,
            number,
            active,
            strategy,
            hooks,
            resumed,
            first_seq,
        } = job;
        let app = spec.name.clone();
        let cluster = claim.handle.cluster.clone();
        if let Err(error) = claim.handle.engine.define(number, &spec).await {
            let summary = format!("revision {number} could not be set up to run: {error}");
            tracing::error!(%app, %summary);
            self.finish(Ending {
                app: &app,
                id: &id,
                kind,
                target: number,
                previous: active,
                state: RolloutState::Failed,
                summary: &summary,
                failure: None,
                spec: &spec,
                cluster: &cluster,
            })
            .await;
            return;
        }
        self.log_store(
            self.store
                .set_revision_state(&app, number, RevisionState::Creating, None),
        );
        let active_revision = active.and_then(|n| {
            let row = self.store.revision(&app, n).ok()??;
            Some(Revision {
                number: n,
                replicas: row.spec.get("replicas")?.as_u64()? as u32,
            })
        });
        let others: Vec<Revision> = cluster
            .compute
            .revisions()
            .into_iter()
            .filter(|(r, c)| (c.desired > 0 || c.current > 0) && *r != number && Some(*r) != active)
            .map(|(r, _)| Revision { number: r, replicas: 0 })
            .collect();
        let timeline = self.timeline_for(&id, &app, number, spec.replicas, first_seq);
        if spec.lifecycle.maintenance_during_deploy {
            self.log_driver(cluster.set_maintenance(true).await);
            self.log_store(self.store.set_maintenance(&app, true));
        }
        if resumed && let Some(active) = active_revision {
            self.wait_for_restored(&cluster, active, &timeline, spec.lifecycle.progress_deadline)
                .await;
        }

        let mut plan = RolloutPlan::new(
            &app,
            &id,
            Revision {
                number,
                replicas: spec.replicas,
            },
            active_revision,
        );
        plan.others = others;
        plan.params = serde_json::Value::Object(spec.strategy.params.clone()).to_string();
        plan.auto_rollback = spec.lifecycle.auto_rollback;
        plan.progress_deadline = spec.lifecycle.progress_deadline;
        plan.soak = spec.lifecycle.soak;
        plan.limits = self.limits.clone();
        plan.seed = store::now_ms();
        plan.resumed = resumed;
        plan.grants.prometheus = spec
            .strategy
            .grants
            .iter()
            .find_map(|grant| spec::strategy_grant(grant).ok());
        let hooks = WasmHooks {
            limits: self.limits.clone(),
            ..hooks
        };
        // Followers see instances start and become ready as it happens, not only at the
        // strategy's next step.
        let pump = tokio::spawn(pump(timeline.clone(), cluster.clone()));
        let report = rollout::run_controlled(
            &strategy,
            &plan,
            cluster.clone(),
            Arc::new(hooks),
            timeline,
            control.clone(),
        )
        .await;
        pump.abort();

        let state = match report.outcome {
            RolloutOutcome::Succeeded => RolloutState::Succeeded,
            _ if control.is_aborted() => RolloutState::Aborted,
            RolloutOutcome::RolledBack => RolloutState::RolledBack,
            RolloutOutcome::Failed => RolloutState::Failed,
        };
        self.finish(Ending {
            app: &app,
            id: &id,
            kind,
            target: number,
            previous: active,
            state,
            summary: &report.summary,
            failure: report.failure.as_ref().and_then(|f| serde_json::to_value(f).ok()),
            spec: &spec,
            cluster: &cluster,
        })
        .await;
        drop(claim);
    }

    /// The recovery rule's second half: a rollout resumed after a restart starts only once
    /// the active revision serves what it is asked to (at once when the data plane kept it
    /// running), so the strategy (which reads observed state) never mistakes instances that
    /// are still starting for broken ones. If it does not get there within the progress
    /// deadline, the rollout goes on regardless.
    async fn wait_for_restored(&self, cluster: &Cluster, active: Revision, timeline: &Timeline, deadline: Duration) {
        let wanted = cluster
            .counts(active.number)
            .map(|c| c.desired)
            .unwrap_or(active.replicas);
        timeline.push(
            store::now_ms(),
            EventKind::Log {
                level: "info".into(),
                message: format!(
                    "the runner restarted: resuming once revision {} serves {wanted} ready instances",
                    active.number
                ),
            },
            None,
        );
        if let Err(error) = cluster
            .wait_ready(active.number, wanted, deadline.as_millis() as u64)
            .await
        {
            timeline.push(
                store::now_ms(),
                EventKind::Log {
                    level: "warn".into(),
                    message: format!("resuming anyway: {error}"),
                },
                None,
            );
        }
    }

    /// The end every rollout shares (deploys, redeploys, retries, instant rollbacks): records
    /// the outcome in one transaction, leaves maintenance-during-deploy, retires the revision
    /// that served before, prunes, and stops offering the rollout to followers.
    pub(super) async fn finish(&self, end: Ending<'_>) {
        let mut previous = None;
        if end.state == RolloutState::Succeeded
            && let Some(old) = end.previous.filter(|old| *old != end.target)
        {
            let has_instances = end.cluster.counts(old).map(|c| c.current > 0).unwrap_or(false);
            let state = if has_instances {
                RevisionState::Keeping
            } else {
                RevisionState::Retained
            };
            previous = Some((old, state));
        }
        let recorded = self.store.record_end(&RolloutEnd {
            app: end.app,
            rollout: end.id,
            kind: end.kind,
            target: end.target,
            state: end.state,
            previous,
            summary: end.summary,
            failure: end.failure.as_ref(),
        });
        if let Err(error) = recorded {
            tracing::error!(%error, rollout = %end.id, "could not record the end of a rollout");
        }
        if end.state == RolloutState::Succeeded {
            if end.spec.lifecycle.maintenance_during_deploy {
                self.log_driver(end.cluster.set_maintenance(false).await);
                self.log_store(self.store.set_maintenance(end.app, false));
            }
            if let Some((old, RevisionState::Keeping)) = previous {
                self.schedule_destroy(end.app, old, end.spec.lifecycle.destroy_delay, end.cluster.clone());
            }
        }
        if let Err(error) = self.prune(end.app) {
            tracing::error!(%error, app = %end.app, "could not prune old revisions");
        }
        self.live.lock().unwrap().remove(end.id);
    }

    /// A timeline that stores every event and hands it to followers, numbering after
    /// `first_seq` (events already stored by a previous runner).
    pub(super) fn timeline_for(&self, id: &str, app: &str, number: u32, replicas: u32, first_seq: u64) -> Timeline {
        let store = self.store.clone();
        let id = id.to_string();
        let app = app.to_string();
        let sender = self.live.lock().unwrap().get(&id).map(|l| l.sender.clone());
        let verifying = std::sync::atomic::AtomicBool::new(false);
        Timeline::with_sink(
            store::now_ms(),
            Arc::new(move |seq, event: &Event| {
                let seq = first_seq + seq;
                if let Err(error) = store.append_event(&id, seq, event) {
                    tracing::error!(%error, "could not record a rollout event");
                }
                // The target is being verified once it is probed or checked, or all of it is up.
                let checks_target = match &event.kind {
                    EventKind::Probed { revision, .. } | EventKind::HttpChecked { revision, .. } => *revision == number,
                    EventKind::Waited {
                        revision,
                        ready,
                        timed_out: false,
                        ..
                    } => *revision == number && *ready >= replicas,
                    _ => false,
                };
                if checks_target
                    && !verifying.swap(true, std::sync::atomic::Ordering::SeqCst)
                    && let Err(error) = store.set_revision_state(&app, number, RevisionState::Verifying, None)
                {
                    tracing::error!(%error, "could not record a revision state");
                }
                if let Some(sender) = &sender {
                    // No follower listening is fine.
                    let _ = sender.send(Numbered {
                        seq,
                        event: event.clone(),
                    });
                }
            }),
        )
    }

    /// Keeps the replaced revision for the destroy delay, then stops its instances and keeps
    /// its config: `keeping` → `destroying` → `retained`. Unless an instant rollback made it
    /// running again meanwhile.
    pub(super) fn schedule_destroy(&self, app: &str, revision: u32, after: Duration, cluster: Cluster) {
        let runner = self.arc();
        let app = app.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let still_keeping = runner
                .store
                .revision(&app, revision)
                .ok()
                .flatten()
                .is_some_and(|r| r.state == RevisionState::Keeping);
            if !still_keeping {
                return;
            }
            runner.log_store(
                runner
                    .store
                    .set_revision_state(&app, revision, RevisionState::Destroying, None),
            );
            runner.log_driver(cluster.scale(revision, 0).await);
            let timeout = DESTROY_WAIT.as_millis() as u64;
            let stopped = wait_until(&cluster, revision, timeout, "stopping", |c| c.current == 0).await;
            if let Err(error) = stopped {
                tracing::warn!(%app, revision, %error, "a retired revision's instances are slow to stop");
            }
            runner.log_store(
                runner
                    .store
                    .set_revision_state(&app, revision, RevisionState::Retained, None),
            );
            if let Err(error) = runner.prune(&app) {
                tracing::error!(%error, %app, "could not prune old revisions");
            }
        });
    }

    /// Deletes the oldest retained or failed revisions beyond the app's `retained` count.
    pub(super) fn prune(&self, app: &str) -> Result<(), store::StoreError> {
        let Some(row) = self.store.app(app)? else { return Ok(()) };
        let keep = row.spec["lifecycle"]["retained"].as_u64().unwrap_or(10) as usize;
        let mut old: Vec<store::RevisionRow> = self
            .store
            .revisions(app)?
            .into_iter()
            .filter(|r| matches!(r.state, RevisionState::Retained | RevisionState::Failed))
            .collect();
        old.sort_by_key(|r| std::cmp::Reverse(r.number));
        for revision in old.into_iter().skip(keep) {
            self.store.delete_revision(app, revision.number)?;
        }
        Ok(())
    }

    /// Logs a store error that cannot be answered to anyone (the request already returned).
    pub(super) fn log_store(&self, result: Result<(), store::StoreError>) {
        if let Err(error) = result {
            tracing::error!(%error, "could not record a change");
        }
    }

    /// Logs a driver error that cannot be answered to anyone.
    pub(super) fn log_driver(&self, result: Result<(), crate::driver::DriverError>) {
        if let Err(error) = result {
            tracing::error!(%error, "the driver refused a change");
        }
    }
}

impl AppHandle {
    /// Whether the app's route shows the maintenance page now.
    pub(super) fn maintenance(&self) -> bool {
        self.cluster.maintenance()
    }
}

/// Keeps `timeline` taking in `cluster`'s events as they happen, until aborted.
async fn pump(timeline: Timeline, cluster: Cluster) {
    loop {
        let seen = cluster.generation();
        timeline.pump();
        cluster.wait_change(seen, 60_000).await;
    }
}
