//! HAProxy as a router driver: one HAProxy (master-worker) per data directory, with a frontend
//! per app, started from a generated configuration and from then on changed only through its
//! runtime API on the admin socket, so a rollout never reloads it.
//!
//! ```text
//! frontend APP       bind LISTEN; picks a slot by weight from APP.map, or maintenance
//! backend APP_s0..7  one slot per routed revision: its ready instances as servers
//! backend APP_maintenance, APP_unavailable   the built-in router's 503 pages
//! ```
//!
//! Apps that name host names (and a path prefix) share a listener: one frontend per
//! address, `shared_ADDRESS`, where each request first finds its app (most specific route
//! first: exact hosts, wildcards, every host; longer prefixes first), named in `txn.app`,
//! and then runs only that app's rules; a request no app claims gets 404.
//!
//! Weights keep the host API's 0–256 scale exactly: the frontend draws a number below the sum
//! of the weights and walks the slots' cumulative weights, all read from the app's map, which
//! changes atomically (`prepare map` / `commit map`). As in the built-in router, a revision
//! without a ready instance takes no share. Instances become servers with
//! `add server` and leave with `set server … state drain`, a wait until they carry no
//! request, then `del server`. The configuration is rewritten from the applied state, and
//! HAProxy reloaded seamlessly (`expose-fd listeners`), only when an app is added, moved or
//! removed.
//!
//! HAProxy runs in a process group of its own and outlives the data plane: a data plane that
//! starts again reads its apps, weights and servers back (`apps.json`, `show map`,
//! `show servers state`) and goes on from there.
//!
//! **Invariant:** a slot is routed (weight above 0 in the map) only once its servers are
//! added, and its servers are removed only after the map stops routing to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::builtin::traffic::{TrafficLog, TrafficStats};
use super::builtin::{MAINTENANCE_PAGE, NO_READY_INSTANCES, answer_acme_challenges};
use crate::driver::compute::instances::Backends;
use crate::driver::{DriverError, Endpoint, Router};

/// Backends per app that revisions take turns in: the four that may carry traffic, and room
/// for revisions whose instances are still draining.
const SLOTS: usize = 8;
/// How long a command on the admin socket may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a leaving server is checked for requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long a drained server may keep idle connections before deletion is given up on.
const DELETE_PATIENCE: Duration = Duration::from_secs(10);
const DRIVER: &str = "haproxy";

/// One HAProxy, shared by the apps of a data directory that route through it.
pub struct Haproxy {
    dir: PathBuf,
    applied: tokio::sync::Mutex<Applied>,
    /// Each app's revisions' traffic, from HAProxy's per-request log lines.
    traffic: Arc<Mutex<Traffic>>,
    /// The task reading those lines from `traffic.sock`, once bound.
    reading: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// Where the runner writes the answers to ACME HTTP-01 challenges, and the task serving
    /// them to HAProxy on `acme.sock`, once an app asks for certificates over ACME.
    challenges: PathBuf,
    answering: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

/// Traffic logs by app and revision.
type Traffic = BTreeMap<String, BTreeMap<u32, Arc<TrafficLog>>>;

impl Drop for Haproxy {
    fn drop(&mut self) {
        for task in [self.reading.get(), self.answering.get()].into_iter().flatten() {
            task.abort();
        }
    }
}

/// What HAProxy has now, as far as this driver applied or read it back.
#[derive(Default)]
struct Applied {
    /// Whether HAProxy was found running or started.
    running: bool,
    apps: BTreeMap<String, AppApplied>,
    /// HAProxy, when this data plane started it (to reap it).
    child: Option<tokio::process::Child>,
}

#[derive(Clone, Debug, Default)]
struct AppApplied {
    listen: Option<SocketAddr>,
    route: HostRoute,
    maintenance: bool,
    slots: [Slot; SLOTS],
}

/// Which requests on a shared listener are an app's: by host name (`*.example.com` matches
/// one more label) and path prefix. Empty: every request no other app claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRoute {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// HTTPS on another address, with a certificate from files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HaTls>,
}

/// An app's HTTPS through HAProxy: where, the certificate chain and key (PEM files, read
/// again when they change), and whether its plain requests are redirected there. With
/// `acme`, the files are the ones the runner obtains over ACME: until they exist a
/// self-signed stand-in is served, and HTTP-01 challenges are answered on the plain
/// listener.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HaTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub redirect: bool,
    #[serde(default)]
    pub acme: bool,
}

impl HaTls {
    /// The chain and key in one PEM, as HAProxy loads them (no blank lines: the runtime
    /// API ends a payload at the first one). For ACME before the first certificate, a
    /// self-signed one for `hosts`.
    fn combined(&self, hosts: &[String]) -> Result<String, DriverError> {
        if self.acme && self.changed().is_none() {
            return stand_in(hosts);
        }
        let mut pem = String::new();
        for path in [&self.cert, &self.key] {
            let text = std::fs::read_to_string(path)
                .map_err(|e| DriverError::Invalid(format!("router.tls: cannot read {}: {e}", path.display())))?;
            pem.push_str(&without_blank_lines(&text));
        }
        Ok(pem)
    }

    /// When the files last changed (the later of the two); `None` while either is missing.
    fn changed(&self) -> Option<std::time::SystemTime> {
        let cert = std::fs::metadata(&self.cert).and_then(|m| m.modified()).ok()?;
        let key = std::fs::metadata(&self.key).and_then(|m| m.modified()).ok()?;
        Some(cert.max(key))
    }
}

fn without_blank_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A self-signed certificate for `hosts`, served until the CA's arrives (HAProxy needs one
/// to listen; a browser shows it as untrusted, as it would show no certificate at all).
fn stand_in(hosts: &[String]) -> Result<String, DriverError> {
    let names = if hosts.is_empty() {
        vec!["slipway.invalid".to_string()]
    } else {
        hosts.to_vec()
    };
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| DriverError::Invalid(format!("router.tls: cannot make a stand-in certificate: {e}")))?;
    Ok(without_blank_lines(&format!(
        "{}{}",
        made.cert.pem(),
        made.signing_key.serialize_pem()
    )))
}

impl HostRoute {
    /// The prefix with a trailing slash, `/` when none.
    fn prefix(&self) -> String {
        let mut prefix = self.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        prefix
    }

    fn is_everything(&self) -> bool {
        self.hosts.is_empty() && self.prefix() == "/"
    }

    /// 0 for exact hosts, 1 for wildcards only, 2 for every host (as the built-in router).
    fn rank(&self) -> u8 {
        if self.hosts.is_empty() {
            2
        } else if self.hosts.iter().all(|h| h.starts_with("*.")) {
            1
        } else {
            0
        }
    }

