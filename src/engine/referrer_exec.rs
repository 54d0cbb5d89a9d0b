//! Carrying out referrer copies in their order: after the ordinary tags,
//! each depth of referrers after the one before (a signature of an SBOM
//! after the SBOM), and a target's merged fallback index last, only once
//! every referrer it lists arrived there.

use std::collections::{BTreeMap, HashSet};

use super::copy::{self, ImageTree};
use super::inventory::RepoInventory;
use super::report::{Failure, ImageReport};
use crate::plan::{TagPlan, Write};
use crate::transport::{ErrorClass, Side};

/// `plans` grouped by [`TagPlan::stage`], in the order they are written.
pub(super) fn stages(plans: Vec<TagPlan>) -> Vec<Vec<TagPlan>> {
    let mut by: BTreeMap<u32, Vec<TagPlan>> = BTreeMap::new();
    for p in plans {
        by.entry(p.stage()).or_default().push(p);
    }
    by.into_values().collect()
}

/// A fallback index is not written at a target where a referrer it lists
/// failed to arrive (the registry would refuse an index with a missing
/// child, and a later run writes it whole): that target's report gets the
/// error instead. `done` receives those reports.
pub(super) fn hold_back(
    source: &str,
    group: Vec<TagPlan>,
    done: &mut Vec<ImageReport>,
) -> Vec<TagPlan> {
    let failed: HashSet<(String, String)> = done
        .iter()
        .filter(|i| i.referrer_write && i.error.is_some())
        .map(|i| (i.target.clone(), i.tag.clone()))
        .collect();
    if failed.is_empty() {
        return group;
    }
    let mut out = Vec::new();
    for mut plan in group {
        if !matches!(plan.write, Write::FallbackIndex(_)) {
            out.push(plan);
            continue;
        }
        let (held, kept): (Vec<_>, Vec<_>) = plan.targets.drain(..).partition(|(loc, a)| {
            a.needs_copy() && failed.contains(&(loc.to_string(), plan.tag.clone()))
        });
        for (loc, action) in held {
            done.push(ImageReport {
                source: source.to_string(),
                target: loc.to_string(),
                tag: plan.tag.clone(),
                digest: plan.digest.clone(),
                action,
                cost: None,
                error: Some(Failure::new(
                    ErrorClass::Other,
                    "not written: a referrer it lists could not be copied here",
                )),
                referrer_write: true,
                pushed_by_digest: false,
            });
        }
        if !kept.is_empty() {
            plan.targets = kept;
            out.push(plan);
        }
    }
    out
}

/// The tree a plan copies: a tag's root (from the inventory) or a
/// referrer's manifest, expanded at the source; a fallback index alone (its
/// entries are pushed already, or are another tool's and stay as they are).
pub(super) async fn tree_of(repo: &RepoInventory, plan: &TagPlan) -> Result<ImageTree, Failure> {
    let root = match &plan.write {
        Write::FallbackIndex(raw) => {
            return Ok(ImageTree {
                root: raw.clone(),
                children: Vec::new(),
                blobs: Vec::new(),
                foreign: Vec::new(),
                entry: None,
                held: Default::default(),
            });
        }
        Write::Tag => repo.manifests.get(&plan.tag),
        Write::Referrer { .. } => repo.referrer_manifests.get(&plan.digest),
        Write::Entry => repo
            .entries
            .iter()
            .map(|e| &e.manifest)
            .find(|m| m.digest == plan.digest),
    };
    let root = root
        .cloned()
        .ok_or_else(|| Failure::new(ErrorClass::Other, "the inventory holds no manifest for it"))?;
    let mut tree = copy::expand(&repo.source, root)
        .await
        .map_err(|e| Failure::new(e.class(Side::Source), e))?;
    tree.entry = match &plan.write {
        Write::Entry => repo
            .entries
            .iter()
            .find(|e| e.manifest.digest == plan.digest)
            .map(|e| e.descriptor.clone()),
        Write::Referrer { .. } => repo
            .referrers
            .iter()
            .find(|r| r.digest == plan.digest)
            .map(|r| r.entry.clone()),
        _ => None,
    };
    // Signature payloads and bundles verification read go from memory.
    tree.held = repo.verified_blobs.among(&tree.blobs);
    if repo.foreign_layers {
        let read = |e: copy::CopyError| Failure::new(e.class(Side::Source), e);
        tree.take_foreign(&repo.source).await.map_err(read)?;
    }
    Ok(tree)
}
