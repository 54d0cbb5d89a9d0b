//! Resolving a tag for the inventory: its digest at the source (and the
//! manifest a copy starts from, platform-filtered) and at each target: from
//! the run's reading of the target when there is one, else a state hint the
//! registry confirmed recently, else a HEAD.

use std::collections::HashMap;

use super::REVERIFY_AFTER_SECS;
use super::budget::ManifestBudget;
use super::inventory::TargetInventory;
use super::report::Failure;
use crate::oci::{Digest, Platform, RawManifest, is_index};
use crate::state::TagState;
use crate::transport::{ErrorClass, Side, Store, TransportError};

/// A tag's digests at the source and at each target.
pub(super) struct Resolved {
    pub tag: String,
    pub digest: Digest,
    pub manifest: Option<RawManifest>,
    pub at_targets: Vec<Option<Digest>>,
    pub hinted: Vec<usize>,
}

/// What resolving one tag needs.
pub(super) struct ResolveCtx<'a> {
    pub source: &'a Store,
    pub targets: &'a [TargetInventory],
    pub hints: &'a [HashMap<String, TagState>],
    pub platforms: &'a [Platform],
    pub now: i64,
    pub budget: &'a ManifestBudget,
    /// Manifests already read this run, by tag (verified `.sig` tags):
    /// taken as the source's, not asked again.
    pub known: &'a HashMap<String, RawManifest>,
}

impl ResolveCtx<'_> {
    /// A target digest the state confirmed recently; used only if the
    /// source still has that digest.
    fn hint(&self, i: usize, tag: &str) -> Option<String> {
        self.hints[i]
            .get(tag)
            .filter(|h| self.now - h.verified < REVERIFY_AFTER_SECS)
            .and_then(|h| h.target_digest.clone())
    }

    pub(super) async fn resolve(&self, tag: String) -> Result<Option<Resolved>, (String, Failure)> {
        let lists = |i: usize| self.targets[i].listed.contains(&tag);
        let missing_somewhere = (0..self.targets.len()).any(|i| !lists(i));
        // The source and every target that lists the tag (and has no usable
        // hint), asked at once.
        let at_targets =
            futures_util::future::join_all(self.targets.iter().enumerate().map(|(i, target)| {
                let tag = &tag;
                let skip =
                    !lists(i) || target.read_digest(tag).is_some() || self.hint(i, tag).is_some();
                async move {
                    if skip {
                        return Ok(None);
                    }
                    let head = target.store.resolve(tag).await;
                    head.map(|h| h.map(|h| h.digest))
                        .map_err(|e| (tag.clone(), Failure::transport(&e, Side::Target)))
                }
            }));
        let from_source = async {
            match self.known.get(&tag) {
                Some(m) => Ok(Some((m.digest.clone(), Some(m.clone())))),
                None => resolve_source(self.source, &tag, missing_somewhere, self.platforms).await,
            }
        };
        let (source, at_targets) = tokio::join!(from_source, at_targets);
        let Some((digest, manifest)) = source? else {
            return Ok(None);
        };
        if let Some(m) = &manifest {
            self.budget
                .take(m.bytes.len())
                .map_err(|e| (tag.clone(), Failure::new(ErrorClass::InvalidInput, e)))?;
        }
        let mut at_targets = at_targets.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut hinted = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            if let Some(read) = target.read_digest(&tag) {
                // Read whole this run (retention's part of the inventory).
                at_targets[i] = read;
                continue;
            }
            let Some(believed) = self.hint(i, &tag).filter(|_| lists(i)) else {
                continue;
            };
            if believed == digest.as_str() {
                // Listed, and the registry confirmed recently that it points
                // at what the source has now.
                at_targets[i] = Some(digest.clone());
                hinted.push(i);
            } else {
                // The source moved: ask the target what it has.
                let head = target.store.resolve(&tag).await;
                at_targets[i] = head
                    .map_err(|e| (tag.clone(), Failure::transport(&e, Side::Target)))?
                    .map(|h| h.digest);
            }
        }
        Ok(Some(Resolved {
            tag,
            digest,
            manifest,
            at_targets,
            hinted,
        }))
    }
}

/// The digest the targets should hold for `reference`, and the manifest when
/// it had to be fetched (`fetch`, or an index to filter by platform).
pub(crate) async fn resolve_source(
    source: &Store,
    reference: &str,
    fetch: bool,
    platforms: &[Platform],
) -> Result<Option<(Digest, Option<RawManifest>)>, (String, Failure)> {
    let err = |f: Failure| (reference.to_string(), f);
    let read = |e: TransportError| err(Failure::transport(&e, Side::Source));
    let raw = if fetch {
        match source.get_manifest(reference).await.map_err(read)? {
            Some(m) => m,
            None => return Ok(None),
        }
    } else {
        let Some(head) = source.resolve(reference).await.map_err(read)? else {
            return Ok(None);
        };
        if platforms.is_empty() || !is_index(&head.media_type) {
            return Ok(Some((head.digest, None)));
        }
        match source
            .get_manifest(head.digest.as_str())
            .await
            .map_err(read)?
        {
            Some(m) => m,
            None => return Ok(None),
        }
    };
    super::platforms::check(source, &raw, platforms)
        .await
        .map_err(err)?;
    let digest = raw.digest.clone();
    let filtered = super::copy::filter_tree(source, raw, platforms)
        .await
        .map_err(|e| match e {
            super::copy::FilterError::Source(e) => read(e),
            super::copy::FilterError::Refused(e) => err(Failure::new(
                ErrorClass::InvalidInput,
                format!("index {digest}: {e}"),
            )),
        })?;
    match filtered {
        Some(m) => Ok(Some((m.digest.clone(), Some(m)))),
        None => Err(err(Failure::new(
            ErrorClass::NotFound,
            format!(
                "none of the platforms {} is in the index",
                platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))),
    }
}