    /// A host both routes claim under the same prefix, if any.
    fn overlap(&self, other: &HostRoute) -> Option<String> {
        if self.prefix() != other.prefix() {
            return None;
        }
        match (self.hosts.is_empty(), other.hosts.is_empty()) {
            (true, true) => Some("every host".into()),
            (false, false) => self.hosts.iter().find(|h| other.hosts.contains(h)).cloned(),
            _ => None,
        }
    }
}

/// What `apps.json` holds of an app: its address and route (older files: the address only).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Listed {
    Routed {
        listen: SocketAddr,
        #[serde(default)]
        route: HostRoute,
    },
    Address(SocketAddr),
}

#[derive(Clone, Debug, Default)]
struct Slot {
    revision: Option<u32>,
    weight: u32,
    /// Servers by instance name: those serving, and those leaving (drained, to be deleted).
    servers: BTreeMap<String, SocketAddr>,
    leaving: BTreeMap<String, SocketAddr>,
}

impl Haproxy {
    /// HAProxy for the data directory `data_dir` (its files in `data_dir/haproxy`); nothing
    /// starts until an app asks for it.
    pub fn new(data_dir: &Path) -> Arc<Haproxy> {
        Arc::new(Haproxy {
            dir: data_dir.join("haproxy"),
            applied: tokio::sync::Mutex::new(Applied::default()),
            traffic: Arc::default(),
            reading: std::sync::OnceLock::new(),
            challenges: crate::acme::challenge_dir(data_dir),
            answering: std::sync::OnceLock::new(),
        })
    }

    fn acme_socket(&self) -> PathBuf {
        self.dir.join("acme.sock")
    }

