//! The Kubernetes driver: an app's revisions as ReplicaSets in a cluster, routed by the
//! cluster. The same strategies drive it as drive local processes.
//!
//! - **Compute.** One ReplicaSet per revision (`APP-rN`, see [`objects`]), created at 0
//!   replicas and scaled through its scale subresource. What is observed comes from two
//!   reflectors (watches, never polling), one over the app's ReplicaSets and one over its pods:
//!   desired from the ReplicaSet, current from its pods not on their way out, ready from their
//!   `Ready` condition, failed from container restarts, pods that failed and pods the
//!   scheduler cannot place. Readiness is the kubelet's, from the readiness probe that
//!   `[probe]` becomes. A stopping pod leaves its endpoints at once and is signalled after
//!   the spec's `drain` (a preStop sleep), then has its grace period.
//! - **Routing** ([`Routing`]): `gateway` keeps a Service per revision and one HTTPRoute whose
//!   backendRefs carry the host API's weights exactly; `service` keeps one Service whose
//!   selector is the one routed revision's pods, or every revision's pods when more than one
//!   is routed (then traffic follows the ready pods, and [`Router::weights`] says so: it
//!   reports each revision's share of the ready pods, not what was asked). Maintenance points
//!   the route at a small nginx backend the driver keeps.
//! - **Adoption.** Objects are found by label (`slipway.dev/app`) and taken over as they are:
//!   pods keep running, weights are read back from the route. Every object has an owner
//!   reference to the app's root ConfigMap, so deleting the app deletes everything.
//! - **Errors.** Every API error (forbidden, quota, conflict …) reaches the rollout as an
//!   infrastructure error carrying the API's own message.

pub mod objects;
mod observe;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use self::objects::GatewayRef;
use self::observe::Observed;
use super::{Compute, Counts, DriverError, DriverEvent, Happened, HttpResult, MAX_WEIGHT, ProbeResult, Router};
use crate::spec::Spec;

const DRIVER: &str = "kubernetes";

/// How long opening an app waits for its first full view of the cluster.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// How the cluster routes an app's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// A Service per revision and a Gateway API HTTPRoute with exact weights.
    Gateway(GatewayRef),
    /// One Service across revisions.
    Service,
}

impl Routing {
    /// The routing a validated Kubernetes spec asks for.
    pub fn of(spec: &Spec) -> Routing {
        use crate::driver::router::RouterKind;
        match spec.router.kind {
            RouterKind::Gateway => {
                let text = spec.router.gateway.clone().unwrap_or_default();
                let (namespace, name) = match text.split_once('/') {
                    Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
                    None => (None, text),
                };
                Routing::Gateway(GatewayRef {
                    namespace,
                    name,
                    section: spec.router.section.clone(),
                    hostnames: spec.router.hosts.clone(),
                })
            }
            _ => Routing::Service,
        }
    }
}

/// Connects to the cluster as kubectl would: the kubeconfig (`KUBECONFIG`, `~/.kube/config`),
/// or the pod's service account inside a cluster.
pub async fn connect() -> Result<kube::Client, DriverError> {
    kube::Client::try_default().await.map_err(|error| {
        DriverError::infrastructure(
            DRIVER,
            format!(
                "cannot reach a Kubernetes cluster ({error}); set KUBECONFIG or ~/.kube/config, or run the runner in the cluster with a service account"
            ),
            error,
        )
    })
}

/// One app in a cluster: its [`Compute`] and [`Router`].
pub struct KubeApp {
    app: String,
    namespace: String,
    client: kube::Client,
    routing: Mutex<Routing>,
    /// The app's root ConfigMap as the API returned it (its uid makes owner references).
    root: Value,
    /// The app's port, for Services and backendRefs.
    port: Mutex<u16>,
    state: Arc<Mutex<State>>,
    generation: watch::Sender<u64>,
    events: broadcast::Sender<DriverEvent>,
    watching: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApp {
    fn drop(&mut self) {
        self.watching.abort();
    }
}

#[derive(Default)]
struct State {
    observed: Observed,
    /// What `scale` asked for, until the ReplicaSet shows it.
    asked: BTreeMap<u32, u32>,
    weights: Vec<(u32, u32)>,
    maintenance: bool,
    /// The last watch error, shown while the view may be stale.
    watch_error: Option<String>,
}

/// An API error as the driver reports it: what it was doing, then the API's own message.
fn api_error(doing: impl std::fmt::Display, error: kube::Error) -> DriverError {
    let message = match &error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                403 if status.message.contains("exceeded quota") => " (a ResourceQuota refused it)",
                403 => " (the runner's service account lacks this permission: see examples/kubernetes/rbac.yaml)",
                _ => "",
            };
            format!("{doing}: {} ({} {}){hint}", status.message, status.code, status.reason)
        }
        other => format!("{doing}: {other}"),
    };
    DriverError::infrastructure(DRIVER, message, error)
}

