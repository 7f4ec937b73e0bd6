//! The HTTP API's request and response bodies, typed, and shared by the server (`api.rs`)
//! and its client (`cli`): one definition, so the two cannot drift apart.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::events::RevisionSnapshot;
use crate::store::{AppEventRow, ModuleRow, RevisionRow, RolloutRow};

/// What a deploy, PATCH, rollback, redeploy or retry started.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum DeployAccepted {
    /// A rollout started (of a new revision, or of an existing one for retry and rollback).
    Started {
        app: String,
        revision: u32,
        rollout: String,
        /// What the runner decided, when it is not obvious from the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The spec equals the latest revision's: nothing to deploy (app settings such as the
    /// destroy delay were updated if they changed).
    Unchanged { app: String, revision: u32 },
}

/// `POST /v1/apps/{app}/rollback`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to go back to (default: the most recent earlier one that ran).
    #[serde(default)]
    pub to: Option<u32>,
}

/// `POST /v1/apps/{app}/redeploy`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeployRequest {
    pub revision: u32,
}

/// `PUT /v1/apps/{app}/scale`, and its answer.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    #[schema(maximum = 1000)]
    pub replicas: u32,
}

/// `PUT /v1/apps/{app}/route`: revision → weight, 0 to 256, at most four above 0.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub weights: BTreeMap<u32, u32>,
}

/// `PUT /v1/apps/{app}/maintenance`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub on: bool,
}

/// The answer to a scale.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scaled {
    pub app: String,
    pub revision: u32,
    pub replicas: u32,
}

/// The answer to a route change.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Routed {
    pub app: String,
    pub weights: BTreeMap<u32, u32>,
}

/// The answer to a maintenance change.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MaintenanceSet {
    pub app: String,
    pub maintenance: bool,
}

/// What an operator can do to a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Steer {
    Pause,
    Resume,
    Abort,
}

/// The answer to pause, resume or abort.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Steered {
    pub rollout: String,
    pub action: Steer,
    /// False when the rollout already was in that state.
    pub changed: bool,
    pub paused: bool,
    pub aborted: bool,
}

/// The answer to deleting an app.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    pub app: String,
    /// Instances that were stopped.
    pub stopped: u32,
}

/// An app now: `GET /v1/apps/{app}` and each item of `GET /v1/apps`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppStatus {
    pub name: String,
    pub active_revision: Option<u32>,
    /// Whether its route answers with the maintenance page now.
    pub maintenance: bool,
    pub running_rollout: Option<String>,
    /// Whether the running rollout is paused (`POST /v1/rollouts/{id}/pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollout_paused: bool,
    /// What an operator should know: state the runner could not restore, for example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// Its router and instances, when the runner runs them.
    pub instances: Option<Instances>,
    /// Its HTTPS certificate, when the runner obtains it over ACME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// The spec as deployed (secret-env holds references, never values).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub updated_at: u64,
}

/// An app's certificate from ACME, as the runner keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateStatus {
    /// The names it is for: all of the app's hosts.
    pub hosts: Vec<String>,
    /// The ACME directory it comes from.
    pub directory: String,
    pub state: CertificateState,
    /// When the certificate served now expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    /// When the runner renews it (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<u64>,
    /// Why the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the runner tries again after a failure (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateState {
    /// None yet: the first order is under way.
    Obtaining,
    /// A certificate for every name, not yet due for renewal.
    Valid,
    /// The last order failed (see `error`); a certificate obtained before may still be served.
    Failed,
}

/// An app's router and instances.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instances {
    /// Where its router listens; none for an app the cluster routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "127.0.0.1:8080")]
    pub listen: Option<SocketAddr>,
    pub maintenance: bool,
    /// Every revision with instances or weight.
    pub revisions: BTreeMap<u32, RevisionSnapshot>,
}

/// `GET /v1/apps`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppList {
    pub apps: Vec<AppStatus>,
}

/// `GET /v1/apps/{app}/revisions`: revisions, rollouts and app events, oldest first; a page
/// of them with `limit` and `before`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    pub app: String,
    /// Set when the app was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    pub revisions: Vec<RevisionRow>,
    pub rollouts: Vec<RolloutRow>,
    /// App events; with `before`, none (they come with the newest page).
    #[serde(default)]
    pub events: Vec<AppEventRow>,
    /// With `limit`, when older revisions remain: ask again with `before` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u32>,
}

/// `GET /v1/modules`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleList {
    pub modules: Vec<ListedModule>,
    pub builtin: Vec<String>,
}

/// An uploaded module, and the revisions that keep it (it cannot be deleted while any does).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListedModule {
    #[serde(flatten)]
    pub module: ModuleRow,
    #[serde(default)]
    pub pinned_by: Vec<RevisionPin>,
    /// Where compiling it stands in this runner.
    pub compile: CompileState,
    /// Why compiling it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_error: Option<String>,
}

/// Where compiling an uploaded module stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompileState {
    /// Compiled and loaded: deploys use it at once.
    Ready,
    /// Compiling in the background since its upload; a deploy that needs it waits.
    Compiling,
    /// Compiling failed (`compile_error` says why); deploys that name it are refused.
    Failed,
    /// Not loaded since the runner started: read from the precompiled cache, or compiled,
    /// when first used.
    OnDemand,
}

/// A revision of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevisionPin {
    pub app: String,
    pub revision: u32,
}

/// `DELETE /v1/modules/{module}`: what was deleted.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModulesDeleted {
    pub deleted: Vec<ModuleRow>,
}

/// `GET /v1/rollouts/{id}/events` with `Accept: application/json`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutEvents {
    pub rollout: String,
    #[schema(value_type = Vec<crate::events::Event>)]
    pub events: Vec<serde_json::Value>,
}

/// `GET /v1/token`: what the token sent may do.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub scope: crate::auth::Scope,
}

/// Every error the API answers with.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable word such as `invalid-spec` or `rollout-running`.
    pub code: String,
    /// What happened and what to do, for people.
    pub message: String,
}

/// `GET /v1/apps/{app}/traffic?revision=N&window=60s`: one revision's traffic, as its router
/// measured it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrafficReport {
    pub app: String,
    pub revision: u32,
    pub stats: crate::driver::TrafficStats,
}
