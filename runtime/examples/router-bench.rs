//! Processes for `bench/router.sh`, which compares the built-in router with nginx and HAProxy; run
//! that script rather than this directly.
//!
//! ```text
//! router-bench backend LISTEN           a keep-alive app answering "hello\n"
//! router-bench router LISTEN BACKEND    the built-in router in front of BACKEND
//! router-bench router LISTEN BACKEND CERT KEY
//!                                       the same over HTTPS, with that certificate
//! ```
//!
//! `BENCH_THREADS` sets the tokio worker threads (default 1), so the router gets the same
//! CPU budget as an nginx with `worker_processes 1`. `BENCH_BODY_BYTES` makes the app's
//! answer that long ("hello\n" and then padding). Both run until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway::driver::router::builtin::{
    Backend, BuiltinRouter, RouteTable, RoutedRevision, RouterOptions, Routing, TlsFiles,
};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = std::env::var("BENCH_THREADS").ok().map_or(Ok(1), |t| t.parse())?;
    // The runtime the data plane runs on, with the bench's number of workers.
    let runtime = slipway::dataplane::runtime_builder().worker_threads(threads).build()?;
    let body_bytes = std::env::var("BENCH_BODY_BYTES").ok().map_or(Ok(0), |n| n.parse())?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["backend", listen] => runtime.block_on(backend(listen.parse()?, body_bytes)),
        ["router", listen, backend] => runtime.block_on(router(listen.parse()?, backend.parse()?, None)),
        ["router", listen, backend, cert, key] => {
            let tls = TlsFiles {
                cert: cert.into(),
                key: key.into(),
                later: false,
            };
            runtime.block_on(router(listen.parse()?, backend.parse()?, Some(tls)))
        }
        _ => Err(anyhow::anyhow!(
            "usage: router-bench backend LISTEN | router-bench router LISTEN BACKEND [CERT KEY]"
        )),
    }
}

async fn backend(listen: SocketAddr, body_bytes: usize) -> anyhow::Result<()> {
    let mut body = b"hello\n".to_vec();
    body.resize(body_bytes.max(body.len()), b'.');
    let body = Bytes::from(body);
    let listener = TcpListener::bind(listen).await?;
    eprintln!("backend listening on {listen}, answering {} bytes", body.len());
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn router(listen: SocketAddr, backend: SocketAddr, tls: Option<TlsFiles>) -> anyhow::Result<()> {
    let routing = Routing {
        tls,
        ..Routing::default()
    };
    let router = BuiltinRouter::bind_routed("bench", &[(listen, routing)], RouterOptions::default()).await?;
    router.update(RouteTable {
        maintenance: false,
        revisions: vec![RoutedRevision {
            revision: 1,
            weight: 256,
            backends: vec![Backend::new("bench-1", backend)],
        }],
    });
    eprintln!("router listening on {}, proxying to {backend}", router.local_addr());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
