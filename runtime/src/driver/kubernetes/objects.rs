//! The objects Slipway keeps in a cluster for one app, as the API's JSON: their names, labels
//! and shapes. Nothing here talks to the API.
//!
//! | object | name | what it is for |
//! | --- | --- | --- |
//! | ConfigMap | `APP-slipway` | the app's root: every other object has an owner reference to it, so deleting it deletes them all; holds the maintenance page's nginx configuration |
//! | ReplicaSet | `APP-rN` | revision N's pods, scaled through its scale subresource |
//! | Service | `APP-rN` (gateway) or `APP` (service) | revision N's pods, or the app's pods of the routed revisions |
//! | HTTPRoute | `APP` (gateway) | the Gateway API route: one backendRef per routed revision, with its weight |
//! | Deployment, Service | `APP-maintenance` | the maintenance backend: nginx answering 503 with a page |

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::spec::kubernetes::{Kubernetes, secret_key_ref};
use crate::spec::{Probe, ProbeKind, Spec};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const APP: &str = "slipway.dev/app";
pub const REVISION: &str = "slipway.dev/revision";
pub const ROLE: &str = "slipway.dev/role";
/// On a ReplicaSet: the digest of the revision's spec, to tell a stale object from ours.
pub const DIGEST: &str = "slipway.dev/spec-digest";
/// The field manager of server-side apply.
pub const MANAGER: &str = "slipway";
/// The port every Service of the app answers on; each forwards to its pods' own port, so
/// revisions listening on different ports are routed alike.
pub const SERVICE_PORT: u16 = 80;
/// The port the maintenance backend listens on.
pub const MAINTENANCE_PORT: u16 = 8080;

pub fn root_name(app: &str) -> String {
    format!("{app}-slipway")
}

pub fn revision_name(app: &str, revision: u32) -> String {
    format!("{app}-r{revision}")
}

pub fn maintenance_name(app: &str) -> String {
    format!("{app}-maintenance")
}

/// The revision a `APP-rN` name stands for.
pub fn revision_of(app: &str, name: &str) -> Option<u32> {
    name.strip_prefix(app)?.strip_prefix("-r")?.parse().ok()
}

/// The label selector for everything of `app`.
pub fn app_selector(app: &str) -> String {
    format!("{MANAGED_BY}=slipway,{APP}={app}")
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.into(), "slipway".into()), (APP.into(), app.into())])
}

/// The owner reference every object of the app carries: deleting the root deletes them.
pub fn owned_by(root: &Value) -> Value {
    json!([{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": root["metadata"]["name"],
        "uid": root["metadata"]["uid"],
    }])
}

/// The app's root ConfigMap, with the maintenance backend's nginx configuration.
pub fn root(app: &str, namespace: &str) -> Value {
    let page = format!(
        "<!doctype html><title>{app}: down for maintenance</title><h1>{app} is down for maintenance</h1><p>Please try again in a few minutes.</p>"
    );
    let config = format!(
        "server {{\n  listen {MAINTENANCE_PORT};\n  location / {{\n    add_header Retry-After 60 always;\n    default_type text/html;\n    return 503 '{page}';\n  }}\n}}\n"
    );
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": root_name(app), "namespace": namespace, "labels": labels(app)},
        "data": {"default.conf": config},
    })
}

/// Revision `revision`'s ReplicaSet, created at 0 replicas.
pub fn replica_set(app: &str, namespace: &str, revision: u32, spec: &Spec, owner: &Value) -> Value {
    let mut selector = labels(app);
    selector.insert(REVISION.into(), revision.to_string());
    let template = pod_template(app, revision, spec);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": revision_name(app, revision),
            "namespace": namespace,
            "labels": selector,
            "annotations": {DIGEST: spec.digest()},
            "ownerReferences": owner,
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": selector},
            "template": template,
        },
    })
}