    /// Answers the ACME HTTP-01 challenges HAProxy passes on (`backend slipway_acme`) on
    /// `acme.sock`, from the answers the runner writes; started once, by the first app that
    /// asks (under `applied`'s lock, so never twice).
    fn answer_challenges(&self) -> Result<(), DriverError> {
        if self.answering.get().is_some() {
            return Ok(());
        }
        let socket = self.acme_socket();
        let bound = std::fs::create_dir_all(&self.dir)
            .and_then(|()| match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .and_then(|()| tokio::net::UnixListener::bind(&socket));
        let listener = bound
            .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot listen on {}", socket.display()), e))?;
        let task = tokio::spawn(answer_acme_challenges(listener, self.challenges.clone()));
        let _ = self.answering.set(task);
        Ok(())
    }

    fn traffic_socket(&self) -> PathBuf {
        self.dir.join("traffic.sock")
    }

    /// Binds `traffic.sock`, where HAProxy sends a line per request (`log-format` in the
    /// configuration: frontend, revision, status, time to the answer's head in ms), and reads
    /// them into each revision's [`TrafficLog`]. A line lost while no data plane listens is a
    /// request not counted, nothing worse.
    fn read_traffic(&self) -> Result<(), DriverError> {
        if self.reading.get().is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot create {}", self.dir.display()), e))?;
        let path = self.traffic_socket();
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path)
            .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot bind {}", path.display()), e))?;
        let traffic = self.traffic.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 1024];
            while let Ok(length) = socket.recv(&mut buffer).await {
                let Ok(line) = std::str::from_utf8(&buffer[..length]) else {
                    continue;
                };
                record_traffic(&traffic, line, crate::store::now_ms());
            }
        });
        if let Err(task) = self.reading.set(task) {
            task.abort();
        }
        Ok(())
    }

    /// `revision`'s traffic in `app` over the last `window`.
    fn traffic_of(&self, app: &str, revision: u32, window: Duration) -> TrafficStats {
        let log = self
            .traffic
            .lock()
            .unwrap()
            .get(app)
            .and_then(|revisions| revisions.get(&revision).cloned())
            .unwrap_or_default();
        log.stats(crate::store::now_ms(), window)
    }

    fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn map_file(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.map"))
    }

    /// Sends one command (or several, `;`-separated) to the admin socket; returns the answer.
    async fn command(&self, command: &str) -> Result<String, DriverError> {
        let run = async {
            let mut stream = UnixStream::connect(self.admin_socket()).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(DriverError::infrastructure(
                DRIVER,
                format!(
                    "the admin socket {} did not take {command:?}: {error}",
                    self.admin_socket().display()
                ),
                error,
            )),
            Err(_) => Err(infrastructure(format!(
                "the admin socket did not answer {command:?} in time"
            ))),
        }
    }

    /// Like [`Haproxy::command`], failing when HAProxy's answer says it failed.
    async fn must(&self, command: &str) -> Result<String, DriverError> {
        let answer = self.command(command).await?;
        let failed = answer.lines().any(|line| {
            let line = line.trim_start();
            [
                "No such", "Unknown", "Require", "failed", "cannot", "Error", "error", "invalid", "Invalid",
            ]
            .iter()
            .any(|marker| line.starts_with(marker) || line.contains(&format!(": {marker}")))
        });
        if failed {
            return Err(infrastructure(format!("{command:?}: {}", answer.trim())));
        }
        Ok(answer)
    }

    /// Makes sure HAProxy runs with `app`'s frontend listening on `listen` and routing it
    /// as `route` says: adopted if it already runs, started if not, reloaded if the app is
    /// new, moved or routed anew. A host and prefix another app on `listen` claims is
    /// refused, naming both.
    pub async fn ensure_app(&self, app: &str, listen: SocketAddr, route: &HostRoute) -> Result<(), DriverError> {
        self.read_traffic()?;
        let mut applied = self.applied.lock().await;
        if route.tls.as_ref().is_some_and(|tls| tls.acme) {
            self.answer_challenges()?;
        }
        if !applied.running && self.command("show info").await.is_err() {
            // HAProxy starts with this app in its configuration: no reload.
            let entry = applied.apps.entry(app.to_string()).or_default();
            entry.listen = Some(listen);
            entry.route = route.clone();
            self.ensure_running(&mut applied).await?;
            return wait_listening(listen).await;
        }
        self.ensure_running(&mut applied).await?;
        let https = route.tls.as_ref().map(|tls| tls.listen);
        for (other, entry) in applied.apps.iter().filter(|(other, _)| *other != app) {
            let other_https = entry.route.tls.as_ref().map(|tls| tls.listen);
            if entry.listen != Some(listen) && (https.is_none() || other_https != https) {
                continue;
            }
            if let Some(host) = route.overlap(&entry.route) {
                return Err(DriverError::Invalid(format!(
                    "router.hosts: {host}{} on {listen} is routed to app {other} already, and app {app} claims it too; give one of them other hosts or another path prefix",
                    route.prefix().trim_end_matches('/'),
                )));
            }
        }
        let entry = applied.apps.entry(app.to_string()).or_default();
        if entry.listen == Some(listen) && entry.route == *route {
            return Ok(());
        }
        entry.listen = Some(listen);
        entry.route = route.clone();
        self.write_files(&applied)?;
        self.reload().await?;
        if let Some(https) = https {
            wait_listening(https).await?;
        }
        wait_listening(listen).await
    }

    fn cert_file(&self, app: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{app}.pem"))
    }

    /// Serves `app`'s certificate anew from its files, without a reload (`set ssl cert`,
    /// `commit ssl cert`); open connections go on. The combined file HAProxy reads at a
    /// reload is written once HAProxy took the certificate, so its time says what is served.
    pub async fn update_certificate(&self, app: &str, route: &HostRoute) -> Result<(), DriverError> {
        let Some(tls) = &route.tls else { return Ok(()) };
        let pem = tls.combined(&route.hosts)?;
        let path = self.cert_file(app);
        self.must(&format!("set ssl cert {} <<\n{pem}", path.display())).await?;
        self.must(&format!("commit ssl cert {}", path.display())).await?;
        write_private(&path, &pem)
    }

    /// Whether `app`'s certificate files changed since HAProxy was given them: the time
    /// they changed, if so.
    fn certificate_changed(&self, app: &str, tls: &HaTls) -> Option<std::time::SystemTime> {
        let changed = tls.changed()?;
        let served = std::fs::metadata(self.cert_file(app)).and_then(|m| m.modified()).ok()?;
        (changed > served).then_some(changed)
    }

    /// Takes `app`'s frontend and backends out of HAProxy.
    pub async fn remove_app(&self, app: &str) -> Result<(), DriverError> {
        let mut applied = self.applied.lock().await;
        if applied.apps.remove(app).is_none() {
            return Ok(());
        }
        self.write_files(&applied)?;
        let _ = std::fs::remove_file(self.map_file(app));
        self.reload().await
    }

    /// What HAProxy has for `app`: weights by revision, maintenance, and servers by revision.
    async fn adopted(&self, app: &str) -> Option<(BTreeMap<u32, u32>, bool, BTreeMap<u32, Vec<Endpoint>>)> {
        let applied = self.applied.lock().await;
        let entry = applied.apps.get(app)?;
        let mut weights = BTreeMap::new();
        let mut endpoints: BTreeMap<u32, Vec<Endpoint>> = BTreeMap::new();
        for slot in &entry.slots {
            let Some(revision) = slot.revision else { continue };
            if slot.weight > 0 {
                weights.insert(revision, slot.weight);
            }
            endpoints
                .entry(revision)
                .or_default()
                .extend(slot.servers.iter().map(|(instance, addr)| Endpoint {
                    instance: instance.clone(),
                    addr: *addr,
                }));
        }
        Some((weights, entry.maintenance, endpoints))
    }

    async fn ensure_running(&self, applied: &mut Applied) -> Result<(), DriverError> {
        if applied.running {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot create {}", self.dir.display()), e))?;
        std::fs::write(self.dir.join("maintenance.html"), MAINTENANCE_PAGE)
            .and_then(|()| std::fs::write(self.dir.join("no-ready-instances.txt"), NO_READY_INSTANCES))
            .map_err(|e| DriverError::infrastructure(DRIVER, "cannot write the 503 pages", e))?;
        if self.command("show info").await.is_ok() {
            self.read_back(applied).await?;
            tracing::info!(dir = %self.dir.display(), apps = applied.apps.len(), "adopted the running HAProxy");
            applied.running = true;
            return Ok(());
        }
        self.write_files(applied)?;
        let log = std::fs::File::create(self.dir.join("haproxy.log"))
            .map_err(|e| DriverError::infrastructure(DRIVER, "cannot create haproxy.log", e))?;
        let child = tokio::process::Command::new(program())
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", self.dir.join("master.sock").display()))
            .arg("-f")
            .arg(self.dir.join("haproxy.cfg"))
            .arg("-p")
            .arg(self.dir.join("haproxy.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| DriverError::infrastructure(DRIVER, "haproxy.log", e))?)
            .stderr(log)
            // Its own process group: HAProxy outlives the data plane, and a Ctrl-C meant for
            // the runner does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                DriverError::infrastructure(
                    DRIVER,
                    "cannot start haproxy (is it installed? apt-get install haproxy, or set SLIPWAY_HAPROXY to its path)",
                    e,
                )
            })?;
        applied.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("show info").await.is_err() {
            if let Some(child) = applied.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(infrastructure(format!(
                    "haproxy exited at start ({status}): {}",
                    last_log_lines(&self.dir.join("haproxy.log"))
                )));
            }
            if Instant::now() > deadline {
                return Err(infrastructure(
                    "haproxy did not open its admin socket within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        applied.running = true;
        Ok(())
    }

    /// Reads the apps of a running HAProxy back: the app list from `apps.json`, weights and
    /// maintenance from each app's map, servers from `show servers state`.
    async fn read_back(&self, applied: &mut Applied) -> Result<(), DriverError> {
        let listed: BTreeMap<String, Listed> = std::fs::read(self.dir.join("apps.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        for (app, listed) in listed {
            let (listen, route) = match listed {
                Listed::Routed { listen, route } => (listen, route),
                Listed::Address(listen) => (listen, HostRoute::default()),
            };
            let mut entry = AppApplied {
                listen: Some(listen),
                route,
                ..AppApplied::default()
            };
            let map = self
                .command(&format!("show map {}", self.map_file(&app).display()))
                .await?;
            let values: BTreeMap<String, String> = map
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace().skip(1);
                    Some((words.next()?.to_string(), words.next()?.to_string()))
                })
                .collect();
            entry.maintenance = values.get("maintenance").is_some_and(|v| v == "1");
            for (index, slot) in entry.slots.iter_mut().enumerate() {
                slot.revision = values
                    .get(&format!("r{index}"))
                    .and_then(|r| r.parse().ok())
                    .filter(|r| *r > 0);
                slot.weight = values
                    .get(&format!("w{index}"))
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
                let state = self.command(&format!("show servers state {app}_s{index}")).await?;
                for line in state.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
                    // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (Some(name), Some(addr), Some(admin)) = (fields.get(3), fields.get(4), fields.get(6)) else {
                        continue;
                    };
                    let port = fields.get(18).and_then(|p| p.parse::<u16>().ok());
                    let Some(addr) = port.and_then(|p| Some(SocketAddr::new(addr.parse().ok()?, p))) else {
                        continue;
                    };
                    // Admin state 0 is ready; drain (8) or maintenance means it was leaving.
                    if *admin == "0" {
                        slot.servers.insert(name.to_string(), addr);
                    } else {
                        slot.leaving.insert(name.to_string(), addr);
                    }
                }
            }
            applied.apps.insert(app, entry);
        }
        Ok(())
    }

    /// Writes the configuration, every app's map and `apps.json` from the applied state.
    fn write_files(&self, applied: &Applied) -> Result<(), DriverError> {
        let write = |name: &str, text: String| {
            std::fs::write(self.dir.join(name), text)
                .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot write {name}"), e))
        };
        for (app, entry) in &applied.apps {
            write(&format!("{app}.map"), map_text(entry))?;
            if let Some(tls) = &entry.route.tls {
                write_private(&self.cert_file(app), &tls.combined(&entry.route.hosts)?)?;
            }
        }
        for (listen, apps) in by_https_address(applied) {
            // The first certificate is the one for clients that name no host it lists.
            let lines: String = apps
                .iter()
                .map(|(app, entry)| format!("{} {}\n", self.cert_file(app).display(), entry.route.hosts.join(" ")))
                .collect();
            write(&format!("tls_{}.crtlist", address_name(listen)), lines)?;
        }
        let listed: BTreeMap<&String, Listed> = applied
            .apps
            .iter()
            .filter_map(|(app, entry)| {
                let listed = Listed::Routed {
                    listen: entry.listen?,
                    route: entry.route.clone(),
                };
                Some((app, listed))
            })
            .collect();
        write("apps.json", serde_json::to_string(&listed).expect("plain map"))?;
        write("haproxy.cfg", self.config(applied))
    }

    fn config(&self, applied: &Applied) -> String {
        let dir = self.dir.display();
        let mut text = format!(
            "# Written by Slipway's data plane, changed at run time through the admin socket: do not edit.
global
    master-worker
    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners
    # A line per request to the data plane, which measures each revision's traffic.
    log {dir}/traffic.sock len 512 format raw local0 info
    # Room to keep an app connection per client connection instead of closing most of them.
    tune.pool-high-fd-ratio 90
    tune.pool-low-fd-ratio 80

defaults
    mode http
    log global
    log-format \"%[var(txn.app)] %[var(txn.rev)] %ST %Tr\"
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # A request whose instance went away before answering is sent to another one.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
"
        );
        let mut by_address: BTreeMap<SocketAddr, Vec<(&String, &AppApplied)>> = BTreeMap::new();
        for (app, entry) in &applied.apps {
            if let Some(listen) = entry.listen {
                by_address.entry(listen).or_default().push((app, entry));
            }
        }
        let https = by_https_address(applied);
        let mut shared_any = !https.is_empty();
        for (listen, apps) in &by_address {
            if let [(app, entry)] = apps.as_slice()
                && entry.route.is_everything()
            {
                // An app alone on its address: its own frontend, every request its own.
                text.push_str(&format!(
                    "\nfrontend {app}\n    bind {listen}\n    http-request set-var(txn.app) str({app})\n"
                ));
                text.push_str(&forwarding(false));
                text.push_str(&challenges(apps));
                text.push_str(&redirect(app, entry));
                text.push_str(&answer_challenge(app, entry));
                text.push_str(&self.app_rules(app, None));
            } else {
                shared_any = true;
                let bind = format!("bind {listen}");
                text.push_str(&self.shared_frontend(&format!("shared_{}", address_name(*listen)), &bind, apps, false));
            }
        }
        for (listen, apps) in &https {
            let list = self.dir.join(format!("tls_{}.crtlist", address_name(*listen)));
            let bind = format!("bind {listen} ssl crt-list {} alpn h2,http/1.1", list.display());
            text.push_str(&self.shared_frontend(&format!("tls_{}", address_name(*listen)), &bind, apps, true));
        }
        for (app, entry) in applied.apps.iter().filter(|(_, entry)| entry.listen.is_some()) {
            let map = self.map_file(app);
            let map = map.display();
            for (index, slot) in entry.slots.iter().enumerate() {
                text.push_str(&format!(
                    "\nbackend {app}_s{index}\n    balance roundrobin\n    http-request set-var(txn.rev) str(r{index}),map({map},0)\n    http-response set-header X-Slipway-Revision %[var(txn.rev)]\n"
                ));
                for (name, addr) in &slot.servers {
                    text.push_str(&format!("    server {name} {addr}\n"));
                }
                for (name, addr) in &slot.leaving {
                    text.push_str(&format!("    server {name} {addr} disabled\n"));
                }
            }
            text.push_str(&format!(
                "\nbackend {app}_maintenance\n    http-request return status 503 content-type \"text/html\" file {dir}/maintenance.html hdr Retry-After 5 hdr Cache-Control no-store\n\nbackend {app}_unavailable\n    http-request return status 503 content-type \"text/plain; charset=utf-8\" file {dir}/no-ready-instances.txt hdr Cache-Control no-store\n"
            ));
        }
        if shared_any {
            text.push_str(
                "\nbackend slipway_nobody\n    http-request return status 404 content-type \"text/plain; charset=utf-8\" string \"no app is routed here for this host\" hdr Cache-Control no-store\n",
            );
        }
        if applied.apps.values().any(|entry| entry.listen.is_some() && acme(entry)) {
            text.push_str(&format!(
                "\nbackend slipway_acme\n    server challenges {}\n",
                self.acme_socket().display()
            ));
        }
        text
    }

    /// A frontend apps share, `bind` being its bind line: each request's app found first
    /// (most specific route first), then only that app's rules; nobody's requests get 404.
    fn shared_frontend(&self, name: &str, bind: &str, apps: &[(&String, &AppApplied)], https: bool) -> String {
        let mut apps = apps.to_vec();
        apps.sort_by_key(|(app, entry)| (entry.route.rank(), std::cmp::Reverse(entry.route.prefix().len()), *app));
        let mut text = format!("\nfrontend {name}\n    {bind}\n");
        text.push_str(&forwarding(https));
        for (app, entry) in &apps {
            text.push_str(&route_acls(app, &entry.route));
        }
        if !https {
            text.push_str(&challenges(&apps));
        }
        for (app, entry) in &apps {
            let mut condition = String::from("!{ var(txn.app) -m found }");
            if !entry.route.hosts.is_empty() {
                condition.push_str(&format!(" app_{app}_host"));
            }
            if entry.route.prefix() != "/" {
                condition.push_str(&format!(" app_{app}_path"));
            }
            text.push_str(&format!(
                "    http-request set-var(txn.app) str({app}) if {condition}\n"
            ));
        }
        if !https {
            for (app, entry) in &apps {
                text.push_str(&redirect(app, entry));
            }
            for (app, entry) in &apps {
                text.push_str(&answer_challenge(app, entry));
            }
        }
        for (app, _) in &apps {
            text.push_str(&self.app_rules(app, Some(&format!("{{ var(txn.app) -m str {app} }}"))));
        }
        text.push_str("    default_backend slipway_nobody\n");
        text
    }

    /// An app's frontend rules: the weighted pick of a slot (or maintenance, or none ready),
    /// each rule also under `only` on a shared frontend.
    fn app_rules(&self, app: &str, only: Option<&str>) -> String {
        let map = self.map_file(app);
        let map = map.display();
        // `if COND` for a rule without a condition of its own; ` COND` to add to one.
        let (alone, also) = match only {
            Some(only) => (format!(" if {only}"), format!(" {only}")),
            None => (String::new(), String::new()),
        };
        let mut text = String::new();
        for index in 0..SLOTS {
            let previous = if index == 0 {
                String::new()
            } else {
                format!(",add(txn.c{})", index - 1)
            };
            text.push_str(&format!(
                "    http-request set-var(txn.c{index}) str(w{index}),map_str_int({map},0){previous}{alone}\n"
            ));
        }
        text.push_str(&format!(
            "    http-request set-var(txn.pick) rand(256),mul(txn.c{last}),div(256){alone}\n    use_backend {app}_maintenance if {{ str(maintenance),map_str_int({map},0) -m int eq 1 }}{also}\n",
            last = SLOTS - 1
        ));
        for index in 0..SLOTS {
            text.push_str(&format!(
                "    use_backend {app}_s{index} if {{ var(txn.pick),sub(txn.c{index}) -m int lt 0 }}{also}\n"
            ));
        }
        match only {
            Some(_) => text.push_str(&format!("    use_backend {app}_unavailable{alone}\n")),
            None => text.push_str(&format!("    default_backend {app}_unavailable\n")),
        }
        text
    }

    /// Sends one command to the master socket; returns what it answered within a moment.
    async fn master(&self, command: &str) -> Result<String, DriverError> {
        let master = self.dir.join("master.sock");
        let run = async {
            // Right after HAProxy starts, its master socket may not be listening yet.
            let mut tries = 0;
            let mut stream = loop {
                match UnixStream::connect(&master).await {
                    Ok(stream) => break stream,
                    Err(error) if tries < 250 => {
                        tracing::debug!(%error, "the master socket is not listening yet");
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(error) => return Err(error),
                }
            };
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, run)
            .await
            .map_err(|_| infrastructure(format!("the master socket did not take {command:?} in time")))?
            .map_err(|e| {
                let message = format!("cannot reach {}: {e}", master.display());
                DriverError::infrastructure(DRIVER, message, e)
            })
    }

    /// How many times the master has reloaded, from `show proc`.
    async fn reloads(&self) -> Option<u64> {
        let answer = self.master("show proc").await.ok()?;
        answer
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some("master"))?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }

    /// Reloads HAProxy from the configuration on disk, keeping its listeners, and waits
    /// until the master says it did (a reload asked for at the wrong moment is asked again).
    async fn reload(&self) -> Result<(), DriverError> {
        for _ in 0..3 {
            let before = self.reloads().await;
            self.master("reload").await?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match (before, self.reloads().await) {
                    (Some(before), Some(now)) if now > before => {
                        // The new worker answers on the admin socket once it has the new
                        // configuration.
                        while self.command("show info").await.is_err() {
                            if Instant::now() > deadline {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        return Ok(());
                    }
                    _ => {}
                }
            }
            tracing::debug!("haproxy did not reload; asking again");
        }
        Err(infrastructure(format!(
            "haproxy did not reload: {}",
            last_log_lines(&self.dir.join("haproxy.log"))
        )))
    }

    /// Applies `app`'s wanted weights, maintenance and endpoints: servers first, then the
    /// map, then servers that leave are drained and deleted in the background.
    async fn sync(self: &Arc<Self>, app: &str, wanted: &Wanted) -> Result<(), DriverError> {
        let mut applied = self.applied.lock().await;
        let Some(entry) = applied.apps.get_mut(app) else {
            return Err(infrastructure(format!("{app} has no frontend in haproxy")));
        };
        let mut next = entry.clone();
        next.maintenance = wanted.maintenance;
        // Revisions keep their slot; new ones take a slot that is empty.
        for slot in next.slots.iter_mut() {
            if slot.revision.is_some_and(|r| !wanted.serving(r)) {
                slot.weight = 0;
                if slot.servers.is_empty() && slot.leaving.is_empty() {
                    slot.revision = None;
                }
            }
        }
        for revision in wanted.weights.keys() {
            if next.slots.iter().any(|s| s.revision == Some(*revision)) {
                continue;
            }
            let free =
                next.slots.iter_mut().find(|s| s.revision.is_none()).ok_or_else(|| {
                    infrastructure(format!("no free slot in haproxy for revision {revision} of {app}"))
                })?;
            free.revision = Some(*revision);
        }
        let map = self.map_file(app);
        let map = map.display().to_string();
        let mut commands = Vec::new();
        let mut leaving = Vec::new();
        for (index, slot) in next.slots.iter_mut().enumerate() {
            let backend = format!("{app}_s{index}");
            let Some(revision) = slot.revision else { continue };
            let routed = wanted.weights.get(&revision).copied().unwrap_or(0);
            let endpoints: BTreeMap<String, SocketAddr> = if routed > 0 {
                wanted
                    .endpoints
                    .get(&revision)
                    .into_iter()
                    .flatten()
                    .map(|e| (e.instance.clone(), e.addr))
                    .collect()
            } else {
                BTreeMap::new()
            };
            for (name, addr) in &endpoints {
                if slot.servers.get(name) != Some(addr) {
                    if slot.servers.remove(name).is_some() || slot.leaving.remove(name).is_some() {
                        // Same instance, moved: replace it at once (it is not serving there).
                        commands.push(format!("set server {backend}/{name} state maint"));
                        commands.push(format!("del server {backend}/{name}"));
                    }
                    commands.push(format!("add server {backend}/{name} {addr}"));
                    commands.push(format!("enable server {backend}/{name}"));
                    slot.servers.insert(name.clone(), *addr);
                }
            }
            let gone: Vec<String> = slot
                .servers
                .keys()
                .filter(|name| !endpoints.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                let addr = slot.servers.remove(&name).expect("listed");
                slot.leaving.insert(name.clone(), addr);
                leaving.push((backend.clone(), name));
            }
            // As in the built-in router, a revision without a ready instance takes no share:
            // its weight goes to the others rather than to a 503.
            slot.weight = if endpoints.is_empty() { 0 } else { routed };
        }
        // Servers in: every slot that will carry traffic has its servers before the map says so.
        for command in &commands {
            self.must(command).await?;
        }
        let version = self.must(&format!("prepare map {map}")).await?;
        let version = version
            .split_whitespace()
            .last()
            .ok_or_else(|| infrastructure(format!("prepare map answered {version:?}")))?
            .to_string();
        let mut batch: Vec<String> = map_entries(&next)
            .into_iter()
            .map(|(key, value)| format!("add map @{version} {map} {key} {value}"))
            .collect();
        batch.push(format!("commit map @{version} {map}"));
        self.must(&batch.join("; ")).await?;
        // Then out: leaving servers take no new request, and go once idle.
        for (backend, name) in &leaving {
            self.must(&format!("set server {backend}/{name} state drain")).await?;
        }
        *entry = next;
        drop(applied);
        for (backend, name) in leaving {
            let this = self.clone();
            let app = app.to_string();
            tokio::spawn(async move { this.retire(&app, &backend, &name).await });
        }
        Ok(())
    }

    /// Waits until a leaving server carries no request, then deletes it.
    async fn retire(&self, app: &str, backend: &str, name: &str) {
        let started = Instant::now();
        loop {
            match self.in_flight(backend, name).await {
                Some(0) | None => break,
                Some(_) if started.elapsed() > Duration::from_secs(3600) => break,
                Some(_) => tokio::time::sleep(DRAIN_POLL).await,
            }
        }
        let _ = self.command(&format!("set server {backend}/{name} state maint")).await;
        let deadline = Instant::now() + DELETE_PATIENCE;
        loop {
            let mut applied = self.applied.lock().await;
            let still_leaving = applied
                .apps
                .get(app)
                .is_some_and(|entry| entry.slots.iter().any(|slot| slot.leaving.contains_key(name)));
            if !still_leaving {
                return;
            }
            let deleted = self.must(&format!("del server {backend}/{name}")).await.is_ok();
            if deleted || Instant::now() > deadline {
                if let Some(entry) = applied.apps.get_mut(app) {
                    for slot in entry.slots.iter_mut() {
                        slot.leaving.remove(name);
                        if slot.weight == 0 && slot.servers.is_empty() && slot.leaving.is_empty() {
                            slot.revision = None;
                        }
                    }
                }
                if !deleted {
                    tracing::warn!(%backend, server = name, "haproxy kept connections to a drained server; it stays disabled");
                }
                return;
            }
            drop(applied);
            // Idle connections to it are closed by HAProxy shortly after maintenance.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Requests in flight to a server, from `show stat`; None if it is not there.
    async fn in_flight(&self, backend: &str, name: &str) -> Option<u64> {
        let stat = self.command(&format!("show stat {backend} 4 -1")).await.ok()?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let name_at = header.iter().position(|h| *h == "svname")?;
        let current_at = header.iter().position(|h| *h == "scur")?;
        lines.find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.get(name_at) == Some(&name)).then(|| fields.get(current_at)?.parse().ok())?
        })
    }

    /// Whether the server for `instance` of `app` is gone (deleted after draining).
    async fn gone(&self, app: &str, instance: &str) -> bool {
        let applied = self.applied.lock().await;
        !applied.apps.get(app).is_some_and(|entry| {
            entry
                .slots
                .iter()
                .any(|slot| slot.leaving.contains_key(instance) || slot.servers.contains_key(instance))
        })
    }

    /// Per-revision counters of `app` from `show stat`: (revision, requests, 5xx answers).
    async fn stats(&self, app: &str) -> Vec<(u32, u64, u64)> {
        let revisions: Vec<(usize, u32)> = {
            let applied = self.applied.lock().await;
            let Some(entry) = applied.apps.get(app) else {
                return Vec::new();
            };
            entry
                .slots
                .iter()
                .enumerate()
                .filter_map(|(index, slot)| Some((index, slot.revision?)))
                .collect()
        };
        let mut out = Vec::new();
        for (index, revision) in revisions {
            let Ok(stat) = self.command(&format!("show stat {app}_s{index} 2 -1")).await else {
                continue;
            };
            let mut lines = stat.lines();
            let Some(header) = lines.next() else { continue };
            let header: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
            let (Some(total_at), Some(errors_at)) = (
                header.iter().position(|h| *h == "req_tot"),
                header.iter().position(|h| *h == "hrsp_5xx"),
            ) else {
                continue;
            };
            if let Some(fields) = lines.next().map(|l| l.split(',').collect::<Vec<_>>()) {
                let number = |at: usize| fields.get(at).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                out.push((revision, number(total_at), number(errors_at)));
            }
        }
        out
    }

    /// Stops HAProxy gracefully (it finishes requests in flight), for a data plane that stops
    /// on purpose.
    pub async fn stop(&self) {
        let mut applied = self.applied.lock().await;
        if !applied.running {
            return;
        }
        let pid = std::fs::read_to_string(self.dir.join("haproxy.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1);
        }
        if let Some(mut child) = applied.child.take() {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        } else if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(30);
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        applied.running = false;
        applied.apps.clear();
    }
}

