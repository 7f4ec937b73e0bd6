//! The HTTP API (axum, JSON, bearer tokens). The only module that knows HTTP.
//!
//! Errors leave as `{ "code": …, "message": … }` with a fitting status, whatever went wrong
//! (a bad token, an unknown path, a wrong method, a bad body); internal details are logged,
//! never sent. Every handler states the scope it needs in its signature ([`Auth`]), and
//! request and response bodies are the typed ones in [`crate::protocol`].

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::{Scope, Tokens};
use crate::driver::compute::output;
use crate::protocol::{
    AppList, DeployAccepted, ErrorBody, History, MaintenanceRequest, ModuleList, RedeployRequest, RollbackRequest,
    RolloutEvents, RouteRequest, ScaleRequest, Steer,
};
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
        .route(
            "/v1/apps/{app}",
            put(put_app).patch(patch_app).get(get_app).delete(delete_app),
        )
        .route("/v1/apps/{app}/revisions", get(history))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/redeploy", post(redeploy))
        .route("/v1/apps/{app}/retry", post(retry))
        .route("/v1/apps/{app}/scale", put(scale))
        .route("/v1/apps/{app}/route", put(route))
        .route("/v1/apps/{app}/maintenance", put(maintenance))
        .route("/v1/apps/{app}/traffic", get(traffic))
        .route("/v1/apps/{app}/logs", get(logs))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/pause", post(pause))
        .route("/v1/rollouts/{id}/resume", post(resume))
        .route("/v1/rollouts/{id}/abort", post(abort))
        .route("/v1/rollouts/{id}/events", get(rollout_events))
        .route("/v1/modules", post(upload_module).get(list_modules))
        .route("/v1/modules/{module}", delete(delete_module))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; see the API reference in README.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method; see the API reference in README.md",
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

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
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
            DeployError::BadModuleName(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-module-name"),
            DeployError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            DeployError::Conflict { .. } => (StatusCode::CONFLICT, "rollout-running"),
            DeployError::UnknownRollout(_) => (StatusCode::NOT_FOUND, "unknown-rollout"),
            DeployError::NoSuchModule(_) => (StatusCode::NOT_FOUND, "unknown-module"),
            DeployError::ModulePinned(_) => (StatusCode::CONFLICT, "module-in-use"),
            DeployError::NotPossible(_) => (StatusCode::CONFLICT, "not-possible"),
            DeployError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        DeployError::from(error).into()
    }
}

/// A scope a handler needs.
pub trait Needs: Send + Sync {
    const SCOPE: Scope;
}

/// The `read` scope.
pub struct Read;
/// The `deploy` scope.
pub struct Deploy;

impl Needs for Read {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for Deploy {
    const SCOPE: Scope = Scope::Deploy;
}

/// Proof that the request carried a token with scope `S` (or a higher one). A handler that
/// takes an `Auth<S>` cannot run without it.
pub struct Auth<S>(PhantomData<S>);

impl<S: Needs> FromRequestParts<ApiState> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
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
            Some(scope) if scope < S::SCOPE => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs a token with the {} scope; yours has {}",
                    S::SCOPE.as_str(),
                    scope.as_str()
                ),
            )),
            Some(_) => Ok(Auth(PhantomData)),
        }
    }
}

async fn read_body(body: Body, limit: usize, what: &str) -> Result<axum::body::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the {what} is larger than the {limit}-byte limit"),
        )),
        Err(_) => Err(ApiError::bad_request(format!("could not read the {what}"))),
    }
}

/// A small JSON body, read strictly (no duplicate keys); an empty body is `{}`.
async fn json_value(body: Body, what: &str) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(body, MAX_SPEC_BYTES, what).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    crate::json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the {what} is not valid JSON: {e}")))
}

/// A typed JSON body; `example` shows what is expected when it does not fit.
async fn json_body<T: DeserializeOwned>(body: Body, example: &str) -> Result<T, ApiError> {
    let value = json_value(body, "body").await?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("{e}; expected a body like {example}")))
}

fn is_toml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("toml"))
}

