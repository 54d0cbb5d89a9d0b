//! Paths as written in the configuration: `~/` is `$HOME`, and a relative
//! path is relative to the directory of the configuration file, not to the
//! working directory (a service's is `/`).

use std::path::{Path, PathBuf};

/// The directory relative paths of the file at `config` start from.
pub(super) fn base_dir(config: &Path) -> PathBuf {
    let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `s` resolved against `base`.
pub(super) fn resolve(base: &Path, s: &str) -> PathBuf {
    let rest = if s == "~" {
        Some("")
    } else {
        s.strip_prefix("~/")
    };
    let path = match (rest, std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
    };
    if path.is_relative() {
        // "./state" reads better as "/etc/regkeeper/state" in messages.
        let rest: PathBuf = path
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        base.join(rest)
    } else {
        path
    }
}
