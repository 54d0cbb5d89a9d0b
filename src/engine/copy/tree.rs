//! Reading a manifest tree from the source: platform filtering of an index
//! and the list of blobs to copy.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::StreamExt;

use super::CopyError;
use crate::oci::{Descriptor, Digest, Manifest, Platform, RawManifest, is_index};
use crate::transport::Store;

/// The whole tree under a root manifest, as fetched from the source.
#[derive(Debug, Clone)]
pub struct ImageTree {
    pub root: RawManifest,
    /// Child manifests of an index (already filtered by platform), in order.
    pub children: Vec<RawManifest>,
    /// Unique blobs of every image manifest in the tree.
    pub blobs: Vec<Descriptor>,
    /// Non-distributable layers the manifests list (not in `blobs`: not
    /// copied unless the rule asks, see [`ImageTree::take_foreign`]).
    pub foreign: Vec<Descriptor>,
    /// Pushed by digest as a top-level manifest (an untagged entry point,
    /// a referrer): the descriptor an `oci:` target lists it under in
    /// `index.json`, without a ref name.
    pub entry: Option<serde_json::Value>,
    /// Blobs of `blobs` whose bytes verification read and checked: sent
    /// from memory instead of read from the source again (`held.rs`).
    pub held: super::HeldBlobs,
}

impl ImageTree {
    /// Moves the foreign layers the source holds into the blobs to copy
    /// (the rule's `foreign_layers`); the others stay referenced only.
    /// Their `urls` are never fetched.
    pub async fn take_foreign(&mut self, source: &Store) -> Result<(), CopyError> {
        for blob in std::mem::take(&mut self.foreign) {
            if source.blob_exists(&blob.digest).await? {
                self.blobs.push(blob);
            } else {
                tracing::info!(digest = %blob.digest, "foreign layer not at the source; left referenced only");
                self.foreign.push(blob);
            }
        }
        Ok(())
    }

    pub fn total_blob_bytes(&self) -> u64 {
        // sizes come from the source: summed without overflow
        self.blobs
            .iter()
            .fold(0u64, |t, b| t.saturating_add(b.size))
    }
}

/// Keeps an index's bytes when every platform is kept; otherwise writes a new
/// index that lists only the wanted platforms (its digest changes). Returns
/// `None` when no child matches. An entry that is an index itself is kept
/// as `nested` says: its filtered form (digest and size replaced when they
/// changed), or dropped (`None`, or absent from `nested`).
pub fn filter_index(
    raw: &RawManifest,
    platforms: &[Platform],
) -> Result<Option<RawManifest>, String> {
    filter_index_with(raw, platforms, &HashMap::new())
}