/// The HAProxy binary: `SLIPWAY_HAPROXY`, else `haproxy` on `PATH`, else where Debian puts it
/// (`/usr/sbin`, which is not on every user's `PATH`).
fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("SLIPWAY_HAPROXY") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

fn infrastructure(message: String) -> DriverError {
    DriverError::Infrastructure {
        driver: DRIVER,
        message,
        source: None,
    }
}

fn map_entries(entry: &AppApplied) -> Vec<(String, String)> {
    let mut entries = vec![("maintenance".to_string(), u32::from(entry.maintenance).to_string())];
    for (index, slot) in entry.slots.iter().enumerate() {
        entries.push((format!("r{index}"), slot.revision.unwrap_or(0).to_string()));
        entries.push((format!("w{index}"), slot.weight.to_string()));
    }
    entries
}

fn map_text(entry: &AppApplied) -> String {
    map_entries(entry)
        .into_iter()
        .map(|(key, value)| format!("{key} {value}\n"))
        .collect()
}

/// How often an app's certificate files are looked at for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Serves the router's certificate anew whenever its files change (are newer than what
/// HAProxy was given), while the router lives. A pair that cannot be used (half written, say)
/// keeps the certificate in use, with a warning, and is tried again at the next change.
async fn watch_certificate(router: std::sync::Weak<HaproxyRouter>) {
    let mut refused = None;
    loop {
        tokio::time::sleep(CERT_POLL).await;
        let Some(router) = router.upgrade() else { return };
        let route = router.route.lock().unwrap().clone();
        let Some(changed) = route
            .tls
            .as_ref()
            .and_then(|tls| router.haproxy.certificate_changed(&router.app, tls))
        else {
            continue;
        };
        if refused == Some(changed) {
            continue;
        }
        match router.haproxy.update_certificate(&router.app, &route).await {
            Ok(()) => {
                refused = None;
                tracing::info!(app = %router.app, "certificate read again");
            }
            Err(error) => {
                refused = Some(changed);
                tracing::warn!(app = %router.app, %error, "keeping the certificate in use");
            }
        }
    }
}