/// The pod template of a revision: the spec's own template, or one built from the
/// `[kubernetes]` table, with Slipway's labels, `PORT`, the readiness probe from `[probe]`,
/// the grace period and the drain (a preStop sleep) added where the template has none.
pub fn pod_template(app: &str, revision: u32, spec: &Spec) -> Value {
    let kube = spec
        .kubernetes
        .as_ref()
        .expect("a Kubernetes app has a [kubernetes] table");
    let port = kube.app_port().unwrap_or(8080);
    let mut template = match kube.template() {
        Some(template) => serde_json::to_value(template).expect("a pod template has a JSON form"),
        None => built_template(kube, port),
    };
    let mut pod_labels = labels(app);
    pod_labels.insert(REVISION.into(), revision.to_string());
    pod_labels.insert(ROLE.into(), "app".into());
    let metadata = &mut template["metadata"];
    if !metadata.is_object() {
        *metadata = json!({});
    }
    for (key, value) in pod_labels {
        metadata["labels"][key] = Value::String(value);
    }
    let pod = &mut template["spec"];
    if pod.get("terminationGracePeriodSeconds").is_none_or(Value::is_null) {
        pod["terminationGracePeriodSeconds"] = json!(kube.grace_period.as_secs() + kube.drain.as_secs());
    }
    let container = &mut pod["containers"][0];
    let env = container["env"].as_array().cloned().unwrap_or_default();
    if !env.iter().any(|e| e["name"] == "PORT") {
        let mut with_port = vec![json!({"name": "PORT", "value": port.to_string()})];
        with_port.extend(env);
        container["env"] = Value::Array(with_port);
    }
    if container.get("readinessProbe").is_none_or(Value::is_null) {
        container["readinessProbe"] = readiness_probe(&spec.probe, port);
    }
    if container["lifecycle"].get("preStop").is_none_or(Value::is_null) && !kube.drain.is_zero() {
        container["lifecycle"]["preStop"] = json!({"sleep": {"seconds": kube.drain.as_secs().max(1)}});
    }
    template
}

fn built_template(kube: &Kubernetes, port: u16) -> Value {
    let mut env: Vec<Value> = kube
        .env
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    for (name, reference) in &kube.secret_env {
        if let Some((secret, key)) = secret_key_ref(reference) {
            env.push(json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
        }
    }
    let mut container = json!({
        "name": "app",
        "image": kube.image,
        "ports": [{"name": "http", "containerPort": port}],
        "env": env,
    });
    if let Some(command) = &kube.command {
        container["command"] = json!(command);
    }
    if let Some(args) = &kube.args {
        container["args"] = json!(args);
    }
    let resources = &kube.resources;
    if !resources.requests.is_empty() || !resources.limits.is_empty() {
        container["resources"] = json!({"requests": resources.requests, "limits": resources.limits});
    }
    let mut pod = json!({"containers": [container]});
    if let Some(account) = &kube.service_account {
        pod["serviceAccountName"] = json!(account);
    }
    if !kube.node_selector.is_empty() {
        pod["nodeSelector"] = json!(kube.node_selector);
    }
    if !kube.tolerations.is_empty() {
        pod["tolerations"] = json!(kube.tolerations);
    }
    json!({"metadata": {}, "spec": pod})
}

/// `[probe]` as a readiness probe. The kubelet counts any 2xx or 3xx as success, so
/// `status` cannot be required exactly here.
fn readiness_probe(probe: &Probe, port: u16) -> Value {
    let seconds = |d: std::time::Duration| d.as_secs().max(1);
    let mut out = match probe.kind() {
        ProbeKind::Http { path, .. } => json!({"httpGet": {"path": path, "port": port}}),
        ProbeKind::Tcp => json!({"tcpSocket": {"port": port}}),
    };
    out["periodSeconds"] = json!(seconds(probe.interval));
    out["timeoutSeconds"] = json!(seconds(probe.timeout));
    out["successThreshold"] = json!(probe.success_threshold);
    out["failureThreshold"] = json!(probe.failure_threshold);
    out
}

/// A Service named `name` over the app's pods matching `selector`, answering on
/// [`SERVICE_PORT`] and forwarding to the pods' `target` port.
pub fn service(
    app: &str,
    namespace: &str,
    name: &str,
    selector: &BTreeMap<String, String>,
    target: u16,
    owner: &Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(app), "ownerReferences": owner},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": target, "protocol": "TCP"}],
        },
    })
}

