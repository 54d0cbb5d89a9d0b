//! Manifests: stored as blobs, found by digest or through a tag in
//! `index.json`, checked against their digest on every read and write.

use serde_json::Value;

use super::super::{ManifestHead, Result, TransportError};
use super::LayoutRepo;
use super::atomic::{io_err, is_absent, write_atomic};
use super::index::INDEX_FILE;
use crate::oci::{Digest, Manifest, RawManifest};
use crate::reference::check_tag;

/// Anything bigger than this is not treated as a manifest. Registries refuse
/// manifests over 4 MiB; the margin only guards against reading a multi-GB
/// layer into memory when someone asks for a layer's digest as a manifest.
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

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

impl LayoutRepo {
    /// A digest, or a tag of the distribution grammar (anything else is refused).
    fn parse_ref<'a>(&self, reference: &'a str) -> Result<Ref<'a>> {
        // A tag can never contain ':', so any colon means a digest.
        if reference.contains(':') {
            Digest::parse(reference)
                .map(Ref::Digest)
                .map_err(|e| self.protocol(e.to_string()))
        } else if let Err(e) = check_tag(reference) {
            // index.json never receives (nor serves) a name the grammar refuses
            Err(self.protocol(e.to_string()))
        } else {
            Ok(Ref::Tag(reference))
        }
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
                if bytes.len() as u64 != head.size {
                    return Err(self.integrity(
                        format!("manifest {}", head.digest),
                        format!(
                            "{} bytes, but its index.json descriptor (tag {tag}) says {}",
                            bytes.len(),
                            head.size
                        ),
                    ));
                }
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
        self.set_tag(tag, &media_type, &m.digest, m.bytes.len())
            .await?;
        self.list_fallback_entries(tag, m).await
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
        let untagged = self.untag_digest(d).await?;
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
