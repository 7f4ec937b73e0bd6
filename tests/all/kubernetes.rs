//! The same strategies, unchanged, drive a Kubernetes cluster: here the fake API server of
//! `kube_fake.rs`, reached by the real `slipway` binary through a kubeconfig, which plays the
//! ReplicaSet controller and the kubelet (pods become ready after a delay). A real cluster is
//! exercised by the opt-in suite at the end (`SLIPWAY_TEST_KUBECONFIG`, `--ignored`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engines::STRATEGIES;
use crate::kube_fake::FakeCluster;
use crate::lifecycle::{push, text};
use crate::runner::{Server, free_port, unique_dir, write_spec};
use crate::support::exclusive;

const GATEWAY: &str = "kind = \"gateway\"\ngateway = \"infra/public\"\nhostnames = [\"shop.example.com\"]";
const SERVICE: &str = "kind = \"service\"";

fn spec(name: &str, version: &str, strategy: &str, params: &str, router: &str) -> String {
    format!(
        "name = \"{name}\"\nreplicas = 3\n\n[kubernetes]\nimage = \"localhost/hello:1\"\nport = 8080\nenv = {{ VERSION = \"{version}\" }}\n\n[router]\n{router}\n\n[probe]\nhttp = \"/healthz\"\n\n[strategy]\nmodule = \"{strategy}\"\nparams = {params}\n\n[lifecycle]\nsoak = \"1s\"\n"
    )
}

fn server(cluster: &FakeCluster, data: &std::path::Path) -> Server {
    let config = cluster.kubeconfig();
    Server::start_with(data, free_port(), &[("KUBECONFIG", config.to_str().unwrap())])
}

fn deploy(server: &Server, toml: &str) -> std::process::Output {
    server.cli(&["deploy", write_spec(toml).to_str().unwrap()])
}

fn replicas(cluster: &FakeCluster, name: &str) -> Option<u64> {
    cluster.get("replicasets", "default", name)?["spec"]["replicas"].as_u64()
}

fn backends(cluster: &FakeCluster, app: &str) -> Vec<(String, u64)> {
    let route = cluster
        .get("httproutes", "default", app)
        .expect("the app has an HTTPRoute");
    route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["weight"].as_u64().unwrap()))
        .collect()
}

fn ready_pods(cluster: &FakeCluster, app: &str, revision: u32) -> usize {
    cluster
        .list("pods", "default")
        .iter()
        .filter(|p| p["metadata"]["labels"]["slipway.dev/app"] == app)
        .filter(|p| p["metadata"]["labels"]["slipway.dev/revision"] == revision.to_string().as_str())
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["conditions"][1]["status"] == "True")
        .count()
}

fn of_app(cluster: &FakeCluster, plural: &str, app: &str) -> Vec<Value> {
    cluster
        .list(plural, "default")
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["slipway.dev/app"] == app)
        .collect()
}

/// Whether `holds` comes true within 10 seconds.
fn eventually(holds: impl Fn() -> bool) -> bool {
    eventually_within(Duration::from_secs(10), holds)
}

fn eventually_within(limit: Duration, holds: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if holds() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    holds()
}