/// Makes `call` again when the API answers 409 Conflict (the object changed between read and
/// write, as under another writer), up to three tries in all. Other errors return at once.
async fn retry_conflicts<T, F, Fut>(mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut tries = 1;
    loop {
        match call().await {
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" && tries < 3 => {
                tracing::debug!(message = %status.message, "conflict; trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            other => return other,
        }
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply(objects::MANAGER).force()
}

impl KubeApp {
    /// Takes over (or sets up) `spec`'s app in the cluster: applies its root and maintenance
    /// backend, starts watching its ReplicaSets and pods, and reads back its route. Returns once
    /// the driver has a full view of the cluster.
    pub async fn open(client: kube::Client, spec: &Spec) -> Result<Arc<KubeApp>, DriverError> {
        Self::open_within(client, spec, SYNC_TIMEOUT).await
    }

    async fn open_within(
        client: kube::Client,
        spec: &Spec,
        sync_timeout: Duration,
    ) -> Result<Arc<KubeApp>, DriverError> {
        let kube = spec
            .kubernetes
            .as_ref()
            .expect("a Kubernetes app has a [kubernetes] table");
        let app = spec.name.clone();
        let namespace = kube
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let port = kube.app_port().unwrap_or(8080);
        let routing = Routing::of(spec);

        let roots: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let root = roots
            .patch(
                &objects::root_name(&app),
                &ssa(),
                &Patch::Apply(objects::root(&app, &namespace)),
            )
            .await
            .map_err(|e| {
                api_error(
                    format!("applying ConfigMap {}/{}", namespace, objects::root_name(&app)),
                    e,
                )
            })?;
        let root = serde_json::to_value(root).expect("a ConfigMap has a JSON form");
        let owner = objects::owned_by(&root);
        let deployment = objects::maintenance_deployment(&app, &namespace, &kube.maintenance_image, &owner);
        apply_dynamic(
            &client,
            &namespace,
            &deployments(),
            &objects::maintenance_name(&app),
            deployment,
        )
        .await?;
        let service = objects::service(
            &app,
            &namespace,
            &objects::maintenance_name(&app),
            &objects::maintenance_pods(&app),
            objects::MAINTENANCE_PORT,
            &owner,
        );
        apply_dynamic(
            &client,
            &namespace,
            &services(),
            &objects::maintenance_name(&app),
            service,
        )
        .await?;

        let (generation, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(Mutex::new(State::default()));
        let (synced_tx, mut synced) = watch::channel(false);
        let watching = tokio::spawn(observe::run(
            client.clone(),
            namespace.clone(),
            app.clone(),
            state.clone(),
            generation.clone(),
            events.clone(),
            synced_tx,
        ));
        let this = Arc::new(KubeApp {
            app,
            namespace,
            client,
            routing: Mutex::new(routing),
            root,
            port: Mutex::new(port),
            state,
            generation,
            events,
            watching,
        });
        let synced = matches!(
            tokio::time::timeout(sync_timeout, synced.wait_for(|s| *s)).await,
            Ok(Ok(_))
        );
        if !synced {
            let why = this
                .state
                .lock()
                .unwrap()
                .watch_error
                .clone()
                .unwrap_or_else(|| "no answer".into());
            return Err(DriverError::Infrastructure {
                driver: DRIVER,
                message: format!(
                    "could not watch app {}'s ReplicaSets and pods in namespace {} within {} s: {why}",
                    this.app,
                    this.namespace,
                    sync_timeout.as_secs()
                ),
                source: None,
            });
        }
        this.read_back_route().await?;
        Ok(this)
    }

    /// Follows a changed spec: its port and routing (the next route change applies them).
    pub fn update(&self, spec: &Spec) {
        if let Some(port) = spec.kubernetes.as_ref().and_then(|k| k.app_port()) {
            *self.port.lock().unwrap() = port;
        }
        *self.routing.lock().unwrap() = Routing::of(spec);
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether the cluster has pods or desired pods of `revision`.
    pub fn runs(&self, revision: u32) -> bool {
        self.counts(revision).is_ok_and(|c| c.desired > 0 || c.current > 0)
    }

    /// How many pods of the app's revisions the cluster has.
    pub fn pods(&self) -> usize {
        self.state.lock().unwrap().observed.pods.len()
    }

    /// Creates revision `revision`'s ReplicaSet at 0 replicas (and its Service, routing by
    /// gateway). One that exists already is adopted if it was made from the same spec.
    pub async fn define(&self, revision: u32, spec: &Spec) -> Result<(), DriverError> {
        let owner = objects::owned_by(&self.root);
        let name = objects::revision_name(&self.app, revision);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let wanted = objects::replica_set(&self.app, &self.namespace, revision, spec, &owner);
        let typed: ReplicaSet = serde_json::from_value(wanted).map_err(|e| {
            DriverError::Invalid(format!(
                "revision {revision}'s pod template is not one Kubernetes accepts: {e}"
            ))
        })?;
        match replica_sets.create(&PostParams::default(), &typed).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = replica_sets
                    .get(&name)
                    .await
                    .map_err(|e| api_error(format!("reading ReplicaSet {}/{name}", self.namespace), e))?;
                let digest = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(objects::DIGEST))
                    .cloned();
                if digest.as_deref() != Some(spec.digest().as_str()) {
                    return Err(DriverError::Infrastructure {
                        driver: DRIVER,
                        message: format!(
                            "ReplicaSet {}/{name} exists but was not made from revision {revision}'s spec (another runner, or an app of the same name deleted without its objects); delete it with `kubectl delete replicaset -n {} {name}` and deploy again",
                            self.namespace, self.namespace
                        ),
                        source: None,
                    });
                }
            }
            Err(error) => {
                return Err(api_error(
                    format!("creating ReplicaSet {}/{name}", self.namespace),
                    error,
                ));
            }
        }
        if matches!(*self.routing.lock().unwrap(), Routing::Gateway(_)) {
            let port = *self.port.lock().unwrap();
            let service = objects::service(
                &self.app,
                &self.namespace,
                &name,
                &objects::revision_pods(&self.app, revision),
                port,
                &owner,
            );
            apply_dynamic(&self.client, &self.namespace, &services(), &name, service).await?;
        }
        self.state.lock().unwrap().observed.defined.insert(revision);
        self.bump();
        Ok(())
    }

    /// Deletes the app's root ConfigMap; the cluster's garbage collector deletes everything
    /// that it owns (ReplicaSets and their pods, Services, the route, the maintenance backend).
    pub async fn remove(&self) -> Result<(), DriverError> {
        let roots: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = objects::root_name(&self.app);
        let params = kube::api::DeleteParams::foreground();
        match roots.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(api_error(
                format!("deleting ConfigMap {}/{name}", self.namespace),
                error,
            )),
        }
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Reads the route the cluster has, so an adopted app keeps its weights and maintenance.
    async fn read_back_route(&self) -> Result<(), DriverError> {
        let routing = self.routing.lock().unwrap().clone();
        match routing {
            Routing::Gateway(_) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &self.namespace, &http_routes());
                let route = api
                    .get_opt(&self.app)
                    .await
                    .map_err(|e| api_error(format!("reading HTTPRoute {}/{}", self.namespace, self.app), e))?;
                if let Some(route) = route {
                    let value = serde_json::to_value(route).expect("an object has a JSON form");
                    let (weights, maintenance) = objects::read_http_route(&self.app, &value);
                    let mut state = self.state.lock().unwrap();
                    state.weights = weights;
                    state.maintenance = maintenance;
                }
            }
            Routing::Service => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
                let service = api
                    .get_opt(&self.app)
                    .await
                    .map_err(|e| api_error(format!("reading Service {}/{}", self.namespace, self.app), e))?;
                let selector = service.and_then(|s| s.spec?.selector).unwrap_or_default();
                let mut state = self.state.lock().unwrap();
                state.maintenance = selector.get(objects::ROLE).map(String::as_str) == Some("maintenance");
                state.weights = match selector.get(objects::REVISION).and_then(|r| r.parse().ok()) {
                    Some(revision) => vec![(revision, MAX_WEIGHT)],
                    None => Vec::new(),
                };
            }
        }
        Ok(())
    }

    /// Applies the route for `weights` and `maintenance`.
    async fn apply_route(&self, weights: &[(u32, u32)], maintenance: bool) -> Result<(), DriverError> {
        let routing = self.routing.lock().unwrap().clone();
        let port = *self.port.lock().unwrap();
        let owner = objects::owned_by(&self.root);
        match routing {
            Routing::Gateway(gateway) => {
                let route = objects::http_route(&self.app, &self.namespace, &gateway, weights, maintenance, &owner);
                apply_dynamic(&self.client, &self.namespace, &http_routes(), &self.app, route).await
            }
            Routing::Service => {
                let routed: Vec<u32> = weights.iter().filter(|(_, w)| *w > 0).map(|(r, _)| *r).collect();
                let (selector, target) = if maintenance {
                    (objects::maintenance_pods(&self.app), objects::MAINTENANCE_PORT)
                } else {
                    match routed.as_slice() {
                        [one] => (objects::revision_pods(&self.app, *one), port),
                        _ => {
                            // None routed selects no pod at all; several select every
                            // revision's pods, and traffic follows the ready ones.
                            let mut all = objects::app_pods(&self.app);
                            if routed.is_empty() {
                                all.insert(objects::REVISION.into(), "none".into());
                            }
                            (all, port)
                        }
                    }
                };
                let service = objects::service(&self.app, &self.namespace, &self.app, &selector, target, &owner);
                apply_dynamic(&self.client, &self.namespace, &services(), &self.app, service).await
            }
        }
    }

    /// Each revision's share of the app's ready pods, on the 0–256 scale: where a Service
    /// across revisions sends traffic.
    fn ready_shares(&self) -> Vec<(u32, u32)> {
        let state = self.state.lock().unwrap();
        let ready: Vec<(u32, u32)> = state
            .observed
            .counts()
            .into_iter()
            .filter(|(_, c)| c.ready > 0)
            .map(|(r, c)| (r, c.ready))
            .collect();
        shares(&ready)
    }
}

