//! Crash-safe file writes: a temporary name in the final directory, fsync,
//! rename, so a reader sees either the old or the new complete file. Also the
//! I/O error helpers every part of the layout transport shares.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;

use super::super::{Result, TransportError};

/// Unique suffix for temporary files, so that concurrent writers of the same
/// blob or of `index.json` never share a temporary file.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn temp_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TransportError + '_ {
    move |source| TransportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn is_absent(e: &io::Error) -> bool {
    // A missing parent directory, or a file where a directory should be, both
    // mean "not there" for lookups.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Removes a temporary file when dropped, unless disarmed after the rename.
/// This also covers a cancelled future (e.g. a copy aborted mid-stream): no
/// temporary file outlives the write that created it.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub(super) fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Synchronous on purpose: Drop cannot await, and unlinking is cheap.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Flushes a directory entry change (rename, link) to disk. Best effort: some
/// filesystems refuse fsync on directories, and the data itself is already
/// safe, only the name could be lost in a crash.
pub(super) async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory,
/// fsync, rename.
pub(super) async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = TempFile::new(dir.join(format!(".{name}.tmp-{}", temp_suffix())));
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp.path)
        .await
        .map_err(io_err(&tmp.path))?;
    f.write_all(bytes).await.map_err(io_err(&tmp.path))?;
    f.sync_all().await.map_err(io_err(&tmp.path))?;
    drop(f);
    tokio::fs::rename(&tmp.path, path)
        .await
        .map_err(io_err(path))?;
    tmp.disarm();
    sync_dir(dir).await;
    Ok(())
}
