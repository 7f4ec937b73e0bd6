//! Going back: rollback (instant to a kept revision, otherwise a redeploy of its config),
//! redeploy of any retained revision, and retry of a failed one.

use super::deploy::{Ending, RolloutJob};
use super::{DeployAccepted, DeployError, Runner};
use crate::bindings::Revision;
use crate::driver::MAX_WEIGHT;
use crate::events::{EventKind, RolloutOutcome};
use crate::modules::World;
use crate::store::{self, RevisionState, RolloutKind, RolloutState};

/// How long an instant rollback waits for the kept revision to be ready at full size.
const INSTANT_ROLLBACK_WAIT_MS: u64 = 60_000;

impl Runner {
    /// Rolls back to `to` (default: the most recent earlier revision that ran). Instant when
    /// that revision is `keeping` — traffic and capacity return at once, no instance starts,
    /// no new revision; otherwise a redeploy of its config.
    pub async fn rollback(&self, app: &str, to: Option<u32>) -> Result<DeployAccepted, DeployError> {
        let row = self.app_row(app)?;
        let active = row
            .active_revision
            .ok_or_else(|| DeployError::NotPossible(format!("{app} has no running revision to roll back from")))?;
        let revisions = self.store.revisions(app)?;
        let target = match to {
            Some(n) => revisions.iter().find(|r| r.number == n).ok_or_else(|| {
                DeployError::UnknownRevision(format!(
                    "{app} has no revision {n} (it may have been pruned); see `slipway history {app}`"
                ))
            })?,
            None => revisions
                .iter()
                .rev()
                .find(|r| r.number < active && matches!(r.state, RevisionState::Keeping | RevisionState::Retained))
                .ok_or_else(|| {
                    DeployError::NotPossible(format!(
                        "{app} has no earlier revision that ran; nothing to roll back to"
                    ))
                })?,
        };
        if target.number == active {
            return Err(DeployError::NotPossible(format!(
                "revision {active} is already running"
            )));
        }
        let handle = self.existing_handle(app)?;
        let kept = target.state == RevisionState::Keeping
            && handle
                .cluster
                .counts(target.number)
                .map(|c| c.ready > 0)
                .unwrap_or(false);
        if !kept {
            let number = target.number;
            return Ok(match self.redeploy(app, number).await? {
                DeployAccepted::Started {
                    app, revision, rollout, ..
                } => DeployAccepted::Started {
                    note: Some(format!(
                        "revision {number} is no longer kept, so its config is redeployed as revision {revision}"
                    )),
                    app,
                    revision,
                    rollout,
                },
                unchanged => unchanged,
            });
        }

        let claim = self.claim(&handle)?;
        let spec = self.revision_spec(target, &row.spec)?;
        let number = target.number;
        let recorded =
            self.store
                .record_rollout(app, number, RolloutKind::Rollback, &super::rollout_id(app, number))?;
        claim.name(&recorded.rollout);
        self.go_live(&recorded.rollout);
        let runner = self.arc();
        let id = recorded.rollout.clone();
        tokio::spawn(async move {
            let cluster = claim.handle.cluster.clone();
            let timeline = runner.timeline_for(&id, &spec.name, number, spec.replicas, 0);
            timeline.attach(&cluster);
            let log = |message: String| {
                timeline.push(
                    store::now_ms(),
                    EventKind::Log {
                        level: "info".into(),
                        message,
                    },
                    None,
                )
            };
            log(format!(
                "instant rollback from revision {active} to kept revision {number}"
            ));
            let target = Revision {
                number,
                replicas: spec.replicas,
            };
            let outcome = async {
                cluster
                    .scale(number, target.replicas)
                    .await
                    .map_err(|e| e.to_string())?;
                cluster
                    .wait_ready(number, target.replicas, INSTANT_ROLLBACK_WAIT_MS)
                    .await
                    .map_err(|e| e.to_string())?;
                cluster
                    .set_weights(&[(number, MAX_WEIGHT)])
                    .await
                    .map_err(|e| e.to_string())?;
                timeline.push(
                    cluster.now_ms(),
                    EventKind::WeightsChanged {
                        weights: [(number, MAX_WEIGHT)].into(),
                    },
                    Some(cluster.snapshot()),
                );
                crate::rollout::check_end_state(&cluster, target)
            }
            .await;
            timeline.detach();
            let (state, summary) = match &outcome {
                Ok(()) => (
                    RolloutState::Succeeded,
                    format!(
                        "rolled back instantly: revision {number} serves all traffic at {} replicas",
                        target.replicas
                    ),
                ),
                Err(e) => (
                    RolloutState::Failed,
                    format!("instant rollback to revision {number} failed: {e}"),
                ),
            };
            timeline.push(
                store::now_ms(),
                EventKind::RolloutFinished {
                    outcome: if outcome.is_ok() {
                        RolloutOutcome::Succeeded
                    } else {
                        RolloutOutcome::Failed
                    },
                    summary: summary.clone(),
                },
                None,
            );
            runner
                .finish(Ending {
                    app: &spec.name,
                    id: &id,
                    kind: RolloutKind::Rollback,
                    target: number,
                    previous: Some(active),
                    state,
                    summary: &summary,
                    failure: None,
                    spec: &spec,
                    cluster: &cluster,
                })
                .await;
            drop(claim);
        });
        Ok(DeployAccepted::Started {
            app: app.to_string(),
            revision: number,
            rollout: recorded.rollout,
            note: Some(format!("instant rollback to kept revision {number}")),
        })
    }

