//! The exclusive lock on `state_dir`: `run`, `sync` and `prune` hold it for
//! their whole life, so two of them never interleave copies, checkpoints and
//! deletions; `status` and `plan` only read and take no lock (SPEC section 1).
//!
//! An advisory `flock` on `state_dir/regkeeper.lock` (rustix; std's
//! `File::try_lock` needs a newer Rust than the crate's minimum):
//! the kernel drops it when the process ends, however it ends, so a crash
//! never leaves a stale lock. The holder writes its PID into the file so a
//! refused second process can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

const LOCK_FILE: &str = "regkeeper.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "state directory {} is in use by another regkeeper ({holder}); run, sync and prune take turns",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
    #[error("state directory {}: cannot take its lock: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the process works on the state; released on drop (or exit).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock without waiting: a second holder is an error naming
    /// the first one's PID.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "PID unknown".to_string(),
                };
                return Err(LockError::Held {
                    path: state_dir.to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again after drop");
    }
}
