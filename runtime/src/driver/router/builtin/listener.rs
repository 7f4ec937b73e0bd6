//! The listening socket and client connections: accepting, serving each with hyper,
//! closing them gracefully, and a per-connection timer for the header timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant as TokioInstant;
use tokio::time::Sleep;
use tracing::{debug, warn};

use super::frontend::{Front, Target, challenge_answer, nobody_here, redirect};
use super::lock;

#[derive(Default)]
pub(super) struct Connections {
    set: Mutex<ConnectionSet>,
    emptied: Notify,
}

#[derive(Default)]
struct ConnectionSet {
    next_id: u64,
    live: HashMap<u64, LiveConnection>,
}

struct LiveConnection {
    pub(super) close: Option<oneshot::Sender<()>>,
    pub(super) abort: AbortHandle,
}

/// Removes a connection from [`Connections`] when its task ends, however it ends.
struct ConnectionEntry {
    pub(super) connections: Arc<Connections>,
    id: u64,
}

impl Connections {
    pub(super) fn close_gracefully(&self) {
        let signals: Vec<oneshot::Sender<()>> = lock(&self.set)
            .live
            .values_mut()
            .filter_map(|c| c.close.take())
            .collect();
        for signal in signals {
            let _ = signal.send(());
        }
    }

    pub(super) fn abort_all(&self) {
        let tasks: Vec<AbortHandle> = lock(&self.set).live.values().map(|c| c.abort.clone()).collect();
        for task in tasks {
            task.abort();
        }
    }

    pub(super) async fn closed(&self) {
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

/// Accepts clients while fewer than the listener's limit are connected; past it, new ones
/// wait in the kernel's backlog until a connection closes.
pub(super) async fn accept_loop(
    listener: TcpListener,
    front: Arc<Front>,
    connections: Arc<Connections>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: pause rather than spin on the error.
                warn!(listener = %front.local_addr, %error, "router cannot accept connections");
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
        let task = tokio::spawn(serve_client(front.clone(), stream, peer, close_requested, entry, slot));
        set.live.insert(
            id,
            LiveConnection {
                close: Some(close),
                abort: task.abort_handle(),
            },
        );
    }
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client connection: over TLS first on an HTTPS listener.
async fn serve_client(
    front: Arc<Front>,
    stream: TcpStream,
    peer: SocketAddr,
    close_requested: oneshot::Receiver<()>,
    entry: ConnectionEntry,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    match &front.tls {
        None if front.h2c && starts_with_h2_preface(&stream).await => {
            serve_h2(front.clone(), stream, peer, false, close_requested, entry).await;
        }
        None => serve_connection(front.clone(), stream, peer, false, close_requested, entry).await,
        Some(acceptor) => {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    debug!(listener = %front.local_addr, %peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(listener = %front.local_addr, %peer, "TLS handshake timed out");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(front.clone(), stream, peer, true, close_requested, entry).await;
            } else {
                serve_connection(front.clone(), stream, peer, true, close_requested, entry).await;
            }
        }
    }
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection begins with the HTTP/2 preface, looking without reading.
async fn starts_with_h2_preface(stream: &TcpStream) -> bool {
    let mut seen = [0u8; H2_PREFACE.len()];
    let waited = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, async {
        loop {
            let n = stream.peek(&mut seen).await.unwrap_or(0);
            if n == 0 || seen[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // Part of it so far: the rest is on its way.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    waited.await.unwrap_or(false)
}

/// The service every client connection uses: the request's app by host and path, then
/// proxied (or the router's own answer).
fn service(
    front: Arc<Front>,
    client_ip: HeaderValue,
    https: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<super::response::RouterBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<super::response::RouterBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<Incoming>| {
        let (head, body) = request.into_parts();
        let host = head
            .headers
            .get(hyper::header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| head.uri.authority().map(|a| a.as_str().as_bytes()));
        let target = front.target(host, head.uri.path_and_query().map_or("/", |p| p.as_str()));
        let client_ip = client_ip.clone();
        async move {
            Ok::<_, Infallible>(match target {
                Target::App(shared) => shared.proxy(head, body, client_ip, https).await,
                Target::Redirect(location) => redirect(location),
                Target::Challenge(file) => challenge_answer(&file).await,
                Target::Nobody => nobody_here(),
            })
        }
    })
}

/// Serves one HTTP/2 connection: its streams are requests like any other.
async fn serve_h2<I>(
    front: Arc<Front>,
    stream: I,
    peer: SocketAddr,
    https: bool,
    mut close_requested: oneshot::Receiver<()>,
    _entry: ConnectionEntry,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
    let service = service(front.clone(), client_ip, https);
    let mut server = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    server.timer(hyper_util::rt::TokioTimer::new());
    let mut connection = pin!(server.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        biased;
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(listener = %front.local_addr, %peer, %error, "HTTP/2 client connection ended with an error");
            }
            return;
        }
        _ = &mut close_requested => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        debug!(listener = %front.local_addr, %peer, %error, "HTTP/2 client connection ended with an error while closing");
    }
}

async fn serve_connection<I>(
    front: Arc<Front>,
    stream: I,
    peer: SocketAddr,
    https: bool,
    mut close_requested: oneshot::Receiver<()>,
    _entry: ConnectionEntry,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
    let service = service(front.clone(), client_ip, https);
    let mut server = (**front.server.load()).clone();
    server.timer(ConnectionTimer { spare: Arc::default() });
    let mut connection = pin!(server.serve_connection(TokioIo::new(stream), service).with_upgrades());
    tokio::select! {
        biased;
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(listener = %front.local_addr, %peer, %error, "client connection ended with an error");
            }
            return;
        }
        _ = &mut close_requested => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        debug!(listener = %front.local_addr, %peer, %error, "client connection ended with an error while closing");
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
    pub(super) deadline: TokioInstant,
    pub(super) timer: Option<Pin<Box<Sleep>>>,
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