pub(crate) fn filter_index_with(
    raw: &RawManifest,
    platforms: &[Platform],
    nested: &HashMap<Digest, Option<RawManifest>>,
) -> Result<Option<RawManifest>, String> {
    if platforms.is_empty() || !is_index(&raw.media_type) {
        return Ok(Some(raw.clone()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&raw.bytes).map_err(|e| e.to_string())?;
    let Some(list) = value.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return Err("index without a manifests list".into());
    };
    let before: Vec<serde_json::Value> = list.clone();
    let nested_of = |entry: &serde_json::Value| {
        let d = Digest::parse(entry.get("digest")?.as_str()?).ok()?;
        nested.get(&d).map(|m| m.as_ref())
    };
    let wanted = |entry: &serde_json::Value| {
        if let Some(inner) = nested_of(entry) {
            return inner.is_some();
        }
        let platform: Option<Platform> = entry
            .get("platform")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        platform.is_some_and(|p| platforms.iter().any(|want| p.matches(want)))
    };
    // buildx attestation manifests (platform unknown/unknown) follow the
    // image they describe: kept with a kept platform, dropped with it.
    let kept: HashSet<String> = list
        .iter()
        .filter(|e| wanted(e))
        .filter_map(|e| e.get("digest")?.as_str().map(str::to_string))
        .collect();
    list.retain(|entry| match attestation_of(entry) {
        Some(d) => kept.contains(d),
        None => wanted(entry),
    });
    for entry in list.iter_mut() {
        if let Some(Some(inner)) = nested_of(entry) {
            entry["digest"] = inner.digest.as_str().into();
            entry["size"] = inner.bytes.len().into();
        }
    }
    if list.is_empty() || kept.is_empty() {
        return Ok(None);
    }
    if *list == before {
        return Ok(Some(raw.clone()));
    }
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    Ok(Some(RawManifest {
        media_type: raw.media_type.clone(),
        digest: Digest::of(&bytes),
        bytes,
    }))
}

/// The image a buildx attestation manifest describes
/// (`vnd.docker.reference.type = attestation-manifest`).
fn attestation_of(entry: &serde_json::Value) -> Option<&str> {
    let a = entry.get("annotations")?;
    (a.get("vnd.docker.reference.type")?.as_str()? == "attestation-manifest")
        .then(|| a.get("vnd.docker.reference.digest")?.as_str())
        .flatten()
}

/// Child manifests of an index fetched at once.
const CHILDREN_IN_PARALLEL: usize = 4;
/// Most bytes of manifests one tree may hold (root and children). The tree
/// is held until its copy ends (children are pushed after the blobs), so
/// this is what bounds its memory: real indexes are a few KiB per platform;
/// a source that lists more is refused, not followed.
pub(crate) const MAX_TREE_BYTES: usize = 32 * 1024 * 1024;

/// Fetches the manifests under `root` (when it is an index: its children,
/// and theirs when a child is an index itself, each digest once), a few at a
/// time, and lists the blobs of every image manifest in the tree. Children
/// come out in push order (an index after everything it lists). `root` must
/// already be filtered by platform (see [`super::nested::filter_tree`]).
/// Every manifest is pushed with the media type its body declares (or its
/// shape implies), whatever the descriptor or registry said; every blob a
/// layout source holds is checked against its descriptor's size here,
/// before anything is written.
pub async fn expand(source: &Store, mut root: RawManifest) -> Result<ImageTree, CopyError> {
    let bad = |digest: &Digest, reason: String| CopyError::BadManifest {
        location: source.location().to_string(),
        digest: digest.clone(),
        reason,
    };
    let (media, parsed) = Manifest::parse(&root.media_type, &root.bytes)
        .map_err(|e| bad(&root.digest, e.to_string()))?;
    root.media_type = media;
    let mut walk = Walk {
        source,
        root: root.digest.clone(),
        held: root.bytes.len(),
        seen: HashSet::from([root.digest.clone()]),
        children: Vec::new(),
        blobs: Blobs::default(),
    };
    match &parsed {
        Manifest::Image { .. } => walk.blobs.add(&parsed),
        Manifest::Index { manifests, .. } => {
            walk.descend(manifests, vec![root.digest.clone()]).await?
        }
    }
    check_local_sizes(source, &walk.blobs.list).await?;
    Ok(ImageTree {
        root,
        children: walk.children,
        blobs: walk.blobs.list,
        foreign: walk.blobs.foreign,
        entry: None,
        held: Default::default(),
    })
}

/// The walk of one tree: what it holds so far.
struct Walk<'a> {
    source: &'a Store,
    root: Digest,
    held: usize,
    seen: HashSet<Digest>,
    children: Vec<RawManifest>,
    blobs: Blobs,
}

impl Walk<'_> {
    /// The children listed by the index at the end of `path` (root first),
    /// recursively: nested indexes at most [`MAX_DEPTH`] deep; an index
    /// listed again on its own path (a cycle) fails the tree.
    fn descend<'s>(
        &'s mut self,
        manifests: &'s [Descriptor],
        path: Vec<Digest>,
    ) -> futures_util::future::BoxFuture<'s, Result<(), CopyError>> {
        Box::pin(async move {
            let parent = path.last().expect("a path holds its index").clone();
            let new: Vec<Descriptor> = manifests
                .iter()
                .filter(|d| {
                    if path.contains(&d.digest) {
                        return true; // reported below
                    }
                    self.seen.insert(d.digest.clone())
                })
                .cloned()
                .collect();
            if let Some(d) = new.iter().find(|d| path.contains(&d.digest)) {
                return Err(self.bad(format!(
                    "index {parent} lists {}, an index that contains it (a cycle); \
                     the image is refused",
                    d.digest
                )));
            }
            let source = self.source;
            let mut stream = futures_util::stream::iter(new)
                .map(move |desc| async move { fetch_child(source, &desc).await })
                .buffered(CHILDREN_IN_PARALLEL);
            // Counted as each arrives: a hostile index of huge children is
            // refused once they pass the bound, never held whole.
            let mut fetched = Vec::new();
            while let Some(result) = stream.next().await {
                let (child, m) = result?;
                self.held += child.bytes.len();
                if self.held > MAX_TREE_BYTES {
                    return Err(self.bad(format!(
                        "its manifests add up to more than {} MiB; refused as a hostile or \
                         broken image",
                        MAX_TREE_BYTES >> 20
                    )));
                }
                fetched.push((child, m));
            }
            drop(stream);
            for (child, m) in fetched {
                if let Manifest::Index { manifests, .. } = &m {
                    if path.len() >= MAX_DEPTH {
                        return Err(self.bad(format!(
                            "index {} is nested more than {MAX_DEPTH} levels deep; the image is \
                             refused",
                            child.digest
                        )));
                    }
                    let mut deeper = path.clone();
                    deeper.push(child.digest.clone());
                    self.descend(manifests, deeper).await?;
                }
                self.blobs.add(&m);
                self.children.push(child);
            }
            Ok(())
        })
    }

    fn bad(&self, reason: String) -> CopyError {
        CopyError::BadManifest {
            location: self.source.location().to_string(),
            digest: self.root.clone(),
            reason,
        }
    }
}

