//! The driver against a scripted API server (`tower-test`'s mock service): recorded answers
//! in the API's JSON shapes, watch streams with added, modified and deleted pods, an expired
//! watch (410), conflicts (409) and refusals (403). Each test asserts the requests the driver
//! made, not only what it returned.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::driver::Happened;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SELECTOR: &str = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dslipway%2Cslipway.dev%2Fapp%3Dshop";

/// One request the driver made.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.uri.split('?').next() == Some(path)
    }

    fn watch(&self) -> bool {
        self.uri.contains("watch=true")
    }
}

/// How the script answers a request.
enum Reply {
    Json(u16, Value),
    /// A watch response: these events, one JSON object a line, then the stream ends.
    Lines(Vec<Value>),
    /// As `Lines`, after a while (so a test can subscribe to events first).
    Later(Duration, Vec<Value>),
    /// No answer (yet): a watch that stays open.
    Hold,
}

fn lines(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code, "reason": reason, "message": message})
}

/// Answers the driver's requests with `script`, recording each.
fn serve(mut handle: Handle, mut script: impl FnMut(&Seen) -> Reply + Send + 'static) -> Arc<Mutex<Vec<Seen>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen_log = log.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            seen_log.lock().unwrap().push(seen.clone());
            let response = |code: u16, text: String| {
                Response::builder()
                    .status(code)
                    .body(Body::from(text.into_bytes()))
                    .unwrap()
            };
            match script(&seen) {
                Reply::Json(code, value) => send.send_response(response(code, value.to_string())),
                Reply::Lines(events) => send.send_response(response(200, lines(&events))),
                Reply::Later(after, events) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        send.send_response(response(200, lines(&events)));
                    });
                }
                Reply::Hold => held.push(send),
            }
        }
    });
    log
}

fn spec(router: &str) -> Spec {
    crate::spec::parse_toml(&format!(
        "name = \"shop\"\nreplicas = 2\n[kubernetes]\nnamespace = \"shop\"\nimage = \"shop:1\"\nport = 8080\n[router]\n{router}\n"
    ))
    .unwrap()
}

const GATEWAY: &str = "kind = \"gateway\"\ngateway = \"public\"";

fn replica_set(revision: u32, replicas: u32, digest: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("shop-r{revision}"), "namespace": "shop", "uid": format!("rs-{revision}"),
            "resourceVersion": "5", "annotations": {objects::DIGEST: digest},
            "labels": {objects::APP: "shop", objects::REVISION: revision.to_string()}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {objects::APP: "shop"}}},
    })
}

fn pod(name: &str, revision: u32, ready: bool, restarts: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": "6",
            "labels": {objects::APP: "shop", objects::REVISION: revision.to_string(), objects::ROLE: "app"}},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": "app", "ready": ready, "restartCount": restarts, "image": "shop:1", "imageID": ""}],
        },
    })
}

fn unschedulable(name: &str, revision: u32) -> Value {
    let mut pod = pod(name, revision, false, 0);
    pod["status"] = json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory."}],
    });
    pod
}

fn list(items: Vec<Value>, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items})
}

/// A cluster the script answers from: lists, queued watch batches per resource, and
/// anything else by `other`.
struct Cluster {
    replica_sets: Vec<Value>,
    pods: Vec<Value>,
    /// What the pods are at each later list (a re-list after a 410).
    relists: VecDeque<Vec<Value>>,
    pod_watches: VecDeque<Reply>,
    route: Option<Value>,
}

impl Cluster {
    fn new(replica_sets: Vec<Value>, pods: Vec<Value>) -> Cluster {
        Cluster {
            replica_sets,
            pods,
            relists: VecDeque::new(),
            pod_watches: VecDeque::new(),
            route: None,
        }
    }