/// The selector of revision `revision`'s pods.
pub fn revision_pods(app: &str, revision: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP.into(), app.into()),
        (ROLE.into(), "app".into()),
        (REVISION.into(), revision.to_string()),
    ])
}

/// The selector of every revision's pods.
pub fn app_pods(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(APP.into(), app.into()), (ROLE.into(), "app".into())])
}

/// The selector of the maintenance backend's pods.
pub fn maintenance_pods(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(APP.into(), app.into()), (ROLE.into(), "maintenance".into())])
}

/// The maintenance backend: one nginx pod answering 503 with the app's maintenance page.
pub fn maintenance_deployment(app: &str, namespace: &str, image: &str, owner: &Value) -> Value {
    let pod_labels = {
        let mut l = labels(app);
        l.extend(maintenance_pods(app));
        l
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": maintenance_name(app),
            "namespace": namespace,
            "labels": labels(app),
            "ownerReferences": owner,
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": maintenance_pods(app)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "containers": [{
                        "name": "maintenance",
                        "image": image,
                        "ports": [{"name": "http", "containerPort": MAINTENANCE_PORT}],
                        "readinessProbe": {"tcpSocket": {"port": MAINTENANCE_PORT}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/nginx/conf.d"}],
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": root_name(app)}}],
                },
            },
        },
    })
}

/// Where the app's HTTPRoute attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: Option<String>,
    pub name: String,
    pub section: Option<String>,
    pub hostnames: Vec<String>,
}

/// The app's HTTPRoute: one rule whose backendRefs are the routed revisions' Services with
/// their weights exactly as the host API has them (Gateway API weights are relative, like
/// Slipway's), or the maintenance backend alone.
pub fn http_route(
    app: &str,
    namespace: &str,
    gateway: &GatewayRef,
    weights: &[(u32, u32)],
    maintenance: bool,
    owner: &Value,
) -> Value {
    let backends: Vec<Value> = if maintenance {
        vec![json!({"name": maintenance_name(app), "port": SERVICE_PORT, "weight": 1})]
    } else {
        weights
            .iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|(revision, weight)| json!({"name": revision_name(app, *revision), "port": SERVICE_PORT, "weight": weight}))
            .collect()
    };
    let mut parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name});
    if let Some(ns) = &gateway.namespace {
        parent["namespace"] = json!(ns);
    }
    if let Some(section) = &gateway.section {
        parent["sectionName"] = json!(section);
    }
    let mut spec = json!({
        "parentRefs": [parent],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
    });
    if !gateway.hostnames.is_empty() {
        spec["hostnames"] = json!(gateway.hostnames);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": app, "namespace": namespace, "labels": labels(app), "ownerReferences": owner},
        "spec": spec,
    })
}

/// Reads an HTTPRoute this module wrote back into weights and the maintenance state.
pub fn read_http_route(app: &str, route: &Value) -> (Vec<(u32, u32)>, bool) {
    let backends = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut weights = Vec::new();
    let mut maintenance = false;
    for backend in backends {
        let name = backend["name"].as_str().unwrap_or_default();
        let weight = backend["weight"].as_u64().unwrap_or(1) as u32;
        if name == maintenance_name(app) {
            maintenance = true;
        } else if let Some(revision) = revision_of(app, name) {
            weights.push((revision, weight));
        }
    }
    (weights, maintenance)
}
