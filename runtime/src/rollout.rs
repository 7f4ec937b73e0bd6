//! Running one rollout: the strategy guest, the host's check of what it left behind, a soak,
//! and — if any of them failed — the host's own rollback.
//!
//! **Invariant:** rollback is host code, not guest code. A strategy that traps, spins or lies
//! cannot stop its rollout from being rolled back.
//!
//! **Invariant:** success is the host's verdict, not the strategy's. A strategy returning
//! `ok` only starts the host's checks: the route must send traffic, every routed revision
//! must have ready instances, and the target must be routed with its spec's replicas ready
//! ([`check_end_state`]); then the target must stay that way, with no instance crashing,
//! for the soak. Anything else fails the rollout, which is rolled back.
//!
//! **Invariant:** the maintenance page a strategy turns on lasts only as long as its rollout:
//! when the rollout ends, either way, maintenance is back to what it was before.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::bindings::{HookPoint, Revision, RolloutContext};
use crate::driver::{Cluster, MAX_WEIGHT};
use crate::engine::Limits;
use crate::events::{Event, EventKind, RolloutOutcome, Timeline};
use crate::failure::{FailureKind, GuestFailure};
use crate::hooks::{Grants, HookRunner};
use crate::host::{RolloutControl, RolloutEnv};
use crate::modules::LoadedModule;
use crate::spec::DEFAULT_SOAK;

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
    /// How long the host watches the target after the strategy succeeds.
    pub soak: Duration,
    pub limits: Limits,
    /// Seeds the guest's randomness.
    pub seed: u64,
    /// What the strategy may reach beyond the host API (`[strategy] grants`).
    pub grants: Grants,
}

