//! The runner behind `slipway serve`: it owns the apps, turns spec changes into revisions
//! and rollouts, runs the operations (rollback, redeploy, retry, pause, resume, abort, scale,
//! route, maintenance), keeps history in the store, and recovers after a crash.
//!
//! Revision lifecycle (the Webscale states):
//!
//! ```text
//!  creating ──▶ verifying ──▶ running ──▶ keeping ──(destroy delay)──▶ destroying ──▶ retained
//!      │            │                        │  ▲                                        │
//!      └────────────┴──▶ failed               └──┘ instant rollback                      └─ pruned beyond
//!                                                                                           `retained`
//! ```
//!
//! **Invariant:** one rollout per app at a time; a second request gets a conflict naming the
//! running one. **Invariant:** a revision and its rollout are recorded before any instance of
//! it starts, and every rollout event is stored as it happens.
//!
//! **Crash recovery rule:** on start, every app's last running revision is brought back at
//! full size with all traffic (its instances died with the previous runner: children get
//! SIGTERM when the runner dies, so none is left orphaned). Then each interrupted rollout is
//! resumed with `resumed = true`; hooks that already succeeded in it are not run again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::bindings::Revision;
use crate::driver::compute::process::{ProcessConfig, ProcessDriver};
use crate::driver::router::builtin::BuiltinRouter;
use crate::driver::{Cluster, MAX_WEIGHT, validate_weights};
use crate::engine::Limits;
use crate::events::{Event, EventKind, RolloutOutcome, Timeline};
use crate::hooks::{ExecEnv, FailurePolicy, Grants, Hook, WasmHooks};
use crate::host::RolloutControl;
use crate::modules::{LoadError, LoadedModule, ModuleLoader, World};
use crate::probe::ProbeCheck;
use crate::rollout::{self, RolloutPlan};
use crate::spec::{self, HookPolicy, ModuleRef, Spec};
use crate::store::{self, ModuleRow, RevisionRow, Store, rollout_state, state};

/// Why a request was refused. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The spec is invalid.
    #[error("{0}")]
    InvalidSpec(String),
    /// No such app.
    #[error("there is no app named {0:?}; create it with PUT /v1/apps/{0} (or `slipway deploy`)")]
    UnknownApp(String),
    /// No such revision of the app.
    #[error("{0}")]
    UnknownRevision(String),
    /// The spec names a module that was never uploaded.
    #[error("{0}")]
    UnknownModule(String),
    /// The module exists but cannot be used as asked.
    #[error("{0}")]
    BadModule(String),
    /// Another rollout of the app is running.
    #[error("rollout {rollout} of {app} is still running; wait for it to finish (or abort it) and try again")]
    Conflict { app: String, rollout: String },
    /// No such rollout.
    #[error("there is no running or recorded rollout {0:?}")]
    UnknownRollout(String),
    /// The request is valid but cannot be done in this state.
    #[error("{0}")]
    NotPossible(String),
    /// Something on our side failed; details are in the runner's log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<anyhow::Error> for DeployError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "internal error");
        DeployError::Internal("the runner could not complete the request; see its log".into())
    }
}

/// What a request started.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum DeployAccepted {
    /// A rollout started (of a new revision, or of an existing one for retry and rollback).
    Started {
        app: String,
        revision: u32,
        rollout: String,
        /// What the runner decided, when it is not obvious from the request.
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The spec equals the latest revision's: nothing to deploy (app settings such as the
    /// destroy delay were updated if they changed).
    Unchanged { app: String, revision: u32 },
}

/// Settings of the runner itself.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
}

/// An event as delivered to followers, with its sequence number within the rollout.
#[derive(Clone, Debug, Serialize)]
pub struct Numbered {
    pub seq: u64,
    pub event: Event,
}

pub struct Runner {
    store: Store,
    loader: ModuleLoader,
    modules_dir: cap_std::fs::Dir,
    limits: Limits,
    apps: Mutex<HashMap<String, Arc<AppHandle>>>,
    live: Mutex<HashMap<String, LiveRollout>>,
    loaded: Mutex<HashMap<String, LoadedModule>>,
    this: Weak<Runner>,
}

struct LiveRollout {
    sender: broadcast::Sender<Numbered>,
    control: Arc<RolloutControl>,
}

struct AppHandle {
    driver: Arc<ProcessDriver>,
    listen: SocketAddr,
    /// The running rollout's id; claimed before anything is recorded.
    rollout: Mutex<Option<String>>,
}

/// Everything needed to run one rollout of one revision.
struct RolloutJob {
    id: String,
    spec: Spec,
    number: u32,
    active: Option<u32>,
    strategy: LoadedModule,
    hooks: WasmHooks,
    resumed: bool,
    first_seq: u64,
}

