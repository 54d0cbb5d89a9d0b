//! The pure retention planner: from what one target repository holds (tags,
//! digests, manifest references, times) and a policy, which manifests to
//! delete, in which order, and why every other one is kept. No I/O, no clock:
//! `plan`, `prune --dry-run` and a real prune decide with this same code.
//!
//! Safety rules, all enforced here (and unit-tested with data):
//! - only tags that `match` selects, minus `protect`, are candidates;
//! - a digest is deleted only when every tag pointing at it goes (a registry
//!   without tag delete drops every tag of a digest);
//! - nothing reachable from a kept manifest (children of a kept index, the
//!   subject of a kept referrer) is deleted;
//! - an incomplete inventory deletes nothing; neither does a plan above the cap;
//! - deletions come parents first (referrers before their subject, an index
//!   before its children), so an interrupted prune never leaves a kept
//!   manifest pointing at something deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::Serialize;

use super::graph::{Graph, Origin, topological};
pub use super::reasons::{DeleteReason, KeepReason, RankedBy};
use crate::config::{OrderBy, Retention};
use crate::filter::parse_version;
use crate::oci::Digest;
use crate::plan::referrer_subject;

/// Seconds since the Unix epoch.
pub type Unix = i64;

/// Image `created` times before this (2000-01-01) are treated as unknown:
/// reproducible builds stamp 1970-01-01 (or year 1), which says nothing
/// about the image's age.
pub const PLAUSIBLE_CREATED: Unix = 946_684_800;

/// A reference from a manifest to another manifest (an index's child).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub digest: Digest,
    pub media_type: String,
}

/// What the planner needs to know of one manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    pub media_type: String,
    /// For an index: the manifests it lists.
    pub children: Vec<Child>,
    /// For a referrer (signature, SBOM, attestation): the manifest it is about.
    pub subject: Option<Digest>,
}

/// The tag list of the repository.
#[derive(Clone, Debug)]
pub enum Listing {
    /// Every tag and the digest it points at.
    Complete(BTreeMap<String, Digest>),
    /// Something could not be read: the plan deletes nothing.
    Incomplete(String),
}

/// Everything known about one target repository (plain data).
#[derive(Clone, Debug)]
pub struct RepoInput {
    /// For reports, e.g. `registry.example.com/mirror/alpine`.
    pub repository: String,
    pub listing: Listing,
    /// Every manifest known: each tagged digest (required), every index
    /// reachable from one, every tracked untagged manifest still present, and
    /// referrers found through a referrers API (with `subject` set).
    pub manifests: HashMap<Digest, ManifestInfo>,
    /// Image `created` time per tag (from the config), when it was needed and known.
    pub created: HashMap<String, Unix>,
    /// When regkeeper first saw each tag; a tag missing here is seen now.
    pub first_seen: HashMap<String, Unix>,
    /// Manifests that lost their last tag, and since when (from the state).
    /// Only entries also present in `manifests` are considered (others are gone).
    pub untagged_since: HashMap<Digest, Unix>,
    /// The source's tags, for `delete_removed_at_source`; `None` when there is
    /// no source or it was not listed (then nothing is deleted for that reason).
    pub source_tags: Option<BTreeSet<String>>,
}

impl RepoInput {
    /// An input with a complete listing and nothing else known yet.
    pub fn new(repository: impl Into<String>, tags: BTreeMap<String, Digest>) -> Self {
        RepoInput {
            repository: repository.into(),
            listing: Listing::Complete(tags),
            manifests: HashMap::new(),
            created: HashMap::new(),
            first_seen: HashMap::new(),
            untagged_since: HashMap::new(),
            source_tags: None,
        }
    }

    /// An input for a repository that could not be read completely.
    pub fn incomplete(repository: impl Into<String>, reason: impl Into<String>) -> Self {
        RepoInput {
            listing: Listing::Incomplete(reason.into()),
            ..RepoInput::new(repository, BTreeMap::new())
        }
    }
}

/// One manifest to delete (by digest), with every tag that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deletion {
    pub digest: Digest,
    pub tags: Vec<String>,
    pub reason: DeleteReason,
}

/// One tag (or an untagged manifest, `tag = None`) that stays, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kept {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
    pub reason: KeepReason,
}

