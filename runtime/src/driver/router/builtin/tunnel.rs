//! Upgraded connections (WebSocket and any other `Upgrade:` protocol) through the router.
//!
//! An upgrade request goes to a weighted pick like any other, over a connection of its own
//! (never a pooled one: after a `101 Switching Protocols` the connection belongs to the new
//! protocol). Once the app has switched, the router copies bytes both ways until either side
//! closes. The tunnel counts as a request in flight for the whole of its life, so draining an
//! instance waits for it; when the drain's grace period runs out, the router closes the
//! tunnel itself. For a WebSocket it first tells the client, with a Close frame (1001, "going
//! away") written between two of the app's frames, so clients see a clean close and reconnect
//! to an instance that stays.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tracing::debug;

use super::http1::{MAX_RESPONSE_HEAD, encode_request_head, find_head_end, parse_response_head};
use super::response::{BAD_GATEWAY, GATEWAY_TIMEOUT, RouterBody, fixed, prepare_request, proxied_response};
use super::table::Pick;
use super::upstream::{BackendConnection, Deadline};
use super::{RequestParts, Shared};

/// A WebSocket Close frame from a server: FIN + opcode 8, unmasked, 2-byte payload 1001.
const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Whether `headers` ask to switch protocols (`Connection: upgrade` and an `Upgrade`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

impl Shared {
    /// Proxies an upgrade request, and the tunnel after it.
    pub(super) async fn tunnel(
        self: Arc<Self>,
        mut head: RequestParts,
        pick: Pick,
        client_ip: HeaderValue,
        https: bool,
    ) -> Response<RouterBody> {
        let Some(on_upgrade) = head.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return fixed(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                b"this connection cannot be upgraded\n",
            );
        };
        let protocol = head.headers.get(UPGRADE).cloned().expect("checked by is_upgrade");
        let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
        prepare_request(&mut head, &client_ip, https);
        head.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(UPGRADE, protocol);
        let start = TokioInstant::now();
        let addr = pick.backend().addr();
        let switched = tokio::time::timeout(self.backend_timeout, switch(addr, &mut head)).await;
        let now_ms = crate::store::now_ms();
        let ((answer, headers), stream, read) = match switched {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                pick.stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pick.stats.traffic.failed(now_ms);
                debug!(app = %self.app, instance = pick.backend().instance(), %error, "upgrade request failed");
                return fixed(StatusCode::BAD_GATEWAY, "text/plain; charset=utf-8", BAD_GATEWAY);
            }
            Err(_) => {
                pick.stats.traffic.failed(now_ms);
                return fixed(
                    StatusCode::GATEWAY_TIMEOUT,
                    "text/plain; charset=utf-8",
                    GATEWAY_TIMEOUT,
                );
            }
        };
        pick.stats.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pick.stats
            .traffic
            .answered(now_ms, answer.status.as_u16(), start.elapsed());
        if answer.status != StatusCode::SWITCHING_PROTOCOLS {
            // The app declined: its answer goes back as any other, and the connection is not
            // reused (it was made for the upgrade).
            let deadline = Deadline {
                start,
                at: start + self.backend_timeout,
                timeout: self.backend_timeout,
                max_body: None,
            };
            let connection = BackendConnection::adopt(stream, read, &deadline);
            let mut answer = answer;
            answer.headers = headers;
            answer.keep_alive = false;
            return proxied_response(answer, connection, pick, start);
        }
        let mut response = Response::new(RouterBody::Fixed(None));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let mut out = headers;
        let protocol = out.get(UPGRADE).cloned();
        super::response::strip_hop_by_hop(&mut out);
        out.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            out.insert(UPGRADE, protocol);
        }
        out.insert(super::response::X_SLIPWAY_REVISION, pick.stats.header.clone());
        *response.headers_mut() = out;
        let app = self.app.clone();
        tokio::spawn(async move {
            // The pick holds the tunnel in flight until it ends.
            let pick = pick;
            let client = match on_upgrade.await {
                Ok(client) => client,
                Err(error) => {
                    debug!(%app, %error, "the client went away before the protocol switch");
                    return;
                }
            };
            let closing = pick.in_flight.0.tunnels_closing();
            let _open = pick.in_flight.0.open_tunnel();
            relay(TokioIo::new(client), stream, read, websocket, closing).await;
        });
        response
    }
}

/// The parsed answer to an upgrade request: its head (status, framing) and headers.
type Answer = (super::http1::ResponseHead, HeaderMap);

