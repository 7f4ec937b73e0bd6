//! Listeners, shared by the apps routed on them: each address is bound once, and a request
//! goes to the app whose host names (and path prefix) it matches. An app with no host names
//! takes whatever no other app on the address claims.
//!
//! A listener serves plain HTTP, or HTTPS with each app's certificate chosen by the name the
//! client asked for (SNI). Certificates are read from files and read again when the files
//! change, without touching open connections.
//!
//! **Invariant:** two apps never claim the same host and path prefix on one address; the
//! second is refused when it binds, naming the first.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1 as server_http1;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use super::listener::{Connections, accept_loop};
use super::response::{RouterBody, fixed, fixed_bytes};
use super::{Shared, lock};

/// How an app is reached on a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// Host names (lowercase; `*.example.com` matches one more label); none: every host
    /// that no other app on the listener claims.
    pub hosts: Vec<String>,
    /// Only paths under this prefix (default `/`).
    pub path_prefix: Option<String>,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// On a plain listener: answer with a redirect to HTTPS on this port instead of
    /// proxying.
    pub redirect_https: Option<u16>,
    /// On a plain listener: answer ACME HTTP-01 challenges for the app's hosts from the
    /// files in this directory (one per token, holding its key authorization).
    pub acme_challenges: Option<PathBuf>,
    /// On a plain listener: accept HTTP/2 without TLS from clients that start with its
    /// preface (h2c "prior knowledge"). The listener's first app decides.
    pub h2c: bool,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The files may not be there yet (a certificate being obtained over ACME): until they
    /// are, TLS clients asking for the app's hosts are refused.
    pub later: bool,
}

/// Every listener in this process, by address, while some app is routed on it.
static LISTENERS: LazyLock<Mutex<HashMap<SocketAddr, Weak<Frontend>>>> = LazyLock::new(Mutex::default);

/// A bound address and the apps routed on it. Dropping the last handle stops accepting
/// and closes its connections once their requests are answered.
pub(super) struct Frontend {
    pub(super) front: Arc<Front>,
    pub(super) connections: Arc<Connections>,
    /// Taken when the listener stops accepting.
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// What the connection tasks of a listener share.
pub(super) struct Front {
    pub(super) local_addr: SocketAddr,
    routes: ArcSwap<Vec<Arc<Route>>>,
    /// How clients are served: the head size and timeout limits of the listener's first app
    /// (or of its only app, as it changes them).
    pub(super) server: ArcSwap<server_http1::Builder>,
    /// Free connection slots, and how many there are in all.
    slots: Arc<tokio::sync::Semaphore>,
    max_connections: Mutex<usize>,
    /// The TLS handshake, on an HTTPS listener.
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether plain connections may speak HTTP/2 (h2c).
    pub(super) h2c: bool,
}

/// One app on a listener.
pub(super) struct Route {
    app: String,
    /// Distinguishes two routes of the same app while it moves between them.
    id: u64,
    hosts: Vec<String>,
    prefix: String,
    pub(super) shared: Arc<Shared>,
    redirect_https: Option<u16>,
    acme_challenges: Option<PathBuf>,
    /// Whether it is routed over HTTPS.
    tls: bool,
    /// The certificate, once read; replaced when its files change.
    cert: ArcSwapOption<rustls::sign::CertifiedKey>,
}

/// What a request on a listener is for.
pub(super) enum Target {
    App(Arc<Shared>),
    Redirect(HeaderValue),
    /// An ACME HTTP-01 challenge: the file holding the answer.
    Challenge(PathBuf),
    Nobody,
}

impl Frontend {
    /// The listener on `listen` with `app` routed on it as `routing` says: a new one, or the
    /// one already bound there. Returns it and the route's id.
    pub(super) async fn join(
        app: &str,
        listen: SocketAddr,
        routing: &Routing,
        shared: Arc<Shared>,
        server: &server_http1::Builder,
        max_connections: usize,
    ) -> io::Result<(Arc<Frontend>, u64)> {
        let route = Arc::new(Route::new(app, routing, shared)?);
        let existing = (listen.port() != 0)
            .then(|| lock(&LISTENERS).get(&listen).and_then(Weak::upgrade))
            .flatten();
        let frontend = match existing {
            Some(frontend) => {
                // An app alone on its address that changes its limits gets them.
                if frontend.front.routes.load().iter().all(|r| r.app == app) {
                    frontend.front.server.store(Arc::new(server.clone()));
                    frontend.front.resize(max_connections);
                }
                frontend
            }
            None => {
                let listener = TcpListener::bind(listen).await?;
                let local_addr = listener.local_addr()?;
                let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
                let front = Arc::new_cyclic(|front| Front {
                    local_addr,
                    routes: ArcSwap::from_pointee(Vec::new()),
                    server: ArcSwap::from_pointee(server.clone()),
                    slots: slots.clone(),
                    max_connections: Mutex::new(max_connections.max(1)),
                    tls: routing.tls.is_some().then(|| tls_acceptor(front.clone())),
                    h2c: routing.h2c && routing.tls.is_none(),
                });
                let connections = Arc::new(Connections::default());
                let accept = tokio::spawn(accept_loop(listener, front.clone(), connections.clone(), slots));
                let frontend = Arc::new(Frontend {
                    front,
                    connections,
                    accept: Mutex::new(Some(accept)),
                });
                lock(&LISTENERS).insert(local_addr, Arc::downgrade(&frontend));
                frontend
            }
        };
        frontend.front.add(route.clone())?;
        if routing.tls.is_some() {
            tokio::spawn(watch_certificate(Arc::downgrade(&route), routing.tls.clone().unwrap()));
        }
        Ok((frontend, route.id))
    }

