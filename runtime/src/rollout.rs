//! Running one rollout: the strategy guest, then — if it failed — the host's own rollback.
//!
//! **Invariant:** rollback is host code, not guest code. A strategy that traps, spins or lies
//! cannot stop its rollout from being rolled back.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::bindings::{HookPoint, Revision, RolloutContext};
use crate::driver::{Cluster, MAX_WEIGHT};
use crate::engine::Limits;
use crate::events::{Event, EventKind, RolloutOutcome, Timeline};
use crate::failure::{FailureKind, GuestFailure};
use crate::hooks::HookRunner;
use crate::host::{RolloutControl, RolloutEnv};
use crate::modules::LoadedModule;

/// How long an aborted strategy has to return before it is stopped.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Default progress deadline for a whole rollout (as in Kubernetes and Argo Rollouts).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// Everything needed to run one rollout.
#[derive(Clone, Debug)]
pub struct RolloutPlan {
    pub app: String,
    pub rollout: String,
    pub target: Revision,
    pub active: Option<Revision>,
    pub others: Vec<Revision>,
    /// The strategy's parameters as JSON.
    pub params: String,
    pub resumed: bool,
    /// Roll back automatically when the strategy fails.
    pub auto_rollback: bool,
    pub progress_deadline: Duration,
    pub limits: Limits,
    /// Seeds the guest's randomness.
    pub seed: u64,
}

impl RolloutPlan {
    /// A plan with the defaults: automatic rollback, a 600 s deadline, default limits.
    pub fn new(app: &str, rollout: &str, target: Revision, active: Option<Revision>) -> Self {
        RolloutPlan {
            app: app.to_string(),
            rollout: rollout.to_string(),
            target,
            active,
            others: Vec::new(),
            params: "{}".to_string(),
            resumed: false,
            auto_rollback: true,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            limits: Limits::default(),
            seed: 1,
        }
    }
}

/// How a rollout ended.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutReport {
    pub outcome: RolloutOutcome,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<GuestFailure>,
    pub events: Vec<Event>,
}

/// Runs `module` as the strategy of `plan` against `cluster`.
pub async fn run(
    module: &LoadedModule,
    plan: &RolloutPlan,
    cluster: Arc<dyn Cluster>,
    hooks: Arc<dyn HookRunner>,
    timeline: Timeline,
) -> RolloutReport {
    run_controlled(
        module,
        plan,
        cluster,
        hooks,
        timeline,
        Arc::new(RolloutControl::default()),
    )
    .await
}

