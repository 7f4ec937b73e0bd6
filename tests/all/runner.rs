//! A real `slipway serve` for end-to-end tests: its own data directory, API port and tokens,
//! started as a child process and stopped with SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::support::workspace;

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const DEPLOY: &str = "deploy-token-0123456789abcdef";
pub const READ: &str = "read-token-0123456789abcdef";

pub struct Server {
    child: Option<Child>,
    pub api: String,
    pub data: PathBuf,
}

/// A port on 127.0.0.1 that nobody uses right now, for a listener a test starts later.
///
/// It comes from below the kernel's ephemeral range, where no client socket and no
/// `bind(0)` (the runner's, an instance's, another test's) is ever given a port, so it stays
/// free until the listener binds it; a counter keeps this process's picks apart. A port
/// from `bind(0)` instead could be taken in between by any of the suite's many outgoing
/// connections, and the deploy that binds it refused.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static BELOW: OnceLock<u32> = OnceLock::new();
    const SPAN: u32 = 10_000;
    let below = *BELOW.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768)
    });
    assert!(
        below > SPAN + 1024,
        "the ephemeral range starts at {below}: too low to pick ports below it"
    );
    let first = below - SPAN;
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let port = (first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {first} to {below} on 127.0.0.1");
}

/// The `hello` example app's binary, built on first use.
pub fn hello() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let built = workspace().join("target/debug/hello");
            if built.exists() {
                return built;
            }
            let dir = workspace().join("target/hello");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace())
                .args(["build", "--locked", "-p", "hello", "--target-dir"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "building examples/hello failed");
            dir.join("debug/hello")
        })
        .clone()
}

impl Server {
    pub fn start() -> Server {
        Self::start_in(&unique_dir("data"))
    }

    /// Starts a runner on an existing data directory (to test restarts).
    pub fn start_in(data: &Path) -> Server {
        Self::start_with(data, free_port(), &[])
    }

