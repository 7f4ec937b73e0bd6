//! The runner behind `slipway serve`: it owns the apps, turns spec changes into revisions
//! and rollouts, runs the operations, keeps history in the store, and recovers after a
//! restart. One file per job:
//!
//! - `runner/deploy.rs`: deploy and PATCH, running a rollout, and the end every rollout
//!   shares (recording it, retiring the old revision, pruning);
//! - `runner/rollback.rs`: rollback (instant to a kept revision, else a redeploy), redeploy,
//!   retry;
//! - `runner/operations.rs`: pause / resume / abort, scale, route, maintenance, delete;
//! - `runner/recovery.rs`: what happens when the runner starts on existing data;
//! - `runner/modules.rs`: uploads and resolving module references.
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
//! **Invariant:** one rollout per app at a time, held by a [`Claim`] for as long as it runs;
//! a second request gets a conflict naming the running one. **Invariant:** a revision and its
//! rollout are recorded (in one transaction) before any instance of it starts, and every
//! rollout event is stored as it happens.

mod deploy;
mod modules;
mod operations;
mod recovery;
mod rollback;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::dataplane::client::{PlaneClient, RemoteApp, Start};
use crate::dataplane::protocol::FrontSpec;
use crate::driver::compute::container::{ContainerConfig, Network, Pull};
use crate::driver::compute::instances::{Supervision, Workload};
use crate::driver::compute::process::ProcessConfig;
use crate::driver::kubernetes::KubeApp;
use crate::driver::{Cluster, WallClock};
use crate::engine::Limits;
use crate::events::Event;
use crate::host::RolloutControl;
use crate::modules::ModuleLoader;
use crate::probe::ProbeCheck;
use crate::protocol::{AppStatus, Instances};
use crate::spec::{self, Spec};
use crate::store::{self, Store, StoreError};

pub use modules::Upload;

/// Why a request was refused. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The spec (or another request body) is invalid.
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
    /// The module exists but cannot be used as asked, or an upload is not a usable component.
    #[error("{0}")]
    BadModule(String),
    /// A module name that is not allowed.
    #[error("{0}")]
    BadModuleName(String),
    /// An upload larger than the limit.
    #[error("{0}")]
    TooLarge(String),
    /// Another rollout of the app is running.
    #[error("rollout {rollout} of {app} is still running; wait for it to finish (or abort it) and try again")]
    Conflict { app: String, rollout: String },
    /// No such rollout.
    #[error("there is no running or recorded rollout {0:?}")]
    UnknownRollout(String),
    /// No uploaded module by that name (and digest).
    #[error("{0}")]
    NoSuchModule(String),
    /// A module that retained revisions use, which cannot be deleted.
    #[error("{0}")]
    ModulePinned(String),
    /// The request is valid but cannot be done in this state.
    #[error("{0}")]
    NotPossible(String),
    /// Something on our side failed; details are in the runner's log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for DeployError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store error");
        DeployError::Internal("the runner could not read or write its database; see its log".into())
    }
}

impl From<anyhow::Error> for DeployError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "internal error");
        DeployError::Internal("the runner could not complete the request; see its log".into())
    }
}

pub use crate::protocol::DeployAccepted;

/// Settings of the runner itself.
#[derive(Clone)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// How to get a data plane when none runs for the data directory.
    pub plane: Start,
    /// The Kubernetes client for apps with a `[kubernetes]` table; by default one is made
    /// from the kubeconfig when the first such app needs it.
    pub kube: Option<kube::Client>,
    /// Where certificates for `[router.tls] acme = true` come from.
    pub acme: crate::acme::AcmeConfig,
    /// The addresses apps share when their specs name hosts but no address.
    pub front: FrontDoor,
}

/// The runner's front door: the plain and HTTPS addresses of apps whose specs name their
/// hosts but leave out `listen` (and `[router.tls] listen`).
#[derive(Clone, Copy, Debug)]
pub struct FrontDoor {
    pub http: SocketAddr,
    pub https: SocketAddr,
}

impl Default for FrontDoor {
    fn default() -> Self {
        FrontDoor {
            http: SocketAddr::from(([0, 0, 0, 0], 80)),
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
        }
    }
}

/// An event as delivered to followers, with its sequence number within the rollout.
#[derive(Clone, Debug, Serialize)]
pub struct Numbered {
    pub seq: u64,
    pub event: Event,
}

