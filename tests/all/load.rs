//! A bounded keep-alive HTTP/1.1 load generator for end-to-end tests: a few connections, each
//! sending `GET path` back to back with a short pause, and a tally of every answer.
//!
//! Every request is counted once: as `ok` (2xx), `unavailable` (503) or `failed` (anything
//! else: connect errors, resets, timeouts, incomplete answers, other statuses). A server that
//! closes an idle keep-alive connection between requests is not a failure: the connection is
//! replaced before the next request. The one race that cannot be told apart from a dropped
//! request, the server closing just as a request on a reused connection is written ("connection
//! closed before message completed"), is retried once on a new connection; if the retry fails
//! too, that counts. [`Tally::retried`] says how often that happened.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long one request may take, from connecting to the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How many failure descriptions a [`Tally`] keeps.
pub const MAX_ERRORS: usize = 20;

/// A running load; [`Load::stop`] ends it and returns the tally.
pub struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
}

/// What a load saw. Every request is in exactly one of `ok`, `failed` and `unavailable`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// 2xx answers.
    pub ok: u64,
    /// Connect errors, resets, timeouts, incomplete answers and statuses other than 2xx and 503.
    pub failed: u64,
    /// 503 answers.
    pub unavailable: u64,
    /// Requests retried once because a reused connection closed before answering; each is
    /// also counted by the outcome of its retry.
    pub retried: u64,
    /// 2xx answers by app version, from the `X-Hello-Version` header or a `hello from V` body;
    /// answers that name no version are not in here.
    pub by_version: BTreeMap<String, u64>,
    /// The first [`MAX_ERRORS`] failures, described, in the order they happened.
    pub errors: Vec<String>,
    /// Requests that failed or got a 503 on a connection after it had seen a 2xx: what users
    /// lose once an app serves. (A load started against an app that is still coming up
    /// counts its start-up misses elsewhere, not here.)
    pub lost_after_ok: u64,
    /// How long each 2xx answer took, in microseconds (the first [`MAX_LATENCIES`]).
    pub latencies_us: Vec<u32>,
}

/// How many latencies a [`Tally`] keeps.
pub const MAX_LATENCIES: usize = 1 << 20;

impl Load {
    /// Starts `connections` keep-alive connections to `addr`, each sending GET `path` back to
    /// back with `pause` between requests (e.g. 5 ms, to bound the rate). A connection the
    /// server closes is replaced. Must be called from within a Tokio runtime.
    pub fn start(addr: SocketAddr, path: &str, connections: usize, pause: Duration) -> Load {
        Load::start_with_timeout(addr, path, connections, pause, REQUEST_TIMEOUT)
    }

    /// Stops the load and returns the tally. Requests in flight are finished (or time out)
    /// and counted; no new ones are started.
    pub async fn stop(self) -> Tally {
        // Nobody is listening only if every worker already ended, which is fine.
        let _ = self.stop.send(true);
        for worker in self.workers {
            if let Err(error) = worker.await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.clone()
    }

    /// The tally so far, while the load runs: to wait until some requests have succeeded.
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn start_with_timeout(
        addr: SocketAddr,
        path: &str,
        connections: usize,
        pause: Duration,
        timeout: Duration,
    ) -> Load {
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let path: Arc<str> = Arc::from(path);
        let workers = (0..connections)
            .map(|id| {
                let worker = Worker {
                    id,
                    addr,
                    path: Arc::clone(&path),
                    timeout,
                    connection: None,
                    phase: Phase::Connecting,
                    tally: Arc::clone(&tally),
                };
                tokio::spawn(worker.run(stopped.clone(), pause))
            })
            .collect();
        Load { stop, workers, tally }
    }
}

impl Tally {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unavailable
    }

    /// The `q` quantile (0 to 1) of the 2xx answers' latencies.
    pub fn latency(&self, q: f64) -> Duration {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        Duration::from_micros(u64::from(sorted[((last as f64) * q).round() as usize]))
    }