    /// Takes route `id` off the listener.
    pub(super) fn leave(&self, id: u64) {
        self.front.routes.rcu(|routes| {
            routes
                .iter()
                .filter(|route| route.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// Whether other routes than `id` remain.
    pub(super) fn shared_beyond(&self, id: u64) -> bool {
        self.front.routes.load().iter().any(|route| route.id != id)
    }

    /// Stops accepting; on return the listening socket is closed.
    pub(super) async fn stop_accepting(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        lock(&LISTENERS).remove(&self.front.local_addr);
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
        self.connections.close_gracefully();
        let mut listeners = lock(&LISTENERS);
        if listeners
            .get(&self.front.local_addr)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            listeners.remove(&self.front.local_addr);
        }
    }
}

impl Front {
    /// Sets the connection limit, counting connections already open.
    fn resize(&self, max_connections: usize) {
        let max_connections = max_connections.max(1);
        let mut current = lock(&self.max_connections);
        match max_connections.cmp(&current) {
            std::cmp::Ordering::Greater => self.slots.add_permits(max_connections - *current),
            std::cmp::Ordering::Less => {
                // Slots in use are taken back as their connections close.
                let mut owed = *current - max_connections;
                owed -= self.slots.forget_permits(owed);
                if owed > 0 {
                    let slots = self.slots.clone();
                    tokio::spawn(async move {
                        if let Ok(permits) = slots.acquire_many_owned(owed as u32).await {
                            permits.forget();
                        }
                    });
                }
            }
            std::cmp::Ordering::Equal => {}
        }
        *current = max_connections;
    }

    fn add(&self, route: Arc<Route>) -> io::Result<()> {
        let tls = self.tls.is_some();
        if route.tls != tls {
            let (has, wants) = if tls {
                ("HTTPS", "plain HTTP")
            } else {
                ("plain HTTP", "HTTPS")
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} serves {has}, and app {} wants {wants} there; give it another address",
                    self.local_addr, route.app
                ),
            ));
        }
        let routes = self.routes.load();
        for other in routes.iter().filter(|other| other.app != route.app) {
            if let Some(host) = route.overlap(other) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{host}{} on {} is routed to app {} already, and app {} claims it too; give one of them other hosts or another path prefix",
                        route.prefix.trim_end_matches('/'),
                        self.local_addr,
                        other.app,
                        route.app
                    ),
                ));
            }
        }
        self.routes.rcu(|routes| {
            let mut next: Vec<Arc<Route>> = routes.iter().cloned().collect();
            // The newest route of an app goes first, so one that moves here takes over.
            next.insert(0, route.clone());
            // Most specific first: exact hosts, then wildcards, then none; longer prefixes
            // before shorter ones. A stable sort keeps the newest first among equals.
            next.sort_by_key(|r| (r.host_rank(), std::cmp::Reverse(r.prefix.len())));
            next
        });
        Ok(())
    }

    /// The app a request for `host` (the Host header) and `target` (path and query) goes to.
    pub(super) fn target(&self, host: Option<&[u8]>, target: &str) -> Target {
        let routes = self.routes.load();
        // One app owning the whole address: no host to read.
        if let [only] = routes.as_slice()
            && only.hosts.is_empty()
            && only.prefix == "/"
            && only.redirect_https.is_none()
        {
            return Target::App(only.shared.clone());
        }
        let host = host.map(host_name).unwrap_or_default();
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        if let Some(token) = path.strip_prefix(crate::acme::CHALLENGE_PATH)
            && crate::acme::valid_token(token)
            && let Some(dir) = routes
                .iter()
                .find(|route| route.matches(&host))
                .and_then(|route| route.acme_challenges.as_ref())
        {
            return Target::Challenge(dir.join(token));
        }
        for route in routes.iter() {
            if route.matches(&host) && path_under(path, &route.prefix) {
                return match route.redirect_https {
                    Some(port) => Target::Redirect(https_location(&host, port, target)),
                    None => Target::App(route.shared.clone()),
                };
            }
        }
        Target::Nobody
    }

    /// The certificate for a TLS client that asked for `name` (or for nothing).
    pub(super) fn certificate(&self, name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let routes = self.routes.load();
        let name = name.map(str::to_ascii_lowercase).unwrap_or_default();
        routes
            .iter()
            .find(|route| route.matches(&name))
            .or_else(|| routes.first())
            .and_then(|route| route.cert.load_full())
    }
}

