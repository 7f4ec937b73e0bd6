//! The `[kubernetes]` table: replicas run as pods in a Kubernetes cluster, one ReplicaSet per
//! revision, routed by the cluster (a Service, or a Gateway API HTTPRoute).
//!
//! ```toml
//! [kubernetes]
//! namespace = "shop"              # default: the kubeconfig context's (or the runner's pod's)
//! image = "ghcr.io/acme/shop:2.1"
//! command = ["/app/shop"]         # the container's command and args (optional)
//! args = ["--verbose"]
//! env = { VERSION = "v1" }        # PORT and SLIPWAY_* are reserved
//! secret-env = { DB_PASSWORD = "secret:shop-db/password" }   # a key of a Secret
//! port = 8080                     # where the app listens in the pod; PORT is set to it
//! service-account = "shop"
//! node-selector = { disktype = "ssd" }
//! tolerations = [{ key = "dedicated", operator = "Equal", value = "shop", effect = "NoSchedule" }]
//! resources = { requests = { cpu = "250m", memory = "256Mi" }, limits = { memory = "512Mi" } }
//! grace-period = "30s"            # terminationGracePeriodSeconds
//! drain = "5s"                    # a stopping pod leaves its endpoints, then waits this long
//! maintenance-image = "docker.io/library/nginx:1.27-alpine"
//!
//! # or, instead of image and the fields after it, a pod template users already have:
//! pod-template = "k8s/shop-pod.yaml"   # a PodTemplateSpec in YAML or JSON, read by the CLI
//! ```
//!
//! The `[probe]` table becomes the app container's readiness probe, so the kubelet checks
//! readiness just as the local drivers do.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Toleration};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Problem, Segment, duration, keys, problem, valid_env_name};

/// How long a stopping pod keeps serving after it left its endpoints, unless the spec says.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// The image of the small backend that answers while an app is in maintenance.
pub const DEFAULT_MAINTENANCE_IMAGE: &str = "docker.io/library/nginx:1.27-alpine";

/// The pods each replica runs as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Kubernetes {
    /// The namespace everything of the app lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The app container's image; required unless `pod-template` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `secret:NAME/KEY`: the value of KEY in the Secret NAME, in the app's namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// The port the app listens on in its pod. With `pod-template`, the default is the
    /// first container's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// A PodTemplateSpec: in a spec file, the path of a YAML or JSON file (relative to the
    /// spec file), which the CLI reads and sends in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub pod_template: Option<Value>,
    /// terminationGracePeriodSeconds: between SIGTERM and SIGKILL.
    #[serde(default = "super::default_grace_period", with = "duration")]
    #[schema(value_type = String, example = "30s")]
    pub grace_period: Duration,
    /// A stopping pod leaves its endpoints at once; it is signalled this much later, so no
    /// request still on its way to it is refused (a preStop sleep).
    #[serde(default = "default_drain", with = "duration")]
    #[schema(value_type = String, example = "5s")]
    pub drain: Duration,
    #[serde(default = "default_maintenance_image")]
    pub maintenance_image: String,
}

/// Resource requests and limits, as Kubernetes quantities (`"250m"`, `"512Mi"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Resources {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

fn default_drain() -> Duration {
    DEFAULT_DRAIN
}

fn default_maintenance_image() -> String {
    DEFAULT_MAINTENANCE_IMAGE.to_owned()
}

impl Kubernetes {
    /// The pod template given in the spec, parsed (validated specs always parse).
    pub fn template(&self) -> Option<PodTemplateSpec> {
        serde_json::from_value(self.pod_template.clone()?).ok()
    }

    /// The port the app listens on in its pod.
    pub fn app_port(&self) -> Option<u16> {
        self.port.or_else(|| {
            let template = self.template()?;
            let port = template
                .spec?
                .containers
                .first()?
                .ports
                .as_ref()?
                .first()?
                .container_port;
            u16::try_from(port).ok()
        })
    }
}

/// `secret:NAME/KEY` as the Secret's name and key.
pub fn secret_key_ref(text: &str) -> Option<(&str, &str)> {
    let (name, key) = text.strip_prefix("secret:")?.split_once('/')?;
    (dns_label(name, 253) && !key.is_empty() && key.len() <= 253).then_some((name, key))
}

/// Reads a `pod-template` path, relative to `base` (the spec file's directory), into the
/// template itself. YAML and JSON are both read (JSON is YAML).
pub fn read_pod_template(base: &Path, path: &str) -> Result<Value, String> {
    let file = base.join(path);
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("cannot read pod-template {}: {e}", file.display()))?;
    let template: PodTemplateSpec = serde_saphyr::from_str(&text)
        .map_err(|e| format!("pod-template {} is not a PodTemplateSpec: {e}", file.display()))?;
    Ok(serde_json::to_value(template).expect("a pod template has a JSON form"))
}

/// Lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit.
fn dns_label(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The longest name of a Kubernetes app: its objects' names (`NAME-maintenance`,
/// `NAME-r1234567`) must fit the 63 characters of a Service name.
pub const MAX_NAME: usize = 47;

pub(super) fn check(name: &str, kube: &Kubernetes) -> Result<(), Problem> {
    let at = |field: &str| keys(&["kubernetes", field]);
    if name.len() > MAX_NAME {
        problem(
            keys(&["name"]),
            format!(
                "the name is {} characters long; a Kubernetes app's name has at most {MAX_NAME}",
                name.len()
            ),
            "shorten it: its Services are named after it, and Service names have at most 63 characters",
        )?;
    }
    if let Some(namespace) = &kube.namespace
        && (!dns_label(namespace, 63) || namespace.contains('.'))
    {
        problem(
            at("namespace"),
            format!("{namespace:?} is not a namespace name"),
            "use 1 to 63 lowercase letters, digits and '-', e.g. namespace = \"shop\"",
        )?;
    }
    match (&kube.image, &kube.pod_template) {
        (None, None) => problem(
            at("image"),
            "the [kubernetes] table names no image",
            "add image = \"ghcr.io/acme/shop:2.1\", or pod-template = \"path/to/pod-template.yaml\"",
        )?,
        (Some(_), Some(_)) => problem(
            at("pod-template"),
            "the [kubernetes] table has both image and pod-template",
            "keep one: the pod template names its containers' images itself",
        )?,
        (Some(image), None)
            if image.trim().is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            problem(
                at("image"),
                format!("{image:?} is not an image reference"),
                "name an image, e.g. image = \"ghcr.io/acme/shop:2.1\"",
            )?
        }
        _ => {}
    }
    if let Some(template) = &kube.pod_template {
        check_template(kube, template)?;
    }
    for (field, list) in [("command", &kube.command), ("args", &kube.args)] {
        if let Some(list) = list
            && let Some(index) = list.iter().position(|a| a.contains('\0'))
        {
            let mut path = at(field);
            path.push(Segment::Index(index));
            problem(
                path,
                format!("{field} item {index} contains a NUL character"),
                "remove it",
            )?;
        }
    }
    for (name, value) in &kube.env {
        check_env_name(name, "env")?;
        if value.contains('\0') {
            problem(
                keys(&["kubernetes", "env", name]),
                format!("the value of `{name}` contains a NUL character"),
                "remove it",
            )?;
        }
    }
    for (name, reference) in &kube.secret_env {
        check_env_name(name, "secret-env")?;
        if secret_key_ref(reference).is_none() {
            problem(
                keys(&["kubernetes", "secret-env", name]),
                format!("{reference:?} is not a reference to a Secret's key"),
                "write secret:NAME/KEY, e.g. \"secret:shop-db/password\": the key of a Secret in the app's namespace",
            )?;
        }
    }
    match kube.app_port() {
        None => problem(
            at("port"),
            "the app's port is not given",
            "say which port the app listens on in its pod, e.g. port = 8080 (Slipway sets PORT to it)",
        )?,
        Some(0) => problem(
            at("port"),
            "port 0 is not a port an app listens on",
            "give a port from 1 to 65535",
        )?,
        Some(_) => {}
    }
    if let Some(account) = &kube.service_account
        && !dns_label(account, 253)
    {
        problem(
            at("service-account"),
            format!("{account:?} is not a service account name"),
            "use lowercase letters, digits, '-' and '.'",
        )?;
    }
    for (kind, map) in [
        ("requests", &kube.resources.requests),
        ("limits", &kube.resources.limits),
    ] {
        for (resource, quantity) in map {
            if !quantity_like(quantity) {
                problem(
                    keys(&["kubernetes", "resources", kind, resource]),
                    format!("{quantity:?} is not a quantity"),
                    "write a Kubernetes quantity such as \"250m\", \"1\", \"512Mi\" or \"2Gi\"",
                )?;
            }
        }
    }
    for (field, value) in [("grace-period", kube.grace_period), ("drain", kube.drain)] {
        if value > duration::MAX {
            problem(at(field), format!("{field} is longer than a year"), duration::HINT)?;
        }
    }
    if kube.maintenance_image.trim().is_empty() || kube.maintenance_image.contains(char::is_whitespace) {
        problem(
            at("maintenance-image"),
            format!("{:?} is not an image reference", kube.maintenance_image),
            format!("leave it out for {DEFAULT_MAINTENANCE_IMAGE}, or name an nginx image your cluster can pull"),
        )?;
    }
    Ok(())
}