async fn put_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let spec = if is_toml(&headers) {
        let bytes = read_body(body, MAX_SPEC_BYTES, "spec").await?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the spec is not UTF-8"))?;
        spec::parse_toml(text)
    } else {
        spec::parse_json(json_value(body, "spec").await?)
    }
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", e.to_string()))?;
    if spec.name != app {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-spec",
            format!("the spec is for {:?} but was sent to /v1/apps/{app}", spec.name),
        ));
    }
    Ok(deployed(state.runner.deploy(spec).await?))
}

async fn patch_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let patch = json_value(body, "patch").await?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "the patch must be a JSON object (a JSON merge patch of the spec)",
        ));
    }
    Ok(deployed(state.runner.patch(&app, &patch).await?))
}

fn deployed(result: DeployAccepted) -> Response {
    let status = match result {
        DeployAccepted::Started { .. } => StatusCode::ACCEPTED,
        DeployAccepted::Unchanged { .. } => StatusCode::OK,
    };
    (status, Json(result)).into_response()
}

async fn delete_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runner.delete(&app).await?).into_response())
}

async fn rollback(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RollbackRequest = json_body(body, r#"{"to": 3} or {}"#).await?;
    Ok(deployed(state.runner.rollback(&app, request.to).await?))
}

async fn redeploy(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RedeployRequest = json_body(body, r#"{"revision": 3}"#).await?;
    Ok(deployed(state.runner.redeploy(&app, request.revision).await?))
}

async fn retry(_: Auth<Deploy>, State(state): State<ApiState>, Path(app): Path<String>) -> Result<Response, ApiError> {
    Ok(deployed(state.runner.retry(&app).await?))
}

async fn scale(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ScaleRequest = json_body(body, r#"{"replicas": 5}"#).await?;
    Ok(Json(state.runner.scale(&app, request.replicas).await?).into_response())
}

async fn route(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RouteRequest = json_body(body, r#"{"weights": {"2": 198, "3": 2}}"#).await?;
    Ok(Json(state.runner.route(&app, &request.weights).await?).into_response())
}

async fn traffic(
    _: Auth<Read>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "revision" | "window")) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {unknown:?}: traffic takes revision and window"
        )));
    }
    let revision = query
        .get("revision")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| ApiError::bad_request(format!("revision must be a revision number, not {v:?}")))
        })
        .transpose()?;
    let window = match query.get("window") {
        Some(text) => spec::duration::parse(text)
            .ok()
            .filter(|w| !w.is_zero() && *w <= crate::driver::router::builtin::traffic::KEPT)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "window {text:?} is not a duration from 1s to {}s, e.g. window=30s",
                    crate::driver::router::builtin::traffic::KEPT.as_secs()
                ))
            })?,
        None => std::time::Duration::from_secs(60),
    };
    Ok(Json(state.runner.traffic(&app, revision, window).await?).into_response())
}

async fn maintenance(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: MaintenanceRequest = json_body(body, r#"{"on": true}"#).await?;
    Ok(Json(state.runner.maintenance(&app, request.on).await?).into_response())
}

async fn pause(_: Auth<Deploy>, State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Pause)?).into_response())
}

async fn resume(_: Auth<Deploy>, State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Resume)?).into_response())
}

async fn abort(_: Auth<Deploy>, State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Abort)?).into_response())
}

async fn list_apps(_: Auth<Read>, State(state): State<ApiState>) -> Result<Response, ApiError> {
    let apps = state
        .runner
        .store()
        .apps()?
        .into_iter()
        .map(|app| state.runner.app_status(app))
        .collect();
    Ok(Json(AppList { apps }).into_response())
}

async fn get_app(_: Auth<Read>, State(state): State<ApiState>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let row = state.runner.store().app(&app)?.ok_or(DeployError::UnknownApp(app))?;
    Ok(Json(state.runner.app_status(row)).into_response())
}