impl Runner {
    /// Opens (or creates) the data directory, restores every app's running revision and
    /// resumes interrupted rollouts.
    pub async fn start(config: RunnerConfig, loader: ModuleLoader) -> anyhow::Result<Arc<Runner>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let data = cap_std::fs::Dir::open_ambient_dir(&config.data_dir, cap_std::ambient_authority())?;
        data.create_dir_all("modules")?;
        let modules_dir = data.open_dir("modules")?;
        let store = Store::open(&config.data_dir.join("slipway.db"))?;
        let runner = Arc::new_cyclic(|this| Runner {
            store,
            loader,
            modules_dir,
            limits: config.limits.clone(),
            apps: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            this: this.clone(),
        });
        runner.restore().await?;
        Ok(runner)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn arc(&self) -> Arc<Runner> {
        self.this.upgrade().expect("the runner is alive while it serves")
    }

    async fn restore(&self) -> anyhow::Result<()> {
        let unfinished = self.store.unfinished_rollouts()?;
        for app in self.store.apps()? {
            for revision in self.store.revisions(&app.name)? {
                // Kept instances died with the previous runner: their revisions are retained.
                if matches!(revision.state.as_str(), state::KEEPING | state::DESTROYING) {
                    self.store
                        .set_revision_state(&app.name, revision.number, state::RETAINED, None)?;
                }
            }
            let Some(active) = app.active_revision else { continue };
            let Some(revision) = self.store.revision(&app.name, active)? else {
                continue;
            };
            let spec = self.revision_spec(&revision, &app.spec)?;
            let handle = self.app_handle(&spec).await?;
            handle.driver.add_revision(active, process_config(&spec));
            let weights = route_of(&app.route).unwrap_or_else(|| vec![(active, MAX_WEIGHT)]);
            handle.driver.set_weights(&weights).await?;
            handle.driver.set_maintenance(app.maintenance).await?;
            handle.driver.scale(active, app.scale.unwrap_or(spec.replicas)).await?;
            tracing::info!(app = %app.name, revision = active, "restored the running revision");
        }
        for rollout in unfinished {
            if let Err(error) = self.resume(&rollout).await {
                let reason = format!("could not resume after a runner restart: {error}");
                tracing::warn!(rollout = %rollout.id, %reason);
                self.store
                    .finish_rollout(&rollout.id, rollout_state::FAILED, &reason, None)?;
                self.store
                    .set_revision_state(&rollout.app, rollout.target, state::FAILED, Some(&reason))?;
            }
        }
        Ok(())
    }

    async fn resume(&self, rollout: &store::RolloutRow) -> Result<(), DeployError> {
        let app = self
            .store
            .app(&rollout.app)?
            .ok_or_else(|| DeployError::UnknownApp(rollout.app.clone()))?;
        let revision = self
            .store
            .revision(&rollout.app, rollout.target)?
            .ok_or_else(|| DeployError::UnknownRevision(format!("revision {} is gone", rollout.target)))?;
        if rollout.kind == "rollback" {
            // An instant rollback has no strategy to resume; the restored revision stands.
            self.store.finish_rollout(
                &rollout.id,
                rollout_state::FAILED,
                "interrupted by a runner restart",
                None,
            )?;
            return Ok(());
        }
        let spec = self.revision_spec(&revision, &app.spec)?;
        let strategy = self
            .resolve_pinned(&revision.strategy, &revision.strategy_digest, World::Strategy)
            .await?;
        let mut hooks = self.resolve_hooks(&spec, Some(&revision.hooks)).await?;
        let stored = self.store.events(&rollout.id)?;
        for (point, _) in spec.hooks.iter() {
            let succeeded = stored
                .iter()
                .any(|e| e["event"] == "hook" && e["point"] == point && e["status"] == "succeeded");
            if succeeded {
                hooks.hooks.remove(point);
                hooks.done.push(point);
            }
        }
        let handle = self.app_handle(&spec).await?;
        self.claim(&handle, &spec.name)?;
        *handle.rollout.lock().unwrap() = Some(rollout.id.clone());
        self.launch(
            RolloutJob {
                id: rollout.id.clone(),
                spec,
                number: rollout.target,
                active: app.active_revision.filter(|a| *a != rollout.target),
                strategy,
                hooks,
                resumed: true,
                first_seq: stored.len() as u64,
            },
            handle,
        );
        Ok(())
    }

    /// Stops every instance and router; waits for them.
    pub async fn shutdown(&self) {
        let apps: Vec<Arc<AppHandle>> = self.apps.lock().unwrap().drain().map(|(_, a)| a).collect();
        futures_util::future::join_all(apps.iter().map(|app| app.driver.stop_all())).await;
    }

    async fn app_handle(&self, spec: &Spec) -> Result<Arc<AppHandle>, DeployError> {
        if let Some(handle) = self.apps.lock().unwrap().get(&spec.name) {
            if handle.listen != spec.listen {
                return Err(DeployError::InvalidSpec(format!(
                    "listen: {} is bound to {}; the listen address of an existing app cannot change",
                    spec.name, handle.listen
                )));
            }
            return Ok(handle.clone());
        }
        let router = BuiltinRouter::bind(&spec.name, spec.listen)
            .await
            .map_err(|e| DeployError::InvalidSpec(format!("listen: cannot listen on {}: {e}", spec.listen)))?;
        let handle = Arc::new(AppHandle {
            driver: ProcessDriver::new(&spec.name, Arc::new(router)),
            listen: spec.listen,
            rollout: Mutex::new(None),
        });
        let mut apps = self.apps.lock().unwrap();
        Ok(apps.entry(spec.name.clone()).or_insert(handle).clone())
    }