fn check_template(kube: &Kubernetes, template: &Value) -> Result<(), Problem> {
    let at = keys(&["kubernetes", "pod-template"]);
    if template.is_string() {
        return problem(
            at,
            "pod-template is a file path, and the runner does not read your files",
            "send the template itself (an object), or deploy with `slipway deploy FILE`, which reads it for you",
        );
    }
    let parsed: PodTemplateSpec = match serde_json::from_value(template.clone()) {
        Ok(parsed) => parsed,
        Err(error) => {
            return problem(
                at,
                format!("pod-template is not a PodTemplateSpec: {error}"),
                "see `kubectl explain podtemplate.template`",
            );
        }
    };
    let containers = parsed.spec.map(|s| s.containers).unwrap_or_default();
    if containers.is_empty() {
        return problem(
            at,
            "pod-template has no containers",
            "give spec.containers, with the app's container first",
        );
    }
    let extra = [
        ("command", kube.command.is_some()),
        ("args", kube.args.is_some()),
        ("env", !kube.env.is_empty()),
        ("secret-env", !kube.secret_env.is_empty()),
        ("service-account", kube.service_account.is_some()),
        ("node-selector", !kube.node_selector.is_empty()),
        ("tolerations", !kube.tolerations.is_empty()),
        ("resources", !kube.resources.is_empty()),
    ];
    if let Some((field, _)) = extra.iter().find(|(_, given)| *given) {
        problem(
            keys(&["kubernetes", field]),
            format!("{field} is given beside pod-template"),
            "put it in the pod template: with a template, the table only says namespace, port, grace-period, drain and maintenance-image",
        )?;
    }
    Ok(())
}

fn check_env_name(name: &str, field: &str) -> Result<(), Problem> {
    let path = keys(&["kubernetes", field, name]);
    if name == "PORT" || name.starts_with("SLIPWAY_") {
        problem(
            path,
            format!("`{name}` is reserved: PORT is the app's port and SLIPWAY_* belong to Slipway"),
            "rename the variable",
        )
    } else if !valid_env_name(name) {
        problem(
            path,
            format!("`{name}` is not an environment variable name"),
            "use letters, digits and underscores, not starting with a digit, e.g. VERSION",
        )
    } else {
        Ok(())
    }
}

