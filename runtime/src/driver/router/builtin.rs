//! The built-in router: an HTTP/1.1 reverse proxy in front of one app's instances that
//! splits traffic between revisions by weight, so a rollout can shift traffic without an
//! external proxy.
//!
//! How it is put together, and why:
//!
//! - **The route table is read on every request and replaced rarely**, so it lives in an
//!   [`ArcSwap`]: a request loads it without a lock, and [`BuiltinRouter::update`] replaces
//!   it with one pointer store. Each request picks its backend from exactly one table,
//!   never from a half-applied one.
//! - **A request is in flight from the moment its backend is picked until its response
//!   body is finished** (or it fails). The count is raised while the table is still held,
//!   so once a backend is out of the table and a short settle period has passed,
//!   [`BuiltinRouter::drain`] can trust a zero.
//! - **Each backend owns its pool of idle connections.** Requests to different instances
//!   never contend on one lock, and when a removed backend is dropped its connections
//!   close with it.
//! - **hyper serves clients; the router speaks HTTP/1.1 to backends itself**, inside the
//!   task of the request. hyper's client needs a task per connection and channels
//!   between it and the request, which cost more CPU than everything else the router
//!   does; a backend is an app we run, and its responses need only a small parser.
//! - **A request that never reached an app, or that reached one which closed the
//!   connection without answering, is tried once more** when repeating it is safe,
//!   because a rollout stopping an instance must not show up as an error to users.
//! - **Every answer is HTTP.** Maintenance, no ready instance, a dead or slow backend:
//!   the client always gets a status code and a short body, never a reset connection.
//!
//! The router needs a tokio runtime with I/O and time enabled.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use std::io::Write as _;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant as TokioInstant, Sleep};
use tracing::{debug, warn};

/// How long a backend may take to start answering a request (connecting, retrying and
/// receiving the response head) before the client gets a 504.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client connection may go without a complete request head, idle time
/// included, before it is closed (nginx allows 60 s for a head and 75 s of idling).
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// One instance the router may send requests to.
///
/// The driver creates one per ready instance and puts it in the [`RouteTable`]; keep the
/// same `Arc` across table updates, because the in-flight count and the pool of idle
/// connections live here, not in the router.
pub struct Backend {
    instance: String,
    addr: SocketAddr,
    in_flight: AtomicU64,
    /// Number of [`BuiltinRouter::drain`] calls waiting on this backend. Finishing requests
    /// only pay for a wake-up while someone is listening.
    drainers: AtomicUsize,
    drained: Notify,
    /// Idle connections, most recently used at the back: requests take from the back,
    /// where connections are least likely to have been closed by the app.
    idle: Mutex<VecDeque<IdleConnection>>,
}

impl Backend {
    /// A backend for `instance`, reached at `addr`, with nothing in flight.
    pub fn new(instance: impl Into<String>, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            instance: instance.into(),
            addr,
            in_flight: AtomicU64::new(0),
            drainers: AtomicUsize::new(0),
            drained: Notify::new(),
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// The instance name, as the driver knows it; used in logs.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests currently being proxied to this backend: picked and not yet finished
    /// (the response body fully sent, or the request failed).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("instance", &self.instance)
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// What the router serves: replaced atomically as a whole by [`BuiltinRouter::update`].
///
/// The default table has no revisions, so every request gets "no ready instances".
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// When set, every request gets the maintenance page (503) and no backend is used.
    pub maintenance: bool,
    /// The revisions that may receive traffic. Revisions with weight 0 or without
    /// backends receive none, but still appear in the metrics.
    pub revisions: Vec<RoutedRevision>,
}

/// One revision's share of the traffic and the instances that serve it.
#[derive(Clone, Debug)]
pub struct RoutedRevision {
    /// The revision number, reported in `X-Slipway-Revision` and in the metrics.
    pub revision: u32,
    /// Relative weight, 0..=256 by convention: a revision receives
    /// `weight / sum(weights)` of the requests, taken over the revisions that have at
    /// least one backend, and spreads it evenly over its backends.
    pub weight: u32,
    /// The ready instances of this revision; only ready ones belong here.
    pub backends: Vec<Arc<Backend>>,
}

/// Per-app request counters, for Prometheus.
///
/// Counters for a revision appear when a table first names it and are kept for the life
/// of the router, so they never go backwards while it runs.
#[derive(Default)]
pub struct RouterMetrics {
    revisions: Mutex<BTreeMap<u32, Arc<RevisionStats>>>,
    unavailable: AtomicU64,
}

impl RouterMetrics {
    /// Appends this app's counters to `out` in the Prometheus text format, with their
    /// `# HELP` and `# TYPE` lines:
    /// `slipway_router_requests_total{app="..",revision="2"} N`,
    /// `slipway_router_errors_total{app="..",revision="2"} N` and
    /// `slipway_router_unavailable_total{app=".."} N`.
    ///
    /// The text format wants each metric's lines in one group with a single `# TYPE`
    /// line, so to expose several apps in one scrape use [`RouterMetrics::render_all`]
    /// rather than calling this once per app.
    pub fn render(&self, app: &str, out: &mut String) {
        RouterMetrics::render_all(&[(app, self)], out);
    }

    /// Appends the counters of several apps to `out`, each metric as one group.
    pub fn render_all(apps: &[(&str, &RouterMetrics)], out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail, so the results below are ignored.
        let snapshots: Vec<AppSnapshot> = apps
            .iter()
            .map(|(app, metrics)| (escape_label(app), metrics.snapshot(), metrics.unavailable()))
            .collect();
        let _ = writeln!(
            out,
            "# HELP slipway_router_requests_total Requests the built-in router proxied, by the revision that answered or failed them.\n\
             # TYPE slipway_router_requests_total counter"
        );
        for (app, revisions, _) in &snapshots {
            for (revision, requests, _) in revisions {
                let _ = writeln!(
                    out,
                    "slipway_router_requests_total{{app=\"{app}\",revision=\"{revision}\"}} {requests}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP slipway_router_errors_total Proxied requests answered with 502 or 504 because the instance failed or was too slow.\n\
             # TYPE slipway_router_errors_total counter"
        );
        for (app, revisions, _) in &snapshots {
            for (revision, _, errors) in revisions {
                let _ = writeln!(
                    out,
                    "slipway_router_errors_total{{app=\"{app}\",revision=\"{revision}\"}} {errors}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP slipway_router_unavailable_total Requests answered 503 because the app was in maintenance or had no ready instance.\n\
             # TYPE slipway_router_unavailable_total counter"
        );
        for (app, _, unavailable) in &snapshots {
            let _ = writeln!(out, "slipway_router_unavailable_total{{app=\"{app}\"}} {unavailable}");
        }
    }

    /// Requests proxied to `revision` so far (0 for a revision never seen).
    pub fn requests(&self, revision: u32) -> u64 {
        self.stats(revision).map_or(0, |s| s.requests.load(Ordering::Relaxed))
    }

    /// Requests to `revision` that ended in a 502 or 504.
    pub fn errors(&self, revision: u32) -> u64 {
        self.stats(revision).map_or(0, |s| s.errors.load(Ordering::Relaxed))
    }

    /// Requests answered 503 because of maintenance or no ready instance.
    pub fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::Relaxed)
    }
}

/// Options for [`BuiltinRouter::bind_with`]; [`BuiltinRouter::bind`] uses the defaults.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// How long a backend may take to produce the response head; past it the client
    /// gets a 504. Default [`DEFAULT_BACKEND_TIMEOUT`].
    pub backend_timeout: Duration,
    /// How long a client may take to send a request's headers, counting the idle time
    /// before them on a kept-alive connection; past it the connection is closed, so
    /// idle or slow clients cannot hold sockets forever. Default
    /// [`DEFAULT_CLIENT_HEADER_TIMEOUT`].
    pub client_header_timeout: Duration,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            backend_timeout: DEFAULT_BACKEND_TIMEOUT,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
        }
    }
}

/// The built-in reverse proxy for one app, serving in background tokio tasks.
///
/// Dropping it stops accepting and asks open connections to close once their current
/// request is answered; [`BuiltinRouter::shutdown`] does the same and waits.
pub struct BuiltinRouter {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    connections: Arc<Connections>,
    accept: JoinHandle<()>,
}

impl BuiltinRouter {
    /// Binds `listen` and starts serving in background tokio tasks, with an empty table
    /// (every request gets a 503 until the first [`BuiltinRouter::update`]).
    pub async fn bind(app: &str, listen: SocketAddr) -> io::Result<BuiltinRouter> {
        BuiltinRouter::bind_with(app, listen, RouterOptions::default()).await
    }

