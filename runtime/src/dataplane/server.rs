//! The data plane process (`slipway dataplane`): every app's built-in router and instances,
//! driven by the runner over a Unix socket, serving on whether a runner is connected or not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::protocol::{
    Answer, AppState, Envelope, FEATURES, FrontSpec, Message, Observed, PROTOCOL, PlaneError, Request,
};
use super::{PID_FILE, SOCKET};
use crate::driver::compute::container::Containers;
use crate::driver::compute::instances::Backends;
use crate::driver::compute::instances::{InstanceDriver, Workload};
use crate::driver::compute::output::OutputFiles;
use crate::driver::router::RouterKind;
use crate::driver::router::builtin::{BuiltinRouter, RouterMetrics, RouterOptions, Routing, TlsFiles};
use crate::driver::router::haproxy::{HaTls, Haproxy, HaproxyRouter, HostRoute};
use crate::driver::router::local::LocalRouter;
use crate::driver::{Compute, Router, validate_weights};

/// How long stopping a router waits for requests in flight.
const ROUTER_GRACE: Duration = Duration::from_secs(30);

/// An app's router.
#[derive(Clone)]
enum AppRouter {
    Builtin(Arc<LocalRouter>),
    Haproxy(Arc<HaproxyRouter>),
}

impl AppRouter {
    fn kind(&self) -> RouterKind {
        match self {
            AppRouter::Builtin(_) => RouterKind::Builtin,
            AppRouter::Haproxy(_) => RouterKind::Haproxy,
        }
    }

    fn driver(&self) -> Arc<dyn Router> {
        match self {
            AppRouter::Builtin(router) => router.clone(),
            AppRouter::Haproxy(router) => router.clone(),
        }
    }

    fn backends(&self) -> Arc<dyn Backends> {
        match self {
            AppRouter::Builtin(router) => router.clone(),
            AppRouter::Haproxy(router) => router.clone(),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            AppRouter::Builtin(router) => router.router().local_addr(),
            AppRouter::Haproxy(router) => router.local_addr(),
        }
    }
}

/// One app in the data plane.
struct PlaneApp {
    router: AppRouter,
    /// Host names, path prefix and HTTPS, as last asked for.
    front: FrontSpec,
    driver: Arc<InstanceDriver>,
    /// Forwards the driver's events to the connected runner.
    forwarder: tokio::task::JoinHandle<()>,
}

/// The data plane's state, shared by its connection tasks.
struct Plane {
    data_dir: PathBuf,
    apps: tokio::sync::Mutex<BTreeMap<String, PlaneApp>>,
    /// The container engine, shared by every app (connected on first use).
    containers: Arc<Containers>,
    /// HAProxy, shared by the apps it routes (started on first use).
    haproxy: Arc<Haproxy>,
    /// Where events go: the connected runner's outgoing queue, if one is connected.
    runner: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>>,
    shutdown: tokio::sync::Notify,
}

/// Runs the data plane for `data_dir` until it is told to shut down (or gets SIGTERM/SIGINT),
/// then stops every instance and router.
pub async fn run(data_dir: &Path) -> anyhow::Result<()> {
    let socket = data_dir.join(SOCKET);
    // A socket file left by a data plane that died is in the way; a live one answers.
    if UnixStream::connect(&socket).await.is_ok() {
        anyhow::bail!("a data plane already runs for {}", data_dir.display());
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(data_dir.join(PID_FILE), std::process::id().to_string())?;
    let plane = Arc::new(Plane {
        data_dir: data_dir.to_path_buf(),
        apps: tokio::sync::Mutex::new(BTreeMap::new()),
        containers: Arc::new(Containers::new(data_dir)),
        haproxy: Haproxy::new(data_dir),
        runner: Arc::new(Mutex::new(None)),
        shutdown: tokio::sync::Notify::new(),
    });
    tracing::info!(socket = %socket.display(), "data plane serving");
    let signals = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::select! {
        () = accept(listener, plane.clone()) => {}
        () = plane.shutdown.notified() => {}
        () = signals => {}
    }
    stop_everything(&plane).await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(data_dir.join(PID_FILE));
    tracing::info!("data plane stopped");
    Ok(())
}

async fn accept(listener: UnixListener, plane: Arc<Plane>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_runner(stream, plane.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a runner connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one runner connection. A newer connection takes the events over: the runner
/// behind an older one has gone (or is being replaced).
async fn serve_runner(stream: UnixStream, plane: Arc<Plane>) {
    let (read, mut write) = stream.into_split();
    let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            let mut line = serde_json::to_string(&message).expect("messages always serialize");
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    *plane.runner.lock().unwrap() = Some(outgoing.clone());
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let envelope: Envelope = match serde_json::from_str(&line) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, "a runner sent something that is not a request");
                continue;
            }
        };
        let plane = plane.clone();
        let outgoing = outgoing.clone();
        // Requests run concurrently: a probe or a drain must not hold up a scale.
        tokio::spawn(async move {
            let result = plane.handle(envelope.request).await;
            let _ = outgoing.send(Message::Reply {
                id: envelope.id,
                result,
            });
        });
    }
    let mut runner = plane.runner.lock().unwrap();
    if runner.as_ref().is_some_and(|current| current.same_channel(&outgoing)) {
        *runner = None;
    }
    drop(runner);
    writer.abort();
}