/// How deep indexes may nest (the root is level 1).
pub(crate) const MAX_DEPTH: usize = 8;

/// A blob of a layout source whose file is not the size its descriptor
/// says fails the tree before anything is written (a registry checks what
/// it receives; a layout's bytes may be linked or skipped unread).
async fn check_local_sizes(source: &Store, blobs: &[Descriptor]) -> Result<(), CopyError> {
    for blob in blobs {
        if let Some(size) = source.local_blob_size(&blob.digest).await? {
            if size != blob.size {
                return Err(CopyError::Blob {
                    location: source.location().to_string(),
                    digest: blob.digest.clone(),
                    reason: format!(
                        "the file has {size} bytes, its descriptor ({}) says {}; the image is not \
                         copied (fix the manifest that lists it)",
                        blob.media_type, blob.size
                    ),
                });
            }
        }
    }
    Ok(())
}

/// One child of an index, checked against its descriptor and parsed; its
/// media type is the one its body declares or implies.
async fn fetch_child(
    source: &Store,
    desc: &Descriptor,
) -> Result<(RawManifest, Manifest), CopyError> {
    let bad = |reason: String| CopyError::BadManifest {
        location: source.location().to_string(),
        digest: desc.digest.clone(),
        reason,
    };
    if desc.size > MAX_TREE_BYTES as u64 {
        return Err(bad(format!("the index says it has {} bytes", desc.size)));
    }
    let found = match super::nested::derived(&desc.digest) {
        Some(m) => Some(m),
        None => source.get_manifest(desc.digest.as_str()).await?,
    };
    let mut child =
        found.ok_or_else(|| bad("listed by the index but absent at the source".into()))?;
    if child.bytes.len() as u64 != desc.size {
        return Err(bad(format!(
            "size {} differs from the index's descriptor ({} bytes)",
            child.bytes.len(),
            desc.size
        )));
    }
    let (media, m) =
        Manifest::parse(&child.media_type, &child.bytes).map_err(|e| bad(e.to_string()))?;
    child.media_type = media;
    Ok((child, m))
}

/// The unique blobs of a tree's image manifests, in first-seen order.
#[derive(Default)]
struct Blobs {
    seen: HashSet<Digest>,
    list: Vec<Descriptor>,
    foreign: Vec<Descriptor>,
}

impl Blobs {
    fn add(&mut self, image: &Manifest) {
        for blob in image.blobs() {
            if !self.seen.insert(blob.digest.clone()) {
                continue;
            }
            if crate::oci::is_foreign_layer(&blob.media_type) {
                self.foreign.push(blob.clone());
            } else {
                self.list.push(blob.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::OCI_INDEX;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// A buildx index: two platforms, each with its attestation manifest.
    fn buildx() -> RawManifest {
        let image = |c: char, arch: &str| {
            serde_json::json!({"mediaType": crate::oci::OCI_MANIFEST, "digest": d(c), "size": 1,
                "platform": {"os": "linux", "architecture": arch}})
        };
        let att = |c: char, of: char| {
            serde_json::json!({"mediaType": crate::oci::OCI_MANIFEST, "digest": d(c), "size": 1,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": d(of)}})
        };
        let v = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            image('a', "amd64"), image('b', "arm64"), att('c', 'a'), att('e', 'b')]});
        let bytes = Bytes::from(serde_json::to_vec(&v).unwrap());
        RawManifest {
            media_type: OCI_INDEX.into(),
            digest: Digest::of(&bytes),
            bytes,
        }
    }

    fn listed(raw: &RawManifest) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&raw.bytes).unwrap();
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["digest"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_platform_filter_keeps_the_attestations_of_kept_platforms_only() {
        let raw = buildx();
        let amd64 = [Platform::parse("linux/amd64").unwrap()];
        let out = filter_index(&raw, &amd64).unwrap().unwrap();
        assert_eq!(listed(&out), [d('a'), d('c')]);
        assert_ne!(out.digest, raw.digest);

        let both = [amd64[0].clone(), Platform::parse("linux/arm64").unwrap()];
        let out = filter_index(&raw, &both).unwrap().unwrap();
        assert_eq!(
            out.digest, raw.digest,
            "every platform kept: the index's own bytes"
        );

        let none = [Platform::parse("linux/s390x").unwrap()];
        assert!(filter_index(&raw, &none).unwrap().is_none());
    }
}