    fn record(&mut self, outcome: Outcome, served_before: bool) {
        if served_before && !matches!(outcome, Outcome::Ok(_)) {
            self.lost_after_ok += 1;
        }
        match outcome {
            Outcome::Ok(version) => {
                self.ok += 1;
                if let Some(version) = version {
                    *self.by_version.entry(version).or_default() += 1;
                }
            }
            Outcome::Unavailable => self.unavailable += 1,
            Outcome::Failed(description) => {
                self.failed += 1;
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(description);
                }
            }
        }
    }
}

/// How one request ended.
enum Outcome {
    Ok(Option<String>),
    Unavailable,
    Failed(String),
}

/// How one attempt at a request ended.
enum Attempt {
    Done(Outcome),
    /// A reused connection was closed before any answer came: possibly the idle-close race.
    ClosedBeforeAnswer(String),
}

/// What an attempt was doing, to say so when it times out.
#[derive(Clone, Copy)]
enum Phase {
    Connecting,
    Waiting,
    Reading,
}

struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// Whether a request has completed on it, so that a close before the next answer may be
    /// the server dropping it as idle.
    reused: bool,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One connection's request loop.
struct Worker {
    id: usize,
    addr: SocketAddr,
    path: Arc<str>,
    timeout: Duration,
    connection: Option<Connection>,
    phase: Phase,
    tally: Arc<Mutex<Tally>>,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>, pause: Duration) {
        // A dropped `Load` (its sender gone) stops the workers as `stop` would.
        let stopping = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
        let mut served = false;
        while !stopping(&stop) {
            let started = std::time::Instant::now();
            let outcome = self.request().await;
            let took = started.elapsed();
            let ok = matches!(outcome, Outcome::Ok(_));
            {
                let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
                tally.record(outcome, served);
                if ok && tally.latencies_us.len() < MAX_LATENCIES {
                    tally
                        .latencies_us
                        .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            served |= ok;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn request(&mut self) -> Outcome {
        let mut retried = false;
        let outcome = loop {
            let attempt = match tokio::time::timeout(self.timeout, self.attempt()).await {
                Ok(attempt) => attempt,
                Err(_) => {
                    // The connection is in an unknown state; a fresh one serves the next request.
                    self.connection = None;
                    let doing = match self.phase {
                        Phase::Connecting => "connecting",
                        Phase::Waiting => "waiting for the answer",
                        Phase::Reading => "reading the answer",
                    };
                    break self.failed(format!("GET {}: timed out after {:?} {doing}", self.path, self.timeout));
                }
            };
            match attempt {
                Attempt::ClosedBeforeAnswer(_) if !retried => {
                    retried = true;
                    self.tally.lock().unwrap_or_else(PoisonError::into_inner).retried += 1;
                }
                // A retry always runs on a new connection, so it never comes back here; if it
                // did, it would count.
                Attempt::ClosedBeforeAnswer(description) => break Outcome::Failed(description),
                Attempt::Done(outcome) => break outcome,
            }
        };
        match outcome {
            Outcome::Failed(description) if retried => Outcome::Failed(format!("{description} (after one retry)")),
            outcome => outcome,
        }
    }

    async fn attempt(&mut self) -> Attempt {
        self.phase = Phase::Connecting;
        // A connection the server closed since the last answer is replaced without counting
        // anything: no request was sent on it.
        if let Some(connection) = &mut self.connection
            && connection.sender.ready().await.is_err()
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            match connect(self.addr).await {
                Ok(connection) => self.connection = Some(connection),
                Err(description) => return Attempt::Done(self.failed(description)),
            }
        }
        let connection = self.connection.as_mut().expect("connected just above");
        let reused = connection.reused;
        let request = Request::get(&*self.path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::new())
            .expect("a GET with a path and a Host header is a valid request");

        self.phase = Phase::Waiting;
        let response = match connection.sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                self.connection = None;
                let description = format!("GET {}: {}", self.path, describe(&error));
                // Canceled: never written. Incomplete: written, and the connection closed
                // with no answer, which is also what a server's idle close looks like when it
                // crosses the request on the wire.
                if reused && (error.is_incomplete_message() || error.is_canceled()) {
                    return Attempt::ClosedBeforeAnswer(self.described(description));
                }
                return Attempt::Done(self.failed(description));
            }
        };

        self.phase = Phase::Reading;
        let status = response.status();
        let version = response
            .headers()
            .get("x-hello-version")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => {
                self.connection = None;
                let description = format!("GET {}: reading the answer: {}", self.path, describe(&error));
                return Attempt::Done(self.failed(description));
            }
        };
        connection.reused = true;

        Attempt::Done(if status.is_success() {
            let version = version.or_else(|| {
                let body = std::str::from_utf8(&body).ok()?;
                Some(body.strip_prefix("hello from ")?.trim().to_owned())
            });
            Outcome::Ok(version)
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            Outcome::Unavailable
        } else {
            self.failed(format!("GET {}: status {status}", self.path))
        })
    }

    fn described(&self, description: String) -> String {
        format!("connection {} to {}: {description}", self.id, self.addr)
    }

    fn failed(&self, description: String) -> Outcome {
        Outcome::Failed(self.described(description))
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    // Requests are small and answers awaited one at a time; Nagle would only add latency.
    stream.set_nodelay(true).map_err(|error| format!("connect: {error}"))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {}", describe(&error)))?;
    // The driver's own error, if any, reaches the sender as the request's error.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection {
        sender,
        reused: false,
        driver,
    })
}

