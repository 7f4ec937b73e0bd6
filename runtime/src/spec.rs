//! The app spec: its serde model, shared by `slipway.toml` and the HTTP API's JSON, and the
//! parsers that turn either into a validated [`Spec`] or a [`SpecError`] saying where the
//! problem is and what to do about it.
//!
//! ```toml
//! name = "hello"                  # ^[a-z][a-z0-9-]{0,62}$
//! replicas = 3                    # 0..=1000, default 1
//! listen = "127.0.0.1:8080"       # where the app's router listens
//!
//! [process]
//! command = "target/debug/hello"
//! args = []
//! env = { VERSION = "v1" }        # PORT and SLIPWAY_* are reserved
//! secret-env = { DATABASE_URL = "file:/run/secrets/db", API_KEY = "env:STRIPE_KEY" }
//! workdir = "."
//! grace-period = "30s"            # SIGTERM → wait → SIGKILL
//!
//! # or, instead of [process], a container (Docker Engine API: Docker or Podman)
//! [container]
//! image = "ghcr.io/acme/shop:2.1"
//! command = ["/app/shop"]         # replaces the image's entrypoint (optional)
//! args = ["--verbose"]            # replaces the image's command (optional)
//! env = { VERSION = "v1" }        # and secret-env, as for [process]
//! port = 8080                     # where the app listens inside; published on 127.0.0.1
//! network = "bridge"              # or "host": the app listens on the PORT it is given
//! memory = "512MiB"               # limits (optional)
//! cpus = 1.5
//! volumes = ["/srv/shop:/data:ro", "shop-cache:/cache"]
//! pull = "missing"                # missing | always | never
//! grace-period = "30s"
//!
//! [router]
//! kind = "builtin"                # or "haproxy": HAProxy, driven through its runtime API
//!
//! [probe]                         # default: a TCP connect
//! http = "/healthz"               # or `tcp = true`, not both
//! status = 200
//! interval = "1s"
//! timeout = "1s"
//! success-threshold = 1
//! failure-threshold = 3
//!
//! [strategy]                      # default: builtin:rolling with no params
//! module = "builtin:rolling"      # builtin:NAME, NAME or NAME@sha256:<64 hex>
//! params = { max-surge = "25%" }
//! grants = ["prometheus:http://prometheus:9090"]   # the Prometheus its metrics calls query
//!
//! [hooks.pre]                     # points: pre, mid, post, rollback
//! module = "migrate"
//! params = {}
//! timeout = "60s"
//! policy = "abort"                # abort | retry | ignore
//! grants = ["exec"]               # "exec", "http:<host>"
//!
//! [lifecycle]
//! progress-deadline = "600s"
//! auto-rollback = true
//! destroy-delay = "0s"
//! retained = 10
//! maintenance-during-deploy = false
//! soak = "10s"                    # watch the new revision before calling it a success
//! ```
//!
//! `secret-env` values are references, resolved each time an instance (or an `exec` hook)
//! starts: `file:PATH` reads the file (one trailing newline dropped), `env:NAME` takes a
//! variable from the runner's own environment. The values themselves are never stored, sent
//! by the API or written to events.
//!
//! Durations are strings such as `"500ms"`, `"30s"`, `"5m"`, `"1h"` (or `"1m30s"`) or a whole
//! number of seconds, and are written back in the shortest exact form (`"10m"` for 600 s).
//!
//! **Invariant:** every `Spec` returned by [`parse_toml`], [`parse_json`] or [`merge_patch`]
//! has passed [`validate`]. Deserializing a `Spec` with serde directly checks only its shape.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

pub mod kubernetes;
pub use kubernetes::Kubernetes;

/// The most replicas one revision may have: the one limit for specs, strategies (`scale`)
/// and operators (`slipway scale`).
pub const MAX_REPLICAS: u32 = 1000;
/// The soak after a rollout's strategy succeeds, unless the spec says otherwise. Ten
/// seconds, like Nomad's `min_healthy_time`: long enough to catch a version that crashes on
/// its first requests or soon after starting, short enough not to slow a deploy noticeably.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(10);
/// The most revisions one app may keep as config.
pub const MAX_RETAINED: u32 = 1000;
/// The largest probe success or failure threshold.
pub const MAX_THRESHOLD: u32 = 100;

/// One app's desired state: what to run, how many, how to probe it and how to roll it out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Spec {
    /// The app's name: 1 to 63 lowercase letters, digits and hyphens, starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$", example = "hello")]
    pub name: String,
    /// How many replicas to run, 0 to [`MAX_REPLICAS`] (default 1).
    #[serde(default = "default_replicas")]
    #[schema(maximum = 1000, default = 1)]
    pub replicas: u32,
    /// Where the app's router listens (not for Kubernetes apps: the cluster routes them).
    /// An app with `[router] hosts` may leave it out and share the runner's front door
    /// (`slipway serve --front-http`, default `0.0.0.0:80`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "127.0.0.1:8080")]
    pub listen: Option<SocketAddr>,
    /// The program each replica runs as a local process; exactly one of `process`,
    /// `container` and `kubernetes` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The image each replica runs as a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The pods each replica runs as, in a Kubernetes cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    /// How readiness is checked (default: a TCP connect).
    #[serde(default)]
    pub probe: Probe,
    /// The strategy that moves capacity and traffic (default `builtin:rolling`).
    #[serde(default)]
    pub strategy: Strategy,
    /// Which router carries the app's traffic (default: the built-in one).
    #[serde(default, skip_serializing_if = "RouterSpec::is_default")]
    pub router: RouterSpec,
    /// Lifecycle hooks, by point.
    #[serde(default)]
    pub hooks: Hooks,
    /// Deadlines, rollback and how many old revisions to keep.
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

/// The program each replica runs. Slipway adds `PORT` to its environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Process {
    /// A path, or a name looked up on `PATH`.
    pub command: String,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment; `PORT` and names starting with `SLIPWAY_` are reserved.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment whose values are secrets: `file:PATH` or `env:NAME` references, resolved
    /// when an instance starts and never stored. See [`secret_source`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Working directory, relative to where `slipway serve` runs (default: that directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// How long a replica has between SIGTERM and SIGKILL (default 30 s).
    #[serde(default = "default_grace_period", with = "duration")]
    #[schema(value_type = String, example = "30s")]
    pub grace_period: Duration,
}

/// The image each replica runs as a container. Slipway adds `PORT` to its environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Container {
    /// An image reference, e.g. `ghcr.io/acme/shop:2.1` or `nginx@sha256:…`.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's command (the arguments after the entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment; `PORT` and names starting with `SLIPWAY_` are reserved.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// As for [`Process::secret_env`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// The port the app listens on inside the container (bridge network only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub network: ContainerNetwork,
    /// A memory limit such as `"512MiB"` or `"2GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// A CPU limit in cores, e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Mounts in Docker's `-v` form: `/host/path:/path[:ro]` or `volume-name:/path[:ro]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub pull: PullPolicy,
    /// How long a replica has between SIGTERM and SIGKILL (default 30 s).
    #[serde(default = "default_grace_period", with = "duration")]
    #[schema(value_type = String, example = "30s")]
    pub grace_period: Duration,
}

/// The `[router]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouterSpec {
    /// `"builtin"` (default) or `"haproxy"`; for Kubernetes apps `"gateway"` or `"service"`.
    pub kind: crate::driver::router::RouterKind,
    /// `gateway`: the Gateway the app's HTTPRoute attaches to, `NAME` or `NAMESPACE/NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `gateway`: the Gateway listener (its section name) to attach to, if not all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// The host names the app answers for (default: every host): on listeners it shares with
    /// other apps (`builtin`), or in its HTTPRoute (`gateway`). `*.example.com` matches one
    /// more label.
    #[serde(alias = "hostnames", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `builtin`: only paths under this prefix reach the app, e.g. `"/api"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `builtin`: HTTPS on another address, with a certificate from files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// `builtin` with `tls`: the plain listener answers the app's requests with a redirect
    /// to HTTPS (308).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    /// `builtin`: the largest request head (request line and headers) a client may send;
    /// larger ones get 431. Default `"64KiB"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_size: Option<String>,
    /// `builtin`: the largest request body passed on to the app; larger ones get 413.
    /// Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    /// `builtin`: client connections one listener holds at once; more wait to be accepted.
    /// Default 8192. On a shared listener, the first app's setting holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `builtin`: how long a client has to send a request's head, idle time on a kept-alive
    /// connection included (slow clients are cut off). Default `"30s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// `builtin`: log every request as a JSON line to `DATA/output/APP/access.log` (rotated
    /// at 16 MiB, one older file kept). Default off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub access_log: bool,
    /// `builtin`: accept HTTP/2 without TLS on `listen` from clients that start with it
    /// (h2c with prior knowledge). Over TLS, HTTP/2 is always offered (ALPN).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// `builtin`: how the router speaks to instances: `"http1"` (HTTP/1.1, the default) or
    /// `"http2"` (cleartext HTTP/2 with prior knowledge, as gRPC servers speak it).
    #[serde(skip_serializing_if = "InstanceProtocol::is_default")]
    pub instance_protocol: InstanceProtocol,
}

/// How the built-in router speaks to an app's instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceProtocol {
    #[default]
    Http1,
    Http2,
}

impl InstanceProtocol {
    fn is_default(&self) -> bool {
        *self == InstanceProtocol::Http1
    }
}

impl RouterSpec {
    /// `max-header-size` in bytes, if given and valid.
    pub fn max_header_bytes(&self) -> Option<u64> {
        self.max_header_size.as_deref().and_then(|s| bytes(s).ok())
    }

    /// `max-body-size` in bytes, if given and valid.
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body_size.as_deref().and_then(|s| bytes(s).ok())
    }

    /// `header-timeout`, if given and valid.
    pub fn header_timeout(&self) -> Option<Duration> {
        self.header_timeout.as_deref().and_then(|s| duration::parse(s).ok())
    }
}

/// The `[router.tls]` table: where HTTPS is served, and the certificate: from files, or
/// obtained and renewed over ACME.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsSpec {
    /// The HTTPS address, e.g. `"0.0.0.0:443"`; apps share it by host name. Default: the
    /// runner's front door (`slipway serve --front-https`, default `0.0.0.0:443`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "0.0.0.0:443")]
    pub listen: Option<SocketAddr>,
    /// The certificate chain, PEM (leaf first), read again when the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key: Option<PathBuf>,
    /// Obtain a certificate for every name in `hosts` from the runner's ACME directory (Let's
    /// Encrypt unless `slipway serve --acme-directory` says otherwise), proving each name
    /// over HTTP-01 on the app's plain listener, and renew it ahead of expiry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acme: bool,
}

impl RouterSpec {
    fn is_default(&self) -> bool {
        *self == RouterSpec::default()
    }
}

/// How a container's port is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerNetwork {
    /// A network of its own; `port` is published on 127.0.0.1.
    #[default]
    Bridge,
    /// The machine's network; the app listens on 127.0.0.1 at the `PORT` it is given.
    Host,
}

/// When a container's image is pulled from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

/// The readiness probe. `http` makes it an HTTP GET; otherwise it is a TCP connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Probe {
    /// The path to GET, e.g. `/healthz`. Use [`Probe::kind`] rather than reading this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `true` asks for a TCP connect explicitly; it may not be combined with `http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// The status an HTTP probe expects (default 200).
    pub status: u16,
    /// Time between probes (default 1 s).
    #[serde(with = "duration")]
    #[schema(value_type = String, default = "1s", example = "1s")]
    pub interval: Duration,
    /// How long one probe may take (default 1 s).
    #[serde(with = "duration")]
    #[schema(value_type = String, default = "1s", example = "1s")]
    pub timeout: Duration,
    /// Consecutive successes before a replica counts as ready (default 1).
    pub success_threshold: u32,
    /// Consecutive failures before a ready replica counts as not ready (default 3).
    pub failure_threshold: u32,
}

/// What a [`Probe`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind<'a> {
    /// The replica accepts a TCP connection on its port.
    Tcp,
    /// `GET path` on the replica's port answers `status`.
    Http {
        /// The request path, starting with `/`.
        path: &'a str,
        /// The expected status code.
        status: u16,
    },
}

/// The strategy module and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Strategy {
    /// `builtin:NAME`, `NAME` (uploaded) or `NAME@sha256:<64 hex>`; see [`module_ref`].
    pub module: String,
    /// Handed to the strategy as a JSON object.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Capabilities beyond the host API: `"prometheus:http://HOST:PORT"`; see
    /// [`strategy_grant`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