impl Plane {
    async fn handle(self: &Arc<Self>, request: Request) -> Result<Answer, PlaneError> {
        match request {
            Request::Hello { protocol } => {
                if protocol != PROTOCOL {
                    return Err(PlaneError::Invalid {
                        message: format!(
                            "this data plane speaks protocol {PROTOCOL}, the runner {protocol}; stop the data plane (`kill $(cat dataplane.pid)` in the data directory, which stops the apps' traffic) and start the runner again"
                        ),
                    });
                }
                Ok(Answer::Welcome {
                    protocol: PROTOCOL,
                    apps: self.state().await,
                    features: FEATURES.iter().map(|f| f.to_string()).collect(),
                })
            }
            Request::App {
                app,
                listen,
                router,
                front,
            } => {
                self.ensure_app(&app, listen, router, front).await?;
                self.done(&app).await
            }
            Request::Define { app, revision, config } => {
                self.with_app(&app, |a| a.driver.define(revision, Workload::Process(config)))
                    .await?;
                self.done(&app).await
            }
            Request::DefineContainer { app, revision, config } => {
                let driver = self.with_app(&app, |a| a.driver.clone()).await?;
                driver.define(revision, Workload::Container(config));
                let adopted = driver.adopt(revision).await?;
                if adopted > 0 {
                    tracing::info!(%app, revision, adopted, "adopted running containers");
                }
                self.done(&app).await
            }
            Request::Scale {
                app,
                revision,
                replicas,
            } => {
                let driver = self.with_app(&app, |a| a.driver.clone()).await?;
                driver.scale(revision, replicas).await?;
                self.done(&app).await
            }
            Request::Weights { app, weights } => {
                validate_weights(&weights)?;
                let router = self.with_app(&app, |a| a.router.driver()).await?;
                router.set_weights(&weights).await?;
                self.done(&app).await
            }
            Request::Maintenance { app, on } => {
                let router = self.with_app(&app, |a| a.router.driver()).await?;
                router.set_maintenance(on).await?;
                self.done(&app).await
            }
            Request::Probe { app, revision } => {
                let driver = self.with_app(&app, |a| a.driver.clone()).await?;
                Ok(Answer::Probe {
                    result: driver.probe(revision).await?,
                })
            }
            Request::CheckHttp {
                app,
                revision,
                path,
                status,
                timeout_ms,
            } => {
                let driver = self.with_app(&app, |a| a.driver.clone()).await?;
                let result = driver
                    .check_http(revision, &path, status, Duration::from_millis(timeout_ms))
                    .await?;
                Ok(Answer::Http { result })
            }
            Request::Remove { app } => {
                let removed = self.apps.lock().await.remove(&app);
                if let Some(removed) = removed {
                    stop_app(removed).await;
                }
                Ok(Answer::Done {
                    state: Observed::default(),
                })
            }
            Request::Metrics => {
                let apps = self.apps.lock().await;
                let metrics: Vec<(String, Arc<RouterMetrics>)> = apps
                    .iter()
                    .filter_map(|(name, app)| match &app.router {
                        AppRouter::Builtin(router) => Some((name.clone(), router.router().metrics())),
                        AppRouter::Haproxy(_) => None,
                    })
                    .collect();
                let haproxied: Vec<Arc<HaproxyRouter>> = apps
                    .values()
                    .filter_map(|app| match &app.router {
                        AppRouter::Haproxy(router) => Some(router.clone()),
                        AppRouter::Builtin(_) => None,
                    })
                    .collect();
                drop(apps);
                let borrowed: Vec<(&str, &RouterMetrics)> =
                    metrics.iter().map(|(a, m)| (a.as_str(), m.as_ref())).collect();
                let mut text = String::new();
                RouterMetrics::render_all(&borrowed, &mut text);
                if !haproxied.is_empty() {
                    let mut rows = Vec::new();
                    for router in &haproxied {
                        for (revision, requests, errors) in router.counters().await {
                            rows.push((router.app().to_string(), revision, requests, errors));
                        }
                    }
                    render_haproxy_metrics(&rows, &mut text);
                }
                Ok(Answer::Metrics { text })
            }
            Request::Traffic {
                app,
                revision,
                window_ms,
            } => {
                let router = self.with_app(&app, |a| a.router.clone()).await?;
                let window = Duration::from_millis(window_ms);
                let stats = match router {
                    AppRouter::Builtin(local) => local.router().metrics().traffic(revision, window),
                    AppRouter::Haproxy(haproxy) => haproxy.traffic(revision, window).await?,
                };
                Ok(Answer::Traffic { stats })
            }
            Request::Shutdown => {
                self.shutdown.notify_one();
                Ok(Answer::Done {
                    state: Observed::default(),
                })
            }
        }
    }