/// The shape of a Kubernetes quantity: a number, then an optional suffix.
fn quantity_like(text: &str) -> bool {
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

#[cfg(test)]
mod tests {
    use super::super::{SpecErrorKind, load_file, parse_json, parse_toml};
    use serde_json::json;

    const KUBE: &str = "name = \"shop\"\n[kubernetes]\nimage = \"shop:1\"\nport = 8080\n[router]\nkind = \"service\"\n";

    #[track_caller]
    fn refused(text: &str, message: &str, hint: &str) {
        let error = parse_toml(text).expect_err("the spec should be refused");
        assert!(
            error.message.contains(message),
            "message {:?} lacks {message:?}",
            error.message
        );
        let actual = error.hint.clone().unwrap_or_default();
        assert!(actual.contains(hint), "hint {actual:?} lacks {hint:?}");
        // Where the key is written, the error points at it.
        assert!(error.location.is_some() || !text.contains("[router]"), "{error}");
    }

    #[test]
    fn a_kubernetes_app_is_routed_by_the_cluster() {
        let spec = parse_toml(KUBE).unwrap();
        assert_eq!(spec.listen, None);
        refused(
            &KUBE.replace("kind = \"service\"", "kind = \"builtin\""),
            "routed by the cluster, not by the builtin router",
            "kind = \"service\"",
        );
        refused(
            &KUBE.replace("[router]\nkind = \"service\"\n", ""),
            "not by the builtin router",
            "kind = \"gateway\" with gateway = \"NAME\"",
        );
        refused(
            &format!("listen = \"127.0.0.1:80\"\n{KUBE}"),
            "listen is given for a Kubernetes app",
            "remove listen",
        );
        refused(
            &KUBE.replace("kind = \"service\"", "kind = \"gateway\""),
            "names no Gateway",
            "gateway = \"public\"",
        );
        refused(
            &KUBE.replace("kind = \"service\"", "kind = \"gateway\"\ngateway = \"Infra/Public\""),
            "is not a Gateway name",
            "NAMESPACE/NAME",
        );
        refused(
            &KUBE.replace(
                "kind = \"service\"",
                "kind = \"service\"\nhostnames = [\"shop.example.com\"]",
            ),
            "hosts is for kind = \"builtin\", \"haproxy\" or \"gateway\"",
            "remove it",
        );
        refused(
            "name = \"shop\"\nlisten = \"127.0.0.1:80\"\n[process]\ncommand = \"x\"\n[router]\nkind = \"gateway\"\ngateway = \"g\"\n",
            "routes Kubernetes apps, and this app runs here",
            "[kubernetes] table",
        );
        let gateway = parse_toml(&KUBE.replace(
            "kind = \"service\"",
            "kind = \"gateway\"\ngateway = \"infra/public\"\nsection = \"https\"\nhostnames = [\"shop.example.com\", \"*.shop.example.com\"]",
        ))
        .unwrap();
        assert_eq!(gateway.router.gateway.as_deref(), Some("infra/public"));
    }

    #[test]
    fn the_kubernetes_table_says_what_is_wrong_and_what_to_write() {
        refused(
            &KUBE.replace("image = \"shop:1\"\n", ""),
            "names no image",
            "pod-template = \"path/to/pod-template.yaml\"",
        );
        refused(
            &KUBE.replace("port = 8080\n", ""),
            "the app's port is not given",
            "port = 8080",
        );
        refused(
            &KUBE.replace("port = 8080\n", "port = 8080\nenv = { PORT = \"1\" }\n"),
            "`PORT` is reserved",
            "rename",
        );
        refused(
            &KUBE.replace("port = 8080\n", "port = 8080\nsecret-env = { DB = \"file:/x\" }\n"),
            "is not a reference to a Secret's key",
            "secret:NAME/KEY",
        );
        refused(
            &KUBE.replace("port = 8080\n", "port = 8080\nnamespace = \"Shop\"\n"),
            "is not a namespace name",
            "namespace = \"shop\"",
        );
        refused(
            &KUBE.replace(
                "port = 8080\n",
                "port = 8080\nresources = { limits = { memory = \"lots\" } }\n",
            ),
            "\"lots\" is not a quantity",
            "512Mi",
        );
        refused(
            &KUBE.replace("name = \"shop\"", &format!("name = \"{}\"", "a".repeat(48))),
            "at most 47",
            "Service names",
        );
        refused(
            &format!("{KUBE}[process]\ncommand = \"x\"\n"),
            "both a [process] and a [kubernetes] table",
            "keep one",
        );
        let error = parse_json(json!({
            "name": "shop", "router": {"kind": "service"},
            "kubernetes": {"pod-template": "pod.yaml", "port": 8080},
        }))
        .unwrap_err();
        assert_eq!(error.kind, SpecErrorKind::Invalid);
        assert!(error.message.contains("runner does not read your files"), "{error}");
    }

    #[test]
    fn a_pod_template_file_is_read_beside_the_spec_and_sent_in_its_place() {
        let dir = std::env::temp_dir().join(format!("slipway-pod-template-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("k8s")).unwrap();
        std::fs::write(
            dir.join("k8s/pod.yaml"),
            "metadata:\n  labels:\n    team: shop\nspec:\n  containers:\n  - name: shop\n    image: shop:2\n    ports:\n    - containerPort: 9000\n",
        )
        .unwrap();
        let spec_text =
            "name = \"shop\"\n[kubernetes]\npod-template = \"k8s/pod.yaml\"\n[router]\nkind = \"service\"\n";
        std::fs::write(dir.join("slipway.toml"), spec_text).unwrap();
        let spec = load_file(&dir.join("slipway.toml")).unwrap();
        let kube = spec.kubernetes.as_ref().unwrap();
        assert_eq!(kube.app_port(), Some(9000), "the first container's first port");
        assert_eq!(
            kube.pod_template.as_ref().unwrap()["spec"]["containers"][0]["image"],
            "shop:2"
        );
        // What the runner stores is the template itself, which parses again as JSON.
        assert_eq!(parse_json(spec.to_json()).unwrap(), spec);

        std::fs::write(dir.join("k8s/pod.yaml"), "spec:\n  containers: 3\n").unwrap();
        let error = format!("{:#}", load_file(&dir.join("slipway.toml")).unwrap_err());
        assert!(error.contains("is not a PodTemplateSpec"), "{error}");
        assert!(error.contains("k8s/pod.yaml"), "{error}");
        std::fs::write(
            dir.join("slipway.toml"),
            spec_text.replace(
                "pod-template = \"k8s/pod.yaml\"",
                "pod-template = \"k8s/pod.yaml\"\nimage = \"x\"",
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("k8s/pod.yaml"),
            "spec:\n  containers:\n  - name: a\n    image: a\n",
        )
        .unwrap();
        let error = format!("{:#}", load_file(&dir.join("slipway.toml")).unwrap_err());
        assert!(error.contains("both image and pod-template"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