    /// A new revision from revision `number`'s config, with the strategy and hook modules it
    /// recorded (by digest), through the strategy.
    pub async fn redeploy(&self, app: &str, number: u32) -> Result<DeployAccepted, DeployError> {
        let row = self.app_row(app)?;
        let revision = self.store.revision(app, number)?.ok_or_else(|| {
            DeployError::UnknownRevision(format!(
                "{app} has no revision {number} (it may have been pruned); see `slipway history {app}`"
            ))
        })?;
        self.not_while_rolling(app)?;
        let spec = self.revision_spec(&revision, &row.spec)?;
        self.check_secrets(&spec)?;
        let strategy = self
            .resolve_pinned(&revision.strategy, &revision.strategy_digest, World::Strategy)
            .await?;
        let hooks = self.resolve_hooks(&spec, Some(&revision.hooks)).await?;
        self.start_new_revision(
            spec,
            strategy,
            hooks,
            RolloutKind::Redeploy,
            Some(format!("redeploy of revision {number}")),
        )
        .await
    }

    /// Runs the rollout of the latest revision again, when it failed, without a new revision.
    pub async fn retry(&self, app: &str) -> Result<DeployAccepted, DeployError> {
        let row = self.app_row(app)?;
        let latest = self
            .store
            .latest_revision(app)?
            .ok_or_else(|| DeployError::NotPossible(format!("{app} has no revision yet")))?;
        if latest.state != RevisionState::Failed {
            return Err(DeployError::NotPossible(format!(
                "the latest revision of {app} ({}) is {}, not failed; only a failed revision can be retried",
                latest.number, latest.state
            )));
        }
        let spec = self.revision_spec(&latest, &row.spec)?;
        self.check_secrets(&spec)?;
        let strategy = self
            .resolve_pinned(&latest.strategy, &latest.strategy_digest, World::Strategy)
            .await?;
        let hooks = self.resolve_hooks(&spec, Some(&latest.hooks)).await?;
        let handle = self.app_handle(&spec).await?;
        let claim = self.claim(&handle)?;
        let id = super::rollout_id(app, latest.number);
        let recorded = self.store.record_rollout(app, latest.number, RolloutKind::Retry, &id)?;
        claim.name(&id);
        self.launch(
            RolloutJob {
                id: id.clone(),
                kind: RolloutKind::Retry,
                spec,
                number: latest.number,
                active: recorded.active,
                strategy,
                hooks,
                resumed: false,
                first_seq: 0,
            },
            claim,
        );
        Ok(DeployAccepted::Started {
            app: app.to_string(),
            revision: latest.number,
            rollout: id,
            note: None,
        })
    }
}