    /// The whole state, for a runner that (re)connects.
    async fn state(&self) -> BTreeMap<String, AppState> {
        let apps = self.apps.lock().await;
        apps.iter()
            .map(|(name, app)| {
                let (generation, counts) = app.driver.observed();
                let mut revisions = BTreeMap::new();
                let mut containers = BTreeMap::new();
                for revision in counts.keys() {
                    match app.driver.config(*revision) {
                        Some(Workload::Process(config)) => {
                            revisions.insert(*revision, config);
                        }
                        Some(Workload::Container(config)) => {
                            containers.insert(*revision, config);
                        }
                        None => {}
                    }
                }
                let instances = app
                    .driver
                    .instances()
                    .into_iter()
                    .map(|(revision, id, pid, _, _)| (revision, id, pid))
                    .collect();
                let router = app.router.driver();
                let state = AppState {
                    listen: app.router.local_addr(),
                    router: app.router.kind(),
                    front: app.front.clone(),
                    weights: router.weights(),
                    maintenance: router.maintenance(),
                    revisions,
                    containers,
                    observed: Observed { generation, counts },
                    instances,
                };
                (name.clone(), state)
            })
            .collect()
    }

    async fn done(&self, app: &str) -> Result<Answer, PlaneError> {
        let (generation, counts) = self.with_app(app, |a| a.driver.observed()).await?;
        Ok(Answer::Done {
            state: Observed { generation, counts },
        })
    }

    async fn with_app<T>(&self, app: &str, f: impl FnOnce(&PlaneApp) -> T) -> Result<T, PlaneError> {
        let apps = self.apps.lock().await;
        let found = apps.get(app).ok_or_else(|| PlaneError::Failed {
            message: format!("the data plane does not run {app:?}"),
        })?;
        Ok(f(found))
    }

