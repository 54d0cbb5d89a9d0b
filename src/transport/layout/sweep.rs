//! Removing the temporary files a killed writer left in a layout.
//!
//! Every file this transport writes is first written as a temporary file in
//! its final directory (`atomic.rs`): `.tmp-<hex>-<pid>-<n>` for a streamed
//! blob, `.<name>.tmp-<pid>-<n>` for a file written whole. A process that is
//! killed leaves them behind. [`sweep_temp_files`] removes only names of that
//! pattern, only in the layout's own directories (the root and
//! `blobs/<algorithm>/`), only regular files (a symlink is never followed or
//! removed), and only those of a given owner: this process, or any process
//! that no longer runs (so a concurrent writer keeps its files).

use std::io;
use std::path::Path;

/// Whose temporary files to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Only this process's (on the way out after a signal).
    ThisProcess,
    /// Those of processes that no longer run (at the start of a run).
    Dead,
}

/// The PID a temporary file's name carries, when the name is our pattern.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, suffix) = rest.rsplit_once(".tmp-").or_else(|| {
        rest.strip_prefix("tmp-")
            .and_then(|s| s.split_once('-'))
            .filter(|(hex, _)| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })?;
    let (pid, counter) = suffix.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}

fn process_runs(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn wanted(name: &str, owner: Owner) -> bool {
    match (temp_pid(name), owner) {
        (Some(pid), Owner::ThisProcess) => pid == std::process::id(),
        (Some(pid), Owner::Dead) => pid != std::process::id() && !process_runs(pid),
        (None, _) => false,
    }
}

/// Removes `owner`'s temporary files from one directory; returns how many.
fn sweep_dir(dir: &Path, owner: Owner) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        // `file_type` does not follow symlinks: a link is never a match.
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| wanted(n, owner)) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Removes `owner`'s temporary files from the layout at `root`: the root
/// itself and each `blobs/<algorithm>/` directory (a symlinked `blobs` or
/// algorithm directory is left alone). A missing layout has none.
pub fn sweep_temp_files(root: &Path, owner: Owner) -> io::Result<usize> {
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !real_dir(root) {
        return Ok(0);
    }
    let mut removed = sweep_dir(root, owner)?;
    let blobs = root.join("blobs");
    if real_dir(&blobs) {
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                removed += sweep_dir(&entry.path(), owner)?;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_pattern_is_recognized() {
        let hex = "ab".repeat(32);
        assert_eq!(temp_pid(&format!(".tmp-{hex}-123-4")), Some(123));
        assert_eq!(temp_pid(".index.json.tmp-77-0"), Some(77));
        assert_eq!(temp_pid(&format!(".{hex}.tmp-9-10")), Some(9));
        for other in [
            "index.json",
            &hex,
            ".tmp-zz-1-2",
            "tmp-ab-1-2",
            ".index.json.tmp-x-1",
            ".index.json.tmp-1",
            ".notes.tmp-1-2-extra",
            ".tmp-",
        ] {
            assert_eq!(temp_pid(other), None, "{other}");
        }
    }

    #[test]
    fn sweeps_own_and_dead_files_only_and_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layout");
        let sha = root.join("blobs/sha256");
        std::fs::create_dir_all(&sha).unwrap();
        let me = std::process::id();
        let hex = "cd".repeat(32);
        // PID 1 runs; u32::MAX - 1 never does.
        let dead = u32::MAX - 1;
        let own = sha.join(format!(".tmp-{hex}-{me}-0"));
        let gone = root.join(format!(".index.json.tmp-{dead}-3"));
        let alive = sha.join(format!(".tmp-{hex}-1-0"));
        let keep = sha.join(&hex);
        for f in [&own, &gone, &alive, &keep] {
            std::fs::write(f, b"x").unwrap();
        }
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let victim = outside.join(format!(".tmp-{hex}-{dead}-1"));
        std::fs::write(&victim, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("blobs/other")).unwrap();
        std::os::unix::fs::symlink(&victim, sha.join(format!(".tmp-{hex}-{dead}-2"))).unwrap();

        assert_eq!(sweep_temp_files(&root, Owner::ThisProcess).unwrap(), 1);
        assert!(!own.exists() && gone.exists());
        assert_eq!(sweep_temp_files(&root, Owner::Dead).unwrap(), 1);
        assert!(!gone.exists());
        assert!(alive.exists() && keep.exists() && victim.exists());
        assert_eq!(
            sweep_temp_files(&dir.path().join("absent"), Owner::Dead).unwrap(),
            0
        );
    }
}
