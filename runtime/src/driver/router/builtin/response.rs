//! What goes back to clients: proxied responses with their hop-by-hop headers removed, the
//! request prepared for the backend, and the router's own fixed answers (maintenance, no
//! ready instance, 502, 504).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Uri, header};
use tokio::time::Instant as TokioInstant;

use super::RequestParts;
use super::http1::{Framing, ResponseHead};
use super::table::Pick;
use super::upstream::{BackendBody, Connection, ProxyError};

/// Header telling clients (and tests) which revision answered.
pub(super) const X_SLIPWAY_REVISION: HeaderName = HeaderName::from_static("x-slipway-revision");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

pub(crate) const MAINTENANCE_PAGE: &[u8] = b"<!doctype html>\n\
<meta charset=\"utf-8\">\n\
<meta http-equiv=\"refresh\" content=\"5\">\n\
<title>Down for maintenance</title>\n\
<h1>Down for maintenance</h1>\n\
<p>This site is being updated and will be back shortly. This page reloads by itself.</p>\n";
pub(crate) const NO_READY_INSTANCES: &[u8] = b"no ready instances of this app\n";
pub(super) const BAD_GATEWAY: &[u8] = b"an instance of this app failed to answer this request\n";
pub(super) const GATEWAY_TIMEOUT: &[u8] = b"an instance of this app did not answer in time\n";

/// The body of a response sent to a client.
pub(super) enum RouterBody {
    Fixed(Option<Bytes>),
    Proxied(BackendBody),
    /// From an instance spoken to over HTTP/2 (boxed: rare, and large).
    Streamed(Box<super::h2::StreamedBody>),
}

pub(super) fn proxied_response(
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

/// Makes the client's request fit to send to a backend, and says where it came from:
/// `X-Forwarded-For` (extended), `X-Forwarded-Proto` and `-Host` (set: the router is the
/// edge, so a client's own claims about them are not passed on), and `Forwarded` (RFC 7239,
/// extended).
pub(super) fn prepare_request(head: &mut RequestParts, client_ip: &HeaderValue, https: bool) {
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
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    let host = head.headers.get(header::HOST).cloned();
    forwarded(&mut head.headers, client_ip, &proto, host.as_ref());
    head.headers.insert(X_FORWARDED_PROTO, proto);
    match host {
        Some(host) => {
            head.headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            head.headers.remove(X_FORWARDED_HOST);
        }
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

/// Adds this hop to the `Forwarded` header: `for=IP;host=HOST;proto=PROTO`, an IPv6
/// address quoted and bracketed, a host quoted when it has a port.
fn forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &HeaderValue, host: Option<&HeaderValue>) {
    let ip = client_ip.as_bytes();
    let mut element = Vec::with_capacity(64);
    element.extend_from_slice(b"for=");
    if ip.contains(&b':') {
        element.extend_from_slice(b"\"[");
        element.extend_from_slice(ip);
        element.extend_from_slice(b"]\"");
    } else {
        element.extend_from_slice(ip);
    }
    // A host is a token unless it carries a port (or is odd): then it is quoted.
    if let Some(host) = host.map(HeaderValue::as_bytes)
        && !host.is_empty()
        && !host.iter().any(|&b| b == b'"' || b == b'\\')
    {
        element.extend_from_slice(b";host=");
        if host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        {
            element.extend_from_slice(host);
        } else {
            element.push(b'"');
            element.extend_from_slice(host);
            element.push(b'"');
        }
    }
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(proto.as_bytes());
    let value = match headers.get(FORWARDED) {
        Some(earlier) => {
            let mut chain = earlier.as_bytes().to_vec();
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(&element);
            chain
        }
        None => element,
    };
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(FORWARDED, value);
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1), including any the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

pub(super) fn fixed(status: StatusCode, content_type: &'static str, body: &'static [u8]) -> Response<RouterBody> {
    fixed_bytes(status, content_type, Bytes::from_static(body))
}

/// As [`fixed`], with a body made at run time.
pub(super) fn fixed_bytes(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<RouterBody> {
    let mut response = Response::new(RouterBody::Fixed(Some(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(super) fn maintenance_page() -> Response<RouterBody> {
    let mut response = fixed(StatusCode::SERVICE_UNAVAILABLE, "text/html", MAINTENANCE_PAGE);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

pub(super) fn no_ready_instances() -> Response<RouterBody> {
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
            RouterBody::Streamed(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RouterBody::Fixed(bytes) => bytes.is_none(),
            RouterBody::Proxied(body) => body.framing.is_done(),
            RouterBody::Streamed(body) => body.is_end_stream(),
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
            RouterBody::Streamed(body) => body.size_hint(),
        }
    }
}
