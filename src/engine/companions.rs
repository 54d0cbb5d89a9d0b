//! What goes with a repository's selected tags, read by the inventory once
//! they are resolved: an `oci:` source's untagged entry points, the
//! verdicts of `[rule.verify]`, and the signature and referrer tags of the
//! images that are not refused (then the referrers API and fallback
//! indexes, `referrers.rs`).

use std::collections::HashSet;

use super::Engine;
use super::budget::ManifestBudget;
use super::inventory::RepoInventory;
use crate::config::Rule;
use crate::oci::Digest;
use crate::plan::referrer_subject;

impl Engine {
    pub(super) async fn inventory_companions(
        &self,
        rule: &Rule,
        repo: &mut RepoInventory,
        all_tags: &[String],
        selected: &[String],
        budget: &ManifestBudget,
    ) {
        if rule.untagged {
            // Judged with the tags under `[rule.verify]` (`verify_repo`).
            self.inventory_entries(rule, repo, budget).await;
        }
        let mut signed = HashSet::new();
        if let Some(policy) = &rule.verify {
            let listed: HashSet<String> = all_tags.iter().cloned().collect();
            let verdicts = super::verify::verify_repo(policy, repo, &listed, &rule.platforms).await;
            repo.refused = verdicts.refused;
            repo.verified_sigs = verdicts.sig_manifests;
            repo.verified_lists = verdicts.referrer_lists;
            repo.verified_manifests = verdicts.bundle_manifests;
            // Held bytes count against the inventory's budget too.
            let mut blobs = verdicts.blobs;
            blobs.retain(|n| budget.take(n as usize).is_ok());
            tracing::debug!(
                blobs = blobs.len(),
                bytes = blobs.bytes(),
                "verified signature blobs held for their copies"
            );
            repo.verified_blobs = blobs;
            signed = verdicts.signed;
        }
        if rule.referrers || rule.verify.is_some() {
            // Signatures go with what verified; nothing goes with what was refused.
            let refused: HashSet<&Digest> = (repo.tags.iter())
                .filter(|t| repo.refused.contains_key(&t.tag))
                .map(|t| &t.digest)
                .collect();
            let subjects: HashSet<String> = (repo.tags.iter().map(|t| &t.digest))
                .chain(&signed)
                .filter(|d| !refused.contains(d))
                .map(|d| d.to_string())
                .collect();
            // cosign's `.sig/.att/.sbom` tags are copied as tags; a bare
            // `sha256-<hex>` is a fallback index, whose entries are merged
            // into the target's (inventory_referrers), never copied over it.
            let referrer_tags: Vec<String> = all_tags
                .iter()
                .filter(|t| t.contains('.'))
                .filter(|t| referrer_subject(t).is_some_and(|s| subjects.contains(&s)))
                .filter(|t| !selected.contains(t))
                .filter(|t| rule.referrers || t.ends_with(".sig"))
                .cloned()
                .collect();
            repo.considered.extend(referrer_tags.iter().cloned());
            self.resolve_tags(rule, repo, &referrer_tags, true, budget)
                .await;
            if let Some(types) = super::inventory::referrer_types(rule) {
                self.inventory_referrers(&types, repo).await;
            }
        }
    }
}
