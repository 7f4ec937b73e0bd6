//! The runner behind `slipway serve`: it owns the apps, turns spec changes into revisions
//! and rollouts, keeps their history in the store, and restores everything on start.
//!
//! **Invariant:** one rollout per app at a time; a second deploy gets a conflict naming the
//! running one. **Invariant:** a revision and its rollout are recorded before any instance of
//! it starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::bindings::Revision;
use crate::driver::compute::process::{ProcessConfig, ProcessDriver};
use crate::driver::router::builtin::BuiltinRouter;
use crate::driver::{Cluster, MAX_WEIGHT};
use crate::engine::Limits;
use crate::events::{Event, RolloutOutcome, Timeline};
use crate::hooks::NoHooks;
use crate::modules::{LoadError, LoadedModule, ModuleLoader, World};
use crate::probe::ProbeCheck;
use crate::rollout::{self, RolloutPlan};
use crate::spec::{self, ModuleRef, Spec};
use crate::store::{self, ModuleRow, Store, rollout_state, state};

/// Why a deploy (or another request) was refused. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The spec is invalid.
    #[error("{0}")]
    InvalidSpec(String),
    /// No such app.
    #[error("there is no app named {0:?}; create it with PUT /v1/apps/{0} (or `slipway deploy`)")]
    UnknownApp(String),
    /// The spec names a module that was never uploaded.
    #[error("{0}")]
    UnknownModule(String),
    /// The module exists but cannot be used as asked.
    #[error("{0}")]
    BadModule(String),
    /// Another rollout of the app is running.
    #[error("rollout {rollout} of {app} is still running; wait for it to finish (or abort it) and deploy again")]
    Conflict { app: String, rollout: String },
    /// No such rollout.
    #[error("there is no rollout {0:?}")]
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

/// What a deploy did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum DeployAccepted {
    /// A new revision and its rollout were created.
    Started {
        app: String,
        revision: u32,
        rollout: String,
    },
    /// The spec equals the latest revision's: nothing to do.
    Unchanged { app: String, revision: u32 },
}

/// Settings of the runner itself.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
}

/// An event as delivered to followers: its sequence number within the rollout.
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
    /// Followers of running rollouts.
    live: Mutex<HashMap<String, broadcast::Sender<Numbered>>>,
    loaded: Mutex<HashMap<String, LoadedModule>>,
    this: Weak<Runner>,
}

struct AppHandle {
    driver: Arc<ProcessDriver>,
    listen: SocketAddr,
    rollout: Mutex<Option<String>>,
}

impl Runner {
    /// Opens (or creates) the data directory and restores every app's running revision.
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