/// Lifecycle hooks by point. Each is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Hooks {
    /// Runs before the strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<Hook>,
    /// Runs when the strategy asks for it, between its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<Hook>,
    /// Runs after the strategy succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<Hook>,
    /// Runs after a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Hook>,
}

/// One hook: a module, its parameters, and what happens when it fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Hook {
    /// Same forms as [`Strategy::module`].
    pub module: String,
    /// Handed to the hook as a JSON object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// How long the hook may run (default 60 s).
    #[serde(default = "default_hook_timeout", with = "duration")]
    #[schema(value_type = String, example = "60s")]
    pub timeout: Duration,
    /// What a failure of the hook does (default [`HookPolicy::Abort`]).
    #[serde(default)]
    pub policy: HookPolicy,
    /// Capabilities beyond the sandbox: `"exec"` or `"http:<host>"`; see [`grant`].
    #[serde(default)]
    pub grants: Vec<String>,
}

/// What a failed hook does to its rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookPolicy {
    /// Fail the rollout (and roll back, if `auto-rollback` is on).
    #[default]
    Abort,
    /// Run the hook again, with backoff, until it succeeds or the rollout's progress deadline
    /// passes.
    Retry,
    /// Log the failure and carry on.
    Ignore,
}

/// Deadlines, rollback and how long old revisions are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Lifecycle {
    /// How long a rollout may take before it fails (default 600 s).
    #[serde(with = "duration")]
    #[schema(value_type = String, default = "600s", example = "600s")]
    pub progress_deadline: Duration,
    /// Roll back automatically when a rollout fails (default true).
    pub auto_rollback: bool,
    /// How long a replaced revision's replicas are kept after the switch (default 0 s).
    #[serde(with = "duration")]
    #[schema(value_type = String, default = "0s", example = "0s")]
    pub destroy_delay: Duration,
    /// How many retained or failed revisions are kept as config (default 10).
    pub retained: u32,
    /// Answer with the maintenance page while a rollout runs (default false).
    pub maintenance_during_deploy: bool,
    /// After the strategy reports success, how long the host watches the new revision before
    /// recording it: an instance that crashes or stops being ready meanwhile fails the
    /// rollout, which is rolled back (default 10 s; `"0s"` turns it off).
    #[serde(with = "duration")]
    #[schema(value_type = String, default = "10s", example = "10s")]
    pub soak: Duration,
}

/// A parsed module reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModuleRef {
    /// `builtin:NAME`: a strategy compiled into the runner.
    Builtin(String),
    /// `NAME`: the latest upload under that name.
    Named(String),
    /// `NAME@sha256:<hex>`: exactly that upload.
    Pinned {
        /// The upload's name.
        name: String,
        /// `sha256:` followed by 64 lowercase hex digits.
        digest: String,
    },
}

/// A parsed hook grant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `exec`: the hook may run commands.
    Exec,
    /// `http:<host>`: the hook may make HTTP requests to this host (and optional port).
    Http {
        /// Lowercase host name or IPv4 address, optionally with `:port`.
        host: String,
    },
}

/// Where a `secret-env` value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSource {
    /// `file:PATH`: the file's contents, one trailing newline dropped.
    File(PathBuf),
    /// `env:NAME`: a variable of the runner's own environment.
    Env(String),
}

/// Why a module reference or a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReferenceError {
    /// What is wrong with it.
    pub message: String,
    /// What to write instead.
    pub hint: String,
}

/// A spec that could not be read or breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Which stage refused it.
    pub kind: SpecErrorKind,
    /// The file it came from, when the caller said so with [`SpecError::with_path`].
    pub file: Option<PathBuf>,
    /// Where in the TOML text (JSON input has none).
    pub location: Option<Location>,
    /// The field concerned, e.g. `process.env.PORT`; empty for the spec as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// Which stage refused a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecErrorKind {
    /// The text is not TOML (a missing quote, a duplicated key …).
    Syntax,
    /// Valid TOML or JSON that does not fit the spec: an unknown or missing key, a wrong type,
    /// a malformed duration or address.
    Shape,
    /// Fits the spec but breaks one of its rules: a bad name, a number out of range, a
    /// reserved environment name, a bad module reference or grant.
    Invalid,
}

/// A 1-based line and column (in characters) in the TOML text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

/// Parses and validates a `slipway.toml`. Errors carry the line and column of the problem.
pub fn parse_toml(text: &str) -> Result<Spec, SpecError> {
    parse_toml_in(text, None)
}

/// Reads, parses and validates a spec file. Files it names (a Kubernetes `pod-template`) are
/// read relative to its directory and sent in their place, since the runner may not see them.
pub fn load_file(path: &Path) -> anyhow::Result<Spec> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_toml_in(&text, Some(base)).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

fn parse_toml_in(text: &str, base: Option<&Path>) -> Result<Spec, SpecError> {
    let document = toml::de::DeTable::parse(text).map_err(|error| {
        let message = error.message().trim_end().to_owned();
        let hint = syntax_hint(&message);
        SpecError::new(SpecErrorKind::Syntax, String::new(), message, hint)
            .at(text, error.span().map(|span| span.start))
    })?;
    let entries = toml_entries(document.get_ref());
    // The spec has no date or time fields; one in `params` would reach the strategy as
    // toml's private encoding, so it is refused here, where its position is known.
    if let Some(entry) = entries.iter().find(|entry| entry.is_datetime) {
        return Err(SpecError::new(
            SpecErrorKind::Shape,
            render_path(&entry.path),
            "dates and times are not used in a spec".into(),
            Some("write it as a string in double quotes".into()),
        )
        .at(text, Some(entry.value.start)));
    }
    let mut spec = Spec::deserialize(toml::de::Deserializer::from(document)).map_err(|error| {
        let span = error.span();
        let path = span.as_ref().map(|span| path_at(&entries, span)).unwrap_or_default();
        let at = span.map(|span| span.start);
        let message = plain(error.message().trim_end(), Format::Toml);
        let hint = shape_hint(&path, &message, Format::Toml);
        SpecError::new(SpecErrorKind::Shape, render_path(&path), message, hint).at(text, at)
    })?;
    if let (Some(base), Some(kube)) = (base, spec.kubernetes.as_mut())
        && let Some(Value::String(file)) = &kube.pod_template
    {
        kube.pod_template = Some(kubernetes::read_pod_template(base, file).map_err(|message| {
            let path = keys(&["kubernetes", "pod-template"]);
            SpecError::new(SpecErrorKind::Invalid, render_path(&path), message, None)
                .at(text, key_position(&entries, &path))
        })?);
    }
    check(&spec).map_err(|problem| {
        let at = key_position(&entries, &problem.path);
        problem.into_error().at(text, at)
    })?;
    Ok(spec)
}

/// Parses and validates a spec sent as JSON. Errors name the field, e.g. `process.env.PORT`.
pub fn parse_json(value: Value) -> Result<Spec, SpecError> {
    // serde_json reports where an error is only as a line and column of text. Laying the value
    // out with one key per line, and remembering each line's field, turns that into a path.
    let laid_out = LaidOut::new(&value);
    let spec: Spec = serde_json::from_str(&laid_out.text).map_err(|error| {
        let path = error
            .line()
            .checked_sub(1)
            .and_then(|line| laid_out.paths.get(line))
            .cloned()
            .unwrap_or_default();
        let message = error.to_string();
        let message = match message.rsplit_once(" at line ") {
            Some((message, _)) if error.line() > 0 => message.to_owned(),
            _ => message,
        };
        let message = plain(&message, Format::Json);
        let hint = shape_hint(&path, &message, Format::Json);
        SpecError::new(SpecErrorKind::Shape, render_path(&path), message, hint)
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Checks the rules a well-shaped spec must also follow.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    check(spec).map_err(Problem::into_error)
}

/// Applies an RFC 7386 JSON merge patch to the spec's JSON form, then parses and validates
/// the result: `{"process": {"env": {"VERSION": "v2"}}}` changes one variable, `null` removes
/// a key (so a defaulted field goes back to its default).
pub fn merge_patch(base: &Spec, patch: &Value) -> Result<Spec, SpecError> {
    let mut document = base.to_json();
    apply_merge_patch(&mut document, patch);
    parse_json(document)
}

/// Parses `builtin:NAME`, `NAME` or `NAME@sha256:<64 lowercase hex digits>`.
pub fn module_ref(reference: &str) -> Result<ModuleRef, ReferenceError> {
    const FORMS: &str = "use builtin:NAME, NAME or NAME@sha256:<64 hex digits>, e.g. \"builtin:rolling\"";
    let bad = |message: String| ReferenceError {
        message,
        hint: FORMS.to_owned(),
    };
    if reference.is_empty() {
        return Err(bad("the module reference is empty".into()));
    }
    if let Some(name) = reference.strip_prefix("builtin:") {
        check_module_in(reference, name).map_err(bad)?;
        return Ok(ModuleRef::Builtin(name.to_owned()));
    }
    if let Some((name, digest)) = reference.split_once('@') {
        check_module_in(reference, name).map_err(bad)?;
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ReferenceError {
                message: format!("`{digest}` in `{reference}` is not a sha256 digest"),
                hint: "pin a module as NAME@sha256:<64 lowercase hex digits>, as its upload reported".into(),
            });
        }
        return Ok(ModuleRef::Pinned {
            name: name.to_owned(),
            digest: digest.to_owned(),
        });
    }
    if let Some((scheme, _)) = reference.split_once(':') {
        let hint = match suggest(scheme, ["builtin"]) {
            Some(guess) => format!("did you mean `{guess}:{}`?", &reference[scheme.len() + 1..]),
            None => FORMS.to_owned(),
        };
        return Err(ReferenceError {
            message: format!("`{scheme}:` in `{reference}` is not a kind of module reference"),
            hint,
        });
    }
    check_module_in(reference, reference).map_err(bad)?;
    Ok(ModuleRef::Named(reference.to_owned()))
}

/// Parses a hook grant: `exec` or `http:<host>` (a lowercase host, optionally with `:port`).
pub fn grant(text: &str) -> Result<Grant, ReferenceError> {
    if text == "exec" {
        return Ok(Grant::Exec);
    }
    if let Some(host) = text.strip_prefix("http:") {
        return if valid_host(host) {
            Ok(Grant::Http { host: host.to_owned() })
        } else {
            Err(ReferenceError {
                message: format!("`{host}` in grant `{text}` is not a host name"),
                hint: "name one host in lowercase, optionally with a port, e.g. \"http:db.internal:8080\"; no scheme or path".into(),
            })
        };
    }
    let hint = match suggest(text, ["exec", "http:<host>"]) {
        Some(guess) => format!("did you mean `{guess}`?"),
        None => "the grants are \"exec\" and \"http:<host>\"".to_owned(),
    };
    Err(ReferenceError {
        message: format!("unknown grant `{text}`"),
        hint,
    })
}

/// Parses a strategy grant: `prometheus:http://HOST[:PORT][/PATH]`, the Prometheus its
/// `metrics.query-prometheus` calls go to. Returns the base URL.
pub fn strategy_grant(text: &str) -> Result<String, ReferenceError> {
    const FORM: &str =
        "grant a Prometheus as \"prometheus:http://HOST:PORT\", e.g. \"prometheus:http://prometheus.monitoring:9090\"";
    let Some(url) = text.strip_prefix("prometheus:") else {
        return Err(ReferenceError {
            message: format!("unknown strategy grant `{text}`"),
            hint: FORM.into(),
        });
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(ReferenceError {
            message: format!("`{url}` in grant `{text}` is not an http:// URL"),
            hint: format!("{FORM}; https is not supported yet"),
        });
    };
    let host = rest.split('/').next().unwrap_or_default();
    if !valid_host(host) || url.contains(char::is_whitespace) || url.contains(['?', '#']) {
        return Err(ReferenceError {
            message: format!("`{url}` in grant `{text}` is not a Prometheus base URL"),
            hint: format!("{FORM}: a lowercase host, optionally a port and a path, no query"),
        });
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Parses a `secret-env` value: `file:/absolute/path` or `env:NAME`.
pub fn secret_source(text: &str) -> Result<SecretSource, ReferenceError> {
    const FORMS: &str =
        "write file:/run/secrets/NAME to read a file, or env:NAME to take a variable from the runner's environment";
    if let Some(path) = text.strip_prefix("file:") {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(ReferenceError {
                message: format!("`{path}` in `{text}` is not an absolute path"),
                hint: FORMS.into(),
            });
        }
        return Ok(SecretSource::File(PathBuf::from(path)));
    }
    if let Some(name) = text.strip_prefix("env:") {
        if !valid_env_name(name) {
            return Err(ReferenceError {
                message: format!("`{name}` in `{text}` is not an environment variable name"),
                hint: FORMS.into(),
            });
        }
        return Ok(SecretSource::Env(name.to_owned()));
    }
    Err(ReferenceError {
        message: "a secret-env value is a reference to the secret, not the secret itself".into(),
        hint: FORMS.into(),
    })
}

/// Checks a module name: 1 to 63 lowercase letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit. The one rule for uploads and for references in specs; a name is never a
/// path.
pub fn check_module_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a module name: use 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

impl Spec {
    /// The spec's JSON form, as the HTTP API sends it.
    pub fn to_json(&self) -> Value {
        // Every field is a string, number, bool, list or string-keyed map, so this cannot fail.
        serde_json::to_value(self).expect("a spec always has a JSON form")
    }

    /// `sha256:<hex>` of the spec's canonical JSON (keys sorted at every level, no spaces):
    /// equal specs have equal digests, whatever order their keys were written in.
    pub fn digest(&self) -> String {
        let mut canonical = String::new();
        write_canonical(&self.to_json(), &mut canonical);
        format!("sha256:{}", hex::encode(Sha256::digest(canonical.as_bytes())))
    }
}

impl Probe {
    /// What this probe checks.
    pub fn kind(&self) -> ProbeKind<'_> {
        match &self.http {
            Some(path) => ProbeKind::Http {
                path,
                status: self.status,
            },
            None => ProbeKind::Tcp,
        }
    }
}

