//! Connections to backends, driven directly by the request using them: sending a request,
//! reading its response head by a deadline, streaming its body back, and the errors that
//! decide whether a request may be tried on another instance.

use std::io;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Method, StatusCode, header};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tokio::time::Sleep;

use super::RequestParts;
use super::http1::{
    Decoded, Framing, MAX_RESPONSE_HEAD, ResponseHead, encode_request_head, find_head_end, parse_response_head,
};
use super::pool::{Backend, InFlight};

/// Room made in a backend connection's read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// One HTTP/1.1 connection to a backend, driven directly by the request using it.
///
/// The router speaks to backends itself rather than through hyper's client: a request
/// then needs no connection task, no channels and no extra wake-ups, which were the
/// largest share of the router's own CPU time. Clients are still served by hyper.
pub(super) struct BackendConnection {
    io: BackendIo,
    /// Enforces the backend timeout. Arming a timer per request is a measurable share
    /// of a proxied request's cost, so this one is armed once and moved only when it
    /// fires for an earlier request's deadline.
    pub(super) timer: Pin<Box<Sleep>>,
}

struct BackendIo {
    pub(super) stream: TcpStream,
    /// Bytes read from the backend and not consumed yet.
    read: BytesMut,
    /// Scratch space for request heads and chunk framing, kept for its allocation.
    write: Vec<u8>,
}

/// Connections are boxed so that futures and bodies carry a pointer, not the
/// connection: hyper moves both into place for every request.
pub(super) type Connection = Box<BackendConnection>;

/// A backend's response body on its way to the client. It keeps the request in flight
/// until it is finished, then hands the connection back to the pool.
pub(super) struct BackendBody {
    /// `None` once the connection failed; it is never reused then.
    pub(super) connection: Option<Connection>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) in_flight: InFlight,
    /// When the request started: the connection's age mark in the pool. Taking the
    /// start rather than the end saves a clock read and errs on the safe side.
    pub(super) started: TokioInstant,
}

/// Why a backend could not answer; logged, never shown to the client.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
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
    /// An HTTP/2 exchange with the backend failed.
    #[error("HTTP/2 exchange with {addr} failed: {source}")]
    Http2 {
        /// The backend's address.
        addr: SocketAddr,
        /// What hyper reported.
        source: hyper::Error,
    },
    /// The client's request body could not be read, so it could not be passed on.
    #[error("reading the request body from the client failed: {0}")]
    RequestBody(#[source] hyper::Error),
    /// The client's request body is larger than the app's limit.
    #[error("the request body is over the {limit}-byte limit")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
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
pub(super) enum SendError {
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

/// The limits of one request: when the backend must answer, and how large a body the
/// client may send.
#[derive(Clone, Copy)]
pub(super) struct Deadline {
    /// When the request started; also the age mark of connections it returns to the pool.
    pub(super) start: TokioInstant,
    /// When the backend must have answered.
    pub(super) at: TokioInstant,
    pub(super) timeout: Duration,
    /// The most body bytes passed on; past it the client gets a 413.
    pub(super) max_body: Option<u64>,
}

/// Sends the request over a pooled connection if one works, else over a new one.
pub(super) async fn send(
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
    pub(super) async fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<Connection, SendError> {
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

    /// A connection made for one request outside the pool (an upgrade the app declined),
    /// with what was read after the response head.
    pub(super) fn adopt(stream: TcpStream, read: BytesMut, deadline: &Deadline) -> Connection {
        Box::new(BackendConnection {
            io: BackendIo {
                stream,
                read,
                write: Vec::new(),
            },
            timer: Box::pin(tokio::time::sleep_until(deadline.at)),
        })
    }

    /// Whether an idle connection still looks usable. An idle connection has nothing to
    /// read, so readable means closed by the backend (or garbage). This costs no system
    /// call unless the event loop has seen the socket become readable.
    pub(super) fn is_open(&self) -> bool {
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
        let mut exchange = pin!(self.io.exchange(backend.addr, head, body, deadline.max_body));
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
    pub(super) async fn exchange(
        &mut self,
        addr: SocketAddr,
        head: &mut RequestParts,
        body: &mut Option<Incoming>,
        max_body: Option<u64>,
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
            Box::pin(self.write_body(&mut body, chunked, max_body))
                .await
                .map_err(|e| match e {
                    // The backend has part of a body it will never see the end of: the
                    // connection is not reused, and the request is not tried again.
                    BodyWriteError::TooLarge(limit) => ExchangeError::Final(ProxyError::BodyTooLarge { limit }),
                    other => ExchangeError::Lost(other.into_proxy_error(addr)),
                })?;
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

    async fn write_body(
        &mut self,
        body: &mut Incoming,
        chunked: bool,
        max_body: Option<u64>,
    ) -> Result<(), BodyWriteError> {
        let mut written: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyWriteError::Client)?.into_data() else {
                // Request trailers are dropped: few backends read them, and chunked
                // framing is the only way to pass them on.
                continue;
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            if let Some(limit) = max_body
                && written > limit
            {
                return Err(BodyWriteError::TooLarge(limit));
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
    TooLarge(u64),
}

impl BodyWriteError {
    fn into_proxy_error(self, addr: SocketAddr) -> ProxyError {
        match self {
            BodyWriteError::Client(error) => ProxyError::RequestBody(error),
            BodyWriteError::Backend(source) => ProxyError::Io { addr, source },
            BodyWriteError::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
        }
    }
}

impl BackendBody {
    pub(super) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>> {
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
