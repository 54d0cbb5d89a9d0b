//! `index.json`: the layout's tag list, read and rewritten as a generic JSON
//! object (so fields this code does not know survive a rewrite), and the
//! process-wide lock that serializes its read-modify-write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value, json};

use super::super::{ManifestHead, Result};
use super::atomic::{io_err, is_absent, write_atomic};
use super::{LayoutRepo, OCI_LAYOUT_CONTENT, OCI_LAYOUT_FILE};
use crate::oci::{Digest, OCI_INDEX};

/// The largest `index.json` read: a layout written by another tool is input
/// too, and this is far above a real one (100,000 tags of ~300 bytes each are
/// 30 MB).
const MAX_INDEX_JSON: u64 = 64 * 1024 * 1024;

/// The annotation that names a tag in `index.json`.
pub(super) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(super) const INDEX_FILE: &str = "index.json";

type LockMap = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
/// One async lock per layout (canonical path), guarding `index.json` updates.
/// Entries are never removed: a process touches a bounded set of layouts.
static INDEX_LOCKS: LazyLock<LockMap> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The tag an `index.json` entry carries, if any.
pub(super) fn entry_tag(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

pub(super) fn entry_digest(entry: &Value) -> Option<&str> {
    entry.get("digest")?.as_str()
}

/// The `manifests` array of an index (empty when absent or malformed).
pub(super) fn manifests(index: &Map<String, Value>) -> &[Value] {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The `manifests` array of an index, created when absent or not an array.
pub(super) fn manifests_mut(index: &mut Map<String, Value>) -> &mut Vec<Value> {
    let slot = index
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("made an array above")
}

/// Puts `entry` where the first entry tagged `tag` was (keeps the order of
/// tags stable across updates), or at the end; drops any further entries
/// with the same tag.
fn replace_tag(list: &mut Vec<Value>, tag: &str, entry: Value) {
    let mut placed = false;
    let mut new_entry = Some(entry);
    let mut kept = Vec::with_capacity(list.len() + 1);
    for e in list.drain(..) {
        if entry_tag(&e) == Some(tag) {
            if !placed {
                kept.push(new_entry.take().expect("placed once"));
                placed = true;
            }
        } else {
            kept.push(e);
        }
    }
    kept.extend(new_entry);
    *list = kept;
}

impl LayoutRepo {
    pub(super) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// The process-wide lock for this layout's `index.json`. The directory
    /// must exist: the key is its canonical path, so that `dir`, `./dir` and
    /// a symlink to it share one lock.
    pub(super) async fn lock_index(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let key = tokio::fs::canonicalize(&self.root)
            .await
            .map_err(io_err(&self.root))?;
        let lock = INDEX_LOCKS
            .lock()
            .expect("layout lock map poisoned")
            .entry(key)
            .or_default()
            .clone();
        Ok(lock.lock_owned().await)
    }

    /// Creates the directory, `oci-layout`, `blobs/sha256` and an empty
    /// `index.json` when missing; never touches an existing file.
    pub(super) async fn ensure_layout(&self) -> Result<()> {
        let blobs = self.blobs_dir();
        let layout_file = self.root.join(OCI_LAYOUT_FILE);
        let index = self.index_path();
        let present = |p: PathBuf| async move { tokio::fs::metadata(p).await.is_ok() };
        if present(layout_file.clone()).await
            && present(index.clone()).await
            && present(blobs.clone()).await
        {
            return Ok(());
        }
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(io_err(&blobs))?;
        // Under the index lock, so that two tasks creating the layout at once
        // cannot have one replace an index.json the other already tagged into.
        let _guard = self.lock_index().await?;
        if !present(layout_file.clone()).await {
            write_atomic(&layout_file, OCI_LAYOUT_CONTENT).await?;
        }
        if !present(index.clone()).await {
            let empty = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
            write_atomic(&index, empty.to_string().as_bytes()).await?;
        }
        Ok(())
    }

    /// `index.json` as a JSON object; `None` when the layout (or its index)
    /// does not exist. Kept as a generic value so that a rewrite preserves
    /// fields and entries this code does not know about.
    pub(super) async fn read_index(&self) -> Result<Option<Map<String, Value>>> {
        let path = self.index_path();
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        // read at most one byte past the cap, whatever the file claims
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(file, MAX_INDEX_JSON + 1),
            &mut bytes,
        )
        .await
        .map_err(io_err(&path))?;
        if bytes.len() as u64 > MAX_INDEX_JSON {
            return Err(self.protocol(format!(
                "{}: larger than {} MiB; not an index.json this tool reads",
                path.display(),
                MAX_INDEX_JSON / (1024 * 1024)
            )));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(_) => Err(self.protocol(format!("{}: not a JSON object", path.display()))),
            Err(e) => Err(self.protocol(format!("{}: invalid JSON: {e}", path.display()))),
        }
    }

    pub(super) async fn write_index(&self, index: &Map<String, Value>) -> Result<()> {
        let bytes = serde_json::to_vec(index).expect("a JSON value always serializes");
        write_atomic(&self.index_path(), &bytes).await
    }

    /// The `index.json` entry for `tag`. Two entries naming the tag with
    /// different digests (a foreign writer's) refuse the tag: neither is
    /// more right than the other.
    pub(super) async fn find_tag(&self, tag: &str) -> Result<Option<Value>> {
        let Some(index) = self.read_index().await? else {
            return Ok(None);
        };
        let mut named = manifests(&index)
            .iter()
            .filter(|e| entry_tag(e) == Some(tag));
        let Some(first) = named.next() else {
            return Ok(None);
        };
        if let Some(other) = named.find(|e| entry_digest(e) != entry_digest(first)) {
            return Err(self.protocol(format!(
                "index.json names tag {tag} twice, for {} and {}; the tag is refused (remove \
                 one of the entries)",
                entry_digest(first).unwrap_or("no digest"),
                entry_digest(other).unwrap_or("no digest"),
            )));
        }
        Ok(Some(first.clone()))
    }

    /// An index entry as a head; the media type may be empty when the entry
    /// omits it.
    pub(super) fn entry_head(&self, entry: &Value, tag: &str) -> Result<ManifestHead> {
        let digest = entry_digest(entry)
            .ok_or_else(|| self.protocol(format!("index.json entry for tag {tag} has no digest")))
            .and_then(|d| {
                Digest::parse(d)
                    .map_err(|e| self.protocol(format!("index.json entry for tag {tag}: {e}")))
            })?;
        let size = entry
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.protocol(format!("index.json entry for tag {tag} has no size")))?;
        let media_type = entry
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(ManifestHead {
            digest,
            media_type,
            size,
        })
    }

    /// Points `tag` at a manifest whose blob is already stored: one entry
    /// per tag, under the index lock. The layout must exist.
    pub(super) async fn set_tag(
        &self,
        tag: &str,
        media_type: &str,
        digest: &Digest,
        size: usize,
    ) -> Result<()> {
        let entry = json!({
            "mediaType": media_type,
            "digest": digest.as_str(),
            "size": size,
            "annotations": { REF_NAME: tag },
        });
        let _guard = self.lock_index().await?;
        let mut index = self.read_index().await?.unwrap_or_default();
        replace_tag(manifests_mut(&mut index), tag, entry);
        index
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        self.write_index(&index).await?;
        tracing::debug!(layout = %self.root.display(), tag, digest = %digest, "tagged");
        Ok(())
    }

    /// Drops every entry that points at `d`; whether there was one. No
    /// index (no layout) means nothing to drop.
    pub(super) async fn untag_digest(&self, d: &Digest) -> Result<bool> {
        let _guard = self.lock_index().await?;
        let Some(mut index) = self.read_index().await? else {
            return Ok(false);
        };
        let list = manifests_mut(&mut index);
        let before = list.len();
        list.retain(|e| entry_digest(e) != Some(d.as_str()));
        let changed = list.len() != before;
        if changed {
            self.write_index(&index).await?;
        }
        Ok(changed)
    }

    pub async fn list_tags(&self) -> Result<Vec<String>> {
        Ok(self.tag_listing().await?.unwrap_or_default())
    }

    /// Every tag; `None` when the directory holds no layout (no `index.json`).
    pub async fn tag_listing(&self) -> Result<Option<Vec<String>>> {
        let Some(index) = self.read_index().await? else {
            return Ok(None);
        };
        let mut tags: Vec<String> = Vec::new();
        for tag in manifests(&index).iter().filter_map(entry_tag) {
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_string());
            }
        }
        Ok(Some(tags))
    }
}
