//! Real sockets on 127.0.0.1, real (tiny) hyper apps behind the router, and a plain
//! hyper client in front of it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client_http1;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant as TokioInstant;

use super::http1::{ChunkState, Decoded, Framing, encode_request_head, find_head_end, parse_response_head};
use super::pool::POOL_IDLE_TIMEOUT;
use super::response::{X_SLIPWAY_REVISION, prepare_request};
use super::table::Routes;
use super::upstream::{BackendConnection, Deadline};
use super::*;

/// How long the test app's `/slow` takes to answer.
const SLOW: Duration = Duration::from_millis(300);

/// A test app instance; dropping it (or `kill`) closes its listener and every
/// connection, like a process that exits.
struct App {
    backend: Arc<Backend>,
    server: JoinHandle<()>,
}

impl App {
    async fn start(name: &'static str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend::new(name, listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // Connections live in this task's JoinSet so that aborting the task
            // closes them all.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(name, request));
                    let _ = server_http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { backend, server }
    }

    async fn kill(self) {
        self.server.abort();
        let _ = self.server.await;
    }
}

/// A body made of the given pieces. Without a known size hyper sends it chunked.
struct Chunks {
    pieces: VecDeque<Bytes>,
    sized: bool,
}

impl Chunks {
    fn full(bytes: impl Into<Bytes>) -> Chunks {
        let bytes = bytes.into();
        let pieces = if bytes.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([bytes])
        };
        Chunks { pieces, sized: true }
    }

    fn chunked(pieces: &[&'static str]) -> Chunks {
        Chunks {
            pieces: pieces.iter().map(|p| Bytes::from_static(p.as_bytes())).collect(),
            sized: false,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.pieces.pop_front().map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.sized && self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.pieces.iter().map(|p| p.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

/// The test app: answers with its name (or echoes a request body), after `SLOW` on
/// `/slow`, in three chunks on `/chunks`, with a 204 on `/nothing`, and reports what
/// it received in `x-seen-*` headers.
async fn answer(name: &'static str, request: Request<Incoming>) -> Result<Response<Chunks>, Infallible> {
    match request.uri().path() {
        "/slow" => tokio::time::sleep(SLOW).await,
        "/chunks" => return Ok(Response::new(Chunks::chunked(&["one ", "two ", "three"]))),
        "/nothing" => {
            let mut response = Response::new(Chunks::full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            return Ok(response);
        }
        _ => {}
    }
    let mut seen = HeaderMap::new();
    for (header, as_seen) in [
        ("x-forwarded-for", "x-seen-forwarded-for"),
        ("x-forwarded-proto", "x-seen-forwarded-proto"),
        ("x-forwarded-host", "x-seen-forwarded-host"),
        ("forwarded", "x-seen-forwarded"),
        ("host", "x-seen-host"),
        ("x-secret", "x-seen-secret"),
        ("proxy-authorization", "x-seen-proxy-authorization"),
        ("connection", "x-seen-connection"),
    ] {
        if let Some(value) = request.headers().get(header) {
            seen.insert(HeaderName::from_static(as_seen), value.clone());
        }
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body = if body.is_empty() {
        Bytes::from_static(name.as_bytes())
    } else {
        body
    };
    let mut response = Response::new(Chunks::full(body));
    response.headers_mut().extend(seen);
    Ok(response)
}

/// A backend that is not hyper: it reads request heads and answers each with
/// `response`, byte for byte, closing the connection after it if `close`. It counts
/// the connections it accepts.
async fn raw_app(response: &'static [u8], close: bool) -> (Arc<Backend>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Backend::new("raw", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(end) = find_head_end(&buf) {
                        let _ = buf.split_to(end);
                        if stream.write_all(response).await.is_err() || close {
                            return;
                        }
                    }
                    buf.reserve(4096);
                    if matches!(stream.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                        return;
                    }
                }
            });
        }
    });
    (backend, accepted)
}

