//! Instances as containers, through the Docker Engine API (which Podman also serves).
//!
//! Each instance is one container, labelled with the data directory that owns it, its app,
//! revision and instance, and the address the router reaches it at. A container outlives the
//! data plane that started it: a data plane that starts again finds its containers by those
//! labels and adopts the running ones instead of replacing them.
//!
//! The engine is found as the Docker CLI finds it: `DOCKER_HOST` (a `unix://` socket), else
//! Docker's socket, else Podman's rootful or rootless one.
//!
//! **Invariant:** this module never touches a container without this data directory's owner
//! label: two Slipway installations, or a person's own containers, share an engine safely.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use super::instances::Supervision;
use crate::spec::SecretSource;

const LABEL_OWNER: &str = "io.slipway.owner";
const LABEL_APP: &str = "io.slipway.app";
const LABEL_REVISION: &str = "io.slipway.revision";
const LABEL_INSTANCE: &str = "io.slipway.instance";
const LABEL_SEQ: &str = "io.slipway.seq";
const LABEL_ADDR: &str = "io.slipway.addr";

/// How long one call to the engine may take before it counts as failed.
const ENGINE_TIMEOUT_SECS: u64 = 120;

/// How to run the instances of one revision as containers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub image: String,
    /// Replaces the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command.
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Resolved at every start, never kept.
    pub secret_env: BTreeMap<String, SecretSource>,
    pub network: Network,
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<u64>,
    /// Docker's `-v` syntax: `SOURCE:TARGET[:OPTIONS]`.
    pub volumes: Vec<String>,
    pub pull: Pull,
    #[serde(flatten)]
    pub supervision: Supervision,
}

/// How an instance's port is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The app listens on `port` in a network of its own; the port is published on
    /// 127.0.0.1 at a port Slipway picks.
    Bridge { port: u16 },
    /// The app shares the machine's network and listens on the `PORT` Slipway gives it.
    Host,
}

/// When to pull the image from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pull {
    /// Only when the engine does not have it.
    #[default]
    Missing,
    /// Before every instance starts, so a moving tag is followed.
    Always,
    /// Never: the engine must have it.
    Never,
}

/// A running container found by its labels.
#[derive(Clone, Debug)]
pub struct Found {
    pub id: String,
    pub instance: String,
    pub seq: u64,
    pub addr: SocketAddr,
}

/// One container engine, reached lazily: apps without containers never connect.
pub struct Containers {
    owner: String,
    engine: OnceCell<Docker>,
}

impl Containers {
    /// The engine for the data plane of `data_dir`, whose containers carry its owner label.
    pub fn new(data_dir: &Path) -> Containers {
        Containers {
            owner: owner(data_dir),
            engine: OnceCell::new(),
        }
    }

    async fn engine(&self) -> Result<&Docker, String> {
        self.engine.get_or_try_init(connect).await
    }

    /// Makes sure the engine has `config.image`, pulling it as `config.pull` says.
    async fn ensure_image(&self, config: &ContainerConfig) -> Result<(), String> {
        let engine = self.engine().await?;
        let image = &config.image;
        let present = engine.inspect_image(image).await.is_ok();
        match (config.pull, present) {
            (Pull::Never, false) => Err(format!(
                "image {image} is not in the container engine and pull = \"never\": build or load it there (for example `podman load` or `docker pull`), or allow pulling"
            )),
            (Pull::Missing, true) | (Pull::Never, true) => Ok(()),
            _ => pull(engine, image).await,
        }
    }