/// The apps served over HTTPS, by HTTPS address.
fn by_https_address(applied: &Applied) -> BTreeMap<SocketAddr, Vec<(&String, &AppApplied)>> {
    let mut https: BTreeMap<SocketAddr, Vec<(&String, &AppApplied)>> = BTreeMap::new();
    for (app, entry) in &applied.apps {
        if let (Some(_), Some(tls)) = (entry.listen, &entry.route.tls) {
            https.entry(tls.listen).or_default().push((app, entry));
        }
    }
    https
}

/// An address as part of a name HAProxy accepts.
fn address_name(listen: SocketAddr) -> String {
    listen
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The rule redirecting `app`'s plain requests to HTTPS (308, path and query kept), if it
/// asks for that; never an ACME challenge's.
fn redirect(app: &str, entry: &AppApplied) -> String {
    let Some(tls) = entry.route.tls.as_ref().filter(|tls| tls.redirect) else {
        return String::new();
    };
    let port = match tls.listen.port() {
        443 => String::new(),
        port => format!(":{port}"),
    };
    let unless_challenge = if tls.acme { " !slipway_acme" } else { "" };
    format!(
        "    http-request redirect location https://%[req.hdr(host),field(1,:)]{port}%[capture.req.uri] code 308 if {{ var(txn.app) -m str {app} }}{unless_challenge}\n"
    )
}

fn acme(entry: &AppApplied) -> bool {
    entry.route.tls.as_ref().is_some_and(|tls| tls.acme)
}

/// `slipway_acme`, the ACL of ACME HTTP-01 challenge requests, on a plain frontend that
/// has an app with certificates over ACME.
fn challenges(apps: &[(&String, &AppApplied)]) -> String {
    if apps.iter().any(|(_, entry)| acme(entry)) {
        format!("    acl slipway_acme path_beg {}\n", crate::acme::CHALLENGE_PATH)
    } else {
        String::new()
    }
}

/// The rule passing `app`'s ACME challenges to the data plane, which answers them from the
/// runner's files (before the app's own backends).
fn answer_challenge(app: &str, entry: &AppApplied) -> String {
    if acme(entry) {
        format!("    use_backend slipway_acme if slipway_acme {{ var(txn.app) -m str {app} }}\n")
    } else {
        String::new()
    }
}

/// The headers telling the app how the client came: `X-Forwarded-Proto`, `-Host` and
/// `Forwarded` (a line for this hop after any the client sent), set here whatever the client
/// claimed, as the built-in router does (`X-Forwarded-For` is `option forwardfor`'s).
fn forwarding(https: bool) -> String {
    let proto = if https { "https" } else { "http" };
    format!(
        r#"    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }}
    http-request del-header X-Forwarded-Host unless {{ req.hdr(host) -m found }}
    http-request set-var-fmt(txn.fwd_for) "for=%[src]"
    http-request set-var-fmt(txn.fwd_for) "for=\"[%[src]]\"" if {{ src -m sub : }}
    http-request set-var-fmt(txn.fwd_host) ";host=\"%[req.hdr(host)]\"" if {{ req.hdr(host) -m reg ^[A-Za-z0-9.:\[\]-]+$ }}
    http-request add-header Forwarded "%[var(txn.fwd_for)]%[var(txn.fwd_host)];proto={proto}"
"#
    )
}

/// Writes `text` to `path` for the data plane's user only (a certificate's key is in it).
fn write_private(path: &Path, text: &str) -> Result<(), DriverError> {
    let written = match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    };
    written
        .and_then(|()| crate::files::replace_private(path, text.as_bytes()))
        .map_err(|e| DriverError::infrastructure(DRIVER, format!("cannot write {}", path.display()), e))
}