/// One keep-alive client connection to the router.
struct Client(client_http1::SendRequest<Chunks>);

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn revision(&self) -> u32 {
        self.headers[&X_SLIPWAY_REVISION].to_str().unwrap().parse().unwrap()
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl Client {
    async fn connect(router: &BuiltinRouter) -> Client {
        Client::connect_to(router.local_addr()).await
    }

    async fn connect_to(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Client(sender)
    }

    async fn send(&mut self, request: Request<Chunks>) -> Reply {
        self.0.ready().await.unwrap();
        let response = self.0.send_request(request).await.unwrap();
        let (head, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: head.status,
            headers: head.headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(
            Request::get(path)
                .header("host", "app.test")
                .body(Chunks::full(""))
                .unwrap(),
        )
        .await
    }
}

fn revision(revision: u32, weight: u32, apps: &[&App]) -> RoutedRevision {
    RoutedRevision {
        revision,
        weight,
        backends: apps.iter().map(|a| a.backend.clone()).collect(),
    }
}

fn table(revisions: Vec<RoutedRevision>) -> RouteTable {
    RouteTable {
        maintenance: false,
        revisions,
    }
}

async fn router() -> BuiltinRouter {
    BuiltinRouter::bind("shop", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn wait_for_in_flight(backend: &Backend, count: u64) {
    tokio::time::timeout(Duration::from_secs(2), async {
        while backend.in_flight() != count {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("in-flight count never reached the expected value");
}

#[test]
fn selection_follows_weights_then_round_robin() {
    let metrics = RouterMetrics::default();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (a1, a2, b) = (
        Backend::new("a1", addr),
        Backend::new("a2", addr),
        Backend::new("b", addr),
    );
    let routes = Routes::compile(
        table(vec![
            RoutedRevision {
                revision: 1,
                weight: 192,
                backends: vec![a1.clone(), a2.clone()],
            },
            RoutedRevision {
                revision: 2,
                weight: 64,
                backends: vec![b.clone()],
            },
            RoutedRevision {
                revision: 3,
                weight: 0,
                backends: vec![b.clone()],
            },
            RoutedRevision {
                revision: 4,
                weight: 256,
                backends: vec![],
            },
        ]),
        &metrics,
    );
    let pick = |random: u64, exclude: Option<&Backend>| {
        routes
            .select(random, exclude)
            .map(|(_, backend)| backend.instance().to_owned())
    };
    let three_quarters = u64::MAX / 4 * 3;
    assert_eq!(pick(0, None).as_deref(), Some("a1"));
    assert_eq!(pick(three_quarters - 8, None).as_deref(), Some("a2"));
    assert_eq!(pick(three_quarters + 8, None).as_deref(), Some("b"));
    assert_eq!(pick(u64::MAX, None).as_deref(), Some("b"));
    // With `b` excluded all traffic goes to revision 1, still round-robin.
    assert_eq!(pick(u64::MAX, Some(&b)).as_deref(), Some("a1"));
    assert_eq!(pick(u64::MAX, Some(&b)).as_deref(), Some("a2"));
    // With `a1` excluded revision 1 keeps its weight but only `a2` serves it.
    assert_eq!(pick(0, Some(&a1)).as_deref(), Some("a2"));
    assert_eq!(pick(0, Some(&a1)).as_deref(), Some("a2"));
    // Weight-0 and empty revisions still get counters.
    assert_eq!(lock(&metrics.revisions).len(), 4);

    let lonely = Routes::compile(
        table(vec![RoutedRevision {
            revision: 1,
            weight: 1,
            backends: vec![b.clone()],
        }]),
        &metrics,
    );
    assert!(lonely.select(0, Some(&b)).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_in_proportion() {
    let (a1, a2, b) = (App::start("a1").await, App::start("a2").await, App::start("b").await);
    let router = router().await;
    router.update(table(vec![revision(1, 192, &[&a1, &a2]), revision(2, 64, &[&b])]));

    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let mut client = Client::connect(&router).await;
        clients.spawn(async move {
            let mut seen: HashMap<String, u32> = HashMap::new();
            for _ in 0..1000 {
                let reply = client.get("/").await;
                assert_eq!(reply.status, StatusCode::OK);
                let expected_revision = if reply.text() == "b" { 2 } else { 1 };
                assert_eq!(reply.revision(), expected_revision);
                *seen.entry(reply.text().to_owned()).or_default() += 1;
            }
            seen
        });
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    while let Some(counts) = clients.join_next().await {
        for (instance, n) in counts.unwrap() {
            *seen.entry(instance).or_default() += n;
        }
    }
    let (a1_n, a2_n, b_n) = (seen["a1"], seen["a2"], seen["b"]);
    assert_eq!(a1_n + a2_n + b_n, 4000);
    let share = f64::from(a1_n + a2_n) / 4000.0;
    assert!(
        (0.70..=0.80).contains(&share),
        "revision 1 got {share:.3} of the traffic, expected 0.75 ± 0.05"
    );
    assert!(a1_n.abs_diff(a2_n) <= 1, "round-robin uneven: a1 {a1_n}, a2 {a2_n}");
    let metrics = router.metrics();
    assert_eq!(metrics.requests(1), u64::from(a1_n + a2_n));
    assert_eq!(metrics.requests(2), u64::from(b_n));
    assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
    for app in [&a1, &a2, &b] {
        wait_for_in_flight(&app.backend, 0).await;
    }
}

#[tokio::test]
async fn no_weight_or_no_ready_instance_is_503() {
    let a = App::start("a").await;
    let router = router().await;
    let mut client = Client::connect(&router).await;
    let empty = client.get("/").await;
    router.update(table(vec![revision(1, 0, &[&a]), revision(2, 0, &[&a])]));
    let all_zero = client.get("/").await;
    router.update(table(vec![revision(1, 256, &[])]));
    let no_backends = client.get("/").await;
    for reply in [empty, all_zero, no_backends] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.text(), "no ready instances of this app\n");
        assert!(
            reply.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
    }
    let metrics = router.metrics();
    assert_eq!(metrics.unavailable(), 3);
    let mut text = String::new();
    metrics.render("shop", &mut text);
    assert!(
        text.contains("slipway_router_unavailable_total{app=\"shop\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("slipway_router_requests_total{app=\"shop\",revision=\"2\"} 0\n"),
        "{text}"
    );
    assert_eq!(text.matches("# TYPE").count(), 3, "{text}");
}

#[tokio::test]
async fn maintenance_is_a_503_page() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(RouteTable {
        maintenance: true,
        revisions: vec![revision(1, 256, &[&a])],
    });
    let reply = Client::connect(&router).await.get("/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[header::RETRY_AFTER], "5");
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/html");
    assert!(reply.text().contains("<h1>Down for maintenance</h1>"));
    assert_eq!(a.backend.in_flight(), 0);
    assert_eq!(router.metrics().unavailable(), 1);
    assert!(router.table().maintenance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_atomic_under_load() {
    let (a, b) = (App::start("a").await, App::start("b").await);
    let router = router().await;
    let only_a = table(vec![revision(1, 256, &[&a]), revision(2, 0, &[&b])]);
    let split = table(vec![revision(1, 128, &[&a]), revision(2, 128, &[&b])]);
    let only_b = table(vec![revision(1, 0, &[&a]), revision(2, 256, &[&b])]);
    router.update(only_a.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let mut client = Client::connect(&router).await;
        let stop = stop.clone();
        clients.spawn(async move {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get("/").await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                answered += 1;
            }
            answered
        });
    }
    for swap in 0..200 {
        router.update([&only_a, &split, &only_b][swap % 3].clone());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    while let Some(result) = clients.join_next().await {
        answered += result.unwrap();
    }
    assert!(answered >= 100, "only {answered} requests ran during the swaps");
    let metrics = router.metrics();
    assert_eq!(metrics.requests(1) + metrics.requests(2), answered);
    assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_slow_request() {
    let (a, b) = (App::start("a").await, App::start("b").await);
    let router = Arc::new(router().await);
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    let slow = tokio::spawn(async move { client.get("/slow").await });
    wait_for_in_flight(&a.backend, 1).await;

    router.update(table(vec![revision(2, 256, &[&b])]));
    let started = Instant::now();
    assert!(router.drain(&a.backend, Duration::from_secs(2)).await);
    assert!(
        started.elapsed() >= SLOW / 2,
        "drain returned after {:?}",
        started.elapsed()
    );
    assert_eq!(a.backend.in_flight(), 0);
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "a"));

    // A drain that runs out of time says so.
    let mut client = Client::connect(&router).await;
    let slow = tokio::spawn(async move { client.get("/slow").await });
    wait_for_in_flight(&b.backend, 1).await;
    assert!(!router.drain(&b.backend, Duration::from_millis(100)).await);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(b.backend.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_no_request() {
    let (a, b) = (App::start("a").await, App::start("b").await);
    let router = router().await;
    router.update(table(vec![revision(1, 256, &[&a, &b])]));
    let mut client = Client::connect(&router).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
    // Both backends now have a pooled keep-alive connection; `a` dies with it.
    let a_backend = a.backend.clone();
    a.kill().await;
    for _ in 0..20 {
        let reply = client.get("/").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "b"));
    }
    // A request with a body is retried too when it never reached the dead instance.
    for _ in 0..2 {
        let post = Request::post("/")
            .header("host", "app.test")
            .body(Chunks::full("order"))
            .unwrap();
        let reply = client.send(post).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "order"));
    }
    assert_eq!(router.metrics().errors(1), 0);
    assert_eq!(a_backend.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_only_instance_is_a_502() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    let backend = a.backend.clone();
    a.kill().await;
    let reply = client.get("/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "an instance of this app failed to answer this request\n");
    let metrics = router.metrics();
    assert_eq!((metrics.requests(1), metrics.errors(1)), (2, 1));
    assert_eq!(backend.in_flight(), 0);
}

#[tokio::test]
async fn a_slow_instance_is_a_504() {
    let a = App::start("a").await;
    let options = RouterOptions {
        backend_timeout: Duration::from_millis(100),
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    let reply = client.get("/slow").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(router.metrics().errors(1), 1);
    assert_eq!(a.backend.in_flight(), 0);
    // The client connection is still good.
    assert_eq!(client.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwards_headers_and_bodies() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(table(vec![revision(7, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let request = Request::post("/echo?q=1")
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "42")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .body(Chunks::full(big.clone()))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, big);
    assert_eq!(reply.revision(), 7);
    assert_eq!(reply.headers["x-seen-host"], "shop.example");
    assert_eq!(reply.headers["x-seen-forwarded-for"], "203.0.113.9, 127.0.0.1");
    // The router is the edge: the client's own claim to have come over HTTPS is not passed on.
    assert_eq!(reply.headers["x-seen-forwarded-proto"], "http");
    assert_eq!(reply.headers["x-seen-forwarded-host"], "shop.example");
    assert_eq!(
        reply.headers["x-seen-forwarded"],
        "for=203.0.113.9;proto=https, for=127.0.0.1;host=shop.example;proto=http"
    );
    for dropped in ["x-seen-secret", "x-seen-proxy-authorization", "x-seen-connection"] {
        assert!(!reply.headers.contains_key(dropped), "{dropped} reached the app");
    }
    let reply = client.get("/").await;
    assert_eq!(reply.headers["x-seen-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let a = App::start("a").await;
    let router = router().await;
    let addr = router.local_addr();
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut idle = Client::connect(&router).await;
    assert_eq!(idle.get("/").await.status, StatusCode::OK);
    let mut client = Client::connect(&router).await;
    let slow = tokio::spawn(async move { client.get("/slow").await });
    wait_for_in_flight(&a.backend, 1).await;

    let started = Instant::now();
    router.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "router still accepts after shutdown"
    );
    assert!(
        idle.0.is_closed() || idle.0.ready().await.is_err(),
        "idle connection left open"
    );
}

#[tokio::test]
async fn shutdown_cuts_off_after_the_grace_period() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    let slow = tokio::spawn(async move {
        client.0.ready().await.unwrap();
        let request = Request::get("/slow")
            .header("host", "app.test")
            .body(Chunks::full(""))
            .unwrap();
        client.0.send_request(request).await
    });
    wait_for_in_flight(&a.backend, 1).await;
    let started = Instant::now();
    router.shutdown(Duration::from_millis(50)).await;
    assert!(started.elapsed() < SLOW, "shutdown waited {:?}", started.elapsed());
    assert!(slow.await.unwrap().is_err(), "the cut-off request should fail");
    wait_for_in_flight(&a.backend, 0).await;
}

#[test]
fn metrics_escape_app_names_and_group_families() {
    let (one, two) = (RouterMetrics::default(), RouterMetrics::default());
    Routes::compile(
        table(vec![RoutedRevision {
            revision: 3,
            weight: 1,
            backends: vec![],
        }]),
        &one,
    );
    one.unavailable.fetch_add(2, Ordering::Relaxed);
    let mut text = String::new();
    RouterMetrics::render_all(&[("we\"ird\\", &one), ("two", &two)], &mut text);
    let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(families.len(), 3);
    assert!(
        text.contains("slipway_router_requests_total{app=\"we\\\"ird\\\\\",revision=\"3\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("slipway_router_unavailable_total{app=\"we\\\"ird\\\\\"} 2\nslipway_router_unavailable_total{app=\"two\"} 0\n"), "{text}");
}

fn route_to(backends: &[&Arc<Backend>]) -> RouteTable {
    table(vec![RoutedRevision {
        revision: 1,
        weight: 256,
        backends: backends.iter().map(|b| Arc::clone(b)).collect(),
    }])
}

#[tokio::test]
async fn chunked_close_delimited_and_interim_responses_pass_through() {
    let a = App::start("a").await;
    let router = router().await;
    let mut client = Client::connect(&router).await;
    router.update(route_to(&[&a.backend]));
    let reply = client.get("/chunks").await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "one two three"));

    let (until_close, _) = raw_app(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close", true).await;
    router.update(route_to(&[&until_close]));
    assert_eq!(client.get("/").await.text(), "until close");

    let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                    HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (interim, _) = raw_app(interim, false).await;
    router.update(route_to(&[&interim]));
    for _ in 0..2 {
        let reply = client.get("/").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok"));
        assert!(!reply.headers.contains_key("link"));
    }

    // Both framings at once: the chunked one wins and the connection is not reused.
    let chunky = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 999\r\n\r\n\
                   5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (chunky, accepted) = raw_app(chunky, false).await;
    router.update(route_to(&[&chunky]));
    for _ in 0..2 {
        assert_eq!(client.get("/").await.text(), "hello world");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(router.metrics().errors(1), 0);
}

#[tokio::test]
async fn head_requests_and_bodyless_statuses_keep_connections_in_step() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(route_to(&[&a.backend]));
    let mut client = Client::connect(&router).await;
    let head = client
        .send(
            Request::head("/")
                .header("host", "app.test")
                .body(Chunks::full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[header::CONTENT_LENGTH], "1");
    assert!(head.body.is_empty());
    let nothing = client.get("/nothing").await;
    assert_eq!(nothing.status, StatusCode::NO_CONTENT);
    assert!(nothing.body.is_empty());
    // Had either left bytes behind, this would read them as its answer.
    assert_eq!(client.get("/").await.text(), "a");
}

#[tokio::test]
async fn chunked_uploads_are_reframed() {
    let a = App::start("a").await;
    let router = router().await;
    router.update(route_to(&[&a.backend]));
    let mut client = Client::connect(&router).await;
    let upload = Request::post("/")
        .header("host", "app.test")
        .body(Chunks::chunked(&["ab", "cd", "ef"]))
        .unwrap();
    let reply = client.send(upload).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "abcdef"));
    assert_eq!(client.get("/").await.text(), "a");
}

#[tokio::test]
async fn invalid_answers_are_502s_and_not_retried() {
    let a = App::start("a").await;
    let (garbage, accepted) = raw_app(b"SPDY/3 200 OK\r\n\r\n", false).await;
    let router = router().await;
    router.update(route_to(&[&garbage, &a.backend]));
    let mut client = Client::connect(&router).await;
    let mut statuses = vec![client.get("/").await.status, client.get("/").await.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(router.metrics().errors(1), 1);
}

#[test]
fn chunked_bodies_decode_however_they_are_split() {
    let wire: &[u8] = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n";
    let bare_lf: &[u8] = b"5\nhello\n6\n world\n0\n\n";
    for encoded in [wire, bare_lf] {
        for piece in 1..=encoded.len() {
            let mut framing = Framing::Chunked(ChunkState::Size);
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            for bytes in encoded.chunks(piece) {
                buf.extend_from_slice(bytes);
                while let Decoded::Data(data) = framing.decode(&mut buf).unwrap() {
                    body.extend_from_slice(&data);
                }
            }
            assert_eq!(body, b"hello world", "split every {piece} bytes");
            assert!(framing.is_done() && buf.is_empty(), "split every {piece} bytes");
        }
    }
    for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffff\r\n"] {
        let mut framing = Framing::Chunked(ChunkState::Size);
        let mut buf = BytesMut::from(bad);
        let outcome = (0..4).try_for_each(|_| framing.decode(&mut buf).map(drop));
        assert!(outcome.is_err(), "{:?} was accepted", String::from_utf8_lossy(bad));
    }
    let mut length = Framing::Length(3);
    let mut buf = BytesMut::from(&b"abcdef"[..]);
    assert_eq!(length.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"abc"))));
    assert_eq!(length.decode(&mut buf), Ok(Decoded::End));
    assert_eq!(&buf[..], b"def", "bytes past the body are left for the caller to judge");
}

#[test]
fn response_heads_parse_into_framing() {
    let parse = |raw: &'static str, is_head: bool| {
        let mut headers = HeaderMap::new();
        parse_response_head(Bytes::from_static(raw.as_bytes()), is_head, &mut headers)
            .map(|head| (head.status.as_u16(), head.framing, head.keep_alive, headers))
    };
    let framing = |raw, is_head| parse(raw, is_head).map(|(_, framing, keep_alive, _)| (framing, keep_alive));
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\nContent-Length:5\n\n", false),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(framing("HTTP/1.1 200\r\n\r\n", false), Ok((Framing::UntilClose, false)));
    assert_eq!(
        framing("HTTP/1.0 200 OK\r\n\r\n", false),
        Ok((Framing::UntilClose, false))
    );
    assert_eq!(
        framing(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            false
        ),
        Ok((Framing::Done, true))
    );
    assert_eq!(
        framing(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            false
        ),
        Ok((Framing::Length(1), false))
    );
    assert_eq!(
        framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", false),
        Ok((Framing::Done, true))
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true),
        Ok((Framing::Done, true))
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
        Ok((Framing::UntilClose, false))
    );
    let (_, chunked, keep_alive, headers) = parse(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 3\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((chunked, keep_alive), (Framing::Chunked(ChunkState::Size), false));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    let (status, _, _, headers) = parse(
        "HTTP/1.1 418 I'm a teapot\r\nX-Tea:  earl grey \r\nx-tea: green\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(status, 418);
    assert_eq!(
        headers.get_all("x-tea").iter().collect::<Vec<_>>(),
        ["earl grey", "green"]
    );

    for (bad, why) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "conflicting content-length headers",
        ),
        ("HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n", "folded header line"),
        ("HTTP/2 200\r\n\r\n", "not an HTTP/1 status line"),
        ("HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        ("HTTP/1.1 2000\r\n\r\n", "bad status line"),
        (
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "header line without a colon",
        ),
        ("HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "bad header name"),
        ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad content-length"),
        ("HTTP/1.1 200 OK\r\nx-a: b\x01c\r\n\r\n", "bad header value"),
    ] {
        assert_eq!(framing(bad, false).err(), Some(why), "{bad:?}");
    }
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nx: y\r\n"), None);
}

#[test]
fn request_heads_are_encoded_for_the_backend() {
    let mut head = Request::post("http://shop.example/cart?x=1")
        .header("connection", "x-private")
        .header("x-private", "1")
        .header("transfer-encoding", "chunked")
        .header("content-length", "10")
        .header("expect", "100-continue")
        .header("x-forwarded-for", "203.0.113.9")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    prepare_request(&mut head, &HeaderValue::from_static("192.0.2.1"), false);
    let mut out = Vec::new();
    encode_request_head(&head, true, "127.0.0.1:9".parse().unwrap(), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /cart?x=1 HTTP/1.1\r\nx-forwarded-for: 203.0.113.9, 192.0.2.1\r\nhost: shop.example\r\n\
         forwarded: for=192.0.2.1;host=shop.example;proto=http\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: shop.example\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[tokio::test]
async fn idle_and_slow_clients_are_disconnected() {
    let options = RouterOptions {
        client_header_timeout: Duration::from_millis(200),
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let closed_within = |mut stream: TcpStream| async move {
        let started = Instant::now();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "connection still open after 2 s");
        started.elapsed()
    };
    let mut slow = TcpStream::connect(router.local_addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n").await.unwrap();
    assert!(closed_within(slow).await >= Duration::from_millis(150));

    // Idle after an answered request: the same limit applies to waiting for the next.
    let mut idle = TcpStream::connect(router.local_addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 503");
    assert!(closed_within(idle).await >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_fails_no_request() {
    let (old, new) = (App::start("old").await, App::start("new").await);
    let old_backend = old.backend.clone();
    let router = router().await;
    router.update(table(vec![revision(1, 256, &[&old])]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let mut client = Client::connect(&router).await;
        let stop = stop.clone();
        clients.spawn(async move {
            let mut answered = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get("/").await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                answered += 1;
            }
            answered
        });
    }
    let pause = || tokio::time::sleep(Duration::from_millis(50));
    pause().await;
    router.update(table(vec![revision(1, 128, &[&old]), revision(2, 128, &[&new])]));
    pause().await;
    router.update(table(vec![revision(1, 0, &[&old]), revision(2, 256, &[&new])]));
    assert!(router.drain(&old_backend, Duration::from_secs(2)).await);
    old.kill().await;
    pause().await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    while let Some(result) = clients.join_next().await {
        answered += result.unwrap();
    }
    assert!(answered > 0);
    let metrics = router.metrics();
    assert_eq!(metrics.errors(1) + metrics.errors(2) + metrics.unavailable(), 0);
    assert_eq!(metrics.requests(1) + metrics.requests(2), u64::from(answered));
}

#[tokio::test]
async fn old_or_closed_pooled_connections_are_not_reused() {
    let a = App::start("a").await;
    let now = TokioInstant::now();
    let deadline = Deadline {
        start: now,
        at: now + DEFAULT_BACKEND_TIMEOUT,
        timeout: DEFAULT_BACKEND_TIMEOUT,
        max_body: None,
    };
    let connect = || async {
        match BackendConnection::connect(a.backend.addr, &deadline).await {
            Ok(connection) => connection,
            Err(_) => panic!("cannot connect to the test app"),
        }
    };
    let too_old = now - POOL_IDLE_TIMEOUT - Duration::from_millis(1);
    a.backend.checkin(connect().await, too_old);
    assert!(
        a.backend.checkout(now).is_none(),
        "reused a connection idle for too long"
    );

    // Checking in a fresh connection also closes the oldest one if it is stale.
    a.backend.checkin(connect().await, too_old);
    a.backend.checkin(connect().await, now);
    assert_eq!(a.backend.idle_connections(), 1);
    assert!(a.backend.checkout(now).is_some());

    a.backend.checkin(connect().await, now);
    let backend = a.backend.clone();
    a.kill().await;
    // The event loop needs a moment to see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        backend.checkout(now).is_none(),
        "reused a connection the app had closed"
    );
}

// ---- Listeners shared by host name, path prefixes, redirects and HTTPS -------------------

impl Client {
    /// A client over any connection (a TLS stream, say) to the router.
    async fn over<I>(io: I) -> Client
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = client_http1::handshake(TokioIo::new(io)).await.unwrap();
        tokio::spawn(connection);
        Client(sender)
    }

    async fn get_host(&mut self, host: &str, path: &str) -> Reply {
        self.send(Request::get(path).header("host", host).body(Chunks::full("")).unwrap())
            .await
    }
}

fn on(hosts: &[&str]) -> Routing {
    Routing {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..Routing::default()
    }
}

async fn routed(app: &str, listen: SocketAddr, routing: Routing) -> std::io::Result<BuiltinRouter> {
    BuiltinRouter::bind_routed(app, &[(listen, routing)], RouterOptions::default()).await
}

#[tokio::test]
async fn apps_share_a_listener_by_host_name_and_path_prefix() {
    let (a, b, api) = (App::start("a").await, App::start("b").await, App::start("api").await);
    let shop = routed("shop", "127.0.0.1:0".parse().unwrap(), on(&["shop.test"]))
        .await
        .unwrap();
    let addr = shop.local_addr();
    let blog = routed("blog", addr, on(&["blog.test", "*.blog.test"])).await.unwrap();
    let shop_api = routed(
        "shop-api",
        addr,
        Routing {
            path_prefix: Some("/api".into()),
            ..on(&["shop.test"])
        },
    )
    .await
    .unwrap();
    assert_eq!(blog.local_addr(), addr, "the address is shared, not bound twice");
    shop.update(table(vec![revision(1, 256, &[&a])]));
    blog.update(table(vec![revision(7, 256, &[&b])]));
    shop_api.update(table(vec![revision(3, 256, &[&api])]));

    let mut client = Client::connect(&shop).await;
    assert_eq!(client.get_host("shop.test", "/").await.text(), "a");
    assert_eq!(client.get_host("SHOP.test:8080", "/cart").await.text(), "a");
    assert_eq!(client.get_host("shop.test", "/api/cart").await.text(), "api");
    assert_eq!(client.get_host("shop.test", "/api").await.text(), "api");
    assert_eq!(client.get_host("shop.test", "/apix").await.text(), "a");
    assert_eq!(client.get_host("blog.test", "/").await.text(), "b");
    assert_eq!(client.get_host("www.blog.test", "/").await.text(), "b");
    assert_eq!(
        client.get_host("a.b.blog.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    let nobody = client.get_host("other.test", "/").await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    assert_eq!(nobody.text(), "no app is routed here for this host\n");

    // A second app claiming a host already routed is refused, naming both.
    let refused = routed("thief", addr, on(&["blog.test"])).await.err().unwrap();
    assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(
        refused.to_string().contains("blog.test on 127.0.0.1:")
            && refused
                .to_string()
                .contains("routed to app blog already, and app thief claims it too"),
        "{refused}"
    );
    // An app for every other host takes what nobody claims.
    let fallback = routed("fallback", addr, Routing::default()).await.unwrap();
    fallback.update(table(vec![revision(9, 256, &[&a])]));
    assert_eq!(client.get_host("other.test", "/").await.revision(), 9);
    assert_eq!(client.get_host("blog.test", "/").await.revision(), 7);

    // One app leaving leaves the others serving on the same connection.
    blog.stop(Duration::from_secs(1)).await;
    drop(blog);
    assert_eq!(client.get_host("blog.test", "/").await.revision(), 9);
    assert_eq!(client.get_host("shop.test", "/").await.revision(), 1);
}

#[tokio::test]
async fn a_plain_listener_can_redirect_to_https() {
    let router = routed(
        "shop",
        "127.0.0.1:0".parse().unwrap(),
        Routing {
            redirect_https: Some(8443),
            ..on(&["shop.test"])
        },
    )
    .await
    .unwrap();
    let mut client = Client::connect(&router).await;
    let reply = client.get_host("shop.test", "/cart?x=1").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(reply.headers[header::LOCATION], "https://shop.test:8443/cart?x=1");
}

/// A throwaway CA and certificates it signs, made by `tests/tls/issue.sh` with openssl.
struct TestCa {
    dir: std::path::PathBuf,
}

impl TestCa {
    fn new() -> TestCa {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "slipway-router-ca-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TestCa { dir }
    }

    /// A certificate for `host`: `DIR/HOST.pem` and `DIR/HOST.key`.
    fn issue(&self, host: &str) -> TlsFiles {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tls/issue.sh");
        let out = std::process::Command::new("sh")
            .arg(script)
            .arg(&self.dir)
            .arg(host)
            .output()
            .expect("run tests/tls/issue.sh");
        assert!(
            out.status.success(),
            "issue.sh {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsFiles {
            cert: self.dir.join(format!("{host}.pem")),
            key: self.dir.join(format!("{host}.key")),
            later: false,
        }
    }

    /// A TLS client that trusts this CA only.
    fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.connector_config())
    }

    /// The settings of [`TestCa::connector`].
    fn connector_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.dir.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Connects to `addr` over TLS asking for `host`; fails unless the router presents a
    /// certificate for `host` signed by this CA.
    async fn connect(&self, addr: SocketAddr, host: &str) -> std::io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let tls = self.connector().connect(name, tcp).await?;
        Ok(Client::over(tls).await)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn https_picks_each_apps_certificate_by_sni_and_reads_it_again_when_it_changes() {
    let ca = TestCa::new();
    let (a, b) = (App::start("a").await, App::start("b").await);
    let shop_files = ca.issue("shop.test");
    let shop = routed(
        "shop",
        "127.0.0.1:0".parse().unwrap(),
        Routing {
            tls: Some(shop_files.clone()),
            ..on(&["shop.test"])
        },
    )
    .await
    .unwrap();
    let addr = shop.local_addr();
    let blog = routed(
        "blog",
        addr,
        Routing {
            tls: Some(ca.issue("blog.test")),
            ..on(&["blog.test"])
        },
    )
    .await
    .unwrap();
    shop.update(table(vec![revision(1, 256, &[&a])]));
    blog.update(table(vec![revision(2, 256, &[&b])]));

    let mut client = ca.connect(addr, "shop.test").await.unwrap();
    let reply = client.get_host("shop.test", "/").await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "a"));
    assert_eq!(reply.headers["x-seen-forwarded-proto"], "https");
    let mut client = ca.connect(addr, "blog.test").await.unwrap();
    assert_eq!(client.get_host("blog.test", "/").await.text(), "b");

    // A plain-HTTP app cannot join an HTTPS listener.
    let refused = routed("plain", addr, on(&["plain.test"])).await.err().unwrap();
    assert!(
        refused
            .to_string()
            .contains("serves HTTPS, and app plain wants plain HTTP"),
        "{refused}"
    );
    // A certificate that cannot be read is refused with its path.
    let missing = routed(
        "broken",
        "127.0.0.1:0".parse().unwrap(),
        Routing {
            tls: Some(TlsFiles {
                cert: ca.dir.join("nothing.pem"),
                key: ca.dir.join("nothing.key"),
                later: false,
            }),
            ..Routing::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(missing.to_string().contains("nothing.pem"), "{missing}");

    // Renewed: shop's files now hold a certificate for another name. The open connection
    // goes on; new ones get the new certificate (shop.test no longer verifies).
    let renewed = ca.issue("www.shop.test");
    std::fs::copy(&renewed.cert, &shop_files.cert).unwrap();
    std::fs::copy(&renewed.key, &shop_files.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ca.connect(addr, "shop.test").await.is_ok() {
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.get_host("blog.test", "/").await.text(), "b");
}

// ---- Limits: head and body sizes, connections per listener --------------------------------

#[tokio::test]
async fn oversized_heads_get_431_and_oversized_bodies_413_before_the_app_sees_them() {
    let a = App::start("a").await;
    let options = RouterOptions {
        max_header_bytes: 8 << 10,
        max_body_bytes: Some(1024),
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    router.update(table(vec![revision(1, 256, &[&a])]));

    // A head over 8 KiB: hyper answers 431 itself.
    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\nx-big: {}\r\n\r\n",
        "x".repeat(10 << 10)
    );
    stream.write_all(big.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A declared body over 1 KiB: 413 at once, and the app is not asked.
    let post = |body: Chunks| {
        let router = &router;
        async move {
            let request = Request::post("/echo").header("host", "a.test").body(body).unwrap();
            Client::connect(router).await.send(request).await
        }
    };
    assert_eq!(
        post(Chunks::full(vec![b'x'; 2048])).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(a.backend.in_flight(), 0);
    // Chunked bodies are counted as they arrive: under the limit they pass, past it 413.
    let few: Vec<&'static str> = std::iter::repeat_n("0123456789abcdef", 10).collect();
    assert_eq!(post(Chunks::chunked(&few)).await.status, StatusCode::OK);
    let many: Vec<&'static str> = std::iter::repeat_n("0123456789abcdef0123456789abcdef", 64).collect();
    assert_eq!(post(Chunks::chunked(&many)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = post(Chunks::full(vec![b'y'; 1000])).await;
    assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, 1000));
}

#[tokio::test]
async fn a_listener_holds_at_most_its_connection_limit() {
    let a = App::start("a").await;
    let options = RouterOptions {
        max_connections: 2,
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    router.update(table(vec![revision(1, 256, &[&a])]));
    let mut first = Client::connect(&router).await;
    let mut second = Client::connect(&router).await;
    assert_eq!(first.get("/").await.status, StatusCode::OK);
    assert_eq!(second.get("/").await.status, StatusCode::OK);
    // The third waits in the backlog: connected by the kernel, not served.
    let mut third = Client::connect(&router).await;
    let pending = tokio::spawn(async move { third.get("/").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "a third connection was served over the limit of 2"
    );
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), pending).await;
    assert_eq!(served.expect("served once a slot was free").unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request() {
    let a = App::start("a").await;
    let path = std::env::temp_dir().join(format!("slipway-access-{}/access.log", std::process::id()));
    let options = RouterOptions {
        access_log: Some(path.clone()),
        max_body_bytes: Some(10),
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    router.update(table(vec![revision(4, 256, &[&a])]));
    let mut client = Client::connect(&router).await;
    assert_eq!(client.get_host("shop.test", "/cart?x=1").await.status, StatusCode::OK);
    let big = Request::post("/upload")
        .header("host", "shop.test")
        .body(Chunks::full(vec![b'x'; 100]))
        .unwrap();
    assert_eq!(
        Client::connect(&router).await.send(big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = &lines[0];
    assert_eq!(
        (
            &ok["app"],
            &ok["revision"],
            &ok["method"],
            &ok["host"],
            &ok["target"],
            &ok["status"],
            &ok["client"]
        ),
        (
            &serde_json::json!("shop"),
            &serde_json::json!(4),
            &serde_json::json!("GET"),
            &serde_json::json!("shop.test"),
            &serde_json::json!("/cart?x=1"),
            &serde_json::json!(200),
            &serde_json::json!("127.0.0.1")
        )
    );
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0 && ok["time_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        (&lines[1]["status"], &lines[1]["revision"]),
        (&serde_json::json!(413), &serde_json::Value::Null)
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// An HTTP/2 client connection over `io`: one request, its status, body and version.
async fn h2_get<I>(io: I, host: &str, path: &str) -> (StatusCode, hyper::Version, Bytes)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("https://{host}{path}"))
        .body(Chunks::full(""))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (head, body) = response.into_parts();
    (head.status, head.version, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn http2_over_tls_by_alpn_and_h2c_where_asked() {
    let ca = TestCa::new();
    let a = App::start("a").await;
    let tls = routed(
        "shop",
        "127.0.0.1:0".parse().unwrap(),
        Routing {
            tls: Some(ca.issue("shop.test")),
            ..on(&["shop.test"])
        },
    )
    .await
    .unwrap();
    tls.update(table(vec![revision(1, 256, &[&a])]));

    // A client offering h2 gets it, and many requests share the connection.
    let mut config = (*ca.connector_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls.local_addr()).await.unwrap();
    let stream = connector
        .connect(rustls::pki_types::ServerName::try_from("shop.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = h2_get(stream, "shop.test", "/").await;
    assert_eq!(
        (status, version, &body[..]),
        (StatusCode::OK, hyper::Version::HTTP_2, &b"a"[..])
    );
    // One that does not still speaks HTTP/1.1.
    let mut old = ca.connect(tls.local_addr(), "shop.test").await.unwrap();
    assert_eq!(old.get_host("shop.test", "/").await.text(), "a");

    // h2c on a plain listener that asks for it; HTTP/1.1 clients are still served there.
    let plain = routed(
        "blog",
        "127.0.0.1:0".parse().unwrap(),
        Routing {
            h2c: true,
            ..Routing::default()
        },
    )
    .await
    .unwrap();
    plain.update(table(vec![revision(2, 256, &[&a])]));
    let tcp = TcpStream::connect(plain.local_addr()).await.unwrap();
    let (status, version, _) = h2_get(tcp, "blog.test", "/").await;
    assert_eq!((status, version), (StatusCode::OK, hyper::Version::HTTP_2));
    assert_eq!(Client::connect(&plain).await.get("/").await.revision(), 2);
    // Without h2c, the preface is not HTTP/1.1: the connection is refused an answer.
    let refused = router().await;
    let mut tcp = TcpStream::connect(refused.local_addr()).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/2"), "{}", String::from_utf8_lossy(&answer));
}

/// A test app that speaks only HTTP/2 (h2c, prior knowledge), as gRPC servers do; it says
/// which protocol and authority it saw, and counts the connections it accepts.
async fn h2_app(name: &'static str) -> (Arc<Backend>, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Backend::new(name, listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            connections.spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    let authority = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
                    let mut response = answer(name, request).await?;
                    let headers = response.headers_mut();
                    headers.insert("x-seen-version", HeaderValue::from_str(&version).unwrap());
                    headers.insert("x-seen-authority", HeaderValue::from_str(&authority).unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (backend, accepted, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_can_be_spoken_to_in_http2_over_one_connection_each() {
    let (a, accepted, a_server) = h2_app("a").await;
    let (b, _, _b_server) = h2_app("b").await;
    let options = RouterOptions {
        instance_http2: true,
        ..RouterOptions::default()
    };
    let router = BuiltinRouter::bind_with("shop", "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    router.update(route_to(&[&a]));
    // HTTP/1.1 clients, HTTP/2 to the instance, the Host as its authority.
    let mut client = Client::connect(&router).await;
    let reply = client.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-seen-version"], "HTTP/2.0");
    assert_eq!(reply.headers["x-seen-authority"], "app.test");
    assert_eq!(reply.headers["x-seen-forwarded-for"], "127.0.0.1");
    assert_eq!(reply.revision(), 1);
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let request = Request::post("/echo")
        .header("host", "shop.example")
        .body(Chunks::full(big.clone()))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.body, big);
    // Many clients at once share the instance's one connection.
    let mut clients = JoinSet::new();
    for _ in 0..20 {
        let addr = router.local_addr();
        clients.spawn(async move {
            let mut client = Client::connect_to(addr).await;
            client.get("/slow").await.status
        });
    }
    while let Some(status) = clients.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // A slow request is in flight until its body is done, so draining waits for it.
    let slow = tokio::spawn(async move { client.get("/slow").await });
    wait_for_in_flight(&a, 1).await;
    assert!(router.drain(&a, Duration::from_secs(2)).await);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    // The instance dies: a body-less request goes to the other one.
    router.update(route_to(&[&a, &b]));
    a_server.abort();
    let _ = a_server.await;
    for _ in 0..4 {
        let mut client = Client::connect(&router).await;
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
}
