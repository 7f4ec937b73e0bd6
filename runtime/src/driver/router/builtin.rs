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
//! The modules, by job: `table` (the route table and the weighted pick), `pool` (backends:
//! in-flight counts, drain signals, idle connections), `upstream` (talking to a backend and
//! streaming its answer back), `http1` (HTTP/1.1 framing, which the readiness probes use too),
//! `response` (what goes back to clients, and the router's own answers), `metrics`, and
//! `listener` (accepting and serving client connections). This file ties them together:
//! [`BuiltinRouter`] and the proxying of one request.
//!
//! The router needs a tokio runtime with I/O and time enabled.

#![forbid(unsafe_code)]

mod access_log;
mod frontend;
mod h2;
pub(crate) mod http1;
mod listener;
mod metrics;
mod pool;
mod response;
pub(crate) use response::{MAINTENANCE_PAGE, NO_READY_INSTANCES};
mod table;
#[cfg(test)]
mod tests;
pub mod traffic;
mod tunnel;
mod upstream;

pub(crate) use frontend::answer_acme_challenges;
pub use frontend::{Routing, TlsFiles};
pub use metrics::RouterMetrics;
pub use pool::Backend;
pub use table::{RouteTable, RoutedRevision};

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::{Body, Incoming};
use hyper::header::HeaderValue;
use hyper::server::conn::http1 as server_http1;
use hyper::{Response, StatusCode};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, warn};

use self::http1::ResponseHead;
use self::pool::{DrainListener, InFlight};
use self::response::{
    BAD_GATEWAY, GATEWAY_TIMEOUT, RouterBody, fixed, maintenance_page, no_ready_instances, prepare_request,
    proxied_response,
};
use self::table::{Choice, Pick, Routes, random_u64};
use self::upstream::{Connection, Deadline, ProxyError, SendError, send};

/// How long a request waits for a ready instance when the table has none, before it gets
/// a 503.
const NO_BACKEND_WAIT: Duration = Duration::from_secs(2);

/// How long closing an instance's tunnels may take once its drain's grace period is over.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Tries a body-less request gets on different instances when they fail before answering.
const MAX_ATTEMPTS: usize = 3;

/// How long a backend may take to start answering a request (connecting, retrying and
/// receiving the response head) before the client gets a 504.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client connection may go without a complete request head, idle time
/// included, before it is closed (nginx allows 60 s for a head and 75 s of idling).
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The largest request head (request line and headers) a client may send; a larger
    /// one gets a 431. At least 8 KiB. Default [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// The largest request body passed on to the app; a larger one gets a 413. Default:
    /// no limit.
    pub max_body_bytes: Option<u64>,
    /// Client connections one listener holds at once; more wait in the kernel's backlog
    /// until one closes. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Log every request, as a JSON line, to this file (bounded: see `access_log`).
    /// Default: no log.
    pub access_log: Option<std::path::PathBuf>,
    /// Speak HTTP/2 (h2c, prior knowledge) to instances instead of HTTP/1.1. Default off.
    pub instance_http2: bool,
}

/// The largest request head by default: nginx's `large_client_header_buffers` allow 4 × 8 KiB
/// per line; 64 KiB in all fits every real browser and API client.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;

/// Client connections a listener holds at once by default, well under the machine's limit on
/// open files (each connection also opens one to an instance).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            backend_timeout: DEFAULT_BACKEND_TIMEOUT,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            access_log: None,
            instance_http2: false,
        }
    }
}

/// The built-in reverse proxy for one app, serving in background tokio tasks.
///
/// An app is routed on one or more listeners, each of which other apps may share by host
/// name (see `frontend`). Dropping the router takes the app off them; a listener no app is
/// routed on any more stops accepting and asks open connections to close once their
/// current request is answered. [`BuiltinRouter::shutdown`] does the same and waits.
pub struct BuiltinRouter {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// The listeners the app is routed on, and its route's id on each.
    fronts: Vec<(Arc<frontend::Frontend>, u64)>,
}

impl BuiltinRouter {
    /// Binds `listen` and starts serving in background tokio tasks, with an empty table
    /// (every request gets a 503 until the first [`BuiltinRouter::update`]).
    pub async fn bind(app: &str, listen: SocketAddr) -> io::Result<BuiltinRouter> {
        BuiltinRouter::bind_with(app, listen, RouterOptions::default()).await
    }

