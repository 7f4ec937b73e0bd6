//! The runner's side of the data plane: one connection, a cache of every app's counts kept
//! current by the data plane's events, and per app a [`RemoteApp`] that is both the app's
//! [`Compute`] and its [`Router`] for the host API.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::protocol::{Answer, AppState, Envelope, FrontSpec, Message, Observed, PROTOCOL, PlaneError, Request};
use super::{LOG_FILE, SOCKET};
use crate::driver::compute::instances::Workload;
use crate::driver::router::RouterKind;
use crate::driver::{Compute, Counts, DriverError, DriverEvent, HttpResult, ProbeResult, Router};

/// How long a data plane just started has to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Driver events kept per app for a slow listener.
const EVENT_BACKLOG: usize = 4096;

/// How the runner gets a data plane when none is running.
#[derive(Clone, Debug)]
pub enum Start {
    /// Start `slipway dataplane` as its own process, which outlives the runner.
    Process,
    /// Run one inside this process (tests that need no traffic to outlive anything).
    InProcess,
}

/// A connection to the data plane.
pub struct PlaneClient {
    outgoing: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, PlaneError>>>>,
    next_id: AtomicU64,
    apps: Mutex<HashMap<String, Arc<AppCache>>>,
    /// True once the connection is gone.
    lost: watch::Sender<bool>,
    /// What the data plane ran when this connection began.
    adopted: BTreeMap<String, AppState>,
    /// What the data plane can do beyond protocol 1 (see [`super::protocol::FEATURES`]).
    features: Vec<String>,
}

/// What the runner knows of one app between requests.
struct AppCache {
    observed: Mutex<Observed>,
    weights: Mutex<Vec<(u32, u32)>>,
    maintenance: AtomicBool,
    events: broadcast::Sender<DriverEvent>,
    /// The generation of `observed`, for waiters.
    changed: watch::Sender<u64>,
}

impl AppCache {
    fn new(observed: Observed, weights: Vec<(u32, u32)>, maintenance: bool) -> AppCache {
        let generation = observed.generation;
        AppCache {
            observed: Mutex::new(observed),
            weights: Mutex::new(weights),
            maintenance: AtomicBool::new(maintenance),
            events: broadcast::channel(EVENT_BACKLOG).0,
            changed: watch::channel(generation).0,
        }
    }

    /// Takes a newer picture of the instances; an older one (overtaken on the way) is ignored.
    fn observe(&self, observed: Observed) {
        let generation = observed.generation;
        {
            let mut current = self.observed.lock().unwrap();
            if generation < current.generation {
                return;
            }
            *current = observed;
        }
        self.changed.send_if_modified(|seen| {
            let newer = generation > *seen;
            *seen = (*seen).max(generation);
            newer
        });
    }
}

impl PlaneClient {
    /// Connects to the data plane of `data_dir`, starting one first if none runs.
    pub async fn connect(data_dir: &Path, start: Start) -> anyhow::Result<Arc<PlaneClient>> {
        let socket = data_dir.join(SOCKET);
        let stream = match UnixStream::connect(&socket).await {
            Ok(stream) => stream,
            Err(_) => {
                match start {
                    Start::Process => spawn_process(data_dir)?,
                    Start::InProcess => {
                        let dir = data_dir.to_path_buf();
                        tokio::spawn(async move {
                            if let Err(error) = super::server::run(&dir).await {
                                tracing::error!(error = %format!("{error:#}"), "the in-process data plane failed");
                            }
                        });
                    }
                }
                wait_for_socket(&socket).await?
            }
        };
        let client = PlaneClient::over(stream).await?;
        Ok(client)
    }