/// The decision for one repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoPlan {
    pub repository: String,
    /// In the order they must be sent: parents before children.
    pub deletions: Vec<Deletion>,
    pub kept: Vec<Kept>,
    /// Set when nothing may be deleted (incomplete inventory, over the cap);
    /// `deletions` then lists what would have been deleted, for the report,
    /// and none of it is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl RepoPlan {
    /// What will actually be sent.
    pub fn to_delete(&self) -> &[Deletion] {
        if self.refused.is_some() {
            &[]
        } else {
            &self.deletions
        }
    }
}

/// Plans retention for one repository at time `now`.
pub fn plan_retention(policy: &Retention, input: &RepoInput, now: Unix) -> RepoPlan {
    let mut plan = RepoPlan {
        repository: input.repository.clone(),
        ..Default::default()
    };
    let (tags, graph) = match readable(input) {
        Ok(t) => t,
        Err(why) => {
            plan.refused = Some(format!("inventory incomplete, nothing deleted: {why}"));
            return plan;
        }
    };
    let (proposals, kept) = decide_tags(policy, input, tags, now);
    let (expiring, untagged_staying) = split_untagged(policy, input, tags, now);
    let mut d = Decisions {
        tags,
        proposals,
        kept,
        expiring,
        untagged_staying,
        blocked: BTreeMap::new(),
    };
    let (cause, order_edges) = settle(policy, input, now, &graph, &mut d);
    report_kept(input, &d, &cause, &mut plan);
    order_deletions(tags, &cause, &order_edges, &mut plan);
    if plan.deletions.len() > policy.max_deletions_per_run {
        plan.refused = Some(cap_message(
            plan.deletions.len(),
            policy.max_deletions_per_run,
        ));
    }
    plan
}

/// What has been decided so far about one repository.
struct Decisions<'a> {
    tags: &'a BTreeMap<String, Digest>,
    /// Tags to delete, and why.
    proposals: BTreeMap<&'a str, DeleteReason>,
    /// Tags that stay, and why.
    kept: BTreeMap<&'a str, KeepReason>,
    /// Untagged manifests past `untagged_older_than`, and since when.
    expiring: BTreeMap<&'a Digest, Unix>,
    untagged_staying: BTreeSet<&'a Digest>,
    /// Deletions taken back because something kept needs them.
    blocked: BTreeMap<Digest, KeepReason>,
}

/// The tags and reference graph, or why the repository cannot be planned:
/// every tagged manifest must be known (its children and subject decide what
/// else must stay), and every reachable index.
fn readable(input: &RepoInput) -> Result<(&BTreeMap<String, Digest>, Graph<'_>), String> {
    let tags = match &input.listing {
        Listing::Complete(t) => t,
        Listing::Incomplete(why) => return Err(why.clone()),
    };
    if let Some((tag, d)) = tags.iter().find(|(_, d)| !input.manifests.contains_key(*d)) {
        return Err(format!("manifest {d} of tag {tag:?} was not read"));
    }
    let graph = Graph::new(tags, &input.manifests);
    if let Some(missing) = graph.unknown_index() {
        return Err(format!("index {missing} was not read"));
    }
    Ok((tags, graph))
}

/// 1. Decides per tag: protected, not matched, removed at the source, or
///    ranked by the age policy.
fn decide_tags<'a>(
    policy: &Retention,
    input: &RepoInput,
    tags: &'a BTreeMap<String, Digest>,
    now: Unix,
) -> (
    BTreeMap<&'a str, DeleteReason>,
    BTreeMap<&'a str, KeepReason>,
) {
    let mut proposals: BTreeMap<&str, DeleteReason> = BTreeMap::new();
    let mut kept: BTreeMap<&str, KeepReason> = BTreeMap::new();
    let mut candidates: Vec<&str> = Vec::new();
    for tag in tags.keys() {
        if referrer_subject(tag).is_some() {
            continue; // decided with their subject, below
        }
        if policy.protect.iter().any(|r| r.is_match(tag)) {
            kept.insert(tag, KeepReason::Protected);
        } else if !policy.match_tags.iter().any(|r| r.is_match(tag)) {
            kept.insert(tag, KeepReason::NotMatched);
        } else if policy.delete_removed_at_source
            && input.source_tags.as_ref().is_some_and(|s| !s.contains(tag))
        {
            proposals.insert(tag, DeleteReason::RemovedAtSource);
        } else {
            candidates.push(tag);
        }
    }
    rank_candidates(policy, input, now, &candidates, &mut proposals, &mut kept);
    (proposals, kept)
}

