//! Manifest facts for one repository reading: what retention derives from a
//! manifest (media type, children, subject, `created`), taken from the state
//! when known and read from the registry (then kept) when not. A digest
//! names its content, so a kept fact cannot be wrong for it: a steady-state
//! run sends HEADs, not a GET per tag (a registry may count a manifest GET
//! as a pull). Anything doubtful (no fact, a row that does not parse, a
//! state error) means a GET, as without the cache. Writes go through the
//! run's state, which drops them in a dry run.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;

use super::error::ReadError;
use crate::oci::{Digest, Manifest, RawManifest, Verified, is_index};
use crate::retention::Child;
use crate::retention::{ManifestFacts, ManifestInfo, RetentionState, Unix};
use crate::transport::Store;

/// A manifest GOT is held for its `created` time only up to this size.
const HELD_MANIFEST_BYTES: usize = 64 * 1024;
/// Image configs larger than this are not read for their `created` time.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Facts no run used for this long are dropped from the state.
const FACTS_KEPT_FOR: Unix = 30 * 24 * 3600;

pub(super) struct FactReader<'a> {
    store: &'a Store,
    state: &'a dyn RetentionState,
    now: Unix,
    /// Digests whose kept facts this reading used (marked used at the end).
    used: Mutex<Vec<Digest>>,
    /// Manifests this reading GOT (when the policy needs `created` times),
    /// so a `created` time needs no second GET.
    fetched: Mutex<HashMap<Digest, RawManifest>>,
    hold_fetched: bool,
}

impl<'a> FactReader<'a> {
    /// `hold_fetched`: the reading will ask for `created` times. Facts are
    /// marked used at the wall clock (not the policy's `--now`).
    pub(super) fn new(store: &'a Store, state: &'a dyn RetentionState, hold_fetched: bool) -> Self {
        FactReader {
            store,
            state,
            now: crate::clock::now_unix(),
            used: Mutex::new(Vec::new()),
            fetched: Mutex::new(HashMap::new()),
            hold_fetched,
        }
    }

    /// The kept facts of `digest`, if any (a state error counts as none).
    fn known(&self, digest: &Digest) -> Option<ManifestFacts> {
        match self.state.manifest_facts(digest) {
            Ok(Some(f)) => {
                self.used.lock().unwrap().push(digest.clone());
                Some(f)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "manifest facts unavailable; reading the manifest");
                None
            }
        }
    }

    fn keep(&self, digest: &Digest, facts: &ManifestFacts) {
        if let Err(e) = self.state.record_manifest_facts(digest, facts, self.now) {
            tracing::warn!(%digest, error = %e, "cannot keep manifest facts; the next run reads the manifest again");
        }
    }

    /// The facts of a manifest known to be in the repository (its digest
    /// just came from a HEAD or a listing): kept, or one GET. `None` when
    /// the registry no longer has it.
    pub(super) async fn info_of_present(
        &self,
        digest: &Digest,
    ) -> Result<Option<ManifestInfo>, ReadError> {
        if let Some(f) = self.known(digest) {
            return Ok(Some(f.info));
        }
        self.fetch(digest).await
    }

    /// The digest of `tag` and its manifest's facts. When the digest the tag
    /// had at the last run (`last`) has kept facts, one HEAD confirms it;
    /// otherwise one GET by tag gives digest and facts at once (a HEAD then
    /// a GET would be two requests for what one answers). `None` when the
    /// tag is gone.
    pub(super) async fn info_of_tag(
        &self,
        tag: &str,
        last: Option<&Digest>,
    ) -> Result<Option<(Digest, ManifestInfo)>, ReadError> {
        if let Some(f) = last.and_then(|d| self.known(d)) {
            let Some(head) = self.store.resolve(tag).await? else {
                return Ok(None);
            };
            if Some(&head.digest) == last {
                return Ok(Some((head.digest, f.info)));
            }
            // moved since the last run
            let info = self.info_of_present(&head.digest).await?;
            return Ok(info.map(|i| (head.digest, i)));
        }
        let Some(raw) = self.store.get_manifest(tag).await? else {
            return Ok(None);
        };
        let digest = raw.digest.clone();
        Ok(Some((digest, self.learn(raw)?)))
    }

    /// The facts of a manifest that may be gone (untagged, referenced):
    /// with kept facts, a HEAD says whether it is still there; else one GET.
    pub(super) async fn info_if_present(
        &self,
        digest: &Digest,
    ) -> Result<Option<ManifestInfo>, ReadError> {
        let Some(f) = self.known(digest) else {
            return self.fetch(digest).await;
        };
        match self.store.resolve(digest.as_str()).await? {
            Some(head) if head.digest == *digest => Ok(Some(f.info)),
            Some(_) => Err(ReadError::Inconsistent(format!(
                "manifest {digest}: the registry answered for another digest"
            ))),
            None => Ok(None),
        }
    }

    async fn fetch(&self, digest: &Digest) -> Result<Option<ManifestInfo>, ReadError> {
        let Some(raw) = self.store.get_manifest(digest.as_str()).await? else {
            return Ok(None);
        };
        self.learn(raw).map(Some)
    }

    /// The facts of a manifest just read: kept, and the manifest held when
    /// `created` times will be asked.
    fn learn(&self, raw: RawManifest) -> Result<ManifestInfo, ReadError> {
        let info = manifest_info(&raw)?;
        let facts = ManifestFacts {
            info: info.clone(),
            created: None,
        };
        self.keep(&raw.digest, &facts);
        if self.hold_fetched && raw.bytes.len() <= HELD_MANIFEST_BYTES {
            self.fetched.lock().unwrap().insert(raw.digest.clone(), raw);
        }
        Ok(info)
    }

    /// The `created` time of an image in the repository (for an index: its
    /// newest child): kept, or read (manifest and config) and then kept.
    pub(super) async fn created(&self, digest: &Digest) -> Result<Option<Unix>, ReadError> {
        if let Some(ManifestFacts {
            created: Some(c), ..
        }) = self.known(digest)
        {
            return Ok(c);
        }
        let got = self.fetched.lock().unwrap().remove(digest);
        let raw = match got {
            Some(raw) => raw,
            None => self
                .store
                .get_manifest(digest.as_str())
                .await?
                .ok_or_else(|| {
                    ReadError::Inconsistent(format!(
                        "manifest {digest} vanished while the repository was read"
                    ))
                })?,
        };
        let created = created_in(self.store, &raw).await?;
        let facts = ManifestFacts {
            info: manifest_info(&raw)?,
            created: Some(created),
        };
        self.keep(digest, &facts);
        Ok(created)
    }

    /// Marks the kept facts this reading used, and drops those no run used
    /// for `FACTS_KEPT_FOR` (a dry run's state drops the write).
    pub(super) fn finish(self) {
        let used = self.used.into_inner().unwrap_or_default();
        if let Err(e) = self
            .state
            .facts_used(&used, self.now, self.now - FACTS_KEPT_FOR)
        {
            tracing::warn!(error = %e, "cannot mark manifest facts used");
        }
    }
}
/// What the planner needs of a manifest: media type, children, subject.
pub(crate) fn manifest_info(raw: &RawManifest) -> Result<ManifestInfo, ReadError> {
    let (media_type, manifest) =
        Manifest::parse(&raw.media_type, &raw.bytes).map_err(|e| ReadError::Manifest {
            digest: raw.digest.to_string(),
            detail: e.to_string(),
        })?;
    let children = match &manifest {
        Manifest::Index { manifests, .. } => manifests
            .iter()
            .map(|c| Child {
                digest: c.digest.clone(),
                media_type: c.media_type.clone(),
            })
            .collect(),
        Manifest::Image { .. } => Vec::new(),
    };
    Ok(ManifestInfo {
        media_type,
        children,
        subject: manifest.subject().map(|s| s.digest.clone()),
    })
}