    async fn over(stream: UnixStream) -> anyhow::Result<Arc<PlaneClient>> {
        let (read, mut write) = stream.into_split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = queue.recv().await {
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let (lost, _) = watch::channel(false);
        let mut client = PlaneClient {
            outgoing,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            apps: Mutex::new(HashMap::new()),
            lost,
            adopted: BTreeMap::new(),
            features: Vec::new(),
        };
        // The welcome comes before anything else on the connection.
        let mut lines = BufReader::new(read).lines();
        let hello = Envelope {
            id: 0,
            request: Request::Hello { protocol: PROTOCOL },
        };
        client.send_line(&hello)?;
        let (apps, features) = loop {
            let line = lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the data plane closed the connection before answering"))?;
            match serde_json::from_str::<Message>(&line)? {
                Message::Reply {
                    result: Ok(Answer::Welcome { apps, features, .. }),
                    ..
                } => break (apps, features),
                Message::Reply { result: Err(error), .. } => {
                    anyhow::bail!("the data plane refused the runner: {error}")
                }
                // What happened before the welcome is in the state it carries.
                Message::Event { .. } => continue,
                other => anyhow::bail!("the data plane answered hello with {other:?}"),
            }
        };
        for (name, state) in &apps {
            let cache = AppCache::new(state.observed.clone(), state.weights.clone(), state.maintenance);
            client.apps.get_mut().unwrap().insert(name.clone(), Arc::new(cache));
        }
        client.adopted = apps;
        client.features = features;
        let client = Arc::new(client);
        let reader = client.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Message>(&line) {
                    Ok(message) => reader.receive(message),
                    Err(error) => tracing::warn!(%error, "the data plane sent something unreadable"),
                }
            }
            reader.lost.send_replace(true);
            // Whoever waits for an answer gets an error instead.
            reader.pending.lock().unwrap().clear();
        });
        Ok(client)
    }

    /// What the data plane was running when the runner connected: apps and their instances,
    /// adopted as they are.
    pub fn adopted(&self) -> &BTreeMap<String, AppState> {
        &self.adopted
    }

    /// Resolves when the connection to the data plane is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|l| *l).await;
    }

    fn send_line(&self, envelope: &Envelope) -> Result<(), DriverError> {
        let mut line = serde_json::to_string(envelope).expect("requests always serialize");
        line.push('\n');
        self.outgoing.send(line).map_err(|_| lost())
    }

    fn receive(&self, message: Message) {
        match message {
            Message::Reply { id, result } => {
                if let Some(waiter) = self.pending.lock().unwrap().remove(&id) {
                    // The requester may have given up; that is fine.
                    let _ = waiter.send(result);
                }
            }
            Message::Event { app, event } => {
                let cache = self.apps.lock().unwrap().get(&app).cloned();
                if let Some(cache) = cache {
                    cache.observe(Observed {
                        generation: event.generation,
                        counts: event.counts.clone(),
                    });
                    // Nobody following is fine.
                    let _ = cache.events.send(event);
                }
            }
        }
    }

    async fn request(&self, request: Request) -> Result<Answer, DriverError> {
        if *self.lost.borrow() {
            return Err(lost());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, waiter) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, answer);
        self.send_line(&Envelope { id, request })?;
        match waiter.await {
            Ok(result) => result.map_err(DriverError::from),
            Err(_) => Err(lost()),
        }
    }

    /// The app `name`, its router listening on `listen` and routing it as `front` says
    /// (created, or moved there).
    pub async fn app(
        self: &Arc<Self>,
        name: &str,
        listen: SocketAddr,
        router: RouterKind,
        front: FrontSpec,
    ) -> Result<Arc<RemoteApp>, DriverError> {
        if !front.is_default() && !self.features.iter().any(|f| f == super::protocol::FEATURE_FRONT) {
            return Err(DriverError::Invalid(
                "router: the data plane was started by an older Slipway that cannot route by host name or serve HTTPS; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        if front.tls.as_ref().is_some_and(|tls| tls.acme)
            && !self.features.iter().any(|f| f == super::protocol::FEATURE_ACME)
        {
            return Err(DriverError::Invalid(
                "router.tls.acme: the data plane was started by an older Slipway that cannot serve certificates from ACME; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        if front.instance_http2
            && !self
                .features
                .iter()
                .any(|f| f == super::protocol::FEATURE_INSTANCE_HTTP2)
        {
            return Err(DriverError::Invalid(
                "router.instance-protocol: the data plane was started by an older Slipway that speaks only HTTP/1.1 to instances; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        if router == RouterKind::Haproxy && !self.features.iter().any(|f| f == super::protocol::FEATURE_HAPROXY) {
            return Err(DriverError::Invalid(
                "router.kind: the data plane was started by an older Slipway that cannot drive HAProxy; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        let answer = self
            .request(Request::App {
                app: name.to_string(),
                listen,
                router,
                front,
            })
            .await?;
        let cache = self
            .apps
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(AppCache::new(Observed::default(), Vec::new(), false)))
            .clone();
        if let Answer::Done { state } = answer {
            cache.observe(state);
        }
        Ok(Arc::new(RemoteApp {
            name: name.to_string(),
            client: self.clone(),
            cache,
        }))
    }

    /// Every router's counters, in Prometheus text format.
    pub async fn metrics(&self) -> Result<String, DriverError> {
        match self.request(Request::Metrics).await? {
            Answer::Metrics { text } => Ok(text),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops every instance and router, and the data plane.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.request(Request::Shutdown).await.map(drop)?;
        self.lost().await;
        Ok(())
    }
}

/// One app in the data plane: its compute and its router.
pub struct RemoteApp {
    name: String,
    client: Arc<PlaneClient>,
    cache: Arc<AppCache>,
}

impl RemoteApp {
    /// How to run `revision`. Idempotent.
    pub async fn define(&self, revision: u32, workload: Workload) -> Result<(), DriverError> {
        if matches!(workload, Workload::Container(_))
            && !self
                .client
                .features
                .iter()
                .any(|f| f == super::protocol::FEATURE_CONTAINERS)
        {
            return Err(DriverError::Invalid(
                "the data plane was started by an older Slipway that cannot run containers; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        self.act(super::protocol::define(&self.name, revision, workload)).await
    }

    /// Stops the app's instances and router. A new app of the same name starts afresh.
    pub async fn remove(&self) -> Result<(), DriverError> {
        self.client.request(Request::Remove { app: self.name.clone() }).await?;
        self.client.apps.lock().unwrap().remove(&self.name);
        Ok(())
    }

    /// Sends a change and takes the instances' state that comes back.
    async fn act(&self, request: Request) -> Result<(), DriverError> {
        match self.client.request(request).await? {
            Answer::Done { state } => {
                self.cache.observe(state);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }
}

#[async_trait]
impl Compute for RemoteApp {
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        let request = Request::Scale {
            app: self.name.clone(),
            revision,
            replicas,
        };
        self.act(request).await
    }

    fn counts(&self, revision: u32) -> Result<Counts, DriverError> {
        let observed = self.cache.observed.lock().unwrap();
        observed
            .counts
            .get(&revision)
            .copied()
            .ok_or(DriverError::UnknownRevision(revision))
    }

    fn revisions(&self) -> BTreeMap<u32, Counts> {
        self.cache.observed.lock().unwrap().counts.clone()
    }

    fn generation(&self) -> u64 {
        *self.cache.changed.borrow()
    }

    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        let mut changes = self.cache.changed.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), changes.wait_for(|g| *g > seen)).await;
        self.generation()
    }

    async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError> {
        let request = Request::Probe {
            app: self.name.clone(),
            revision,
        };
        match self.client.request(request).await? {
            Answer::Probe { result } => Ok(result),
            other => Err(unexpected(&other)),
        }
    }

    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<HttpResult, DriverError> {
        let request = Request::CheckHttp {
            app: self.name.clone(),
            revision,
            path: path.to_string(),
            status,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.client.request(request).await? {
            Answer::Http { result } => Ok(result),
            other => Err(unexpected(&other)),
        }
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.cache.events.subscribe()
    }
}

#[async_trait]
impl Router for RemoteApp {
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        let request = Request::Weights {
            app: self.name.clone(),
            weights: weights.to_vec(),
        };
        self.act(request).await?;
        *self.cache.weights.lock().unwrap() = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        Ok(())
    }

    fn weights(&self) -> Vec<(u32, u32)> {
        self.cache.weights.lock().unwrap().clone()
    }

    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        let request = Request::Maintenance {
            app: self.name.clone(),
            on,
        };
        self.act(request).await?;
        self.cache.maintenance.store(on, Ordering::SeqCst);
        Ok(())
    }

    fn maintenance(&self) -> bool {
        self.cache.maintenance.load(Ordering::SeqCst)
    }

    async fn traffic(&self, revision: u32, window: Duration) -> Result<crate::driver::TrafficStats, DriverError> {
        if !self
            .client
            .features
            .iter()
            .any(|f| f == super::protocol::FEATURE_TRAFFIC)
        {
            return Err(DriverError::Invalid(
                "the data plane was started by an older Slipway that does not measure traffic; restart it with this one (stop the runner without --keep-running, then start it), which restarts the apps' traffic".into(),
            ));
        }
        let request = Request::Traffic {
            app: self.name.clone(),
            revision,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        };
        match self.client.request(request).await? {
            Answer::Traffic { stats } => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }
}

fn lost() -> DriverError {
    DriverError::Infrastructure {
        driver: "data plane",
        message: "the connection to the data plane is lost".into(),
        source: None,
    }
}

fn unexpected(answer: &Answer) -> DriverError {
    DriverError::Infrastructure {
        driver: "data plane",
        message: format!("unexpected answer {answer:?}"),
        source: None,
    }
}

/// Starts `slipway dataplane` for `data_dir` as a process of its own: its own process group,
/// so a Ctrl-C meant for the runner does not reach it, and no parent-death signal, so it
/// outlives the runner. Its log goes to a file in the data directory.
fn spawn_process(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let program: PathBuf = std::env::current_exe()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(data_dir.join(LOG_FILE))?;
    let mut child = std::process::Command::new(program)
        .arg("dataplane")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the data plane: {e}"))?;
    // Reap it if it ends while this runner lives.
    std::thread::Builder::new()
        .name("slipway-dataplane-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(())
}

async fn wait_for_socket(socket: &Path) -> anyhow::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!(
                    "the data plane did not open {} within {} s: {error}; see its log next to it",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