/// 2. Untagged manifests (present, really untagged): expiring or staying.
fn split_untagged<'a>(
    policy: &Retention,
    input: &'a RepoInput,
    tags: &BTreeMap<String, Digest>,
    now: Unix,
) -> (BTreeMap<&'a Digest, Unix>, BTreeSet<&'a Digest>) {
    let tagged: HashSet<&Digest> = tags.values().collect();
    let mut expiring: BTreeMap<&Digest, Unix> = BTreeMap::new();
    let mut staying: BTreeSet<&Digest> = BTreeSet::new();
    for (d, &since) in &input.untagged_since {
        if tagged.contains(d) || !input.manifests.contains_key(d) {
            continue;
        }
        match policy.untagged_older_than {
            Some(w) if now - since > w.as_secs() as i64 => {
                expiring.insert(d, since);
            }
            _ => {
                staying.insert(d);
            }
        }
    }
    (expiring, staying)
}

/// 3. Turns tag decisions into digests, then takes back every deletion that
///    something kept still needs, until nothing conflicts. Returns why each
///    digest goes and the order constraints (before, after).
fn settle(
    policy: &Retention,
    input: &RepoInput,
    now: Unix,
    graph: &Graph<'_>,
    d: &mut Decisions<'_>,
) -> (BTreeMap<Digest, DeleteReason>, Vec<(Digest, Digest)>) {
    loop {
        let mut cause = direct_causes(policy, d);
        let edges = spread(graph, &d.blocked, &mut cause);
        let keep = graph.closure(kept_roots(d, &cause));
        let conflicts: Vec<Digest> = cause
            .keys()
            .filter(|x| keep.contains_key(*x))
            .cloned()
            .collect();
        if conflicts.is_empty() {
            return (cause, edges);
        }
        for x in conflicts {
            let reason = match &keep[&x] {
                Origin::Tag(t) => KeepReason::SharedWithKeptTag { tag: t.clone() },
                Origin::Manifest(by) => KeepReason::ReferencedByKept { by: by.clone() },
                // An untagged manifest that stays keeps itself; cannot be in
                // `cause`, but be explicit.
                Origin::Untagged => KeepReason::UntaggedRecently {
                    since: input.untagged_since.get(&x).copied().unwrap_or(now),
                },
            };
            d.blocked.insert(x, reason);
        }
    }
}

/// The digests the tag decisions and untagged expiry delete (not blocked).
fn direct_causes(policy: &Retention, d: &Decisions<'_>) -> BTreeMap<Digest, DeleteReason> {
    let mut cause: BTreeMap<Digest, DeleteReason> = BTreeMap::new();
    for (tag, reason) in &d.proposals {
        let digest = &d.tags[*tag];
        if !d.blocked.contains_key(digest) {
            cause
                .entry(digest.clone())
                .or_insert_with(|| reason.clone());
        }
    }
    for (digest, since) in &d.expiring {
        if !d.blocked.contains_key(*digest) {
            cause
                .entry((*digest).clone())
                .or_insert_with(|| DeleteReason::UntaggedExpired {
                    since: *since,
                    untagged_older_than_seconds: policy
                        .untagged_older_than
                        .map(|w| w.as_secs() as i64)
                        .unwrap_or_default(),
                });
        }
    }
    cause
}

/// What goes with the deleted: referrers, and children of deleted indexes.
/// Returns the order constraints (before, after).
fn spread(
    graph: &Graph<'_>,
    blocked: &BTreeMap<Digest, KeepReason>,
    cause: &mut BTreeMap<Digest, DeleteReason>,
) -> Vec<(Digest, Digest)> {
    let mut queue: VecDeque<Digest> = cause.keys().cloned().collect();
    let mut edges: Vec<(Digest, Digest)> = Vec::new();
    while let Some(d) = queue.pop_front() {
        for c in graph.children(&d) {
            edges.push((d.clone(), c.clone()));
            if !blocked.contains_key(c) && !cause.contains_key(c) {
                cause.insert(c.clone(), DeleteReason::ChildOf { index: d.clone() });
                queue.push_back(c.clone());
            }
        }
        for r in graph.referrers(&d) {
            edges.push((r.clone(), d.clone()));
            if !blocked.contains_key(r) && !cause.contains_key(r) {
                cause.insert(r.clone(), DeleteReason::ReferrerOf { subject: d.clone() });
                queue.push_back(r.clone());
            }
        }
    }
    edges
}

