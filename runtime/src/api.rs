//! The HTTP API (axum, JSON, bearer tokens). The only module that knows HTTP.
//!
//! Errors leave as `{ "code": …, "message": … }` with a fitting status; internal details are
//! logged, never sent.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Scope, Tokens};
use crate::modules::MAX_MODULE_BYTES;
use crate::runner::{DeployError, Runner};
use crate::spec;

/// Largest spec or patch body accepted.
const MAX_SPEC_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct ApiState {
    pub runner: Arc<Runner>,
    pub tokens: Arc<Tokens>,
}

/// The API's routes.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", put(put_app).patch(patch_app).get(get_app))
        .route("/v1/apps/{app}/revisions", get(revisions))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/redeploy", post(redeploy))
        .route("/v1/apps/{app}/retry", post(retry))
        .route("/v1/apps/{app}/scale", put(scale))
        .route("/v1/apps/{app}/route", put(route))
        .route("/v1/apps/{app}/maintenance", put(maintenance))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/{action}", post(steer))
        .route("/v1/rollouts/{id}/events", get(rollout_events))
        .route("/v1/modules", post(upload_module).get(list_modules))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; see the API reference in README.md",
            )
        })
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let (status, code) = match &error {
            DeployError::InvalidSpec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec"),
            DeployError::UnknownApp(_) => (StatusCode::NOT_FOUND, "unknown-app"),
            DeployError::UnknownRevision(_) => (StatusCode::NOT_FOUND, "unknown-revision"),
            DeployError::UnknownModule(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown-module"),
            DeployError::BadModule(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-module"),
            DeployError::Conflict { .. } => (StatusCode::CONFLICT, "rollout-running"),
            DeployError::UnknownRollout(_) => (StatusCode::NOT_FOUND, "unknown-rollout"),
            DeployError::NotPossible(_) => (StatusCode::CONFLICT, "not-possible"),
            DeployError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        DeployError::from(error).into()
    }
}

/// Checks the bearer token against `needed`.
fn authorize(state: &ApiState, headers: &HeaderMap, needed: Scope) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a token as `Authorization: Bearer TOKEN`",
        ));
    };
    match state.tokens.scope_of(presented) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )),
        Some(scope) if scope < needed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs a token with the {} scope; yours has {}",
                needed.as_str(),
                scope.as_str()
            ),
        )),
        Some(_) => Ok(()),
    }
}

async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the {what} is larger than the {limit}-byte limit"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("could not read the {what}"),
        )),
    }
}

fn is_toml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("toml"))
}

async fn put_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let bytes = read_body(body, MAX_SPEC_BYTES, "spec").await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad-request", "the spec is not UTF-8"))?;
    let spec = if is_toml(&headers) {
        spec::parse_toml(text)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", e.to_string()))?
    } else {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("the body is not JSON: {e}"),
            )
        })?;
        spec::parse_json(value)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", e.to_string()))?
    };
    if spec.name != app {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-spec",
            format!("the spec is for {:?} but was sent to /v1/apps/{app}", spec.name),
        ));
    }
    deployed(state.runner.deploy(spec).await?)
}

async fn patch_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let bytes = read_body(body, MAX_SPEC_BYTES, "patch").await?;
    let patch: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("the patch is not JSON: {e}"),
        )
    })?;
    if !patch.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the patch must be a JSON object (a JSON merge patch of the spec)",
        ));
    }
    deployed(state.runner.patch(&app, &patch).await?)
}

fn deployed(result: crate::runner::DeployAccepted) -> Result<Response, ApiError> {
    let status = match result {
        crate::runner::DeployAccepted::Started { .. } => StatusCode::ACCEPTED,
        crate::runner::DeployAccepted::Unchanged { .. } => StatusCode::OK,
    };
    Ok((status, Json(result)).into_response())
}

/// Reads a small JSON body (empty means `{}`).
async fn json_body(body: Body) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(body, MAX_SPEC_BYTES, "body").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn field<T: serde::de::DeserializeOwned>(body: &serde_json::Value, name: &str, example: &str) -> Result<T, ApiError> {
    serde_json::from_value(body.get(name).cloned().unwrap_or(serde_json::Value::Null)).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("expected a body like {example}"),
        )
    })
}