/// Splits [`MAX_WEIGHT`] in proportion to `amounts`, largest remainders first, so the shares
/// add up to exactly 256.
pub fn shares(amounts: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let total: u64 = amounts.iter().map(|(_, a)| u64::from(*a)).sum();
    if total == 0 {
        return Vec::new();
    }
    let max = u64::from(MAX_WEIGHT);
    let mut out: Vec<(u32, u32, u64)> = amounts
        .iter()
        .map(|(r, a)| {
            let exact = u64::from(*a) * max;
            (*r, (exact / total) as u32, exact % total)
        })
        .collect();
    let given: u64 = out.iter().map(|(_, s, _)| u64::from(*s)).sum();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|a, b| out[*b].2.cmp(&out[*a].2).then(out[*a].0.cmp(&out[*b].0)));
    for index in order.into_iter().take((max - given) as usize) {
        out[index].1 += 1;
    }
    out.into_iter().map(|(r, s, _)| (r, s)).collect()
}

fn deployments() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&())
}

fn services() -> ApiResource {
    ApiResource::erase::<Service>(&())
}

/// The Gateway API's HTTPRoute (gateway.networking.k8s.io/v1), which k8s-openapi lacks.
pub fn http_routes() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// Server-side applies `object` (Slipway's field manager, forced).
async fn apply_dynamic(
    client: &kube::Client,
    namespace: &str,
    resource: &ApiResource,
    name: &str,
    object: Value,
) -> Result<(), DriverError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let patch = Patch::Apply(object);
    let params = ssa();
    retry_conflicts(|| api.patch(name, &params, &patch))
        .await
        .map(|_| ())
        .map_err(|e| api_error(format!("applying {} {namespace}/{name}", resource.kind), e))
}