/// Kept roots: every tag that does not go, every untagged manifest that
/// stays.
fn kept_roots(d: &Decisions<'_>, cause: &BTreeMap<Digest, DeleteReason>) -> Vec<(Digest, Origin)> {
    let mut roots: Vec<(Digest, Origin)> = Vec::new();
    for (tag, digest) in d.tags {
        let goes = cause.contains_key(digest)
            && (d.proposals.contains_key(tag.as_str())
                || referrer_subject(tag)
                    .and_then(|s| Digest::parse(&s).ok())
                    .is_some_and(|s| cause.contains_key(&s)));
        if !goes {
            roots.push((digest.clone(), Origin::Tag(tag.clone())));
            // A kept referrer tag keeps the subject it names.
            if let Some(s) = referrer_subject(tag).and_then(|s| Digest::parse(&s).ok()) {
                roots.push((s, Origin::Manifest(digest.clone())));
            }
        }
    }
    for x in &d.untagged_staying {
        roots.push(((*x).clone(), Origin::Untagged));
    }
    for x in d.expiring.keys() {
        if d.blocked.contains_key(*x) {
            roots.push(((*x).clone(), Origin::Untagged));
        }
    }
    roots
}

/// 4. Reports kept tags (with the reason that decided them) and kept
///    untagged manifests.
fn report_kept(
    input: &RepoInput,
    d: &Decisions<'_>,
    cause: &BTreeMap<Digest, DeleteReason>,
    plan: &mut RepoPlan,
) {
    for (tag, digest) in d.tags {
        let reason = if cause.contains_key(digest) {
            continue;
        } else if let Some(r) = d
            .blocked
            .get(digest)
            .filter(|_| d.proposals.contains_key(tag.as_str()))
        {
            r.clone()
        } else if let Some(r) = d.kept.get(tag.as_str()) {
            r.clone()
        } else if referrer_subject(tag).is_some() {
            KeepReason::ReferrerOfKept
        } else if let Some(r) = d.blocked.get(digest) {
            r.clone()
        } else {
            // A proposal whose digest is not in `cause` must be blocked.
            KeepReason::NoAgePolicy
        };
        plan.kept.push(Kept {
            tag: Some(tag.clone()),
            digest: digest.clone(),
            reason,
        });
    }
    for x in &d.untagged_staying {
        plan.kept.push(Kept {
            tag: None,
            digest: (*x).clone(),
            reason: KeepReason::UntaggedRecently {
                since: input.untagged_since[*x],
            },
        });
    }
    for x in d.expiring.keys() {
        if let Some(r) = d.blocked.get(*x) {
            plan.kept.push(Kept {
                tag: None,
                digest: (*x).clone(),
                reason: r.clone(),
            });
        }
    }
}

/// 5. Orders the deletions: parents (indexes, referrers) before what they
///    reference.
fn order_deletions(
    tags: &BTreeMap<String, Digest>,
    cause: &BTreeMap<Digest, DeleteReason>,
    edges: &[(Digest, Digest)],
    plan: &mut RepoPlan,
) {
    let mut digest_tags: HashMap<&Digest, Vec<String>> = HashMap::new();
    for (tag, d) in tags {
        digest_tags.entry(d).or_default().push(tag.clone());
    }
    match topological(cause, edges) {
        Some(order) => {
            plan.deletions = order
                .into_iter()
                .map(|d| Deletion {
                    tags: digest_tags.get(&d).cloned().unwrap_or_default(),
                    reason: cause[&d].clone(),
                    digest: d,
                })
                .collect();
        }
        None => {
            plan.refused = Some("manifest references form a cycle; nothing deleted".into());
        }
    }
}

fn cap_message(planned: usize, cap: usize) -> String {
    format!(
        "{planned} deletion(s) planned, more than max_deletions_per_run = {cap}: nothing deleted; review with `regkeeper plan` and raise the cap if this is intended"
    )
}

/// Applies `max_deletions_per_run` to a whole rule run (every target
/// repository together): above it, every plan is refused.
pub fn apply_cap(plans: &mut [RepoPlan], cap: usize) -> bool {
    let total: usize = plans.iter().map(|p| p.to_delete().len()).sum();
    if total <= cap {
        return false;
    }
    for p in plans.iter_mut() {
        if p.refused.is_none() && !p.deletions.is_empty() {
            p.refused = Some(cap_message(total, cap));
        }
    }
    true
}