/// [`run`], steerable by operators through `control` (pause, resume, abort).
pub async fn run_controlled(
    module: &LoadedModule,
    plan: &RolloutPlan,
    cluster: Arc<dyn Cluster>,
    hooks: Arc<dyn HookRunner>,
    timeline: Timeline,
    control: Arc<RolloutControl>,
) -> RolloutReport {
    let started_at_ms = cluster.now_ms();
    let mut revisions = vec![plan.target.number];
    revisions.extend(plan.active.iter().map(|r| r.number));
    revisions.extend(plan.others.iter().map(|r| r.number));
    let env = Arc::new(RolloutEnv {
        app: plan.app.clone(),
        rollout: plan.rollout.clone(),
        cluster: cluster.clone(),
        hooks: hooks.clone(),
        timeline: timeline.clone(),
        revisions,
        started_at_ms,
        deadline_ms: started_at_ms + plan.progress_deadline.as_millis() as u64,
        seed: plan.seed,
        target: plan.target,
        active: plan.active,
        grants: Default::default(),
        control: control.clone(),
    });
    env.record(EventKind::RolloutStarted {
        app: plan.app.clone(),
        rollout: plan.rollout.clone(),
        strategy: module.name.clone(),
        digest: module.digest.clone(),
        from: plan.active.map(|r| r.number),
        to: plan.target.number,
        replicas: plan.target.replicas,
        resumed: plan.resumed,
    });
    let ctx = RolloutContext {
        app: plan.app.clone(),
        rollout: plan.rollout.clone(),
        target: plan.target,
        active: plan.active,
        others: plan.others.clone(),
        params: plan.params.clone(),
        resumed: plan.resumed,
    };
    // The wall-clock backstop: the progress deadline is enforced on the cluster's clock at
    // every host call; this catches a guest stuck where no host call happens.
    let wall_clock = plan.progress_deadline + Duration::from_secs(30);
    let strategy = crate::guest::run_strategy(module, ctx, env.clone(), &plan.limits, wall_clock);
    let result = tokio::select! {
        result = strategy => result,
        () = async {
            // An abort gives the strategy a moment to return `aborted` on its own; then it is
            // dropped, store and all.
            control.aborted().await;
            tokio::time::sleep(ABORT_GRACE).await;
        } => Err(GuestFailure {
            module: module.name.clone(),
            digest: module.digest.clone(),
            kind: FailureKind::Aborted,
            message: "the rollout was aborted by an operator".to_string(),
            stderr_tail: String::new(),
        }),
    };

    let (outcome, summary, failure) = match result {
        Ok(outcome) => (RolloutOutcome::Succeeded, outcome.summary, None),
        Err(failure) => {
            tracing::warn!(app = %plan.app, rollout = %plan.rollout, %failure, "strategy failed");
            env.record(EventKind::StrategyFailed {
                failure: failure.clone(),
            });
            if plan.auto_rollback || control.is_aborted() {
                match roll_back(plan, cluster.as_ref(), hooks.as_ref(), &env).await {
                    Ok(message) => (
                        RolloutOutcome::RolledBack,
                        format!("{}; {message}", failure.message),
                        Some(failure),
                    ),
                    Err(message) => (
                        RolloutOutcome::Failed,
                        format!("{}; rollback failed: {message}", failure.message),
                        Some(failure),
                    ),
                }
            } else {
                let summary = format!(
                    "{}; left as is for inspection (automatic rollback is off)",
                    failure.message
                );
                (RolloutOutcome::Failed, summary, Some(failure))
            }
        }
    };
    env.record(EventKind::RolloutFinished {
        outcome,
        summary: summary.clone(),
    });
    RolloutReport {
        outcome,
        summary,
        failure,
        events: timeline.events(),
    }
}

/// Restores the active revision at full size with all traffic, then removes the target.
/// Capacity comes back before traffic moves, and traffic moves before anything is stopped.
async fn roll_back(
    plan: &RolloutPlan,
    cluster: &dyn Cluster,
    hooks: &dyn HookRunner,
    env: &Arc<RolloutEnv>,
) -> Result<String, String> {
    let target = plan.target.number;
    env.record(EventKind::RollbackStarted {
        to: plan.active.map(|r| r.number),
    });
    let result = async {
        if let Some(active) = plan.active {
            cluster
                .scale(active.number, active.replicas)
                .await
                .map_err(|e| e.to_string())?;
            // Rollback gets its own deadline: the rollout's may already have passed.
            cluster
                .wait_ready(
                    active.number,
                    active.replicas,
                    plan.progress_deadline.as_millis() as u64,
                )
                .await
                .map_err(|e| format!("revision {} did not come back to full size: {e}", active.number))?;
            cluster
                .set_weights(&[(active.number, MAX_WEIGHT)])
                .await
                .map_err(|e| e.to_string())?;
        } else {
            cluster.set_weights(&[]).await.map_err(|e| e.to_string())?;
        }
        cluster.scale(target, 0).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let hook = hooks.run_hook(HookPoint::Rollback, env).await;
    env.record(EventKind::Hook {
        point: "rollback".to_string(),
        status: crate::hooks::describe(&hook),
    });
    let message = match (&result, plan.active) {
        (Ok(()), Some(active)) => format!(
            "rolled back: revision {} serves all traffic at {} replicas",
            active.number, active.replicas
        ),
        (Ok(()), None) => {
            format!("rolled back: revision {target} removed; the app has no revision serving")
        }
        (Err(e), _) => e.clone(),
    };
    env.record(EventKind::RollbackFinished {
        to: plan.active.map(|r| r.number),
        ok: result.is_ok(),
        message: message.clone(),
    });
    result.map(|()| message)
}