    /// Starts a runner on `data` with its API on `port`, with extra environment.
    pub fn start_with(data: &Path, port: u16, env: &[(&str, &str)]) -> Server {
        let api = format!("http://127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .env("SLIPWAY_TOKENS", format!("admin:{ADMIN},deploy:{DEPLOY},read:{READ}"))
            .env("SLIPWAY_LOG", "error")
            .envs(env.iter().copied())
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start slipway serve");
        let server = Server {
            child: Some(child),
            api,
            data: data.to_path_buf(),
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr: SocketAddr = self.api.trim_start_matches("http://").parse().unwrap();
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("slipway serve did not become healthy on {}", self.api);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The API's port.
    pub fn port(&self) -> u16 {
        self.api.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The data plane's process id, while one runs for this data directory.
    pub fn plane_pid(&self) -> Option<u32> {
        plane_pid(&self.data)
    }

    /// The instances: the data plane's children.
    pub fn instances(&self) -> Vec<u32> {
        self.plane_pid().map(children_of).unwrap_or_default()
    }

    /// Runs the `slipway` CLI against this runner with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        self.cli_command(token, args).output().expect("run the slipway CLI")
    }

    /// The `slipway` CLI command against this runner with `token`, to run elsewhere.
    pub fn cli_command(&self, token: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .args(args)
            .env("SLIPWAY_SERVER", &self.api)
            .env("SLIPWAY_TOKEN", token)
            .current_dir(workspace());
        command
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(ADMIN, args)
    }

    /// Sends an API request with curl-like simplicity; returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        self.request_with(method, path, token, content_type, "*/*", body)
    }

    /// Like [`request`](Self::request), asking for JSON.
    pub fn request_accept(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        self.request_with(method, path, token, content_type, "application/json", body)
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        accept: &str,
        body: &[u8],
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let addr: SocketAddr = self.api.trim_start_matches("http://").parse().unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: slipway\r\n{auth}Accept: {accept}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(body);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, dechunk(&body))
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.request_accept("GET", path, Some(READ), "application/json", b"");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Stops the runner with SIGTERM and waits for it.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "slipway serve did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the runner with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A runner killed (and not started again) leaves its data plane serving, by design;
        // a test that ends there stops it.
        let orphaned = self.child.is_none();
        if orphaned && let Some(plane) = self.plane_pid() {
            stop_process(plane);
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(40);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The data plane's pid for `data`, from its pid file, if that process is alive.
pub fn plane_pid(data: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(data.join("dataplane.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// SIGTERM, then up to 40 s for it to go, then SIGKILL.
pub fn stop_process(pid: u32) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(40);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
}

/// Undoes chunked transfer encoding (the API streams some answers).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 || after.len() < size {
            return if out.is_empty() && size != 0 {
                body.to_string()
            } else {
                out
            };
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

pub fn unique_dir(what: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = workspace()
        .join("target/e2e")
        .join(format!("{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A spec for the hello app at `version`, listening on `listen`.
pub fn hello_spec(listen: SocketAddr, version: &str, strategy: &str, params: &str, extra_env: &str) -> String {
    HelloSpec {
        listen,
        version,
        strategy,
        params,
        extra_env,
        ..HelloSpec::default()
    }
    .toml()
}

/// The hello app's spec with every knob the tests turn.
pub struct HelloSpec<'a> {
    pub listen: SocketAddr,
    pub version: &'a str,
    pub strategy: &'a str,
    pub params: &'a str,
    pub extra_env: &'a str,
    /// Extra `[lifecycle]` lines.
    pub lifecycle: &'a str,
    /// The soak after a strategy succeeds; "0s" unless a test is about it, so that the other
    /// tests' deploys end as soon as their strategy does.
    pub soak: &'a str,
    /// The progress deadline.
    pub deadline: &'a str,
    /// Extra tables (hooks).
    pub tables: &'a str,
    /// Runs hello as containers of this image instead of processes.
    pub image: Option<&'a str>,
    /// With `image`: "bridge" (port 8080 published) or "host".
    pub network: &'a str,
}

impl Default for HelloSpec<'_> {
    fn default() -> Self {
        HelloSpec {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: "v1",
            strategy: "builtin:rolling",
            params: "{}",
            extra_env: "",
            lifecycle: "",
            soak: "0s",
            deadline: "120s",
            tables: "",
            image: None,
            network: "bridge",
        }
    }
}

impl HelloSpec<'_> {
    pub fn toml(&self) -> String {
        format!(
            r#"name = "hello"
replicas = 3
listen = "{listen}"

{runs}
grace-period = "10s"

[probe]
http = "/healthz"
interval = "200ms"
timeout = "2s"
failure-threshold = 3

[strategy]
module = "{strategy}"
params = {params}

[lifecycle]
progress-deadline = "{deadline}"
soak = "{soak}"
{lifecycle}

{tables}
"#,
            listen = self.listen,
            strategy = self.strategy,
            params = self.params,
            lifecycle = self.lifecycle,
            soak = self.soak,
            deadline = self.deadline,
            tables = self.tables,
            runs = self.runs(),
        )
    }

    /// The `[process]` or `[container]` table, without its grace period.
    fn runs(&self) -> String {
        let (version, extra_env) = (self.version, self.extra_env);
        match (self.image, self.network) {
            (None, _) => format!(
                "[process]\ncommand = \"{}\"\nenv = {{ VERSION = \"{version}\"{extra_env} }}",
                hello().display()
            ),
            (Some(image), "host") => format!(
                "[container]\nimage = \"{image}\"\nnetwork = \"host\"\nenv = {{ VERSION = \"{version}\"{extra_env} }}"
            ),
            (Some(image), _) => format!(
                "[container]\nimage = \"{image}\"\nport = 8080\nenv = {{ VERSION = \"{version}\", HOST = \"0.0.0.0\"{extra_env} }}"
            ),
        }
    }
}

/// Writes `text` to a file in a fresh directory and returns its path.
pub fn write_spec(text: &str) -> PathBuf {
    let path = unique_dir("spec").join("slipway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// PIDs of live processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}