    /// Creates and starts the container of `instance`, reachable at `addr`; returns its id.
    pub async fn start(
        &self,
        app: &str,
        revision: u32,
        instance: &str,
        seq: u64,
        addr: SocketAddr,
        config: &ContainerConfig,
    ) -> Result<String, String> {
        self.ensure_image(config).await?;
        let engine = self.engine().await?;
        let secrets = crate::secrets::resolve(&config.secret_env)?;
        let port = match config.network {
            Network::Bridge { port } => port,
            Network::Host => addr.port(),
        };
        let mut env: Vec<String> = config
            .env
            .iter()
            .chain(secrets.iter().map(|(name, value)| (name, value)))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        env.push(format!("PORT={port}"));
        env.push(format!("SLIPWAY_APP={app}"));
        env.push(format!("SLIPWAY_REVISION={revision}"));
        env.push(format!("SLIPWAY_INSTANCE={instance}"));
        let labels = HashMap::from([
            (LABEL_OWNER.to_string(), self.owner.clone()),
            (LABEL_APP.to_string(), app.to_string()),
            (LABEL_REVISION.to_string(), revision.to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_SEQ.to_string(), seq.to_string()),
            (LABEL_ADDR.to_string(), addr.to_string()),
        ]);
        let mut host = HostConfig {
            memory: config.memory_bytes.map(|m| m as i64),
            nano_cpus: config.nano_cpus.map(|n| n as i64),
            binds: (!config.volumes.is_empty()).then(|| config.volumes.clone()),
            ..Default::default()
        };
        let mut exposed = None;
        match config.network {
            Network::Host => host.network_mode = Some("host".into()),
            Network::Bridge { port } => {
                let key = format!("{port}/tcp");
                exposed = Some(vec![key.clone()]);
                host.port_bindings = Some(HashMap::from([(
                    key,
                    Some(vec![PortBinding {
                        host_ip: Some(addr.ip().to_string()),
                        host_port: Some(addr.port().to_string()),
                    }]),
                )]));
            }
        }
        let body = ContainerCreateBody {
            image: Some(config.image.clone()),
            entrypoint: config.entrypoint.clone(),
            cmd: config.args.clone(),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: exposed,
            host_config: Some(host),
            ..Default::default()
        };
        let name = self.container_name(instance);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        // A container of that name left by a data plane that died between creating and
        // starting it is in the way; it never served.
        let _ = self.remove(&name).await;
        let created = engine
            .create_container(Some(options), body)
            .await
            .map_err(|e| format!("creating container {name} from {}: {}", config.image, engine_error(&e)))?;
        if let Err(error) = engine.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(format!("starting container {name}: {}", engine_error(&error)));
        }
        Ok(created.id)
    }

    fn container_name(&self, instance: &str) -> String {
        format!("slipway-{}-{instance}", self.owner)
    }

    /// Waits until the container exits; returns how it ended.
    pub async fn wait(&self, id: &str) -> String {
        let Ok(engine) = self.engine().await else {
            return "the container engine cannot be reached".into();
        };
        loop {
            let mut waits = engine.wait_container(id, None);
            match waits.next().await {
                Some(Ok(response)) => return format!("exit status: {}", response.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                    return if error.is_empty() {
                        format!("exit status: {code}")
                    } else {
                        format!("exit status: {code} ({error})")
                    };
                }
                Some(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {
                    return "the container was removed".into();
                }
                // The engine went away or the wait timed out: ask again, and meanwhile look.
                _ => match engine.inspect_container(id, None).await {
                    Ok(inspect) => {
                        let state = inspect.state.unwrap_or_default();
                        if state.running != Some(true) {
                            return format!("exit status: {}", state.exit_code.unwrap_or(-1));
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                        return "the container was removed".into();
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                },
            }
        }
    }

    /// Sends `signal` to the container's main process.
    pub async fn kill(&self, id: &str, signal: &str) {
        let Ok(engine) = self.engine().await else { return };
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        if let Err(error) = engine.kill_container(id, Some(options)).await {
            tracing::debug!(container = id, %error, "signalling a container failed");
        }
    }

    /// Removes the container, running or not.
    pub async fn remove(&self, id: &str) -> Result<(), String> {
        let engine = self.engine().await?;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        engine
            .remove_container(id, Some(options))
            .await
            .map_err(|e| engine_error(&e))
    }

    /// Copies the container's output, from `since` (seconds since the Unix epoch; 0 for all),
    /// into `sink` until the container ends.
    pub async fn follow_output(&self, id: String, since: i64, mut sink: impl tokio::io::AsyncWrite + Unpin) {
        let Ok(engine) = self.engine().await else { return };
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since: since.clamp(0, i32::MAX as i64) as i32,
            ..Default::default()
        };
        let mut output = engine.logs(&id, Some(options));
        while let Some(Ok(chunk)) = output.next().await {
            if sink.write_all(chunk.as_ref()).await.is_err() {
                return;
            }
        }
    }

    /// The running containers of `revision` of `app` that this data directory started.
    pub async fn find(&self, app: &str, revision: u32) -> Result<Vec<Found>, String> {
        let engine = self.engine().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_OWNER}={}", self.owner),
                format!("{LABEL_APP}={app}"),
                format!("{LABEL_REVISION}={revision}"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let listed = engine
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("listing containers: {}", engine_error(&e)))?;
        let mut found = Vec::new();
        for container in listed {
            let Some(id) = container.id else { continue };
            let running = container.state.is_some_and(|s| s.to_string() == "running");
            let labels = container.labels.unwrap_or_default();
            let parsed = (|| {
                Some(Found {
                    id: id.clone(),
                    instance: labels.get(LABEL_INSTANCE)?.clone(),
                    seq: labels.get(LABEL_SEQ)?.parse().ok()?,
                    addr: labels.get(LABEL_ADDR)?.parse().ok()?,
                })
            })();
            match parsed {
                Some(found_one) if running => found.push(found_one),
                // Exited, or not labelled as this module labels: nobody will use it again.
                _ => {
                    let _ = self.remove(&id).await;
                }
            }
        }
        Ok(found)
    }
}