/// The `created` time of an image (for an index: its newest child). `None`
/// when the config has no readable time.
async fn created_of(store: &Store, digest: &Digest) -> Result<Option<Unix>, ReadError> {
    let Some(raw) = store.get_manifest(digest.as_str()).await? else {
        return Err(ReadError::Inconsistent(format!(
            "manifest {digest} vanished while the repository was read"
        )));
    };
    created_in(store, &raw).await
}

/// The `created` time of the image `raw` describes, its blobs and children
/// read from `store` (also for a platform-filtered index, which the store
/// does not hold itself).
pub(crate) async fn created_in(
    store: &Store,
    raw: &RawManifest,
) -> Result<Option<Unix>, ReadError> {
    let (_, manifest) =
        Manifest::parse(&raw.media_type, &raw.bytes).map_err(|e| ReadError::Manifest {
            digest: raw.digest.to_string(),
            detail: e.to_string(),
        })?;
    match manifest {
        Manifest::Image { config, .. } => {
            if config.size as usize > MAX_CONFIG_BYTES {
                return Ok(None);
            }
            let stream = store.get_blob(&config.digest, config.size).await?;
            let mut verified = Verified::new(stream, config.digest.clone(), Some(config.size));
            let mut bytes = Vec::with_capacity(config.size as usize);
            while let Some(chunk) = verified.next().await {
                let chunk = chunk.map_err(|e| {
                    ReadError::Inconsistent(format!("config {}: {e}", config.digest))
                })?;
                bytes.extend_from_slice(&chunk);
            }
            #[derive(serde::Deserialize)]
            struct Config {
                created: Option<String>,
            }
            Ok(serde_json::from_slice::<Config>(&bytes)
                .ok()
                .and_then(|c| c.created)
                .and_then(|c| parse_rfc3339(&c)))
        }
        Manifest::Index { manifests, .. } => {
            let mut newest: Option<Unix> = None;
            for child in manifests {
                if is_index(&child.media_type) {
                    continue;
                }
                if let Some(t) = Box::pin(created_of(store, &child.digest)).await? {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            Ok(newest)
        }
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-31T12:00:00.5Z`, `...+02:00`) to
/// Unix seconds (chrono's parser: offsets, fractions and date validity).
pub(crate) fn parse_rfc3339(s: &str) -> Option<Unix> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00.123456789+02:00"),
            Some(1_704_067_200)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:15-01:00"),
            Some(1_709_213_415)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some(-62_135_596_800));
        assert_eq!(parse_rfc3339("2024-01-01"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
    }
}
