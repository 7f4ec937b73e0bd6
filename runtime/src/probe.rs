//! Readiness probes: an HTTP GET that must answer an expected status, or a TCP connect.
//!
//! The probe speaks just enough HTTP/1.1 to read a status line, on a fresh connection each
//! time, so a probe never shares a connection (or its failures) with real traffic.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use hyper::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::router::builtin::http1;

/// How to probe one instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeCheck {
    /// `GET path` must answer `status`.
    Http { path: String, status: u16 },
    /// A TCP connection must open.
    Tcp,
}

/// Probes `addr` once; `Err` says what was wrong, for reports.
pub async fn probe_once(check: &ProbeCheck, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(check, addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer from {addr} within {} ms", timeout.as_millis())),
    }
}

async fn probe_inner(check: &ProbeCheck, addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let ProbeCheck::Http { path, status } = check else {
        return Ok(());
    };
    let got = http_status(&mut stream, addr, path).await?;
    if got == *status {
        Ok(())
    } else {
        Err(format!("GET {path} answered {got}, expected {status}"))
    }
}

/// Sends `GET path` on `stream` and returns the response's status code, reading the response
/// head with the router's own HTTP/1.1 parser: an answer the router could not proxy does not
/// pass a probe either.
async fn http_status(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slipway-probe\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut read = BytesMut::with_capacity(512);
    let end = loop {
        if let Some(end) = http1::find_head_end(&read) {
            break end;
        }
        if read.len() > http1::MAX_RESPONSE_HEAD {
            return Err(format!(
                "{addr} sent a response head over {} bytes",
                http1::MAX_RESPONSE_HEAD
            ));
        }
        let n = stream
            .read_buf(&mut read)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection before a complete response head"));
        }
    };
    let head = read.split_to(end).freeze();
    let response = http1::parse_response_head(head, false, &mut HeaderMap::new())
        .map_err(|reason| format!("{addr} sent an invalid response: {reason}"))?;
    Ok(response.status.as_u16())
}

/// Turns single results into a readiness verdict with success and failure thresholds, as
/// Kubernetes does: `success` passes in a row make an instance ready, `failure` failures in a
/// row make it not ready.
#[derive(Clone, Debug)]
pub struct Thresholds {
    success: u32,
    failure: u32,
    passes: u32,
    fails: u32,
    ready: bool,
}

impl Thresholds {
    pub fn new(success: u32, failure: u32) -> Self {
        Thresholds {
            success: success.max(1),
            failure: failure.max(1),
            passes: 0,
            fails: 0,
            ready: false,
        }
    }

    /// Thresholds for an instance already known to be ready (adopted after a probe passed):
    /// it stays ready until `failure` probes in a row fail.
    pub fn already_ready(mut self) -> Self {
        self.ready = true;
        self
    }

    /// Records one result; returns the readiness after it.
    pub fn record(&mut self, passed: bool) -> bool {
        if passed {
            self.passes += 1;
            self.fails = 0;
            if self.passes >= self.success {
                self.ready = true;
            }
        } else {
            self.fails += 1;
            self.passes = 0;
            if self.fails >= self.failure {
                self.ready = false;
            }
        }
        self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut t = Thresholds::new(2, 3);
        assert!(!t.record(true));
        assert!(t.record(true));
        assert!(t.record(false));
        assert!(t.record(false));
        assert!(!t.record(false));
        assert!(!t.record(true));
        assert!(t.record(true));
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_and_tcp_probe_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = ProbeCheck::Http {
            path: "/healthz".into(),
            status: 200,
        };
        let second = Duration::from_secs(1);
        assert_eq!(probe_once(&http, addr, second).await, Ok(()));
        assert_eq!(
            probe_once(&http, addr, second).await,
            Err("GET /healthz answered 503, expected 200".into())
        );
        assert_eq!(probe_once(&ProbeCheck::Tcp, addr, second).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(
            probe_once(&ProbeCheck::Tcp, closed, second)
                .await
                .unwrap_err()
                .contains("connect")
        );
    }

    #[tokio::test]
    async fn an_answer_the_router_could_not_read_fails_the_probe() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", // no blank line: the head never ends
                "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let http = ProbeCheck::Http {
            path: "/healthz".into(),
            status: 200,
        };
        let second = Duration::from_secs(1);
        let truncated = probe_once(&http, addr, second).await.unwrap_err();
        assert!(truncated.contains("before a complete response head"), "{truncated}");
        let garbled = probe_once(&http, addr, second).await.unwrap_err();
        assert!(garbled.contains("header line without a colon"), "{garbled}");
        let not_http = probe_once(&http, addr, second).await.unwrap_err();
        assert!(not_http.contains("not an HTTP/1 status line"), "{not_http}");
    }
}
