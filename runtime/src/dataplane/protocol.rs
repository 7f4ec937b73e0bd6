//! What the runner and the data plane say to each other over the data plane's Unix socket:
//! one JSON document per line. The runner sends [`Request`]s, each with an id; the data
//! plane answers each with a [`Message::Reply`] carrying the same id, and reports what
//! happens to instances as [`Message::Event`]s in between.
//!
//! Every request is idempotent: a runner that reconnects (after a restart) sends what it
//! wants again, and what already is so is left alone. The first request on a connection is
//! [`Request::Hello`]; its answer is the data plane's whole state, which the runner adopts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::driver::compute::container::ContainerConfig;
use crate::driver::compute::instances::Workload;
use crate::driver::compute::process::ProcessConfig;
use crate::driver::router::RouterKind;
use crate::driver::{Counts, DriverError, DriverEvent, HttpResult, ProbeResult};

/// The protocol's version. A runner refuses a data plane that speaks another one.
pub const PROTOCOL: u32 = 1;

/// What this data plane can do beyond protocol 1 as first released; a runner asks only for
/// what the data plane it talks to lists, so a new runner works with an older data plane.
pub const FEATURES: &[&str] = &[
    FEATURE_CONTAINERS,
    FEATURE_HAPROXY,
    FEATURE_TRAFFIC,
    FEATURE_FRONT,
    FEATURE_ACME,
    FEATURE_INSTANCE_HTTP2,
];
/// Revisions that run as containers ([`Request::DefineContainer`]).
pub const FEATURE_CONTAINERS: &str = "containers";
/// Apps routed by HAProxy (`router` in [`Request::App`]).
pub const FEATURE_HAPROXY: &str = "haproxy";
/// It answers [`Request::Traffic`].
pub const FEATURE_TRAFFIC: &str = "traffic";
/// Apps routed by host name and path prefix on shared listeners, and over HTTPS (`front` in
/// [`Request::App`]).
pub const FEATURE_FRONT: &str = "front";
/// HTTPS with the certificate the runner obtains over ACME (`acme` in `front.tls`), and the
/// CA's HTTP-01 challenges answered on plain listeners.
pub const FEATURE_ACME: &str = "acme";
/// HTTP/2 to instances (`instance_http2` in `front`).
pub const FEATURE_INSTANCE_HTTP2: &str = "instance-http2";

/// How an app is reached beyond its own plain address: host names and a path prefix on
/// listeners it shares with other apps, and HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::spec::TlsSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_log: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// Instances are spoken to in HTTP/2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instance_http2: bool,
}

impl FrontSpec {
    /// What the spec's `[router]` says of it, with the HTTPS address defaulting to `https`
    /// (the runner's front door).
    pub fn of(router: &crate::spec::RouterSpec, https: SocketAddr) -> FrontSpec {
        // What HAProxy does too: host names, path prefix, HTTPS.
        let routed = FrontSpec {
            hosts: router.hosts.clone(),
            path_prefix: router.path_prefix.clone(),
            tls: router.tls.clone().map(|tls| crate::spec::TlsSpec {
                listen: tls.listen.or(Some(https)),
                ..tls
            }),
            redirect_https: router.redirect_https,
            ..FrontSpec::default()
        };
        match router.kind {
            RouterKind::Builtin => {}
            RouterKind::Haproxy => return routed,
            RouterKind::Gateway | RouterKind::Service => return FrontSpec::default(),
        }
        FrontSpec {
            max_header_bytes: router.max_header_bytes(),
            max_body_bytes: router.max_body_bytes(),
            max_connections: router.max_connections,
            header_timeout_ms: router.header_timeout().map(|t| t.as_millis() as u64),
            access_log: router.access_log,
            h2c: router.h2c,
            instance_http2: router.instance_protocol == crate::spec::InstanceProtocol::Http2,
            ..routed
        }
    }

    pub fn is_default(&self) -> bool {
        *self == FrontSpec::default()
    }
}

/// A request with its id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub request: Request,
}

/// What the runner asks of the data plane.
// The enums here are externally tagged (`{"scale": {...}}`): an internally tagged one would
// buffer its content, and maps keyed by revision number cannot be read back from a buffer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// The first request of a connection; answered with [`Answer::Welcome`].
    Hello {
        protocol: u32,
    },
    /// The app exists and its router listens on `listen` (moving there if it listened
    /// elsewhere: the new address is bound before the old one is let go).
    App {
        app: String,
        listen: SocketAddr,
        /// Which router; a data plane without [`FEATURE_HAPROXY`] does not read it.
        #[serde(default)]
        router: RouterKind,
        /// Host names, path prefix and HTTPS; only sent to a data plane with
        /// [`FEATURE_FRONT`].
        #[serde(default, skip_serializing_if = "FrontSpec::is_default")]
        front: FrontSpec,
    },
    /// How to run `revision` of `app` as processes.
    Define {
        app: String,
        revision: u32,
        config: ProcessConfig,
    },
    /// How to run `revision` of `app` as containers; running containers of it that an earlier
    /// data plane started are adopted. Needs [`FEATURE_CONTAINERS`].
    DefineContainer {
        app: String,
        revision: u32,
        config: ContainerConfig,
    },
    Scale {
        app: String,
        revision: u32,
        replicas: u32,
    },
    Weights {
        app: String,
        weights: Vec<(u32, u32)>,
    },
    Maintenance {
        app: String,
        on: bool,
    },
    Probe {
        app: String,
        revision: u32,
    },
    CheckHttp {
        app: String,
        revision: u32,
        path: String,
        status: u16,
        timeout_ms: u64,
    },
    /// Stops the app's instances and its router, and forgets it.
    Remove {
        app: String,
    },
    /// The routers' counters, in Prometheus text format.
    Metrics,
    /// A revision's traffic over the last `window_ms`. Needs [`FEATURE_TRAFFIC`].
    Traffic {
        app: String,
        revision: u32,
        window_ms: u64,
    },
    /// Stops every instance and router, then the data plane itself.
    Shutdown,
}

