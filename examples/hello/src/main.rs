//! Example app for Slipway to deploy: a tiny HTTP/1.1 server with knobs that make it
//! misbehave on purpose, so rollouts, probes, rollbacks and drains can be tried for real.
//!
//! Run with (from the workspace root):
//!
//! ```sh
//! cargo build -p hello
//! PORT=8081 VERSION=v2 target/debug/hello
//! curl -i http://127.0.0.1:8081/          # 200 "hello from v2", header X-Hello-Version: v2
//! curl -i http://127.0.0.1:8081/healthz   # 200 "ok"
//! ```
//!
//! or deploy three replicas of it with `examples/hello/slipway.toml`.
//!
//! Environment:
//!
//! - `PORT` (required): the port to listen on, on 127.0.0.1. Slipway sets it for each replica.
//! - `HOST`: the address to listen on instead of 127.0.0.1, e.g. `0.0.0.0` in a container whose
//!   port is published from a bridge network.
//! - `VERSION` (default `v1`): named in every answer to `GET /`.
//! - `HELLO_START_DELAY_MS`: wait this long before listening, like a slow start.
//! - `HELLO_NEVER_READY=1`: `/healthz` answers 503 forever; `/` still works.
//! - `HELLO_CRASH_ON_START=1`: print a message to stderr and exit 1 at once.
//! - `HELLO_RESPONSE_DELAY_MS`: delay every answer to `/`, to see in-flight requests drain
//!   (or a version that is slower than the one before).
//! - `HELLO_ERROR_RATE`: a share from 0 to 1 of answers to `/` that are `500`s, spread evenly
//!   (0.05: one request in twenty), while `/healthz` stays green: a version that passes its
//!   readiness probe and fails real requests.
//! - `HELLO_CRASH_AFTER_MS`: exit 1 this long after it started listening, like a version that
//!   passes its readiness probe and then falls over.
//! - `HELLO_SHOW_ENV`: comma-separated variable names that `GET /env` answers with, one
//!   `NAME=value` line each, to check what an instance was started with.
//! - `HELLO_SPAM=1`: write to stdout and stderr without pause, as `yes` does, to see what an
//!   instance's output costs.
//!
//! `GET /ws` is a WebSocket echo: each text message comes back as `VERSION: message`.
//!
//! On SIGTERM or SIGINT it stops accepting connections, lets requests in flight finish,
//! closes idle keep-alive connections, closes its WebSockets with a Close frame (1001, going
//! away) and exits 0. A missing or invalid setting exits 2.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// The readiness path Slipway's HTTP probe asks.
const HEALTH_PATH: &str = "/healthz";
/// The WebSocket echo.
const WEBSOCKET_PATH: &str = "/ws";
/// The request's headers as the app got them, a `name: value` line each (to see what a
/// router in front forwards).
const HEADERS_PATH: &str = "/headers";

fn main() -> ExitCode {
    // Checked before anything else so that a crash is a crash, whatever else is set.
    match flag("HELLO_CRASH_ON_START") {
        Ok(true) => {
            eprintln!("hello: crashing on start because HELLO_CRASH_ON_START=1");
            return ExitCode::from(1);
        }
        Ok(false) => {}
        Err(message) => return config_error(&message),
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => return config_error(&message),
    };
    match flag("HELLO_SPAM") {
        Ok(true) => spam(),
        Ok(false) => {}
        Err(message) => return config_error(&message),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hello: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hello: {message}");
            ExitCode::from(1)
        }
    }
}

