//! Where a layout under an `oci:` prefix may be written: inside the prefix
//! directory, checked on the resolved path. A repository name from a
//! catalog is a relative path of the distribution grammar (no `..`, not
//! absolute) before it gets here; this adds what the name cannot show: a
//! directory on the way that is a symlink to somewhere else.

use std::io;
use std::path::{Component, Path};

/// Directories below a layout's root that writes go through.
const WRITTEN_DIRS: [&str; 2] = ["blobs", "sha256"];

/// `Ok` when every existing directory from `root` down to `path` (and the
/// layout's `blobs/sha256` in it) resolves inside `root`; what does not
/// exist yet is created as a plain directory there. `Err` says why not.
pub(crate) fn confined(root: &Path, path: &Path) -> Result<(), String> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| format!("{} is not under {}", path.display(), root.display()))?;
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{} is not a plain relative path", rel.display()));
    }
    let real_root = match std::fs::canonicalize(root) {
        Ok(r) => r,
        // nothing there yet: everything below is created inside it
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", root.display())),
    };
    let mut at = root.to_path_buf();
    let steps = rel.components().map(|c| c.as_os_str().to_owned());
    for step in steps.chain(WRITTEN_DIRS.iter().map(Into::into)) {
        at.push(step);
        match std::fs::symlink_metadata(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", at.display())),
            Ok(m) if m.file_type().is_symlink() => {
                let real = std::fs::canonicalize(&at).map_err(|e| {
                    format!("{} is a symlink that does not resolve: {e}", at.display())
                })?;
                if !real.starts_with(&real_root) {
                    return Err(format!(
                        "{} is a symlink to {}, outside {}",
                        at.display(),
                        real.display(),
                        real_root.display()
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::confined;

    #[test]
    fn only_paths_that_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("in/app")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("in"), root.join("alias")).unwrap();
        // a layout's blob store linked out of the prefix
        std::fs::create_dir_all(root.join("lay")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lay/blobs")).unwrap();
        assert!(confined(&root, &root.join("new/app")).is_ok());
        assert!(confined(&root, &root.join("in/app")).is_ok());
        assert!(confined(&root, &root.join("alias/app")).is_ok());
        let e = confined(&root, &root.join("out/app")).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert!(confined(&root, &root.join("lay")).is_err());
        assert!(confined(&root, &root.join("../outside")).is_err());
        assert!(confined(&root, &outside).is_err());
        // a root that does not exist yet holds nothing to escape through
        assert!(confined(&dir.path().join("none"), &dir.path().join("none/a")).is_ok());
    }
}