impl Route {
    fn new(app: &str, routing: &Routing, shared: Arc<Shared>) -> io::Result<Route> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let cert = match &routing.tls {
            Some(files) if files.later && !(files.cert.exists() && files.key.exists()) => None,
            Some(files) => Some(Arc::new(load_certificate(files)?)),
            None => None,
        };
        let mut prefix = routing.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Route {
            app: app.to_owned(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            hosts: routing.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            prefix,
            shared,
            redirect_https: routing.redirect_https,
            acme_challenges: routing.acme_challenges.clone(),
            tls: routing.tls.is_some(),
            cert: ArcSwapOption::new(cert),
        })
    }

    /// 0 for exact hosts, 1 for wildcards only, 2 for every host.
    fn host_rank(&self) -> u8 {
        if self.hosts.is_empty() {
            2
        } else if self.hosts.iter().all(|h| h.starts_with("*.")) {
            1
        } else {
            0
        }
    }

    fn matches(&self, host: &str) -> bool {
        self.hosts.is_empty()
            || self.hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => pattern == host,
            })
    }

    /// A host both routes claim under prefixes that overlap, if any.
    fn overlap(&self, other: &Route) -> Option<String> {
        if self.prefix != other.prefix {
            // Different prefixes are fine: the longer one wins for its paths.
            return None;
        }
        match (self.hosts.is_empty(), other.hosts.is_empty()) {
            (true, true) => Some("every host".into()),
            (true, false) | (false, true) => None,
            (false, false) => self.hosts.iter().find(|h| other.hosts.contains(h)).cloned(),
        }
    }
}

/// The host of a Host header or SNI name: lowercase, without a port.
fn host_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    if text.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop the port.
        return text.split_inclusive(']').next().unwrap_or_default().to_owned();
    }
    text.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text.clone(), |(host, _)| host.to_owned())
}

fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/" || path.starts_with(prefix) || path == prefix.trim_end_matches('/')
}

