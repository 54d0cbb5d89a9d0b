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

use super::execute::RetentionError;
use super::plan::{ManifestInfo, Unix};
use super::read::{created_in, manifest_info};
use super::state::{ManifestFacts, RetentionState};
use crate::oci::{Digest, RawManifest};
use crate::transport::Store;

/// A manifest GOT is held for its `created` time only up to this size.
const HELD_MANIFEST_BYTES: usize = 64 * 1024;

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
    ) -> Result<Option<ManifestInfo>, RetentionError> {
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
    ) -> Result<Option<(Digest, ManifestInfo)>, RetentionError> {
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
    ) -> Result<Option<ManifestInfo>, RetentionError> {
        let Some(f) = self.known(digest) else {
            return self.fetch(digest).await;
        };
        match self.store.resolve(digest.as_str()).await? {
            Some(head) if head.digest == *digest => Ok(Some(f.info)),
            Some(_) => Err(RetentionError::Inventory(format!(
                "manifest {digest}: the registry answered for another digest"
            ))),
            None => Ok(None),
        }
    }

    async fn fetch(&self, digest: &Digest) -> Result<Option<ManifestInfo>, RetentionError> {
        let Some(raw) = self.store.get_manifest(digest.as_str()).await? else {
            return Ok(None);
        };
        self.learn(raw).map(Some)
    }

    /// The facts of a manifest just read: kept, and the manifest held when
    /// `created` times will be asked.
    fn learn(&self, raw: RawManifest) -> Result<ManifestInfo, RetentionError> {
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
    pub(super) async fn created(&self, digest: &Digest) -> Result<Option<Unix>, RetentionError> {
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
                    RetentionError::Inventory(format!(
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
