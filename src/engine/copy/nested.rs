//! Indexes inside indexes (regclient, go-containerregistry and buildx write
//! them): the platform filter applied at every level. A nested index that
//! loses entries gets new bytes (and digest), so its parent is rewritten to
//! list it, up to the root; the rewritten indexes exist nowhere at the
//! source, so they are kept here by digest until the copy reads them
//! ([`derived`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use futures_util::future::BoxFuture;

use super::tree::{MAX_DEPTH, MAX_TREE_BYTES, filter_index_with};
use crate::oci::{Digest, Manifest, Platform, RawManifest, is_index};
use crate::transport::{Store, TransportError};

/// Indexes rewritten by the platform filter, by digest, and their bytes.
/// Content-addressed, so never stale; bounded in count and bytes (cleared
/// when full: a copy that then misses one fails that image, and the next
/// run derives it again).
static DERIVED: LazyLock<Mutex<(HashMap<Digest, RawManifest>, usize)>> =
    LazyLock::new(Mutex::default);
const MAX_DERIVED: usize = 4096;
const MAX_DERIVED_BYTES: usize = 64 * 1024 * 1024;

/// A rewritten index the platform filter made, if it made `digest`.
pub(crate) fn derived(digest: &Digest) -> Option<RawManifest> {
    DERIVED
        .lock()
        .expect("derived poisoned")
        .0
        .get(digest)
        .cloned()
}

fn remember(m: &RawManifest) {
    let mut guard = DERIVED.lock().expect("derived poisoned");
    let (map, bytes) = &mut *guard;
    if map.len() >= MAX_DERIVED || *bytes + m.bytes.len() > MAX_DERIVED_BYTES {
        map.clear();
        *bytes = 0;
    }
    *bytes += m.bytes.len();
    map.insert(m.digest.clone(), m.clone());
}

/// Why a tree cannot be filtered: the source failed, or its shape is refused.
#[derive(Debug)]
pub(crate) enum FilterError {
    Source(TransportError),
    Refused(String),
}

/// `raw` filtered by `platforms` at every level (see [`filter_index_with`]);
/// `None` when no platform of it matches. The indexes it lists are fetched
/// (images are not: their descriptors carry their platform).
/// Takes `raw` by value: with nothing to filter it comes back as it is,
/// never copied (a source's manifest may be 4 MiB).
pub(crate) async fn filter_tree(
    source: &Store,
    raw: RawManifest,
    platforms: &[Platform],
) -> Result<Option<RawManifest>, FilterError> {
    let held = AtomicUsize::new(raw.bytes.len());
    let original = raw.digest.clone();
    let path = vec![original.clone()];
    let out = filter_level(source, raw, platforms, path, &held).await?;
    if let Some(m) = &out {
        if m.digest != original {
            remember(m);
        }
    }
    Ok(out)
}

fn filter_level<'a>(
    source: &'a Store,
    raw: RawManifest,
    platforms: &'a [Platform],
    path: Vec<Digest>,
    held: &'a AtomicUsize,
) -> BoxFuture<'a, Result<Option<RawManifest>, FilterError>> {
    Box::pin(async move {
        if platforms.is_empty() || !is_index(&raw.media_type) {
            return Ok(Some(raw));
        }
        let entries = match Manifest::parse(&raw.media_type, &raw.bytes) {
            Ok((_, Manifest::Index { manifests, .. })) => manifests,
            Ok(_) => return Ok(Some(raw)),
            Err(e) => return Err(FilterError::Refused(e.to_string())),
        };
        let mut nested = HashMap::new();
        for entry in entries.iter().filter(|e| is_index(&e.media_type)) {
            let platform_off = entry
                .platform
                .as_ref()
                .is_some_and(|p| !platforms.iter().any(|w| p.matches(w)));
            if platform_off || nested.contains_key(&entry.digest) {
                nested.entry(entry.digest.clone()).or_insert(None);
                continue;
            }
            if path.contains(&entry.digest) {
                return Err(FilterError::Refused(format!(
                    "index {} lists {}, an index that contains it (a cycle)",
                    raw.digest, entry.digest
                )));
            }
            if path.len() >= MAX_DEPTH {
                return Err(FilterError::Refused(format!(
                    "index {} is nested more than {MAX_DEPTH} levels deep",
                    entry.digest
                )));
            }
            let inner = source
                .get_manifest(entry.digest.as_str())
                .await
                .map_err(FilterError::Source)?
                .ok_or_else(|| {
                    FilterError::Refused(format!(
                        "index {} lists {}, which the source does not have",
                        raw.digest, entry.digest
                    ))
                })?;
            let total = held.fetch_add(inner.bytes.len(), Ordering::Relaxed) + inner.bytes.len();
            if total > MAX_TREE_BYTES {
                return Err(FilterError::Refused(format!(
                    "its nested indexes add up to more than {} MiB; refused as a hostile or broken image",
                    MAX_TREE_BYTES >> 20
                )));
            }
            let mut deeper = path.clone();
            deeper.push(entry.digest.clone());
            let filtered = filter_level(source, inner, platforms, deeper, held).await?;
            if let Some(m) = filtered.as_ref().filter(|m| m.digest != entry.digest) {
                remember(m);
            }
            nested.insert(entry.digest.clone(), filtered);
        }
        filter_index_with(&raw, platforms, &nested).map_err(FilterError::Refused)
    })
}