fn every_strategy(router: &str) {
    let _serial = exclusive();
    let cluster = FakeCluster::start();
    let server = server(&cluster, &unique_dir("data"));
    push(&server, "example-strategy-waves", "waves");
    for (index, (strategy, params)) in STRATEGIES.iter().enumerate() {
        let name = format!("kube-{index}");
        let first = deploy(&server, &spec(&name, "v1", strategy, params, router));
        assert!(first.status.success(), "{strategy}: {}", text(&first));
        let second = deploy(&server, &spec(&name, "v2", strategy, params, router));
        assert!(second.status.success(), "{strategy}: {}", text(&second));

        // The old revision goes once its destroy delay (0 s here) is over.
        let old = format!("{name}-r1");
        assert!(
            eventually(|| replicas(&cluster, &old) == Some(0)),
            "{strategy}: revision 1 still has {:?} replicas: {}",
            replicas(&cluster, &old),
            text(&second)
        );
        assert_eq!(replicas(&cluster, &format!("{name}-r2")), Some(3), "{strategy}");
        assert_eq!(ready_pods(&cluster, &name, 2), 3, "{strategy}");
        if router == GATEWAY {
            assert_eq!(backends(&cluster, &name), [(format!("{name}-r2"), 256)], "{strategy}");
            let route = cluster.get("httproutes", "default", &name).unwrap();
            assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
            assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "infra");
            assert_eq!(route["spec"]["hostnames"][0], "shop.example.com");
            assert!(cluster.get("services", "default", &format!("{name}-r2")).is_some());
        } else {
            let service = cluster.get("services", "default", &name).expect("the app's Service");
            assert_eq!(
                service["spec"]["selector"]["slipway.dev/revision"], "2",
                "{strategy}: {service}"
            );
        }
        if router == GATEWAY && *strategy == "builtin:canary" {
            // The canary's 50 % step reached the HTTPRoute as exact weights.
            let half = serde_json::json!([
                {"name": format!("{name}-r1"), "port": 80, "weight": 128},
                {"name": format!("{name}-r2"), "port": 80, "weight": 128},
            ]);
            let routes = cluster.patches("httproutes");
            assert!(
                routes.iter().any(|r| r["spec"]["rules"][0]["backendRefs"] == half),
                "{routes:?}"
            );
        }
        if *strategy == "builtin:blue-green" {
            // Its verification went to each pod through the API server's pod proxy.
            let proxied = cluster
                .requests()
                .into_iter()
                .filter(|r| r.contains("/proxy/healthz"))
                .count();
            assert!(proxied >= 3, "{proxied} pod-proxy requests");
        }
        let status = server.cli(&["status", &name]);
        assert!(status.status.success(), "{}", text(&status));

        let deleted = server.cli(&["delete", &name]);
        assert!(deleted.status.success(), "{}", text(&deleted));
        for plural in [
            "replicasets",
            "pods",
            "services",
            "httproutes",
            "deployments",
            "configmaps",
        ] {
            assert!(
                of_app(&cluster, plural, &name).is_empty(),
                "{plural} of {name} left after delete"
            );
        }
    }
    // Replicas move through the scale subresource, never by rewriting a ReplicaSet.
    let requests = cluster.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("PATCH") && r.contains("/replicasets/kube-0-r2/scale"))
    );
    assert!(!requests.iter().any(|r| r.starts_with("PUT")), "{requests:?}");
}

#[test]
fn every_strategy_drives_a_cluster_through_a_gateway() {
    every_strategy(GATEWAY);
}

#[test]
fn every_strategy_drives_a_cluster_through_one_service() {
    every_strategy(SERVICE);
}

/// The uids of the app's pods that are not on their way out.
fn pod_uids(cluster: &FakeCluster, app: &str) -> Vec<String> {
    let mut uids: Vec<String> = of_app(cluster, "pods", app)
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    uids.sort();
    uids
}

