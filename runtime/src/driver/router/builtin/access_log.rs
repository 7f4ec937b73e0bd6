//! The access log: one JSON line per request, off unless an app asks for it.
//!
//! Requests hand their line to a writer task over a bounded channel and never wait for the
//! disk: when the writer falls behind, lines are dropped and counted, and the count is
//! written as a line of its own once there is room. The file is bounded too: past
//! [`MAX_FILE_BYTES`] it is renamed to `access.log.1` (replacing the older one) and a new
//! file begins, so an app's log never takes more than twice that.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

/// How large the file grows before it is rotated.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Lines waiting for the writer; beyond them, lines are dropped.
const QUEUE: usize = 8192;

/// An app's access log: where requests send their lines.
pub(super) struct AccessLog {
    app: Arc<str>,
    lines: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// One answered request, as logged.
pub(super) struct Entry<'a> {
    pub at_ms: u64,
    pub revision: Option<&'a HeaderValue>,
    pub method: &'a str,
    pub host: Option<&'a HeaderValue>,
    pub target: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub client: &'a HeaderValue,
}

impl AccessLog {
    /// Starts the writer for `path` (its directory is created). Needs a tokio runtime.
    pub(super) fn open(app: &str, path: PathBuf) -> AccessLog {
        let (lines, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_lines(path, receiver, dropped.clone()));
        AccessLog {
            app: Arc::from(app),
            lines,
            dropped,
        }
    }

    /// Queues `entry`'s line, or counts it as dropped if the writer is behind.
    pub(super) fn record(&self, entry: &Entry<'_>) {
        let mut line = String::with_capacity(192);
        let _ = writeln!(
            line,
            "{{\"time_ms\":{},\"app\":{},\"revision\":{},\"method\":{},\"host\":{},\"target\":{},\"status\":{},\"duration_ms\":{:.3},\"client\":{}}}",
            entry.at_ms,
            json(&self.app),
            entry.revision.and_then(|v| v.to_str().ok()).unwrap_or("null"),
            json(entry.method),
            entry.host.and_then(|v| v.to_str().ok()).map_or("null".into(), json),
            json(entry.target),
            entry.status,
            entry.duration.as_secs_f64() * 1000.0,
            json(entry.client.to_str().unwrap_or_default()),
        );
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// Writes lines as they come, rotating the file at [`MAX_FILE_BYTES`]; ends when the app's
/// router is gone.
async fn write_lines(path: PathBuf, mut lines: mpsc::Receiver<String>, dropped: Arc<AtomicU64>) {
    let open = |path: PathBuf| async move {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok::<_, std::io::Error>((tokio::io::BufWriter::new(file), size))
    };
    let (mut file, mut size) = match open(path.clone()).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot open the access log; requests are not logged");
            return;
        }
    };
    while let Some(line) = lines.recv().await {
        let mut batch = line;
        // Whatever else is waiting goes in the same write.
        while batch.len() < 64 << 10
            && let Ok(more) = lines.try_recv()
        {
            batch.push_str(&more);
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(batch, "{{\"dropped\":{lost}}}");
        }
        if file.write_all(batch.as_bytes()).await.is_err() || file.flush().await.is_err() {
            continue;
        }
        size += batch.len() as u64;
        if size >= MAX_FILE_BYTES {
            let _ = file.flush().await;
            let mut older = path.clone().into_os_string();
            older.push(".1");
            let _ = tokio::fs::rename(&path, &older).await;
            match open(path.clone()).await {
                Ok((new, _)) => {
                    file = new;
                    size = 0;
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot reopen the access log");
                    return;
                }
            }
        }
    }
    let _ = file.flush().await;
}