/// The ACLs that pick out `app`'s requests on a shared frontend: `app_APP_host` (the Host
/// header without its port) and `app_APP_path` (the prefix itself, or anything under it).
fn route_acls(app: &str, route: &HostRoute) -> String {
    let mut text = String::new();
    let exact: Vec<&str> = route
        .hosts
        .iter()
        .filter(|h| !h.starts_with("*."))
        .map(String::as_str)
        .collect();
    if !exact.is_empty() {
        text.push_str(&format!(
            "    acl app_{app}_host req.hdr(host),field(1,:),lower -m str {}\n",
            exact.join(" ")
        ));
    }
    for domain in route.hosts.iter().filter_map(|h| h.strip_prefix("*.")) {
        text.push_str(&format!(
            "    acl app_{app}_host req.hdr(host),field(1,:),lower -m reg '^[^.]+\\.{}$'\n",
            domain.replace('.', "\\.")
        ));
    }
    let prefix = route.prefix();
    if prefix != "/" {
        let bare = prefix.trim_end_matches('/');
        text.push_str(&format!("    acl app_{app}_path path -m str {bare}\n"));
        text.push_str(&format!("    acl app_{app}_path path -m beg {prefix}\n"));
    }
    text
}

/// Waits until something accepts connections on `listen` (HAProxy's new worker).
async fn wait_listening(listen: SocketAddr) -> Result<(), DriverError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        if Instant::now() > deadline {
            return Err(DriverError::Invalid(format!(
                "listen: haproxy could not listen on {listen} (is the address in use, or not this machine's?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn last_log_lines(path: &Path) -> String {
    crate::driver::compute::output::last_lines(path, 5).join(" / ")
}

/// What the compute driver and the runner want for one app.
#[derive(Clone, Default)]
struct Wanted {
    weights: BTreeMap<u32, u32>,
    maintenance: bool,
    endpoints: BTreeMap<u32, Vec<Endpoint>>,
}

impl Wanted {
    fn serving(&self, revision: u32) -> bool {
        self.weights.get(&revision).is_some_and(|w| *w > 0)
    }
}

/// One app's routing through HAProxy.
pub struct HaproxyRouter {
    app: String,
    haproxy: Arc<Haproxy>,
    wanted: Mutex<Wanted>,
    /// Serializes applying: each sync applies the newest wanted state.
    syncing: tokio::sync::Mutex<()>,
    listen: Mutex<SocketAddr>,
    /// Its host names, path prefix and HTTPS.
    route: Mutex<HostRoute>,
    this: std::sync::Weak<HaproxyRouter>,
}

impl HaproxyRouter {
    /// `app` routed by `haproxy` on `listen` as `route` says: its frontend is added (or
    /// adopted) now.
    pub async fn new(
        app: &str,
        listen: SocketAddr,
        route: &HostRoute,
        haproxy: Arc<Haproxy>,
    ) -> Result<Arc<HaproxyRouter>, DriverError> {
        haproxy.ensure_app(app, listen, route).await?;
        let mut wanted = Wanted::default();
        if let Some((weights, maintenance, endpoints)) = haproxy.adopted(app).await {
            wanted = Wanted {
                weights,
                maintenance,
                endpoints,
            };
        }
        let router = Arc::new_cyclic(|this| HaproxyRouter {
            app: app.to_string(),
            haproxy,
            wanted: Mutex::new(wanted),
            syncing: tokio::sync::Mutex::new(()),
            listen: Mutex::new(listen),
            route: Mutex::new(route.clone()),
            this: this.clone(),
        });
        tokio::spawn(watch_certificate(Arc::downgrade(&router)));
        Ok(router)
    }

    pub fn local_addr(&self) -> SocketAddr {
        *self.listen.lock().unwrap()
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    /// Moves the app's frontend to `listen` and `route` (a reload: the old address is let go
    /// as the new one is bound).
    pub async fn move_to(&self, listen: SocketAddr, route: &HostRoute) -> Result<(), DriverError> {
        self.haproxy.ensure_app(&self.app, listen, route).await?;
        *self.listen.lock().unwrap() = listen;
        *self.route.lock().unwrap() = route.clone();
        Ok(())
    }

    /// Takes the app out of HAProxy.
    pub async fn stop(&self) {
        if let Err(error) = self.haproxy.remove_app(&self.app).await {
            tracing::warn!(app = %self.app, %error, "removing the app from haproxy failed");
        }
    }

    /// Applies the wanted state; a sync already under way is followed by one more.
    async fn sync(&self) -> Result<(), DriverError> {
        let _one_at_a_time = self.syncing.lock().await;
        let wanted = self.wanted.lock().unwrap().clone();
        let result = self.haproxy.sync(&self.app, &wanted).await;
        if let Err(error) = &result {
            tracing::warn!(app = %self.app, %error, "applying routes to haproxy failed");
        }
        result
    }

    /// The app's per-revision counters from `show stat`: (revision, requests, 5xx answers).
    pub async fn counters(&self) -> Vec<(u32, u64, u64)> {
        self.haproxy.stats(&self.app).await
    }
}

#[async_trait]
impl Backends for HaproxyRouter {
    fn set_endpoints(&self, revision: u32, endpoints: Vec<Endpoint>) {
        self.wanted.lock().unwrap().endpoints.insert(revision, endpoints);
        // Applied in order by the sync lock; a failure is logged, and the next change (or a
        // drain, which syncs first) applies everything again.
        if let Some(this) = self.this.upgrade() {
            tokio::spawn(async move {
                let _ = this.sync().await;
            });
        }
    }

    async fn drain(&self, instance: &str, timeout: Duration) -> bool {
        // The endpoints change that took it out may still be applying.
        let _ = self.sync().await;
        let deadline = Instant::now() + timeout;
        while !self.haproxy.gone(&self.app, instance).await {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        true
    }
}

#[async_trait]
impl Router for HaproxyRouter {
    async fn traffic(&self, revision: u32, window: Duration) -> Result<TrafficStats, DriverError> {
        Ok(self.haproxy.traffic_of(&self.app, revision, window))
    }

    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        self.wanted.lock().unwrap().weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        self.sync().await
    }

    fn weights(&self) -> Vec<(u32, u32)> {
        self.wanted
            .lock()
            .unwrap()
            .weights
            .iter()
            .map(|(r, w)| (*r, *w))
            .collect()
    }

    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        self.wanted.lock().unwrap().maintenance = on;
        self.sync().await
    }

    fn maintenance(&self) -> bool {
        self.wanted.lock().unwrap().maintenance
    }
}

/// Records one of HAProxy's log lines, `FRONTEND REVISION STATUS TR_MS`. Requests no revision
/// answered (maintenance, no ready instance: revision `-`) are not a revision's traffic; a
/// request whose answer never came (`TR_MS` is -1: HAProxy answered 502, 503 or 504 itself)
/// is a connection error.
fn record_traffic(traffic: &Mutex<Traffic>, line: &str, now_ms: u64) {
    let mut fields = line.split_whitespace();
    let (Some(app), Some(revision), Some(status), Some(tr)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    let (Ok(revision), Ok(status), Ok(tr)) = (revision.parse::<u32>(), status.parse::<i64>(), tr.parse::<i64>()) else {
        return;
    };
    let log = traffic
        .lock()
        .unwrap()
        .entry(app.to_string())
        .or_default()
        .entry(revision)
        .or_default()
        .clone();
    match (u16::try_from(status), u64::try_from(tr)) {
        (Ok(status), Ok(ms)) => log.answered(now_ms, status, Duration::from_millis(ms)),
        _ => log.failed(now_ms),
    }
}

#[cfg(test)]
mod traffic_tests {
    use super::*;

    #[test]
    fn apps_json_of_an_older_data_plane_still_reads() {
        let older: BTreeMap<String, Listed> = serde_json::from_str(r#"{"shop":"127.0.0.1:8080"}"#).unwrap();
        assert!(matches!(older["shop"], Listed::Address(addr) if addr.port() == 8080));
        let newer: BTreeMap<String, Listed> = serde_json::from_str(
            r#"{"shop":{"listen":"127.0.0.1:80","route":{"hosts":["shop.test"],"path_prefix":"/api"}}}"#,
        )
        .unwrap();
        let Listed::Routed { listen, route } = &newer["shop"] else {
            panic!("not read as routed")
        };
        assert_eq!((listen.port(), route.prefix().as_str()), (80, "/api/"));
        assert_eq!(route.rank(), 0);
        let acls = route_acls("shop", route);
        assert!(
            acls.contains("acl app_shop_host req.hdr(host),field(1,:),lower -m str shop.test"),
            "{acls}"
        );
        assert!(acls.contains("acl app_shop_path path -m beg /api/"), "{acls}");
        let wildcard = route_acls(
            "blog",
            &HostRoute {
                hosts: vec!["*.blog.test".into()],
                ..HostRoute::default()
            },
        );
        assert_eq!(
            wildcard,
            "    acl app_blog_host req.hdr(host),field(1,:),lower -m reg '^[^.]+\\.blog\\.test$'\n"
        );
    }

    #[test]
    fn log_lines_become_each_revisions_traffic() {
        let traffic = Mutex::new(Traffic::new());
        let now = 1_800_000_000_000;
        for line in [
            "shop 2 200 12",
            "shop 2 500 30\n",
            "shop 2 503 -1",
            "shop 3 200 5",
            // Maintenance or no ready instance: nobody's traffic.
            "shop - 503 -1",
            "garbage",
            "",
        ] {
            record_traffic(&traffic, line, now);
        }
        let logs = traffic.lock().unwrap();
        let two = logs["shop"][&2].stats(now, Duration::from_secs(10));
        assert_eq!(
            (two.requests, two.by_class, two.connection_errors),
            (3, [0, 1, 0, 0, 1], 1)
        );
        assert!(two.p50_us.unwrap() >= 12_000);
        assert_eq!(logs["shop"][&3].stats(now, Duration::from_secs(10)).requests, 1);
        assert_eq!(logs["shop"].len(), 2);
    }
}