    fn existing_handle(&self, app: &str) -> Result<Arc<AppHandle>, DeployError> {
        self.apps
            .lock()
            .unwrap()
            .get(app)
            .cloned()
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))
    }

    /// Claims the app for one rollout, so two requests racing cannot both start one.
    fn claim(&self, handle: &AppHandle, app: &str) -> Result<(), DeployError> {
        let mut rollout = handle.rollout.lock().unwrap();
        if let Some(running) = rollout.as_ref() {
            return Err(DeployError::Conflict {
                app: app.to_string(),
                rollout: running.clone(),
            });
        }
        *rollout = Some("starting".to_string());
        Ok(())
    }

    /// Records `spec` as the app's desired state: a new revision and its rollout, unless it
    /// equals the latest revision (settings such as the destroy delay change no revision).
    pub async fn deploy(&self, spec: Spec) -> Result<DeployAccepted, DeployError> {
        spec::validate(&spec).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let digest = revision_digest(&spec);
        if let Some(latest) = self.store.latest_revision(&spec.name)?
            && latest.spec_digest == digest
        {
            self.store.upsert_app(&spec.name, &spec.to_json())?;
            self.prune(&spec.name)?;
            return Ok(DeployAccepted::Unchanged {
                app: spec.name.clone(),
                revision: latest.number,
            });
        }
        if let Some(running) = self.running_rollout(&spec.name) {
            return Err(DeployError::Conflict {
                app: spec.name.clone(),
                rollout: running,
            });
        }
        let strategy = self.resolve(&spec.strategy.module, World::Strategy).await?;
        let hooks = self.resolve_hooks(&spec, None).await?;
        self.start_new_revision(spec, strategy, hooks, "deploy", None).await
    }

    async fn start_new_revision(
        &self,
        spec: Spec,
        strategy: LoadedModule,
        hooks: WasmHooks,
        kind: &'static str,
        reason: Option<String>,
    ) -> Result<DeployAccepted, DeployError> {
        let handle = self.app_handle(&spec).await?;
        self.claim(&handle, &spec.name)?;
        let recorded = (|| {
            self.store.upsert_app(&spec.name, &spec.to_json())?;
            let revision_spec = revision_spec_json(&spec);
            let number = self.store.create_revision(
                &spec.name,
                &revision_spec,
                &revision_digest(&spec),
                &strategy.name,
                &strategy.digest,
                &hooks.digests(),
            )?;
            if let Some(reason) = &reason {
                self.store
                    .set_revision_state(&spec.name, number, state::CREATING, Some(reason))?;
            }
            let active = self.store.app(&spec.name)?.and_then(|a| a.active_revision);
            let id = rollout_id(&spec.name, number);
            self.store.create_rollout(&id, &spec.name, number, active, kind)?;
            Ok::<_, anyhow::Error>((number, active, id))
        })();
        let (number, active, id) = match recorded {
            Ok(recorded) => recorded,
            Err(error) => {
                *handle.rollout.lock().unwrap() = None;
                return Err(error.into());
            }
        };
        *handle.rollout.lock().unwrap() = Some(id.clone());
        let app = spec.name.clone();
        self.launch(
            RolloutJob {
                id: id.clone(),
                spec,
                number,
                active,
                strategy,
                hooks,
                resumed: false,
                first_seq: 0,
            },
            handle,
        );
        Ok(DeployAccepted::Started {
            app,
            revision: number,
            rollout: id,
            note: None,
        })
    }

    fn launch(&self, job: RolloutJob, handle: Arc<AppHandle>) {
        let control = Arc::new(RolloutControl::default());
        let (sender, _) = broadcast::channel(1024);
        self.live.lock().unwrap().insert(
            job.id.clone(),
            LiveRollout {
                sender,
                control: control.clone(),
            },
        );
        let runner = self.arc();
        tokio::spawn(async move { runner.run_rollout(job, handle, control).await });
    }

    async fn run_rollout(self: Arc<Self>, job: RolloutJob, handle: Arc<AppHandle>, control: Arc<RolloutControl>) {
        let RolloutJob {
            id,
            spec,
            number,
            active,
            strategy,
            hooks,
            resumed,
            first_seq,
            ..
        } = job;
        let app = spec.name.clone();
        let driver = handle.driver.clone();
        driver.add_revision(number, process_config(&spec));
        let _ = self.store.set_revision_state(&app, number, state::CREATING, None);
        let active_revision = active.and_then(|n| {
            let row = self.store.revision(&app, n).ok()??;
            Some(Revision {
                number: n,
                replicas: row.spec.get("replicas")?.as_u64()? as u32,
            })
        });
        let others: Vec<Revision> = driver
            .revisions_with_instances()
            .into_iter()
            .filter(|r| *r != number && Some(*r) != active)
            .map(|r| Revision { number: r, replicas: 0 })
            .collect();
        let timeline = self.timeline_for(&id, &app, number, spec.replicas, first_seq);
        driver.set_timeline(Some(timeline.clone()));
        if spec.lifecycle.maintenance_during_deploy {
            let _ = driver.set_maintenance(true).await;
            let _ = self.store.set_maintenance(&app, true);
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
        plan.limits = self.limits.clone();
        plan.seed = store::now_ms();
        plan.resumed = resumed;
        let hooks = WasmHooks {
            limits: self.limits.clone(),
            ..hooks
        };
        let report = rollout::run_controlled(
            &strategy,
            &plan,
            driver.clone(),
            Arc::new(hooks),
            timeline,
            control.clone(),
        )
        .await;
        driver.set_timeline(None);

        let failure = report
            .failure
            .as_ref()
            .map(|f| serde_json::to_value(f).unwrap_or_default());
        let result = match report.outcome {
            RolloutOutcome::Succeeded => {
                let _ = self.store.set_revision_state(&app, number, state::RUNNING, None);
                let _ = self.store.set_active(&app, Some(number));
                let _ = self.store.set_route(&app, None);
                let _ = self.store.set_scale(&app, None);
                if spec.lifecycle.maintenance_during_deploy {
                    let _ = driver.set_maintenance(false).await;
                    let _ = self.store.set_maintenance(&app, false);
                }
                if let Some(old) = active {
                    self.retire(&app, old, spec.lifecycle.destroy_delay, driver.clone());
                }
                self.store
                    .finish_rollout(&id, rollout_state::SUCCEEDED, &report.summary, None)
            }
            outcome => {
                let state_name = if control.is_aborted() {
                    rollout_state::ABORTED
                } else if outcome == RolloutOutcome::RolledBack {
                    rollout_state::ROLLED_BACK
                } else {
                    rollout_state::FAILED
                };
                let _ = self
                    .store
                    .set_revision_state(&app, number, state::FAILED, Some(&report.summary));
                self.store
                    .finish_rollout(&id, state_name, &report.summary, failure.as_ref())
            }
        };
        if let Err(error) = result.and_then(|()| self.prune(&app)) {
            tracing::error!(error = %format!("{error:#}"), rollout = %id, "could not record the end of a rollout");
        }
        self.live.lock().unwrap().remove(&id);
        *handle.rollout.lock().unwrap() = None;
    }

    /// A timeline that stores every event and hands it to followers, numbering after
    /// `first_seq` (events already stored by a previous runner).
    fn timeline_for(&self, id: &str, app: &str, number: u32, replicas: u32, first_seq: u64) -> Timeline {
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
                if checks_target && !verifying.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = store.set_revision_state(&app, number, state::VERIFYING, None);
                }
                if let Some(sender) = &sender {
                    let _ = sender.send(Numbered {
                        seq,
                        event: event.clone(),
                    });
                }
            }),
        )
    }

    /// Keeps the replaced revision for the destroy delay (when it still has instances), then
    /// stops them and keeps its config: `keeping` → `destroying` → `retained`.
    fn retire(&self, app: &str, revision: u32, destroy_delay: Duration, driver: Arc<ProcessDriver>) {
        let has_instances = driver.counts(revision).map(|c| c.current > 0).unwrap_or(false);
        if !has_instances {
            let _ = self.store.set_revision_state(app, revision, state::RETAINED, None);
            return;
        }
        let _ = self.store.set_revision_state(app, revision, state::KEEPING, None);
        let runner = self.arc();
        let app = app.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(destroy_delay).await;
            let still_keeping = runner
                .store
                .revision(&app, revision)
                .ok()
                .flatten()
                .is_some_and(|r| r.state == state::KEEPING);
            if still_keeping {
                let _ = runner.store.set_revision_state(&app, revision, state::DESTROYING, None);
                let _ = driver.scale(revision, 0).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while driver.counts(revision).map(|c| c.current > 0).unwrap_or(false)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = runner.store.set_revision_state(&app, revision, state::RETAINED, None);
                let _ = runner.prune(&app);
            }
        });
    }

    /// Deletes the oldest retained or failed revisions beyond the app's `retained` count.
    fn prune(&self, app: &str) -> anyhow::Result<()> {
        let Some(row) = self.store.app(app)? else { return Ok(()) };
        let keep = row.spec["lifecycle"]["retained"].as_u64().unwrap_or(10) as usize;
        let mut old: Vec<RevisionRow> = self
            .store
            .revisions(app)?
            .into_iter()
            .filter(|r| r.state == state::RETAINED || r.state == state::FAILED)
            .collect();
        old.sort_by_key(|r| std::cmp::Reverse(r.number));
        for revision in old.into_iter().skip(keep) {
            self.store.delete_revision(app, revision.number)?;
        }
        Ok(())
    }

    /// Applies a JSON merge patch to the app's current spec and deploys the result.
    pub async fn patch(&self, app: &str, patch: &serde_json::Value) -> Result<DeployAccepted, DeployError> {
        let row = self
            .store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        let current = spec::parse_json(row.spec).map_err(|e| DeployError::Internal(e.to_string()))?;
        let next = spec::merge_patch(&current, patch).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        if next.name != app {
            return Err(DeployError::InvalidSpec(format!("name: a PATCH cannot rename {app:?}")));
        }
        self.deploy(next).await
    }

    /// Rolls back to `to` (default: the most recent earlier revision that ran). Instant when
    /// that revision is `keeping` — traffic and capacity return at once, no instance starts,
    /// no new revision; otherwise a redeploy of its config.
    pub async fn rollback(&self, app: &str, to: Option<u32>) -> Result<DeployAccepted, DeployError> {
        let row = self
            .store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
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
                .find(|r| r.number < active && matches!(r.state.as_str(), state::KEEPING | state::RETAINED))
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
        let kept = target.state == state::KEEPING
            && handle
                .driver
                .counts(target.number)
                .map(|c| c.ready > 0)
                .unwrap_or(false);
        if !kept {
            let started = self.redeploy(app, target.number).await?;
            return Ok(match started {
                DeployAccepted::Started {
                    app, revision, rollout, ..
                } => DeployAccepted::Started {
                    note: Some(format!(
                        "revision {} is no longer kept, so its config is redeployed as revision {revision}",
                        target.number
                    )),
                    app,
                    revision,
                    rollout,
                },
                unchanged => unchanged,
            });
        }
        self.claim(&handle, app)?;
        let id = rollout_id(app, target.number);
        let result = self
            .store
            .create_rollout(&id, app, target.number, Some(active), "rollback");
        if let Err(error) = result {
            *handle.rollout.lock().unwrap() = None;
            return Err(error.into());
        }
        *handle.rollout.lock().unwrap() = Some(id.clone());
        let (sender, _) = broadcast::channel(1024);
        self.live.lock().unwrap().insert(
            id.clone(),
            LiveRollout {
                sender,
                control: Arc::new(RolloutControl::default()),
            },
        );
        let replicas = target.spec["replicas"].as_u64().unwrap_or(1) as u32;
        let number = target.number;
        let runner = self.arc();
        let destroy_delay = spec::parse_json(row.spec)
            .map(|s| s.lifecycle.destroy_delay)
            .unwrap_or_default();
        let timeline = self.timeline_for(&id, app, number, replicas, 0);
        let app_name = app.to_string();
        let rollout = id.clone();
        tokio::spawn(async move {
            let driver = handle.driver.clone();
            driver.set_timeline(Some(timeline.clone()));
            timeline.push(
                store::now_ms(),
                EventKind::Log {
                    level: "info".into(),
                    message: format!("instant rollback from revision {active} to kept revision {number}"),
                },
                None,
            );
            let outcome = async {
                driver.scale(number, replicas).await.map_err(|e| e.to_string())?;
                driver
                    .wait_ready(number, replicas, 60_000)
                    .await
                    .map_err(|e| e.to_string())?;
                driver
                    .set_weights(&[(number, MAX_WEIGHT)])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
            .await;
            driver.set_timeline(None);
            let (state_name, summary) = match &outcome {
                Ok(()) => {
                    let _ = runner.store.set_revision_state(&app_name, number, state::RUNNING, None);
                    let _ = runner.store.set_active(&app_name, Some(number));
                    let _ = runner.store.set_route(&app_name, None);
                    runner.retire(&app_name, active, destroy_delay, driver.clone());
                    (
                        rollout_state::SUCCEEDED,
                        format!("rolled back instantly: revision {number} serves all traffic at {replicas} replicas"),
                    )
                }
                Err(e) => (
                    rollout_state::FAILED,
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
            let _ = runner.store.finish_rollout(&rollout, state_name, &summary, None);
            runner.live.lock().unwrap().remove(&rollout);
            *handle.rollout.lock().unwrap() = None;
        });
        Ok(DeployAccepted::Started {
            app: app.to_string(),
            revision: target.number,
            rollout: id,
            note: Some(format!("instant rollback to kept revision {}", target.number)),
        })
    }

    /// A new revision from revision `number`'s config, with the strategy and hook modules it
    /// recorded (by digest), through the strategy.
    pub async fn redeploy(&self, app: &str, number: u32) -> Result<DeployAccepted, DeployError> {
        let row = self
            .store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        let revision = self.store.revision(app, number)?.ok_or_else(|| {
            DeployError::UnknownRevision(format!(
                "{app} has no revision {number} (it may have been pruned); see `slipway history {app}`"
            ))
        })?;
        if let Some(running) = self.running_rollout(app) {
            return Err(DeployError::Conflict {
                app: app.to_string(),
                rollout: running,
            });
        }
        let spec = self.revision_spec(&revision, &row.spec)?;
        let strategy = self
            .resolve_pinned(&revision.strategy, &revision.strategy_digest, World::Strategy)
            .await?;
        let hooks = self.resolve_hooks(&spec, Some(&revision.hooks)).await?;
        self.start_new_revision(
            spec,
            strategy,
            hooks,
            "redeploy",
            Some(format!("redeploy of revision {number}")),
        )
        .await
    }

    /// Runs the rollout of the latest revision again, when it failed, without a new revision.
    pub async fn retry(&self, app: &str) -> Result<DeployAccepted, DeployError> {
        let row = self
            .store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        let latest = self
            .store
            .latest_revision(app)?
            .ok_or_else(|| DeployError::NotPossible(format!("{app} has no revision yet")))?;
        if latest.state != state::FAILED {
            return Err(DeployError::NotPossible(format!(
                "the latest revision of {app} ({}) is {}, not failed; only a failed revision can be retried",
                latest.number, latest.state
            )));
        }
        let spec = self.revision_spec(&latest, &row.spec)?;
        let strategy = self
            .resolve_pinned(&latest.strategy, &latest.strategy_digest, World::Strategy)
            .await?;
        let hooks = self.resolve_hooks(&spec, Some(&latest.hooks)).await?;
        let handle = self.app_handle(&spec).await?;
        self.claim(&handle, app)?;
        let id = rollout_id(app, latest.number);
        if let Err(error) = self
            .store
            .create_rollout(&id, app, latest.number, row.active_revision, "retry")
        {
            *handle.rollout.lock().unwrap() = None;
            return Err(error.into());
        }
        *handle.rollout.lock().unwrap() = Some(id.clone());
        let job = RolloutJob {
            id: id.clone(),
            spec,
            number: latest.number,
            active: row.active_revision,
            strategy,
            hooks,
            resumed: false,
            first_seq: 0,
        };
        self.launch(job, handle);
        Ok(DeployAccepted::Started {
            app: app.to_string(),
            revision: latest.number,
            rollout: id,
            note: None,
        })
    }

    /// Pauses, resumes or aborts a running rollout.
    pub fn steer(&self, rollout: &str, action: &str) -> Result<serde_json::Value, DeployError> {
        let control = self
            .live
            .lock()
            .unwrap()
            .get(rollout)
            .map(|l| l.control.clone())
            .ok_or_else(|| match self.store.rollout(rollout) {
                Ok(Some(row)) => DeployError::NotPossible(format!("rollout {rollout} is {}, not running", row.state)),
                _ => DeployError::UnknownRollout(rollout.to_string()),
            })?;
        let now = store::now_ms();
        let changed = match action {
            "pause" => control.pause(now),
            "resume" => control.resume(now),
            "abort" => {
                control.abort();
                true
            }
            other => {
                return Err(DeployError::NotPossible(format!(
                    "unknown action {other:?}; use pause, resume or abort"
                )));
            }
        };
        Ok(
            serde_json::json!({ "rollout": rollout, "action": action, "changed": changed, "paused": control.is_paused(), "aborted": control.is_aborted() }),
        )
    }

    /// Scales the app's running revision by hand (no new revision).
    pub async fn scale(&self, app: &str, replicas: u32) -> Result<serde_json::Value, DeployError> {
        if replicas > spec::MAX_REPLICAS {
            return Err(DeployError::InvalidSpec(format!(
                "replicas: {replicas} is over the limit of {}",
                spec::MAX_REPLICAS
            )));
        }
        let row = self
            .store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        let active = row
            .active_revision
            .ok_or_else(|| DeployError::NotPossible(format!("{app} has no running revision to scale")))?;
        if let Some(running) = self.running_rollout(app) {
            return Err(DeployError::Conflict {
                app: app.to_string(),
                rollout: running,
            });
        }
        self.store.set_scale(app, Some(replicas))?;
        self.existing_handle(app)?
            .driver
            .scale(active, replicas)
            .await
            .map_err(|e| DeployError::NotPossible(e.to_string()))?;
        Ok(serde_json::json!({ "app": app, "revision": active, "replicas": replicas }))
    }

    /// Sets route weights by hand: A/B across up to four revisions, 0–256 each.
    pub async fn route(&self, app: &str, weights: &BTreeMap<u32, u32>) -> Result<serde_json::Value, DeployError> {
        self.store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        if let Some(running) = self.running_rollout(app) {
            return Err(DeployError::Conflict {
                app: app.to_string(),
                rollout: running,
            });
        }
        let pairs: Vec<(u32, u32)> = weights.iter().map(|(r, w)| (*r, *w)).collect();
        validate_weights(&pairs).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let handle = self.existing_handle(app)?;
        for (revision, weight) in &pairs {
            let serving = handle.driver.counts(*revision).map(|c| c.ready > 0).unwrap_or(false);
            if *weight > 0 && !serving {
                return Err(DeployError::NotPossible(format!(
                    "revision {revision} has no ready instance to send traffic to; roll back or redeploy it first"
                )));
            }
        }
        handle
            .driver
            .set_weights(&pairs)
            .await
            .map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        self.store
            .set_route(app, Some(&serde_json::to_value(weights).unwrap_or_default()))?;
        Ok(serde_json::json!({ "app": app, "weights": weights }))
    }

    /// Turns the app's maintenance page on or off.
    pub async fn maintenance(&self, app: &str, on: bool) -> Result<serde_json::Value, DeployError> {
        self.store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))?;
        self.store.set_maintenance(app, on)?;
        if let Ok(handle) = self.existing_handle(app) {
            let _ = handle.driver.set_maintenance(on).await;
        }
        Ok(serde_json::json!({ "app": app, "maintenance": on }))
    }

    pub fn running_rollout(&self, app: &str) -> Option<String> {
        self.apps
            .lock()
            .unwrap()
            .get(app)
            .and_then(|h| h.rollout.lock().unwrap().clone())
    }

    /// The stored events of a rollout and, while it runs, a receiver for the next ones.
    pub fn follow(
        &self,
        rollout: &str,
    ) -> Result<(Vec<serde_json::Value>, Option<broadcast::Receiver<Numbered>>), DeployError> {
        self.store
            .rollout(rollout)?
            .ok_or_else(|| DeployError::UnknownRollout(rollout.to_string()))?;
        // Subscribe before reading, so no event falls between the two.
        let receiver = self.live.lock().unwrap().get(rollout).map(|l| l.sender.subscribe());
        let stored = self.store.events(rollout)?;
        Ok((stored, receiver))
    }

    /// The instances of an app now, per revision.
    pub fn app_state(&self, app: &str) -> Option<serde_json::Value> {
        let handle = self.apps.lock().unwrap().get(app).cloned()?;
        Some(serde_json::json!({
            "listen": handle.listen,
            "maintenance": handle.driver.maintenance(),
            "revisions": handle.driver.snapshot(),
        }))
    }

    /// Validates and stores an uploaded component under `name`.
    pub async fn upload_module(&self, name: &str, bytes: Vec<u8>) -> Result<ModuleRow, DeployError> {
        validate_module_name(name).map_err(DeployError::BadModule)?;
        let size = bytes.len() as u64;
        let module = self
            .loader
            .load(name, bytes.clone())
            .await
            .map_err(|e| DeployError::BadModule(e.to_string()))?;
        let file = format!("{}.wasm", module.digest.trim_start_matches("sha256:"));
        let tmp = format!("{file}.tmp");
        self.modules_dir.write(&tmp, &bytes).map_err(anyhow::Error::from)?;
        self.modules_dir
            .rename(&tmp, &self.modules_dir, &file)
            .map_err(anyhow::Error::from)?;
        self.store
            .put_module(name, &module.digest, &module.world.to_string(), size)?;
        self.loaded
            .lock()
            .unwrap()
            .insert(module.digest.clone(), module.clone());
        Ok(self.store.module(name, Some(&module.digest))?.expect("just stored"))
    }

    /// Finds a module by reference and checks it targets `world`.
    pub async fn resolve(&self, reference: &str, world: World) -> Result<LoadedModule, DeployError> {
        let parsed = spec::module_ref(reference).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let module = match parsed {
            ModuleRef::Builtin(name) => self.loader.load_builtin(&name).await.map_err(|e| match e {
                LoadError::UnknownBuiltin(_) => DeployError::UnknownModule(e.to_string()),
                other => DeployError::BadModule(other.to_string()),
            })?,
            ModuleRef::Named(name) => self.load_stored(&name, None).await?,
            ModuleRef::Pinned { name, digest } => self.load_stored(&name, Some(&digest)).await?,
        };
        if module.world != world {
            return Err(DeployError::BadModule(format!(
                "module {reference} is a {} component, but a {world} is needed here",
                module.world
            )));
        }
        Ok(module)
    }

    /// Loads `name` at exactly `digest`, as a revision recorded it.
    async fn resolve_pinned(&self, name: &str, digest: &str, world: World) -> Result<LoadedModule, DeployError> {
        let module = match name.strip_prefix("builtin:") {
            Some(_) => self.resolve(name, world).await?,
            None => self.resolve(&format!("{name}@{digest}"), world).await?,
        };
        if module.digest != digest {
            return Err(DeployError::BadModule(format!(
                "{name} is now {} but the revision recorded {digest}: this runner's built-in changed since; deploy the spec again to use the current one",
                module.digest
            )));
        }
        Ok(module)
    }

    /// Resolves the spec's hooks; `pinned` holds the digests a revision recorded.
    async fn resolve_hooks(&self, spec: &Spec, pinned: Option<&serde_json::Value>) -> Result<WasmHooks, DeployError> {
        let mut hooks = WasmHooks::default();
        for (point, hook) in spec.hooks.iter() {
            let module = match pinned.and_then(|p| p[point]["digest"].as_str()) {
                Some(digest) => self.resolve_pinned(&hook.module, digest, World::Hook).await?,
                None => self.resolve(&hook.module, World::Hook).await?,
            };
            let mut grants = Grants::default();
            for text in &hook.grants {
                match spec::grant(text).map_err(|e| DeployError::InvalidSpec(format!("hooks.{point}.grants: {e}")))? {
                    spec::Grant::Exec => {
                        grants.exec = Some(ExecEnv {
                            env: spec.process.env.clone(),
                            workdir: spec.process.workdir.as_ref().map(PathBuf::from),
                        })
                    }
                    spec::Grant::Http { host } => grants.http_hosts.push(host),
                }
            }
            let policy = match hook.policy {
                HookPolicy::Abort => FailurePolicy::Abort,
                HookPolicy::Retry => FailurePolicy::Retry,
                HookPolicy::Ignore => FailurePolicy::Ignore,
            };
            let params = serde_json::Value::Object(hook.params.clone()).to_string();
            hooks.hooks.insert(
                point,
                Hook {
                    module,
                    params,
                    timeout: hook.timeout,
                    policy,
                    grants,
                },
            );
        }
        Ok(hooks)
    }

    async fn load_stored(&self, name: &str, digest: Option<&str>) -> Result<LoadedModule, DeployError> {
        let row = self.store.module(name, digest)?.ok_or_else(|| {
            DeployError::UnknownModule(match digest {
                Some(d) => format!("no module {name}@{d} has been uploaded; upload it with `slipway module push FILE --name {name}`"),
                None => format!("no module named {name:?} has been uploaded; upload it with `slipway module push FILE --name {name}` or use builtin:rolling"),
            })
        })?;
        if let Some(module) = self.loaded.lock().unwrap().get(&row.digest) {
            let mut module = module.clone();
            module.name = name.to_string();
            return Ok(module);
        }
        let file = format!("{}.wasm", row.digest.trim_start_matches("sha256:"));
        let bytes = self.modules_dir.read(&file).map_err(anyhow::Error::from)?;
        let module = self
            .loader
            .load(name, bytes)
            .await
            .map_err(|e| DeployError::BadModule(e.to_string()))?;
        self.loaded
            .lock()
            .unwrap()
            .insert(module.digest.clone(), module.clone());
        Ok(module)
    }

    /// A revision's spec with the app's current lifecycle settings (which belong to the app,
    /// not to revisions).
    fn revision_spec(&self, revision: &RevisionRow, app_spec: &serde_json::Value) -> Result<Spec, DeployError> {
        let mut value = revision.spec.clone();
        if let Some(lifecycle) = app_spec.get("lifecycle") {
            value["lifecycle"] = lifecycle.clone();
        }
        spec::parse_json(value)
            .map_err(|e| DeployError::Internal(format!("stored spec of revision {}: {e}", revision.number)))
    }

    /// Every app's router, for metrics.
    pub fn routers(&self) -> Vec<(String, Arc<BuiltinRouter>)> {
        self.apps
            .lock()
            .unwrap()
            .iter()
            .map(|(name, h)| (name.clone(), h.driver.router().clone()))
            .collect()
    }
}