#[test]
fn a_restarted_runner_adopts_the_app_as_the_cluster_runs_it() {
    let _serial = exclusive();
    let cluster = FakeCluster::start();
    let data = unique_dir("data");
    let mut first = server(&cluster, &data);
    let rolling = ("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }");
    for version in ["v1", "v2"] {
        let out = deploy(&first, &spec("adopted", version, rolling.0, rolling.1, GATEWAY));
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(eventually(|| replicas(&cluster, "adopted-r1") == Some(0)));
    let pods = pod_uids(&cluster, "adopted");
    assert_eq!(pods.len(), 3);

    // The runner dies; the cluster keeps serving what it was told.
    first.kill();
    assert_eq!(backends(&cluster, "adopted"), [("adopted-r2".to_string(), 256)]);
    let before = cluster.requests().len();

    let second = server(&cluster, &data);
    let status = second.cli(&["status", "adopted", "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice::<Value>(&status.stdout).unwrap()[0].clone();
    assert_eq!(status["active_revision"], 2, "{status}");
    assert_eq!(status["instances"]["revisions"]["2"]["ready"], 3, "{status}");
    assert_eq!(status["instances"]["revisions"]["2"]["weight"], 256, "{status}");
    assert!(status["notice"].is_null(), "{status}");
    // Adopted as it was: the same pods, nothing created, scaled or routed anew.
    assert_eq!(pod_uids(&cluster, "adopted"), pods);
    let since: Vec<String> = cluster.requests()[before..].to_vec();
    assert!(
        !since
            .iter()
            .any(|r| r.contains("/scale") || r.starts_with("POST") || r.starts_with("PATCH /apis/gateway")),
        "{since:?}"
    );

    // And it rolls on from there.
    let out = deploy(&second, &spec("adopted", "v3", rolling.0, rolling.1, GATEWAY));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(backends(&cluster, "adopted"), [("adopted-r3".to_string(), 256)]);
    assert!(eventually(|| replicas(&cluster, "adopted-r2") == Some(0)));

    // Stopped on purpose, the runner leaves the cluster's traffic alone as well.
    let mut second = second;
    let pods = pod_uids(&cluster, "adopted");
    assert!(second.stop().success());
    assert_eq!(backends(&cluster, "adopted"), [("adopted-r3".to_string(), 256)]);
    assert_eq!(pod_uids(&cluster, "adopted"), pods);
    let third = server(&cluster, &data);
    let status = third.cli(&["status", "adopted", "--output", "json"]);
    let status: Value = serde_json::from_slice::<Value>(&status.stdout).unwrap()[0].clone();
    assert_eq!(status["instances"]["revisions"]["3"]["ready"], 3, "{status}");
    assert_eq!(pod_uids(&cluster, "adopted"), pods);
}

#[test]
fn a_rollout_interrupted_by_a_runner_kill_resumes_on_the_next_runner() {
    let _serial = exclusive();
    let cluster = FakeCluster::start();
    let data = unique_dir("data");
    let mut first = server(&cluster, &data);
    let blue_green = ("builtin:blue-green", "{}");
    let out = deploy(&first, &spec("resumed", "v1", blue_green.0, blue_green.1, GATEWAY));
    assert!(out.status.success(), "{}", text(&out));

    // Killed in the soak, after the switch: the cluster goes on serving revision 2.
    let v2 = spec("resumed", "v2", blue_green.0, blue_green.1, GATEWAY).replace("soak = \"1s\"", "soak = \"5s\"");
    let started = first.cli(&["deploy", "--no-wait", write_spec(&v2).to_str().unwrap()]);
    assert!(started.status.success(), "{}", text(&started));
    assert!(eventually(
        || backends(&cluster, "resumed") == [("resumed-r2".to_string(), 256)]
    ));
    first.kill();
    assert_eq!(backends(&cluster, "resumed"), [("resumed-r2".to_string(), 256)]);
    assert_eq!(ready_pods(&cluster, "resumed", 2), 3);

    // The next runner resumes the rollout and finishes it.
    let second = server(&cluster, &data);
    let done = || {
        let out = second.cli(&["status", "resumed", "--output", "json"]);
        let status: Value = serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone();
        status["active_revision"] == 2 && status["running_rollout"].is_null()
    };
    assert!(eventually_within(Duration::from_secs(30), done));
    assert_eq!(backends(&cluster, "resumed"), [("resumed-r2".to_string(), 256)]);
    assert!(eventually(|| replicas(&cluster, "resumed-r1") == Some(0)));
    let history = second.cli(&["history", "resumed"]);
    assert!(text(&history).contains("succeeded"), "{}", text(&history));
}

#[test]
fn api_refusals_reach_the_rollout_in_the_apis_own_words_and_the_old_revision_serves() {
    let _serial = exclusive();
    let cluster = FakeCluster::start();
    let server = server(&cluster, &unique_dir("data"));
    let rolling = ("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }");
    let out = deploy(&server, &spec("refused", "v1", rolling.0, rolling.1, GATEWAY));
    assert!(out.status.success(), "{}", text(&out));

    let forbidden = "replicasets.apps \"refused-r2\" is forbidden: User \"system:serviceaccount:slipway:slipway\" cannot patch resource \"replicasets/scale\" in API group \"apps\" in the namespace \"default\"";
    cluster.forbid("PATCH", "/replicasets/refused-r2/scale", forbidden);
    let out = deploy(&server, &spec("refused", "v2", rolling.0, rolling.1, GATEWAY));
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(forbidden), "{said}");
    assert!(said.contains("infrastructure"), "{said}");
    assert!(said.contains("examples/kubernetes/rbac.yaml"), "{said}");
    assert_eq!(backends(&cluster, "refused"), [("refused-r1".to_string(), 256)]);
    assert_eq!(replicas(&cluster, "refused-r1"), Some(3));
    cluster.allow_all();

    let quota = "replicasets.apps \"refused-r3\" is forbidden: exceeded quota: compute, requested: pods=3, used: pods=3, limited: pods=4";
    cluster.forbid("POST", "/replicasets", quota);
    let out = deploy(&server, &spec("refused", "v3", rolling.0, rolling.1, GATEWAY));
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("exceeded quota: compute"), "{said}");
    assert!(said.contains("a ResourceQuota refused it"), "{said}");
    assert_eq!(backends(&cluster, "refused"), [("refused-r1".to_string(), 256)]);
    assert_eq!(ready_pods(&cluster, "refused", 1), 3);
    cluster.allow_all();

    let out = deploy(&server, &spec("refused", "v4", rolling.0, rolling.1, GATEWAY));
    assert!(out.status.success(), "{}", text(&out));

    // Its routing cannot change in place.
    let out = deploy(&server, &spec("refused", "v4", rolling.0, rolling.1, SERVICE));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("its router kind cannot change in place"),
        "{}",
        text(&out)
    );
    assert_eq!(backends(&cluster, "refused"), [("refused-r4".to_string(), 256)]);

    // So is its traffic.
    let traffic = server.cli(&["traffic", "refused"]);
    assert!(!traffic.status.success());
    assert!(
        text(&traffic).contains("goes through the cluster's Gateway"),
        "{}",
        text(&traffic)
    );

    // The pods' output is the cluster's; the CLI says where to read it.
    let logs = server.cli(&["logs", "refused"]);
    assert!(!logs.status.success());
    assert!(
        text(&logs).contains("kubectl logs -l slipway.dev/app=refused"),
        "{}",
        text(&logs)
    );
}