    fn answer(&mut self, seen: &Seen) -> Option<Reply> {
        let path = seen.uri.split('?').next().unwrap_or_default();
        Some(match seen.method.as_str() {
            "PATCH" if path.ends_with("/configmaps/shop-slipway") => {
                let mut root = seen.body.clone();
                root["metadata"]["uid"] = json!("root-uid");
                Reply::Json(200, root)
            }
            "PATCH"
                if path.contains("/deployments/") || path.contains("/services/") || path.contains("/httproutes/") =>
            {
                Reply::Json(200, seen.body.clone())
            }
            "GET" if path.ends_with("/replicasets") && seen.watch() => Reply::Hold,
            "GET" if path.ends_with("/replicasets") => Reply::Json(200, list(self.replica_sets.clone(), "10")),
            "GET" if path.ends_with("/pods") && seen.watch() => self.pod_watches.pop_front().unwrap_or(Reply::Hold),
            "GET" if path.ends_with("/pods") => {
                let pods = self.pods.clone();
                if let Some(next) = self.relists.pop_front() {
                    self.pods = next;
                }
                Reply::Json(200, list(pods, "10"))
            }
            "GET" if path.ends_with("/httproutes/shop") => match &self.route {
                Some(route) => Reply::Json(200, route.clone()),
                None => Reply::Json(
                    404,
                    status(
                        404,
                        "NotFound",
                        "httproutes.gateway.networking.k8s.io \"shop\" not found",
                    ),
                ),
            },
            "GET" if path.ends_with("/services/shop") => {
                Reply::Json(404, status(404, "NotFound", "services \"shop\" not found"))
            }
            _ => return None,
        })
    }
}

async fn open(
    spec: &Spec,
    cluster: Cluster,
    mut other: impl FnMut(&Seen) -> Reply + Send + 'static,
) -> (Result<Arc<KubeApp>, DriverError>, Arc<Mutex<Vec<Seen>>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let cluster = Mutex::new(cluster);
    let seen = serve(handle, move |seen| {
        cluster.lock().unwrap().answer(seen).unwrap_or_else(|| other(seen))
    });
    let app = KubeApp::open_within(client, spec, Duration::from_secs(3)).await;
    (app, seen)
}

fn unexpected(seen: &Seen) -> Reply {
    Reply::Json(
        500,
        status(
            500,
            "InternalError",
            &format!("the script has no answer for {} {}", seen.method, seen.uri),
        ),
    )
}

async fn until(app: &KubeApp, holds: impl Fn(&KubeApp) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !holds(app) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; counts now {:?}",
            app.revisions()
        );
        app.wait_change(app.generation(), 200).await;
    }
}

