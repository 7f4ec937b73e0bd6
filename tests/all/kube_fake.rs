//! A small, stateful stand-in for a Kubernetes API server, served over real HTTP on
//! 127.0.0.1 so the real `slipway` binary reaches it through a kubeconfig, as it would a
//! cluster. It speaks the API's JSON for what the Kubernetes driver uses — ConfigMaps,
//! ReplicaSets and their scale subresource, pods, Services, Deployments, HTTPRoutes; lists,
//! watches from a resourceVersion, server-side apply, merge patches, creates with 409 on a
//! name taken, deletes that cascade through owner references — and plays the ReplicaSet
//! controller and the kubelet: pods are created and deleted to match each ReplicaSet's
//! replicas, become ready after a delay, and stop after a grace period.
//!
//! It is not Kubernetes: no admission, no defaulting beyond what the driver relies on, no
//! scheduling. What it proves is the driver's side: the requests it makes and how it follows
//! what the watches say.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Key = (String, String, String);

/// A running fake API server. Dropping it stops it.
pub struct FakeCluster {
    pub url: String,
    world: Arc<Mutex<World>>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

struct World {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    changes: broadcast::Sender<Change>,
    ready_after: Duration,
    stop_after: Duration,
    /// (method, path suffix) → the message a 403 carries.
    forbidden: Vec<(String, String, String)>,
    requests: Vec<String>,
    /// The body of every PATCH, with its plural: what was applied, in order.
    patches: Vec<(String, Value)>,
    handle: Option<tokio::runtime::Handle>,
    /// Itself, for the timers of pods becoming ready and going away.
    this: std::sync::Weak<Mutex<World>>,
}

impl FakeCluster {
    pub fn start() -> FakeCluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (changes, _) = broadcast::channel(4096);
        let world = Arc::new_cyclic(|this| {
            Mutex::new(World {
                rv: 1,
                uid: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                changes,
                ready_after: Duration::from_millis(300),
                stop_after: Duration::from_millis(200),
                forbidden: Vec::new(),
                requests: Vec::new(),
                patches: Vec::new(),
                handle: Some(runtime.handle().clone()),
                this: this.clone(),
            })
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = world.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let world = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let world = world.clone();
                        async move { Ok::<_, Infallible>(handle(world, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeCluster {
            url,
            world,
            runtime: Some(runtime),
        }
    }

    /// A kubeconfig that points at this server, written to a fresh file.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        let path = crate::runner::unique_dir("kube").join("config");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user:\n    token: fake\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Answers `method` on paths ending in `suffix` with 403 and `message`.
    pub fn forbid(&self, method: &str, suffix: &str, message: &str) {
        self.world
            .lock()
            .unwrap()
            .forbidden
            .push((method.into(), suffix.into(), message.into()));
    }

    pub fn allow_all(&self) {
        self.world.lock().unwrap().forbidden.clear();
    }

    /// The object `plural/name` in `namespace`.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let world = self.world.lock().unwrap();
        world
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every object of `plural` in `namespace`.
    pub fn list(&self, plural: &str, namespace: &str) -> Vec<Value> {
        let world = self.world.lock().unwrap();
        world
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.world.lock().unwrap().requests.clone()
    }

    /// The bodies of every PATCH of `plural` so far, in order.
    pub fn patches(&self, plural: &str) -> Vec<Value> {
        let world = self.world.lock().unwrap();
        world
            .patches
            .iter()
            .filter(|(p, _)| p == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Makes a container of `pod` restart, as a crash would.
    pub fn crash(&self, namespace: &str, pod: &str) {
        let mut world = self.world.lock().unwrap();
        let key = ("pods".to_string(), namespace.to_string(), pod.to_string());
        if let Some(mut object) = world.objects.get(&key).cloned() {
            let count = object["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0);
            object["status"]["containerStatuses"][0]["restartCount"] = json!(count + 1);
            world.put("pods", "MODIFIED", object);
        }
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn answer(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn matches_selector(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

fn now() -> String {
    "2026-11-30T00:00:00Z".into()
}

impl World {
    /// Stores `object` under `plural`, with a new resourceVersion, and tells the watches.
    fn put(&mut self, plural: &str, kind: &'static str, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = (plural.to_string(), namespace.clone(), name);
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        let change = Change {
            rv: self.rv,
            plural: plural.into(),
            namespace,
            kind,
            object: object.clone(),
        };
        self.log.push(change.clone());
        let _ = self.changes.send(change);
        object
    }

    fn new_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.uid)
    }

    fn create(&mut self, plural: &str, namespace: &str, mut object: Value) -> Value {
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["uid"] = json!(self.new_uid());
        object["metadata"]["creationTimestamp"] = json!(now());
        let object = self.put(plural, "ADDED", object);
        if plural == "replicasets" {
            self.reconcile(namespace);
        }
        object
    }

    /// Deletes an object, and whatever it owns, at once.
    fn delete(&mut self, key: &Key) {
        let Some(object) = self.objects.get(key).cloned() else {
            return;
        };
        let uid = object["metadata"]["uid"].clone();
        self.put(&key.0, "DELETED", object);
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.delete(&key);
        }
    }

    /// The ReplicaSet controller: pods to match each ReplicaSet's replicas.
    fn reconcile(&mut self, namespace: &str) {
        let sets: Vec<Value> = self
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == "replicasets" && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect();
        for rs in sets {
            let uid = rs["metadata"]["uid"].clone();
            let name = rs["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let wanted = rs["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
            let mut pods: Vec<Value> = self
                .objects
                .iter()
                .filter(|((p, ns, _), o)| {
                    p == "pods"
                        && ns == namespace
                        && o["metadata"]["deletionTimestamp"].is_null()
                        && o["metadata"]["ownerReferences"][0]["uid"] == uid
                })
                .map(|(_, v)| v.clone())
                .collect();
            while pods.len() < wanted {
                let pod_name = format!("{name}-{}", self.uid + 1);
                let mut metadata = rs["spec"]["template"]["metadata"].clone();
                metadata["name"] = json!(pod_name);
                metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid, "controller": true}]);
                let pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": metadata,
                    "spec": rs["spec"]["template"]["spec"],
                    "status": {
                        "phase": "Pending",
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [app]"}
                        ],
                    },
                });
                let pod = self.create("pods", namespace, pod);
                self.later(self.ready_after, namespace, pod_name, Step::Ready);
                pods.push(pod);
            }
            if pods.len() > wanted {
                // Not-ready pods go first, as the ReplicaSet controller does.
                let excess = pods.len() - wanted;
                pods.sort_by_key(|p| p["status"]["conditions"][1]["status"] == "True");
                for mut pod in pods.into_iter().take(excess) {
                    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    pod["metadata"]["deletionTimestamp"] = json!(now());
                    pod["status"]["conditions"][1]["status"] = json!("False");
                    self.put("pods", "MODIFIED", pod);
                    self.later(self.stop_after, namespace, pod_name, Step::Gone);
                }
            }
        }
    }

    fn later(&self, after: Duration, namespace: &str, pod: String, step: Step) {
        let Some(handle) = self.handle.clone() else { return };
        let namespace = namespace.to_string();
        let Some(world) = self.this.upgrade() else { return };
        handle.spawn(async move {
            tokio::time::sleep(after).await;
            let mut world = world.lock().unwrap();
            let key = ("pods".to_string(), namespace, pod);
            let Some(mut object) = world.objects.get(&key).cloned() else {
                return;
            };
            match step {
                Step::Ready if object["metadata"]["deletionTimestamp"].is_null() => {
                    object["status"] = json!({
                        "phase": "Running",
                        "podIP": "10.0.0.1",
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "True"}
                        ],
                        "containerStatuses": [{
                            "name": "app", "ready": true, "restartCount": 0, "image": "app", "imageID": "",
                            "started": true, "state": {"running": {"startedAt": now()}}
                        }],
                    });
                    world.put("pods", "MODIFIED", object);
                }
                Step::Ready => {}
                Step::Gone => world.delete(&key),
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Step {
    Ready,
    Gone,
}

async fn handle(world: Arc<Mutex<World>>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = query(&request);
    world
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {}", request.uri()));
    let parts: Vec<String> = path.trim_start_matches('/').split('/').map(String::from).collect();
    let rest = match parts.first().map(String::as_str) {
        Some("api") => &parts[2..],
        Some("apis") => &parts[3..],
        _ => {
            return answer(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", "the server could not find the requested resource"),
            );
        }
    };
    if rest.len() < 3 || rest[0] != "namespaces" {
        return answer(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "the server could not find the requested resource"),
        );
    }
    let namespace = rest[1].clone();
    let plural = rest[2].clone();
    let name = rest.get(3).cloned();
    let sub = rest.get(4).cloned();
    {
        let world = world.lock().unwrap();
        if let Some((_, _, message)) = world
            .forbidden
            .iter()
            .find(|(m, suffix, _)| *m == method && path.ends_with(suffix.as_str()))
        {
            return answer(StatusCode::FORBIDDEN, &status(403, "Forbidden", message));
        }
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut world_guard = world.lock().unwrap();
    let w = &mut *world_guard;
    if method == "PATCH" {
        w.patches.push((plural.clone(), sent.clone()));
    }
    match (method.as_str(), name, sub.as_deref()) {
        ("GET", None, _) if query.get("watch").map(String::as_str) == Some("true") => {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let selector = query.get("labelSelector").cloned();
            let backlog: Vec<Change> = w
                .log
                .iter()
                .filter(|c| c.rv > from && c.plural == plural && c.namespace == namespace)
                .cloned()
                .collect();
            let live = w.changes.subscribe();
            drop(world_guard);
            let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
            tokio::spawn(async move {
                let mut live = live;
                let mut last = from;
                let line = |c: &Change| Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object})));
                for change in backlog {
                    last = change.rv;
                    if matches_selector(&change.object, selector.as_ref()) && sender.send(line(&change)).await.is_err()
                    {
                        return;
                    }
                }
                let deadline = tokio::time::sleep(Duration::from_secs(60));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => return,
                        change = live.recv() => match change {
                            Ok(change) if change.rv > last && change.plural == plural && change.namespace == namespace => {
                                last = change.rv;
                                if matches_selector(&change.object, selector.as_ref()) && sender.send(line(&change)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        },
                    }
                }
            });
            let stream = futures_util::stream::unfold(receiver, |mut r| async move {
                r.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), r))
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(StreamBody::new(stream.boxed()).boxed_unsync())
                .unwrap()
        }
        ("GET", None, _) => {
            let selector = query.get("labelSelector");
            let items: Vec<Value> = w
                .objects
                .iter()
                .filter(|((p, ns, _), o)| *p == plural && *ns == namespace && matches_selector(o, selector))
                .map(|(_, o)| o.clone())
                .collect();
            answer(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": w.rv.to_string()}, "items": items}),
            )
        }
        ("POST", None, _) => {
            let name = sent["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if w.objects
                .contains_key(&(plural.clone(), namespace.clone(), name.clone()))
            {
                return answer(
                    StatusCode::CONFLICT,
                    &status(409, "AlreadyExists", &format!("{plural} \"{name}\" already exists")),
                );
            }
            let created = w.create(&plural, &namespace, sent);
            answer(StatusCode::CREATED, &created)
        }
        ("GET", Some(name), None) => match w.objects.get(&(plural.clone(), namespace.clone(), name.clone())) {
            Some(object) => answer(StatusCode::OK, object),
            None => answer(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
            ),
        },
        ("GET", Some(name), Some("proxy")) if plural == "pods" => {
            let pod = name.split(':').next().unwrap_or_default().to_string();
            match w.objects.get(&(plural.clone(), namespace.clone(), pod)) {
                Some(_) => Response::builder()
                    .status(200)
                    .body(http_body_util::Full::new(Bytes::from("ok")).boxed_unsync())
                    .unwrap(),
                None => answer(StatusCode::NOT_FOUND, &status(404, "NotFound", "pod not found")),
            }
        }
        ("PATCH", Some(name), Some("scale")) => {
            let key = (plural.clone(), namespace.clone(), name.clone());
            let Some(mut object) = w.objects.get(&key).cloned() else {
                return answer(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                );
            };
            let replicas = sent["spec"]["replicas"].clone();
            object["spec"]["replicas"] = replicas.clone();
            w.put(&plural, "MODIFIED", object);
            w.reconcile(&namespace);
            answer(
                StatusCode::OK,
                &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}, "status": {"replicas": replicas}}),
            )
        }
        ("PATCH", Some(name), None) => {
            let key = (plural.clone(), namespace.clone(), name.clone());
            let existing = w.objects.get(&key).cloned();
            let object = match existing {
                None => w.create(&plural, &namespace, sent),
                Some(mut object) => {
                    for field in ["labels", "annotations", "ownerReferences"] {
                        if !sent["metadata"][field].is_null() {
                            object["metadata"][field] = sent["metadata"][field].clone();
                        }
                    }
                    for field in ["spec", "data"] {
                        if !sent[field].is_null() {
                            object[field] = sent[field].clone();
                        }
                    }
                    let object = w.put(&plural, "MODIFIED", object);
                    if plural == "replicasets" {
                        w.reconcile(&namespace);
                    }
                    object
                }
            };
            answer(StatusCode::OK, &object)
        }
        ("DELETE", Some(name), None) => {
            let key = (plural.clone(), namespace.clone(), name.clone());
            match w.objects.get(&key).cloned() {
                Some(object) => {
                    w.delete(&key);
                    answer(StatusCode::OK, &object)
                }
                None => answer(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                ),
            }
        }
        _ => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "not supported by the fake"),
        ),
    }
}