/// What the data plane sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Message {
    Reply {
        id: u64,
        result: Result<Answer, PlaneError>,
    },
    Event {
        app: String,
        event: DriverEvent,
    },
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Welcome {
        protocol: u32,
        apps: BTreeMap<String, AppState>,
        /// Empty from a data plane older than features.
        #[serde(default)]
        features: Vec<String>,
    },
    /// Done; the app's instances right after.
    Done {
        state: Observed,
    },
    Probe {
        result: ProbeResult,
    },
    Http {
        result: HttpResult,
    },
    Metrics {
        text: String,
    },
    Traffic {
        stats: crate::driver::TrafficStats,
    },
}

/// Every revision's counts, as of a generation of the app's compute driver: a later
/// generation always describes a later state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub generation: u64,
    pub counts: BTreeMap<u32, Counts>,
}

/// One app as the data plane runs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppState {
    pub listen: SocketAddr,
    #[serde(default)]
    pub router: RouterKind,
    #[serde(default, skip_serializing_if = "FrontSpec::is_default")]
    pub front: FrontSpec,
    pub weights: Vec<(u32, u32)>,
    pub maintenance: bool,
    pub revisions: BTreeMap<u32, ProcessConfig>,
    /// Revisions that run as containers.
    #[serde(default)]
    pub containers: BTreeMap<u32, ContainerConfig>,
    pub observed: Observed,
    /// Running instances: (revision, instance, pid), so an adopting runner can say which.
    pub instances: Vec<(u32, String, Option<u32>)>,
}

impl AppState {
    /// Whether the data plane runs `revision` (has it defined), as processes or containers.
    pub fn runs(&self, revision: u32) -> bool {
        self.revisions.contains_key(&revision) || self.containers.contains_key(&revision)
    }
}

/// The request that defines `revision` of `app` to run `workload`.
pub fn define(app: &str, revision: u32, workload: Workload) -> Request {
    let app = app.to_string();
    match workload {
        Workload::Process(config) => Request::Define { app, revision, config },
        Workload::Container(config) => Request::DefineContainer { app, revision, config },
    }
}

/// Why a request failed, as the runner's drivers report it.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum PlaneError {
    #[error("revision {revision} is not part of this rollout")]
    UnknownRevision { revision: u32 },
    #[error("{message}")]
    Invalid { message: String },
    #[error("{message}")]
    Failed { message: String },
}

impl From<DriverError> for PlaneError {
    fn from(error: DriverError) -> Self {
        match error {
            DriverError::UnknownRevision(revision) => PlaneError::UnknownRevision { revision },
            DriverError::Invalid(message) => PlaneError::Invalid { message },
            other => PlaneError::Failed {
                message: other.to_string(),
            },
        }
    }
}

impl From<PlaneError> for DriverError {
    fn from(error: PlaneError) -> Self {
        match error {
            PlaneError::UnknownRevision { revision } => DriverError::UnknownRevision(revision),
            PlaneError::Invalid { message } => DriverError::Invalid(message),
            PlaneError::Failed { message } => DriverError::Infrastructure {
                driver: "data plane",
                message,
                source: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_written() {
        let request = Envelope {
            id: 7,
            request: Request::Scale {
                app: "hello".into(),
                revision: 2,
                replicas: 3,
            },
        };
        let line = serde_json::to_string(&request).unwrap();
        assert!(!line.contains('\n'));
        let back: Envelope = serde_json::from_str(&line).unwrap();
        assert_eq!(back.id, 7);
        let reply = Message::Reply {
            id: 7,
            result: Err(PlaneError::UnknownRevision { revision: 2 }),
        };
        let back: Message = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        let Message::Reply { result: Err(error), .. } = back else {
            panic!()
        };
        assert!(matches!(DriverError::from(error), DriverError::UnknownRevision(2)));
        // Maps keyed by revision number survive the trip.
        let done = Message::Reply {
            id: 8,
            result: Ok(Answer::Done {
                state: Observed {
                    generation: 3,
                    counts: BTreeMap::from([(2, Counts::default())]),
                },
            }),
        };
        let back: Message = serde_json::from_str(&serde_json::to_string(&done).unwrap()).unwrap();
        let Message::Reply {
            result: Ok(Answer::Done { state }),
            ..
        } = back
        else {
            panic!()
        };
        assert_eq!(state.counts.keys().collect::<Vec<_>>(), vec![&2]);
    }
}

#[cfg(test)]
mod define_tests {
    use super::*;

    #[test]
    fn a_definition_reads_back() {
        let spec = crate::spec::parse_toml(
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\n[process]\ncommand = \"x\"\nsecret-env = { K = \"env:V\" }\n[probe]\nhttp = \"/h\"\n",
        )
        .unwrap();
        let request = Envelope {
            id: 1,
            request: Request::Define {
                app: "a".into(),
                revision: 1,
                config: crate::runner::process_config(spec.process.as_ref().unwrap(), &spec),
            },
        };
        let line = serde_json::to_string(&request).unwrap();
        let back: Result<Envelope, _> = serde_json::from_str(&line);
        assert!(back.is_ok(), "{line}: {back:?}");
    }
}