#[test]
fn a_pod_that_restarts_during_the_soak_rolls_the_rollout_back() {
    let _serial = exclusive();
    let cluster = FakeCluster::start();
    let server = server(&cluster, &unique_dir("data"));
    let blue_green = ("builtin:blue-green", "{}");
    let out = deploy(&server, &spec("crashy", "v1", blue_green.0, blue_green.1, GATEWAY));
    assert!(out.status.success(), "{}", text(&out));

    let long_soak =
        spec("crashy", "v2", blue_green.0, blue_green.1, GATEWAY).replace("soak = \"1s\"", "soak = \"20s\"");
    let file = write_spec(&long_soak);
    let deploying = std::thread::scope(|scope| {
        let running = scope.spawn(|| server.cli(&["deploy", file.to_str().unwrap()]));
        assert!(
            eventually(|| backends(&cluster, "crashy") == [("crashy-r2".to_string(), 256)]),
            "traffic never moved to revision 2"
        );
        let pod = of_app(&cluster, "pods", "crashy")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["slipway.dev/revision"] == "2")
            .unwrap();
        cluster.crash("default", pod["metadata"]["name"].as_str().unwrap());
        running.join().unwrap()
    });
    assert!(!deploying.status.success(), "{}", text(&deploying));
    let said = text(&deploying);
    assert!(said.contains("crash"), "{said}");
    assert_eq!(backends(&cluster, "crashy"), [("crashy-r1".to_string(), 256)], "{said}");
    assert_eq!(ready_pods(&cluster, "crashy", 1), 3);
}