#[tokio::test]
async fn opening_applies_the_root_watches_by_label_and_reads_the_route_back() {
    let spec = spec(GATEWAY);
    let mut cluster = Cluster::new(vec![replica_set(1, 2, "x")], vec![pod("shop-r1-a", 1, true, 0)]);
    cluster.route = Some(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {"rules": [{"backendRefs": [{"name": "shop-r1", "port": 80, "weight": 200}, {"name": "shop-r2", "port": 80, "weight": 56}]}]},
    }));
    let (app, seen) = open(&spec, cluster, unexpected).await;
    let app = app.unwrap();
    assert_eq!(app.weights(), [(1, 200), (2, 56)]);
    assert!(!app.maintenance());
    assert_eq!(
        app.counts(1).unwrap(),
        Counts {
            desired: 2,
            current: 1,
            ready: 1,
            failed: 0
        }
    );

    let seen = seen.lock().unwrap().clone();
    let root = seen
        .iter()
        .find(|s| s.is("PATCH", "/api/v1/namespaces/shop/configmaps/shop-slipway"))
        .unwrap();
    assert_eq!(root.content_type, "application/apply-patch+yaml");
    assert!(
        root.uri.contains("fieldManager=slipway") && root.uri.contains("force=true"),
        "{}",
        root.uri
    );
    let maintenance = seen
        .iter()
        .find(|s| s.is("PATCH", "/apis/apps/v1/namespaces/shop/deployments/shop-maintenance"))
        .unwrap();
    assert_eq!(maintenance.body["metadata"]["ownerReferences"][0]["uid"], "root-uid");
    assert_eq!(maintenance.body["metadata"]["ownerReferences"][0]["kind"], "ConfigMap");
    for path in [
        "/apis/apps/v1/namespaces/shop/replicasets",
        "/api/v1/namespaces/shop/pods",
    ] {
        let listed = seen.iter().find(|s| s.is("GET", path) && !s.watch()).unwrap();
        assert!(listed.uri.contains(SELECTOR), "{}", listed.uri);
        let watched = seen.iter().find(|s| s.is("GET", path) && s.watch()).unwrap();
        assert!(watched.uri.contains("resourceVersion=10"), "{}", watched.uri);
    }
    // Nothing was created or scaled: an existing app is taken over as it is.
    assert!(
        !seen.iter().any(|s| s.method == "POST" || s.uri.contains("/scale")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn watch_events_become_counts_and_driver_events_and_an_expired_watch_relists() {
    let spec = spec(GATEWAY);
    let mut cluster = Cluster::new(
        vec![replica_set(1, 3, "x")],
        vec![pod("shop-r1-a", 1, true, 0), pod("shop-r1-b", 1, false, 0)],
    );
    let mut draining = pod("shop-r1-a", 1, false, 0);
    draining["metadata"]["deletionTimestamp"] = json!("2026-11-30T00:00:00Z");
    cluster.pod_watches.push_back(Reply::Later(
        Duration::from_millis(300),
        vec![
            json!({"type": "MODIFIED", "object": pod("shop-r1-b", 1, true, 0)}),
            json!({"type": "ADDED", "object": unschedulable("shop-r1-c", 1)}),
            json!({"type": "MODIFIED", "object": pod("shop-r1-b", 1, true, 2)}),
            json!({"type": "MODIFIED", "object": draining}),
            json!({"type": "DELETED", "object": pod("shop-r1-a", 1, false, 0)}),
        ],
    ));
    // The next watch has expired: the watcher lists again and goes on from there.
    cluster.pod_watches.push_back(Reply::Lines(vec![json!({
        "type": "ERROR",
        "object": status(410, "Expired", "too old resource version: 10 (25)"),
    })]));
    cluster
        .relists
        .push_back(vec![pod("shop-r1-b", 1, true, 2), pod("shop-r1-d", 1, true, 0)]);
    let (app, seen) = open(&spec, cluster, unexpected).await;
    let app = app.unwrap();
    let mut events = app.events();

    until(&app, |app| {
        app.counts(1).unwrap().current == 2 && app.counts(1).unwrap().ready == 2
    })
    .await;
    let counts = app.counts(1).unwrap();
    // b restarted twice, c could not be scheduled: three failures, whatever left since.
    assert_eq!(
        counts,
        Counts {
            desired: 3,
            current: 2,
            ready: 2,
            failed: 3
        },
        "{counts:?}"
    );

    let mut happened = Vec::new();
    while let Ok(event) = events.try_recv() {
        happened.push(event.what);
    }
    let names = |what: &Happened| match what {
        Happened::Started { instance } => format!("started {instance}"),
        Happened::Ready { instance } => format!("ready {instance}"),
        Happened::NotReady { instance } => format!("not-ready {instance}"),
        Happened::Draining { instance } => format!("draining {instance}"),
        Happened::Crashed {
            instance,
            restart_in_ms,
            ..
        } => format!("crashed {instance} {restart_in_ms}"),
        Happened::Stopped { instance } => format!("stopped {instance}"),
        Happened::StartFailed { message } => format!("start-failed {message}"),
        Happened::Scaled { from, to } => format!("scaled {from} {to}"),
    };
    let happened: Vec<String> = happened.iter().map(names).collect();
    for expected in [
        "ready shop-r1-b",
        "started shop-r1-c",
        "start-failed pod shop-r1-c cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory.",
        "crashed shop-r1-b 20000",
        "draining shop-r1-a",
        "stopped shop-r1-a",
        "started shop-r1-d",
        "ready shop-r1-d",
        "stopped shop-r1-c",
    ] {
        assert!(
            happened.iter().any(|h| h == expected),
            "{expected:?} not in {happened:?}"
        );
    }
    let seen = seen.lock().unwrap().clone();
    let pod_lists = seen
        .iter()
        .filter(|s| s.is("GET", "/api/v1/namespaces/shop/pods") && !s.watch())
        .count();
    assert_eq!(pod_lists, 2, "the 410 made the watcher list again: {seen:?}");
}

#[tokio::test]
async fn define_creates_at_zero_adopts_its_own_on_409_and_refuses_a_stranger() {
    let spec = spec(GATEWAY);
    let digest = spec.digest();
    let stranger = Arc::new(Mutex::new(false));
    let answers = stranger.clone();
    let (app, seen) = open(&spec, Cluster::new(vec![], vec![]), move |seen| {
        if seen.is("POST", "/apis/apps/v1/namespaces/shop/replicasets") {
            return Reply::Json(
                409,
                status(409, "AlreadyExists", "replicasets.apps \"shop-r2\" already exists"),
            );
        }
        if seen.is("GET", "/apis/apps/v1/namespaces/shop/replicasets/shop-r2") {
            let digest = if *answers.lock().unwrap() {
                "sha256:other"
            } else {
                digest.as_str()
            };
            return Reply::Json(200, replica_set(2, 1, digest));
        }
        unexpected(seen)
    })
    .await;
    let app = app.unwrap();
    app.define(2, &spec).await.unwrap();
    assert_eq!(app.counts(2).unwrap(), Counts::default());
    {
        let seen = seen.lock().unwrap();
        let created = seen.iter().find(|s| s.method == "POST").unwrap();
        assert_eq!(created.body["spec"]["replicas"], 0);
        assert_eq!(created.body["metadata"]["name"], "shop-r2");
        assert_eq!(created.body["spec"]["selector"]["matchLabels"][objects::REVISION], "2");
        assert_eq!(created.body["metadata"]["ownerReferences"][0]["uid"], "root-uid");
        let template = &created.body["spec"]["template"];
        assert_eq!(template["metadata"]["labels"][objects::ROLE], "app");
        assert_eq!(
            template["spec"]["containers"][0]["env"][0],
            json!({"name": "PORT", "value": "8080"})
        );
        assert_eq!(
            template["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"],
            8080
        );
        assert_eq!(
            template["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
            5
        );
        // Routing by gateway: the revision has a Service of its own.
        let service = seen
            .iter()
            .find(|s| s.is("PATCH", "/api/v1/namespaces/shop/services/shop-r2"))
            .unwrap();
        assert_eq!(service.body["spec"]["selector"][objects::REVISION], "2");
    }
    *stranger.lock().unwrap() = true;
    let error = app.define(2, &spec).await.unwrap_err().to_string();
    assert!(error.contains("was not made from revision 2's spec"), "{error}");
    assert!(error.contains("kubectl delete replicaset -n shop shop-r2"), "{error}");
}

#[tokio::test]
async fn scaling_patches_the_scale_subresource_and_a_refusal_carries_the_apis_words() {
    let spec = spec(GATEWAY);
    let refuse = Arc::new(Mutex::new(false));
    let answers = refuse.clone();
    // A write that meets another writer's change (409 Conflict) is made again.
    let conflicts = Arc::new(Mutex::new(0));
    let conflicting = conflicts.clone();
    let forbidden = "replicasets.apps \"shop-r1\" is forbidden: User \"system:serviceaccount:shop:slipway\" cannot patch resource \"replicasets/scale\"";
    let (app, seen) = open(&spec, Cluster::new(vec![replica_set(1, 1, "x")], vec![]), move |seen| {
        if seen.is("PATCH", "/apis/apps/v1/namespaces/shop/replicasets/shop-r1/scale") {
            if *answers.lock().unwrap() {
                return Reply::Json(403, status(403, "Forbidden", forbidden));
            }
            let mut left = conflicting.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Reply::Json(409, status(409, "Conflict", "Operation cannot be fulfilled on replicasets.apps \"shop-r1\": the object has been modified; please apply your changes to the latest version and try again"));
            }
            let replicas = seen.body["spec"]["replicas"].clone();
            return Reply::Json(200, json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "shop-r1", "namespace": "shop"}, "spec": {"replicas": replicas}, "status": {"replicas": 1}}));
        }
        unexpected(seen)
    })
    .await;
    let app = app.unwrap();
    let mut events = app.events();
    *conflicts.lock().unwrap() = 1;
    app.scale(1, 3).await.unwrap();
    assert_eq!(
        app.counts(1).unwrap().desired,
        3,
        "desired follows the request before the watch does"
    );
    assert_eq!(events.try_recv().unwrap().what, Happened::Scaled { from: 1, to: 3 });
    {
        let seen = seen.lock().unwrap();
        let scales: Vec<&Seen> = seen.iter().filter(|s| s.uri.contains("/scale")).collect();
        assert_eq!(scales.len(), 2, "the conflict was answered by a second try: {scales:?}");
        for scale in scales {
            assert_eq!(scale.content_type, "application/merge-patch+json");
            assert_eq!(scale.body, json!({"spec": {"replicas": 3}}));
        }
    }
    *refuse.lock().unwrap() = true;
    let error = app.scale(1, 0).await.unwrap_err();
    assert!(
        matches!(
            error,
            DriverError::Infrastructure {
                driver: "kubernetes",
                ..
            }
        ),
        "{error:?}"
    );
    let error = error.to_string();
    assert!(error.contains(forbidden), "{error}");
    assert!(
        error.contains("403 Forbidden") && error.contains("rbac.yaml"),
        "{error}"
    );
}

