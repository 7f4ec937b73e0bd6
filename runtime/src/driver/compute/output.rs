//! Instance output, kept in files: one per instance, holding both stdout and stderr as they
//! arrive.
//!
//! Each file is kept to [`MAX_FILE_BYTES`] by rotation (the file and one older `.1`), and the
//! newest [`MAX_FILES`] instances' files of an app are kept. Output is read in chunks, at most
//! [`MAX_RATE`] bytes a second per instance: an instance that writes without pause (`yes`) is
//! slowed by its own full pipe, as it would be on a slow terminal, instead of costing its
//! reader a CPU.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most one output file holds before it is rotated.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most output read from one instance per second; beyond it the instance waits.
pub const MAX_RATE: u64 = 1 << 20;
/// Output files kept per app, newest first.
pub const MAX_FILES: usize = 64;
/// The most read at a time.
const CHUNK: usize = 16 << 10;

/// The directory of `app`'s output files in the data directory `data_dir`.
pub fn app_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("output").join(app)
}

/// Where an app's instances write their output.
#[derive(Clone, Debug)]
pub struct OutputFiles {
    dir: PathBuf,
}

impl OutputFiles {
    /// Output files in `dir`, which is created (readable by its owner only) if needed.
    pub fn new(dir: PathBuf) -> std::io::Result<OutputFiles> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(OutputFiles { dir })
    }

    /// The file `instance` writes to.
    pub fn path(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    /// Copies `stdout` and `stderr` into `instance`'s file until both end.
    pub fn capture(
        &self,
        instance: &str,
        stdout: Option<impl AsyncRead + Send + Unpin + 'static>,
        stderr: Option<impl AsyncRead + Send + Unpin + 'static>,
    ) {
        self.prune();
        let path = self.path(instance);
        let writer = match Rotating::open(path.clone()) {
            Ok(writer) => Arc::new(Mutex::new(writer)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot keep an instance's output");
                return;
            }
        };
        let budget = Arc::new(Mutex::new(Budget::new()));
        if let Some(stream) = stdout {
            tokio::spawn(copy(stream, writer.clone(), budget.clone()));
        }
        if let Some(stream) = stderr {
            tokio::spawn(copy(stream, writer, budget));
        }
    }

    /// The instance has exited; its file stays for `slipway` to show until it is pruned.
    pub fn closed(&self, _instance: &str) {}

    /// Removes the oldest files beyond [`MAX_FILES`].
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_FILES * 2 {
            return;
        }
        files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, path) in files.into_iter().skip(MAX_FILES * 2) {
            // Gone already is as good as removed.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The output files in an app's output directory `dir`, as `(instance, path)`, the oldest
/// written first; only instances `keep` accepts.
pub fn instances(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let instance = name.strip_suffix(".log")?.to_string();
            let modified = entry.metadata().ok()?.modified().ok()?;
            keep(&instance).then(|| (modified, instance, entry.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, instance, path)| (instance, path)).collect()
}

/// Reads an output file as it grows, a whole line at a time, across rotations.
pub struct Follower {
    path: PathBuf,
    /// The file read from, by inode: a rotation moves it to `.1` and starts a new one.
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Follows `path`, starting at its end once its last `tail` lines are returned by the
    /// first [`Follower::read`].
    pub fn new(path: PathBuf, tail: usize) -> (Follower, Vec<String>) {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        let current = std::fs::read(&path).unwrap_or_default();
        // A line still being written is not shown yet: it is read whole once it ends.
        let complete = current.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        let mut lines = Vec::new();
        if tail > 0 {
            let mut older = path.clone().into_os_string();
            older.push(".1");
            let mut text = std::fs::read(&older).unwrap_or_default();
            text.extend_from_slice(&current[..complete]);
            lines = text
                .split(|b| *b == b'\n')
                .rev()
                .skip(1)
                .take(tail)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            lines.reverse();
        }
        let follower = Follower {
            path,
            inode,
            offset: complete as u64,
            partial: Vec::new(),
        };
        (follower, lines)
    }

    /// Reads the file from its first byte on: for a file that appeared while following.
    pub fn from_start(mut self) -> Follower {
        self.inode = 0;
        self.offset = 0;
        self
    }

    /// The complete lines written since the last call.
    pub fn read(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        let length = metadata.len();
        let mut fresh = Vec::new();
        if metadata.ino() != self.inode {
            // Rotated (or created since): the rest of what was read from is the older file.
            let mut older = self.path.clone().into_os_string();
            older.push(".1");
            if self.inode != 0 {
                fresh.extend(read_from(Path::new(&older), self.offset));
            }
            self.inode = metadata.ino();
            self.offset = 0;
        }
        if length > self.offset {
            fresh.extend(read_from(&self.path, self.offset));
            self.offset = length;
        }
        self.partial.extend(fresh);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete[..end]
            .split(|b| *b == b'\n')
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        // At most one file's worth: that is all a rotation keeps.
        let _ = file.take(MAX_FILE_BYTES).read_to_end(&mut bytes);
    }
    bytes
}

/// The last `n` lines of `path` (it is read from its end).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(8 << 10);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut tail).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

async fn copy(mut stream: impl AsyncRead + Unpin, writer: Arc<Mutex<Rotating>>, budget: Arc<Mutex<Budget>>) {
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let wait = budget.lock().unwrap().wait();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        budget.lock().unwrap().spend(n as u64);
        if let Err(error) = writer.lock().unwrap().write(&chunk[..n]) {
            tracing::warn!(%error, "cannot write an instance's output");
            return;
        }
    }
}