/// The opt-in suite against a real cluster (kind, k3d, or any other), run as
/// `SLIPWAY_TEST_KUBECONFIG=… SLIPWAY_TEST_GATEWAY=NAMESPACE/NAME cargo test -p slipway --test all -- --ignored kubernetes::real_cluster`.
/// The README's Kubernetes section says how to set one up. Optional: `SLIPWAY_TEST_IMAGE`
/// (default `localhost/hello:1`, examples/hello as an image the cluster can run) and
/// `SLIPWAY_TEST_NAMESPACE` (default `default`).
mod real {
    use std::time::Duration;

    use kube::api::{Api, ApiResource, DynamicObject};
    use serde_json::Value;

    use super::{eventually_within, text};
    use crate::runner::{Server, free_port, unique_dir, write_spec};

    struct Setup {
        kubeconfig: String,
        gateway: String,
        image: String,
        namespace: String,
    }

    fn setup() -> Setup {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Setup {
            kubeconfig: var("SLIPWAY_TEST_KUBECONFIG").expect("set SLIPWAY_TEST_KUBECONFIG to a cluster's kubeconfig"),
            gateway: var("SLIPWAY_TEST_GATEWAY").expect("set SLIPWAY_TEST_GATEWAY to NAMESPACE/NAME of a Gateway"),
            image: var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|| "localhost/hello:1".into()),
            namespace: var("SLIPWAY_TEST_NAMESPACE").unwrap_or_else(|| "default".into()),
        }
    }

    fn spec(setup: &Setup, name: &str, version: &str, strategy: &str, params: &str, extra_env: &str) -> String {
        format!(
            "name = \"{name}\"\nreplicas = 3\n\n[kubernetes]\nnamespace = \"{}\"\nimage = \"{}\"\nport = 8080\nenv = {{ VERSION = \"{version}\", HOST = \"0.0.0.0\"{extra_env} }}\ndrain = \"2s\"\ngrace-period = \"5s\"\n\n[router]\nkind = \"gateway\"\ngateway = \"{}\"\n\n[probe]\nhttp = \"/healthz\"\n\n[strategy]\nmodule = \"{strategy}\"\nparams = {params}\n\n[lifecycle]\nprogress-deadline = \"180s\"\nsoak = \"5s\"\n",
            setup.namespace, setup.image, setup.gateway
        )
    }

    fn client(setup: &Setup) -> kube::Client {
        crate::lifecycle::runtime().block_on(async {
            let config = kube::config::Kubeconfig::read_from(&setup.kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(config).unwrap()
        })
    }

    fn backends(setup: &Setup, client: &kube::Client, app: &str) -> Vec<(String, u64)> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &setup.namespace,
            &ApiResource {
                group: "gateway.networking.k8s.io".into(),
                version: "v1".into(),
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "HTTPRoute".into(),
                plural: "httproutes".into(),
            },
        );
        let route = crate::lifecycle::runtime().block_on(api.get(app)).unwrap();
        let route = serde_json::to_value(route).unwrap();
        route["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap().to_string(),
                    b["weight"].as_u64().unwrap_or(1),
                )
            })
            .collect()
    }

    fn pod_uids(setup: &Setup, client: &kube::Client, app: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &setup.namespace);
        let params = kube::api::ListParams::default().labels(&format!("slipway.dev/app={app},slipway.dev/role=app"));
        let pods = crate::lifecycle::runtime().block_on(api.list(&params)).unwrap();
        let mut uids: Vec<String> = pods.items.into_iter().filter_map(|p| p.metadata.uid).collect();
        uids.sort();
        uids
    }

    fn status(server: &Server, app: &str) -> Value {
        let out = server.cli(&["status", app, "--output", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    }

    #[test]
    #[ignore = "needs a real cluster: SLIPWAY_TEST_KUBECONFIG and SLIPWAY_TEST_GATEWAY"]
    fn real_cluster_rolls_readies_weights_rolls_back_and_adopts() {
        let setup = setup();
        let client = client(&setup);
        let data = unique_dir("data");
        let env = [("KUBECONFIG", setup.kubeconfig.as_str())];
        let mut server = Server::start_with(&data, free_port(), &env);
        let strategies = [
            ("builtin:rolling", "{ max-surge = 1, max-unavailable = 0 }"),
            ("builtin:blue-green", "{ verify-path = \"/healthz\" }"),
            ("builtin:canary", "{ steps = [34, 100], pause-seconds = 5 }"),
        ];
        for (index, (strategy, params)) in strategies.iter().enumerate() {
            let app = format!("slipway-e2e-{index}");
            for version in ["v1", "v2"] {
                let out = server.cli(&[
                    "deploy",
                    write_spec(&spec(&setup, &app, version, strategy, params, ""))
                        .to_str()
                        .unwrap(),
                ]);
                assert!(out.status.success(), "{strategy} {version}: {}", text(&out));
            }
            let now = status(&server, &app);
            assert_eq!(now["active_revision"], 2, "{now}");
            assert_eq!(now["instances"]["revisions"]["2"]["ready"], 3, "{now}");
            assert_eq!(backends(&setup, &client, &app), [(format!("{app}-r2"), 256)]);
        }

        // A version that cannot start is rolled back; the route stays on revision 2.
        let app = "slipway-e2e-0";
        let broken = spec(
            &setup,
            app,
            "v3",
            strategies[0].0,
            strategies[0].1,
            ", HOST = \"not-an-address\"",
        )
        .replace(", HOST = \"0.0.0.0\"", "");
        let out = server.cli(&["deploy", write_spec(&broken).to_str().unwrap()]);
        assert!(!out.status.success(), "{}", text(&out));
        assert_eq!(status(&server, app)["active_revision"], 2);
        assert_eq!(backends(&setup, &client, app), [(format!("{app}-r2"), 256)]);

        // A restarted runner adopts the pods as they are.
        let pods = pod_uids(&setup, &client, app);
        server.kill();
        let server = Server::start_with(&data, free_port(), &env);
        assert!(eventually_within(
            Duration::from_secs(30),
            || status(&server, app)["instances"]["revisions"]["2"]["ready"] == 3
        ));
        assert_eq!(pod_uids(&setup, &client, app), pods);

        for index in 0..strategies.len() {
            let out = server.cli(&["delete", &format!("slipway-e2e-{index}")]);
            assert!(out.status.success(), "{}", text(&out));
        }
    }
}

#[test]
fn without_a_cluster_a_kubernetes_deploy_says_how_to_reach_one() {
    let _serial = exclusive();
    let missing = unique_dir("kube").join("no-such-config");
    let server = Server::start_with(
        &unique_dir("data"),
        free_port(),
        &[("KUBECONFIG", missing.to_str().unwrap())],
    );
    let out = deploy(&server, &spec("nowhere", "v1", "builtin:rolling", "{}", SERVICE));
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("cannot reach a Kubernetes cluster"), "{said}");
    assert!(said.contains("KUBECONFIG"), "{said}");
    // Nothing was recorded of it.
    let history = server.cli(&["history", "nowhere"]);
    assert!(!history.status.success(), "{}", text(&history));
}