#[async_trait]
impl Compute for KubeApp {
    async fn scale(&self, revision: u32, replicas: u32) -> Result<(), DriverError> {
        let from = self.counts(revision)?.desired;
        let name = objects::revision_name(&self.app, revision);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        let params = PatchParams::default();
        retry_conflicts(|| api.patch_scale(&name, &params, &patch))
            .await
            .map_err(|e| api_error(format!("scaling ReplicaSet {}/{name} to {replicas}", self.namespace), e))?;
        let counts = {
            let mut state = self.state.lock().unwrap();
            state.asked.insert(revision, replicas);
            observe::with_asked(&state.observed, &state.asked)
        };
        let generation = {
            self.bump();
            *self.generation.borrow()
        };
        if from != replicas {
            let _ = self.events.send(DriverEvent {
                at_ms: crate::store::now_ms(),
                generation,
                revision,
                what: Happened::Scaled { from, to: replicas },
                counts,
            });
        }
        Ok(())
    }

    fn counts(&self, revision: u32) -> Result<Counts, DriverError> {
        let state = self.state.lock().unwrap();
        observe::with_asked(&state.observed, &state.asked)
            .get(&revision)
            .copied()
            .ok_or(DriverError::UnknownRevision(revision))
    }

    fn revisions(&self) -> BTreeMap<u32, Counts> {
        let state = self.state.lock().unwrap();
        observe::with_asked(&state.observed, &state.asked)
    }

    fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    async fn wait_change(&self, seen: u64, timeout_ms: u64) -> u64 {
        let mut receiver = self.generation.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), receiver.wait_for(|g| *g > seen)).await;
        *self.generation.borrow()
    }

    /// Readiness as the kubelet probes it: the `Ready` condition of each pod.
    async fn probe(&self, revision: u32) -> Result<ProbeResult, DriverError> {
        self.counts(revision)?;
        let state = self.state.lock().unwrap();
        let mut result = ProbeResult::default();
        for pod in state
            .observed
            .pods
            .values()
            .filter(|p| p.revision == revision && !p.terminating)
        {
            result.probed += 1;
            if pod.ready {
                result.ready += 1;
            } else {
                result
                    .failures
                    .push(format!("pod {}: {}", pod.name, pod.not_ready_reason()));
            }
        }
        Ok(result)
    }

    /// `GET path` on each ready pod through the API server's pod proxy, so it works from
    /// outside the cluster as from inside (the `pods/proxy` permission).
    async fn check_http(
        &self,
        revision: u32,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> Result<HttpResult, DriverError> {
        self.counts(revision)?;
        let port = *self.port.lock().unwrap();
        let pods: Vec<String> = {
            let state = self.state.lock().unwrap();
            state
                .observed
                .pods
                .values()
                .filter(|p| p.revision == revision && p.ready && !p.terminating)
                .map(|p| p.name.clone())
                .collect()
        };
        let mut result = HttpResult::default();
        for pod in pods {
            result.checked += 1;
            let uri = format!(
                "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy{}",
                self.namespace,
                if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                }
            );
            let request = http::Request::get(&uri)
                .body(kube::client::Body::empty())
                .map_err(|e| DriverError::Invalid(format!("path {path:?}: {e}")))?;
            let answer = tokio::time::timeout(timeout, async {
                let response = self.client.send(request).await?;
                let code = response.status().as_u16();
                let _ = response.into_body().collect().await;
                Ok::<u16, kube::Error>(code)
            })
            .await;
            match answer {
                Ok(Ok(code)) if code == status => result.passed += 1,
                Ok(Ok(code)) => result
                    .failures
                    .push(format!("pod {pod}: GET {path} answered {code}, expected {status}")),
                Ok(Err(error)) => result.failures.push(format!("pod {pod}: GET {path} failed: {error}")),
                Err(_) => result.failures.push(format!(
                    "pod {pod}: GET {path} took longer than {} ms",
                    timeout.as_millis()
                )),
            }
        }
        Ok(result)
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }
}

#[async_trait]
impl Router for KubeApp {
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        let maintenance = self.state.lock().unwrap().maintenance;
        self.apply_route(weights, maintenance).await?;
        self.state.lock().unwrap().weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        self.bump();
        Ok(())
    }

    /// With a gateway, the weights as set. With a Service across revisions, what it does:
    /// each revision's share of the ready pods when more than one revision is routed.
    fn weights(&self) -> Vec<(u32, u32)> {
        let weights = self.state.lock().unwrap().weights.clone();
        let spread = matches!(*self.routing.lock().unwrap(), Routing::Service) && weights.len() > 1;
        if spread { self.ready_shares() } else { weights }
    }

    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        let weights = self.state.lock().unwrap().weights.clone();
        self.apply_route(&weights, on).await?;
        self.state.lock().unwrap().maintenance = on;
        self.bump();
        Ok(())
    }

    fn maintenance(&self) -> bool {
        self.state.lock().unwrap().maintenance
    }

    async fn traffic(&self, _revision: u32, _window: Duration) -> Result<super::TrafficStats, DriverError> {
        Err(DriverError::Invalid(format!(
            "app {}'s traffic goes through the cluster's {}, which Slipway does not see; measure it there (its metrics, or Prometheus)",
            self.app,
            match *self.routing.lock().unwrap() {
                Routing::Gateway(_) => "Gateway",
                Routing::Service => "Service",
            }
        )))
    }
}