    /// Like [`BuiltinRouter::bind`], with non-default options.
    pub async fn bind_with(app: &str, listen: SocketAddr, options: RouterOptions) -> io::Result<BuiltinRouter> {
        BuiltinRouter::bind_routed(app, &[(listen, Routing::default())], options).await
    }

    /// Routes `app` on each listener as its [`Routing`] says, binding the addresses no other
    /// app is routed on yet. Fails if a listener serves the other protocol (HTTP or HTTPS),
    /// if another app claims the same host and path prefix there, or if a certificate
    /// cannot be read; nothing is left bound then.
    pub async fn bind_routed(
        app: &str,
        listeners: &[(SocketAddr, Routing)],
        options: RouterOptions,
    ) -> io::Result<BuiltinRouter> {
        let metrics = Arc::new(RouterMetrics::default());
        let mut server = server_http1::Builder::new();
        // The header timeout's timer is set per connection, in `serve_connection`.
        server
            .header_read_timeout(options.client_header_timeout)
            .max_buf_size(options.max_header_bytes.max(8192))
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
            updated: tokio::sync::Notify::new(),
            retired: Mutex::new(Vec::new()),
            metrics,
            backend_timeout: options.backend_timeout,
            max_body: options.max_body_bytes,
            access_log: options
                .access_log
                .clone()
                .map(|path| access_log::AccessLog::open(app, path)),
            instance_h2: options.instance_http2,
        });
        let mut fronts = Vec::new();
        for (listen, routing) in listeners {
            let joined =
                frontend::Frontend::join(app, *listen, routing, shared.clone(), &server, options.max_connections).await;
            match joined {
                Ok(front) => fronts.push(front),
                Err(error) => {
                    for (front, id) in &fronts {
                        front.leave(*id);
                    }
                    return Err(error);
                }
            }
        }
        let local_addr = fronts
            .first()
            .map(|(front, _)| front.front.local_addr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a router needs a listener"))?;
        Ok(BuiltinRouter {
            shared,
            local_addr,
            fronts,
        })
    }

    /// The addresses actually bound, in the order given to [`BuiltinRouter::bind_routed`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.fronts.iter().map(|(front, _)| front.front.local_addr).collect()
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
        self.shared.updated.notify_waiters();
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
            backend.close_idle();
            return true;
        }
        // Upgraded connections (WebSockets) never end by themselves: once the grace period
        // is over they are closed, and given a moment to go.
        if backend.tunnels() > 0 {
            backend.close_tunnels();
            let closing = tokio::time::Instant::now() + TUNNEL_CLOSE_WAIT;
            while backend.tunnels() > 0 && tokio::time::Instant::now() < closing {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if backend.in_flight() == 0 {
                backend.close_idle();
                return true;
            }
        }
        false
    }

    /// Like [`BuiltinRouter::shutdown`], for a router that is shared: takes the app off its
    /// listeners at once; a listener no other app is routed on stops accepting, and its open
    /// connections are waited for as `shutdown` does.
    pub async fn stop(&self, grace: Duration) {
        let mut closing = Vec::new();
        for (front, id) in &self.fronts {
            if front.shared_beyond(*id) {
                front.leave(*id);
                continue;
            }
            front.stop_accepting().await;
            front.connections.close_gracefully();
            closing.push(front.connections.clone());
        }
        for connections in closing {
            if tokio::time::timeout(grace, connections.closed()).await.is_err() {
                warn!(app = %self.shared.app, "router shutdown grace period over; closing remaining connections");
                connections.abort_all();
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then stops.
    ///
    /// Idle keep-alive connections are closed at once; a connection busy with a request
    /// closes after answering it. Whatever is still open after `grace` is cut off. A
    /// listener other apps are routed on goes on serving them.
    pub async fn shutdown(self, grace: Duration) {
        self.stop(grace).await;
    }
}

impl Drop for BuiltinRouter {
    fn drop(&mut self) {
        for (front, id) in &self.fronts {
            front.leave(*id);
        }
    }
}

/// State shared by the router handle and every connection task.
struct Shared {
    app: String,
    routes: ArcSwap<Routes>,
    /// Woken at every table update, for requests waiting for a ready instance.
    updated: tokio::sync::Notify,
    /// Tables replaced by [`BuiltinRouter::update`] that a request may still be picking
    /// from; see [`BuiltinRouter::drain`].
    retired: Mutex<Vec<Weak<Routes>>>,
    metrics: Arc<RouterMetrics>,
    backend_timeout: Duration,
    /// The largest request body passed on ([`RouterOptions::max_body_bytes`]).
    max_body: Option<u64>,
    /// Where requests are logged, if they are.
    access_log: Option<access_log::AccessLog>,
    /// Instances are spoken to in HTTP/2 ([`RouterOptions::instance_http2`]).
    instance_h2: bool,
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

    /// Proxies one request, and logs it when the app keeps an access log.
    ///
    /// hyper moves this future into place for every request, so its size matters. It is
    /// an `async` block rather than an `async fn` because an `async fn` keeps a copy of
    /// each argument beside the local it moves it into, and the request head is large.
    #[allow(clippy::manual_async_fn)]
    fn proxy(
        self: Arc<Self>,
        head: RequestParts,
        body: Incoming,
        client_ip: HeaderValue,
        https: bool,
    ) -> impl Future<Output = Response<RouterBody>> + Send + 'static {
        async move {
            // What the log needs of the request, kept aside only when there is a log (boxed:
            // it would make every request's future larger).
            let logged = self.access_log.is_some().then(|| {
                Box::new((
                    head.method.clone(),
                    head.uri
                        .path_and_query()
                        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                    head.headers.get(hyper::header::HOST).cloned(),
                    client_ip.clone(),
                    TokioInstant::now(),
                ))
            });
            let response = self.clone().route(head, body, client_ip, https).await;
            if let (Some(log), Some(request)) = (&self.access_log, logged) {
                let (method, target, host, client, started) = *request;
                log.record(&access_log::Entry {
                    at_ms: crate::store::now_ms(),
                    revision: response.headers().get(response::X_SLIPWAY_REVISION),
                    method: method.as_str(),
                    host: host.as_ref(),
                    target: &target,
                    status: response.status().as_u16(),
                    duration: started.elapsed(),
                    client: &client,
                });
            }
            response
        }
    }

    /// Routes one request: to a backend, or the router's own answer.
    #[allow(clippy::manual_async_fn)]
    fn route(
        self: Arc<Self>,
        mut head: RequestParts,
        body: Incoming,
        client_ip: HeaderValue,
        https: bool,
    ) -> impl Future<Output = Response<RouterBody>> + Send + 'static {
        // An `async` block, not an `async fn`, for the reason given at `proxy`.
        async move {
            let mut pick = match self.choose(None) {
                Choice::Routed(pick) => pick,
                Choice::Maintenance => return self.unavailable(maintenance_page()),
                // Every ready instance just went (a version crashing as a whole): the table
                // is about to change, rolled back or restarted. Wait for it a moment.
                Choice::NoBackend => match Box::pin(self.after_update(None)).await {
                    Some(pick) => pick,
                    None => return self.unavailable(no_ready_instances()),
                },
            };
            if let Some(limit) = self.max_body
                && declared_length(&head.headers).is_some_and(|length| length > limit)
            {
                // Refused before anything reaches the app.
                return body_too_large();
            }
            if tunnel::is_upgrade(&head.headers) {
                // Rare, and its future is large: boxed, so every request's stays small.
                return Box::pin(self.tunnel(head, pick, client_ip, https)).await;
            }
            if self.instance_h2 {
                // Boxed, like the tunnel: only apps that ask for HTTP/2 pay for its future.
                return Box::pin(self.route_h2(head, body, pick, client_ip, https)).await;
            }
            prepare_request(&mut head, &client_ip, https);
            let body = (!body.is_end_stream()).then_some(body);
            let bodyless = body.is_none();
            let start = TokioInstant::now();
            let deadline = Deadline {
                start,
                at: start + self.backend_timeout,
                timeout: self.backend_timeout,
                max_body: self.max_body,
            };
            let mut outcome = self.exchange(&mut pick, &mut head, body, &deadline).await;
            // Every instance tried failed without answering (a version crashing as a whole):
            // a body-less request waits for the table to change and goes once more.
            if bodyless
                && let Err(ProxyError::Connect { .. } | ProxyError::Io { .. } | ProxyError::Closed { .. }) = &outcome
            {
                let failed = pick.in_flight.0.clone();
                if let Some(next) = Box::pin(self.after_update(Some(&failed))).await {
                    pick.stats.errors.fetch_add(1, Ordering::Relaxed);
                    pick = next;
                    outcome = Box::pin(self.exchange(&mut pick, &mut head, None, &deadline)).await;
                }
            }
            pick.stats.requests.fetch_add(1, Ordering::Relaxed);
            let now_ms = crate::store::now_ms();
            match outcome {
                Ok((response, connection)) => {
                    pick.stats
                        .traffic
                        .answered(now_ms, response.status.as_u16(), deadline.start.elapsed());
                    proxied_response(response, connection, pick, deadline.start)
                }
                Err(error) => self.failed(&pick, error, now_ms, deadline.start),
            }
        }
    }

    /// The answer to a request that got no response from an instance: 413 for a body over the
    /// limit, 504 when the instance was too slow, 502 otherwise; counted and logged.
    fn failed(&self, pick: &Pick, error: ProxyError, now_ms: u64, started: TokioInstant) -> Response<RouterBody> {
        if let ProxyError::BodyTooLarge { .. } = error {
            pick.stats.traffic.answered(now_ms, 413, started.elapsed());
            return body_too_large();
        }
        pick.stats.errors.fetch_add(1, Ordering::Relaxed);
        pick.stats.traffic.failed(now_ms);
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

    /// Sends the request to the picked backend, and again elsewhere (up to
    /// [`MAX_ATTEMPTS`] in all) while that is safe. On return `pick` is the backend that
    /// answered or failed last.
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
            let (mut error, mut reused) = match send(pick.backend(), head, &mut body, true, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(SendError::Final(error)) => return Err(error),
                // Nothing was sent, so even a request with a body can go elsewhere intact.
                Err(SendError::Unsent(error)) => (error, false),
                // The backend may have acted on it; only a body-less request is repeated,
                // the same bet nginx makes with `proxy_next_upstream error`.
                Err(SendError::Lost { error, reused }) if bodyless => (error, reused),
                Err(SendError::Lost { error, .. }) => return Err(error),
            };
            // Instances of a version that crashes tend to go together: the next one tried may
            // be on its way out too, so a request gets a few tries while the table catches up.
            for _ in 1..MAX_ATTEMPTS {
                debug!(app = %self.app, instance = pick.backend().instance(), %error, "retrying on another instance");
                let (retry, use_pool) = match self.choose(Some(pick.backend())) {
                    Choice::Routed(other) => (other, true),
                    // The only instance failed on a kept-alive connection, which the app may
                    // just have closed as idle: a new connection to it is the best remaining
                    // chance.
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
                    Ok(answer) => return Ok(answer),
                    Err(SendError::Final(last)) => return Err(last),
                    Err(SendError::Unsent(last)) => (error, reused) = (last, false),
                    Err(SendError::Lost {
                        error: last,
                        reused: was,
                    }) if bodyless => (error, reused) = (last, was),
                    Err(SendError::Lost { error: last, .. }) => return Err(last),
                }
            }
            Err(error)
        }
    }

    /// A pick (other than `exclude`) from the table as it is or the next ones, if one routes
    /// somewhere within [`NO_BACKEND_WAIT`].
    async fn after_update(&self, exclude: Option<&Backend>) -> Option<Pick> {
        let deadline = TokioInstant::now() + NO_BACKEND_WAIT;
        loop {
            let mut updated = pin!(self.updated.notified());
            updated.as_mut().enable();
            if let Choice::Routed(pick) = self.choose(exclude) {
                return Some(pick);
            }
            if tokio::time::timeout_at(deadline, updated).await.is_err() {
                return None;
            }
        }
    }

    fn unavailable(&self, response: Response<RouterBody>) -> Response<RouterBody> {
        self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        response
    }
}

type RequestParts = hyper::http::request::Parts;

/// The body length a request declares with `Content-Length`, if it does.
fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 413, and the connection is closed: the rest of the body is not read.
fn body_too_large() -> Response<RouterBody> {
    let mut response = fixed(
        StatusCode::PAYLOAD_TOO_LARGE,
        "text/plain; charset=utf-8",
        b"the request body is larger than this app accepts\n",
    );
    response
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
