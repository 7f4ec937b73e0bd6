//! A backend (one ready instance) with its in-flight count, drain signal and pool of idle
//! connections.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;

use super::lock;
use super::upstream::Connection;

/// An idle pooled connection older than this is closed instead of reused. Apps commonly
/// close idle keep-alive connections after 2 s (gunicorn) or 5 s (Node.js); reusing one
/// just as the app closes it loses the request, so we give up on it first.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Idle connections kept per backend; more than the busiest moment needs is waste.
const POOL_MAX_IDLE: usize = 512;

/// One instance the router may send requests to.
///
/// The driver creates one per ready instance and puts it in the [`RouteTable`]; keep the
/// same `Arc` across table updates, because the in-flight count and the pool of idle
/// connections live here, not in the router.
pub struct Backend {
    pub(super) instance: String,
    pub(super) addr: SocketAddr,
    pub(super) in_flight: AtomicU64,
    /// Number of [`BuiltinRouter::drain`] calls waiting on this backend. Finishing requests
    /// only pay for a wake-up while someone is listening.
    drainers: AtomicUsize,
    pub(super) drained: Notify,
    /// Idle connections, most recently used at the back: requests take from the back,
    /// where connections are least likely to have been closed by the app.
    idle: Mutex<VecDeque<IdleConnection>>,
    /// Set when upgraded connections (tunnels) to this backend must close: its drain's
    /// grace period is over.
    tunnels_closed: AtomicBool,
    close_tunnels: Notify,
    /// Upgraded connections open to this backend.
    tunnels: AtomicU64,
    /// Its HTTP/2 connection, for apps that speak HTTP/2 to instances.
    pub(super) h2: Mutex<Option<super::h2::Sender>>,
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
            tunnels_closed: AtomicBool::new(false),
            close_tunnels: Notify::new(),
            tunnels: AtomicU64::new(0),
            h2: Mutex::new(None),
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

/// Holds one unit of a backend's in-flight count.
pub(super) struct InFlight(pub(super) Arc<Backend>);

/// Holds one unit of a backend's tunnel count.
pub(super) struct TunnelOpen(Arc<Backend>);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Registers a [`BuiltinRouter::drain`] caller for the duration of its wait, even if the
/// wait is cancelled.
pub(super) struct DrainListener<'a>(&'a Backend);

struct IdleConnection {
    pub(super) connection: Connection,
    /// When the request that last used the connection started.
    since: TokioInstant,
}

impl InFlight {
    pub(super) fn start(backend: &Arc<Backend>) -> InFlight {
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
    pub(super) fn new(backend: &'a Backend) -> Self {
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
    /// Upgraded connections (tunnels) open to this backend.
    pub(super) fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::SeqCst)
    }

    /// Counts a tunnel open until the guard is dropped.
    pub(super) fn open_tunnel(self: &Arc<Self>) -> TunnelOpen {
        self.tunnels.fetch_add(1, Ordering::SeqCst);
        TunnelOpen(self.clone())
    }

    /// Tells every tunnel to this backend to close.
    pub(super) fn close_tunnels(&self) {
        self.tunnels_closed.store(true, Ordering::SeqCst);
        self.close_tunnels.notify_waiters();
    }

    /// Resolves once [`Backend::close_tunnels`] was called.
    pub(super) fn tunnels_closing(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let backend = self.clone();
        async move {
            loop {
                let mut told = std::pin::pin!(backend.close_tunnels.notified());
                told.as_mut().enable();
                if backend.tunnels_closed.load(Ordering::SeqCst) {
                    return;
                }
                told.await;
            }
        }
    }

    /// Closes every idle pooled connection, so the instance can stop without waiting for them.
    pub(super) fn close_idle(&self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        drop(idle);
    }

    /// How many idle connections the pool holds.
    #[cfg(test)]
    pub(super) fn idle_connections(&self) -> usize {
        lock(&self.idle).len()
    }

    /// An idle connection to this backend that is still open and young enough to trust.
    pub(super) fn checkout(&self, now: TokioInstant) -> Option<Connection> {
        loop {
            let idle = lock(&self.idle).pop_back()?;
            if now.saturating_duration_since(idle.since) < POOL_IDLE_TIMEOUT && idle.connection.is_open() {
                return Some(idle.connection);
            }
        }
    }

    pub(super) fn checkin(&self, connection: Connection, since: TokioInstant) {
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