/// A token bucket of [`MAX_RATE`] bytes a second.
struct Budget {
    available: f64,
    refilled: Instant,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            available: MAX_RATE as f64,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * MAX_RATE as f64;
        self.available = (self.available + earned).min(MAX_RATE as f64);
        self.refilled = now;
    }

    /// How long to wait before reading more.
    fn wait(&mut self) -> Duration {
        self.refill();
        if self.available > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.available / MAX_RATE as f64 + CHUNK as f64 / MAX_RATE as f64)
        }
    }

    fn spend(&mut self, bytes: u64) {
        self.available -= bytes as f64;
    }
}

/// A file that moves aside to `NAME.1` when it reaches [`MAX_FILE_BYTES`].
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Rotating {
    fn open(path: PathBuf) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating { path, file, size })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size + bytes.len() as u64 > MAX_FILE_BYTES {
            let mut older = self.path.clone().into_os_string();
            older.push(".1");
            std::fs::rename(&self.path, older)?;
            *self = Rotating::open(self.path.clone())?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_and_tails_read_from_the_end() {
        let dir = std::env::temp_dir().join(format!("slipway-output-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let output = OutputFiles::new(dir.clone()).unwrap();
        let path = output.path("app-r1-1");
        let mut file = Rotating::open(path.clone()).unwrap();
        let line = vec![b'x'; 1023];
        for _ in 0..1500 {
            file.write(&line).unwrap();
            file.write(b"\n").unwrap();
        }
        file.write(b"the last line\n").unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= MAX_FILE_BYTES, "{size}");
        assert!(dir.join("app-r1-1.log.1").exists(), "the older part is kept once");
        assert_eq!(last_lines(&path, 1), vec!["the last line".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_follower_reads_whole_lines_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("slipway-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let output = OutputFiles::new(dir.clone()).unwrap();
        let path = output.path("app-r1-1");
        let mut file = Rotating::open(path.clone()).unwrap();
        file.write(b"one\ntwo\nthr").unwrap();
        let (mut follower, tail) = Follower::new(path.clone(), 5);
        assert_eq!(tail, ["one", "two"]);
        assert!(follower.read().is_empty());
        file.write(b"ee\n").unwrap();
        assert_eq!(follower.read(), ["three"]);
        let line = vec![b'x'; 1023];
        for _ in 0..1100 {
            file.write(&line).unwrap();
            file.write(b"\n").unwrap();
        }
        file.write(b"last\n").unwrap();
        let read = follower.read();
        assert_eq!(read.last().map(String::as_str), Some("last"));
        assert!(read.len() > 1, "lines before the rotation are not skipped");
        let listed = instances(&dir, |i| i.contains("-r1-"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "app-r1-1");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_budget_makes_a_fast_writer_wait() {
        let mut budget = Budget::new();
        assert_eq!(budget.wait(), Duration::ZERO);
        budget.spend(MAX_RATE * 2);
        assert!(budget.wait() >= Duration::from_millis(900), "{:?}", budget.wait());
    }
}
