//! Router drivers: how requests reach the ready instances of each revision.

pub mod builtin;
pub mod haproxy;
pub mod local;

/// Which router carries an app's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RouterKind {
    /// The built-in router, in the data plane.
    #[default]
    Builtin,
    /// HAProxy, driven through its runtime API (see [`haproxy`]).
    Haproxy,
    /// Kubernetes: a Service per revision and a Gateway API HTTPRoute with their weights.
    Gateway,
    /// Kubernetes: one Service across revisions; traffic follows the ready pods.
    Service,
}

impl RouterKind {
    /// The name the spec uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Builtin => "builtin",
            RouterKind::Haproxy => "haproxy",
            RouterKind::Gateway => "gateway",
            RouterKind::Service => "service",
        }
    }
}
