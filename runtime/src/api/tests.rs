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
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("slipway-api-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let loader = ModuleLoader::new(WasmEngine::new().unwrap(), None).unwrap();
    let runner = Runner::start(
        RunnerConfig {
            data_dir: data,
            limits: Limits::default(),
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
    state
        .runner
        .store()
        .upsert_app("hello", &serde_json::json!({"name": "hello"}))
        .unwrap();
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
    state
        .runner
        .store()
        .upsert_app("hello", &serde_json::json!({"name": "hello"}))
        .unwrap();
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