fn https_location(host: &str, port: u16, path: &str) -> HeaderValue {
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    HeaderValue::from_str(&format!("https://{authority}{path}")).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// The router's answer for a request no app on the listener claims.
pub(super) fn nobody_here() -> Response<RouterBody> {
    fixed(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        b"no app is routed here for this host\n",
    )
}

/// The answer to an ACME HTTP-01 challenge: the key authorization in `file`, or 404 when
/// no order waits for that token.
pub(super) async fn challenge_answer(file: &std::path::Path) -> Response<RouterBody> {
    match tokio::fs::read(file).await {
        Ok(answer) => fixed_bytes(StatusCode::OK, "application/octet-stream", answer.into()),
        Err(_) => no_challenge(),
    }
}

/// Answers ACME HTTP-01 challenge requests arriving on `listener` from the answers in
/// `dir`, for ever (HAProxy passes these requests on to the data plane).
pub(crate) async fn answer_acme_challenges(listener: tokio::net::UnixListener, dir: PathBuf) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot accept an ACME challenge request");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let dir = dir.clone();
                async move { Ok::<_, std::convert::Infallible>(acme_answer(&dir, request.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to a request for `path` that should be an ACME HTTP-01 challenge's, from the
/// answers in `dir`.
async fn acme_answer(dir: &std::path::Path, path: &str) -> Response<RouterBody> {
    match path
        .strip_prefix(crate::acme::CHALLENGE_PATH)
        .filter(|token| crate::acme::valid_token(token))
    {
        Some(token) => challenge_answer(&dir.join(token)).await,
        None => no_challenge(),
    }
}

fn no_challenge() -> Response<RouterBody> {
    fixed(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        b"no ACME challenge is pending for this token\n",
    )
}

/// A permanent redirect to `location`, method and body kept (308).
pub(super) fn redirect(location: HeaderValue) -> Response<RouterBody> {
    let mut response = fixed(StatusCode::PERMANENT_REDIRECT, "text/plain; charset=utf-8", b"");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// Reads a certificate chain and key from PEM files.
fn load_certificate(files: &TlsFiles) -> io::Result<rustls::sign::CertifiedKey> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &PathBuf, error: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("tls: cannot read the {what} in {}: {error}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("certificates", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificates", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("certificates", &files.cert, &"no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("private key", &files.key, &e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad("private key", &files.key, &e))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| bad("certificate", &files.cert, &format!("it does not match the key: {e}")))?;
    Ok(certified)
}

/// How often certificate files are looked at for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Reads the route's certificate again whenever its files change, until the route is gone.
/// A file that cannot be read keeps the certificate in use, with a warning.
async fn watch_certificate(route: Weak<Route>, files: TlsFiles) {
    let stamp = |files: &TlsFiles| -> Option<(SystemTime, SystemTime)> {
        let cert = std::fs::metadata(&files.cert).and_then(|m| m.modified()).ok()?;
        let key = std::fs::metadata(&files.key).and_then(|m| m.modified()).ok()?;
        Some((cert, key))
    };
    let mut seen = stamp(&files);
    loop {
        tokio::time::sleep(CERT_POLL).await;
        let Some(route) = route.upgrade() else { return };
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        match load_certificate(&files) {
            Ok(cert) => {
                route.cert.store(Some(Arc::new(cert)));
                seen = now;
                tracing::info!(app = %route.app, cert = %files.cert.display(), "certificate read again");
            }
            // Perhaps half written: tried again at the next look.
            Err(error) => warn!(app = %route.app, %error, "keeping the certificate in use"),
        }
    }
}

/// Resolves a TLS client's certificate by its SNI name, from the listener's routes.
#[derive(Debug)]
pub(super) struct SniResolver(pub(super) Weak<Front>);

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").field("local_addr", &self.local_addr).finish()
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.upgrade()?.certificate(hello.server_name())
    }
}

/// The TLS settings of an HTTPS listener: certificates by SNI, HTTP/2 or HTTP/1.1 by ALPN.
fn tls_acceptor(front: Weak<Front>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(front)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_without_ports_or_case() {
        assert_eq!(host_name(b"Shop.Example.com:8443"), "shop.example.com");
        assert_eq!(host_name(b"shop.example.com"), "shop.example.com");
        assert_eq!(host_name(b"[::1]:8080"), "[::1]");
        assert!(path_under("/api/cart", "/api/"));
        assert!(path_under("/api", "/api/"));
        assert!(!path_under("/apix", "/api/"));
        assert_eq!(
            https_location("shop.example.com", 8443, "/cart?x=1"),
            "https://shop.example.com:8443/cart?x=1"
        );
        assert_eq!(
            https_location("shop.example.com", 443, "/"),
            "https://shop.example.com/"
        );
    }
}
