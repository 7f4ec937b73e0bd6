//! Lifecycle hooks: Wasm components run at `pre`, `mid`, `post` and `rollback`, each with a
//! timeout and a failure policy the host enforces.
//!
//! The strategy decides *when* a point runs (`lifecycle.run-hook`); the host decides *what
//! a failure means*: `abort` fails the rollout, `retry` runs the hook again with backoff until
//! it succeeds or the rollout's deadline passes, `ignore` records the failure and goes on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bindings::{HookContext, HookPoint, HookStatus};
use crate::engine::Limits;
use crate::events::{EventKind, HookOutcome};
use crate::guest::{self, HookFailure};
use crate::host::RolloutEnv;
use crate::modules::LoadedModule;

/// Runs the app's lifecycle hooks with their failure policies.
#[async_trait]
pub trait HookRunner: Send + Sync {
    /// Runs the hook configured for `point`, if any. An `Err` means the hook failed and its
    /// policy says the rollout must fail.
    async fn run_hook(&self, point: HookPoint, env: &Arc<RolloutEnv>) -> Result<HookStatus, String>;
}

/// A [`HookRunner`] for apps without hooks.
#[derive(Debug, Default)]
pub struct NoHooks;

#[async_trait]
impl HookRunner for NoHooks {
    async fn run_hook(&self, _point: HookPoint, _env: &Arc<RolloutEnv>) -> Result<HookStatus, String> {
        Ok(HookStatus::NotConfigured)
    }
}

/// What a failed hook means for its rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    Abort,
    Retry,
    Ignore,
}

impl From<crate::spec::HookPolicy> for FailurePolicy {
    fn from(policy: crate::spec::HookPolicy) -> Self {
        match policy {
            crate::spec::HookPolicy::Abort => FailurePolicy::Abort,
            crate::spec::HookPolicy::Retry => FailurePolicy::Retry,
            crate::spec::HookPolicy::Ignore => FailurePolicy::Ignore,
        }
    }
}

/// Capabilities a hook or strategy may be granted, and nothing else.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// `exec` in the target revision's environment.
    pub exec: Option<ExecEnv>,
    /// Hosts (`HOST` or `HOST:PORT`) the hook may send HTTP requests to.
    pub http_hosts: Vec<String>,
    /// The Prometheus a strategy may query (`prometheus:URL`): its base URL.
    pub prometheus: Option<String>,
    /// In simulation: what `exec` and outbound HTTP answer instead of running anything.
    pub fakes: Option<Arc<crate::fakes::Fakes>>,
}

/// Where `exec` runs: the target revision's working directory and environment.
#[derive(Clone, Debug)]
pub struct ExecEnv {
    pub env: BTreeMap<String, String>,
    /// Resolved when the command starts, as for an instance.
    pub secret_env: BTreeMap<String, crate::spec::SecretSource>,
    pub workdir: Option<std::path::PathBuf>,
}

/// One configured hook.
#[derive(Clone, Debug)]
pub struct Hook {
    pub module: LoadedModule,
    /// Parameters as JSON.
    pub params: String,
    pub timeout: Duration,
    pub policy: FailurePolicy,
    pub grants: Grants,
}

impl Hook {
    /// `spec`'s hook as a simulation runs it: its parameters, timeout, policy and grants,
    /// `exec` granted with an empty environment (a simulation's calls out are answered by
    /// fakes). An unknown grant is an error naming it.
    pub fn simulated(spec: &crate::spec::Hook, module: LoadedModule) -> Result<Hook, String> {
        let mut grants = Grants::default();
        for text in &spec.grants {
            match crate::spec::grant(text).map_err(|e| format!("grants: {}; {}", e.message, e.hint))? {
                crate::spec::Grant::Exec => {
                    grants.exec = Some(ExecEnv {
                        env: BTreeMap::new(),
                        secret_env: BTreeMap::new(),
                        workdir: None,
                    })
                }
                crate::spec::Grant::Http { host } => grants.http_hosts.push(host),
            }
        }
        Ok(Hook {
            module,
            params: serde_json::Value::Object(spec.params.clone()).to_string(),
            timeout: spec.timeout,
            policy: spec.policy.into(),
            grants,
        })
    }
}

/// The first retry waits this long; each further one doubles it, up to [`MAX_RETRY_BACKOFF`].
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// Hooks as Wasm components.
#[derive(Clone, Debug, Default)]
pub struct WasmHooks {
    pub hooks: BTreeMap<&'static str, Hook>,
    /// Points whose hook already succeeded in this rollout (before a runner restart).
    pub done: Vec<&'static str>,
    pub limits: Limits,
}

/// The WIT name of a hook point.
pub fn point_name(point: HookPoint) -> &'static str {
    match point {
        HookPoint::Pre => "pre",
        HookPoint::Mid => "mid",
        HookPoint::Post => "post",
        HookPoint::Rollback => "rollback",
    }
}

/// The timeline event for a hook run that ended with `result`.
pub fn event(point: HookPoint, result: &Result<HookStatus, String>) -> EventKind {
    let (outcome, message) = match result {
        Ok(HookStatus::NotConfigured) => (HookOutcome::NotConfigured, String::new()),
        Ok(HookStatus::Succeeded) => (HookOutcome::Succeeded, String::new()),
        Ok(HookStatus::FailureIgnored) => (HookOutcome::FailureIgnored, String::new()),
        Err(message) => (HookOutcome::Failed, message.clone()),
    };
    EventKind::Hook {
        point: point_name(point).to_string(),
        outcome,
        message,
    }
}

#[async_trait]
impl HookRunner for WasmHooks {
    async fn run_hook(&self, point: HookPoint, env: &Arc<RolloutEnv>) -> Result<HookStatus, String> {
        let name = point_name(point);
        if self.done.contains(&name) {
            return Ok(HookStatus::Succeeded);
        }
        let Some(hook) = self.hooks.get(name) else {
            return Ok(HookStatus::NotConfigured);
        };
        let mut backoff = RETRY_BACKOFF;
        for attempt in 1.. {
            let ctx = HookContext {
                app: env.app.clone(),
                rollout: env.rollout.clone(),
                point,
                target: env.target,
                active: env.active,
                params: hook.params.clone(),
                attempt,
            };
            let hook_env = Arc::new(env.for_hook(hook.grants.clone()));
            let failure = match guest::run_hook(&hook.module, ctx, hook_env, &self.limits, hook.timeout).await {
                Ok(()) => return Ok(HookStatus::Succeeded),
                Err(HookFailure::Returned(message)) => message,
                Err(HookFailure::Guest(failure)) => failure.to_string(),
            };
            match hook.policy {
                FailurePolicy::Abort => return Err(failure),
                FailurePolicy::Ignore => {
                    env.record(EventKind::Log {
                        level: "warn".into(),
                        message: format!("the {name} hook failed and its policy is ignore: {failure}"),
                    });
                    return Ok(HookStatus::FailureIgnored);
                }
                FailurePolicy::Retry => {
                    if env.remaining_ms() <= backoff.as_millis() as u64 {
                        return Err(format!(
                            "{failure} (retried {attempt} times until the progress deadline)"
                        ));
                    }
                    env.record(EventKind::Log {
                        level: "warn".into(),
                        message: format!(
                            "the {name} hook failed (attempt {attempt}), retrying in {} s: {failure}",
                            backoff.as_secs()
                        ),
                    });
                    env.cluster.sleep_ms(backoff.as_millis() as u64).await;
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        }
        unreachable!("the retry loop returns")
    }
}
