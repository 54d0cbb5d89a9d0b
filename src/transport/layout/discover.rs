//! Finding the layouts under a directory: the catalog of an `oci:` prefix.

use std::path::Path;

use super::super::Result;
use super::OCI_LAYOUT_FILE;
use super::atomic::{io_err, is_absent};

/// Every directory below `root` that holds an `oci-layout` file, as a path
/// relative to `root` with `/` separators, sorted.
pub async fn list_repositories(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    // Iterative walk; each item is a directory and its path relative to root.
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = pending.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            // A prefix that does not exist yet holds no repositories.
            Err(e) if rel.is_empty() && is_absent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let is_layout = tokio::fs::metadata(dir.join(OCI_LAYOUT_FILE))
            .await
            .is_ok_and(|m| m.is_file());
        // The root itself is the prefix, not a repository under it.
        if is_layout && !rel.is_empty() {
            found.push(rel.clone());
        }
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            // `file_type` does not follow symlinks, so a link cycle cannot
            // make the walk endless; symlinked layouts are not listed.
            let ft = entry.file_type().await.map_err(io_err(&entry.path()))?;
            if !ft.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(path = %entry.path().display(), "skipping a directory whose name is not UTF-8");
                continue;
            };
            // A layout's blob store can be huge and never holds repositories.
            if is_layout && name == "blobs" {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            pending.push((entry.path(), child_rel));
        }
    }
    found.sort();
    Ok(found)
}