    /// Creates the app, or moves its router to `listen` and `front`: the new routes are in
    /// place and serving before the old ones are let go.
    async fn ensure_app(
        self: &Arc<Self>,
        app: &str,
        listen: SocketAddr,
        kind: RouterKind,
        front: FrontSpec,
    ) -> Result<(), PlaneError> {
        let route = HostRoute {
            hosts: front.hosts.clone(),
            path_prefix: front.path_prefix.clone(),
            // The built-in router reads `front` itself; this is HAProxy's view of it.
            tls: match front.tls.as_ref().filter(|_| kind == RouterKind::Haproxy) {
                Some(tls) => {
                    let files = match (&tls.cert, &tls.key, tls.acme) {
                        (Some(cert), Some(key), false) => (cert.clone(), key.clone()),
                        (None, None, true) => crate::acme::cert_files(&self.data_dir, app),
                        _ => {
                            return Err(PlaneError::Invalid {
                                message: "router.tls: give cert and key, or acme = true".into(),
                            });
                        }
                    };
                    let Some(listen) = tls.listen else {
                        return Err(PlaneError::Invalid {
                            message: "router.tls.listen: HAProxy needs the HTTPS address".into(),
                        });
                    };
                    Some(HaTls {
                        listen,
                        cert: files.0,
                        key: files.1,
                        redirect: front.redirect_https,
                        acme: tls.acme,
                    })
                }
                None => None,
            },
        };
        if kind == RouterKind::Haproxy
            && front
                != (FrontSpec {
                    hosts: route.hosts.clone(),
                    path_prefix: route.path_prefix.clone(),
                    tls: front.tls.clone(),
                    redirect_https: front.redirect_https,
                    ..FrontSpec::default()
                })
        {
            return Err(PlaneError::Invalid {
                message:
                    "router: HAProxy routes by host name and path prefix and serves HTTPS here, and has no limits, access logs or HTTP/2 settings yet; use kind = \"builtin\" for those"
                        .into(),
            });
        }
        let mut apps = self.apps.lock().await;
        if let Some(existing) = apps.get_mut(app) {
            if existing.router.kind() != kind {
                return Err(PlaneError::Invalid {
                    message: format!(
                        "router.kind: {app} is routed by {} and cannot move to {} in place; delete the app and deploy it again, or deploy it under a new name",
                        existing.router.kind().as_str(),
                        kind.as_str()
                    ),
                });
            }
            if existing.router.local_addr() == listen && existing.front == front {
                return Ok(());
            }
            match &existing.router {
                AppRouter::Builtin(local) => {
                    let router = bind(app, listen, &front, &self.data_dir).await?;
                    let old = local.move_to(router);
                    tokio::spawn(async move { old.stop(ROUTER_GRACE).await });
                }
                AppRouter::Haproxy(router) => router.move_to(listen, &route).await?,
            }
            existing.front = front;
            return Ok(());
        }
        let router = match kind {
            RouterKind::Builtin => {
                AppRouter::Builtin(LocalRouter::new(bind(app, listen, &front, &self.data_dir).await?))
            }
            RouterKind::Haproxy => {
                AppRouter::Haproxy(HaproxyRouter::new(app, listen, &route, self.haproxy.clone()).await?)
            }
            RouterKind::Gateway | RouterKind::Service => {
                return Err(PlaneError::Failed {
                    message: format!("a {} router is Kubernetes', not the data plane's", kind.as_str()),
                });
            }
        };
        let output = OutputFiles::new(crate::driver::compute::output::app_dir(&self.data_dir, app)).map_err(|e| {
            PlaneError::Failed {
                message: format!("cannot create the output directory of {app}: {e}"),
            }
        })?;
        let driver = InstanceDriver::new(app, router.backends(), output, self.containers.clone());
        let forwarder = tokio::spawn(forward(app.to_string(), driver.events(), self.runner.clone()));
        apps.insert(
            app.to_string(),
            PlaneApp {
                router,
                front,
                driver,
                forwarder,
            },
        );
        Ok(())
    }
}