/// The error and its causes, e.g. `connection error: Connection reset by peer (os error 104)`.
fn describe(error: &hyper::Error) -> String {
    let mut description = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        description.push_str(": ");
        description.push_str(&cause.to_string());
        source = cause.source();
    }
    description
}

/// `wrk` (one thread, 8 keep-alive connections) against `url` for `seconds`, asking for
/// `host`, on a thread of its own: join it for wrk's report.
pub fn wrk_by_host(url: String, host: &str, seconds: u32) -> std::thread::JoinHandle<String> {
    let host = format!("Host: {host}");
    std::thread::spawn(move || {
        let out = std::process::Command::new("wrk")
            .args(["-t1", "-c8", &format!("-d{seconds}s"), "-H", &host])
            .arg(&url)
            .output()
            .expect("run wrk");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Asserts a `wrk` report shows requests, and none failed or lost its connection.
#[track_caller]
pub fn assert_wrk_clean(report: &str) {
    println!("{report}");
    assert!(report.contains(" requests in "), "{report}");
    assert!(!report.contains("Non-2xx"), "failed requests under load: {report}");
    assert!(
        !report.contains("Socket errors"),
        "connection errors under load: {report}"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const PAUSE: Duration = Duration::from_millis(5);

    /// What the test server does with one request.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        /// 200 `hello from v1` with `X-Hello-Version: v1`, keeping the connection open.
        Hello,
        /// 200 with `Connection: close`, then a clean close.
        HelloAndClose,
        /// 200 `hello from v2` with no version header.
        HelloBodyOnly,
        /// That status, with an empty body.
        Status(u16),
        /// Close cleanly (FIN) without answering.
        Close,
        /// Reset the connection (RST) without answering.
        Reset,
        /// Half an answer, then a clean close.
        Truncate,
        /// Never answer.
        Hang,
    }

    /// A raw HTTP/1.1 server whose every answer is chosen by `reply(connection, request on
    /// that connection, request overall)`. With `idle_close`, a connection idle that long
    /// after an answer is closed cleanly, as servers do with keep-alive connections.
    async fn server(
        idle_close: Option<Duration>,
        reply: impl Fn(usize, usize, usize) -> Reply + Send + Sync + 'static,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(reply);
        let overall = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            for connection in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (reply, overall) = (Arc::clone(&reply), Arc::clone(&overall));
                tokio::spawn(async move {
                    for request in 0.. {
                        let head = match idle_close {
                            Some(idle) if request > 0 => match tokio::time::timeout(idle, read_head(&mut stream)).await
                            {
                                Ok(head) => head,
                                Err(_) => return,
                            },
                            _ => read_head(&mut stream).await,
                        };
                        if !head {
                            return;
                        }
                        let answer = match reply(connection, request, overall.fetch_add(1, Ordering::SeqCst)) {
                            Reply::Hello => ok("v1", true),
                            Reply::HelloAndClose => ok("v1", true).replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n"),
                            Reply::HelloBodyOnly => ok("v2", false),
                            Reply::Status(status) => format!("HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\n\r\n"),
                            Reply::Close => return,
                            Reply::Reset => {
                                stream.set_zero_linger().unwrap();
                                return;
                            }
                            Reply::Truncate => {
                                let answer = ok("v1", true);
                                let _ = stream.write_all(&answer.as_bytes()[..answer.len() - 4]).await;
                                return;
                            }
                            Reply::Hang => std::future::pending().await,
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() || answer.contains("connection: close") {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn ok(version: &str, header: bool) -> String {
        let body = format!("hello from {version}\n");
        let header = if header {
            format!("x-hello-version: {version}\r\n")
        } else {
            String::new()
        };
        format!(
            "HTTP/1.1 200 OK\r\n{header}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Reads one request head; false at a clean end of the connection.
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// Runs a load until its tally passes `done` (checked every 10 ms), then stops it. Counts,
    /// not durations, keep the tests steady on a busy machine.
    async fn run_until(addr: SocketAddr, connections: usize, done: impl Fn(&Tally) -> bool) -> Tally {
        let load = Load::start(addr, "/", connections, PAUSE);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&load.snapshot()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load got nowhere: {:?}",
                load.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        load.stop().await
    }

    #[tokio::test]
    async fn counts_every_answer_by_version() {
        let addr = server(None, |_, _, overall| {
            if overall % 2 == 0 {
                Reply::Hello
            } else {
                Reply::HelloBodyOnly
            }
        })
        .await;
        let tally = run_until(addr, 4, |t| t.ok >= 20).await;
        assert_eq!((tally.failed, tally.unavailable, tally.retried), (0, 0, 0), "{tally:?}");
        assert_eq!(tally.by_version.values().sum::<u64>(), tally.ok, "{tally:?}");
        assert!(tally.by_version["v1"] > 0 && tally.by_version["v2"] > 0, "{tally:?}");
    }

    #[tokio::test]
    async fn keeps_connections_alive() {
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&connections);
        let addr = server(None, move |connection, _, _| {
            seen.fetch_max(connection + 1, Ordering::SeqCst);
            Reply::Hello
        })
        .await;
        let tally = run_until(addr, 3, |t| t.ok >= 20).await;
        assert_eq!(connections.load(Ordering::SeqCst), 3, "{tally:?}");
    }

    #[tokio::test]
    async fn a_clean_close_between_requests_is_not_a_failure() {
        // Every answer says `Connection: close`, or the server drops connections idle for
        // longer than half the pause: either way the next request needs a new connection.
        let addr = server(None, |_, _, _| Reply::HelloAndClose).await;
        let tally = run_until(addr, 2, |t| t.ok >= 10).await;
        assert!(tally.ok >= 10, "{tally:?}");
        assert_eq!(tally.failed, 0, "{tally:?}");

        let addr = server(Some(PAUSE / 2), |_, _, _| Reply::Hello).await;
        let tally = run_until(addr, 2, |t| t.ok >= 10).await;
        assert!(tally.ok >= 10, "{tally:?}");
        assert_eq!(tally.failed, 0, "{tally:?}");
    }

    #[tokio::test]
    async fn the_idle_close_race_is_retried_once() {
        // The second request on every connection is read and dropped unanswered: on a reused
        // connection that looks exactly like the idle-close race, so it is retried, and the
        // retry (the first request on a new connection) succeeds.
        let addr = server(
            None,
            |_, request, _| if request == 0 { Reply::Hello } else { Reply::Close },
        )
        .await;
        let tally = run_until(addr, 1, |t| t.ok >= 6).await;
        assert_eq!(tally.failed, 0, "{tally:?}");
        assert_eq!(tally.retried, tally.ok - 1, "{tally:?}");
    }

    #[tokio::test]
    async fn a_retry_that_fails_again_is_counted() {
        // Only the very first request is answered: the second is retried once and then
        // counted; later ones are on fresh connections and count at once.
        let addr = server(
            None,
            |_, _, overall| if overall == 0 { Reply::Hello } else { Reply::Close },
        )
        .await;
        let tally = run_until(addr, 1, |t| t.failed >= 3).await;
        assert_eq!((tally.ok, tally.retried), (1, 1), "{tally:?}");
        assert!(tally.failed > 2, "{tally:?}");
        assert!(tally.errors[0].contains("(after one retry)"), "{tally:?}");
        assert!(
            tally.errors[1].contains("connection closed before message completed"),
            "{tally:?}"
        );
        assert!(!tally.errors[1].contains("retry"), "{tally:?}");
    }

    #[tokio::test]
    async fn resets_and_truncated_answers_are_failures() {
        let addr = server(
            None,
            |_, request, _| if request == 0 { Reply::Hello } else { Reply::Reset },
        )
        .await;
        let tally = run_until(addr, 1, |t| t.ok >= 6).await;
        // Each connection answers once and then fails once; the load may stop in between.
        assert!(
            tally.failed <= tally.ok && tally.ok - tally.failed <= 1,
            "every reset request counts: {tally:?}"
        );
        assert!(tally.errors.iter().all(|e| e.contains("reset")), "{tally:?}");

        let addr = server(
            None,
            |_, request, _| if request == 0 { Reply::Hello } else { Reply::Truncate },
        )
        .await;
        let tally = run_until(addr, 1, |t| t.ok >= 6).await;
        // Each connection answers once and then fails once; the load may stop in between.
        assert!(
            tally.failed <= tally.ok && tally.ok - tally.failed <= 1,
            "every truncated answer counts: {tally:?}"
        );
        assert!(tally.errors[0].contains("reading the answer"), "{tally:?}");
    }

    #[tokio::test]
    async fn statuses_are_sorted_into_unavailable_and_failed() {
        let addr = server(None, |_, _, overall| match overall % 3 {
            0 => Reply::Hello,
            1 => Reply::Status(503),
            _ => Reply::Status(500),
        })
        .await;
        let tally = run_until(addr, 1, |t| t.failed >= 6).await;
        assert!(tally.ok >= 6 && tally.unavailable >= 6, "{tally:?}");
        assert!(
            tally.ok.abs_diff(tally.unavailable) <= 1 && tally.ok.abs_diff(tally.failed) <= 1,
            "{tally:?}"
        );
        assert!(
            tally.errors[0].ends_with("GET /: status 500 Internal Server Error"),
            "{tally:?}"
        );

        let addr = server(None, |_, _, _| Reply::Status(404)).await;
        let tally = run_until(addr, 1, |t| t.total() >= 3).await;
        assert_eq!(tally.failed, tally.total(), "{tally:?}");
    }

    #[tokio::test]
    async fn connect_errors_are_failures_and_errors_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let tally = run_until(addr, 2, |t| t.failed > MAX_ERRORS as u64).await;
        assert_eq!(tally.ok, 0);
        assert!(tally.failed > MAX_ERRORS as u64, "{tally:?}");
        assert_eq!(tally.errors.len(), MAX_ERRORS);
        assert!(tally.errors[0].contains("connect: Connection refused"), "{tally:?}");
    }

    #[tokio::test]
    async fn a_request_without_an_answer_times_out() {
        let addr = server(
            None,
            |_, request, _| if request == 0 { Reply::Hello } else { Reply::Hang },
        )
        .await;
        let load = Load::start_with_timeout(addr, "/", 1, PAUSE, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let tally = load.stop().await;
        assert!(tally.ok >= 2 && tally.failed >= 2, "{tally:?}");
        assert!(
            tally.errors[0].contains("timed out after 100ms waiting for the answer"),
            "{tally:?}"
        );
    }

    #[tokio::test]
    async fn stop_finishes_the_request_in_flight() {
        let addr = server(None, |_, _, _| Reply::Hang).await;
        let load = Load::start_with_timeout(addr, "/", 1, PAUSE, Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        let tally = load.stop().await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "stop waited for the request"
        );
        assert_eq!((tally.failed, tally.total()), (1, 1), "{tally:?}");
    }

    #[tokio::test]
    async fn snapshot_shows_progress() {
        let addr = server(None, |_, _, _| Reply::Hello).await;
        let load = Load::start(addr, "/", 1, PAUSE);
        let mut waited = 0;
        while load.snapshot().ok < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
            assert!(waited < 200, "no progress: {:?}", load.snapshot());
        }
        assert!(load.stop().await.ok >= 5);
    }
}
