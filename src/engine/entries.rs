//! An `oci:` source's untagged top-level manifests (`index.json` entries
//! without a ref name, as oc-mirror, imgutil, go-containerregistry and
//! sylabs write them) as entry points of a rule: read at the inventory
//! (`inventory_entries`), planned per target (`plan_entries`, pure: pushed
//! by digest where the target does not hold it; a layout target lists it
//! untagged in its `index.json`). Tag filters do not apply to them; the
//! rule's `untagged = false` turns them off. Entries whose manifest has a
//! `subject` are referrers: they go with their subject (`referrers`). Under
//! `[rule.verify]` each is judged like a tagged image (`verify.rs`, by the
//! digest the source lists it under) and a refused one is planned as
//! refused where it would be copied.

use serde_json::Value;

use super::budget::ManifestBudget;
use super::inventory::RepoInventory;
use super::report::{Failure, RunError};
use super::{Engine, copy};
use crate::config::Rule;
use crate::oci::{Digest, Manifest, RawManifest};
use crate::plan::{TagPlan, TargetAction, Write};
use crate::transport::{ErrorClass, Side};

/// One untagged entry point of the source.
#[derive(Clone, Debug)]
pub(crate) struct SourceEntry {
    /// The manifest pushed (after the platform filter: its digest may
    /// differ from the source's).
    pub manifest: RawManifest,
    /// Its `index.json` descriptor at the source (annotations kept).
    pub descriptor: Value,
    /// Per target (inventory order): whether it holds it already.
    pub present: Vec<bool>,
    /// Refused by `[rule.verify]`, with why: copied nowhere.
    pub refused: Option<(crate::verify::Refusal, String)>,
}

impl Engine {
    /// Reads the source's untagged entries (a layout's; a registry has
    /// none) and whether each target holds them. A failure concerns that
    /// entry only.
    pub(super) async fn inventory_entries(
        &self,
        rule: &Rule,
        repo: &mut RepoInventory,
        budget: &ManifestBudget,
    ) {
        let listed = match repo.source.untagged_entries().await {
            Ok(l) => l,
            Err(e) => {
                let f = Failure::transport(&e, Side::Source);
                let at = repo.source.location().clone();
                repo.errors
                    .push(RunError::new(&at, "listing untagged entries", f));
                return;
            }
        };
        for descriptor in listed {
            match self.read_entry(rule, repo, &descriptor, budget).await {
                Ok(Some(e)) => repo.entries.push(e),
                Ok(None) => {}
                Err(f) => {
                    let d = descriptor.get("digest").and_then(Value::as_str);
                    let what = format!("reading untagged entry {}", d.unwrap_or("?"));
                    let at = repo.source.location().clone();
                    repo.errors.push(RunError::new(&at, &what, f));
                }
            }
        }
        repo.selected += repo.entries.len();
    }

    async fn read_entry(
        &self,
        rule: &Rule,
        repo: &RepoInventory,
        descriptor: &Value,
        budget: &ManifestBudget,
    ) -> Result<Option<SourceEntry>, Failure> {
        let invalid = |why: String| Failure::new(ErrorClass::InvalidInput, why);
        let digest = descriptor
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| Digest::parse(d).ok())
            .ok_or_else(|| invalid("index.json entry without a valid digest".into()))?;
        let size = descriptor.get("size").and_then(Value::as_u64);
        let read = |e| Failure::transport(&e, Side::Source);
        let raw = repo
            .source
            .get_manifest(digest.as_str())
            .await
            .map_err(read)?
            .ok_or_else(|| Failure::new(ErrorClass::NotFound, "listed but its blob is absent"))?;
        if size != Some(raw.bytes.len() as u64) {
            return Err(invalid(format!(
                "{} bytes, but its index.json descriptor says {}",
                raw.bytes.len(),
                size.map_or("no size".into(), |s| s.to_string())
            )));
        }
        let (_, parsed) =
            Manifest::parse(&raw.media_type, &raw.bytes).map_err(|e| invalid(e.to_string()))?;
        if parsed.subject().is_some() {
            return Ok(None); // a referrer: copied with its subject
        }
        let filtered = copy::filter_tree(&repo.source, raw, &rule.platforms)
            .await
            .map_err(|e| match e {
                copy::FilterError::Source(e) => read(e),
                copy::FilterError::Refused(why) => invalid(why),
            })?;
        let Some(manifest) = filtered else {
            tracing::warn!(digest = %digest, "untagged entry has none of the rule's platforms; skipped");
            return Ok(None);
        };
        budget
            .take(manifest.bytes.len())
            .map_err(|e| invalid(e.to_string()))?;
        let mut present = Vec::with_capacity(repo.targets.len());
        for t in &repo.targets {
            let here = t
                .store
                .has_entry(&manifest.digest)
                .await
                .map_err(|e| Failure::transport(&e, Side::Target))?;
            present.push(here);
        }
        Ok(Some(SourceEntry {
            manifest,
            descriptor: descriptor.clone(),
            present,
            refused: None,
        }))
    }
}