    /// Like [`BuiltinRouter::bind`], with non-default options.
    pub async fn bind_with(app: &str, listen: SocketAddr, options: RouterOptions) -> io::Result<BuiltinRouter> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let metrics = Arc::new(RouterMetrics::default());
        let mut server = server_http1::Builder::new();
        // The header timeout's timer is set per connection, in `serve_connection`.
        server
            .header_read_timeout(options.client_header_timeout)
            .keep_alive(true)
            // Copying each response into one buffer for write(2) rather than queueing its
            // pieces for writev(2) measured about 3% less CPU per request for small
            // responses, and about 3% more for 64 KiB ones.
            .writev(false)
            // Responses pass on the app's own Date header; hyper adding one costs a clock
            // read per response for nothing.
            .auto_date_header(false);
        let shared = Arc::new(Shared {
            app: app.to_owned(),
            routes: ArcSwap::from_pointee(Routes::compile(RouteTable::default(), &metrics)),
            retired: Mutex::new(Vec::new()),
            metrics,
            backend_timeout: options.backend_timeout,
            server,
        });
        let connections = Arc::new(Connections::default());
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), connections.clone()));
        Ok(BuiltinRouter {
            shared,
            local_addr,
            connections,
            accept,
        })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The app's counters, shared with the serving tasks.
    pub fn metrics(&self) -> Arc<RouterMetrics> {
        self.shared.metrics.clone()
    }

    /// Swaps the whole table in one atomic step; requests already routed keep their
    /// backend.
    pub fn update(&self, table: RouteTable) {
        let routes = Routes::compile(table, &self.shared.metrics);
        let old = self.shared.routes.swap(Arc::new(routes));
        let mut retired = lock(&self.shared.retired);
        retired.retain(|table| table.strong_count() > 0);
        retired.push(Arc::downgrade(&old));
    }

    /// The table currently served.
    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.routes.load().table.clone()
    }

    /// Waits until `backend` has no request in flight (after it was removed from the
    /// table), or `timeout`; returns whether it drained.
    ///
    /// Call it after an [`BuiltinRouter::update`] that no longer lists `backend`: a
    /// backend still in the table keeps receiving requests and may never drain. Once it
    /// has drained, its idle pooled connections are closed so the instance can stop
    /// without waiting for them.
    pub async fn drain(&self, backend: &Backend, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // A request picks its backend and counts itself in one step, holding the table it
        // picked from. Once no request holds a replaced table any more, every request that
        // picked `backend` from one is counted, so a zero below means "drained". Requests
        // hold a table for microseconds; there is no fixed settling time to wait out.
        while lock(&self.shared.retired).iter().any(|table| table.strong_count() > 0) {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _listening = DrainListener::new(backend);
        let drained = loop {
            let mut finished = pin!(backend.drained.notified());
            // Registering before reading the count means a request finishing in between
            // still wakes us.
            finished.as_mut().enable();
            if backend.in_flight() == 0 {
                break true;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                break backend.in_flight() == 0;
            }
        };
        if drained {
            lock(&backend.idle).clear();
        }
        drained
    }

    /// Like [`BuiltinRouter::shutdown`], for a router that is shared: stops accepting at
    /// once, then waits for the open connections as `shutdown` does.
    pub async fn stop(&self, grace: Duration) {
        self.accept.abort();
        self.connections.close_gracefully();
        if tokio::time::timeout(grace, self.connections.closed()).await.is_err() {
            warn!(app = %self.shared.app, "router shutdown grace period over; closing remaining connections");
            self.connections.abort_all();
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then stops.
    ///
    /// Idle keep-alive connections are closed at once; a connection busy with a request
    /// closes after answering it. Whatever is still open after `grace` is cut off.
    pub async fn shutdown(mut self, grace: Duration) {
        self.accept.abort();
        // Waiting for the accept task means the listening socket is closed on return.
        let _ = (&mut self.accept).await;
        self.connections.close_gracefully();
        if tokio::time::timeout(grace, self.connections.closed()).await.is_err() {
            warn!(app = %self.shared.app, "router shutdown grace period over; closing remaining connections");
            self.connections.abort_all();
        }
    }
}

impl Drop for BuiltinRouter {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.close_gracefully();
    }
}

// ---------------------------------------------------------------------------------------
// Everything below is private to the router.

/// An idle pooled connection older than this is closed instead of reused. Apps commonly
/// close idle keep-alive connections after 2 s (gunicorn) or 5 s (Node.js); reusing one
/// just as the app closes it loses the request, so we give up on it first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Idle connections kept per backend; more than the busiest moment needs is waste.
const POOL_MAX_IDLE: usize = 512;

/// Room made in a backend connection's read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Limits on a backend's response head. An app that exceeds them is broken, and the
/// client gets a 502 rather than the router buffering without bound.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;
/// Limit on one chunk-size line or trailer line of a chunked response body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Header telling clients (and tests) which revision answered.
const X_SLIPWAY_REVISION: HeaderName = HeaderName::from_static("x-slipway-revision");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const MAINTENANCE_PAGE: &[u8] = b"<!doctype html>\n\
<meta charset=\"utf-8\">\n\
<meta http-equiv=\"refresh\" content=\"5\">\n\
<title>Down for maintenance</title>\n\
<h1>Down for maintenance</h1>\n\
<p>This site is being updated and will be back shortly. This page reloads by itself.</p>\n";
const NO_READY_INSTANCES: &[u8] = b"no ready instances of this app\n";
const BAD_GATEWAY: &[u8] = b"an instance of this app failed to answer this request\n";
const GATEWAY_TIMEOUT: &[u8] = b"an instance of this app did not answer in time\n";

/// State shared by the router handle and every connection task.
struct Shared {
    app: String,
    routes: ArcSwap<Routes>,
    /// Tables replaced by [`BuiltinRouter::update`] that a request may still be picking
    /// from; see [`BuiltinRouter::drain`].
    retired: Mutex<Vec<Weak<Routes>>>,
    metrics: Arc<RouterMetrics>,
    backend_timeout: Duration,
    server: server_http1::Builder,
}

/// A [`RouteTable`] prepared for picking: only revisions that can take traffic, with
/// their round-robin counters and metric handles.
struct Routes {
    table: Arc<RouteTable>,
    candidates: Vec<Candidate>,
    total_weight: u64,
}

struct Candidate {
    weight: u64,
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    stats: Arc<RevisionStats>,
}

struct RevisionStats {
    /// The `X-Slipway-Revision` value, made once so responses only clone it.
    header: HeaderValue,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// A backend picked for one request: it counts as in flight until this is dropped.
struct Pick {
    in_flight: InFlight,
    stats: Arc<RevisionStats>,
}

enum Choice {
    Routed(Pick),
    Maintenance,
    NoBackend,
}

/// Holds one unit of a backend's in-flight count.
struct InFlight(Arc<Backend>);

/// Registers a [`BuiltinRouter::drain`] caller for the duration of its wait, even if the
/// wait is cancelled.
struct DrainListener<'a>(&'a Backend);

/// One HTTP/1.1 connection to a backend, driven directly by the request using it.
///
/// The router speaks to backends itself rather than through hyper's client: a request
/// then needs no connection task, no channels and no extra wake-ups, which were the
/// largest share of the router's own CPU time. Clients are still served by hyper.
struct BackendConnection {
    io: BackendIo,
    /// Enforces the backend timeout. Arming a timer per request is a measurable share
    /// of a proxied request's cost, so this one is armed once and moved only when it
    /// fires for an earlier request's deadline.
    timer: Pin<Box<Sleep>>,
}

struct BackendIo {
    stream: TcpStream,
    /// Bytes read from the backend and not consumed yet.
    read: BytesMut,
    /// Scratch space for request heads and chunk framing, kept for its allocation.
    write: Vec<u8>,
}

/// Connections are boxed so that futures and bodies carry a pointer, not the
/// connection: hyper moves both into place for every request.
type Connection = Box<BackendConnection>;

struct IdleConnection {
    connection: Connection,
    /// When the request that last used the connection started.
    since: TokioInstant,
}

/// A backend's response head, parsed.
struct ResponseHead {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// Whether the connection may carry another request after this response.
    keep_alive: bool,
}

/// How the end of a response body is found (RFC 9112 §6.3), and how much is left.
#[derive(Debug, PartialEq)]
enum Framing {
    /// No more body: none was expected, or all of it has been read.
    Done,
    /// `Content-Length`: this many bytes remain.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the encoding.
    Chunked(ChunkState),
    /// No length given: the body runs until the backend closes the connection.
    UntilClose,
}

#[derive(Debug, PartialEq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the line break that ends a chunk's data.
    DataEnd,
    /// After the last chunk, skipping trailer fields up to the blank line.
    Trailers,
}

/// What decoding the buffered bytes of a response body produced.
#[derive(Debug, PartialEq)]
enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// The body of a response sent to a client.
enum RouterBody {
    Fixed(Option<Bytes>),
    Proxied(BackendBody),
}

/// A backend's response body on its way to the client. It keeps the request in flight
/// until it is finished, then hands the connection back to the pool.
struct BackendBody {
    /// `None` once the connection failed; it is never reused then.
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    in_flight: InFlight,
    /// When the request started: the connection's age mark in the pool. Taking the
    /// start rather than the end saves a clock read and errs on the safe side.
    started: TokioInstant,
}

/// Why a backend could not answer; logged, never shown to the client.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    /// No connection could be made: nothing listens there any more, or the network said no.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The backend's address.
        addr: SocketAddr,
        /// What the connect call reported.
        source: io::Error,
    },
    /// Reading from or writing to the backend failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The backend's address.
        addr: SocketAddr,
        /// What the socket reported.
        source: io::Error,
    },
    /// The backend closed the connection before the response was complete.
    #[error("{addr} closed the connection before the response was complete")]
    Closed {
        /// The backend's address.
        addr: SocketAddr,
    },
    /// The backend's answer is not a valid HTTP/1 response.
    #[error("{addr} sent an invalid response: {reason}")]
    Malformed {
        /// The backend's address.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The client's request body could not be read, so it could not be passed on.
    #[error("reading the request body from the client failed: {0}")]
    RequestBody(#[source] hyper::Error),
    /// No complete response head arrived within the backend timeout.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// The backend's address.
        addr: SocketAddr,
        /// The timeout that ran out.
        timeout: Duration,
    },
}

/// How a request failed on one backend, which decides whether it may go to another.
enum SendError {
    /// Nothing reached the backend: the request may go elsewhere as it is.
    Unsent(ProxyError),
    /// The request was written, at least in part, and no response came back.
    Lost { error: ProxyError, reused: bool },
    /// The backend answered with something invalid, or not in time: trying elsewhere
    /// would only be later still, and the request's head has been used up.
    Final(ProxyError),
}

/// [`SendError`] as seen on one connection, before it is known whether the connection
/// came from the pool.
enum ExchangeError {
    Unsent(ProxyError),
    Lost(ProxyError),
    Final(ProxyError),
}