/// The time a tag's age is measured from: its image's `created` time (when
/// plausible) or, with `order_by = "first_seen"`, when it was first seen.
fn time_of(policy: &Retention, input: &RepoInput, now: Unix, tag: &str) -> Option<Unix> {
    match policy.order_by {
        OrderBy::FirstSeen => Some(input.first_seen.get(tag).copied().unwrap_or(now)),
        OrderBy::Semver | OrderBy::Created => input
            .created
            .get(tag)
            .copied()
            .filter(|&c| c >= PLAUSIBLE_CREATED),
    }
}

/// Ranks matched candidates newest first and decides keep_last / older_than.
fn rank_candidates<'a>(
    policy: &Retention,
    input: &RepoInput,
    now: Unix,
    candidates: &[&'a str],
    proposals: &mut BTreeMap<&'a str, DeleteReason>,
    kept: &mut BTreeMap<&'a str, KeepReason>,
) {
    let ranked = rank(policy, input, now, candidates, kept);
    let by = RankedBy::from(policy.order_by);
    for (i, &tag) in ranked.iter().enumerate() {
        let rank = i + 1;
        if let Some(n) = policy.keep_last.filter(|&n| rank <= n) {
            kept.insert(
                tag,
                KeepReason::Newest {
                    rank,
                    by,
                    keep_last: n,
                },
            );
            continue;
        }
        let Some(limit) = policy.older_than else {
            match policy.keep_last {
                Some(n) => {
                    proposals.insert(
                        tag,
                        DeleteReason::BeyondKeepLast {
                            rank,
                            by,
                            keep_last: n,
                        },
                    );
                }
                None => {
                    kept.insert(tag, KeepReason::NoAgePolicy);
                }
            }
            continue;
        };
        let limit = limit.as_secs() as i64;
        let Some(at) = time_of(policy, input, now, tag) else {
            kept.insert(
                tag,
                KeepReason::OrderUnknown {
                    detail: "age unknown (no usable created time in the image config)".into(),
                },
            );
            continue;
        };
        let age = now - at;
        if age > limit {
            proposals.insert(
                tag,
                DeleteReason::OlderThan {
                    rank,
                    by,
                    age_seconds: age,
                    older_than_seconds: limit,
                },
            );
        } else {
            kept.insert(
                tag,
                KeepReason::TooRecent {
                    rank,
                    by,
                    age_seconds: age,
                    older_than_seconds: limit,
                },
            );
        }
    }
}

/// The candidates newest first. Ordering only matters with keep_last;
/// without it every candidate is judged by age alone. A candidate whose
/// order cannot be told is kept (recorded in `kept`) and not ranked.
fn rank<'a>(
    policy: &Retention,
    input: &RepoInput,
    now: Unix,
    candidates: &[&'a str],
    kept: &mut BTreeMap<&'a str, KeepReason>,
) -> Vec<&'a str> {
    if policy.keep_last.is_none() {
        return candidates.to_vec();
    }
    let unknown = |detail: &str| KeepReason::OrderUnknown {
        detail: detail.into(),
    };
    match policy.order_by {
        OrderBy::Semver => {
            let mut versions = Vec::new();
            for &t in candidates {
                match parse_version(t) {
                    Some(v) => versions.push((v, t)),
                    None => {
                        kept.insert(t, unknown("not a version, and order_by = \"semver\""));
                    }
                }
            }
            versions.sort_by(|(va, a), (vb, b)| vb.cmp(va).then_with(|| a.cmp(b)));
            versions.into_iter().map(|(_, t)| t).collect()
        }
        OrderBy::Created | OrderBy::FirstSeen => {
            let mut timed = Vec::new();
            for &t in candidates {
                match time_of(policy, input, now, t) {
                    Some(at) => timed.push((at, t)),
                    None => {
                        kept.insert(t, unknown("no usable created time in the image config"));
                    }
                }
            }
            // Newest first; equal times by version, then name (stable).
            timed.sort_by(|(ta, a), (tb, b)| {
                tb.cmp(ta).then_with(|| crate::filter::newest_first(a, b))
            });
            timed.into_iter().map(|(_, t)| t).collect()
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