impl Hooks {
    /// The hooks that are set, with their point's name (`pre`, `mid`, `post`, `rollback`).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        [
            ("pre", &self.pre),
            ("mid", &self.mid),
            ("post", &self.post),
            ("rollback", &self.rollback),
        ]
        .into_iter()
        .filter_map(|(point, hook)| hook.as_ref().map(|hook| (point, hook)))
    }

    /// The hook at the point named `point`, set or not; `None` for a name that is no point.
    pub fn at_mut(&mut self, point: &str) -> Option<&mut Option<Hook>> {
        match point {
            "pre" => Some(&mut self.pre),
            "mid" => Some(&mut self.mid),
            "post" => Some(&mut self.post),
            "rollback" => Some(&mut self.rollback),
            _ => None,
        }
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            http: None,
            tcp: None,
            status: 200,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            module: "builtin:rolling".into(),
            params: Map::new(),
            grants: Vec::new(),
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            progress_deadline: Duration::from_secs(600),
            auto_rollback: true,
            destroy_delay: Duration::ZERO,
            retained: 10,
            maintenance_during_deploy: false,
            soak: DEFAULT_SOAK,
        }
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleRef::Builtin(name) => write!(f, "builtin:{name}"),
            ModuleRef::Named(name) => f.write_str(name),
            ModuleRef::Pinned { name, digest } => write!(f, "{name}@{digest}"),
        }
    }
}

impl SpecError {
    /// Names the file the TOML came from, so the message reads `slipway.toml:7:12: …`.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        self.file = Some(path.as_ref().to_owned());
        self
    }

    fn new(kind: SpecErrorKind, field: String, message: String, hint: Option<String>) -> Self {
        SpecError {
            kind,
            file: None,
            location: None,
            field,
            message,
            hint,
        }
    }

    fn at(mut self, text: &str, offset: Option<usize>) -> Self {
        self.location = offset.map(|offset| location(text, offset));
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        if let Some(Location { line, column }) = self.location {
            write!(f, "{line}:{column}:")?;
        }
        if self.file.is_some() || self.location.is_some() {
            f.write_str(" ")?;
        }
        // With a position the field is plain to see; without one, it is the only pointer.
        if self.location.is_none() && !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Durations as `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"` or a whole number of seconds;
/// written back in the shortest exact unit. Use with `#[serde(with = "duration")]`.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    /// The longest duration a spec may hold: a year. Longer ones are surely typos, and they
    /// would overflow clock arithmetic in places.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    /// What a duration looks like, for hints.
    pub const HINT: &str = "durations look like \"30s\", \"500ms\", \"5m\" or \"1h\", or a whole number of seconds";

    /// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"` or a sequence of them like `"1m30s"`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        if text.is_empty() {
            return Err("an empty string is not a duration".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("duration \"{text}\" has no unit"));
        }
        let not_a_duration = || format!("\"{text}\" is not a duration");
        let mut total: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let letters = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
            if digits == 0 || letters == 0 {
                return Err(not_a_duration());
            }
            let number: u128 = rest[..digits].parse().map_err(|_| not_a_duration())?;
            let unit_millis = match &rest[digits..digits + letters] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(not_a_duration()),
            };
            total = number
                .checked_mul(unit_millis)
                .and_then(|millis| total.checked_add(millis))
                .ok_or_else(|| too_long(text))?;
            rest = &rest[digits + letters..];
        }
        if total > MAX.as_millis() {
            return Err(too_long(text));
        }
        // `total` is at most a year of milliseconds, well inside u64.
        Ok(Duration::from_millis(total as u64))
    }

    /// The shortest exact form: `"10m"`, `"90s"`, `"1500ms"`, `"0s"`. Sub-millisecond parts,
    /// which no spec can express, are dropped.
    pub fn format(duration: Duration) -> String {
        let millis = duration.as_millis();
        match millis {
            0 => "0s".to_owned(),
            _ if millis.is_multiple_of(3_600_000) => format!("{}h", millis / 3_600_000),
            _ if millis.is_multiple_of(60_000) => format!("{}m", millis / 60_000),
            _ if millis.is_multiple_of(1_000) => format!("{}s", millis / 1_000),
            _ => format!("{millis}ms"),
        }
    }

    /// Writes the duration with [`format`].
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*duration))
    }

    /// Reads a duration string or a whole number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    fn too_long(text: &str) -> String {
        format!("duration \"{text}\" is longer than a year")
    }

    struct DurationVisitor;

    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\" or \"500ms\", or a whole number of seconds")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            let duration = Duration::from_secs(seconds);
            if duration > MAX {
                return Err(E::custom(format!(
                    "duration of {seconds} seconds is longer than a year"
                )));
            }
            Ok(duration)
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            match u64::try_from(seconds) {
                Ok(seconds) => self.visit_u64(seconds),
                Err(_) => Err(E::custom(format!("a duration cannot be negative, got {seconds}"))),
            }
        }
    }
}

// ---- defaults ----