pub struct Runner {
    store: Store,
    plane: Arc<PlaneClient>,
    certificates: Arc<crate::acme::Certificates>,
    front: FrontDoor,
    kube: std::sync::OnceLock<kube::Client>,
    loader: ModuleLoader,
    data_dir: PathBuf,
    modules_dir: cap_std::fs::Dir,
    /// Held (shared) from resolving a deploy's modules until its revision is recorded, and
    /// (alone) while a module is deleted: a module is never deleted under a deploy pinning it.
    module_use: tokio::sync::RwLock<()>,
    /// Uploads still compiling in the background, and those whose compiling failed.
    compiles: Arc<Mutex<HashMap<String, crate::runner::modules::Compiling>>>,
    uploads_dir: cap_std::fs::Dir,
    limits: Limits,
    apps: Mutex<HashMap<String, Arc<AppHandle>>>,
    live: Mutex<HashMap<String, LiveRollout>>,
    this: Weak<Runner>,
}

struct LiveRollout {
    sender: broadcast::Sender<Numbered>,
    control: Arc<RolloutControl>,
}

struct AppHandle {
    name: String,
    /// What runs its instances and routes its traffic.
    engine: Engine,
    /// The same, as rollouts and operations act on them.
    cluster: Cluster,
    /// Where its router listens (local apps only).
    listen: Mutex<Option<SocketAddr>>,
    router: Mutex<crate::driver::router::RouterKind>,
    /// Its host names, path prefix and HTTPS (local apps only).
    front: Mutex<FrontSpec>,
    /// The running rollout's id, set by a [`Claim`].
    rollout: Mutex<Option<String>>,
}

/// Where an app runs: the data plane here, or a Kubernetes cluster.
enum Engine {
    Plane(Arc<RemoteApp>),
    Kubernetes(Arc<KubeApp>),
}

impl Engine {
    /// How to run `revision`, from its spec. Idempotent.
    async fn define(&self, revision: u32, spec: &Spec) -> Result<(), crate::driver::DriverError> {
        match self {
            Engine::Plane(plane) => plane.define(revision, workload(spec)).await,
            Engine::Kubernetes(kube) => kube.define(revision, spec).await,
        }
    }

    /// Stops everything of the app: instances, router, and in a cluster every object.
    async fn remove(&self) -> Result<(), crate::driver::DriverError> {
        match self {
            Engine::Plane(plane) => plane.remove().await,
            Engine::Kubernetes(kube) => kube.remove().await,
        }
    }
}

/// The app's one rollout slot. Taken before anything is recorded and held for as long as
/// the rollout runs; dropping it, however the rollout ends, frees the app.
struct Claim {
    handle: Arc<AppHandle>,
}

impl Claim {
    /// Names the rollout holding the app, once it has an id.
    fn name(&self, rollout: &str) {
        *self.handle.rollout.lock().unwrap() = Some(rollout.to_string());
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        *self.handle.rollout.lock().unwrap() = None;
    }
}

