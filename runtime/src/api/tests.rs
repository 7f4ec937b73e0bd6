//! The API's routes, driven in memory with `tower::ServiceExt::oneshot`: no socket, no
//! instance started. What needs real processes is in `tests/all`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{ApiState, app};
use crate::auth::{Scope, Tokens};
use crate::engine::{Limits, WasmEngine};
use crate::modules::ModuleLoader;
use crate::protocol::ErrorBody;
use crate::runner::{Runner, RunnerConfig};

const ADMIN: &str = "admin-token-for-route-tests";
const READ: &str = "read-token-for-route-tests";

async fn state() -> ApiState {
    state_with(Limits::default()).await
}

/// Records an app "hello" in the store (no revision, nothing running), for the routes that
/// need an app to exist.
fn store_hello(state: &ApiState) {
    state
        .runner
        .store()
        .upsert_app("hello", &serde_json::json!({"name": "hello"}))
        .unwrap();
}

async fn state_with(limits: Limits) -> ApiState {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("slipway-api-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let loader = ModuleLoader::new(WasmEngine::new().unwrap(), None).unwrap();
    let runner = Runner::start(
        RunnerConfig {
            data_dir: data,
            limits,
            plane: crate::dataplane::client::Start::InProcess,
            kube: None,
            acme: Default::default(),
            front: Default::default(),
        },
        loader,
    )
    .await
    .unwrap();
    let mut tokens = Tokens::default();
    tokens.add(Scope::Admin, ADMIN).unwrap();
    tokens.add(Scope::Read, READ).unwrap();
    ApiState {
        runner,
        tokens: Arc::new(tokens),
    }
}

/// Sends one request; returns the status and the body as text.
async fn send(state: &ApiState, method: &str, path: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The request must fail with `status` and `code`, as a `{code, message}` body.
#[track_caller]
fn refused(answer: (StatusCode, String), status: StatusCode, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    let error: ErrorBody = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not an error body ({e}): {body:?}"));
    assert_eq!(error.code, code, "{body}");
    assert!(!error.message.is_empty());
    error.message
}

#[tokio::test]
async fn every_handler_checks_its_scope() {
    let state = state().await;
    let message = refused(
        send(&state, "GET", "/v1/apps", None, "").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert!(message.contains("Bearer"), "{message}");
    refused(
        send(&state, "GET", "/v1/apps", Some("not-a-known-token-at-all"), "").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello/scale", Some(READ), r#"{"replicas": 2}"#).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert!(message.contains("deploy scope"), "{message}");
    for (method, path) in [("GET", "/v1/apps"), ("GET", "/v1/modules")] {
        let (status, _) = send(&state, method, path, Some(READ), "").await;
        assert_eq!(status, StatusCode::OK, "{method} {path}");
    }
}

/// The OpenAPI document names the scope of each operation, and its handler asks for exactly
/// that one: 401 without a token, 403 for a read token where more is needed.
#[tokio::test]
async fn each_operation_needs_the_scope_its_document_names() {
    let state = state().await;
    let document = super::openapi();
    assert_eq!(document["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{app}", "nothing")
            .replace("{id}", "nothing-1-1")
            .replace("{module}", "nothing");
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let what = format!("{method} {path}");
            let responses = &operation["responses"];
            let (anonymous, _) = send(&state, &method, &concrete, None, "").await;
            let Some(scope) = operation.pointer("/security/0/token/0").and_then(|s| s.as_str()) else {
                assert_ne!(
                    anonymous,
                    StatusCode::UNAUTHORIZED,
                    "{what} needs a token its document does not name"
                );
                continue;
            };
            assert_eq!(anonymous, StatusCode::UNAUTHORIZED, "{what} ran without a token");
            assert!(responses.get("401").is_some(), "{what} does not document 401");
            let (read, _) = send(&state, &method, &concrete, Some(READ), "").await;
            assert_eq!(
                read == StatusCode::FORBIDDEN,
                scope != "read",
                "{what}: the document says it needs {scope}, a read token got {read}"
            );
            assert_eq!(
                responses.get("403").is_some(),
                scope != "read",
                "{what}: 403 documented wrongly"
            );
            operations += 1;
        }
    }
    assert!(operations >= 22, "only {operations} operations need a token");
}

#[tokio::test]
async fn unknown_paths_actions_and_methods_answer_json() {
    let state = state().await;
    refused(
        send(&state, "GET", "/v2/nothing", Some(ADMIN), "").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    refused(
        send(&state, "POST", "/v1/rollouts/x-1-1/explode", Some(ADMIN), "").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    refused(
        send(&state, "POST", "/v1/rollouts/x-1-1/abort", Some(ADMIN), "").await,
        StatusCode::NOT_FOUND,
        "unknown-rollout",
    );
    refused(
        send(&state, "PATCH", "/v1/apps", Some(ADMIN), "{}").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );
    refused(
        send(&state, "DELETE", "/v1/apps/nothing", Some(ADMIN), "").await,
        StatusCode::NOT_FOUND,
        "unknown-app",
    );
}

#[tokio::test]
async fn bodies_are_read_strictly() {
    let state = state().await;
    let message = refused(
        send(
            &state,
            "PUT",
            "/v1/apps/hello/scale",
            Some(ADMIN),
            r#"{"replicas": 3, "replicas": 5}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert!(message.contains("\"replicas\" appears twice"), "{message}");
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello/scale", Some(ADMIN), r#"{"replica": 3}"#).await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert!(
        message.contains(r#"{"replicas": 5}"#),
        "the message shows a good body: {message}"
    );
    let spec = r#"{"name": "hello", "name": "other", "listen": "127.0.0.1:1", "process": {"command": "x"}}"#;
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello", Some(ADMIN), spec).await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert!(message.contains("appears twice"), "{message}");
}

#[tokio::test]
async fn a_route_that_sends_traffic_nowhere_is_refused() {
    let state = state().await;
    store_hello(&state);
    for weights in [r#"{"weights": {"4": 0}}"#, r#"{"weights": {}}"#] {
        let message = refused(
            send(&state, "PUT", "/v1/apps/hello/route", Some(ADMIN), weights).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-spec",
        );
        assert!(message.contains("slipway maintenance hello on"), "{message}");
    }
}

#[tokio::test]
async fn module_names_follow_one_rule() {
    let state = state().await;
    let message = refused(
        send(&state, "POST", "/v1/modules?name=../etc/passwd", Some(ADMIN), "\0asm").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-module-name",
    );
    assert!(message.contains("is not a module name"), "{message}");
    // A name with a dot passes the name check (and fails later, on the bytes).
    refused(
        send(&state, "POST", "/v1/modules?name=migrate-v2.1", Some(ADMIN), "not wasm").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-module",
    );
    assert!(crate::spec::module_ref("migrate-v2.1").is_ok(), "and specs may name it");
}

#[tokio::test]
async fn one_replica_limit_everywhere() {
    let state = state().await;
    let too_many = crate::spec::MAX_REPLICAS + 1;
    store_hello(&state);
    let message = refused(
        send(
            &state,
            "PUT",
            "/v1/apps/hello/scale",
            Some(ADMIN),
            &format!(r#"{{"replicas": {too_many}}}"#),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-spec",
    );
    assert!(message.contains("over the limit of 1000"), "{message}");
    let spec = format!(
        r#"{{"name": "hello", "replicas": {too_many}, "listen": "127.0.0.1:1", "process": {{"command": "x"}}}}"#
    );
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello", Some(ADMIN), &spec).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-spec",
    );
    assert!(message.contains("limit of 1000"), "{message}");
}

/// `slipway serve --max-replicas`: a lower bound for a small machine holds for specs and for
/// scaling by hand.
#[tokio::test]
async fn a_runner_may_allow_fewer_replicas() {
    let state = state_with(Limits {
        max_replicas: 4,
        ..Limits::default()
    })
    .await;
    store_hello(&state);
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello/scale", Some(ADMIN), r#"{"replicas": 5}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-spec",
    );
    assert!(message.contains("over the limit of 4"), "{message}");
    let spec = r#"{"name": "hello", "replicas": 5, "listen": "127.0.0.1:1", "process": {"command": "x"}}"#;
    let message = refused(
        send(&state, "PUT", "/v1/apps/hello", Some(ADMIN), spec).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-spec",
    );
    assert!(message.contains("this runner's limit of 4"), "{message}");
}

/// A long history comes in pages by revision number: 10,000 rollouts, 100 a page, each
/// exactly once, newest page first.
#[tokio::test]
async fn a_long_history_comes_in_pages() {
    let state = state().await;
    store_hello(&state);
    let store = state.runner.store();
    for number in 1..=10_000 {
        store
            .record_rollout(
                "hello",
                number,
                crate::store::RolloutKind::Deploy,
                &format!("hello-{number}-0"),
            )
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/v1/apps/hello/revisions?limit=100".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = send(&state, "GET", &path, Some(READ), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: crate::protocol::History = serde_json::from_str(&body).unwrap();
        assert_eq!(page.rollouts.len(), 100, "{path}");
        let newest = page.rollouts.iter().map(|r| r.target).max().unwrap();
        assert_eq!(newest, 10_000 - pages * 100, "{path}");
        seen.extend(page.rollouts.iter().map(|r| r.target));
        pages += 1;
        match page.next_before {
            Some(before) => path = format!("/v1/apps/hello/revisions?limit=100&before={before}"),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (100, 10_000));
    for bad in ["limit=0", "limit=1001", "limit=ten", "before=-1", "page=2"] {
        refused(
            send(
                &state,
                "GET",
                &format!("/v1/apps/hello/revisions?{bad}"),
                Some(READ),
                "",
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
    }
}

/// An empty PATCH is not a merge patch, and numbers in a query stay within the document's
/// int32 range.
#[tokio::test]
async fn empty_patches_and_out_of_range_numbers_are_refused() {
    let state = state().await;
    store_hello(&state);
    let message = refused(
        send(&state, "PATCH", "/v1/apps/hello", Some(ADMIN), "  ").await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert!(message.contains("the patch is empty"), "{message}");
    let message = refused(
        send(
            &state,
            "GET",
            "/v1/apps/hello/revisions?before=2147483648",
            Some(READ),
            "",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert!(message.contains("from 0 to 2147483647"), "{message}");
}

/// The dashboard's page and files need no token; a file it does not have is a JSON 404.
#[tokio::test]
async fn the_dashboard_is_served_without_a_token_and_only_its_own_files() {
    let state = state().await;
    for path in ["/", "/ui/main.js", "/ui/style.css"] {
        let (status, body) = send(&state, "GET", path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let message = refused(
        send(&state, "GET", "/ui/..%2Fapi.rs", None, "").await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert!(message.contains("the dashboard has no file"), "{message}");
}