#[tokio::test]
async fn a_forbidden_watch_fails_opening_with_the_apis_words() {
    let spec = spec(GATEWAY);
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let forbidden = "pods is forbidden: User \"system:serviceaccount:shop:slipway\" cannot list resource \"pods\" in API group \"\" in the namespace \"shop\"";
    let mut cluster = Cluster::new(vec![], vec![]);
    serve(handle, move |seen| {
        if seen.is("GET", "/api/v1/namespaces/shop/pods") {
            return Reply::Json(403, status(403, "Forbidden", forbidden));
        }
        cluster.answer(seen).unwrap_or_else(|| unexpected(seen))
    });
    let error = KubeApp::open_within(client, &spec, Duration::from_secs(2))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("could not watch app shop's ReplicaSets and pods in namespace shop"),
        "{error}"
    );
    assert!(error.contains(forbidden), "{error}");
}

#[tokio::test]
async fn gateway_weights_are_exact_and_maintenance_routes_to_its_backend() {
    let spec = spec(GATEWAY);
    let cluster = Cluster::new(vec![replica_set(1, 1, "x"), replica_set(2, 1, "y")], vec![]);
    let (app, seen) = open(&spec, cluster, unexpected).await;
    let app = app.unwrap();
    app.set_weights(&[(1, 199), (2, 57)]).await.unwrap();
    assert_eq!(app.weights(), [(1, 199), (2, 57)]);
    app.set_maintenance(true).await.unwrap();
    app.set_weights(&[(2, 256)]).await.unwrap();
    app.set_maintenance(false).await.unwrap();

    let routes: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.is(
                "PATCH",
                "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/shop",
            )
        })
        .map(|s| s.body["spec"]["rules"][0]["backendRefs"].clone())
        .collect();
    assert_eq!(
        routes,
        [
            json!([{"name": "shop-r1", "port": 80, "weight": 199}, {"name": "shop-r2", "port": 80, "weight": 57}]),
            json!([{"name": "shop-maintenance", "port": 80, "weight": 1}]),
            json!([{"name": "shop-maintenance", "port": 80, "weight": 1}]),
            json!([{"name": "shop-r2", "port": 80, "weight": 256}]),
        ]
    );
}

