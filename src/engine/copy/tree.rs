//! Reading a manifest tree from the source: platform filtering of an index
//! and the list of blobs to copy.

use std::collections::HashSet;

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
}

impl ImageTree {
    pub fn total_blob_bytes(&self) -> u64 {
        // sizes come from the source: summed without overflow
        self.blobs
            .iter()
            .fold(0u64, |t, b| t.saturating_add(b.size))
    }
}

/// Keeps an index's bytes when every platform is kept; otherwise writes a new
/// index that lists only the wanted platforms (its digest changes). Returns
/// `None` when no child matches.
pub fn filter_index(
    raw: &RawManifest,
    platforms: &[Platform],
) -> Result<Option<RawManifest>, String> {
    if platforms.is_empty() || !is_index(&raw.media_type) {
        return Ok(Some(raw.clone()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&raw.bytes).map_err(|e| e.to_string())?;
    let Some(list) = value.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return Err("index without a manifests list".into());
    };
    let before = list.len();
    let wanted = |entry: &serde_json::Value| {
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
    if list.is_empty() || kept.is_empty() {
        return Ok(None);
    }
    if list.len() == before {
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

/// Fetches the children of `root` (when it is an index), a few at a time,
/// and lists the blobs of every image manifest in the tree. `root` must
/// already be filtered by platform (see [`filter_index`]).
pub async fn expand(source: &Store, root: RawManifest) -> Result<ImageTree, CopyError> {
    let bad = |digest: &Digest, reason: String| CopyError::BadManifest {
        location: source.location().to_string(),
        digest: digest.clone(),
        reason,
    };
    let (_, parsed) = Manifest::parse(&root.media_type, &root.bytes)
        .map_err(|e| bad(&root.digest, e.to_string()))?;
    let mut children = Vec::new();
    let mut blobs = Blobs::default();
    match &parsed {
        Manifest::Image { .. } => blobs.add(&parsed),
        Manifest::Index { manifests, .. } => {
            let mut held = root.bytes.len();
            let mut fetches = futures_util::stream::iter(manifests)
                .map(|desc| fetch_child(source, desc))
                .buffered(CHILDREN_IN_PARALLEL);
            while let Some(result) = fetches.next().await {
                let (child, m) = result?;
                held += child.bytes.len();
                if held > MAX_TREE_BYTES {
                    return Err(bad(
                        &root.digest,
                        format!(
                            "its child manifests add up to more than {} MiB (the index lists \
                             {}); refused as a hostile or broken image",
                            MAX_TREE_BYTES >> 20,
                            manifests.len()
                        ),
                    ));
                }
                blobs.add(&m);
                children.push(child);
            }
        }
    }
    Ok(ImageTree {
        root,
        children,
        blobs: blobs.list,
    })
}

/// One child of an index, checked against its descriptor and parsed.
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
    let child = source
        .get_manifest(desc.digest.as_str())
        .await?
        .ok_or_else(|| bad("listed by the index but absent at the source".into()))?;
    if child.bytes.len() as u64 != desc.size {
        return Err(bad(format!(
            "size {} differs from the index's {}",
            child.bytes.len(),
            desc.size
        )));
    }
    let (_, m) =
        Manifest::parse(&child.media_type, &child.bytes).map_err(|e| bad(e.to_string()))?;
    if matches!(m, Manifest::Index { .. }) {
        return Err(bad("nested indexes are not supported".into()));
    }
    Ok((child, m))
}

/// The unique blobs of a tree's image manifests, in first-seen order.
#[derive(Default)]
struct Blobs {
    seen: HashSet<Digest>,
    list: Vec<Descriptor>,
}

impl Blobs {
    fn add(&mut self, image: &Manifest) {
        for blob in image.blobs() {
            if self.seen.insert(blob.digest.clone()) {
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
