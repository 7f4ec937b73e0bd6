//! Files the runner and the data plane write whole.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file beside it and a rename, readable by the
/// owner only: a reader sees the old file or the new one, never half of one.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension(format!("partial{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