/// The warning for a repository of which the rule selects nothing.
pub(super) fn nothing_selected(repo: &RepoInventory, listed: usize) -> String {
    let at = repo.source.location();
    if listed > 0 {
        format!("{at}: the tag filters select 0 of {listed} tags")
    } else {
        format!(
            "{at}: the source holds no tags (and no untagged manifest this rule copies); \
             nothing is selected"
        )
    }
}

/// One push by digest per entry, to the targets that do not hold it (a
/// refused entry: refused there instead).
pub(crate) fn plan_entries(
    entries: &[SourceEntry],
    targets: &[super::runplan::TargetFacts],
) -> Vec<TagPlan> {
    entries
        .iter()
        .map(|e| TagPlan {
            tag: e.manifest.digest.to_string(),
            digest: e.manifest.digest.clone(),
            referrer: false,
            write: Write::Entry,
            targets: targets
                .iter()
                .zip(&e.present)
                .map(|(t, &here)| {
                    let action = match (here, &e.refused) {
                        (true, _) => TargetAction::InSync,
                        (false, None) => TargetAction::Create,
                        (false, Some((reason, detail))) => TargetAction::Refused {
                            reason: *reason,
                            detail: detail.clone(),
                        },
                    };
                    (t.location.clone(), action)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::referrer_plan::TargetReferrers;
    use crate::engine::runplan::TargetFacts;
    use crate::reference::Location;

    #[test]
    fn an_entry_goes_where_it_is_not() {
        let bytes = bytes::Bytes::from_static(b"{}");
        let m = RawManifest {
            media_type: crate::oci::OCI_MANIFEST.into(),
            digest: Digest::of(&bytes),
            bytes,
        };
        let target = |p: &str| TargetFacts {
            location: Location::Layout { path: p.into() },
            digests: Default::default(),
            retained_away: Default::default(),
            referrers: TargetReferrers::default(),
        };
        let entry = SourceEntry {
            manifest: m.clone(),
            descriptor: Value::Null,
            present: vec![true, false],
            refused: None,
        };
        let refused = SourceEntry {
            refused: Some((crate::verify::Refusal::Unsigned, "no signature".into())),
            ..entry.clone()
        };
        let plans = plan_entries(&[entry, refused], &[target("/a"), target("/b")]);
        assert_eq!(plans.len(), 2);
        assert!(matches!(plans[0].write, Write::Entry));
        assert_eq!(plans[0].tag, m.digest.to_string());
        assert_eq!(plans[0].targets[0].1, TargetAction::InSync);
        assert_eq!(plans[0].targets[1].1, TargetAction::Create);
        // Refused: what the target holds stays, nothing goes where it is not.
        assert_eq!(plans[1].targets[0].1, TargetAction::InSync);
        assert!(matches!(
            plans[1].targets[1].1,
            TargetAction::Refused {
                reason: crate::verify::Refusal::Unsigned,
                ..
            }
        ));
    }
}