fn default_replicas() -> u32 {
    1
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

// ---- validation ----

/// One step of a field path: a key or a list index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A broken rule, before it is placed in the text.
struct Problem {
    path: Vec<Segment>,
    message: String,
    hint: String,
}

impl Problem {
    fn into_error(self) -> SpecError {
        SpecError::new(
            SpecErrorKind::Invalid,
            render_path(&self.path),
            self.message,
            Some(self.hint),
        )
    }
}

fn problem(path: Vec<Segment>, message: impl Into<String>, hint: impl Into<String>) -> Result<(), Problem> {
    Err(Problem {
        path,
        message: message.into(),
        hint: hint.into(),
    })
}

fn keys(keys: &[&str]) -> Vec<Segment> {
    keys.iter().map(|key| Segment::Key((*key).to_owned())).collect()
}

/// Checks the rules in the order the fields appear in a file, and stops at the first.
fn check(spec: &Spec) -> Result<(), Problem> {
    if !valid_name(&spec.name) {
        problem(
            keys(&["name"]),
            format!("app name \"{}\" is not valid", spec.name),
            "use 1 to 63 lowercase letters, digits and hyphens, starting with a letter, e.g. \"hello\"",
        )?;
    }
    if spec.replicas > MAX_REPLICAS {
        problem(
            keys(&["replicas"]),
            format!("replicas is {}, more than the limit of {MAX_REPLICAS}", spec.replicas),
            format!("ask for 0 to {MAX_REPLICAS} replicas"),
        )?;
    }
    let given: Vec<&str> = [
        ("process", spec.process.is_some()),
        ("container", spec.container.is_some()),
        ("kubernetes", spec.kubernetes.is_some()),
    ]
    .into_iter()
    .filter_map(|(table, given)| given.then_some(table))
    .collect();
    match given.as_slice() {
        [] => problem(
            Vec::new(),
            "the spec says neither what program nor what image to run",
            "add a [process] table with command = \"path/to/program\", a [container] table with image = \"…\", or a [kubernetes] table",
        )?,
        [_] => {}
        [first, second, ..] => problem(
            keys(&[second]),
            format!("the spec has both a [{first}] and a [{second}] table"),
            "keep one: replicas run as local processes, as containers or as pods in Kubernetes",
        )?,
    }
    if let Some(process) = &spec.process {
        check_process(process)?;
    }
    if let Some(container) = &spec.container {
        check_container(container)?;
    }
    if let Some(kube) = &spec.kubernetes {
        kubernetes::check(&spec.name, kube)?;
    }
    check_listen_and_router(spec)?;
    check_probe(&spec.probe)?;
    if let Err(error) = module_ref(&spec.strategy.module) {
        problem(keys(&["strategy", "module"]), error.message, error.hint)?;
    }
    for (index, text) in spec.strategy.grants.iter().enumerate() {
        if let Err(error) = strategy_grant(text) {
            let mut path = keys(&["strategy", "grants"]);
            path.push(Segment::Index(index));
            problem(path, error.message, error.hint)?;
        }
    }
    for (point, hook) in spec.hooks.iter() {
        check_hook(point, hook)?;
    }
    let lifecycle = &spec.lifecycle;
    if lifecycle.progress_deadline.is_zero() {
        problem(
            keys(&["lifecycle", "progress-deadline"]),
            "progress-deadline is 0s, so every rollout would fail at once",
            "give rollouts time, e.g. \"600s\" (the default)",
        )?;
    }
    if lifecycle.retained > MAX_RETAINED {
        problem(
            keys(&["lifecycle", "retained"]),
            format!(
                "retained is {}, more than the limit of {MAX_RETAINED}",
                lifecycle.retained
            ),
            format!("keep 0 to {MAX_RETAINED} old revisions"),
        )?;
    }
    Ok(())
}

/// Local apps listen where the spec says; Kubernetes apps are routed by the cluster.
fn check_listen_and_router(spec: &Spec) -> Result<(), Problem> {
    use crate::driver::router::RouterKind;
    let router = &spec.router;
    if spec.kubernetes.is_some() {
        if spec.listen.is_some() {
            problem(
                keys(&["listen"]),
                "listen is given for a Kubernetes app, which the cluster routes",
                "remove listen; say how the cluster routes it in [router] (kind = \"service\" or \"gateway\")",
            )?;
        }
        match router.kind {
            RouterKind::Builtin | RouterKind::Haproxy => problem(
                keys(&["router", "kind"]),
                format!(
                    "a Kubernetes app is routed by the cluster, not by the {} router",
                    router.kind.as_str()
                ),
                "add [router] with kind = \"service\" (one Service across revisions: traffic follows ready pods) or kind = \"gateway\" with gateway = \"NAME\" (an HTTPRoute with exact weights)",
            )?,
            RouterKind::Gateway => match &router.gateway {
                None => problem(
                    keys(&["router", "gateway"]),
                    "kind = \"gateway\" names no Gateway",
                    "name the Gateway the app's HTTPRoute attaches to, e.g. gateway = \"public\" or \"infra/public\"",
                )?,
                Some(gateway) if !gateway_ref_valid(gateway) => problem(
                    keys(&["router", "gateway"]),
                    format!("{gateway:?} is not a Gateway name"),
                    "write NAME or NAMESPACE/NAME, e.g. \"infra/public\"",
                )?,
                Some(_) => {}
            },
            RouterKind::Service => {}
        }
    } else {
        match spec.listen {
            None if router.hosts.is_empty() => problem(
                keys(&["listen"]),
                "the spec says nowhere to listen: listen is missing",
                "add listen = \"127.0.0.1:8080\" at the top of the file, or name the app's hosts in [router] to share the runner's front door (port 80 and 443 by default)",
            )?,
            None => {}
            Some(listen) if listen.port() == 0 => problem(
                keys(&["listen"]),
                format!("listen address {listen} has no fixed port"),
                "give the router a port to listen on, e.g. \"127.0.0.1:8080\"",
            )?,
            Some(_) => {}
        }
        if matches!(router.kind, RouterKind::Gateway | RouterKind::Service) {
            problem(
                keys(&["router", "kind"]),
                format!(
                    "kind = \"{}\" routes Kubernetes apps, and this app runs here",
                    router.kind.as_str()
                ),
                "use kind = \"builtin\" or \"haproxy\", or run the app in a cluster with a [kubernetes] table",
            )?;
        }
    }
    let gateway_only = [
        ("gateway", router.gateway.is_some()),
        ("section", router.section.is_some()),
    ];
    if router.kind != RouterKind::Gateway
        && let Some((field, _)) = gateway_only.iter().find(|(_, given)| *given)
    {
        problem(
            keys(&["router", field]),
            format!("{field} is only for kind = \"gateway\""),
            "remove it, or route the app through a Gateway with kind = \"gateway\"",
        )?;
    }
    if !router.hosts.is_empty() && router.kind == RouterKind::Service {
        problem(
            keys(&["router", "hosts"]),
            "hosts is for kind = \"builtin\", \"haproxy\" or \"gateway\"; the service router does not route by host name",
            "remove it, or use kind = \"gateway\" to route the app by host name",
        )?;
    }
    let builtin_only = [
        ("tls", router.tls.is_some() && router.kind != RouterKind::Haproxy),
        (
            "redirect-https",
            router.redirect_https && router.kind != RouterKind::Haproxy,
        ),
        ("max-header-size", router.max_header_size.is_some()),
        ("max-body-size", router.max_body_size.is_some()),
        ("max-connections", router.max_connections.is_some()),
        ("header-timeout", router.header_timeout.is_some()),
        ("access-log", router.access_log),
        ("h2c", router.h2c),
        ("instance-protocol", !router.instance_protocol.is_default()),
    ];
    if router.path_prefix.is_some() && !matches!(router.kind, RouterKind::Builtin | RouterKind::Haproxy) {
        problem(
            keys(&["router", "path-prefix"]),
            format!(
                "path-prefix is for kind = \"builtin\" or \"haproxy\", not {}",
                router.kind.as_str()
            ),
            "remove it, or route the app with the built-in router or HAProxy",
        )?;
    }
    if router.kind != RouterKind::Builtin
        && let Some((field, _)) = builtin_only.iter().find(|(_, given)| *given)
    {
        problem(
            keys(&["router", field]),
            format!("{field} is only for kind = \"builtin\""),
            "remove it, or route the app with the built-in router",
        )?;
    }
    if let Some(prefix) = &router.path_prefix
        && (!prefix.starts_with('/') || prefix.contains(['?', '#', ' ', '*']))
    {
        problem(
            keys(&["router", "path-prefix"]),
            format!("{prefix:?} is not a path prefix"),
            "write a path such as \"/api\": it starts with / and has no query, fragment, spaces or wildcards",
        )?;
    }
    if let Some(tls) = &router.tls {
        if let Some(https) = tls.listen
            && https.port() == 0
        {
            problem(
                keys(&["router", "tls", "listen"]),
                format!("the HTTPS address {https} has no fixed port"),
                "give it a port, e.g. \"0.0.0.0:443\"",
            )?;
        }
        if let Some(https) = tls.listen
            && spec.listen == Some(https)
        {
            problem(
                keys(&["router", "tls", "listen"]),
                format!("{https} is both listen (plain HTTP) and the HTTPS address"),
                "serve HTTPS on another port, e.g. listen = \"0.0.0.0:80\" and tls.listen = \"0.0.0.0:443\"",
            )?;
        }
        match (&tls.cert, &tls.key, tls.acme) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (Some(_), Some(_), true) => problem(
                keys(&["router", "tls", "acme"]),
                "acme = true and a certificate from files (cert and key) are both given",
                "keep either acme = true (the runner obtains the certificate) or cert and key",
            )?,
            (None, None, false) => problem(
                keys(&["router", "tls"]),
                "[router.tls] has no certificate: neither cert and key nor acme = true",
                "add acme = true to obtain one from Let's Encrypt (or the runner's ACME directory), or cert and key files",
            )?,
            (cert, _, _) => problem(
                keys(&["router", "tls", if cert.is_some() { "key" } else { "cert" }]),
                "a certificate from files needs both cert and key",
                "give the certificate chain as cert and its private key as key (PEM files)",
            )?,
        }
        if tls.acme {
            if router.hosts.is_empty() {
                problem(
                    keys(&["router", "tls", "acme"]),
                    "acme = true needs the host names to certify, and [router] hosts is empty",
                    "list the app's public names, e.g. hosts = [\"shop.example.com\"]",
                )?;
            }
            if let Some(wildcard) = router.hosts.iter().find(|h| h.starts_with("*.")) {
                problem(
                    keys(&["router", "hosts"]),
                    format!("{wildcard} cannot be certified over HTTP-01, which proves one name at a time"),
                    "list each name the app serves, or give a wildcard certificate from files (cert and key)",
                )?;
            }
        }
        for (field, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            let Some(path) = path else { continue };
            if !path.is_absolute() {
                problem(
                    keys(&["router", "tls", field]),
                    format!("{} is not an absolute path", path.display()),
                    "the data plane reads it from its own directory: write the full path, e.g. \"/etc/slipway/tls/shop.pem\"",
                )?;
            }
        }
    }
    if let Some(text) = &router.max_header_size {
        match bytes(text) {
            Ok(size) if (8 << 10..=1 << 20).contains(&size) => {}
            Ok(_) => problem(
                keys(&["router", "max-header-size"]),
                format!("max-header-size {text:?} is out of range"),
                "allow from \"8KiB\" to \"1MiB\"; \"64KiB\" (the default) fits every browser",
            )?,
            Err(error) => problem(
                keys(&["router", "max-header-size"]),
                error,
                "write a size such as \"64KiB\"",
            )?,
        }
    }
    if let Some(text) = &router.max_body_size
        && let Err(error) = bytes(text)
    {
        problem(
            keys(&["router", "max-body-size"]),
            error,
            "write a size such as \"10MiB\", or leave it out for no limit",
        )?;
    }
    if let Some(count) = router.max_connections
        && !(1..=100_000).contains(&count)
    {
        problem(
            keys(&["router", "max-connections"]),
            format!("max-connections {count} is out of range"),
            "allow from 1 to 100000 client connections per listener (default 8192)",
        )?;
    }
    if let Some(text) = &router.header_timeout {
        match duration::parse(text) {
            Ok(timeout) if (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&timeout) => {}
            Ok(_) => problem(
                keys(&["router", "header-timeout"]),
                format!("header-timeout {text:?} is out of range"),
                "give clients from \"1s\" to \"10m\" to send a request's head (default \"30s\")",
            )?,
            Err(error) => problem(keys(&["router", "header-timeout"]), error, duration::HINT)?,
        }
    }
    if router.redirect_https && router.tls.is_none() {
        problem(
            keys(&["router", "redirect-https"]),
            "redirect-https is set but the app has no [router.tls] to redirect to",
            "add [router.tls] with listen and acme = true (or cert and key), or remove redirect-https",
        )?;
    }
    for (index, host) in router.hosts.iter().enumerate() {
        let name = host.strip_prefix("*.").unwrap_or(host);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !valid {
            let mut path = keys(&["router", "hosts"]);
            path.push(Segment::Index(index));
            problem(
                path,
                format!("{host:?} is not a host name"),
                "write a lowercase DNS name such as \"shop.example.com\" or \"*.example.com\"",
            )?;
        }
    }
    Ok(())
}

fn gateway_ref_valid(text: &str) -> bool {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    };
    match text.split_once('/') {
        Some((namespace, name)) => label(namespace) && label(name),
        None => label(text),
    }
}

fn check_process(process: &Process) -> Result<(), Problem> {
    if process.command.trim().is_empty() {
        problem(
            keys(&["process", "command"]),
            "command is empty",
            "name the program to run, e.g. command = \"target/debug/hello\"",
        )?;
    }
    if process.command.contains('\0') {
        problem(
            keys(&["process", "command"]),
            "command contains a NUL character",
            "remove it",
        )?;
    }
    for (index, arg) in process.args.iter().enumerate() {
        if arg.contains('\0') {
            let mut path = keys(&["process", "args"]);
            path.push(Segment::Index(index));
            problem(path, format!("argument {index} contains a NUL character"), "remove it")?;
        }
    }
    check_env("process", &process.env, &process.secret_env)?;
    if let Some(workdir) = &process.workdir
        && (workdir.is_empty() || workdir.contains('\0'))
    {
        problem(
            keys(&["process", "workdir"]),
            "workdir is empty or contains a NUL character",
            "leave workdir out to run where slipway serve runs, or name a directory such as \".\"",
        )?;
    }
    if process.grace_period > duration::MAX {
        problem(
            keys(&["process", "grace-period"]),
            "grace-period is longer than a year",
            duration::HINT,
        )?;
    }
    Ok(())
}

fn check_container(container: &Container) -> Result<(), Problem> {
    let image = &container.image;
    if image.trim().is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problem(
            keys(&["container", "image"]),
            format!("{image:?} is not an image reference"),
            "name an image, e.g. image = \"ghcr.io/acme/shop:2.1\" or \"nginx:1.27\"",
        )?;
    }
    for (field, list) in [("command", &container.command), ("args", &container.args)] {
        let Some(list) = list else { continue };
        if field == "command" && list.is_empty() {
            problem(
                keys(&["container", field]),
                "command is an empty list",
                "leave command out to run the image's entrypoint, or name the program, e.g. [\"/app/shop\"]",
            )?;
        }
        if let Some(index) = list.iter().position(|a| a.contains('\0')) {
            let mut path = keys(&["container", field]);
            path.push(Segment::Index(index));
            problem(
                path,
                format!("{field} item {index} contains a NUL character"),
                "remove it",
            )?;
        }
    }
    check_env("container", &container.env, &container.secret_env)?;
    match (container.network, container.port) {
        (ContainerNetwork::Bridge, None) => problem(
            keys(&["container", "port"]),
            "the container's port is not given",
            "say which port the app listens on inside the container, e.g. port = 8080 (it is published on 127.0.0.1), or use network = \"host\" and have the app listen on the PORT Slipway gives it",
        )?,
        (ContainerNetwork::Bridge, Some(0)) => problem(
            keys(&["container", "port"]),
            "port 0 is not a port an app listens on",
            "give the port the app listens on inside the container, e.g. port = 8080",
        )?,
        (ContainerNetwork::Host, Some(port)) => problem(
            keys(&["container", "port"]),
            format!(
                "port = {port} with network = \"host\": on the host network each replica listens on the PORT Slipway gives it"
            ),
            "remove port, or use network = \"bridge\" to publish a fixed port",
        )?,
        _ => {}
    }
    if let Some(memory) = &container.memory
        && let Err(message) = bytes(memory)
    {
        problem(
            keys(&["container", "memory"]),
            message,
            "write a size such as \"512MiB\" or \"2GiB\"",
        )?;
    }
    if let Some(cpus) = container.cpus
        && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
    {
        problem(
            keys(&["container", "cpus"]),
            format!("cpus = {cpus} is not a CPU limit"),
            "give a number of cores above 0, e.g. cpus = 0.5 or cpus = 2",
        )?;
    }
    for (index, volume) in container.volumes.iter().enumerate() {
        let mut path = keys(&["container", "volumes"]);
        path.push(Segment::Index(index));
        let parts: Vec<&str> = volume.split(':').collect();
        let valid = matches!(parts.len(), 2 | 3)
            && !parts[0].is_empty()
            && parts[1].starts_with('/')
            && parts
                .get(2)
                .is_none_or(|o| o.split(',').all(|o| matches!(o, "ro" | "rw" | "z" | "Z")))
            && !volume.contains('\0');
        if !valid {
            problem(
                path,
                format!("{volume:?} is not a volume"),
                "write SOURCE:TARGET[:ro], e.g. \"/srv/shop:/data:ro\" or \"shop-cache:/cache\", with TARGET an absolute path in the container",
            )?;
        }
    }
    if container.grace_period > duration::MAX {
        problem(
            keys(&["container", "grace-period"]),
            "grace-period is longer than a year",
            duration::HINT,
        )?;
    }
    Ok(())
}