/// Connects to `addr`, sends the upgrade request and reads the answer's head. Returns the
/// stream and whatever the app sent after the head.
async fn switch(addr: SocketAddr, head: &mut RequestParts) -> std::io::Result<(Answer, TcpStream, BytesMut)> {
    let invalid = |reason: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string());
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let mut out = Vec::with_capacity(1024);
    encode_request_head(head, false, addr, &mut out);
    stream.write_all(&out).await?;
    let mut read = BytesMut::with_capacity(8 * 1024);
    loop {
        if let Some(end) = find_head_end(&read) {
            let raw = read.split_to(end).freeze();
            let mut headers = HeaderMap::new();
            let parsed = parse_response_head(raw, false, &mut headers).map_err(invalid)?;
            return Ok(((parsed, headers), stream, read));
        }
        if read.len() > MAX_RESPONSE_HEAD {
            return Err(invalid("response head too large"));
        }
        if stream.read_buf(&mut read).await? == 0 {
            return Err(invalid("closed before answering the upgrade"));
        }
    }
}

/// Copies both ways until a side closes, or until `closing` fires (the instance's drain
/// grace period ran out); then closes both, a WebSocket client with a Close frame.
async fn relay<C>(
    client: C,
    app: TcpStream,
    early: BytesMut,
    websocket: bool,
    closing: impl std::future::Future<Output = ()>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut app_read, mut app_write) = app.into_split();
    let mut frames = FrameTracker::default();
    // Set while a write to the client is under way: cut short, it may have ended mid-frame.
    let mut writing = false;
    let told_to_close = {
        let to_app = async {
            let _ = tokio::io::copy(&mut client_read, &mut app_write).await;
            let _ = app_write.shutdown().await;
            // The client is done sending; the app may still answer.
            std::future::pending::<()>().await;
        };
        let to_client = async {
            let mut buffer = early;
            loop {
                if !buffer.is_empty() {
                    writing = true;
                    if client_write.write_all(&buffer).await.is_err() {
                        return;
                    }
                    writing = false;
                    if websocket {
                        frames.advance(&buffer);
                    }
                    buffer.clear();
                }
                buffer.reserve(16 * 1024);
                match app_read.read_buf(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = client_write.shutdown().await;
                        return;
                    }
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            () = to_client => false,
            () = to_app => false,
            () = closing => true,
        }
    };
    if !told_to_close {
        return;
    }
    // Told to close: the app is no longer read from; say goodbye between two of its frames.
    if websocket && !writing && frames.at_boundary() {
        let _ = client_write.write_all(&GOING_AWAY).await;
    }
    let _ = client_write.shutdown().await;
}

/// Follows the WebSocket frames an app sends (RFC 6455 §5.2) just far enough to know when
/// one ends, so a Close frame of the router's never lands inside one of the app's.
#[derive(Default)]
struct FrameTracker {
    /// Bytes of the current frame's header seen so far (a header is 2 to 14 bytes).
    header: Vec<u8>,
    /// Payload bytes still to come in the current frame.
    payload_left: u64,
}

impl FrameTracker {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len() as u64) as usize;
                self.payload_left -= take as u64;
                bytes.advance(take);
                continue;
            }
            self.header.push(bytes[0]);
            bytes.advance(1);
            if let Some(length) = frame_length(&self.header) {
                self.payload_left = length;
                self.header.clear();
            }
        }
    }
}

/// The payload length of a frame whose header is `header`, once it is complete.
fn frame_length(header: &[u8]) -> Option<u64> {
    let [_, second, rest @ ..] = header else {
        return None;
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (length, extended) = match second & 0x7F {
        126 => (None, 2),
        127 => (None, 8),
        short => (Some(u64::from(short)), 0),
    };
    if rest.len() < extended + mask {
        return None;
    }
    let length = length.unwrap_or_else(|| rest[..extended].iter().fold(0, |n, &b| (n << 8) | u64::from(b)));
    Some(length + mask as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_across_reads() {
        let mut tracker = FrameTracker::default();
        assert!(tracker.at_boundary());
        // "hello" as a text frame, split inside its header and its payload.
        let frame = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        tracker.advance(&frame[..1]);
        assert!(!tracker.at_boundary());
        tracker.advance(&frame[1..4]);
        assert!(!tracker.at_boundary());
        tracker.advance(&frame[4..]);
        assert!(tracker.at_boundary());
        // A 300-byte binary frame (16-bit length), then a 2-byte frame in the same read.
        let mut two = vec![0x82, 126, 0x01, 0x2C];
        two.extend(std::iter::repeat_n(0u8, 300));
        two.extend([0x8A, 0x00]);
        tracker.advance(&two[..100]);
        assert!(!tracker.at_boundary());
        tracker.advance(&two[100..]);
        assert!(tracker.at_boundary());
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade(&headers));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&headers), "Upgrade without Connection: upgrade");
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(&headers));
    }
}
