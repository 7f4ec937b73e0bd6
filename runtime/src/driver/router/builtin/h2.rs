//! HTTP/2 to instances, for apps whose spec asks for it (`instance-protocol = "http2"`):
//! cleartext HTTP/2 with prior knowledge (h2c), as gRPC servers speak it. Each instance gets
//! one multiplexed connection, opened on first use and again once it closes; response
//! frames, trailers among them, are passed on as they come.
//!
//! A request counts in flight until its response body ends, as over HTTP/1.1, so draining
//! an instance waits for it. A request goes to another instance when no connection could be
//! had (nothing was sent), and a body-less one also when the connection died under it.

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tracing::debug;

use super::pool::{Backend, InFlight};
use super::response::{RouterBody, X_SLIPWAY_REVISION, prepare_request, strip_hop_by_hop};
use super::table::{Choice, Pick};
use super::upstream::ProxyError;
use super::{MAX_ATTEMPTS, RequestParts, Shared, lock};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RequestBody = BoxBody<Bytes, BoxError>;
/// A handle on an instance's HTTP/2 connection; clones share the connection.
pub(super) type Sender = hyper::client::conn::http2::SendRequest<RequestBody>;

/// A response body from an instance over HTTP/2; the request stays in flight until it ends.
pub(super) struct StreamedBody {
    body: Incoming,
    addr: std::net::SocketAddr,
    _in_flight: InFlight,
}

impl StreamedBody {
    pub(super) fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        let addr = this.addr;
        Pin::new(&mut this.body)
            .poll_frame(cx)
            .map_err(|source| ProxyError::Http2 { addr, source })
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Shared {
    /// Routes one request to `pick` over HTTP/2, or elsewhere when that is safe.
    pub(super) async fn route_h2(
        self: Arc<Self>,
        mut head: RequestParts,
        body: Incoming,
        mut pick: Pick,
        client_ip: HeaderValue,
        https: bool,
    ) -> Response<RouterBody> {
        prepare_request(&mut head, &client_ip, https);
        let start = TokioInstant::now();
        let deadline = start + self.backend_timeout;
        let mut body = (!body.is_end_stream()).then_some(body);
        let bodyless = body.is_none();
        let mut attempt = 1;
        let outcome = loop {
            let exchange = async {
                // Until there is a connection, nothing is sent and the body is still here.
                let mut sender = connection(pick.backend()).await?;
                let request = request(&head, body.take(), self.max_body);
                sender.send_request(request).await.map_err(|source| {
                    forget(pick.backend());
                    classify(pick.backend(), source, self.max_body)
                })
            };
            let error = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(Ok(response)) => break Ok(response),
                Ok(Err(error)) => error,
                Err(_) => {
                    break Err(ProxyError::Timeout {
                        addr: pick.backend().addr,
                        timeout: self.backend_timeout,
                    });
                }
            };
            // Unsent, or body-less: another instance may answer it.
            let unsent = matches!(error, ProxyError::Connect { .. });
            if attempt >= MAX_ATTEMPTS || !(unsent || bodyless) {
                break Err(error);
            }
            match self.choose(Some(pick.backend())) {
                Choice::Routed(next) => {
                    debug!(app = %self.app, instance = pick.backend().instance(), %error, "retrying on another instance");
                    pick.stats.errors.fetch_add(1, Ordering::Relaxed);
                    pick = next;
                    attempt += 1;
                }
                _ => break Err(error),
            }
        };
        pick.stats.requests.fetch_add(1, Ordering::Relaxed);
        let now_ms = crate::store::now_ms();
        match outcome {
            Ok(response) => {
                pick.stats
                    .traffic
                    .answered(now_ms, response.status().as_u16(), start.elapsed());
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.insert(X_SLIPWAY_REVISION, pick.stats.header.clone());
                parts.version = Version::HTTP_11;
                let body = StreamedBody {
                    body,
                    addr: pick.backend().addr,
                    _in_flight: pick.in_flight,
                };
                Response::from_parts(parts, RouterBody::Streamed(Box::new(body)))
            }
            Err(error) => self.failed(&pick, error, now_ms, start),
        }
    }
}

/// The request as sent over HTTP/2: the Host header becomes the `:authority`, and the body
/// is cut off at the app's limit.
fn request(head: &RequestParts, body: Option<Incoming>, max_body: Option<u64>) -> Request<RequestBody> {
    let authority = head
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::try_from(format!("http://{authority}{path}")).unwrap_or_else(|_| Uri::from_static("/"));
    let body: RequestBody = match (body, max_body) {
        (None, _) => Empty::new().map_err(|never| match never {}).boxed(),
        (Some(body), Some(limit)) => Limited::new(body, limit as usize).boxed(),
        (Some(body), None) => body.map_err(BoxError::from).boxed(),
    };
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = head.headers.clone();
    request.headers_mut().remove(header::HOST);
    request
}

/// The instance's HTTP/2 connection, ready for a request: the one open, or a new one.
async fn connection(backend: &Backend) -> Result<Sender, ProxyError> {
    let open = lock(&backend.h2).as_ref().filter(|s| !s.is_closed()).cloned();
    if let Some(mut sender) = open {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
        forget(backend);
    }
    let addr = backend.addr;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| ProxyError::Connect {
            addr,
            source: std::io::Error::other(error),
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%addr, %error, "HTTP/2 connection to an instance ended");
        }
    });
    sender.ready().await.map_err(|error| ProxyError::Connect {
        addr,
        source: std::io::Error::other(error),
    })?;
    *lock(&backend.h2) = Some(sender.clone());
    Ok(sender)
}

/// Drops the instance's connection, so the next request opens a new one.
fn forget(backend: &Backend) {
    lock(&backend.h2).take();
}

/// A failed exchange as a proxy error: over the body limit, or the connection's fault.
fn classify(backend: &Backend, source: hyper::Error, max_body: Option<u64>) -> ProxyError {
    let mut cause = source.source();
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge {
                limit: max_body.unwrap_or_default(),
            };
        }
        cause = error.source();
    }
    ProxyError::Http2 {
        addr: backend.addr,
        source,
    }
}