/// The time limits of one request.
#[derive(Clone, Copy)]
struct Deadline {
    /// When the request started; also the age mark of connections it returns to the pool.
    start: TokioInstant,
    /// When the backend must have answered.
    at: TokioInstant,
    timeout: Duration,
}

#[derive(Default)]
struct Connections {
    set: Mutex<ConnectionSet>,
    emptied: Notify,
}

#[derive(Default)]
struct ConnectionSet {
    next_id: u64,
    live: HashMap<u64, LiveConnection>,
}

struct LiveConnection {
    close: Option<oneshot::Sender<()>>,
    abort: AbortHandle,
}

/// Removes a connection from [`Connections`] when its task ends, however it ends.
struct ConnectionEntry {
    connections: Arc<Connections>,
    id: u64,
}

impl Shared {
    fn choose(&self, exclude: Option<&Backend>) -> Choice {
        let routes = self.routes.load();
        if routes.table.maintenance {
            return Choice::Maintenance;
        }
        match routes.select(random_u64(), exclude) {
            // Counted while the table is still loaded, so `drain` never misses it.
            Some((candidate, backend)) => Choice::Routed(Pick {
                in_flight: InFlight::start(backend),
                stats: candidate.stats.clone(),
            }),
            None => Choice::NoBackend,
        }
    }

    /// Proxies one request.
    ///
    /// hyper moves this future into place for every request, so its size matters. It is
    /// an `async` block rather than an `async fn` because an `async fn` keeps a copy of
    /// each argument beside the local it moves it into, and the request head is large.
    #[allow(clippy::manual_async_fn)]
    fn proxy(
        self: Arc<Self>,
        mut head: RequestParts,
        body: Incoming,
        client_ip: HeaderValue,
    ) -> impl Future<Output = Response<RouterBody>> + Send + 'static {
        async move {
            let mut pick = match self.choose(None) {
                Choice::Routed(pick) => pick,
                Choice::Maintenance => return self.unavailable(maintenance_page()),
                Choice::NoBackend => return self.unavailable(no_ready_instances()),
            };
            prepare_request(&mut head, &client_ip);
            let body = (!body.is_end_stream()).then_some(body);
            let start = TokioInstant::now();
            let deadline = Deadline {
                start,
                at: start + self.backend_timeout,
                timeout: self.backend_timeout,
            };
            let outcome = self.exchange(&mut pick, &mut head, body, &deadline).await;
            pick.stats.requests.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok((response, connection)) => proxied_response(response, connection, pick, deadline.start),
                Err(error) => {
                    pick.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(app = %self.app, instance = pick.backend().instance(), %error, "request failed");
                    if let ProxyError::Timeout { .. } = error {
                        fixed(
                            StatusCode::GATEWAY_TIMEOUT,
                            "text/plain; charset=utf-8",
                            GATEWAY_TIMEOUT,
                        )
                    } else {
                        fixed(StatusCode::BAD_GATEWAY, "text/plain; charset=utf-8", BAD_GATEWAY)
                    }
                }
            }
        }
    }

    /// Sends the request to the picked backend, and once more elsewhere if that is safe.
    /// On return `pick` is the backend that answered or failed last.
    #[allow(clippy::manual_async_fn)]
    fn exchange<'a>(
        &'a self,
        pick: &'a mut Pick,
        head: &'a mut RequestParts,
        mut body: Option<Incoming>,
        deadline: &'a Deadline,
    ) -> impl Future<Output = Result<(ResponseHead, Connection), ProxyError>> + Send + 'a {
        // An `async` block, not an `async fn`, for the reason given at `proxy`.
        async move {
            let bodyless = body.is_none();
            let (error, reused) = match send(pick.backend(), head, &mut body, true, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(SendError::Final(error)) => return Err(error),
                // Nothing was sent, so even a request with a body can go elsewhere intact.
                Err(SendError::Unsent(error)) => (error, false),
                // The backend may have acted on it; only a body-less request is repeated,
                // the same bet nginx makes with `proxy_next_upstream error`.
                Err(SendError::Lost { error, reused }) if bodyless => (error, reused),
                Err(SendError::Lost { error, .. }) => return Err(error),
            };
            debug!(app = %self.app, instance = pick.backend().instance(), %error, "retrying on another instance");
            let (retry, use_pool) = match self.choose(Some(pick.backend())) {
                Choice::Routed(other) => (other, true),
                // The only instance failed on a kept-alive connection, which the app may just
                // have closed as idle: a new connection to it is the best remaining chance.
                _ if reused => match self.choose(None) {
                    Choice::Routed(same) => (same, false),
                    _ => return Err(error),
                },
                _ => return Err(error),
            };
            *pick = retry;
            // The retry is rare and its future is large; boxing it keeps every request's
            // future small, which hyper moves into place once per request.
            match Box::pin(send(pick.backend(), head, &mut body, use_pool, deadline)).await {
                Ok(answer) => Ok(answer),
                Err(SendError::Unsent(error) | SendError::Lost { error, .. } | SendError::Final(error)) => Err(error),
            }
        }
    }

    fn unavailable(&self, response: Response<RouterBody>) -> Response<RouterBody> {
        self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        response
    }
}

type RequestParts = hyper::http::request::Parts;

impl Routes {
    fn compile(table: RouteTable, metrics: &RouterMetrics) -> Routes {
        let mut stats = lock(&metrics.revisions);
        let mut stats_for = |revision: u32| {
            stats
                .entry(revision)
                .or_insert_with(|| {
                    Arc::new(RevisionStats {
                        header: HeaderValue::from(revision),
                        requests: AtomicU64::new(0),
                        errors: AtomicU64::new(0),
                    })
                })
                .clone()
        };
        let mut candidates = Vec::new();
        for revision in &table.revisions {
            let stats = stats_for(revision.revision);
            if revision.weight > 0 && !revision.backends.is_empty() {
                candidates.push(Candidate {
                    weight: u64::from(revision.weight),
                    backends: revision.backends.clone(),
                    next: AtomicUsize::new(0),
                    stats,
                });
            }
        }
        let total_weight = candidates.iter().map(|c| c.weight).sum();
        Routes {
            table: Arc::new(table),
            candidates,
            total_weight,
        }
    }

    /// Picks a revision with probability proportional to its weight, using `random`
    /// (uniform over `u64`), then the next of its backends in round-robin order.
    /// `exclude` removes one backend from consideration, as if it were not in the table.
    fn select(&self, random: u64, exclude: Option<&Backend>) -> Option<(&Candidate, &Arc<Backend>)> {
        let allowed = |backend: &Arc<Backend>| exclude.is_none_or(|x| !ptr::eq(Arc::as_ptr(backend), x));
        let eligible = |candidate: &&Candidate| exclude.is_none() || candidate.backends.iter().any(allowed);
        let total = match exclude {
            None => self.total_weight,
            Some(_) => self.candidates.iter().filter(eligible).map(|c| c.weight).sum(),
        };
        if total == 0 {
            return None;
        }
        // Multiply-and-shift maps `random` onto 0..total without a division or modulo bias.
        let mut point = ((u128::from(random) * u128::from(total)) >> 64) as u64;
        let candidate = self.candidates.iter().filter(eligible).find(|candidate| {
            if point < candidate.weight {
                true
            } else {
                point -= candidate.weight;
                false
            }
        })?;
        let backends = &candidate.backends;
        if backends.len() == 1 {
            return allowed(&backends[0]).then_some((candidate, &backends[0]));
        }
        let start = candidate.next.fetch_add(1, Ordering::Relaxed);
        (0..backends.len())
            .map(|i| &backends[(start + i) % backends.len()])
            .find(|b| allowed(b))
            .map(|backend| (candidate, backend))
    }
}

impl Pick {
    fn backend(&self) -> &Backend {
        &self.in_flight.0
    }
}

