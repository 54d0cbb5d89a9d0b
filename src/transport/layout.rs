//! An OCI image-layout directory as a repository.
//!
//! One directory is one repository: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`. Manifests and blobs share `blobs/`; a tag is an entry
//! of `index.json` whose `org.opencontainers.image.ref.name` annotation is the
//! tag. Layouts written by skopeo (`oci:DIR:TAG`) and umoci store the bare tag
//! there too, so the annotation is taken as the tag as is.
//!
//! Crash safety: every file is written under a temporary name in its final
//! directory, fsynced, then renamed into place, so a reader (or a later run)
//! sees either the old or the new complete file, never a partial one. That is
//! also why [`LayoutRepo::blob_exists`] can trust a file's presence.
//!
//! Concurrency: tasks of one process may write the same layout at once. Blob
//! writes need no coordination (unique temporary names, identical content under
//! one final name); the read-modify-write of `index.json` is serialized by an
//! async lock keyed by the layout's canonical path. Two *processes* writing the
//! same layout at once are not supported: the lock is process-local, and one
//! process's index update could silently drop the other's.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use super::{ManifestHead, Result, TransportError};
use crate::oci::{ByteStream, Digest, Manifest, OCI_INDEX, RawManifest};
use crate::reference::Location;

#[cfg(test)]
mod tests;

/// The annotation that names a tag in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";
/// Read/write buffer for blob streams: large enough that the per-operation
/// cost of tokio's blocking-pool file I/O is negligible, small enough to keep
/// many parallel copies cheap.
const IO_BUFFER: usize = 256 * 1024;
/// Anything bigger than this is not treated as a manifest. Registries refuse
/// manifests over 4 MiB; the margin only guards against reading a multi-GB
/// layer into memory when someone asks for a layer's digest as a manifest.
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

/// Unique suffix for temporary files, so that concurrent writers of the same
/// blob or of `index.json` never share a temporary file.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