/// The `io.slipway.owner` label of the containers that the data plane of `data_dir` starts.
pub fn owner(data_dir: &Path) -> String {
    use sha2::Digest;
    let canonical = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(&sha2::Sha256::digest(canonical.to_string_lossy().as_bytes())[..6])
}

/// Connects to the engine the way the Docker CLI would find it.
async fn connect() -> Result<Docker, String> {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host,
        Ok(host) => {
            return Err(format!(
                "DOCKER_HOST is {host:?}; Slipway talks to the container engine over a Unix socket only: set DOCKER_HOST=unix:///path/to/docker.sock"
            ));
        }
        Err(_) => default_socket()?,
    };
    let unreachable = |e: bollard::errors::Error| {
        format!(
            "cannot reach the container engine at {socket}: {e}; start Docker, or Podman's API service (`podman system service --time=0`), or set DOCKER_HOST"
        )
    };
    let engine =
        Docker::connect_with_unix(&socket, ENGINE_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION).map_err(unreachable)?;
    engine.negotiate_version().await.map_err(unreachable)
}

fn default_socket() -> Result<String, String> {
    let mut candidates = vec![
        "/var/run/docker.sock".to_string(),
        "/run/podman/podman.sock".to_string(),
    ];
    if let Ok(runtime_dir) = std::env::var("XDG_RUNTIME_DIR") {
        candidates.push(format!("{runtime_dir}/podman/podman.sock"));
    }
    candidates
        .iter()
        .find(|path| Path::new(path).exists())
        .map(|path| format!("unix://{path}"))
        .ok_or_else(|| {
            format!(
                "no container engine found (looked for {}): start Docker, or Podman's API service (`podman system service --time=0`), or set DOCKER_HOST=unix:///path/to/socket",
                candidates.join(", ")
            )
        })
}

async fn pull(engine: &Docker, image: &str) -> Result<(), String> {
    let options = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let mut progress = engine.create_image(Some(options), None, credentials(image));
    while let Some(step) = progress.next().await {
        if let Err(error) = step {
            return Err(format!(
                "pulling image {image}: {}; check the name, that the registry is reachable, and for a private registry `docker login` (credentials are read from ~/.docker/config.json)",
                engine_error(&error)
            ));
        }
    }
    Ok(())
}

/// The registry `image` comes from, as Docker names it in its config file.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "https://index.docker.io/v1/".to_string(),
    }
}

/// Credentials for `image`'s registry from the Docker config file (`$DOCKER_CONFIG/config.json`
/// or `~/.docker/config.json`), as `docker login` writes them. Credential helpers are not
/// consulted.
fn credentials(image: &str) -> Option<DockerCredentials> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Path::new(&dir).join("config.json"),
        None => Path::new(&std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    credentials_in(&path, image)
}

fn credentials_in(path: &Path, image: &str) -> Option<DockerCredentials> {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let registry = registry_of(image);
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.get(&registry).or_else(|| {
        auths
            .iter()
            .find(|(key, _)| key.trim_start_matches("https://").trim_end_matches('/') == registry)
            .map(|(_, v)| v)
    })?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let (username, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(registry),
        ..Default::default()
    })
}

/// The engine's own message, without bollard's wrapping.
fn engine_error(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, status_code } => {
            format!("{message} (engine answered {status_code})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_named_as_docker_names_them() {
        assert_eq!(registry_of("nginx:1.27"), "https://index.docker.io/v1/");
        assert_eq!(registry_of("library/nginx"), "https://index.docker.io/v1/");
        assert_eq!(registry_of("ghcr.io/acme/shop:2"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/shop"), "localhost:5000");
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = std::env::temp_dir().join(format!("slipway-docker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // "user:secret"
        std::fs::write(
            dir.join("config.json"),
            r#"{"auths": {"https://ghcr.io": {"auth": "dXNlcjpzZWNyZXQ="}}}"#,
        )
        .unwrap();
        let path = dir.join("config.json");
        let found = credentials_in(&path, "ghcr.io/acme/shop:2").unwrap();
        assert_eq!(found.username.as_deref(), Some("user"));
        assert_eq!(found.password.as_deref(), Some("secret"));
        assert!(credentials_in(&path, "quay.io/acme/shop").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