impl InFlight {
    fn start(backend: &Arc<Backend>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(backend.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let backend = &self.0;
        if backend.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && backend.drainers.load(Ordering::SeqCst) > 0 {
            backend.drained.notify_waiters();
        }
    }
}

impl<'a> DrainListener<'a> {
    fn new(backend: &'a Backend) -> Self {
        backend.drainers.fetch_add(1, Ordering::SeqCst);
        DrainListener(backend)
    }
}

impl Drop for DrainListener<'_> {
    fn drop(&mut self) {
        self.0.drainers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    /// An idle connection to this backend that is still open and young enough to trust.
    fn checkout(&self, now: TokioInstant) -> Option<Connection> {
        loop {
            let idle = lock(&self.idle).pop_back()?;
            if now.saturating_duration_since(idle.since) < POOL_IDLE_TIMEOUT && idle.connection.is_open() {
                return Some(idle.connection);
            }
        }
    }

    fn checkin(&self, connection: Connection, since: TokioInstant) {
        let mut pool = lock(&self.idle);
        if pool.len() < POOL_MAX_IDLE {
            pool.push_back(IdleConnection { connection, since });
        }
        // Requests take the newest connections, so old ones would otherwise sit at the
        // front holding sockets the app has long closed. Closing them happens after the
        // lock is released.
        let stale = pool
            .front()
            .is_some_and(|oldest| since.saturating_duration_since(oldest.since) > POOL_IDLE_TIMEOUT);
        let stale = if stale { pool.pop_front() } else { None };
        drop(pool);
        drop(stale);
    }
}

/// Sends the request over a pooled connection if one works, else over a new one.
async fn send(
    backend: &Backend,
    head: &mut RequestParts,
    body: &mut Option<Incoming>,
    use_pool: bool,
    deadline: &Deadline,
) -> Result<(ResponseHead, Connection), SendError> {
    let mut use_pool = use_pool;
    // One call site for `exchange` keeps this future, which every request carries, small.
    loop {
        let pooled = if use_pool {
            backend.checkout(deadline.start)
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => {
                use_pool = false;
                Box::pin(BackendConnection::connect(backend.addr, deadline)).await?
            }
        };
        return match connection.exchange(backend, head, body, deadline).await {
            Ok(response) => Ok((response, connection)),
            // A pooled connection that died before taking the request: try the next one.
            Err(ExchangeError::Unsent(_)) if reused => continue,
            Err(ExchangeError::Unsent(error)) => Err(SendError::Unsent(error)),
            Err(ExchangeError::Lost(error)) => Err(SendError::Lost { error, reused }),
            Err(ExchangeError::Final(error)) => Err(SendError::Final(error)),
        };
    }
}

impl BackendConnection {
    async fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<Connection, SendError> {
        let stream = match tokio::time::timeout_at(deadline.at, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(SendError::Unsent(ProxyError::Connect { addr, source })),
            Err(_) => {
                return Err(SendError::Final(ProxyError::Timeout {
                    addr,
                    timeout: deadline.timeout,
                }));
            }
        };
        // Requests and responses are small and latency-bound; Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        Ok(Box::new(BackendConnection {
            io: BackendIo {
                stream,
                read: BytesMut::with_capacity(READ_CHUNK),
                write: Vec::with_capacity(1024),
            },
            timer: Box::pin(tokio::time::sleep_until(deadline.at)),
        }))
    }

    /// Whether an idle connection still looks usable. An idle connection has nothing to
    /// read, so readable means closed by the backend (or garbage). This costs no system
    /// call unless the event loop has seen the socket become readable.
    fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes the request (taking `body` once its head is out) and reads the response
    /// head, by `deadline`.
    async fn exchange(
        &mut self,
        backend: &Backend,
        head: &mut RequestParts,
        body: &mut Option<Incoming>,
        deadline: &Deadline,
    ) -> Result<ResponseHead, ExchangeError> {
        // Requests on a connection come one after another, so an earlier deadline than
        // ours is an old one; a later one only appears if the timeout setting differs.
        if self.timer.deadline() > deadline.at {
            self.timer.as_mut().reset(deadline.at);
        }
        let mut timer = self.timer.as_mut();
        let mut exchange = pin!(self.io.exchange(backend.addr, head, body));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = exchange.as_mut().poll(cx) {
                return Poll::Ready(outcome);
            }
            while timer.as_mut().poll(cx).is_ready() {
                if TokioInstant::now() >= deadline.at {
                    let error = ProxyError::Timeout {
                        addr: backend.addr,
                        timeout: deadline.timeout,
                    };
                    return Poll::Ready(Err(ExchangeError::Final(error)));
                }
                timer.as_mut().reset(deadline.at);
            }
            Poll::Pending
        })
        .await
    }
}

impl BackendIo {
    /// Writes the request and reads the response head. The response's headers are
    /// parsed into the request's `HeaderMap`, which is no longer needed by then: hyper
    /// recycles a response's map for the next request on its connection, so passing
    /// the same one back and forth saves two allocations per request.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        head: &mut RequestParts,
        body: &mut Option<Incoming>,
    ) -> Result<ResponseHead, ExchangeError> {
        let io = |source| ProxyError::Io { addr, source };
        let chunked = body.is_some() && !head.headers.contains_key(header::CONTENT_LENGTH);
        self.write.clear();
        encode_request_head(head, chunked, addr, &mut self.write);
        if let Err(source) = self.stream.write_all(&self.write).await {
            // A failed write may still have sent part of the head; only a connection
            // refused outright can be sure. Either way nothing complete arrived, and a
            // partial head is never acted on, so the request counts as unsent.
            return Err(ExchangeError::Unsent(io(source)));
        }
        if let Some(mut body) = body.take() {
            // Boxed because only requests with a body need it, and it would make every
            // request's future larger.
            Box::pin(self.write_body(&mut body, chunked))
                .await
                .map_err(|e| ExchangeError::Lost(e.into_proxy_error(addr)))?;
        }
        let is_head = head.method == Method::HEAD;
        let malformed = |reason| ExchangeError::Final(ProxyError::Malformed { addr, reason });
        // Once a response head is parsed the request's headers are gone, and after an
        // interim answer the backend surely has the request: it is not sent again.
        let mut interim = false;
        loop {
            if let Some(end) = find_head_end(&self.read) {
                let raw = self.read.split_to(end).freeze();
                let response = parse_response_head(raw, is_head, &mut head.headers).map_err(malformed)?;
                // Interim answers (100 Continue, 103 Early Hints) are not passed on.
                if response.status.is_informational() {
                    if response.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(malformed("unrequested protocol switch"));
                    }
                    interim = true;
                    continue;
                }
                return Ok(ResponseHead {
                    headers: std::mem::take(&mut head.headers),
                    ..response
                });
            }
            if self.read.len() > MAX_RESPONSE_HEAD {
                return Err(malformed("response head too large"));
            }
            self.read.reserve(READ_CHUNK);
            let error = match self.stream.read_buf(&mut self.read).await {
                Ok(0) => ProxyError::Closed { addr },
                Ok(_) => continue,
                Err(source) => io(source),
            };
            return Err(if interim {
                ExchangeError::Final(error)
            } else {
                ExchangeError::Lost(error)
            });
        }
    }

    async fn write_body(&mut self, body: &mut Incoming, chunked: bool) -> Result<(), BodyWriteError> {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyWriteError::Client)?.into_data() else {
                // Request trailers are dropped: few backends read them, and chunked
                // framing is the only way to pass them on.
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                self.write.clear();
                let _ = write!(self.write, "{:x}\r\n", data.len());
                self.write.extend_from_slice(&data);
                self.write.extend_from_slice(b"\r\n");
                self.stream
                    .write_all(&self.write)
                    .await
                    .map_err(BodyWriteError::Backend)?;
            } else {
                self.stream.write_all(&data).await.map_err(BodyWriteError::Backend)?;
            }
        }
        if chunked {
            self.stream
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(BodyWriteError::Backend)?;
        }
        Ok(())
    }
}

enum BodyWriteError {
    Client(hyper::Error),
    Backend(io::Error),
}

impl BodyWriteError {
    fn into_proxy_error(self, addr: SocketAddr) -> ProxyError {
        match self {
            BodyWriteError::Client(error) => ProxyError::RequestBody(error),
            BodyWriteError::Backend(source) => ProxyError::Io { addr, source },
        }
    }
}

/// Writes the request line and headers. Header values come from a parsed `HeaderMap`,
/// which cannot hold line breaks, so nothing here can split the request.
fn encode_request_head(head: &RequestParts, chunked: bool, addr: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // HTTP/1.1 requires a Host; only HTTP/1.0 clients leave it out.
    if !head.headers.contains_key(header::HOST) {
        let _ = write!(out, "host: {addr}\r\n");
    }
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a message head ends (just past its blank line), if it is complete. Bare `\n`
/// line ends are accepted, as most parsers do.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
        let newline = from + at;
        match buf.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => from = newline + 1,
        }
    }
    None
}

/// Parses a complete response head (status line, headers, blank line).
///
/// The headers go into `headers`, emptied first so its allocation is reused; the
/// returned head's own map is left empty for the caller to put them in. Header values
/// share `head`'s memory instead of being copied.
fn parse_response_head(
    head: Bytes,
    is_head_request: bool,
    headers: &mut HeaderMap,
) -> Result<ResponseHead, &'static str> {
    let mut lines = Lines { head: &head, at: 0 };
    let status_line = lines.next().ok_or("empty response")?;
    let status_line = &head[status_line];
    let (http11, status) = match status_line {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            minor @ (b'0' | b'1'),
            b' ',
            code @ ..,
        ] if code.len() >= 3 => {
            if code.len() > 3 && code[3] != b' ' {
                return Err("bad status line");
            }
            (
                *minor == b'1',
                StatusCode::from_bytes(&code[..3]).map_err(|_| "bad status code")?,
            )
        }
        _ => return Err("not an HTTP/1 status line"),
    };
    headers.clear();
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    let mut keep_alive = http11;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_RESPONSE_HEADERS {
            return Err("too many headers");
        }
        let text = &head[line.clone()];
        if matches!(text[0], b' ' | b'\t') {
            return Err("folded header line");
        }
        let colon = text
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without a colon")?;
        let name = HeaderName::from_bytes(&text[..colon]).map_err(|_| "bad header name")?;
        let value_start = line.start + colon + 1;
        let value = trim_whitespace(&head, value_start..line.end);
        let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| "bad header value")?;
        if name == header::CONTENT_LENGTH {
            let length = value
                .to_str()
                .ok()
                .and_then(parse_decimal)
                .ok_or("bad content-length")?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err("conflicting content-length headers");
            }
            content_length = Some(length);
        } else if name == header::TRANSFER_ENCODING {
            // Only the last coding decides whether the body is chunked.
            let last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
        headers.append(name, value);
    }
    let status_has_body =
        !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED);
    let framing = if is_head_request || !status_has_body {
        Framing::Done
    } else if let Some(chunked) = transfer_encoding {
        // With both, Transfer-Encoding wins, the length is dropped, and the connection is
        // not trusted again (RFC 9112 §6.3).
        if content_length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(ChunkState::Size)
        } else {
            Framing::UntilClose
        }
    } else {
        match content_length {
            Some(0) => Framing::Done,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    Ok(ResponseHead {
        status,
        headers: HeaderMap::new(),
        framing,
        keep_alive,
    })
}

/// The lines of a message head, as ranges without their line ends.
struct Lines<'a> {
    head: &'a [u8],
    at: usize,
}