/// The app's built-in router: on `listen` (plain HTTP, or a redirect to HTTPS) and, with
/// TLS, on its HTTPS address; by host name and path prefix where `front` gives them.
async fn bind(
    app: &str,
    listen: SocketAddr,
    front: &FrontSpec,
    data_dir: &Path,
) -> Result<Arc<BuiltinRouter>, PlaneError> {
    let routing = Routing {
        hosts: front.hosts.clone(),
        path_prefix: front.path_prefix.clone(),
        tls: None,
        redirect_https: None,
        acme_challenges: None,
        h2c: front.h2c,
    };
    let acme = front.tls.as_ref().is_some_and(|tls| tls.acme);
    let https = match &front.tls {
        Some(tls) => Some(tls.listen.ok_or_else(|| PlaneError::Invalid {
            message: "router.tls.listen: the runner sent no HTTPS address".into(),
        })?),
        None => None,
    };
    let mut listeners = vec![(
        listen,
        Routing {
            redirect_https: https.filter(|_| front.redirect_https).map(|https| https.port()),
            acme_challenges: acme.then(|| crate::acme::challenge_dir(data_dir)),
            ..routing.clone()
        },
    )];
    if let (Some(tls), Some(https)) = (&front.tls, https) {
        let files = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) if !tls.acme => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                later: false,
            },
            _ => {
                let (cert, key) = crate::acme::cert_files(data_dir, app);
                TlsFiles { cert, key, later: true }
            }
        };
        listeners.push((
            https,
            Routing {
                tls: Some(files),
                ..routing
            },
        ));
    }
    let defaults = RouterOptions::default();
    let options = RouterOptions {
        max_header_bytes: front.max_header_bytes.map_or(defaults.max_header_bytes, |b| b as usize),
        max_body_bytes: front.max_body_bytes,
        max_connections: front.max_connections.map_or(defaults.max_connections, |c| c as usize),
        client_header_timeout: front
            .header_timeout_ms
            .map_or(defaults.client_header_timeout, Duration::from_millis),
        access_log: front
            .access_log
            .then(|| crate::driver::compute::output::app_dir(data_dir, app).join("access.log")),
        instance_http2: front.instance_http2,
        ..defaults
    };
    BuiltinRouter::bind_routed(app, &listeners, options)
        .await
        .map(Arc::new)
        .map_err(|e| PlaneError::Invalid {
            message: match e.kind() {
                // The router's own refusals (a host another app claims, a certificate it
                // cannot read) say everything already.
                std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::InvalidData => format!("router: {e}"),
                _ => format!("listen: cannot listen on {}: {e}", listeners_named(&listeners)),
            },
        })
}

fn listeners_named(listeners: &[(SocketAddr, Routing)]) -> String {
    listeners
        .iter()
        .map(|(addr, _)| addr.to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// HAProxy's per-revision counters, `(app, revision, requests, 5xx answers)`, in Prometheus
/// text format: one family after the other, as the format wants.
fn render_haproxy_metrics(rows: &[(String, u32, u64, u64)], out: &mut String) {
    use std::fmt::Write;
    out.push_str("# HELP slipway_haproxy_requests_total Requests HAProxy sent to a revision's instances.\n# TYPE slipway_haproxy_requests_total counter\n");
    for (app, revision, requests, _) in rows {
        let _ = writeln!(
            out,
            "slipway_haproxy_requests_total{{app=\"{app}\",revision=\"{revision}\"}} {requests}"
        );
    }
    out.push_str("# HELP slipway_haproxy_errors_total Answers with a 5xx status from a revision's backend in HAProxy.\n# TYPE slipway_haproxy_errors_total counter\n");
    for (app, revision, _, errors) in rows {
        let _ = writeln!(
            out,
            "slipway_haproxy_errors_total{{app=\"{app}\",revision=\"{revision}\"}} {errors}"
        );
    }
}

/// Passes an app's driver events on to whichever runner is connected.
async fn forward(
    app: String,
    mut events: tokio::sync::broadcast::Receiver<crate::driver::DriverEvent>,
    runner: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Some(runner) = runner.lock().unwrap().as_ref() {
                    // A runner that went away gets the whole state when it comes back.
                    let _ = runner.send(Message::Event {
                        app: app.clone(),
                        event,
                    });
                }
            }
            // The runner re-reads the counts with its next request; nothing is lost but detail.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn stop_app(app: PlaneApp) {
    app.driver.stop_all().await;
    app.forwarder.abort();
    if let AppRouter::Haproxy(router) = &app.router {
        router.stop().await;
    }
}

async fn stop_everything(plane: &Plane) {
    let apps: Vec<PlaneApp> = std::mem::take(&mut *plane.apps.lock().await).into_values().collect();
    futures_util::future::join_all(apps.iter().map(|app| async {
        app.driver.stop_all().await;
        app.forwarder.abort();
    }))
    .await;
    // HAProxy goes last and whole, rather than app by app with a reload each.
    plane.haproxy.stop().await;
}
