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
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::{Scope, Tokens};
use crate::driver::compute::output;
use crate::protocol::{
    AppList, AppStatus, Deleted, DeployAccepted, ErrorBody, History, ListedModule, MaintenanceRequest, MaintenanceSet,
    ModuleList, ModulesDeleted, RedeployRequest, RollbackRequest, RolloutEvents, RouteRequest, Routed, ScaleRequest,
    Scaled, Steer, Steered, TokenInfo, TrafficReport,
};
use crate::runner::{DeployError, Runner};
use crate::spec::{self, Spec};
use crate::store::RolloutRow;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest spec or patch body accepted.
const MAX_SPEC_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct ApiState {
    pub runner: Arc<Runner>,
    pub tokens: Arc<Tokens>,
}

/// The API's routes, from the handlers' `#[utoipa::path]` descriptions: the router and the
/// OpenAPI document ([`openapi`]) come from the same place, so no route goes undescribed.
pub fn app(state: ApiState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; the API is described at /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method; the API is described at /v1/openapi.json",
            )
        })
        .with_state(state)
}

fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::Doc::openapi())
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::asset))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(token))
        .routes(routes!(list_apps))
        .routes(routes!(put_app, patch_app, get_app, delete_app))
        .routes(routes!(history))
        .routes(routes!(rollback))
        .routes(routes!(redeploy))
        .routes(routes!(retry))
        .routes(routes!(scale))
        .routes(routes!(route))
        .routes(routes!(maintenance))
        .routes(routes!(traffic))
        .routes(routes!(logs))
        .routes(routes!(get_rollout))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
        .routes(routes!(rollout_events))
        .routes(routes!(upload_module, list_modules))
        .routes(routes!(delete_module))
}

/// The OpenAPI 3.1 document of this API, as `GET /v1/openapi.json` serves it.
pub fn openapi() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| openapi::finish(routes().into_openapi()))
}

/// The API described in OpenAPI 3.1.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

/// What the token sent may do (the dashboard disables what its scope does not allow).
#[utoipa::path(get, path = "/v1/token", tag = "meta",
    responses((status = 200, description = "The token's scope", body = TokenInfo)),
    security(("token" = ["read"])))]
async fn token(auth: Auth<Read>) -> Json<TokenInfo> {
    Json(TokenInfo { scope: auth.scope() })
}

/// Answers while the API serves.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
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
pub struct Auth<S>(Scope, PhantomData<S>);

impl<S> Auth<S> {
    /// The token's own scope.
    pub fn scope(&self) -> Scope {
        self.0
    }
}

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
            Some(scope) => Ok(Auth(scope, PhantomData)),
        }
    }
}