/// Settings read once from the environment.
struct Config {
    host: Ipv4Addr,
    port: u16,
    version: String,
    start_delay: Duration,
    never_ready: bool,
    response_delay: Duration,
    crash_after: Duration,
    show_env: Vec<String>,
    error_rate: f64,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let port = match std::env::var("PORT") {
            Ok(text) => text
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("PORT must be a port number from 0 to 65535, not {text:?}"))?,
            Err(_) => return Err("PORT is not set: say which port to listen on, e.g. PORT=8081".into()),
        };
        let version = std::env::var("VERSION").unwrap_or_else(|_| "v1".to_owned());
        if version.is_empty() || HeaderValue::from_str(&version).is_err() {
            return Err(format!(
                "VERSION must be non-empty visible ASCII (it goes into a header), not {version:?}"
            ));
        }
        let host = match std::env::var("HOST") {
            Ok(text) => text
                .trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("HOST must be an IPv4 address such as 0.0.0.0, not {text:?}"))?,
            Err(_) => Ipv4Addr::LOCALHOST,
        };
        Ok(Config {
            host,
            port,
            version,
            start_delay: millis("HELLO_START_DELAY_MS")?,
            never_ready: flag("HELLO_NEVER_READY")?,
            response_delay: millis("HELLO_RESPONSE_DELAY_MS")?,
            crash_after: millis("HELLO_CRASH_AFTER_MS")?,
            error_rate: match std::env::var("HELLO_ERROR_RATE").as_deref().map(str::trim) {
                Err(_) | Ok("") => 0.0,
                Ok(text) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        format!("HELLO_ERROR_RATE must be a share from 0 to 1 such as 0.05, not {text:?}")
                    })?,
            },
            show_env: std::env::var("HELLO_SHOW_ENV")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

fn config_error(message: &str) -> ExitCode {
    eprintln!("hello: {message}");
    ExitCode::from(2)
}

/// Writes to stdout and stderr from threads of their own, without pause, for as long as the
/// process lives; a full pipe only blocks those threads.
fn spam() {
    use std::io::Write;
    let line = b"y\n".repeat(4096);
    let out = line.clone();
    std::thread::spawn(move || while std::io::stdout().lock().write_all(&out).is_ok() {});
    std::thread::spawn(move || while std::io::stderr().lock().write_all(&line).is_ok() {});
}

/// A boolean knob: unset, empty, `0` or `false` is off; `1` or `true` is on.
fn flag(name: &str) -> Result<bool, String> {
    match std::env::var(name).as_deref().map(str::trim) {
        Err(_) | Ok("" | "0" | "false") => Ok(false),
        Ok("1" | "true") => Ok(true),
        Ok(other) => Err(format!("{name} must be 1 or 0, not {other:?}")),
    }
}