/// Reads a size such as `"512MiB"`, `"2GiB"`, `"64m"` or `"1048576"` (bytes).
pub fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "K" | "k" | "KB" | "kb" => 1 << 10,
        "MiB" | "M" | "m" | "MB" | "mb" => 1 << 20,
        "GiB" | "G" | "g" | "GB" | "gb" => 1 << 30,
        other => return Err(format!("{other:?} in {text:?} is not a size unit")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: it should start with a whole number"))?;
    match number.checked_mul(unit_bytes) {
        Some(0) => Err(format!("{text:?} is no memory at all")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

/// Checks `env` and `secret-env` of the table `table` (`process` or `container`).
fn check_env(
    table: &str,
    env: &BTreeMap<String, String>,
    secret_env: &BTreeMap<String, String>,
) -> Result<(), Problem> {
    for (name, value) in env {
        let path = keys(&[table, "env", name]);
        if name == "PORT" {
            problem(
                path,
                "`PORT` is reserved: Slipway sets it to each replica's own port",
                format!("remove PORT from [{table}] env and have the app read the PORT Slipway gives it"),
            )?;
        } else if name.starts_with("SLIPWAY_") {
            problem(
                path,
                format!("`{name}` is reserved: names starting with SLIPWAY_ belong to Slipway"),
                "rename the variable",
            )?;
        } else if !valid_env_name(name) {
            problem(
                path,
                format!("`{name}` is not an environment variable name"),
                "use letters, digits and underscores, not starting with a digit, e.g. VERSION",
            )?;
        } else if value.contains('\0') {
            problem(
                path,
                format!("the value of `{name}` contains a NUL character"),
                "remove it",
            )?;
        }
    }
    for (name, reference) in secret_env {
        let path = keys(&[table, "secret-env", name]);
        if name == "PORT" || name.starts_with("SLIPWAY_") || !valid_env_name(name) {
            problem(
                path,
                format!("`{name}` cannot be a secret: it is reserved or not an environment variable name"),
                "use letters, digits and underscores, not starting with a digit; PORT and SLIPWAY_* are Slipway's",
            )?;
        } else if env.contains_key(name) {
            problem(
                path,
                format!("`{name}` is in both env and secret-env"),
                "keep it in secret-env only, so its value is never stored",
            )?;
        } else if let Err(error) = secret_source(reference) {
            problem(path, error.message, error.hint)?;
        }
    }
    Ok(())
}

fn check_probe(probe: &Probe) -> Result<(), Problem> {
    match (&probe.http, probe.tcp) {
        (Some(_), Some(true)) => problem(
            keys(&["probe", "tcp"]),
            "the probe sets both http and tcp",
            "keep http = \"/healthz\" for an HTTP probe or tcp = true for a TCP connect, not both",
        )?,
        (None, Some(false)) => problem(
            keys(&["probe", "tcp"]),
            "tcp = false leaves the probe with nothing to check",
            "remove tcp for a TCP connect probe, or set http = \"/healthz\" for an HTTP one",
        )?,
        _ => {}
    }
    if let Some(path) = &probe.http
        && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        problem(
            keys(&["probe", "http"]),
            format!("probe path \"{path}\" is not a request path"),
            "write the path only, starting with /, e.g. \"/healthz\"",
        )?;
    }
    if !(100..=599).contains(&probe.status) {
        problem(
            keys(&["probe", "status"]),
            format!("{} is not an HTTP status code", probe.status),
            "use a status from 100 to 599, e.g. 200",
        )?;
    }
    for (key, value) in [("interval", probe.interval), ("timeout", probe.timeout)] {
        if value.is_zero() {
            problem(
                keys(&["probe", key]),
                format!("probe {key} is 0s"),
                "use a positive duration, e.g. \"1s\"",
            )?;
        }
    }
    for (key, value) in [
        ("success-threshold", probe.success_threshold),
        ("failure-threshold", probe.failure_threshold),
    ] {
        if !(1..=MAX_THRESHOLD).contains(&value) {
            problem(
                keys(&["probe", key]),
                format!("{key} is {value}"),
                format!("use a count from 1 to {MAX_THRESHOLD}"),
            )?;
        }
    }
    Ok(())
}

fn check_hook(point: &str, hook: &Hook) -> Result<(), Problem> {
    if let Err(error) = module_ref(&hook.module) {
        problem(keys(&["hooks", point, "module"]), error.message, error.hint)?;
    }
    if hook.timeout.is_zero() {
        problem(
            keys(&["hooks", point, "timeout"]),
            format!("the {point} hook's timeout is 0s"),
            "give the hook time to run, e.g. \"60s\" (the default)",
        )?;
    }
    for (index, text) in hook.grants.iter().enumerate() {
        if let Err(error) = grant(text) {
            let mut path = keys(&["hooks", point, "grants"]);
            path.push(Segment::Index(index));
            problem(path, error.message, error.hint)?;
        }
    }
    Ok(())
}

/// App names: `^[a-z][a-z0-9-]{0,62}$`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_module_in(reference: &str, name: &str) -> Result<(), String> {
    check_module_name(name).map_err(|_| format!("`{name}` in module reference `{reference}` is not a module name"))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && matches!(port.parse::<u16>(), Ok(1..))
    });
    name_ok && port_ok
}

// ---- where errors are ----

/// One key (or list item) of the TOML document and where its key and value are.
struct TomlEntry {
    path: Vec<Segment>,
    key: Range<usize>,
    value: Range<usize>,
    is_datetime: bool,
}

fn toml_entries(table: &toml::de::DeTable<'_>) -> Vec<TomlEntry> {
    fn table_entries(table: &toml::de::DeTable<'_>, path: &mut Vec<Segment>, out: &mut Vec<TomlEntry>) {
        for (key, value) in table.iter() {
            path.push(Segment::Key(key.get_ref().to_string()));
            entry(key.span(), value, path, out);
            path.pop();
        }
    }
    fn entry(
        key: Range<usize>,
        value: &toml::Spanned<toml::de::DeValue<'_>>,
        path: &mut Vec<Segment>,
        out: &mut Vec<TomlEntry>,
    ) {
        out.push(TomlEntry {
            path: path.clone(),
            key,
            value: value.span(),
            is_datetime: matches!(value.get_ref(), toml::de::DeValue::Datetime(_)),
        });
        match value.get_ref() {
            toml::de::DeValue::Table(table) => table_entries(table, path, out),
            toml::de::DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    path.push(Segment::Index(index));
                    entry(item.span(), item, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    table_entries(table, &mut Vec::new(), &mut out);
    out
}

/// The deepest field whose key or value covers `span`. A missing-field error spans its
/// whole table, so it lands on that table; on the root toml gives an empty span.
fn path_at(entries: &[TomlEntry], span: &Range<usize>) -> Vec<Segment> {
    if span.is_empty() {
        return Vec::new();
    }
    let covers = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end;
    entries
        .iter()
        .filter(|entry| covers(&entry.key) || covers(&entry.value))
        .max_by_key(|entry| (entry.path.len(), std::cmp::Reverse(entry.value.len())))
        .map(|entry| entry.path.clone())
        .unwrap_or_default()
}

/// Where the key for `path` starts, or that of its nearest ancestor written in the file.
fn key_position(entries: &[TomlEntry], path: &[Segment]) -> Option<usize> {
    (1..=path.len())
        .rev()
        .find_map(|len| entries.iter().find(|entry| entry.path == path[..len]))
        .map(|entry| entry.key.start)
}

fn location(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    // A spec file beyond four billion lines or columns is not worth a wider type.
    let count = |n: usize| u32::try_from(n + 1).unwrap_or(u32::MAX);
    Location {
        line: count(before.matches('\n').count()),
        column: count(before[line_start..].chars().count()),
    }
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if bare {
                    out.push_str(key);
                } else {
                    out.push_str(&Value::String(key.clone()).to_string());
                }
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// A JSON value written with one key or item per line, and the field each line belongs to.
struct LaidOut {
    text: String,
    paths: Vec<Vec<Segment>>,
}

impl LaidOut {
    fn new(value: &Value) -> LaidOut {
        let mut lines = Vec::new();
        lay_out(value, String::new(), &mut Vec::new(), &mut lines);
        let (lines, paths): (Vec<String>, Vec<Vec<Segment>>) = lines.into_iter().unzip();
        LaidOut {
            text: lines.join("\n"),
            paths,
        }
    }
}

fn lay_out(value: &Value, lead: String, path: &mut Vec<Segment>, lines: &mut Vec<(String, Vec<Segment>)>) {
    let children: Vec<(Segment, String, &Value)> = match value {
        Value::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(key, value)| {
                (
                    Segment::Key(key.clone()),
                    format!("{}: ", Value::String(key.clone())),
                    value,
                )
            })
            .collect(),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(index, item)| (Segment::Index(index), String::new(), item))
            .collect(),
        scalar => {
            lines.push((format!("{lead}{scalar}"), path.clone()));
            return;
        }
    };
    let (open, close) = if value.is_object() { ('{', '}') } else { ('[', ']') };
    lines.push((format!("{lead}{open}"), path.clone()));
    let count = children.len();
    for (index, (segment, lead, child)) in children.into_iter().enumerate() {
        path.push(segment);
        lay_out(child, lead, path, lines);
        path.pop();
        if index + 1 < count
            && let Some((last, _)) = lines.last_mut()
        {
            last.push(',');
        }
    }
    lines.push((close.to_string(), path.clone()));
}

// ---- hints ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Json,
}

fn syntax_hint(message: &str) -> Option<String> {
    let hint = if message.contains("duplicate key") {
        "each key may appear once per table; remove or merge the repeated one"
    } else if message.contains("invalid string") || message.contains("invalid unquoted") || message.contains("string") {
        "strings need double quotes, e.g. name = \"hello\""
    } else {
        "see https://toml.io for the syntax; every line is `key = value` or a [table] header"
    };
    Some(hint.to_owned())
}

/// What to do about a shape error, from serde's message and the field it concerns.
fn shape_hint(path: &[Segment], message: &str, format: Format) -> Option<String> {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let (unknown, candidates) = quoted.split_first()?;
        let top_level = ["name", "replicas", "listen"];
        if message.starts_with("unknown field") && path.len() > 1 && top_level.contains(unknown) {
            return Some(match format {
                Format::Toml => format!("`{unknown}` is a top-level key: move it above the first [table] header"),
                Format::Json => format!("`{unknown}` is a top-level key of the spec"),
            });
        }
        return Some(match suggest(unknown, candidates.iter().copied()) {
            Some(guess) => format!("did you mean `{guess}`?"),
            None if message.starts_with("unknown field") => "remove it, or use one of the keys listed".into(),
            None => "use one of the values listed".into(),
        });
    }
    if message.starts_with("missing field") {
        let missing = quoted.first()?;
        return Some(missing_hint(path, missing, format));
    }
    if message.contains("duration") {
        return Some(duration::HINT.to_owned());
    }
    if path.is_empty() && format == Format::Json && message.starts_with("invalid type") {
        return Some("send the spec as a JSON object with name, listen and process (or container)".into());
    }
    let mut named = path.iter().rev().filter_map(|segment| match segment {
        Segment::Key(key) => Some(key.as_str()),
        Segment::Index(_) => None,
    });
    let last = named.next().unwrap_or("");
    let parent = named.next().unwrap_or("");
    let hint = match (parent, last) {
        ("env", _) => "environment values are strings: quote them, e.g. VERSION = \"2\"",
        (_, "replicas") => "replicas is a whole number from 0 to 1000, without quotes",
        (_, "listen") => "listen is an IP address and port in quotes, e.g. \"127.0.0.1:8080\"",
        (_, "status") => "status is an HTTP status code such as 200, without quotes",
        (_, "success-threshold" | "failure-threshold") => "a whole number from 1 to 100, without quotes",
        (_, "retained") => "a whole number from 0 to 1000, without quotes",
        (_, "auto-rollback" | "maintenance-during-deploy" | "tcp") => "write true or false, without quotes",
        (_, "args" | "grants") => "a list of strings, e.g. [\"--verbose\"]",
        (_, "env") => "env maps names to strings, e.g. env = { VERSION = \"v1\" }",
        (_, "params") => "params is a table, e.g. params = { max-surge = \"25%\" }",
        (_, "policy") => "policy is \"abort\", \"retry\" or \"ignore\"",
        (
            _,
            "process" | "container" | "kubernetes" | "router" | "probe" | "strategy" | "hooks" | "lifecycle" | "pre"
            | "mid" | "post" | "rollback",
        ) => match format {
            Format::Toml => "this is a table: write it as a [header] with keys below it",
            Format::Json => "this is an object with keys of its own",
        },
        (_, "name" | "module" | "http" | "workdir" | "image" | "memory") => "write it as a string in double quotes",
        (_, "command") => match parent {
            "container" => "a list of strings, e.g. [\"/app/shop\"]",
            _ => "write it as a string in double quotes",
        },
        (_, "network") => "network is \"bridge\" or \"host\"",
        ("router", "kind") => "kind is \"builtin\" or \"haproxy\" (here), \"gateway\" or \"service\" (Kubernetes)",
        (_, "pull") => "pull is \"missing\", \"always\" or \"never\"",
        (_, "port") => "port is a whole number from 1 to 65535, without quotes",
        (_, "cpus") => "cpus is a number of cores, e.g. 0.5, without quotes",
        (_, "volumes") => "a list of strings, e.g. [\"/srv/shop:/data:ro\"]",
        _ => return None,
    };
    Some(hint.to_owned())
}