impl WasmHooks {
    /// `{ point: { module, digest } }` for the revision record.
    fn digests(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .hooks
            .iter()
            .map(|(point, hook)| {
                (
                    (*point).to_string(),
                    serde_json::json!({ "module": hook.module.name, "digest": hook.module.digest }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

/// A revision is the spec without the app's lifecycle settings: changing the destroy delay,
/// the retained count or the deadline changes no revision (as in the Webscale seed).
fn revision_spec_json(spec: &Spec) -> serde_json::Value {
    let mut value = spec.to_json();
    if let Some(object) = value.as_object_mut() {
        object.remove("lifecycle");
    }
    value
}

fn revision_digest(spec: &Spec) -> String {
    let mut plain = spec.clone();
    plain.lifecycle = Default::default();
    plain.digest()
}

fn rollout_id(app: &str, number: u32) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{app}-{number}-{:x}{n:x}", store::now_ms() % 0xff_ffff)
}

fn route_of(value: &Option<serde_json::Value>) -> Option<Vec<(u32, u32)>> {
    let object = value.as_ref()?.as_object()?;
    Some(
        object
            .iter()
            .filter_map(|(r, w)| Some((r.parse().ok()?, w.as_u64()? as u32)))
            .collect(),
    )
}

/// Module names: what a spec can refer to, and never a path.
fn validate_module_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module name {name:?} is not allowed: use 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// How the process driver runs a revision of `spec`.
pub fn process_config(spec: &Spec) -> ProcessConfig {
    let probe = &spec.probe;
    ProcessConfig {
        program: spec.process.command.clone(),
        args: spec.process.args.clone(),
        env: spec.process.env.clone(),
        workdir: spec.process.workdir.as_ref().map(|w| Path::new(w).to_path_buf()),
        grace: spec.process.grace_period,
        probe: match &probe.http {
            Some(path) => ProbeCheck::Http {
                path: path.clone(),
                status: probe.status,
            },
            None => ProbeCheck::Tcp,
        },
        probe_interval: probe.interval,
        probe_timeout: probe.timeout,
        success_threshold: probe.success_threshold,
        failure_threshold: probe.failure_threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_can_never_be_paths() {
        assert!(validate_module_name("waves").is_ok());
        assert!(validate_module_name("migrate-v2.1").is_ok());
        for bad in ["", "../etc/passwd", "a/b", "Waves", "-x", &"x".repeat(64)] {
            assert!(validate_module_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifecycle_settings_change_no_revision() {
        let spec = spec::parse_toml("name = \"a\"\nlisten = \"127.0.0.1:1\"\n[process]\ncommand = \"x\"\n").unwrap();
        let mut kept = spec.clone();
        kept.lifecycle.destroy_delay = Duration::from_secs(60);
        kept.lifecycle.retained = 2;
        assert_eq!(revision_digest(&spec), revision_digest(&kept));
        let mut scaled = spec.clone();
        scaled.replicas += 1;
        assert_ne!(revision_digest(&spec), revision_digest(&scaled));
    }
}
