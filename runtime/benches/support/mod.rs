//! What the end-to-end benchmarks share: a runner of their own on a fresh data dir, the CLI
//! pointed at it, free ports and probes.

#![allow(dead_code)] // each benchmark uses its own part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds packages of the workspace with cargo, for `target` (`None`: the host) in `profile`,
/// into `target_dir` (`None`: the workspace's); panics when the build fails.
pub fn build(packages: &[&str], profile: &str, target: Option<&str>, target_dir: Option<&Path>) {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace())
        .args(["build", "--quiet", "--profile", profile]);
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    if let Some(dir) = target_dir {
        command.arg("--target-dir").arg(dir);
    }
    for package in packages {
        command.args(["-p", package]);
    }
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "building {packages:?} failed");
}

/// `examples/hello`, built in release mode.
pub fn hello() -> PathBuf {
    build(&["hello"], "release", None, None);
    workspace().join("target/release/hello")
}

/// A port nobody listens on (yet).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
pub fn answers(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))) else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

/// A `slipway serve` of its own, on a fresh data dir; stopped with SIGTERM when dropped.
pub struct Runner {
    child: Child,
    pub data: PathBuf,
    pub server: String,
}

impl Runner {
    /// Starts a runner and waits until its API answers. `name` keeps data dirs apart.
    pub fn start(name: &str) -> Runner {
        let data = std::env::temp_dir().join(format!("slipway-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let api_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["serve", "--listen", &format!("127.0.0.1:{api_port}"), "--data-dir"])
            .arg(&data)
            .env("SLIPWAY_LOG", "error")
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !answers(api_port, "/healthz") {
            std::thread::sleep(Duration::from_millis(20));
        }
        Runner {
            child,
            data,
            server: format!("http://127.0.0.1:{api_port}"),
        }
    }

    /// The runner's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the CLI against this runner.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .env("SLIPWAY_SERVER", &self.server)
            .env("SLIPWAY_DATA_DIR", &self.data)
            .output()
            .unwrap()
    }

    /// Writes `spec` to a file in the data dir and deploys it; panics when the CLI fails.
    /// With `wait` false, returns once the runner has accepted the deploy.
    pub fn deploy(&self, name: &str, spec: &str, wait: bool) {
        let file = self.data.join(format!("{name}.toml"));
        std::fs::write(&file, spec).unwrap();
        let file = file.to_str().unwrap();
        let args: &[&str] = if wait {
            &["deploy", file]
        } else {
            &["deploy", "--no-wait", file]
        };
        let output = self.cli(args);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// CPU time (user and system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat(5), are 12 and 13 after the command name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes and returns plain integers.
    #[allow(unsafe_code)]
    let per_second = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The median of `samples`.
pub fn median<T: Ord + Copy>(mut samples: Vec<T>) -> T {
    samples.sort();
    samples[samples.len() / 2]
}