/// serde's messages in the spec's words: no Rust type names.
fn plain(message: &str, format: Format) -> String {
    let table = match format {
        Format::Toml => "a table",
        Format::Json => "an object",
    };
    // serde also reads a struct from a list of its fields in order; a short list is not
    // something a person means, so it reads as the type error it is.
    if message.starts_with("invalid length") && message.contains("expected struct ") {
        return format!("invalid type: list, expected {table}");
    }
    let mut out = message.replace("expected a map", &format!("expected {table}"));
    if let Some(start) = out.find("expected struct ") {
        let name_end = out[start + 16..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |end| start + 16 + end);
        out.replace_range(start..name_end, &format!("expected {table}"));
    }
    for number in ["u16", "u32", "u64"] {
        if out.ends_with(&format!("expected {number}")) {
            out.truncate(out.len() - number.len());
            out.push_str("a whole number");
        }
    }
    out
}

fn missing_hint(path: &[Segment], missing: &str, format: Format) -> String {
    let example = match missing {
        "name" => "\"my-app\"",
        "listen" => "\"127.0.0.1:8080\"",
        "command" => "\"path/to/program\"",
        "module" => "\"builtin:rolling\"",
        _ => "…",
    };
    let table = render_path(path);
    match (format, missing) {
        (Format::Toml, "process") => "add a [process] table with command = \"path/to/program\"".into(),
        (Format::Toml, _) if table.is_empty() => format!("add {missing} = {example} at the top of the file"),
        (Format::Toml, _) => format!("add {missing} = {example} under [{table}]"),
        (Format::Json, _) if table.is_empty() => format!("add \"{missing}\" to the spec"),
        (Format::Json, _) => format!("add \"{missing}\" to `{table}`"),
    }
}