#[tokio::test]
async fn one_service_selects_the_routed_revision_and_reports_shares_of_ready_pods_when_several_are() {
    let spec = spec("kind = \"service\"");
    let cluster = Cluster::new(
        vec![replica_set(1, 3, "x"), replica_set(2, 1, "y")],
        vec![
            pod("shop-r1-a", 1, true, 0),
            pod("shop-r1-b", 1, true, 0),
            pod("shop-r1-c", 1, true, 0),
            pod("shop-r2-a", 2, true, 0),
        ],
    );
    let (app, seen) = open(&spec, cluster, unexpected).await;
    let app = app.unwrap();
    app.set_weights(&[(1, 256)]).await.unwrap();
    assert_eq!(app.weights(), [(1, 256)]);
    // A canary's 10 %: one Service cannot split by weight, so traffic follows the ready
    // pods, and the weights say so.
    app.set_weights(&[(1, 230), (2, 26)]).await.unwrap();
    assert_eq!(app.weights(), [(1, 192), (2, 64)]);
    app.set_maintenance(true).await.unwrap();

    let selectors: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.is("PATCH", "/api/v1/namespaces/shop/services/shop"))
        .map(|s| s.body["spec"]["selector"].clone())
        .collect();
    assert_eq!(
        selectors,
        [
            json!({objects::APP: "shop", objects::ROLE: "app", objects::REVISION: "1"}),
            json!({objects::APP: "shop", objects::ROLE: "app"}),
            json!({objects::APP: "shop", objects::ROLE: "maintenance"}),
        ]
    );
}

#[test]
fn shares_add_up_to_the_whole_scale() {
    assert_eq!(shares(&[(1, 1), (2, 2)]), [(1, 85), (2, 171)]);
    assert_eq!(shares(&[(1, 1), (2, 1), (3, 1)]), [(1, 86), (2, 85), (3, 85)]);
    assert_eq!(shares(&[(4, 7)]), [(4, 256)]);
    assert_eq!(shares(&[]), []);
}