impl Iterator for Lines<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.head.get(self.at..).filter(|r| !r.is_empty())?;
        let length = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let start = self.at;
        self.at += length + 1;
        let end = if length > 0 && rest[length - 1] == b'\r' {
            start + length - 1
        } else {
            start + length
        };
        Some(start..end)
    }
}

fn trim_whitespace(bytes: &[u8], mut range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    while range.start < range.end && matches!(bytes[range.start], b' ' | b'\t') {
        range.start += 1;
    }
    while range.end > range.start && matches!(bytes[range.end - 1], b' ' | b'\t') {
        range.end -= 1;
    }
    range
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Framing {
    /// Takes the next piece of body out of `buf`, following the framing.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self {
                Framing::Done => return Ok(Decoded::End),
                Framing::UntilClose | Framing::Length(_) | Framing::Chunked(ChunkState::Data(_)) if buf.is_empty() => {
                    return Ok(Decoded::NeedMore);
                }
                Framing::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Framing::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Framing::Done;
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Framing::Chunked(ChunkState::Data(left)) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Framing::Chunked(ChunkState::DataEnd);
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Framing::Chunked(ChunkState::DataEnd) => match &buf[..] {
                    [b'\r', b'\n', ..] => {
                        let _ = buf.split_to(2);
                        *self = Framing::Chunked(ChunkState::Size);
                    }
                    [b'\n', ..] => {
                        let _ = buf.split_to(1);
                        *self = Framing::Chunked(ChunkState::Size);
                    }
                    [] | [b'\r'] => return Ok(Decoded::NeedMore),
                    _ => return Err("chunk data longer than its size"),
                },
                Framing::Chunked(state @ (ChunkState::Size | ChunkState::Trailers)) => {
                    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk line too long");
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line = buf.split_to(newline + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if *state == ChunkState::Trailers {
                        if line.is_empty() {
                            *self = Framing::Done;
                        }
                        continue;
                    }
                    // Chunk extensions (after ';') carry nothing we need.
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                    let size = parse_hex(digits).ok_or("bad chunk size")?;
                    *state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
            }
        }
    }

    fn is_done(&self) -> bool {
        *self == Framing::Done
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |size, &digit| {
        Some(size * 16 + u64::from((digit as char).to_digit(16)?))
    })
}