/// Path parameters, refused as an [`ApiError`] when they do not fit.
pub struct InPath<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for InPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(InPath(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// Query parameters, refused as an [`ApiError`] when they do not fit (an unknown or repeated
/// parameter included).
pub struct InQuery<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for InQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(InQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppPath {
    /// The app's name.
    app: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RolloutPath {
    /// The rollout's id, as a deploy answered it (`APP-REVISION-N`).
    id: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ModulePath {
    /// `NAME` (every upload under the name) or `NAME@sha256:<64 hex digits>` (that one).
    module: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// A page: at most this many revisions (1 to 1000), the newest first to go, with their
    /// rollouts. Without it, the whole history.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Only revisions numbered below this: the `next_before` of the page before.
    #[param(value_type = Option<u32>)]
    before: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrafficQuery {
    /// The revision (default: the app's active one).
    #[param(value_type = Option<u32>)]
    revision: Option<String>,
    /// How far back to look, from `1s` to `300s` (default `60s`).
    #[param(example = "30s")]
    window: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this revision's instances.
    #[param(value_type = Option<u32>)]
    revision: Option<String>,
    /// Only this instance (`APP-rREVISION-N`).
    instance: Option<String>,
    /// Lines from the end of each instance's output (default 100).
    #[param(value_type = Option<u32>)]
    tail: Option<String>,
    /// Stream new lines until the client goes away.
    #[param(value_type = Option<bool>)]
    follow: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The module's name: lowercase letters, digits and hyphens.
    #[serde(default)]
    name: String,
}

/// An optional whole-number parameter, within the document's `int32` range.
fn whole_number<N: TryFrom<i32>>(text: Option<&str>, name: &str) -> Result<Option<N>, ApiError> {
    text.map(|v| {
        v.parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .and_then(|n| N::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be a whole number from 0 to {}, not {v:?}",
                    i32::MAX
                ))
            })
    })
    .transpose()
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

#[utoipa::path(
    put, path = "/v1/apps/{app}", tag = "apps",
    params(AppPath),
    request_body(content((Spec = "application/json"), (String = "application/toml")), description = "The app's spec, as JSON or as the TOML of a spec file"),
    responses(
        (status = 202, description = "A rollout started", body = DeployAccepted),
        (status = 200, description = "Nothing to do: the spec equals the latest revision's", body = DeployAccepted),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn put_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
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

#[utoipa::path(
    patch, path = "/v1/apps/{app}", tag = "apps",
    params(AppPath),
    request_body(content((Object = "application/merge-patch+json"), (Object = "application/json")), description = "A JSON merge patch (RFC 7396) of the app's latest spec"),
    responses(
        (status = 202, description = "A rollout started", body = DeployAccepted),
        (status = 200, description = "Nothing to do: the spec equals the latest revision's", body = DeployAccepted),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn patch_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, MAX_SPEC_BYTES, "patch").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            r#"the patch is empty: send a JSON merge patch of the spec, e.g. {"replicas": 3}"#,
        ));
    }
    let patch: serde_json::Value = crate::json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
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

#[utoipa::path(
    delete, path = "/v1/apps/{app}", tag = "apps",
    params(AppPath),
    responses(
        (status = 200, description = "Deleted; its history stays readable", body = Deleted),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn delete_app(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runner.delete(&app).await?).into_response())
}

#[utoipa::path(
    post, path = "/v1/apps/{app}/rollback", tag = "rollouts",
    params(AppPath),
    request_body(content = Option<RollbackRequest>, description = "Which revision to go back to; an empty body goes back to the most recent earlier one that ran"),
    responses(
        (status = 202, description = "A rollout started", body = DeployAccepted),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app or revision", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn rollback(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RollbackRequest = json_body(body, r#"{"to": 3} or {}"#).await?;
    Ok(deployed(state.runner.rollback(&app, request.to).await?))
}

#[utoipa::path(
    post, path = "/v1/apps/{app}/redeploy", tag = "rollouts",
    params(AppPath),
    request_body(content = RedeployRequest),
    responses(
        (status = 202, description = "A rollout started", body = DeployAccepted),
        (status = 200, description = "Nothing to do: the spec equals the latest revision's", body = DeployAccepted),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app or revision", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn redeploy(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RedeployRequest = json_body(body, r#"{"revision": 3}"#).await?;
    Ok(deployed(state.runner.redeploy(&app, request.revision).await?))
}

#[utoipa::path(
    post, path = "/v1/apps/{app}/retry", tag = "rollouts",
    params(AppPath),
    responses(
        (status = 202, description = "A rollout started", body = DeployAccepted),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn retry(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
) -> Result<Response, ApiError> {
    Ok(deployed(state.runner.retry(&app).await?))
}

#[utoipa::path(
    put, path = "/v1/apps/{app}/scale", tag = "apps",
    params(AppPath),
    request_body(content = ScaleRequest),
    responses(
        (status = 200, description = "Scaled", body = Scaled),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn scale(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ScaleRequest = json_body(body, r#"{"replicas": 5}"#).await?;
    Ok(Json(state.runner.scale(&app, request.replicas).await?).into_response())
}

#[utoipa::path(
    put, path = "/v1/apps/{app}/route", tag = "apps",
    params(AppPath),
    request_body(content = RouteRequest),
    responses(
        (status = 200, description = "Routed", body = Routed),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn route(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RouteRequest = json_body(body, r#"{"weights": {"2": 198, "3": 2}}"#).await?;
    Ok(Json(state.runner.route(&app, &request.weights).await?).into_response())
}

#[utoipa::path(
    get, path = "/v1/apps/{app}/traffic", tag = "apps",
    params(AppPath, TrafficQuery),
    responses(
        (status = 200, description = "One revision's traffic, as its router measured it", body = TrafficReport),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app or revision", body = ErrorBody),
        (status = 409, description = "The app's router does not measure traffic", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn traffic(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    InQuery(query): InQuery<TrafficQuery>,
) -> Result<Response, ApiError> {
    let revision = whole_number(query.revision.as_deref(), "revision")?;
    let window = match query.window {
        Some(text) => spec::duration::parse(&text)
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

#[utoipa::path(
    put, path = "/v1/apps/{app}/maintenance", tag = "apps",
    params(AppPath),
    request_body(content = MaintenanceRequest),
    responses(
        (status = 200, description = "Set", body = MaintenanceSet),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is running, or the change is not possible now", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The spec or the request breaks a rule", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn maintenance(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: MaintenanceRequest = json_body(body, r#"{"on": true}"#).await?;
    Ok(Json(state.runner.maintenance(&app, request.on).await?).into_response())
}

#[utoipa::path(
    post, path = "/v1/rollouts/{id}/pause", tag = "rollouts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Paused at its next step", body = Steered),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "The rollout is not running", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn pause(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(RolloutPath { id }): InPath<RolloutPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Pause)?).into_response())
}

#[utoipa::path(
    post, path = "/v1/rollouts/{id}/resume", tag = "rollouts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Resumed", body = Steered),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "The rollout is not running", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn resume(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(RolloutPath { id }): InPath<RolloutPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Resume)?).into_response())
}

#[utoipa::path(
    post, path = "/v1/rollouts/{id}/abort", tag = "rollouts",
    params(RolloutPath),
    responses(
        (status = 200, description = "Aborting: it rolls back", body = Steered),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "The rollout is not running", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn abort(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(RolloutPath { id }): InPath<RolloutPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runner.steer(&id, Steer::Abort)?).into_response())
}

#[utoipa::path(
    get, path = "/v1/apps", tag = "apps",
    responses(
        (status = 200, description = "Every app", body = AppList)
    ),
    security(("token" = ["read"]))
)]
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

#[utoipa::path(
    get, path = "/v1/apps/{app}", tag = "apps",
    params(AppPath),
    responses(
        (status = 200, description = "The app now", body = AppStatus),
        (status = 404, description = "No such app", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn get_app(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
) -> Result<Response, ApiError> {
    let row = state.runner.store().app(&app)?.ok_or(DeployError::UnknownApp(app))?;
    Ok(Json(state.runner.app_status(row)).into_response())
}

/// Revisions, rollouts and app events; also for deleted apps, whose history stays readable.
#[utoipa::path(
    get, path = "/v1/apps/{app}/revisions", tag = "apps",
    params(AppPath, HistoryQuery),
    responses(
        (status = 200, description = "Revisions, rollouts and app events, oldest first", body = History),
        (status = 400, description = "limit or before is not a number in range", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn history(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    InQuery(query): InQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = whole_number::<u32>(query.limit.as_deref(), "limit")?;
    if let Some(limit) = limit
        && !(1..=MAX_PAGE).contains(&limit)
    {
        return Err(ApiError::bad_request(format!(
            "limit is {limit}: ask for 1 to {MAX_PAGE} revisions a page"
        )));
    }
    let before = whole_number::<u32>(query.before.as_deref(), "before")?;
    let store = state.runner.store();
    let row = store
        .app_including_deleted(&app)?
        .ok_or_else(|| DeployError::UnknownApp(app.clone()))?;
    // A page is a range of revision numbers: the newest `limit` below `before`.
    let end = match before {
        Some(before) => before,
        None => store.latest_target(&app)?.map_or(1, |latest| latest.saturating_add(1)),
    };
    let start = limit.map_or(0, |limit| end.saturating_sub(limit));
    let events = if before.is_none() {
        store.app_events(&app)?
    } else {
        Vec::new()
    };
    Ok(Json(History {
        deleted_at: row.deleted_at,
        revisions: store.revisions_in(&app, start..end)?,
        rollouts: store.rollouts_in(&app, start..end)?,
        events,
        next_before: (limit.is_some() && start > 1).then_some(start),
        app,
    })
    .into_response())
}

/// The most revisions one page of history holds.
const MAX_PAGE: u32 = 1000;

#[utoipa::path(
    get, path = "/v1/rollouts/{id}", tag = "rollouts",
    params(RolloutPath),
    responses(
        (status = 200, description = "The rollout", body = RolloutRow),
        (status = 404, description = "No such rollout", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn get_rollout(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(RolloutPath { id }): InPath<RolloutPath>,
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
#[utoipa::path(
    get, path = "/v1/rollouts/{id}/events", tag = "rollouts",
    params(RolloutPath, ("Last-Event-ID" = Option<u32>, Header, description = "Resume after this event (what a reconnecting EventSource sends)")),
    responses(
        (status = 200, description = "Server-sent events: `rollout` events (the id is the event's number), then one `end` event with the rollout's record. With `Accept: application/json`, the events so far as one document", content((SseFrame = "text/event-stream"), (RolloutEvents = "application/json"))),
        (status = 400, description = "Last-Event-ID is not an event number", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn rollout_events(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(RolloutPath { id }): InPath<RolloutPath>,
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
    let first: u64 = match headers.get("last-event-id").map(|v| v.to_str().map(str::parse::<i32>)) {
        None => 0,
        Some(Ok(Ok(last))) if last >= 0 => last as u64 + 1,
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
            SseFrame {
                id: None,
                event: "end".to_owned(),
                data: serde_json::to_string(&rollout).unwrap_or_default(),
            }
            .into_event(),
        )
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(past.chain(live).chain(end));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn sse(seq: u64, event: &serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseFrame {
        id: Some(seq.to_string()),
        event: "rollout".to_owned(),
        data: event.to_string(),
    }
    .into_event())
}

/// One server-sent event of `GET /v1/rollouts/{id}/events`.
#[derive(utoipa::ToSchema)]
struct SseFrame {
    /// The event's number (from 0), which a reconnecting client sends back as
    /// `Last-Event-ID`; none on `end`.
    id: Option<String>,
    /// `rollout`: `data` is an `Event` as JSON. `end`, the last one: `data` is the rollout's
    /// final `RolloutRow` as JSON.
    #[schema(pattern = "^(rollout|end)$")]
    event: String,
    data: String,
}

impl SseFrame {
    fn into_event(self) -> SseEvent {
        let event = SseEvent::default().event(self.event).data(self.data);
        match self.id {
            Some(id) => event.id(id),
            None => event,
        }
    }
}

/// How often a followed log looks for new output.
const LOG_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Lines shown per instance unless `tail` says otherwise.
const DEFAULT_TAIL: usize = 100;

/// Instances' output, each line prefixed with its instance: `?revision=N` or `?instance=ID`
/// to choose, `tail=N` lines from each (default 100), `follow=true` to stream new lines until
/// the client goes away. Kept for instances that have stopped too, until pruned.
#[utoipa::path(
    get, path = "/v1/apps/{app}/logs", tag = "apps",
    params(AppPath, LogsQuery),
    responses(
        (status = 200, description = "Lines as `INSTANCE | LINE`; with `follow=true`, a stream of them", content_type = "text/plain", body = String),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 404, description = "No such app or instance", body = ErrorBody)
    ),
    security(("token" = ["read"]))
)]
async fn logs(
    _: Auth<Read>,
    State(state): State<ApiState>,
    InPath(AppPath { app }): InPath<AppPath>,
    InQuery(query): InQuery<LogsQuery>,
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
    let revision = whole_number::<u32>(query.revision.as_deref(), "revision")?;
    let tail = whole_number(query.tail.as_deref(), "tail")?.unwrap_or(DEFAULT_TAIL);
    let follow = match query.follow.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("follow is true or false, not {other:?}"))),
    };
    let instance = query.instance.clone();
    let revision_prefix = revision.map(|r| format!("{app}-r{r}-"));
    let keep = move |name: &str| {
        instance.as_deref().is_none_or(|i| i == name) && revision_prefix.as_deref().is_none_or(|p| name.starts_with(p))
    };
    let dir = state.runner.output_dir(&app);
    let files = output::instances(&dir, &keep);
    if files.is_empty()
        && let Some(instance) = &query.instance
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

/// Receives a component as the request body, straight to disk, chunk by chunk.
#[utoipa::path(
    post, path = "/v1/modules", tag = "modules",
    params(UploadQuery),
    request_body(content((String = "application/wasm"), (String = "application/octet-stream")), description = "The component's bytes"),
    responses(
        (status = 201, description = "Validated and stored; it compiles in the background when that takes long", body = ListedModule),
        (status = 400, description = "The body or a parameter is not valid JSON or does not fit", body = ErrorBody),
        (status = 413, description = "The module is larger than the upload limit", body = ErrorBody),
        (status = 422, description = "Not a valid strategy or hook component, or a bad name", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn upload_module(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InQuery(UploadQuery { name }): InQuery<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("name the module: POST /v1/modules?name=NAME"));
    }
    let mut upload = state.runner.begin_upload(&name).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("could not read the module"))?;
        upload.write(&chunk).await?;
    }
    let module = state.runner.finish_upload(upload).await?;
    Ok((StatusCode::CREATED, Json(state.runner.listed(module)?)).into_response())
}

#[utoipa::path(
    get, path = "/v1/modules", tag = "modules",
    responses(
        (status = 200, description = "Uploaded modules and the built-in ones", body = ModuleList)
    ),
    security(("token" = ["read"]))
)]
async fn list_modules(_: Auth<Read>, State(state): State<ApiState>) -> Result<Response, ApiError> {
    let modules = state.runner.list_modules()?;
    let builtin = crate::modules::builtin_names()
        .iter()
        .map(|n| format!("builtin:{n}"))
        .collect();
    Ok(Json(ModuleList { modules, builtin }).into_response())
}

/// `DELETE /v1/modules/NAME` (every upload under the name) or `NAME@sha256:…` (that one).
#[utoipa::path(
    delete, path = "/v1/modules/{module}", tag = "modules",
    params(ModulePath),
    responses(
        (status = 200, description = "What was deleted", body = ModulesDeleted),
        (status = 400, description = "Not NAME or NAME@sha256:<64 hex digits>", body = ErrorBody),
        (status = 404, description = "No such module", body = ErrorBody),
        (status = 409, description = "A revision an app keeps uses the module", body = ErrorBody)
    ),
    security(("token" = ["deploy"]))
)]
async fn delete_module(
    _: Auth<Deploy>,
    State(state): State<ApiState>,
    InPath(ModulePath { module }): InPath<ModulePath>,
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
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)
    )
)]
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

mod dashboard;
mod openapi;
#[cfg(test)]
mod tests;