    /// The default data directory: `./.slipway`.
    pub fn default_data_dir() -> PathBuf {
        PathBuf::from(".slipway")
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Brings back every app's running revision after a restart. Rollouts that were running
    /// are marked failed (their instances died with the previous runner).
    async fn restore(&self) -> anyhow::Result<()> {
        for rollout in self.store.unfinished_rollouts()? {
            let reason = "the runner stopped during this rollout";
            self.store
                .finish_rollout(&rollout.id, rollout_state::FAILED, reason, None)?;
            self.store
                .set_revision_state(&rollout.app, rollout.target, state::FAILED, Some(reason))?;
        }
        for app in self.store.apps()? {
            for revision in self.store.revisions(&app.name)? {
                if matches!(
                    revision.state.as_str(),
                    state::KEEPING | state::DESTROYING | state::CREATING | state::VERIFYING
                ) {
                    self.store
                        .set_revision_state(&app.name, revision.number, state::RETAINED, None)?;
                }
            }
            let Some(active) = app.active_revision else { continue };
            let Some(revision) = self.store.revision(&app.name, active)? else {
                continue;
            };
            let spec = spec::parse_json(revision.spec.clone())
                .map_err(|e| anyhow::anyhow!("stored spec of {}: {e}", app.name))?;
            let handle = self.app_handle(&spec).await?;
            handle.driver.add_revision(active, process_config(&spec));
            handle.driver.set_weights(&[(active, MAX_WEIGHT)]).await?;
            handle.driver.set_maintenance(app.maintenance).await?;
            handle.driver.scale(active, spec.replicas).await?;
            tracing::info!(app = %app.name, revision = active, "restored");
        }
        Ok(())
    }

    /// Stops every instance and router; waits for them.
    pub async fn shutdown(&self) {
        let apps: Vec<Arc<AppHandle>> = self.apps.lock().unwrap().drain().map(|(_, a)| a).collect();
        for app in &apps {
            app.driver.stop_all().await;
        }
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

    /// Records `spec` as the app's desired state: a new revision and its rollout, unless it
    /// equals the latest revision.
    pub async fn deploy(&self, spec: Spec) -> Result<DeployAccepted, DeployError> {
        spec::validate(&spec).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let digest = spec.digest();
        if let Some(latest) = self.store.latest_revision(&spec.name)?
            && latest.spec_digest == digest
        {
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
        let module = self.resolve(&spec.strategy.module, World::Strategy).await?;
        let handle = self.app_handle(&spec).await?;
        // Claim the app before recording anything, so two deploys racing here cannot both win.
        {
            let mut rollout = handle.rollout.lock().unwrap();
            if let Some(running) = rollout.as_ref() {
                return Err(DeployError::Conflict {
                    app: spec.name.clone(),
                    rollout: running.clone(),
                });
            }
            *rollout = Some("starting".to_string());
        }
        let result = self.record_and_start(&spec, &digest, module, handle.clone());
        if result.is_err() {
            *handle.rollout.lock().unwrap() = None;
        }
        result
    }

    fn record_and_start(
        &self,
        spec: &Spec,
        digest: &str,
        module: LoadedModule,
        handle: Arc<AppHandle>,
    ) -> Result<DeployAccepted, DeployError> {
        let spec_json = serde_json::to_value(spec).map_err(anyhow::Error::from)?;
        self.store.upsert_app(&spec.name, &spec_json)?;
        let hooks = serde_json::json!({});
        let number =
            self.store
                .create_revision(&spec.name, &spec_json, digest, &module.name, &module.digest, &hooks)?;
        let active = self.store.app(&spec.name)?.and_then(|a| a.active_revision);
        let id = format!("{}-{number}-{:06x}", spec.name, store::now_ms() % 0xff_ffff);
        self.store.create_rollout(&id, &spec.name, number, active, "deploy")?;
        *handle.rollout.lock().unwrap() = Some(id.clone());
        let (sender, _) = broadcast::channel(1024);
        self.live.lock().unwrap().insert(id.clone(), sender);

        let runner = self.this.upgrade().expect("runner alive");
        let spec = spec.clone();
        let rollout_id = id.clone();
        tokio::spawn(async move {
            runner
                .run_rollout(rollout_id, spec, number, active, module, handle)
                .await;
        });
        Ok(DeployAccepted::Started {
            app: self.store_name(&id),
            revision: number,
            rollout: id,
        })
    }

    fn store_name(&self, rollout: &str) -> String {
        self.store
            .rollout(rollout)
            .ok()
            .flatten()
            .map(|r| r.app)
            .unwrap_or_default()
    }

    async fn run_rollout(
        self: Arc<Self>,
        id: String,
        spec: Spec,
        number: u32,
        active: Option<u32>,
        module: LoadedModule,
        handle: Arc<AppHandle>,
    ) {
        let app = spec.name.clone();
        let driver = handle.driver.clone();
        driver.add_revision(number, process_config(&spec));
        let active_revision = active.and_then(|n| {
            let row = self.store.revision(&app, n).ok()??;
            let replicas = row.spec.get("replicas")?.as_u64()? as u32;
            Some(Revision { number: n, replicas })
        });
        let others: Vec<Revision> = driver
            .revisions_with_instances()
            .into_iter()
            .filter(|r| *r != number && Some(*r) != active)
            .map(|r| Revision { number: r, replicas: 0 })
            .collect();

        let sink_store = self.store.clone();
        let sink_id = id.clone();
        let sender = self.live.lock().unwrap().get(&id).cloned();
        let timeline = Timeline::with_sink(
            store::now_ms(),
            Arc::new(move |seq, event: &Event| {
                if let Err(error) = sink_store.append_event(&sink_id, seq, event) {
                    tracing::error!(%error, "could not record a rollout event");
                }
                if let Some(sender) = &sender {
                    let _ = sender.send(Numbered {
                        seq,
                        event: event.clone(),
                    });
                }
            }),
        );
        driver.set_timeline(Some(timeline.clone()));

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
        let report = rollout::run(&module, &plan, driver.clone(), Arc::new(NoHooks), timeline).await;
        driver.set_timeline(None);

        let failure = report
            .failure
            .as_ref()
            .map(|f| serde_json::to_value(f).unwrap_or_default());
        let result = match report.outcome {
            RolloutOutcome::Succeeded => {
                let _ = self.store.set_revision_state(&app, number, state::RUNNING, None);
                let _ = self.store.set_active(&app, Some(number));
                if let Some(old) = active {
                    self.retire(&app, old, spec.lifecycle.destroy_delay, driver.clone());
                }
                self.store
                    .finish_rollout(&id, rollout_state::SUCCEEDED, &report.summary, None)
            }
            RolloutOutcome::RolledBack => {
                let _ = self
                    .store
                    .set_revision_state(&app, number, state::FAILED, Some(&report.summary));
                self.store
                    .finish_rollout(&id, rollout_state::ROLLED_BACK, &report.summary, failure.as_ref())
            }
            RolloutOutcome::Failed => {
                let _ = self
                    .store
                    .set_revision_state(&app, number, state::FAILED, Some(&report.summary));
                self.store
                    .finish_rollout(&id, rollout_state::FAILED, &report.summary, failure.as_ref())
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, rollout = %id, "could not record the end of a rollout");
        }
        self.live.lock().unwrap().remove(&id);
        *handle.rollout.lock().unwrap() = None;
    }

    /// Keeps the replaced revision for the destroy delay, then stops its instances and keeps
    /// its config (`keeping` → `destroying` → `retained`).
    fn retire(&self, app: &str, revision: u32, destroy_delay: Duration, driver: Arc<ProcessDriver>) {
        let _ = self.store.set_revision_state(app, revision, state::KEEPING, None);
        let store = self.store.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(destroy_delay).await;
            if store
                .revision(&app, revision)
                .ok()
                .flatten()
                .is_some_and(|r| r.state == state::KEEPING)
            {
                let _ = store.set_revision_state(&app, revision, state::DESTROYING, None);
                let _ = driver.scale(revision, 0).await;
                let _ = store.set_revision_state(&app, revision, state::RETAINED, None);
            }
        });
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
        let receiver = self.live.lock().unwrap().get(rollout).map(|s| s.subscribe());
        let stored = self.store.events(rollout)?;
        Ok((stored, receiver))
    }

    /// The instances of an app now, per revision.
    pub fn app_state(&self, app: &str) -> Option<serde_json::Value> {
        let handle = self.apps.lock().unwrap().get(app).cloned()?;
        let snapshot = handle.driver.snapshot();
        Some(serde_json::json!({
            "listen": handle.listen,
            "maintenance": handle.driver.maintenance(),
            "revisions": snapshot,
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

    /// The app's router, for metrics.
    pub fn routers(&self) -> Vec<(String, Arc<BuiltinRouter>)> {
        self.apps
            .lock()
            .unwrap()
            .iter()
            .map(|(name, h)| (name.clone(), h.driver.router().clone()))
            .collect()
    }
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