/// The candidate closest to `word` (ignoring case and `_` for `-`), if it is close enough
/// to be a typo.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normal = word.to_ascii_lowercase().replace('_', "-");
    let allowed = if normal.chars().count() < 5 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&normal, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance with adjacent transpositions counted as one edit (`exce` → `exec`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i-2, i-1 and i of the table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 0..a.len() {
        let mut current = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let substitution = previous[j] + usize::from(a[i] != b[j]);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                current[j + 1] = current[j + 1].min(before[j - 1] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

// ---- JSON helpers ----

fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object just above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            apply_merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Keys sorted explicitly: serde_json keeps insertion order when its `preserve_order`
/// feature is on anywhere in the build.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FULL: &str = r#"
name = "hello"
replicas = 3
listen = "127.0.0.1:8080"

[process]
command = "target/debug/hello"
args = ["--verbose"]
env = { VERSION = "v1" }
workdir = "."
grace-period = "45s"

[probe]
http = "/healthz"
status = 204
interval = "500ms"
timeout = "2s"
success-threshold = 2
failure-threshold = 5

[strategy]
module = "builtin:canary"
params = { steps = [5, 25, 100], max-surge = "25%" }

[hooks.pre]
module = "migrate"
timeout = "2m"
policy = "retry"
grants = ["exec", "http:db.internal:5432"]

[hooks.rollback]
module = "notify@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

[lifecycle]
progress-deadline = "15m"
auto-rollback = false
destroy-delay = "30s"
retained = 3
maintenance-during-deploy = true
"#;

    const MINIMAL: &str = "name = \"hello\"\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"hello\"\n";

    /// Parses `text` and checks the error's `line:col` and that its message and hint contain
    /// the given fragments.
    #[track_caller]
    fn check_toml_error(text: &str, kind: SpecErrorKind, at: &str, message: &str, hint: &str) {
        let error = parse_toml(text).expect_err("the spec should be refused");
        let location = error
            .location
            .map(|l| format!("{}:{}", l.line, l.column))
            .unwrap_or_default();
        assert_eq!((error.kind, location.as_str()), (kind, at), "{error}");
        assert!(
            error.message.contains(message),
            "message {:?} lacks {message:?}",
            error.message
        );
        let actual_hint = error.hint.clone().unwrap_or_default();
        assert!(
            actual_hint.contains(hint),
            "hint {actual_hint:?} lacks {hint:?} in {error}"
        );
    }

    #[track_caller]
    fn check_json_error(value: Value, field: &str, message: &str, hint: &str) {
        let error = parse_json(value).expect_err("the spec should be refused");
        assert_eq!(error.field, field, "{error}");
        assert_eq!(error.location, None);
        assert!(
            error.message.contains(message),
            "message {:?} lacks {message:?}",
            error.message
        );
        let actual_hint = error.hint.clone().unwrap_or_default();
        assert!(
            actual_hint.contains(hint),
            "hint {actual_hint:?} lacks {hint:?} in {error}"
        );
    }

    fn minimal_with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn hosts_tls_and_limits_are_checked() {
        let ok = parse_toml(&minimal_with(
            "[router]\nhosts = [\"shop.example.com\"]\npath-prefix = \"/api\"\nredirect-https = true\nmax-body-size = \"10MiB\"\n\
             [router.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"/etc/tls/shop.pem\"\nkey = \"/etc/tls/shop.key\"\n",
        ))
        .unwrap();
        assert_eq!(ok.router.max_body_bytes(), Some(10 << 20));
        assert_eq!(ok.router.tls.as_ref().unwrap().listen.unwrap().port(), 8443);
        // Stored specs that still say `hostnames` read the same.
        let old = parse_toml(&minimal_with(
            "[router]\nkind = \"builtin\"\nhostnames = [\"a.example.com\"]\n",
        ))
        .unwrap();
        assert_eq!(old.router.hosts, ["a.example.com"]);
        let refused = |extra: &str, message: &str| {
            let error = parse_toml(&minimal_with(extra)).expect_err(extra);
            assert!(error.message.contains(message), "{extra}: {error}");
        };
        refused("[router]\nredirect-https = true\n", "no [router.tls] to redirect to");
        refused(
            "[router.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"shop.pem\"\nkey = \"/k\"\n",
            "shop.pem is not an absolute path",
        );
        refused(
            "[router.tls]\nlisten = \"127.0.0.1:8080\"\ncert = \"/c\"\nkey = \"/k\"\n",
            "is both listen (plain HTTP) and the HTTPS address",
        );
        refused("[router]\npath-prefix = \"api\"\n", "is not a path prefix");
        let haproxy = parse_toml(&minimal_with(
            "[router]\nkind = \"haproxy\"\nhosts = [\"a.example.com\"]\npath-prefix = \"/api\"\n",
        ))
        .unwrap();
        assert_eq!(haproxy.router.hosts, ["a.example.com"]);
        let acme = parse_toml(&minimal_with(
            "[router]\nkind = \"haproxy\"\nhosts = [\"a.example.com\"]\n[router.tls]\nlisten = \"127.0.0.1:8443\"\nacme = true\n",
        ))
        .unwrap();
        assert!(acme.router.tls.is_some_and(|tls| tls.acme));
        refused(
            "[router]\nkind = \"haproxy\"\nmax-body-size = \"1MiB\"\n",
            "max-body-size is only for kind = \"builtin\"",
        );
        refused(
            "[router]\nmax-header-size = \"2KiB\"\n",
            "max-header-size \"2KiB\" is out of range",
        );
        refused("[router]\nmax-connections = 0\n", "max-connections 0 is out of range");
        refused(
            "[router]\nkind = \"haproxy\"\ninstance-protocol = \"http2\"\n",
            "instance-protocol is only for kind = \"builtin\"",
        );
        let h2 = parse_toml(&minimal_with("[router]\ninstance-protocol = \"http2\"\n")).unwrap();
        assert_eq!(h2.router.instance_protocol, InstanceProtocol::Http2);
        refused(
            "[router]\nheader-timeout = \"1h\"\n",
            "header-timeout \"1h\" is out of range",
        );
        refused("[router]\nhosts = [\"Shop.Example.com\"]\n", "is not a host name");
        let acme = parse_toml(&minimal_with(
            "[router]\nhosts = [\"shop.example.com\"]\n[router.tls]\nlisten = \"127.0.0.1:8443\"\nacme = true\n",
        ))
        .unwrap();
        assert!(acme.router.tls.unwrap().acme);
        // Hosts without an address: the runner's front door, plain and HTTPS.
        let front_door = parse_toml(
            "name = \"shop\"\n[process]\ncommand = \"hello\"\n[router]\nhosts = [\"shop.example.com\"]\n[router.tls]\nacme = true\n",
        )
        .unwrap();
        assert_eq!((front_door.listen, front_door.router.tls.unwrap().listen), (None, None));
        let nowhere = parse_toml("name = \"shop\"\n[process]\ncommand = \"hello\"\n").unwrap_err();
        assert!(
            nowhere.message.contains("listen is missing")
                && nowhere
                    .hint
                    .unwrap_or_default()
                    .contains("share the runner's front door"),
        );
        refused(
            "[router]\nhosts = [\"a.example.com\"]\n[router.tls]\nlisten = \"127.0.0.1:8443\"\n",
            "neither cert and key nor acme = true",
        );
        refused(
            "[router]\nhosts = [\"a.example.com\"]\n[router.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"/c\"\n",
            "needs both cert and key",
        );
        refused(
            "[router.tls]\nlisten = \"127.0.0.1:8443\"\nacme = true\n",
            "needs the host names to certify",
        );
        refused(
            "[router]\nhosts = [\"*.example.com\"]\n[router.tls]\nlisten = \"127.0.0.1:8443\"\nacme = true\n",
            "*.example.com cannot be certified over HTTP-01",
        );
    }

    #[test]
    fn minimal_spec_takes_every_default() {
        let spec = parse_toml(MINIMAL).unwrap();
        assert_eq!(
            spec,
            Spec {
                name: "hello".into(),
                replicas: 1,
                listen: Some("127.0.0.1:8080".parse().unwrap()),
                process: Some(Process {
                    command: "hello".into(),
                    args: vec![],
                    env: BTreeMap::new(),
                    secret_env: BTreeMap::new(),
                    workdir: None,
                    grace_period: Duration::from_secs(30),
                }),
                container: None,
                kubernetes: None,
                router: RouterSpec::default(),
                probe: Probe::default(),
                strategy: Strategy::default(),
                hooks: Hooks::default(),
                lifecycle: Lifecycle::default(),
            }
        );
        assert_eq!(spec.probe.kind(), ProbeKind::Tcp);
        assert_eq!(
            (spec.probe.interval, spec.probe.timeout),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        assert_eq!((spec.probe.success_threshold, spec.probe.failure_threshold), (1, 3));
        assert_eq!(spec.strategy.module, "builtin:rolling");
        assert_eq!(spec.lifecycle.progress_deadline, Duration::from_secs(600));
        assert!(spec.lifecycle.auto_rollback);
        assert_eq!(
            (spec.lifecycle.destroy_delay, spec.lifecycle.retained),
            (Duration::ZERO, 10)
        );
    }

    #[test]
    fn minimal_json_is_a_full_spec() {
        let spec = parse_json(json!({"name": "hello", "process": {"command": "hello"}, "listen": "127.0.0.1:8080"}));
        assert_eq!(spec.unwrap(), parse_toml(MINIMAL).unwrap());
    }

    #[test]
    fn full_spec_reads_every_field() {
        let spec = parse_toml(FULL).unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.process.as_ref().unwrap().args, ["--verbose"]);
        assert_eq!(spec.process.as_ref().unwrap().env["VERSION"], "v1");
        assert_eq!(spec.process.as_ref().unwrap().workdir.as_deref(), Some("."));
        assert_eq!(spec.process.as_ref().unwrap().grace_period, Duration::from_secs(45));
        assert_eq!(
            spec.probe.kind(),
            ProbeKind::Http {
                path: "/healthz",
                status: 204
            }
        );
        assert_eq!(spec.probe.interval, Duration::from_millis(500));
        assert_eq!(spec.strategy.params["steps"], json!([5, 25, 100]));
        assert_eq!(spec.strategy.params["max-surge"], json!("25%"));
        let pre = spec.hooks.pre.as_ref().unwrap();
        assert_eq!((pre.timeout, pre.policy), (Duration::from_secs(120), HookPolicy::Retry));
        assert_eq!(
            pre.grants.iter().map(|g| grant(g).unwrap()).collect::<Vec<_>>(),
            [
                Grant::Exec,
                Grant::Http {
                    host: "db.internal:5432".into()
                }
            ]
        );
        let rollback = spec.hooks.rollback.as_ref().unwrap();
        assert_eq!(
            (rollback.timeout, rollback.policy),
            (Duration::from_secs(60), HookPolicy::Abort)
        );
        assert_eq!(
            spec.hooks.iter().map(|(point, _)| point).collect::<Vec<_>>(),
            ["pre", "rollback"]
        );
        assert_eq!(spec.lifecycle.progress_deadline, Duration::from_secs(900));
        assert!(!spec.lifecycle.auto_rollback && spec.lifecycle.maintenance_during_deploy);
        assert_eq!(spec.lifecycle.retained, 3);
    }

    #[test]
    fn toml_to_json_and_back_is_the_same_spec() {
        for text in [MINIMAL, FULL] {
            let spec = parse_toml(text).unwrap();
            let json = spec.to_json();
            let again = parse_json(json.clone()).unwrap();
            assert_eq!(again, spec);
            assert_eq!(again.to_json(), json);
        }
        let json = parse_toml(FULL).unwrap().to_json();
        assert_eq!(json["process"]["grace-period"], "45s");
        assert_eq!(json["probe"]["interval"], "500ms");
        assert_eq!(json["lifecycle"]["progress-deadline"], "15m");
        assert_eq!(json["lifecycle"]["destroy-delay"], "30s");
        assert_eq!(json["hooks"]["pre"]["policy"], "retry");
        assert!(json["probe"].get("tcp").is_none());
    }

    #[test]
    fn durations_parse_and_format() {
        for (text, millis, canonical) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("600s", 600_000, "10m"),
            ("90s", 90_000, "90s"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("1m30s", 90_000, "90s"),
            ("1s500ms", 1_500, "1500ms"),
            ("0s", 0, "0s"),
        ] {
            let parsed = duration::parse(text).unwrap();
            assert_eq!(parsed, Duration::from_millis(millis), "{text}");
            assert_eq!(duration::format(parsed), canonical, "{text}");
        }
        for bad in [
            "",
            "30",
            "30 s",
            "1.5s",
            "30sec",
            "s",
            "-1s",
            "9999999h",
            "99999999999999999999999999999999999999999s",
        ] {
            assert!(duration::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let spec = parse_toml(&minimal_with("[lifecycle]\nprogress-deadline = 120\n")).unwrap();
        assert_eq!(spec.lifecycle.progress_deadline, Duration::from_secs(120));
        let spec =
            parse_json(json!({"name": "a", "listen": "127.0.0.1:1", "process": {"command": "x", "grace-period": 5}}));
        assert_eq!(spec.unwrap().process.unwrap().grace_period, Duration::from_secs(5));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        check_toml_error("name = \"hello\nreplicas = 3\n", SpecErrorKind::Syntax, "1:14", "", "");
        check_toml_error("name = hello\n", SpecErrorKind::Syntax, "1:8", "", "double quotes");
        check_toml_error(
            "name = \"a\"\nname = \"b\"\n",
            SpecErrorKind::Syntax,
            "2:1",
            "duplicate key",
            "once per table",
        );
        check_toml_error("[process\ncommand = \"x\"\n", SpecErrorKind::Syntax, "1:9", "", "");
    }

    #[test]
    fn shape_errors_point_at_the_key_or_value() {
        use SpecErrorKind::Shape;
        let text = "name = \"hello\"\nreplica = 3\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"x\"\n";
        check_toml_error(
            text,
            Shape,
            "2:1",
            "unknown field `replica`",
            "did you mean `replicas`?",
        );
        check_toml_error(
            &minimal_with("[probe]\nhttp = \"/healthz\"\nintervall = \"1s\"\n"),
            Shape,
            "7:1",
            "unknown field `intervall`",
            "did you mean `interval`?",
        );
        check_toml_error(
            &minimal_with("grace_period = \"1s\"\n"),
            Shape,
            "5:1",
            "unknown field `grace_period`",
            "did you mean `grace-period`?",
        );
        check_toml_error(
            &minimal_with("[probe]\ninterval = \"1 s\"\n"),
            Shape,
            "6:12",
            "not a duration",
            "durations look like \"30s\"",
        );
        check_toml_error(
            &minimal_with("[probe]\ninterval = 1.5\n"),
            Shape,
            "6:12",
            "expected a duration",
            "durations look like",
        );
        check_toml_error(
            &minimal_with("[probe]\ntimeout = -3\n"),
            Shape,
            "6:11",
            "cannot be negative",
            "durations look like",
        );
        check_toml_error(
            "name = \"hello\"\nreplicas = \"3\"\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"x\"\n",
            Shape,
            "2:12",
            "invalid type",
            "whole number from 0 to 1000",
        );
        check_toml_error(
            "name = \"hello\"\nlisten = \"localhost\"\n[process]\ncommand = \"x\"\n",
            Shape,
            "2:10",
            "invalid socket address",
            "\"127.0.0.1:8080\"",
        );
        check_toml_error(
            &minimal_with("env = { VERSION = 2 }\n"),
            Shape,
            "5:19",
            "invalid type",
            "environment values are strings",
        );
        check_toml_error(
            &minimal_with("[hooks.pre]\nmodule = \"m\"\npolicy = \"abortt\"\n"),
            Shape,
            "7:10",
            "unknown variant `abortt`",
            "did you mean `abort`?",
        );
        check_toml_error(
            &minimal_with("[hooks.deploy]\nmodule = \"m\"\n"),
            Shape,
            "5:8",
            "unknown field `deploy`",
            "remove it",
        );
        check_toml_error(
            &minimal_with("[strategy]\nparams = { at = 2024-01-01 }\n"),
            Shape,
            "6:17",
            "dates and times",
            "double quotes",
        );
    }

    #[test]
    fn messages_use_the_specs_words() {
        let error = parse_toml("name = \"a\"\nlisten = \"127.0.0.1:1\"\nprocess = \"x\"\n").unwrap_err();
        assert_eq!(error.message, "invalid type: string \"x\", expected a table");
        assert_eq!(error.location, Some(Location { line: 3, column: 11 }));
        let error = parse_toml(&minimal_with("[probe]\nstatus = 70000\n")).unwrap_err();
        assert_eq!(error.message, "invalid value: integer `70000`, expected a whole number");
        let error = parse_json(json!({"name": "a", "listen": "127.0.0.1:1", "process": 5})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "process: invalid type: integer `5`, expected an object (hint: this is an object with keys of its own)"
        );
        let error = parse_json(json!({"name": "a", "listen": "127.0.0.1:1", "process": []})).unwrap_err();
        assert_eq!(error.message, "invalid type: list, expected an object");
        // A top-level key written below a [table] header belongs to that table in TOML.
        check_toml_error(
            &minimal_with("replicas = 3\n"),
            SpecErrorKind::Shape,
            "5:1",
            "unknown field `replicas`",
            "move it above the first [table] header",
        );
    }

    #[test]
    fn missing_fields_say_what_to_add() {
        let error = parse_toml("name = \"hello\"\n[process]\ncommand = \"x\"\n").unwrap_err();
        assert_eq!(error.kind, SpecErrorKind::Invalid);
        assert!(error.message.contains("listen is missing"), "{error}");
        assert!(
            error
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("add listen = \"127.0.0.1:8080\" at the top of the file")),
            "{error}"
        );
        let error = parse_toml("name = \"hello\"\nlisten = \"127.0.0.1:8080\"\n[process]\nargs = []\n").unwrap_err();
        assert!(error.message.contains("missing field `command`"), "{error}");
        assert_eq!(
            error.hint.as_deref(),
            Some("add command = \"path/to/program\" under [process]")
        );
        assert!(error.location.is_some());
        let error = parse_toml("name = \"hello\"\nlisten = \"127.0.0.1:8080\"\n").unwrap_err();
        assert_eq!(
            error.hint.as_deref(),
            Some(
                "add a [process] table with command = \"path/to/program\", a [container] table with image = \"…\", or a [kubernetes] table"
            )
        );
    }

    const CONTAINER: &str =
        "name = \"shop\"\nlisten = \"127.0.0.1:8080\"\n[container]\nimage = \"ghcr.io/acme/shop:2\"\n";

    #[test]
    fn a_container_spec_reads_with_its_defaults() {
        let spec = parse_toml(&format!(
            "{CONTAINER}port = 8080\nmemory = \"512MiB\"\ncpus = 1.5\nvolumes = [\"/srv:/data:ro\"]\npull = \"never\"\n"
        ))
        .unwrap();
        let container = spec.container.as_ref().unwrap();
        assert!(spec.process.is_none());
        assert_eq!(container.network, ContainerNetwork::Bridge);
        assert_eq!(container.pull, PullPolicy::Never);
        assert_eq!(bytes(container.memory.as_deref().unwrap()), Ok(512 << 20));
        assert_eq!(container.grace_period, Duration::from_secs(30));
        // The spec reads back as written, through JSON too.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(parse_json(json).unwrap(), spec);
        let host = parse_toml(&format!("{CONTAINER}network = \"host\"\n")).unwrap();
        assert_eq!(host.container.unwrap().network, ContainerNetwork::Host);
    }

    #[test]
    fn container_mistakes_are_named_with_a_hint() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "container.port", "say which port the app listens on"),
            ("network = \"host\"\nport = 80\n", "container.port", "remove port"),
            ("port = 80\nmemory = \"lots\"\n", "container.memory", "512MiB"),
            ("port = 80\nmemory = \"0MiB\"\n", "container.memory", "512MiB"),
            ("port = 80\ncpus = 0\n", "container.cpus", "above 0"),
            (
                "port = 80\nvolumes = [\"/srv\"]\n",
                "container.volumes[0]",
                "SOURCE:TARGET",
            ),
            (
                "port = 80\nvolumes = [\"/srv:data\"]\n",
                "container.volumes[0]",
                "absolute path",
            ),
            (
                "port = 80\nenv = { PORT = \"1\" }\n",
                "container.env.PORT",
                "remove PORT from [container] env",
            ),
            ("port = 80\ncommand = []\n", "container.command", "entrypoint"),
            ("port = 80\npull = \"sometimes\"\n", "container.pull", ""),
            ("port = 80\nnetwork = \"overlay\"\n", "container.network", ""),
        ];
        for (extra, field, hint) in cases {
            let error = parse_toml(&format!("{CONTAINER}{extra}")).unwrap_err();
            let shown = error.to_string();
            assert_eq!(&error.field, field, "{extra:?}: {shown}");
            assert!(shown.contains(hint), "{extra:?}: {shown}");
            assert!(error.location.is_some(), "{extra:?}: {shown}");
        }
        let error = parse_toml(&format!("{CONTAINER}port = 80\n[process]\ncommand = \"x\"\n")).unwrap_err();
        assert!(
            error.to_string().contains("both a [process] and a [container]"),
            "{error}"
        );
        let error = parse_toml(&CONTAINER.replace("ghcr.io/acme/shop:2", "shop v2")).unwrap_err();
        assert!(error.to_string().contains("not an image reference"), "{error}");
    }

    #[test]
    fn sizes_read_in_the_units_people_write() {
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert_eq!(bytes("64m"), Ok(64 << 20));
        assert_eq!(bytes("2GiB"), Ok(2 << 30));
        assert!(bytes("2 TiB").is_err());
        assert!(bytes("-1").is_err());
        assert!(bytes("99999999999999GiB").is_err());
    }

    #[test]
    fn rule_errors_point_at_the_offending_key() {
        use SpecErrorKind::Invalid;
        check_toml_error(
            "name = \"Hello\"\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"x\"\n",
            Invalid,
            "1:1",
            "app name \"Hello\" is not valid",
            "lowercase letters",
        );
        check_toml_error(
            "name = \"hello\"\n  replicas = 5000\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"x\"\n",
            Invalid,
            "2:3",
            "more than the limit of 1000",
            "0 to 1000",
        );
        check_toml_error(
            "name = \"hello\"\nlisten = \"127.0.0.1:0\"\n[process]\ncommand = \"x\"\n",
            Invalid,
            "2:1",
            "no fixed port",
            "127.0.0.1:8080",
        );
        check_toml_error(
            &minimal_with("env = { VERSION = \"v1\", PORT = \"1\" }\n"),
            Invalid,
            "5:25",
            "`PORT` is reserved",
            "remove PORT",
        );
        check_toml_error(
            &minimal_with("env.SLIPWAY_TOKEN = \"x\"\n"),
            Invalid,
            "5:5",
            "`SLIPWAY_TOKEN` is reserved",
            "rename",
        );
        check_toml_error(
            &minimal_with("env = { \"1X\" = \"x\" }\n"),
            Invalid,
            "5:9",
            "not an environment variable name",
            "underscores",
        );
        check_toml_error(
            &minimal_with("command2 = 1\n"),
            SpecErrorKind::Shape,
            "5:1",
            "unknown field",
            "did you mean `command`?",
        );
        check_toml_error(
            &minimal_with("[probe]\nhttp = \"/healthz\"\n  tcp = true\n"),
            Invalid,
            "7:3",
            "both http and tcp",
            "not both",
        );
        check_toml_error(
            &minimal_with("[probe]\ntcp = false\n"),
            Invalid,
            "6:1",
            "nothing to check",
            "remove tcp",
        );
        check_toml_error(
            &minimal_with("[probe]\nhttp = \"healthz\"\n"),
            Invalid,
            "6:1",
            "not a request path",
            "starting with /",
        );
        check_toml_error(
            &minimal_with("[probe]\nhttp = \"/\"\nstatus = 42\n"),
            Invalid,
            "7:1",
            "not an HTTP status",
            "100 to 599",
        );
        check_toml_error(
            &minimal_with("[probe]\n\ninterval = \"0s\"\n"),
            Invalid,
            "7:1",
            "probe interval is 0s",
            "positive duration",
        );
        check_toml_error(
            &minimal_with("[probe]\nfailure-threshold = 0\n"),
            Invalid,
            "6:1",
            "failure-threshold is 0",
            "1 to 100",
        );
        check_toml_error(
            &minimal_with("[strategy]\nmodule = \"biultin:rolling\"\n"),
            Invalid,
            "6:1",
            "not a kind of module reference",
            "did you mean `builtin:rolling`?",
        );
        check_toml_error(
            &minimal_with("[strategy]\nmodule = \"waves@sha256:abc\"\n"),
            Invalid,
            "6:1",
            "is not a sha256 digest",
            "64 lowercase hex",
        );
        check_toml_error(
            &minimal_with("[strategy]\nmodule = \"Waves\"\n"),
            Invalid,
            "6:1",
            "is not a module name",
            "builtin:NAME",
        );
        check_toml_error(
            &minimal_with("[hooks.post]\nmodule = \"notify\"\ngrants = [\"exec\", \"network\"]\n"),
            Invalid,
            "7:19",
            "unknown grant `network`",
            "the grants are \"exec\" and \"http:<host>\"",
        );
        check_toml_error(
            &minimal_with("[hooks.post]\nmodule = \"notify\"\ngrants = [\"http:https://x\"]\n"),
            Invalid,
            "7:11",
            "is not a host name",
            "no scheme or path",
        );
        check_toml_error(
            &minimal_with("[hooks.mid]\nmodule = \"m\"\ntimeout = 0\n"),
            Invalid,
            "7:1",
            "timeout is 0s",
            "60s",
        );
        check_toml_error(
            &minimal_with("[lifecycle]\nprogress-deadline = \"0s\"\n"),
            Invalid,
            "6:1",
            "every rollout would fail",
            "600s",
        );
        check_toml_error(
            &minimal_with("[lifecycle]\nretained = 5000\n"),
            Invalid,
            "6:1",
            "more than the limit",
            "0 to 1000",
        );
    }

    #[test]
    fn rule_errors_find_keys_in_dotted_and_inline_tables() {
        let text =
            "name = \"hello\"\nlisten = \"127.0.0.1:8080\"\nprocess = { command = \"x\", env = { PORT = \"1\" } }\n";
        check_toml_error(text, SpecErrorKind::Invalid, "3:36", "`PORT` is reserved", "");
        let text = "name = \"hello\"\nlisten = \"127.0.0.1:8080\"\nprocess.command = \"x\"\nprobe.interval = \"0s\"\n";
        check_toml_error(text, SpecErrorKind::Invalid, "4:7", "probe interval is 0s", "");
    }

    #[test]
    fn display_reads_like_a_compiler_message() {
        let text = "name = \"hello\"\nreplica = 3\nlisten = \"127.0.0.1:8080\"\n[process]\ncommand = \"x\"\n";
        let error = parse_toml(text).unwrap_err().with_path("slipway.toml");
        let shown = error.to_string();
        assert!(
            shown.starts_with("slipway.toml:2:1: unknown field `replica`, expected one of `name`, `replicas`"),
            "{shown}"
        );
        assert!(shown.ends_with(" (hint: did you mean `replicas`?)"), "{shown}");

        let mut spec = parse_toml(MINIMAL).unwrap();
        spec.process.as_mut().unwrap().env.insert("PORT".into(), "1".into());
        let shown = validate(&spec).unwrap_err().to_string();
        assert!(shown.starts_with("process.env.PORT: `PORT` is reserved"), "{shown}");
    }

    #[test]
    fn json_errors_name_the_field() {
        let base = || json!({"name": "hello", "listen": "127.0.0.1:8080", "process": {"command": "x"}});
        let with = |pointer: &str, value: Value| {
            let mut spec = base();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut spec
            } else {
                spec.pointer_mut(parent).unwrap()
            };
            target.as_object_mut().unwrap().insert(key.into(), value);
            spec
        };
        check_json_error(
            with("/process/env", json!({"PORT": "1"})),
            "process.env.PORT",
            "`PORT` is reserved",
            "remove PORT",
        );
        check_json_error(
            with("/process/env", json!({"A": 1})),
            "process.env.A",
            "invalid type",
            "environment values are strings",
        );
        check_json_error(
            with("/replica", json!(3)),
            "replica",
            "unknown field `replica`",
            "did you mean `replicas`?",
        );
        check_json_error(
            with("/probe", json!({"timeoutt": "1s"})),
            "probe.timeoutt",
            "unknown field",
            "did you mean `timeout`?",
        );
        check_json_error(
            with("/probe", json!({"interval": "fast"})),
            "probe.interval",
            "not a duration",
            "durations look like",
        );
        check_json_error(
            with("/replicas", json!(1001)),
            "replicas",
            "more than the limit",
            "0 to 1000",
        );
        check_json_error(
            with("/replicas", json!(-1)),
            "replicas",
            "invalid value",
            "whole number",
        );
        check_json_error(
            with("/process", json!({"args": []})),
            "process",
            "missing field `command`",
            "add \"command\" to `process`",
        );
        check_json_error(
            json!({"listen": "127.0.0.1:8080", "process": {"command": "x"}}),
            "",
            "missing field `name`",
            "add \"name\" to the spec",
        );
        check_json_error(
            with("/hooks", json!({"pre": {"module": "m", "grants": ["exec", "exce"]}})),
            "hooks.pre.grants[1]",
            "unknown grant `exce`",
            "did you mean `exec`?",
        );
        check_json_error(json!(5), "", "invalid type", "JSON object");
        check_json_error(
            with("/process/env", json!({"a.b": "x"})),
            "process.env.\"a.b\"",
            "not an environment variable name",
            "",
        );
    }

    #[test]
    fn merge_patch_changes_only_what_it_names() {
        let base = parse_toml(FULL).unwrap();
        let patched = merge_patch(&base, &json!({"process": {"env": {"VERSION": "v2"}}})).unwrap();
        assert_eq!(patched.process.as_ref().unwrap().env["VERSION"], "v2");
        let mut expected = base.clone();
        expected
            .process
            .as_mut()
            .unwrap()
            .env
            .insert("VERSION".into(), "v2".into());
        assert_eq!(patched, expected);

        // `null` removes a key: a defaulted field goes back to its default.
        let patched = merge_patch(&base, &json!({"probe": null, "hooks": {"pre": null}, "replicas": 5})).unwrap();
        assert_eq!(patched.probe, Probe::default());
        assert_eq!(patched.hooks.pre, None);
        assert!(patched.hooks.rollback.is_some());
        assert_eq!(patched.replicas, 5);

        let patched = merge_patch(&base, &json!({"strategy": {"params": {"steps": null, "max-surge": 1}}})).unwrap();
        assert_eq!(Value::Object(patched.strategy.params), json!({"max-surge": 1}));

        // A patch that breaks a rule, or removes a required key, is refused with the field.
        let error = merge_patch(&base, &json!({"process": {"env": {"PORT": "9"}}})).unwrap_err();
        assert_eq!(error.field, "process.env.PORT");
        let error = merge_patch(&base, &json!({"probe": {"tcp": true}})).unwrap_err();
        assert_eq!(
            (error.kind, error.field.as_str()),
            (SpecErrorKind::Invalid, "probe.tcp")
        );
        let error = merge_patch(&base, &json!({"name": null})).unwrap_err();
        assert!(error.message.contains("missing field `name`"), "{error}");
        assert_eq!(merge_patch(&base, &json!({})).unwrap(), base);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, appendix A, in order.
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ] {
            let mut document = target.clone();
            apply_merge_patch(&mut document, &patch);
            assert_eq!(document, result, "{target} + {patch}");
        }
    }

    #[test]
    fn digest_is_stable_and_ignores_key_order() {
        let spec = parse_toml(FULL).unwrap();
        let digest = spec.digest();
        assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64, "{digest}");
        assert_eq!(parse_toml(FULL).unwrap().digest(), digest);
        assert_eq!(parse_json(spec.to_json()).unwrap().digest(), digest);
        let reordered = FULL.replace(
            "params = { steps = [5, 25, 100], max-surge = \"25%\" }",
            "params = { max-surge = \"25%\", steps = [5, 25, 100] }",
        );
        assert_ne!(reordered, FULL);
        assert_eq!(parse_toml(&reordered).unwrap().digest(), digest);
        let changed = merge_patch(&spec, &json!({"process": {"env": {"VERSION": "v2"}}})).unwrap();
        assert_ne!(changed.digest(), digest);

        let mut canonical = String::new();
        write_canonical(&json!({"b": [1, {"d": null, "c": "x"}], "a": true}), &mut canonical);
        assert_eq!(canonical, r#"{"a":true,"b":[1,{"c":"x","d":null}]}"#);
    }

    #[test]
    fn module_references() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            module_ref("builtin:blue-green").unwrap(),
            ModuleRef::Builtin("blue-green".into())
        );
        assert_eq!(module_ref("waves").unwrap(), ModuleRef::Named("waves".into()));
        assert_eq!(module_ref("my_hook").unwrap(), ModuleRef::Named("my_hook".into()));
        let pinned = format!("waves@sha256:{hex}");
        assert_eq!(
            module_ref(&pinned).unwrap(),
            ModuleRef::Pinned {
                name: "waves".into(),
                digest: format!("sha256:{hex}")
            }
        );
        assert_eq!(module_ref(&pinned).unwrap().to_string(), pinned);
        for bad in [
            "",
            "builtin:",
            "builtin:Rolling",
            "Waves",
            "waves@",
            "waves@sha256:",
            "@sha256:0",
            &format!("waves@sha256:{}", hex.to_uppercase()),
            &format!("waves@sha512:{hex}"),
            &format!("builtin:x@sha256:{hex}"),
            "file:waves.wasm",
            "./waves.wasm",
        ] {
            assert!(module_ref(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn grants() {
        assert_eq!(grant("exec").unwrap(), Grant::Exec);
        assert_eq!(
            grant("http:example.com").unwrap(),
            Grant::Http {
                host: "example.com".into()
            }
        );
        assert_eq!(
            grant("http:10.0.0.1:8080").unwrap(),
            Grant::Http {
                host: "10.0.0.1:8080".into()
            }
        );
        for bad in [
            "",
            "Exec",
            "http:",
            "http:Example.com",
            "http:x:0",
            "http:x:99999",
            "http:-x",
            "http:x/y",
            "net",
        ] {
            assert!(grant(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "hello", "hello-2", &format!("a{}", "b".repeat(62))] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in ["", "2a", "-a", "Hello", "a_b", "a.b", &format!("a{}", "b".repeat(63))] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(suggest("replica", ["name", "replicas"]), Some("replicas"));
        assert_eq!(suggest("xyz", ["name", "replicas"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("exce", "exec"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn locations_count_characters() {
        assert_eq!(location("ab\ncd", 4), Location { line: 2, column: 2 });
        assert_eq!(location("é = 1\nx", 3), Location { line: 1, column: 3 });
        assert_eq!(location("abc", 99), Location { line: 1, column: 4 });
    }
}
