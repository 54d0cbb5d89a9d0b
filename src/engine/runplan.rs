//! Stage 2, pure: from the inventory's facts to the run plan of one rule:
//! for each repository pair, tag and target, the copy decision; for each
//! target repository, the retention deletions, planned against the target
//! as it will be after the copies. A copy that the rule's own retention
//! would delete in the same run is not made (SPEC section 6), and a tag the
//! rule's retention deleted earlier is not copied back. No I/O, no clock:
//! `plan` and `sync` execute this same plan, and nothing decides after it.

use std::collections::{HashMap, HashSet};

use super::referrer_plan::{SourceReferrer, TargetReferrers, plan_referrers};
use crate::config::Retention;
use crate::oci::Digest;
use crate::plan::{SourceTag, TagPlan, TargetAction, TargetTags, Write, plan_tags};
use crate::reference::Location;
use crate::retention::{
    Listing, ManifestInfo, RepoInput, RepoPlan, StateUpdate, Unix, apply_cap, plan_retention,
};

/// What the source says about the digests a copy would bring to a target:
/// what retention needs to plan against the target as it will be.
#[derive(Clone, Debug, Default)]
pub(crate) struct CopyFacts {
    pub manifests: HashMap<Digest, ManifestInfo>,
    /// Image `created` times, where the policy needs them and they are known.
    pub created: HashMap<Digest, Unix>,
}

/// One target of a repository pair.
#[derive(Clone, Debug)]
pub(crate) struct TargetFacts {
    pub location: Location,
    /// Digest per tag of interest; a missing tag is absent.
    pub digests: HashMap<String, Digest>,
    /// (tag, digest) pairs this rule's retention deleted here before.
    pub retained_away: HashSet<(String, Digest)>,
    /// The referrers of interest the target lists, and whether it has the API.
    pub referrers: TargetReferrers,
}

/// One repository pair: the source's resolved tags and the targets.
#[derive(Clone, Debug)]
pub(crate) struct RepoFacts {
    pub tags: Vec<SourceTag>,
    /// Referrers found by subject (API or fallback index), recursively.
    pub referrers: Vec<SourceReferrer>,
    /// Tags `[rule.verify]` refused, with why: never copied.
    pub refused: HashMap<String, (crate::verify::Refusal, String)>,
    /// An `oci:` source's untagged entry points (`entries.rs`).
    pub entries: Vec<super::entries::SourceEntry>,
    pub targets: Vec<TargetFacts>,
}

/// Everything one rule's plan is made from (plain data).
pub(crate) struct RuleFacts<'a> {
    pub immutable: bool,
    pub retention: Option<&'a Retention>,
    /// The clock the retention policy is evaluated at.
    pub now: Unix,
    pub repos: Vec<RepoFacts>,
    /// Retention's reading of each target repository as it is now (keyed by
    /// `repository`, the location as written).
    pub retention_inputs: Vec<RepoInput>,
    pub copy_facts: CopyFacts,
}

/// The run plan of one rule.
#[derive(Clone, Debug)]
pub(crate) struct RulePlan {
    /// Per repository pair (in the order of `RuleFacts::repos`), per tag.
    pub copies: Vec<Vec<TagPlan>>,
    /// Per retention input, in the same order; the cap already applied.
    pub retention: Vec<RepoPlan>,
}

impl RulePlan {
    /// Image copies the plan holds, one per tag and target that needs it
    /// (what `sync`'s progress counts towards).
    pub(crate) fn image_copies(&self) -> u64 {
        self.copies
            .iter()
            .flatten()
            .flat_map(|p| &p.targets)
            .filter(|(_, a)| a.needs_copy())
            .count() as u64
    }
}

pub(crate) fn plan_rule(facts: &RuleFacts<'_>) -> RulePlan {
    let mut copies: Vec<Vec<TagPlan>> = facts
        .repos
        .iter()
        .map(|r| plan_copies(r, facts.immutable))
        .collect();
    let mut retention: Vec<RepoPlan> = Vec::new();
    if let Some(policy) = facts.retention {
        retention = facts
            .retention_inputs
            .iter()
            .map(|input| plan_target(policy, input, &mut copies, facts))
            .collect();
        apply_cap(&mut retention, policy.max_deletions_per_run);
    }
    // Referrers last: they follow their images as retention left them.
    for (plans, repo) in copies.iter_mut().zip(&facts.repos) {
        plans.extend(super::entries::plan_entries(&repo.entries, &repo.targets));
        let referrers = plan_referrers(&repo.referrers, &repo.targets, plans);
        plans.extend(referrers);
    }
    RulePlan { copies, retention }
}

/// Copy decisions of one repository pair, with the journal applied.
fn plan_copies(repo: &RepoFacts, immutable: bool) -> Vec<TagPlan> {
    let targets: Vec<TargetTags> = repo
        .targets
        .iter()
        .map(|t| TargetTags {
            location: t.location.clone(),
            digests: t.digests.clone(),
        })
        .collect();
    let mut plans = plan_tags(&repo.tags, &targets, immutable);
    for plan in &mut plans {
        if let Some((reason, detail)) = repo.refused.get(&plan.tag) {
            for (_, action) in plan.targets.iter_mut().filter(|(_, a)| a.needs_copy()) {
                *action = TargetAction::Refused {
                    reason: *reason,
                    detail: detail.clone(),
                };
            }
        }
        let key = (plan.tag.clone(), plan.digest.clone());
        for ((_, action), t) in plan.targets.iter_mut().zip(&repo.targets) {
            if *action == TargetAction::Create && t.retained_away.contains(&key) {
                *action = TargetAction::DeletedByRetention;
            }
        }
    }
    plans
}