/// A delay knob in milliseconds: unset or empty is no delay.
fn millis(name: &str) -> Result<Duration, String> {
    match std::env::var(name).as_deref().map(str::trim) {
        Err(_) | Ok("") => Ok(Duration::ZERO),
        Ok(text) => text
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name} must be a whole number of milliseconds, not {text:?}")),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    // Signal handlers go in first so that a SIGTERM during a slow start is a clean exit, not
    // the default action.
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let shutdown = async {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    tokio::pin!(shutdown);
    let version = config.version.clone();

    if !config.start_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(config.start_delay) => {}
            name = &mut shutdown => {
                println!("hello {version} shut down on {name} before it started listening");
                return Ok(());
            }
        }
    }

    let listener = TcpListener::bind((config.host, config.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    println!("hello {version} listening on {address}");
    if !config.crash_after.is_zero() {
        let after = config.crash_after;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!(
                "hello: crashing {} ms after starting because HELLO_CRASH_AFTER_MS is set",
                after.as_millis()
            );
            std::process::exit(1);
        });
    }

    let app = Arc::new(App::new(config));
    let (stop_sender, stop) = watch::channel(false);
    // Every connection task holds a clone of `open`; once all are dropped, `closed` yields
    // `None` and the drain is complete.
    let (open, mut closed) = mpsc::channel::<()>(1);
    let name = loop {
        tokio::select! {
            name = &mut shutdown => break name,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&app), stop.clone(), open.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors; pausing keeps the loop from spinning.
                    eprintln!("hello: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };

    drop(listener);
    // Nobody may be waiting on `stop` if no connection is open; that is fine.
    let _ = stop_sender.send(true);
    drop(open);
    let _ = closed.recv().await;
    println!("hello {version} shut down on {name}");
    Ok(())
}

/// Serves one keep-alive connection until the client closes it or shutdown begins; then
/// hyper finishes the request in flight, if any, and closes the connection.
async fn serve_connection(stream: TcpStream, app: Arc<App>, mut stop: watch::Receiver<bool>, open: mpsc::Sender<()>) {
    let stop_sockets = stop.clone();
    let open_sockets = open.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let app = Arc::clone(&app);
        let stop = stop_sockets.clone();
        let open = open_sockets.clone();
        async move {
            if request.uri().path() == WEBSOCKET_PATH {
                return Ok::<_, Infallible>(websocket(&app, request, stop, open));
            }
            Ok::<_, Infallible>(app.answer(request).await)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let stopping = async move {
        // The `Ref` the wait returns holds a lock; it must not live across an await.
        let _ = stop.wait_for(|stop| *stop).await.map(drop);
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    // A client that goes away mid-request is its own business; the server carries on.
    drop(result);
    drop(open);
}

struct App {
    version: String,
    version_header: HeaderValue,
    never_ready: bool,
    response_delay: Duration,
    show_env: Vec<String>,
    error_rate: f64,
    answered: std::sync::atomic::AtomicU64,
}

impl App {
    fn new(config: Config) -> App {
        let version_header = HeaderValue::from_str(&config.version).expect("VERSION was checked when it was read");
        App {
            version: config.version,
            version_header,
            never_ready: config.never_ready,
            response_delay: config.response_delay,
            show_env: config.show_env,
            error_rate: config.error_rate,
            answered: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the next answer to `/` fails: one in 1/rate, evenly.
    fn fails_next(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        let n = self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((n + 1.0) * self.error_rate).floor() > (n * self.error_rate).floor()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == "/env" && !self.show_env.is_empty() {
            let lines: String = self
                .show_env
                .iter()
                .map(|name| format!("{name}={}\n", std::env::var(name).unwrap_or_default()))
                .collect();
            return text(StatusCode::OK, lines);
        }
        if path == HEADERS_PATH {
            let lines: String = request
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
                .collect();
            return text(StatusCode::OK, lines);
        }
        if path != "/" && path != HEALTH_PATH {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if path == HEALTH_PATH {
            return if self.never_ready {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready (HELLO_NEVER_READY=1)\n".into(),
                )
            } else {
                text(StatusCode::OK, "ok\n".into())
            };
        }
        if !self.response_delay.is_zero() {
            tokio::time::sleep(self.response_delay).await;
        }
        let mut response = if self.fails_next() {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("hello {} failed this one (HELLO_ERROR_RATE)\n", self.version),
            )
        } else {
            text(StatusCode::OK, format!("hello from {}\n", self.version))
        };
        response
            .headers_mut()
            .insert("x-hello-version", self.version_header.clone());
        response
    }
}

/// Answers a WebSocket handshake and echoes text messages, prefixed with the version, until
/// the client closes or shutdown begins (then with a Close frame, 1001).
///
/// `open` is held while the socket is, so shutdown waits for its Close frame.
fn websocket(
    app: &App,
    mut request: Request<Incoming>,
    mut stop: watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake needs Sec-WebSocket-Key\n".into(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    let version = app.version.clone();
    tokio::spawn(async move {
        let _open = open;
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                // The `Ref` the wait returns holds a lock; it must not live across an await.
                () = async { let _ = stop.wait_for(|stop| *stop).await.map(drop); } => {
                    let _ = socket
                        .close(Some(CloseFrame { code: CloseCode::Away, reason: "hello is stopping".into() }))
                        .await;
                    return;
                }
            };
            match message {
                Some(Ok(Message::Text(said))) => {
                    if socket.send(Message::text(format!("{version}: {said}"))).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