type LockMap = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
/// One async lock per layout (canonical path), guarding `index.json` updates.
/// Entries are never removed: a process touches a bounded set of layouts.
static INDEX_LOCKS: LazyLock<LockMap> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn temp_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TransportError + '_ {
    move |source| TransportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_absent(e: &io::Error) -> bool {
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
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }
    fn disarm(&mut self) {
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
async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory,
/// fsync, rename.
async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// The tag an `index.json` entry carries, if any.
fn entry_tag(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

fn entry_digest(entry: &Value) -> Option<&str> {
    entry.get("digest")?.as_str()
}

/// The `mediaType` a manifest's bytes declare, or infer (an image manifest
/// or an index), or `None` when the bytes are not a manifest at all.
fn manifest_media_type(declared: &str, bytes: &[u8]) -> Option<String> {
    match Manifest::parse(declared, bytes) {
        Ok((mt, _)) => Some(mt),
        // Not something the copy engine understands (e.g. an old artifact
        // manifest), but still JSON with a media type: report it as stored.
        Err(_) => serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .or_else(|| (!declared.is_empty()).then(|| declared.to_string())),
    }
}

/// A tag or a digest, as callers pass it.
enum Ref<'a> {
    Tag(&'a str),
    Digest(Digest),
}

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

#[derive(Clone, Debug)]
pub struct LayoutRepo {
    location: Location,
    root: PathBuf,
    read_only: bool,
}

impl LayoutRepo {
    pub fn new(root: &Path, read_only: bool) -> Self {
        LayoutRepo {
            location: Location::Layout {
                path: root.to_path_buf(),
            },
            root: root.to_path_buf(),
            read_only,
        }
    }
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }
    fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    fn protocol(&self, detail: impl Into<String>) -> TransportError {
        TransportError::Protocol {
            location: self.location.to_string(),
            detail: detail.into(),
        }
    }
    fn integrity(&self, what: impl Into<String>, detail: impl Into<String>) -> TransportError {
        TransportError::Integrity {
            location: self.location.to_string(),
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Refuses a write in a read-only run, before anything touches the disk.
    fn check_writable(&self, method: &str, path: impl Into<String>) -> Result<()> {
        if self.read_only {
            return Err(TransportError::ReadOnly {
                registry: self.root.display().to_string(),
                method: method.to_string(),
                path: path.into(),
            });
        }
        Ok(())
    }

    fn parse_ref<'a>(&self, reference: &'a str) -> Result<Ref<'a>> {
        // A tag can never contain ':', so any colon means a digest.
        if reference.contains(':') {
            Digest::parse(reference)
                .map(Ref::Digest)
                .map_err(|e| self.protocol(e.to_string()))
        } else if reference.is_empty() {
            Err(self.protocol("empty tag"))
        } else {
            Ok(Ref::Tag(reference))
        }
    }

    /// The process-wide lock for this layout's `index.json`. The directory
    /// must exist: the key is its canonical path, so that `dir`, `./dir` and
    /// a symlink to it share one lock.
    async fn lock_index(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
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
    async fn ensure_layout(&self) -> Result<()> {
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
    async fn read_index(&self) -> Result<Option<Map<String, Value>>> {
        let path = self.index_path();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(_) => Err(self.protocol(format!("{}: not a JSON object", path.display()))),
            Err(e) => Err(self.protocol(format!("{}: invalid JSON: {e}", path.display()))),
        }
    }

    async fn write_index(&self, index: &Map<String, Value>) -> Result<()> {
        let bytes = serde_json::to_vec(index).expect("a JSON value always serializes");
        write_atomic(&self.index_path(), &bytes).await
    }

    /// The `index.json` entry for `tag` (the first, should a foreign writer
    /// have left duplicates).
    async fn find_tag(&self, tag: &str) -> Result<Option<Value>> {
        let Some(index) = self.read_index().await? else {
            return Ok(None);
        };
        Ok(manifests(&index)
            .iter()
            .find(|e| entry_tag(e) == Some(tag))
            .cloned())
    }

    /// An index entry as a head; the media type may be empty when the entry
    /// omits it.
    fn entry_head(&self, entry: &Value, tag: &str) -> Result<ManifestHead> {
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

    /// Reads a blob that should be a manifest; `None` when the file is
    /// missing. Files too big to be a manifest are refused without reading.
    async fn read_manifest_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(d);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if meta.len() > MAX_MANIFEST {
            return Err(self.protocol(format!(
                "{d} is {} bytes, too big to be a manifest",
                meta.len()
            )));
        }
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
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

    pub async fn resolve(&self, reference: &str) -> Result<Option<ManifestHead>> {
        match self.parse_ref(reference)? {
            Ref::Tag(tag) => {
                let Some(entry) = self.find_tag(tag).await? else {
                    return Ok(None);
                };
                let mut head = self.entry_head(&entry, tag)?;
                if head.media_type.is_empty() {
                    // The descriptor should carry it; when a foreign writer
                    // left it out, the manifest itself says (or implies) it.
                    let bytes = self
                        .read_manifest_blob(&head.digest)
                        .await?
                        .ok_or_else(|| self.dangling(tag, &head.digest))?;
                    head.media_type = manifest_media_type("", &bytes).unwrap_or_default();
                }
                Ok(Some(head))
            }
            Ref::Digest(d) => {
                let path = self.blob_path(&d);
                let size = match tokio::fs::metadata(&path).await {
                    Ok(m) if m.is_file() => m.len(),
                    Ok(_) => return Ok(None),
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(io_err(&path)(e)),
                };
                if size > MAX_MANIFEST {
                    // A layer, not a manifest.
                    return Ok(None);
                }
                let Some(bytes) = self.read_manifest_blob(&d).await? else {
                    return Ok(None);
                };
                // A blob that is not a manifest (a config, a small layer) is
                // not something a manifest lookup finds.
                Ok(
                    manifest_media_type("", &bytes).map(|media_type| ManifestHead {
                        digest: d,
                        media_type,
                        size,
                    }),
                )
            }
        }
    }

    fn dangling(&self, tag: &str, d: &Digest) -> TransportError {
        TransportError::NotFound {
            location: self.location.to_string(),
            what: format!("manifest {d} (tagged {tag} in index.json, but its blob is missing)"),
        }
    }

    pub async fn get_manifest(&self, reference: &str) -> Result<Option<RawManifest>> {
        let (expected, declared, bytes) = match self.parse_ref(reference)? {
            Ref::Tag(tag) => {
                let Some(entry) = self.find_tag(tag).await? else {
                    return Ok(None);
                };
                let head = self.entry_head(&entry, tag)?;
                let bytes = self
                    .read_manifest_blob(&head.digest)
                    .await?
                    .ok_or_else(|| self.dangling(tag, &head.digest))?;
                (head.digest, head.media_type, bytes)
            }
            Ref::Digest(d) => match self.read_manifest_blob(&d).await? {
                Some(bytes) => (d, String::new(), bytes),
                None => return Ok(None),
            },
        };
        let actual = Digest::of(&bytes);
        if actual != expected {
            return Err(self.integrity(
                format!("manifest {expected}"),
                format!(
                    "{} holds content with digest {actual}",
                    self.blob_path(&expected).display()
                ),
            ));
        }
        let media_type = manifest_media_type(&declared, &bytes)
            .ok_or_else(|| self.protocol(format!("{expected} is not a manifest")))?;
        Ok(Some(RawManifest {
            media_type,
            digest: actual,
            bytes: bytes.into(),
        }))
    }

    pub async fn put_manifest(&self, reference: &str, m: &RawManifest) -> Result<()> {
        let target = self.parse_ref(reference)?;
        let what = match &target {
            Ref::Tag(t) => format!("{INDEX_FILE} (tag {t})"),
            Ref::Digest(d) => format!("blobs/sha256/{}", d.hex()),
        };
        self.check_writable("write", what)?;
        let actual = Digest::of(&m.bytes);
        if actual != m.digest {
            return Err(self.integrity(
                format!("manifest {}", m.digest),
                format!("its bytes have digest {actual}"),
            ));
        }
        if let Ref::Digest(d) = &target {
            if *d != m.digest {
                return Err(self.integrity(
                    format!("manifest {}", m.digest),
                    format!("stored under a different digest, {d}"),
                ));
            }
        }
        self.ensure_layout().await?;
        let blob = self.blob_path(&m.digest);
        // Same digest, same bytes: an existing file (only ever renamed into
        // place complete) need not be rewritten.
        if tokio::fs::metadata(&blob).await.is_err() {
            write_atomic(&blob, &m.bytes).await?;
        }
        let Ref::Tag(tag) = target else {
            return Ok(());
        };
        let media_type = if m.media_type.is_empty() {
            manifest_media_type("", &m.bytes).unwrap_or_default()
        } else {
            m.media_type.clone()
        };
        let entry = json!({
            "mediaType": media_type,
            "digest": m.digest.as_str(),
            "size": m.bytes.len(),
            "annotations": { REF_NAME: tag },
        });
        let _guard = self.lock_index().await?;
        let mut index = self.read_index().await?.unwrap_or_default();
        let list = manifests_mut(&mut index);
        // Replace in place (keeps the order of tags stable across updates);
        // drop any further entries with the same tag.
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
        index
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        self.write_index(&index).await?;
        tracing::debug!(layout = %self.root.display(), tag, digest = %m.digest, "tagged");
        Ok(())
    }

    pub async fn blob_exists(&self, d: &Digest) -> Result<bool> {
        let path = self.blob_path(d);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub async fn get_blob(&self, d: &Digest, _size: u64) -> Result<ByteStream> {
        let path = self.blob_path(d);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => {
                return Err(TransportError::NotFound {
                    location: self.location.to_string(),
                    what: format!("blob {d}"),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Read errors name the file: the consumer only sees an io::Error.
        let stream = ReaderStream::with_capacity(file, IO_BUFFER).map(move |r| {
            r.map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
        });
        Ok(Box::pin(stream))
    }

    pub async fn put_blob(&self, d: &Digest, size: u64, mut data: ByteStream) -> Result<()> {
        self.check_writable("write", format!("blobs/sha256/{}", d.hex()))?;
        let path = self.blob_path(d);
        if self.blob_exists(d).await? {
            return Ok(());
        }
        self.ensure_layout().await?;
        let dir = self.blobs_dir();
        let mut tmp = TempFile::new(dir.join(format!(".tmp-{}-{}", d.hex(), temp_suffix())));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)
            .await
            .map_err(io_err(&tmp.path))?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut seen: u64 = 0;
        // On every early return below, `tmp` is dropped armed and removes the
        // partial file.
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| TransportError::Io {
                path: path.clone(),
                source: io::Error::new(e.kind(), format!("source of blob {d} failed: {e}")),
            })?;
            seen += chunk.len() as u64;
            if seen > size {
                return Err(self.integrity(
                    format!("blob {d}"),
                    format!("more than the expected {size} bytes"),
                ));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io_err(&tmp.path))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != d.as_str() {
            return Err(self.integrity(
                format!("blob {d}"),
                format!("received content has digest {actual}"),
            ));
        }
        if seen != size {
            return Err(self.integrity(
                format!("blob {d}"),
                format!("received {seen} bytes, expected {size}"),
            ));
        }
        out.flush().await.map_err(io_err(&tmp.path))?;
        let file = out.into_inner();
        file.sync_all().await.map_err(io_err(&tmp.path))?;
        drop(file);
        tokio::fs::rename(&tmp.path, &path)
            .await
            .map_err(io_err(&path))?;
        tmp.disarm();
        sync_dir(&dir).await;
        Ok(())
    }

    pub async fn mount_blob(&self, d: &Digest, from: &Location) -> Result<bool> {
        self.check_writable("link", format!("blobs/sha256/{}", d.hex()))?;
        let Location::Layout { path: from_root } = from else {
            return Ok(false);
        };
        let source = LayoutRepo::new(from_root, true);
        let src_path = source.blob_path(d);
        let src_size = match tokio::fs::metadata(&src_path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(false),
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(io_err(&src_path)(e)),
        };
        if self.blob_exists(d).await? {
            return Ok(true);
        }
        self.ensure_layout().await?;
        let dest = self.blob_path(d);
        // The source file is complete (only ever renamed into place), so a
        // link straight to the final name is as atomic as a rename.
        match tokio::fs::hard_link(&src_path, &dest).await {
            Ok(()) => {
                sync_dir(&self.blobs_dir()).await;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) => {
                // Another filesystem, or one without hard links: copy, and
                // verify on the way since the bytes pass through anyway.
                tracing::debug!(from = %src_path.display(), to = %dest.display(), error = %e, "hard link failed, copying");
                let stream = source.get_blob(d, src_size).await?;
                self.put_blob(d, src_size, stream).await?;
                Ok(true)
            }
        }
    }

    /// Removes every tag of `d` and its blob. Blobs that only `d` referenced
    /// (config, layers, children) stay: there is no garbage collection.
    pub async fn delete_manifest(&self, d: &Digest) -> Result<()> {
        self.check_writable("delete", format!("blobs/sha256/{}", d.hex()))?;
        let missing = || TransportError::NotFound {
            location: self.location.to_string(),
            what: format!("manifest {d}"),
        };
        if tokio::fs::metadata(&self.root).await.is_err() {
            return Err(missing());
        }
        let untagged = {
            let _guard = self.lock_index().await?;
            match self.read_index().await? {
                Some(mut index) => {
                    let list = manifests_mut(&mut index);
                    let before = list.len();
                    list.retain(|e| entry_digest(e) != Some(d.as_str()));
                    let changed = list.len() != before;
                    if changed {
                        self.write_index(&index).await?;
                    }
                    changed
                }
                None => false,
            }
        };
        // The index goes first: a crash in between leaves an unreferenced
        // blob, never a tag pointing at nothing.
        let path = self.blob_path(d);
        let removed = match tokio::fs::remove_file(&path).await {
            Ok(()) => true,
            Err(e) if is_absent(&e) => false,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if !untagged && !removed {
            return Err(missing());
        }
        Ok(())
    }
}

/// The `manifests` array of an index (empty when absent or malformed).
fn manifests(index: &Map<String, Value>) -> &[Value] {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The `manifests` array of an index, created when absent or not an array.
fn manifests_mut(index: &mut Map<String, Value>) -> &mut Vec<Value> {
    let slot = index
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("made an array above")
}