/// (pair, tag, target) indexes of the copies that go to `repository`.
type CopyAt = (usize, usize, usize);

fn copies_to(copies: &[Vec<TagPlan>], repository: &str) -> Vec<CopyAt> {
    let mut out = Vec::new();
    for (i, pair) in copies.iter().enumerate() {
        for (j, plan) in pair.iter().enumerate() {
            // Referrers by digest are no tags, and a fallback index is not
            // something retention plans for (its `sha256-` tag is never a
            // candidate): the target's reading as it is covers them.
            if !matches!(plan.write, Write::Tag) {
                continue;
            }
            for (k, (loc, action)) in plan.targets.iter().enumerate() {
                if action.needs_copy() && loc.to_string() == repository {
                    out.push((i, j, k));
                }
            }
        }
    }
    out
}

/// Plans retention of one target repository as it will be after its copies;
/// copies whose tag and digest that plan deletes are dropped, and the plan
/// made again without them, until it deletes none of its own copies.
fn plan_target(
    policy: &Retention,
    input: &RepoInput,
    copies: &mut [Vec<TagPlan>],
    facts: &RuleFacts<'_>,
) -> RepoPlan {
    let mut mine = copies_to(copies, &input.repository);
    loop {
        let arriving: Vec<(String, Digest)> = mine
            .iter()
            .map(|&(i, j, _)| (copies[i][j].tag.clone(), copies[i][j].digest.clone()))
            .collect();
        let projected = project(input, &arriving, &facts.copy_facts, facts.now);
        let plan = plan_retention(policy, &projected, facts.now);
        let doomed: HashSet<(String, Digest)> = plan
            .to_delete()
            .iter()
            .flat_map(|d| d.tags.iter().map(|t| (t.clone(), d.digest.clone())))
            .collect();
        let (dropped, kept): (Vec<CopyAt>, Vec<CopyAt>) =
            mine.into_iter().partition(|&(i, j, _)| {
                doomed.contains(&(copies[i][j].tag.clone(), copies[i][j].digest.clone()))
            });
        if dropped.is_empty() {
            return plan;
        }
        for (i, j, k) in dropped {
            copies[i][j].targets[k].1 = TargetAction::DroppedByRetention;
        }
        mine = kept;
    }
}

/// `input` with `arriving` (tag, digest) copies made: the tags point at the
/// copied digests, whose manifests and times come from the source.
pub(crate) fn project(
    input: &RepoInput,
    arriving: &[(String, Digest)],
    facts: &CopyFacts,
    now: Unix,
) -> RepoInput {
    let mut p = input.clone();
    let Listing::Complete(tags) = &mut p.listing else {
        return p; // nothing is deleted from an incomplete listing anyway
    };
    let mut displaced = Vec::new();
    for (tag, digest) in arriving {
        if let Some(before) = tags.insert(tag.clone(), digest.clone()) {
            if before != *digest {
                displaced.push(before);
            }
        }
        // Without the manifest, the planner refuses: safe.
        if let Some(info) = facts.manifests.get(digest) {
            p.manifests.insert(digest.clone(), info.clone());
        }
        match facts.created.get(digest) {
            Some(c) => p.created.insert(tag.clone(), *c),
            None => p.created.remove(tag),
        };
        p.first_seen.entry(tag.clone()).or_insert(now);
        p.untagged_since.remove(digest);
    }
    // A manifest whose last tag a copy re-points is untagged from now on:
    // tracked like one found untagged, so `untagged_older_than` expires it.
    let tagged: HashSet<&Digest> = tags.values().collect();
    for before in displaced {
        if !tagged.contains(&before) && p.manifests.contains_key(&before) {
            p.untagged_since.entry(before).or_insert(now);
        }
    }
    p
}

/// What the state should learn when `before` (retention's reading) became
/// `after` (its projection with the copies made): manifests that lost their
/// last tag to a copy, and tracked ones a copy tagged again.
pub(crate) fn untagged_changes(before: &RepoInput, after: &RepoInput) -> Vec<StateUpdate> {
    let mut lost: Vec<(&Digest, Unix)> = after
        .untagged_since
        .iter()
        .filter(|(d, _)| !before.untagged_since.contains_key(*d))
        .map(|(d, &since)| (d, since))
        .collect();
    lost.sort();
    let mut found: Vec<&Digest> = before
        .untagged_since
        .keys()
        .filter(|d| !after.untagged_since.contains_key(*d))
        .collect();
    found.sort();
    let lost = lost.into_iter().map(|(d, since)| StateUpdate::Untagged {
        digest: d.clone(),
        since,
    });
    let found = found
        .into_iter()
        .map(|d| StateUpdate::Forget { digest: d.clone() });
    lost.chain(found).collect()
}

#[cfg(test)]
#[path = "runplan_tests.rs"]
mod tests;
