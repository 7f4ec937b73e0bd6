//! WebSockets through the built-in router: an upgraded connection lives through other apps'
//! rollouts, counts as in flight while its instance drains, and is closed cleanly (a Close
//! frame, 1001 "going away") once the drain's grace period is over.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::lifecycle::{listen, runtime, text};
use crate::runner::{HelloSpec, Server, write_spec};
use crate::support::exclusive;

/// The grace period the test's hello gets: how long a drained instance's WebSocket lives on.
const GRACE: Duration = Duration::from_secs(3);

fn spec(name: &str, web: std::net::SocketAddr, version: &str) -> String {
    HelloSpec {
        listen: web,
        version,
        ..HelloSpec::default()
    }
    .toml()
    .replace("name = \"hello\"", &format!("name = \"{name}\""))
    .replace(
        "grace-period = \"10s\"",
        &format!("grace-period = \"{}s\"", GRACE.as_secs()),
    )
}

#[test]
fn a_websocket_lives_through_another_apps_rollout_and_closes_cleanly_after_its_own_drain() {
    let _serial = exclusive();
    let server = Server::start();
    let (web, other_web) = (listen(), listen());
    for (name, addr) in [("hello", web), ("other", other_web)] {
        let out = server.cli(&["deploy", write_spec(&spec(name, addr, "v1")).to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }

    let runtime = runtime();
    let (mut socket, handshake) = runtime
        .block_on(tokio_tungstenite::connect_async(format!("ws://{web}/ws")))
        .expect("a WebSocket through the router");
    assert_eq!(handshake.headers()["x-slipway-revision"], "1");
    let mut echo = |said: &str| -> String {
        runtime.block_on(async {
            socket.send(Message::text(said)).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                Ok(Some(Ok(Message::Text(answer)))) => answer.to_string(),
                other => panic!("no echo of {said:?}: {other:?}"),
            }
        })
    };
    assert_eq!(echo("one"), "v1: one");

    // Another app's rollout leaves the socket alone.
    let out = server.cli(&["deploy", write_spec(&spec("other", other_web, "v2")).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(echo("two"), "v1: two");

    // Its own app's rollout drains its instance: the socket keeps working through the grace
    // period, then the router closes it with a Close frame.
    let started = Instant::now();
    let deploy = {
        let spec = write_spec(&spec("hello", web, "v2"));
        let mut command = server.cli_command(crate::runner::ADMIN, &["deploy", spec.to_str().unwrap()]);
        std::thread::spawn(move || command.output().unwrap())
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo("three"), "v1: three");
    let (close, closed_after) = runtime.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return (frame, started.elapsed()),
                Ok(Some(Ok(_))) => continue,
                other => panic!("the socket ended without a Close frame: {other:?}"),
            }
        }
    });
    let frame = close.expect("a Close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    assert!(
        closed_after >= GRACE,
        "closed after {closed_after:?}, before the {GRACE:?} grace period"
    );
    println!("the WebSocket was closed {closed_after:?} after the rollout began ({frame:?})");
    let out = deploy.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A new socket reaches the new version.
    let (mut fresh, _) = runtime
        .block_on(tokio_tungstenite::connect_async(format!("ws://{web}/ws")))
        .unwrap();
    let answer = runtime.block_on(async {
        fresh.send(Message::text("four")).await.unwrap();
        fresh.next().await
    });
    assert!(
        matches!(&answer, Some(Ok(Message::Text(t))) if t.as_str() == "v2: four"),
        "{answer:?}"
    );
}