async fn rollback(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let body = json_body(body).await?;
    let to: Option<u32> = field(&body, "to", r#"{"to": 3} or {}"#)?;
    deployed(state.runner.rollback(&app, to).await?)
}

async fn redeploy(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let body = json_body(body).await?;
    let revision: u32 = field(&body, "revision", r#"{"revision": 3}"#)?;
    deployed(state.runner.redeploy(&app, revision).await?)
}

async fn retry(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    deployed(state.runner.retry(&app).await?)
}

async fn scale(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let body = json_body(body).await?;
    let replicas: u32 = field(&body, "replicas", r#"{"replicas": 5}"#)?;
    Ok(Json(state.runner.scale(&app, replicas).await?).into_response())
}

async fn route(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let body = json_body(body).await?;
    let weights: std::collections::BTreeMap<u32, u32> = field(&body, "weights", r#"{"weights": {"2": 198, "3": 2}}"#)?;
    Ok(Json(state.runner.route(&app, &weights).await?).into_response())
}

async fn maintenance(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let body = json_body(body).await?;
    let on: bool = field(&body, "on", r#"{"on": true}"#)?;
    Ok(Json(state.runner.maintenance(&app, on).await?).into_response())
}

async fn steer(
    State(state): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    Ok(Json(state.runner.steer(&id, &action)?).into_response())
}

async fn list_apps(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let apps: Vec<serde_json::Value> = state
        .runner
        .store()
        .apps()?
        .into_iter()
        .map(|app| app_json(&state, app))
        .collect();
    Ok(Json(json!({ "apps": apps })).into_response())
}

fn app_json(state: &ApiState, app: crate::store::AppRow) -> serde_json::Value {
    let running = state.runner.running_rollout(&app.name);
    let live = state.runner.app_state(&app.name);
    json!({
        "name": app.name,
        "active_revision": app.active_revision,
        "maintenance": app.maintenance,
        "running_rollout": running,
        "instances": live,
        "spec": app.spec,
        "updated_at": app.updated_at,
    })
}

async fn get_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let row = state.runner.store().app(&app)?.ok_or(DeployError::UnknownApp(app))?;
    Ok(Json(app_json(&state, row)).into_response())
}

async fn revisions(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    state
        .runner
        .store()
        .app(&app)?
        .ok_or_else(|| DeployError::UnknownApp(app.clone()))?;
    let revisions = state.runner.store().revisions(&app)?;
    let rollouts = state.runner.store().rollouts(&app)?;
    Ok(Json(json!({ "app": app, "revisions": revisions, "rollouts": rollouts })).into_response())
}

async fn get_rollout(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let rollout = state
        .runner
        .store()
        .rollout(&id)?
        .ok_or(DeployError::UnknownRollout(id))?;
    Ok(Json(rollout).into_response())
}

/// Server-sent events: every event of the rollout so far, then live ones until it ends, then
/// an `end` event carrying the rollout's final record.
async fn rollout_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let (stored, receiver) = state.runner.follow(&id)?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        return Ok(Json(json!({ "rollout": id, "events": stored })).into_response());
    }
    let seen = stored.len() as u64;
    let past = stream::iter(
        stored
            .into_iter()
            .enumerate()
            .map(|(seq, event)| sse(seq as u64, &event)),
    );
    let live = match receiver {
        Some(receiver) => futures_util::stream::unfold(receiver, move |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(numbered) if numbered.seq < seen => continue,
                    Ok(numbered) => {
                        let value = serde_json::to_value(&numbered.event).unwrap_or_default();
                        return Some((sse(numbered.seq, &value), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed(),
        None => stream::empty().boxed(),
    };
    let runner = state.runner.clone();
    let end = stream::once(async move {
        let rollout = runner.store().rollout(&id).ok().flatten();
        Ok::<_, Infallible>(
            SseEvent::default()
                .event("end")
                .data(serde_json::to_string(&rollout).unwrap_or_default()),
        )
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(past.chain(live).chain(end));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn sse(seq: u64, event: &serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default()
        .id(seq.to_string())
        .event("rollout")
        .data(event.to_string()))
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

async fn upload_module(
    State(state): State<ApiState>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Deploy)?;
    let name = query.name.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "name the module: POST /v1/modules?name=NAME",
        )
    })?;
    let bytes = read_body(body, MAX_MODULE_BYTES, "module").await?;
    let module = state.runner.upload_module(&name, bytes.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(module)).into_response())
}

async fn list_modules(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let modules = state.runner.store().modules()?;
    let builtins: Vec<String> = crate::modules::builtin_names()
        .iter()
        .map(|n| format!("builtin:{n}"))
        .collect();
    Ok(Json(json!({ "modules": modules, "builtin": builtins })).into_response())
}

/// Prometheus text format.
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut out = String::new();
    out.push_str("# HELP slipway_rollouts_total Rollouts by outcome.\n# TYPE slipway_rollouts_total counter\n");
    for (outcome, count) in state.runner.store().rollout_counts()? {
        out.push_str(&format!("slipway_rollouts_total{{outcome=\"{outcome}\"}} {count}\n"));
    }
    out.push_str(
        "# HELP slipway_instances Instances per app, revision and readiness.\n# TYPE slipway_instances gauge\n",
    );
    for app in state.runner.store().apps()? {
        if let Some(live) = state.runner.app_state(&app.name)
            && let Some(revisions) = live["revisions"].as_object()
        {
            for (revision, s) in revisions {
                out.push_str(&format!(
                    "slipway_instances{{app=\"{}\",revision=\"{revision}\",state=\"current\"}} {}\n",
                    app.name, s["current"]
                ));
                out.push_str(&format!(
                    "slipway_instances{{app=\"{}\",revision=\"{revision}\",state=\"ready\"}} {}\n",
                    app.name, s["ready"]
                ));
            }
        }
    }
    let routers = state.runner.routers();
    let metrics: Vec<(&str, Arc<crate::driver::router::builtin::RouterMetrics>)> = routers
        .iter()
        .map(|(app, router)| (app.as_str(), router.metrics()))
        .collect();
    let borrowed: Vec<(&str, &crate::driver::router::builtin::RouterMetrics)> =
        metrics.iter().map(|(a, m)| (*a, m.as_ref())).collect();
    crate::driver::router::builtin::RouterMetrics::render_all(&borrowed, &mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
