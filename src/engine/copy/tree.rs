//! Reading a manifest tree from the source: platform filtering of an index
//! and the list of blobs to copy.

use std::collections::HashSet;

use bytes::Bytes;

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
        self.blobs.iter().map(|b| b.size).sum()
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
    list.retain(|entry| {
        let platform: Option<Platform> = entry
            .get("platform")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        platform.is_some_and(|p| platforms.iter().any(|want| p.matches(want)))
    });
    if list.is_empty() {
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

/// Fetches the children of `root` (when it is an index) and lists the blobs
/// of every image manifest in the tree. `root` must already be filtered by
/// platform (see [`filter_index`]).
pub async fn expand(source: &Store, root: RawManifest) -> Result<ImageTree, CopyError> {
    let bad = |digest: &Digest, reason: String| CopyError::BadManifest {
        location: source.location().to_string(),
        digest: digest.clone(),
        reason,
    };
    let (_, parsed) = Manifest::parse(&root.media_type, &root.bytes)
        .map_err(|e| bad(&root.digest, e.to_string()))?;
    let mut children = Vec::new();
    let mut images = Vec::new();
    match &parsed {
        Manifest::Image { .. } => images.push(parsed.clone()),
        Manifest::Index { manifests, .. } => {
            let fetches = manifests.iter().map(|desc| async move {
                let child = source
                    .get_manifest(desc.digest.as_str())
                    .await?
                    .ok_or_else(|| {
                        bad(
                            &desc.digest,
                            "listed by the index but absent at the source".into(),
                        )
                    })?;
                if child.bytes.len() as u64 != desc.size {
                    return Err(bad(
                        &desc.digest,
                        format!(
                            "size {} differs from the index's {}",
                            child.bytes.len(),
                            desc.size
                        ),
                    ));
                }
                let (_, m) = Manifest::parse(&child.media_type, &child.bytes)
                    .map_err(|e| bad(&desc.digest, e.to_string()))?;
                if matches!(m, Manifest::Index { .. }) {
                    return Err(bad(&desc.digest, "nested indexes are not supported".into()));
                }
                Ok::<_, CopyError>((child, m))
            });
            for result in futures_util::future::join_all(fetches).await {
                let (child, m) = result?;
                children.push(child);
                images.push(m);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    for image in &images {
        for blob in image.blobs() {
            if seen.insert(blob.digest.clone()) {
                blobs.push(blob.clone());
            }
        }
    }
    Ok(ImageTree {
        root,
        children,
        blobs,
    })
}