fn proxied_response(
    head: ResponseHead,
    connection: Connection,
    pick: Pick,
    started: TokioInstant,
) -> Response<RouterBody> {
    let ResponseHead {
        status,
        mut headers,
        framing,
        keep_alive,
    } = head;
    strip_hop_by_hop(&mut headers);
    headers.insert(X_SLIPWAY_REVISION, pick.stats.header.clone());
    let body = BackendBody {
        connection: Some(connection),
        framing,
        keep_alive,
        in_flight: pick.in_flight,
        started,
    };
    let mut response = Response::new(RouterBody::Proxied(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Makes the client's request fit to send to a backend.
fn prepare_request(head: &mut RequestParts, client_ip: &HeaderValue) {
    // A body framed by Transfer-Encoding is re-framed for the backend; a Content-Length
    // sent alongside it must not survive, or the backend would frame it differently.
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut head.headers);
    // hyper already answered any `Expect: 100-continue` towards the client; passing it
    // on would make the backend wait for, or send, a second one.
    if head.headers.contains_key(header::EXPECT) {
        head.headers.remove(header::EXPECT);
    }
    // A request in absolute form (sent as if to a forward proxy) goes on in origin form,
    // with its authority as the Host it would otherwise lack.
    if let Some(authority) = head.uri.authority() {
        if !head.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            head.headers.insert(header::HOST, host);
        }
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        head.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    match head.headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(client_ip.clone());
        }
        // Many frameworks read only the first X-Forwarded-For line, so extend that one.
        header::Entry::Occupied(mut entry) => {
            let mut chain = Vec::new();
            for value in entry.iter() {
                chain.extend_from_slice(value.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(client_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&chain) {
                entry.insert(value);
            }
        }
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1), including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    fn is_hop_by_hop(name: &HeaderName) -> bool {
        matches!(
            name.as_str(),
            "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
        ) || name.as_str().starts_with("proxy-")
    }
    // Most messages have none, so look before allocating anything.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        doomed.extend(
            value
                .split(',')
                .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

fn fixed(status: StatusCode, content_type: &'static str, body: &'static [u8]) -> Response<RouterBody> {
    let mut response = Response::new(RouterBody::Fixed(Some(Bytes::from_static(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn maintenance_page() -> Response<RouterBody> {
    let mut response = fixed(StatusCode::SERVICE_UNAVAILABLE, "text/html", MAINTENANCE_PAGE);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn no_ready_instances() -> Response<RouterBody> {
    fixed(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        NO_READY_INSTANCES,
    )
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match self.get_mut() {
            RouterBody::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RouterBody::Proxied(body) => body.poll_data(cx).map(|data| data.map(|d| d.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RouterBody::Fixed(bytes) => bytes.is_none(),
            RouterBody::Proxied(body) => body.framing.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RouterBody::Fixed(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            RouterBody::Proxied(body) => match body.framing {
                Framing::Done => SizeHint::with_exact(0),
                Framing::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

impl BackendBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let addr = self.in_flight.0.addr;
            match self.framing.decode(&mut connection.io.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(reason) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(ProxyError::Malformed { addr, reason })));
                }
            }
            connection.io.read.reserve(READ_CHUNK);
            let read = pin!(connection.io.stream.read_buf(&mut connection.io.read));
            match std::task::ready!(read.poll(cx)) {
                Ok(0) if self.framing == Framing::UntilClose => {
                    self.framing = Framing::Done;
                    self.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(ProxyError::Closed { addr })));
                }
                Ok(_) => {}
                Err(source) => {
                    self.connection = None;
                    return Poll::Ready(Some(Err(ProxyError::Io { addr, source })));
                }
            }
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        // A connection goes back to the pool only after a complete response with nothing
        // left over; anything else leaves it in an unknown state.
        if self.keep_alive
            && self.framing.is_done()
            && let Some(connection) = self.connection.take()
            && connection.io.read.is_empty()
        {
            self.in_flight.0.checkin(connection, self.started);
        }
    }
}

impl RouterMetrics {
    fn stats(&self, revision: u32) -> Option<Arc<RevisionStats>> {
        lock(&self.revisions).get(&revision).cloned()
    }

    fn snapshot(&self) -> Vec<(u32, u64, u64)> {
        lock(&self.revisions)
            .iter()
            .map(|(revision, s)| {
                (
                    *revision,
                    s.requests.load(Ordering::Relaxed),
                    s.errors.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// One app's counters, read at once for rendering: the escaped app label, then
/// `(revision, requests, errors)` for each revision, then the unavailable count.
type AppSnapshot = (String, Vec<(u32, u64, u64)>, u64);

/// Escapes a Prometheus label value.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

impl Connections {
    fn close_gracefully(&self) {
        let signals: Vec<oneshot::Sender<()>> = lock(&self.set)
            .live
            .values_mut()
            .filter_map(|c| c.close.take())
            .collect();
        for signal in signals {
            let _ = signal.send(());
        }
    }

    fn abort_all(&self) {
        let tasks: Vec<AbortHandle> = lock(&self.set).live.values().map(|c| c.abort.clone()).collect();
        for task in tasks {
            task.abort();
        }
    }

    async fn closed(&self) {
        loop {
            let mut emptied = pin!(self.emptied.notified());
            emptied.as_mut().enable();
            if lock(&self.set).live.is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

impl Drop for ConnectionEntry {
    fn drop(&mut self) {
        let mut set = lock(&self.connections.set);
        set.live.remove(&self.id);
        let empty = set.live.is_empty();
        drop(set);
        if empty {
            self.connections.emptied.notify_waiters();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, connections: Arc<Connections>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: pause rather than spin on the error.
                warn!(app = %shared.app, %error, "router cannot accept connections");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (close, close_requested) = oneshot::channel();
        // Holding the lock across the spawn keeps the task from removing its entry
        // before it is inserted.
        let mut set = lock(&connections.set);
        let id = set.next_id;
        set.next_id += 1;
        let entry = ConnectionEntry {
            connections: connections.clone(),
            id,
        };
        let task = tokio::spawn(serve_connection(shared.clone(), stream, peer, close_requested, entry));
        set.live.insert(
            id,
            LiveConnection {
                close: Some(close),
                abort: task.abort_handle(),
            },
        );
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut close_requested: oneshot::Receiver<()>,
    _entry: ConnectionEntry,
) {
    let _ = stream.set_nodelay(true);
    let client_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
    let service_state = shared.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let (head, body) = request.into_parts();
        let proxied = service_state.clone().proxy(head, body, client_ip.clone());
        async move { Ok::<_, Infallible>(proxied.await) }
    });
    let mut server = shared.server.clone();
    server.timer(ConnectionTimer { spare: Arc::default() });
    let mut connection = pin!(server.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        biased;
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(app = %shared.app, %peer, %error, "client connection ended with an error");
            }
            return;
        }
        _ = &mut close_requested => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        debug!(app = %shared.app, %peer, %error, "client connection ended with an error while closing");
    }
}

/// hyper's timer for one client connection's header timeout.
///
/// hyper makes a new timer for every request head it reads and drops it once the head
/// is in; with tokio's timers that is an allocation, a timer-wheel insertion and a
/// removal per request, a few percent of a proxied request. This one keeps one tokio
/// timer per connection across requests and only records each new deadline; the tokio
/// timer catches up when it fires.
struct ConnectionTimer {
    /// The tokio timer, while no request head is being read.
    spare: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

/// A sleep handed to hyper: the connection's tokio timer, and the deadline it stands for.
struct ReusedSleep {
    deadline: TokioInstant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Where the tokio timer goes back to when hyper drops this.
    spare: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = TokioInstant::from_std(deadline);
        let timer = match lock(&self.spare).take() {
            Some(mut timer) => {
                // A later deadline can wait for the timer to fire; an earlier one cannot.
                if deadline < timer.deadline() {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Box::pin(ReusedSleep {
            deadline,
            timer: Some(timer),
            spare: self.spare.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

impl Future for ReusedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Ready(());
        };
        loop {
            std::task::ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier request's deadline.
            timer.as_mut().reset(deadline);
        }
    }
}

impl Drop for ReusedSleep {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            *lock(&self.spare) = Some(timer);
        }
    }
}

impl hyper::rt::Sleep for ReusedSleep {}

/// A per-thread xorshift generator: weighted picks need fast, roughly uniform numbers,
/// not unpredictable ones, and a shared generator would be contended.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    //! Real sockets on 127.0.0.1, real (tiny) hyper apps behind the router, and a plain
    //! hyper client in front of it.

    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use hyper::client::conn::http1 as client_http1;
    use tokio::task::JoinSet;

    use super::*;

    /// How long the test app's `/slow` takes to answer.
    const SLOW: Duration = Duration::from_millis(300);

    /// A test app instance; dropping it (or `kill`) closes its listener and every
    /// connection, like a process that exits.
    struct App {
        backend: Arc<Backend>,
        server: JoinHandle<()>,
    }

    impl App {
        async fn start(name: &'static str) -> App {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = Backend::new(name, listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                // Connections live in this task's JoinSet so that aborting the task
                // closes them all.
                let mut connections = JoinSet::new();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    connections.spawn(async move {
                        let service = service_fn(move |request| answer(name, request));
                        let _ = server_http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            App { backend, server }
        }

        async fn kill(self) {
            self.server.abort();
            let _ = self.server.await;
        }
    }

    /// A body made of the given pieces. Without a known size hyper sends it chunked.
    struct Chunks {
        pieces: VecDeque<Bytes>,
        sized: bool,
    }

    impl Chunks {
        fn full(bytes: impl Into<Bytes>) -> Chunks {
            let bytes = bytes.into();
            let pieces = if bytes.is_empty() {
                VecDeque::new()
            } else {
                VecDeque::from([bytes])
            };
            Chunks { pieces, sized: true }
        }

        fn chunked(pieces: &[&'static str]) -> Chunks {
            Chunks {
                pieces: pieces.iter().map(|p| Bytes::from_static(p.as_bytes())).collect(),
                sized: false,
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.pieces.pop_front().map(|piece| Ok(Frame::data(piece))))
        }

        fn is_end_stream(&self) -> bool {
            self.sized && self.pieces.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            if self.sized {
                SizeHint::with_exact(self.pieces.iter().map(|p| p.len() as u64).sum())
            } else {
                SizeHint::default()
            }
        }
    }

    /// The test app: answers with its name (or echoes a request body), after `SLOW` on
    /// `/slow`, in three chunks on `/chunks`, with a 204 on `/nothing`, and reports what
    /// it received in `x-seen-*` headers.
    async fn answer(name: &'static str, request: Request<Incoming>) -> Result<Response<Chunks>, Infallible> {
        match request.uri().path() {
            "/slow" => tokio::time::sleep(SLOW).await,
            "/chunks" => return Ok(Response::new(Chunks::chunked(&["one ", "two ", "three"]))),
            "/nothing" => {
                let mut response = Response::new(Chunks::full(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                return Ok(response);
            }
            _ => {}
        }
        let mut seen = HeaderMap::new();
        for (header, as_seen) in [
            ("x-forwarded-for", "x-seen-forwarded-for"),
            ("host", "x-seen-host"),
            ("x-secret", "x-seen-secret"),
            ("proxy-authorization", "x-seen-proxy-authorization"),
            ("connection", "x-seen-connection"),
        ] {
            if let Some(value) = request.headers().get(header) {
                seen.insert(HeaderName::from_static(as_seen), value.clone());
            }
        }
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body = if body.is_empty() {
            Bytes::from_static(name.as_bytes())
        } else {
            body
        };
        let mut response = Response::new(Chunks::full(body));
        response.headers_mut().extend(seen);
        Ok(response)
    }

    /// A backend that is not hyper: it reads request heads and answers each with
    /// `response`, byte for byte, closing the connection after it if `close`. It counts
    /// the connections it accepts.
    async fn raw_app(response: &'static [u8], close: bool) -> (Arc<Backend>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend::new("raw", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        while let Some(end) = find_head_end(&buf) {
                            let _ = buf.split_to(end);
                            if stream.write_all(response).await.is_err() || close {
                                return;
                            }
                        }
                        buf.reserve(4096);
                        if matches!(stream.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                });
            }
        });
        (backend, accepted)
    }

    /// One keep-alive client connection to the router.
    struct Client(client_http1::SendRequest<Chunks>);

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn revision(&self) -> u32 {
            self.headers[&X_SLIPWAY_REVISION].to_str().unwrap().parse().unwrap()
        }
        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap()
        }
    }

    impl Client {
        async fn connect(router: &BuiltinRouter) -> Client {
            let stream = TcpStream::connect(router.local_addr()).await.unwrap();
            let (sender, connection) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(connection);
            Client(sender)
        }

        async fn send(&mut self, request: Request<Chunks>) -> Reply {
            self.0.ready().await.unwrap();
            let response = self.0.send_request(request).await.unwrap();
            let (head, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply {
                status: head.status,
                headers: head.headers,
                body,
            }
        }

        async fn get(&mut self, path: &str) -> Reply {
            self.send(
                Request::get(path)
                    .header("host", "app.test")
                    .body(Chunks::full(""))
                    .unwrap(),
            )
            .await
        }
    }

    fn revision(revision: u32, weight: u32, apps: &[&App]) -> RoutedRevision {
        RoutedRevision {
            revision,
            weight,
            backends: apps.iter().map(|a| a.backend.clone()).collect(),
        }
    }

    fn table(revisions: Vec<RoutedRevision>) -> RouteTable {
        RouteTable {
            maintenance: false,
            revisions,
        }
    }

    async fn router() -> BuiltinRouter {
        BuiltinRouter::bind("shop", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    async fn wait_for_in_flight(backend: &Backend, count: u64) {
        tokio::time::timeout(Duration::from_secs(2), async {
            while backend.in_flight() != count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("in-flight count never reached the expected value");
    }

    #[test]
    fn selection_follows_weights_then_round_robin() {
        let metrics = RouterMetrics::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (a1, a2, b) = (
            Backend::new("a1", addr),
            Backend::new("a2", addr),
            Backend::new("b", addr),
        );
        let routes = Routes::compile(
            table(vec![
                RoutedRevision {
                    revision: 1,
                    weight: 192,
                    backends: vec![a1.clone(), a2.clone()],
                },
                RoutedRevision {
                    revision: 2,
                    weight: 64,
                    backends: vec![b.clone()],
                },
                RoutedRevision {
                    revision: 3,
                    weight: 0,
                    backends: vec![b.clone()],
                },
                RoutedRevision {
                    revision: 4,
                    weight: 256,
                    backends: vec![],
                },
            ]),
            &metrics,
        );
        let pick = |random: u64, exclude: Option<&Backend>| {
            routes
                .select(random, exclude)
                .map(|(_, backend)| backend.instance().to_owned())
        };
        let three_quarters = u64::MAX / 4 * 3;
        assert_eq!(pick(0, None).as_deref(), Some("a1"));
        assert_eq!(pick(three_quarters - 8, None).as_deref(), Some("a2"));
        assert_eq!(pick(three_quarters + 8, None).as_deref(), Some("b"));
        assert_eq!(pick(u64::MAX, None).as_deref(), Some("b"));
        // With `b` excluded all traffic goes to revision 1, still round-robin.
        assert_eq!(pick(u64::MAX, Some(&b)).as_deref(), Some("a1"));
        assert_eq!(pick(u64::MAX, Some(&b)).as_deref(), Some("a2"));
        // With `a1` excluded revision 1 keeps its weight but only `a2` serves it.
        assert_eq!(pick(0, Some(&a1)).as_deref(), Some("a2"));
        assert_eq!(pick(0, Some(&a1)).as_deref(), Some("a2"));
        // Weight-0 and empty revisions still get counters.
        assert_eq!(lock(&metrics.revisions).len(), 4);

        let lonely = Routes::compile(
            table(vec![RoutedRevision {
                revision: 1,
                weight: 1,
                backends: vec![b.clone()],
            }]),
            &metrics,
        );
        assert!(lonely.select(0, Some(&b)).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weights_split_traffic_in_proportion() {
        let (a1, a2, b) = (App::start("a1").await, App::start("a2").await, App::start("b").await);
        let router = router().await;
        router.update(table(vec![revision(1, 192, &[&a1, &a2]), revision(2, 64, &[&b])]));

        let mut clients = JoinSet::new();
        for _ in 0..4 {
            let mut client = Client::connect(&router).await;
            clients.spawn(async move {
                let mut seen: HashMap<String, u32> = HashMap::new();
                for _ in 0..1000 {
                    let reply = client.get("/").await;
                    assert_eq!(reply.status, StatusCode::OK);
                    let expected_revision = if reply.text() == "b" { 2 } else { 1 };
                    assert_eq!(reply.revision(), expected_revision);
                    *seen.entry(reply.text().to_owned()).or_default() += 1;
                }
                seen
            });
        }
        let mut seen: HashMap<String, u32> = HashMap::new();
        while let Some(counts) = clients.join_next().await {
            for (instance, n) in counts.unwrap() {
                *seen.entry(instance).or_default() += n;
            }
        }
        let (a1_n, a2_n, b_n) = (seen["a1"], seen["a2"], seen["b"]);
        assert_eq!(a1_n + a2_n + b_n, 4000);
        let share = f64::from(a1_n + a2_n) / 4000.0;
        assert!(
            (0.70..=0.80).contains(&share),
            "revision 1 got {share:.3} of the traffic, expected 0.75 ± 0.05"
        );
        assert!(a1_n.abs_diff(a2_n) <= 1, "round-robin uneven: a1 {a1_n}, a2 {a2_n}");
        let metrics = router.metrics();
        assert_eq!(metrics.requests(1), u64::from(a1_n + a2_n));
        assert_eq!(metrics.requests(2), u64::from(b_n));
        assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
        for app in [&a1, &a2, &b] {
            wait_for_in_flight(&app.backend, 0).await;
        }
    }

    #[tokio::test]
    async fn no_weight_or_no_ready_instance_is_503() {
        let a = App::start("a").await;
        let router = router().await;
        let mut client = Client::connect(&router).await;
        let empty = client.get("/").await;
        router.update(table(vec![revision(1, 0, &[&a]), revision(2, 0, &[&a])]));
        let all_zero = client.get("/").await;
        router.update(table(vec![revision(1, 256, &[])]));
        let no_backends = client.get("/").await;
        for reply in [empty, all_zero, no_backends] {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reply.text(), "no ready instances of this app\n");
            assert!(
                reply.headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );
        }
        let metrics = router.metrics();
        assert_eq!(metrics.unavailable(), 3);
        let mut text = String::new();
        metrics.render("shop", &mut text);
        assert!(
            text.contains("slipway_router_unavailable_total{app=\"shop\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("slipway_router_requests_total{app=\"shop\",revision=\"2\"} 0\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 3, "{text}");
    }

    #[tokio::test]
    async fn maintenance_is_a_503_page() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(RouteTable {
            maintenance: true,
            revisions: vec![revision(1, 256, &[&a])],
        });
        let reply = Client::connect(&router).await.get("/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers[header::RETRY_AFTER], "5");
        assert_eq!(reply.headers[header::CONTENT_TYPE], "text/html");
        assert!(reply.text().contains("<h1>Down for maintenance</h1>"));
        assert_eq!(a.backend.in_flight(), 0);
        assert_eq!(router.metrics().unavailable(), 1);
        assert!(router.table().maintenance);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_is_atomic_under_load() {
        let (a, b) = (App::start("a").await, App::start("b").await);
        let router = router().await;
        let only_a = table(vec![revision(1, 256, &[&a]), revision(2, 0, &[&b])]);
        let split = table(vec![revision(1, 128, &[&a]), revision(2, 128, &[&b])]);
        let only_b = table(vec![revision(1, 0, &[&a]), revision(2, 256, &[&b])]);
        router.update(only_a.clone());

        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        for _ in 0..4 {
            let mut client = Client::connect(&router).await;
            let stop = stop.clone();
            clients.spawn(async move {
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get("/").await;
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                    answered += 1;
                }
                answered
            });
        }
        for swap in 0..200 {
            router.update([&only_a, &split, &only_b][swap % 3].clone());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut answered = 0;
        while let Some(result) = clients.join_next().await {
            answered += result.unwrap();
        }
        assert!(answered >= 100, "only {answered} requests ran during the swaps");
        let metrics = router.metrics();
        assert_eq!(metrics.requests(1) + metrics.requests(2), answered);
        assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_waits_for_a_slow_request() {
        let (a, b) = (App::start("a").await, App::start("b").await);
        let router = Arc::new(router().await);
        router.update(table(vec![revision(1, 256, &[&a])]));
        let mut client = Client::connect(&router).await;
        let slow = tokio::spawn(async move { client.get("/slow").await });
        wait_for_in_flight(&a.backend, 1).await;

        router.update(table(vec![revision(2, 256, &[&b])]));
        let started = Instant::now();
        assert!(router.drain(&a.backend, Duration::from_secs(2)).await);
        assert!(
            started.elapsed() >= SLOW / 2,
            "drain returned after {:?}",
            started.elapsed()
        );
        assert_eq!(a.backend.in_flight(), 0);
        let reply = slow.await.unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "a"));

        // A drain that runs out of time says so.
        let mut client = Client::connect(&router).await;
        let slow = tokio::spawn(async move { client.get("/slow").await });
        wait_for_in_flight(&b.backend, 1).await;
        assert!(!router.drain(&b.backend, Duration::from_millis(100)).await);
        assert_eq!(slow.await.unwrap().status, StatusCode::OK);
        assert_eq!(b.backend.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_instance_costs_no_request() {
        let (a, b) = (App::start("a").await, App::start("b").await);
        let router = router().await;
        router.update(table(vec![revision(1, 256, &[&a, &b])]));
        let mut client = Client::connect(&router).await;
        for _ in 0..10 {
            assert_eq!(client.get("/").await.status, StatusCode::OK);
        }
        // Both backends now have a pooled keep-alive connection; `a` dies with it.
        let a_backend = a.backend.clone();
        a.kill().await;
        for _ in 0..20 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "b"));
        }
        // A request with a body is retried too when it never reached the dead instance.
        for _ in 0..2 {
            let post = Request::post("/")
                .header("host", "app.test")
                .body(Chunks::full("order"))
                .unwrap();
            let reply = client.send(post).await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "order"));
        }
        assert_eq!(router.metrics().errors(1), 0);
        assert_eq!(a_backend.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_only_instance_is_a_502() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(table(vec![revision(1, 256, &[&a])]));
        let mut client = Client::connect(&router).await;
        assert_eq!(client.get("/").await.status, StatusCode::OK);
        let backend = a.backend.clone();
        a.kill().await;
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.text(), "an instance of this app failed to answer this request\n");
        let metrics = router.metrics();
        assert_eq!((metrics.requests(1), metrics.errors(1)), (2, 1));
        assert_eq!(backend.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_slow_instance_is_a_504() {
        let a = App::start("a").await;
        let options = RouterOptions {
            backend_timeout: Duration::from_millis(100),
            ..RouterOptions::default()
        };
        let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        router.update(table(vec![revision(1, 256, &[&a])]));
        let mut client = Client::connect(&router).await;
        let reply = client.get("/slow").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(router.metrics().errors(1), 1);
        assert_eq!(a.backend.in_flight(), 0);
        // The client connection is still good.
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn forwards_headers_and_bodies() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(table(vec![revision(7, 256, &[&a])]));
        let mut client = Client::connect(&router).await;
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        let request = Request::post("/echo?q=1")
            .header("host", "shop.example")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "42")
            .header("proxy-authorization", "Basic Zm9v")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Chunks::full(big.clone()))
            .unwrap();
        let reply = client.send(request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, big);
        assert_eq!(reply.revision(), 7);
        assert_eq!(reply.headers["x-seen-host"], "shop.example");
        assert_eq!(reply.headers["x-seen-forwarded-for"], "203.0.113.9, 127.0.0.1");
        for dropped in ["x-seen-secret", "x-seen-proxy-authorization", "x-seen-connection"] {
            assert!(!reply.headers.contains_key(dropped), "{dropped} reached the app");
        }
        let reply = client.get("/").await;
        assert_eq!(reply.headers["x-seen-forwarded-for"], "127.0.0.1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_in_flight_requests_finish() {
        let a = App::start("a").await;
        let router = router().await;
        let addr = router.local_addr();
        router.update(table(vec![revision(1, 256, &[&a])]));
        let mut idle = Client::connect(&router).await;
        assert_eq!(idle.get("/").await.status, StatusCode::OK);
        let mut client = Client::connect(&router).await;
        let slow = tokio::spawn(async move { client.get("/slow").await });
        wait_for_in_flight(&a.backend, 1).await;

        let started = Instant::now();
        router.shutdown(Duration::from_secs(2)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "shutdown took {:?}",
            started.elapsed()
        );
        assert_eq!(slow.await.unwrap().status, StatusCode::OK);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "router still accepts after shutdown"
        );
        assert!(
            idle.0.is_closed() || idle.0.ready().await.is_err(),
            "idle connection left open"
        );
    }

    #[tokio::test]
    async fn shutdown_cuts_off_after_the_grace_period() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(table(vec![revision(1, 256, &[&a])]));
        let mut client = Client::connect(&router).await;
        let slow = tokio::spawn(async move {
            client.0.ready().await.unwrap();
            let request = Request::get("/slow")
                .header("host", "app.test")
                .body(Chunks::full(""))
                .unwrap();
            client.0.send_request(request).await
        });
        wait_for_in_flight(&a.backend, 1).await;
        let started = Instant::now();
        router.shutdown(Duration::from_millis(50)).await;
        assert!(started.elapsed() < SLOW, "shutdown waited {:?}", started.elapsed());
        assert!(slow.await.unwrap().is_err(), "the cut-off request should fail");
        wait_for_in_flight(&a.backend, 0).await;
    }

    #[test]
    fn metrics_escape_app_names_and_group_families() {
        let (one, two) = (RouterMetrics::default(), RouterMetrics::default());
        Routes::compile(
            table(vec![RoutedRevision {
                revision: 3,
                weight: 1,
                backends: vec![],
            }]),
            &one,
        );
        one.unavailable.fetch_add(2, Ordering::Relaxed);
        let mut text = String::new();
        RouterMetrics::render_all(&[("we\"ird\\", &one), ("two", &two)], &mut text);
        let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(families.len(), 3);
        assert!(
            text.contains("slipway_router_requests_total{app=\"we\\\"ird\\\\\",revision=\"3\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("slipway_router_unavailable_total{app=\"we\\\"ird\\\\\"} 2\nslipway_router_unavailable_total{app=\"two\"} 0\n"), "{text}");
    }

    fn route_to(backends: &[&Arc<Backend>]) -> RouteTable {
        table(vec![RoutedRevision {
            revision: 1,
            weight: 256,
            backends: backends.iter().map(|b| Arc::clone(b)).collect(),
        }])
    }

    #[tokio::test]
    async fn chunked_close_delimited_and_interim_responses_pass_through() {
        let a = App::start("a").await;
        let router = router().await;
        let mut client = Client::connect(&router).await;
        router.update(route_to(&[&a.backend]));
        let reply = client.get("/chunks").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "one two three"));

        let (until_close, _) = raw_app(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close", true).await;
        router.update(route_to(&[&until_close]));
        assert_eq!(client.get("/").await.text(), "until close");

        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                        HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (interim, _) = raw_app(interim, false).await;
        router.update(route_to(&[&interim]));
        for _ in 0..2 {
            let reply = client.get("/").await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok"));
            assert!(!reply.headers.contains_key("link"));
        }

        // Both framings at once: the chunked one wins and the connection is not reused.
        let chunky = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 999\r\n\r\n\
                       5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (chunky, accepted) = raw_app(chunky, false).await;
        router.update(route_to(&[&chunky]));
        for _ in 0..2 {
            assert_eq!(client.get("/").await.text(), "hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(router.metrics().errors(1), 0);
    }

    #[tokio::test]
    async fn head_requests_and_bodyless_statuses_keep_connections_in_step() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(route_to(&[&a.backend]));
        let mut client = Client::connect(&router).await;
        let head = client
            .send(
                Request::head("/")
                    .header("host", "app.test")
                    .body(Chunks::full(""))
                    .unwrap(),
            )
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers[header::CONTENT_LENGTH], "1");
        assert!(head.body.is_empty());
        let nothing = client.get("/nothing").await;
        assert_eq!(nothing.status, StatusCode::NO_CONTENT);
        assert!(nothing.body.is_empty());
        // Had either left bytes behind, this would read them as its answer.
        assert_eq!(client.get("/").await.text(), "a");
    }

    #[tokio::test]
    async fn chunked_uploads_are_reframed() {
        let a = App::start("a").await;
        let router = router().await;
        router.update(route_to(&[&a.backend]));
        let mut client = Client::connect(&router).await;
        let upload = Request::post("/")
            .header("host", "app.test")
            .body(Chunks::chunked(&["ab", "cd", "ef"]))
            .unwrap();
        let reply = client.send(upload).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "abcdef"));
        assert_eq!(client.get("/").await.text(), "a");
    }

    #[tokio::test]
    async fn invalid_answers_are_502s_and_not_retried() {
        let a = App::start("a").await;
        let (garbage, accepted) = raw_app(b"SPDY/3 200 OK\r\n\r\n", false).await;
        let router = router().await;
        router.update(route_to(&[&garbage, &a.backend]));
        let mut client = Client::connect(&router).await;
        let mut statuses = vec![client.get("/").await.status, client.get("/").await.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(router.metrics().errors(1), 1);
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire: &[u8] = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n";
        let bare_lf: &[u8] = b"5\nhello\n6\n world\n0\n\n";
        for encoded in [wire, bare_lf] {
            for piece in 1..=encoded.len() {
                let mut framing = Framing::Chunked(ChunkState::Size);
                let mut buf = BytesMut::new();
                let mut body = Vec::new();
                for bytes in encoded.chunks(piece) {
                    buf.extend_from_slice(bytes);
                    while let Decoded::Data(data) = framing.decode(&mut buf).unwrap() {
                        body.extend_from_slice(&data);
                    }
                }
                assert_eq!(body, b"hello world", "split every {piece} bytes");
                assert!(framing.is_done() && buf.is_empty(), "split every {piece} bytes");
            }
        }
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffff\r\n"] {
            let mut framing = Framing::Chunked(ChunkState::Size);
            let mut buf = BytesMut::from(bad);
            let outcome = (0..4).try_for_each(|_| framing.decode(&mut buf).map(drop));
            assert!(outcome.is_err(), "{:?} was accepted", String::from_utf8_lossy(bad));
        }
        let mut length = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(length.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"abc"))));
        assert_eq!(length.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"def", "bytes past the body are left for the caller to judge");
    }

    #[test]
    fn response_heads_parse_into_framing() {
        let parse = |raw: &'static str, is_head: bool| {
            let mut headers = HeaderMap::new();
            parse_response_head(Bytes::from_static(raw.as_bytes()), is_head, &mut headers)
                .map(|head| (head.status.as_u16(), head.framing, head.keep_alive, headers))
        };
        let framing = |raw, is_head| parse(raw, is_head).map(|(_, framing, keep_alive, _)| (framing, keep_alive));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\nContent-Length:5\n\n", false),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(framing("HTTP/1.1 200\r\n\r\n", false), Ok((Framing::UntilClose, false)));
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
                false
            ),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", false),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        let (_, chunked, keep_alive, headers) = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((chunked, keep_alive), (Framing::Chunked(ChunkState::Size), false));
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        let (status, _, _, headers) = parse(
            "HTTP/1.1 418 I'm a teapot\r\nX-Tea:  earl grey \r\nx-tea: green\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(status, 418);
        assert_eq!(
            headers.get_all("x-tea").iter().collect::<Vec<_>>(),
            ["earl grey", "green"]
        );

        for (bad, why) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "conflicting content-length headers",
            ),
            ("HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n", "folded header line"),
            ("HTTP/2 200\r\n\r\n", "not an HTTP/1 status line"),
            ("HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
            ("HTTP/1.1 2000\r\n\r\n", "bad status line"),
            (
                "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                "header line without a colon",
            ),
            ("HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "bad header name"),
            ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad content-length"),
            ("HTTP/1.1 200 OK\r\nx-a: b\x01c\r\n\r\n", "bad header value"),
        ] {
            assert_eq!(framing(bad, false).err(), Some(why), "{bad:?}");
        }
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nx: y\r\n"), None);
    }

    #[test]
    fn request_heads_are_encoded_for_the_backend() {
        let mut head = Request::post("http://shop.example/cart?x=1")
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("transfer-encoding", "chunked")
            .header("content-length", "10")
            .header("expect", "100-continue")
            .header("x-forwarded-for", "203.0.113.9")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        prepare_request(&mut head, &HeaderValue::from_static("192.0.2.1"));
        let mut out = Vec::new();
        encode_request_head(&head, true, "127.0.0.1:9".parse().unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /cart?x=1 HTTP/1.1\r\nx-forwarded-for: 203.0.113.9, 192.0.2.1\r\nhost: shop.example\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn idle_and_slow_clients_are_disconnected() {
        let options = RouterOptions {
            client_header_timeout: Duration::from_millis(200),
            ..RouterOptions::default()
        };
        let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        let closed_within = |mut stream: TcpStream| async move {
            let started = Instant::now();
            let mut sink = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
            assert!(read.is_ok(), "connection still open after 2 s");
            started.elapsed()
        };
        let mut slow = TcpStream::connect(router.local_addr()).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n").await.unwrap();
        assert!(closed_within(slow).await >= Duration::from_millis(150));

        // Idle after an answered request: the same limit applies to waiting for the next.
        let mut idle = TcpStream::connect(router.local_addr()).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        idle.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 503");
        assert!(closed_within(idle).await >= Duration::from_millis(100));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rollout_under_load_fails_no_request() {
        let (old, new) = (App::start("old").await, App::start("new").await);
        let old_backend = old.backend.clone();
        let router = router().await;
        router.update(table(vec![revision(1, 256, &[&old])]));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        for _ in 0..4 {
            let mut client = Client::connect(&router).await;
            let stop = stop.clone();
            clients.spawn(async move {
                let mut answered = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get("/").await;
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                    answered += 1;
                }
                answered
            });
        }
        let pause = || tokio::time::sleep(Duration::from_millis(50));
        pause().await;
        router.update(table(vec![revision(1, 128, &[&old]), revision(2, 128, &[&new])]));
        pause().await;
        router.update(table(vec![revision(1, 0, &[&old]), revision(2, 256, &[&new])]));
        assert!(router.drain(&old_backend, Duration::from_secs(2)).await);
        old.kill().await;
        pause().await;
        stop.store(true, Ordering::Relaxed);
        let mut answered = 0;
        while let Some(result) = clients.join_next().await {
            answered += result.unwrap();
        }
        assert!(answered > 0);
        let metrics = router.metrics();
        assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
        assert_eq!(metrics.requests(1) + metrics.requests(2), u64::from(answered));
    }

    #[tokio::test]
    async fn old_or_closed_pooled_connections_are_not_reused() {
        let a = App::start("a").await;
        let now = TokioInstant::now();
        let deadline = Deadline {
            start: now,
            at: now + DEFAULT_BACKEND_TIMEOUT,
            timeout: DEFAULT_BACKEND_TIMEOUT,
        };
        let connect = || async {
            match BackendConnection::connect(a.backend.addr, &deadline).await {
                Ok(connection) => connection,
                Err(_) => panic!("cannot connect to the test app"),
            }
        };
        let too_old = now - POOL_IDLE_TIMEOUT - Duration::from_millis(1);
        a.backend.checkin(connect().await, too_old);
        assert!(
            a.backend.checkout(now).is_none(),
            "reused a connection idle for too long"
        );

        // Checking in a fresh connection also closes the oldest one if it is stale.
        a.backend.checkin(connect().await, too_old);
        a.backend.checkin(connect().await, now);
        assert_eq!(lock(&a.backend.idle).len(), 1);
        assert!(a.backend.checkout(now).is_some());

        a.backend.checkin(connect().await, now);
        let backend = a.backend.clone();
        a.kill().await;
        // The event loop needs a moment to see the close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            backend.checkout(now).is_none(),
            "reused a connection the app had closed"
        );
    }
}
