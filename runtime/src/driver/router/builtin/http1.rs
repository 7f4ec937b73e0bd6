//! Just enough HTTP/1.1 to talk to an app: request heads out, response heads in, and the
//! framing of response bodies (length, chunked, until close). Also used by the readiness
//! probes, so a probe reads an answer exactly as the router would.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{StatusCode, header};

use super::RequestParts;

/// Limits on a backend's response head. An app that exceeds them is broken, and the
/// client gets a 502 rather than the router buffering without bound.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;
/// Limit on one chunk-size line or trailer line of a chunked response body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A backend's response head, parsed.
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub(super) keep_alive: bool,
}

/// How the end of a response body is found (RFC 9112 §6.3), and how much is left.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
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
pub(super) enum ChunkState {
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
pub(super) enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// Writes the request line and headers. Header values come from a parsed `HeaderMap`,
/// which cannot hold line breaks, so nothing here can split the request.
pub(super) fn encode_request_head(head: &RequestParts, chunked: bool, addr: SocketAddr, out: &mut Vec<u8>) {
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
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
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
pub(crate) fn parse_response_head(
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
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
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

    pub(super) fn is_done(&self) -> bool {
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