impl Runner {
    /// Opens (or creates) the data directory, restores every app and resumes interrupted
    /// rollouts. A problem with one app is reported on that app; it never stops the runner.
    pub async fn start(config: RunnerConfig, loader: ModuleLoader) -> anyhow::Result<Arc<Runner>> {
        private_dir(&config.data_dir)?;
        let data = cap_std::fs::Dir::open_ambient_dir(&config.data_dir, cap_std::ambient_authority())?;
        for dir in ["modules", "uploads"] {
            private_dir(&config.data_dir.join(dir))?;
        }
        let modules_dir = data.open_dir("modules")?;
        let uploads_dir = data.open_dir("uploads")?;
        let store = Store::open(&config.data_dir.join("slipway.db"))?;
        let plane = PlaneClient::connect(&config.data_dir, config.plane.clone()).await?;
        let certificates = crate::acme::Certificates::new(config.acme.clone(), &config.data_dir, store.clone());
        let runner = Arc::new_cyclic(|this| Runner {
            store,
            plane,
            certificates,
            front: config.front,
            kube: config.kube.clone().map(std::sync::OnceLock::from).unwrap_or_default(),
            loader,
            data_dir: config.data_dir.clone(),
            modules_dir,
            module_use: tokio::sync::RwLock::new(()),
            compiles: Arc::default(),
            uploads_dir,
            limits: config.limits.clone(),
            apps: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            this: this.clone(),
        });
        runner.clear_uploads();
        runner.restore().await?;
        Ok(runner)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where `app`'s instances' output files are.
    pub fn output_dir(&self, app: &str) -> PathBuf {
        crate::driver::compute::output::app_dir(&self.data_dir, app)
    }

    pub fn loader(&self) -> &ModuleLoader {
        &self.loader
    }

    fn arc(&self) -> Arc<Runner> {
        self.this.upgrade().expect("the runner is alive while it serves")
    }

    /// Stops every instance, router and the data plane; waits for them.
    pub async fn shutdown(&self) {
        self.apps.lock().unwrap().clear();
        if let Err(error) = self.plane.shutdown().await {
            tracing::warn!(%error, "could not stop the data plane");
        }
    }

    /// Resolves when the connection to the data plane is lost: traffic is down, and a
    /// restarted runner starts a new data plane and restores every app.
    pub async fn plane_lost(&self) {
        self.plane.lost().await;
    }

    /// The routers' counters from the data plane, in Prometheus text format.
    pub async fn router_metrics(&self) -> String {
        self.plane.metrics().await.unwrap_or_default()
    }

    /// The app's router and instances in the data plane, created (and its router bound) on
    /// first use. A new listen address moves the router: the data plane binds it before it
    /// lets the old one go.
    async fn app_handle(&self, spec: &Spec) -> Result<Arc<AppHandle>, DeployError> {
        let existing = self.apps.lock().unwrap().get(&spec.name).cloned();
        if spec.kubernetes.is_some() {
            return self.kube_handle(existing, spec).await;
        }
        if let Some(handle) = &existing
            && matches!(handle.engine, Engine::Kubernetes(_))
        {
            return Err(DeployError::InvalidSpec(format!(
                "app {} runs in Kubernetes; it cannot move to this machine in place: delete it (`slipway delete {}`) and deploy it again",
                spec.name, spec.name
            )));
        }
        let listen = match spec.listen {
            Some(listen) => listen,
            None if !spec.router.hosts.is_empty() => self.front.http,
            None => return Err(DeployError::InvalidSpec("the spec says nowhere to listen".into())),
        };
        let front = FrontSpec::of(&spec.router, self.front.https);
        if let Some(handle) = existing {
            let was = *handle.listen.lock().unwrap();
            let router = *handle.router.lock().unwrap();
            let routed = handle.front.lock().unwrap().clone();
            if was != Some(listen) || router != spec.router.kind || routed != front {
                self.plane
                    .app(&spec.name, listen, spec.router.kind, front.clone())
                    .await
                    .map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
                *handle.listen.lock().unwrap() = Some(listen);
                *handle.router.lock().unwrap() = spec.router.kind;
                *handle.front.lock().unwrap() = front;
            }
            self.certify(spec);
            return Ok(handle);
        }
        let plane = self
            .plane
            .app(&spec.name, listen, spec.router.kind, front.clone())
            .await
            .map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let handle = Arc::new(AppHandle {
            name: spec.name.clone(),
            cluster: Cluster::new(plane.clone(), plane.clone(), Arc::new(WallClock)),
            engine: Engine::Plane(plane),
            listen: Mutex::new(Some(listen)),
            router: Mutex::new(spec.router.kind),
            front: Mutex::new(front),
            rollout: Mutex::new(None),
        });
        self.certify(spec);
        let mut apps = self.apps.lock().unwrap();
        Ok(apps.entry(spec.name.clone()).or_insert(handle).clone())
    }

    /// Keeps the app's certificate from ACME current, if its spec asks for one.
    fn certify(&self, spec: &Spec) {
        if spec.router.tls.as_ref().is_some_and(|tls| tls.acme) {
            self.certificates.manage(&spec.name, &spec.router.hosts);
        } else {
            self.certificates.forget(&spec.name, false);
        }
    }

    /// A Kubernetes app's handle: the cluster is its data plane, reached on first use with
    /// the usual kubeconfig (or the pod's service account).
    async fn kube_handle(&self, existing: Option<Arc<AppHandle>>, spec: &Spec) -> Result<Arc<AppHandle>, DeployError> {
        let not_here = |e: crate::driver::DriverError| DeployError::NotPossible(e.to_string());
        if let Some(handle) = existing {
            return match &handle.engine {
                Engine::Kubernetes(kube) => {
                    let namespace = spec.kubernetes.as_ref().and_then(|k| k.namespace.as_deref());
                    if namespace.is_some_and(|ns| ns != kube.namespace()) {
                        return Err(DeployError::InvalidSpec(format!(
                            "app {} runs in namespace {}; it cannot move namespaces in place: delete it and deploy it again",
                            spec.name,
                            kube.namespace()
                        )));
                    }
                    let kind = *handle.router.lock().unwrap();
                    if kind != spec.router.kind {
                        return Err(DeployError::InvalidSpec(format!(
                            "app {} is routed by a {} in the cluster; its router kind cannot change in place: delete the app (`slipway delete {}`) and deploy it again",
                            spec.name,
                            kind.as_str(),
                            spec.name
                        )));
                    }
                    kube.update(spec);
                    Ok(handle)
                }
                Engine::Plane(_) => Err(DeployError::InvalidSpec(format!(
                    "app {} runs on this machine; it cannot move to Kubernetes in place: delete it (`slipway delete {}`) and deploy it again",
                    spec.name, spec.name
                ))),
            };
        }
        let client = match self.kube.get() {
            Some(client) => client.clone(),
            None => {
                let client = crate::driver::kubernetes::connect().await.map_err(not_here)?;
                self.kube.get_or_init(|| client).clone()
            }
        };
        let kube = KubeApp::open(client, spec).await.map_err(not_here)?;
        let handle = Arc::new(AppHandle {
            name: spec.name.clone(),
            cluster: Cluster::new(kube.clone(), kube.clone(), Arc::new(WallClock)),
            engine: Engine::Kubernetes(kube),
            listen: Mutex::new(None),
            router: Mutex::new(spec.router.kind),
            front: Mutex::new(FrontSpec::default()),
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
    fn claim(&self, handle: &Arc<AppHandle>) -> Result<Claim, DeployError> {
        let mut rollout = handle.rollout.lock().unwrap();
        if let Some(running) = rollout.as_ref() {
            return Err(DeployError::Conflict {
                app: handle.name.clone(),
                rollout: running.clone(),
            });
        }
        *rollout = Some("starting".to_string());
        Ok(Claim { handle: handle.clone() })
    }

    /// Refuses with a conflict while a rollout of `app` runs.
    fn not_while_rolling(&self, app: &str) -> Result<(), DeployError> {
        match self.running_rollout(app) {
            Some(rollout) => Err(DeployError::Conflict {
                app: app.to_string(),
                rollout,
            }),
            None => Ok(()),
        }
    }

    /// The app's record, or `UnknownApp`.
    fn app_row(&self, app: &str) -> Result<store::AppRow, DeployError> {
        self.store
            .app(app)?
            .ok_or_else(|| DeployError::UnknownApp(app.to_string()))
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

    /// An app as the API shows it: its record, its running rollout and its live instances.
    pub fn app_status(&self, app: store::AppRow) -> AppStatus {
        let handle = self.apps.lock().unwrap().get(&app.name).cloned();
        let instances = handle.map(|handle| Instances {
            listen: *handle.listen.lock().unwrap(),
            maintenance: handle.maintenance(),
            revisions: handle.cluster.snapshot(),
        });
        let running_rollout = self.running_rollout(&app.name);
        let rollout_paused = running_rollout.as_ref().is_some_and(|id| {
            let live = self.live.lock().unwrap();
            live.get(id).is_some_and(|l| l.control.is_paused())
        });
        AppStatus {
            running_rollout,
            rollout_paused,
            certificate: self.certificates.status(&app.name),
            maintenance: instances.as_ref().map_or(app.maintenance, |i| i.maintenance),
            name: app.name,
            active_revision: app.active_revision,
            notice: app.notice,
            instances,
            spec: app.spec,
            updated_at: app.updated_at,
        }
    }

    /// A revision's spec with the app's current lifecycle settings (which belong to the app,
    /// not to revisions).
    fn revision_spec(&self, revision: &store::RevisionRow, app_spec: &serde_json::Value) -> Result<Spec, DeployError> {
        let mut value = revision.spec.clone();
        if let Some(lifecycle) = app_spec.get("lifecycle") {
            value["lifecycle"] = lifecycle.clone();
        }
        spec::parse_json(value)
            .map_err(|e| DeployError::Internal(format!("stored spec of revision {}: {e}", revision.number)))
    }
}

/// Creates `path` as a directory only its owner can enter, or narrows an existing one.
fn private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
    } else {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
    }
    .map_err(|e| anyhow::anyhow!("cannot prepare the directory {}: {e}", path.display()))
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

/// A hand-set route as stored: `{"2": 198, "3": 2}`.
fn route_of(value: &Option<serde_json::Value>) -> Option<Vec<(u32, u32)>> {
    let object = value.as_ref()?.as_object()?;
    Some(
        object
            .iter()
            .filter_map(|(r, w)| Some((r.parse().ok()?, u32::try_from(w.as_u64()?).ok()?)))
            .collect(),
    )
}

/// How the data plane runs a revision of `spec`: as processes or as containers.
pub fn workload(spec: &Spec) -> Workload {
    match (&spec.process, &spec.container) {
        (_, Some(container)) => Workload::Container(container_config(container, spec)),
        (Some(process), None) => Workload::Process(process_config(process, spec)),
        // A validated spec has one of them.
        (None, None) => unreachable!("spec {} was validated and has neither process nor container", spec.name),
    }
}

/// How the process driver runs a revision of `spec`.
pub fn process_config(process: &spec::Process, spec: &Spec) -> ProcessConfig {
    ProcessConfig {
        program: process.command.clone(),
        args: process.args.clone(),
        env: process.env.clone(),
        secret_env: secret_sources(&process.secret_env),
        workdir: process.workdir.as_ref().map(|w| Path::new(w).to_path_buf()),
        supervision: supervision(process.grace_period, spec),
    }
}

fn container_config(container: &spec::Container, spec: &Spec) -> ContainerConfig {
    ContainerConfig {
        image: container.image.clone(),
        entrypoint: container.command.clone(),
        args: container.args.clone(),
        env: container.env.clone(),
        secret_env: secret_sources(&container.secret_env),
        network: match (container.network, container.port) {
            (spec::ContainerNetwork::Bridge, Some(port)) => Network::Bridge { port },
            _ => Network::Host,
        },
        memory_bytes: container.memory.as_deref().and_then(|m| spec::bytes(m).ok()),
        nano_cpus: container.cpus.map(|c| (c * 1e9).round() as u64),
        volumes: container.volumes.clone(),
        pull: match container.pull {
            spec::PullPolicy::Missing => Pull::Missing,
            spec::PullPolicy::Always => Pull::Always,
            spec::PullPolicy::Never => Pull::Never,
        },
        supervision: supervision(container.grace_period, spec),
    }
}

/// References were checked when the spec was; a bad one here would be a stored spec from an
/// older runner, and is left out rather than passed on as text.
fn secret_sources(secret_env: &BTreeMap<String, String>) -> BTreeMap<String, spec::SecretSource> {
    secret_env
        .iter()
        .filter_map(|(name, text)| Some((name.clone(), spec::secret_source(text).ok()?)))
        .collect()
}

fn supervision(grace: Duration, spec: &Spec) -> Supervision {
    let probe = &spec.probe;
    Supervision {
        grace,
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn lifecycle_settings_change_no_revision() {
        let spec = spec::parse_toml("name = \"a\"\nlisten = \"127.0.0.1:1\"\n[process]\ncommand = \"x\"\n").unwrap();
        let mut kept = spec.clone();
        kept.lifecycle.destroy_delay = Duration::from_secs(60);
        kept.lifecycle.retained = 2;
        kept.lifecycle.soak = Duration::ZERO;
        assert_eq!(revision_digest(&spec), revision_digest(&kept));
        let mut scaled = spec.clone();
        scaled.replicas += 1;
        assert_ne!(revision_digest(&spec), revision_digest(&scaled));
    }

    #[test]
    fn stored_routes_skip_what_they_cannot_read() {
        let route = Some(serde_json::json!({"1": 128, "2": 128, "x": 5, "3": -1}));
        assert_eq!(route_of(&route), Some(vec![(1, 128), (2, 128)]));
    }
}