/// Revisions, rollouts and app events; also for deleted apps, whose history stays readable.
async fn history(_: Auth<Read>, State(state): State<ApiState>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let store = state.runner.store();
    let row = store
        .app_including_deleted(&app)?
        .ok_or_else(|| DeployError::UnknownApp(app.clone()))?;
    Ok(Json(History {
        deleted_at: row.deleted_at,
        revisions: store.revisions(&app)?,
        rollouts: store.rollouts(&app)?,
        events: store.app_events(&app)?,
        app,
    })
    .into_response())
}

async fn get_rollout(
    _: Auth<Read>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rollout = state
        .runner
        .store()
        .rollout(&id)?
        .ok_or(DeployError::UnknownRollout(id))?;
    Ok(Json(rollout).into_response())
}

/// Server-sent events: the rollout's events so far (after the `Last-Event-ID` a reconnecting
/// follower sends), then live ones until it ends, then an `end` event carrying the rollout's
/// final record. With `Accept: application/json`, the stored events as one document.
async fn rollout_events(
    _: Auth<Read>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (stored, receiver) = state.runner.follow(&id)?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        return Ok(Json(RolloutEvents {
            rollout: id,
            events: stored,
        })
        .into_response());
    }
    let first: u64 = match headers.get("last-event-id").map(|v| v.to_str().map(str::parse::<u64>)) {
        None => 0,
        Some(Ok(Ok(last))) => last + 1,
        Some(_) => return Err(ApiError::bad_request("Last-Event-ID must be the number of an event")),
    };
    let seen = stored.len() as u64;
    let past = stream::iter(
        stored
            .into_iter()
            .enumerate()
            .skip(first as usize)
            .map(|(seq, event)| sse(seq as u64, &event)),
    );
    let live = match receiver {
        Some(receiver) => futures_util::stream::unfold(receiver, move |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(numbered) if numbered.seq < seen.max(first) => continue,
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

/// How often a followed log looks for new output.
const LOG_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Lines shown per instance unless `tail` says otherwise.
const DEFAULT_TAIL: usize = 100;

/// Instances' output, each line prefixed with its instance: `?revision=N` or `?instance=ID`
/// to choose, `tail=N` lines from each (default 100), `follow=true` to stream new lines until
/// the client goes away. Kept for instances that have stopped too, until pruned.
async fn logs(
    _: Auth<Read>,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let row = state
        .runner
        .store()
        .app_including_deleted(&app)?
        .ok_or_else(|| DeployError::UnknownApp(app.clone()))?;
    if let Some(kube) = row.spec.get("kubernetes") {
        let namespace = match kube.get("namespace").and_then(|n| n.as_str()) {
            Some(namespace) => format!("-n {namespace} "),
            None => String::new(),
        };
        return Err(ApiError::bad_request(format!(
            "app {app} runs in Kubernetes, which keeps its pods' output: kubectl logs {namespace}-l slipway.dev/app={app} --prefix (with slipway.dev/revision=N for one revision)"
        )));
    }
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "revision" | "instance" | "tail" | "follow"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {unknown:?}: logs take revision, instance, tail and follow"
        )));
    }
    let number = |name: &str| -> Result<Option<usize>, ApiError> {
        query
            .get(name)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number, not {v:?}")))
            })
            .transpose()
    };
    let revision = number("revision")?;
    let tail = number("tail")?.unwrap_or(DEFAULT_TAIL);
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("follow is true or false, not {other:?}"))),
    };
    let instance = query.get("instance").cloned();
    let revision_prefix = revision.map(|r| format!("{app}-r{r}-"));
    let keep = move |name: &str| {
        instance.as_deref().is_none_or(|i| i == name) && revision_prefix.as_deref().is_none_or(|p| name.starts_with(p))
    };
    let dir = state.runner.output_dir(&app);
    let files = output::instances(&dir, &keep);
    if files.is_empty()
        && let Some(instance) = query.get("instance")
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-instance",
            format!("{app} has no output from an instance {instance:?}; `slipway logs {app}` shows every instance's"),
        ));
    }
    let mut followers = std::collections::BTreeMap::new();
    let mut text = String::new();
    for (instance, path) in files {
        let (follower, lines) = output::Follower::new(path, tail);
        for line in lines {
            text.push_str(&format!("{instance} | {line}\n"));
        }
        followers.insert(instance, follower);
    }
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return Ok((headers, text).into_response());
    }
    let first = stream::once(async move { Ok::<_, Infallible>(bytes::Bytes::from(text)) });
    let live = stream::unfold(followers, move |mut followers| {
        let (dir, keep) = (dir.clone(), keep.clone());
        async move {
            loop {
                tokio::time::sleep(LOG_POLL).await;
                // Instances started since are followed from their first line.
                for (instance, path) in output::instances(&dir, &keep) {
                    followers
                        .entry(instance)
                        .or_insert_with(|| output::Follower::new(path, 0).0.from_start());
                }
                let mut text = String::new();
                for (instance, follower) in followers.iter_mut() {
                    for line in follower.read() {
                        text.push_str(&format!("{instance} | {line}\n"));
                    }
                }
                if !text.is_empty() {
                    return Some((Ok(bytes::Bytes::from(text)), followers));
                }
            }
        }
    });
    Ok((headers, Body::from_stream(first.chain(live))).into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// Receives a component as the request body, straight to disk, chunk by chunk.
async fn upload_module(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = query
        .name
        .ok_or_else(|| ApiError::bad_request("name the module: POST /v1/modules?name=NAME"))?;
    let mut upload = state.runner.begin_upload(&name).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("could not read the module"))?;
        upload.write(&chunk).await?;
    }
    let module = state.runner.finish_upload(upload).await?;
    Ok((StatusCode::CREATED, Json(state.runner.listed(module)?)).into_response())
}