impl RolloutPlan {
    /// A plan with the defaults: automatic rollback, a 600 s deadline, a 10 s soak, default
    /// limits.
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
            soak: DEFAULT_SOAK,
            limits: Limits::default(),
            seed: 1,
            grants: Grants::default(),
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
    cluster: Cluster,
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
    cluster: Cluster,
    hooks: Arc<dyn HookRunner>,
    timeline: Timeline,
    control: Arc<RolloutControl>,
) -> RolloutReport {
    let started_at_ms = cluster.now_ms();
    let maintenance_before = cluster.maintenance();
    timeline.attach(&cluster);
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
        grants: plan.grants.clone(),
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
    let host_failure = |kind: FailureKind, message: String| GuestFailure {
        module: module.name.clone(),
        digest: module.digest.clone(),
        kind,
        message,
        stderr_tail: String::new(),
    };
    let result = tokio::select! {
        result = strategy => result,
        () = async {
            // An abort gives the strategy a moment to return `aborted` on its own; then it is
            // dropped, store and all.
            control.aborted().await;
            tokio::time::sleep(ABORT_GRACE).await;
        } => Err(host_failure(FailureKind::Aborted, "the rollout was aborted by an operator".to_string())),
    };
    let result = match result {
        Ok(outcome) => match check_end_state(&cluster, plan.target) {
            Err(problem) => Err(host_failure(
                FailureKind::SuccessCheck,
                format!("the strategy reported success, but {problem}"),
            )),
            Ok(()) => tokio::select! {
                soaked = soak(&cluster, plan, &env) => soaked.map(|()| outcome).map_err(|problem| host_failure(FailureKind::Soak, problem)),
                () = control.aborted() => Err(host_failure(FailureKind::Aborted, "the rollout was aborted by an operator during its soak".to_string())),
            },
        },
        Err(failure) => Err(failure),
    };

    let (outcome, summary, failure) = match result {
        Ok(outcome) => {
            restore_maintenance(&env, maintenance_before).await;
            (RolloutOutcome::Succeeded, outcome.summary, None)
        }
        Err(failure) => {
            tracing::warn!(app = %plan.app, rollout = %plan.rollout, %failure, "strategy failed");
            env.record(EventKind::StrategyFailed {
                failure: failure.clone(),
            });
            if plan.auto_rollback || control.is_aborted() {
                match roll_back(plan, maintenance_before, &cluster, hooks.as_ref(), &env).await {
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
    timeline.detach();
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

/// Checks what a strategy that returned `ok` left behind; `Err` says what is wrong.
///
/// The route must send traffic (some weight above 0), every revision it sends traffic to must
/// have a ready instance, and the target must be routed with at least its spec's replicas
/// ready. A target of 0 replicas is a deliberate scale to zero: nothing is required of it.
pub fn check_end_state(cluster: &Cluster, target: Revision) -> Result<(), String> {
    if target.replicas == 0 {
        return Ok(());
    }
    let weights = cluster.weights();
    let routed: Vec<(u32, u32)> = weights.into_iter().filter(|(_, w)| *w > 0).collect();
    if routed.is_empty() {
        return Err("the route sends no traffic anywhere (every weight is 0): the app would answer 503".into());
    }
    for (revision, weight) in &routed {
        let ready = cluster.counts(*revision).map(|c| c.ready).unwrap_or(0);
        if ready == 0 {
            return Err(format!(
                "revision {revision} has weight {weight} but no ready instance: its share of requests would fail"
            ));
        }
    }
    if !routed.iter().any(|(revision, _)| *revision == target.number) {
        return Err(format!("revision {} receives no traffic", target.number));
    }
    let ready = cluster.counts(target.number).map(|c| c.ready).unwrap_or(0);
    if ready < target.replicas {
        return Err(format!(
            "revision {} has {ready} of its {} replicas ready",
            target.number, target.replicas
        ));
    }
    Ok(())
}

/// Watches the target for the plan's soak: every replica must stay ready and none may crash.
/// Waits on the cluster's changes, so a failure ends the soak at once.
async fn soak(cluster: &Cluster, plan: &RolloutPlan, env: &RolloutEnv) -> Result<(), String> {
    let target = plan.target;
    if plan.soak.is_zero() || target.replicas == 0 {
        return Ok(());
    }
    let soak_ms = plan.soak.as_millis() as u64;
    let start = cluster.now_ms();
    let failed_before = cluster.counts(target.number).map(|c| c.failed).unwrap_or(0);
    env.record(EventKind::Log {
        level: "info".into(),
        message: format!(
            "soak: watching revision {} for {} before calling the rollout a success",
            target.number,
            crate::spec::duration::format(plan.soak)
        ),
    });
    loop {
        let seen = cluster.generation();
        let counts = cluster
            .counts(target.number)
            .map_err(|e| format!("soak: revision {} could not be observed: {e}", target.number))?;
        let elapsed = cluster.now_ms().saturating_sub(start);
        if counts.failed > failed_before {
            return Err(format!(
                "revision {} lost {} instance(s) to crashes {:.1} s into its {} soak",
                target.number,
                counts.failed - failed_before,
                elapsed as f64 / 1000.0,
                crate::spec::duration::format(plan.soak)
            ));
        }
        if counts.ready < target.replicas {
            return Err(format!(
                "revision {} fell to {} of {} replicas ready {:.1} s into its {} soak",
                target.number,
                counts.ready,
                target.replicas,
                elapsed as f64 / 1000.0,
                crate::spec::duration::format(plan.soak)
            ));
        }
        if elapsed >= soak_ms {
            return Ok(());
        }
        cluster.wait_change(seen, soak_ms - elapsed).await;
    }
}

/// Puts maintenance back to what it was before the rollout, if the strategy changed it.
async fn restore_maintenance(env: &RolloutEnv, before: bool) {
    if env.cluster.maintenance() != before
        && let Err(error) = env.set_maintenance(before).await
    {
        tracing::warn!(%error, "could not restore the maintenance state");
    }
}

/// Restores the active revision at full size with all traffic, then removes the target.
/// Capacity comes back before traffic moves, and traffic moves before anything is stopped.
/// Maintenance goes back to what it was before the rollout.
async fn roll_back(
    plan: &RolloutPlan,
    maintenance_before: bool,
    cluster: &Cluster,
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
            env.set_weights(&[(active.number, MAX_WEIGHT)])
                .await
                .map_err(|e| e.to_string())?;
        } else {
            env.set_weights(&[]).await.map_err(|e| e.to_string())?;
        }
        cluster.scale(target, 0).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    restore_maintenance(env, maintenance_before).await;
    let hook = hooks.run_hook(HookPoint::Rollback, env).await;
    env.record(crate::hooks::event(HookPoint::Rollback, &hook));
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