async fn list_modules(_: Auth<Read>, State(state): State<ApiState>) -> Result<Response, ApiError> {
    let modules = state.runner.list_modules()?;
    let builtin = crate::modules::builtin_names()
        .iter()
        .map(|n| format!("builtin:{n}"))
        .collect();
    Ok(Json(ModuleList { modules, builtin }).into_response())
}

/// `DELETE /v1/modules/NAME` (every upload under the name) or `NAME@sha256:…` (that one).
async fn delete_module(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    Path(module): Path<String>,
) -> Result<Response, ApiError> {
    let (name, digest) = match module.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (module.as_str(), None),
    };
    if let Some(digest) = digest
        && !(digest.len() == 71 && digest.starts_with("sha256:") && digest[7..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(format!(
            "{digest:?} is not a digest: name a module as NAME or NAME@sha256:<64 hex digits>"
        )));
    }
    let deleted = state.runner.delete_module(name, digest).await?;
    Ok(Json(crate::protocol::ModulesDeleted { deleted }).into_response())
}

/// Prometheus text format.
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    out.push_str("# HELP slipway_rollouts_total Rollouts by outcome.\n# TYPE slipway_rollouts_total counter\n");
    for (outcome, count) in state.runner.store().rollout_counts()? {
        let _ = writeln!(out, "slipway_rollouts_total{{outcome=\"{outcome}\"}} {count}");
    }
    let stats = state.runner.loader().stats();
    out.push_str(
        "# HELP slipway_modules_loaded_total Modules loaded, by how.\n# TYPE slipway_modules_loaded_total counter\n",
    );
    for (how, count) in [("compiled", &stats.compiled), ("cache", &stats.from_cache)] {
        let count = count.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "slipway_modules_loaded_total{{how=\"{how}\"}} {count}");
    }
    out.push_str(
        "# HELP slipway_instances Instances per app, revision and readiness.\n# TYPE slipway_instances gauge\n",
    );
    for app in state.runner.store().apps()? {
        let status = state.runner.app_status(app);
        let Some(instances) = status.instances else { continue };
        for (revision, s) in instances.revisions {
            for (which, count) in [("current", s.current), ("ready", s.ready)] {
                let _ = writeln!(
                    out,
                    "slipway_instances{{app=\"{}\",revision=\"{revision}\",state=\"{which}\"}} {count}",
                    status.name
                );
            }
        }
    }
    out.push_str(&state.runner.router_metrics().await);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

#[cfg(test)]
mod tests;
