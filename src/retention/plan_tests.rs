use std::time::Duration;

use regex::Regex;

use super::*;
use crate::oci::{OCI_INDEX, OCI_MANIFEST};

const DAY: i64 = 86_400;
const NOW: Unix = 1_800_000_000;

fn d(n: u32) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn policy() -> Retention {
    Retention {
        match_tags: vec![Regex::new(r"^v?\d+\.\d+\.\d+$").unwrap()],
        keep_last: None,
        order_by: OrderBy::Semver,
        older_than: None,
        protect: vec![],
        untagged_older_than: None,
        delete_removed_at_source: false,
        max_deletions_per_run: 1000,
    }
}

fn image() -> ManifestInfo {
    ManifestInfo {
        media_type: OCI_MANIFEST.into(),
        ..Default::default()
    }
}

fn index(children: &[Digest]) -> ManifestInfo {
    ManifestInfo {
        media_type: OCI_INDEX.into(),
        children: children
            .iter()
            .map(|c| Child {
                digest: c.clone(),
                media_type: OCI_MANIFEST.into(),
            })
            .collect(),
        subject: None,
    }
}

fn referrer(subject: &Digest) -> ManifestInfo {
    ManifestInfo {
        subject: Some(subject.clone()),
        ..image()
    }
}

fn sig_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

/// An input where each tag points at the given digest, each digest an image.
fn input(tags: &[(&str, Digest)]) -> RepoInput {
    let map: BTreeMap<String, Digest> = tags
        .iter()
        .map(|(t, d)| (t.to_string(), d.clone()))
        .collect();
    let mut i = RepoInput::new("reg/repo", map);
    for (_, dg) in tags {
        i.manifests.insert(dg.clone(), image());
    }
    i
}

fn deleted_tags(p: &RepoPlan) -> Vec<String> {
    let mut v: Vec<String> = p.to_delete().iter().flat_map(|x| x.tags.clone()).collect();
    v.sort();
    v
}

fn deleted_digests(p: &RepoPlan) -> BTreeSet<Digest> {
    p.to_delete().iter().map(|x| x.digest.clone()).collect()
}

fn kept_reason<'a>(p: &'a RepoPlan, tag: &str) -> &'a KeepReason {
    &p.kept
        .iter()
        .find(|k| k.tag.as_deref() == Some(tag))
        .unwrap_or_else(|| panic!("{tag} not kept: {p:#?}"))
        .reason
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn keep_last_by_semver_table() {
    let tags = [
        ("v1.0.0", d(1)),
        ("v1.2.0", d(2)),
        ("v1.10.0", d(3)),
        ("v1.9.0", d(4)),
        ("v2.0.0", d(5)),
    ];
    // (keep_last, expected deleted tags)
    let cases: [(usize, &[&str]); 5] = [
        (0, &["v1.0.0", "v1.10.0", "v1.2.0", "v1.9.0", "v2.0.0"]),
        (1, &["v1.0.0", "v1.10.0", "v1.2.0", "v1.9.0"]),
        (3, &["v1.0.0", "v1.2.0"]),
        (5, &[]),
        (50, &[]),
    ];
    for (n, want) in cases {
        let p = plan_retention(
            &Retention {
                keep_last: Some(n),
                ..policy()
            },
            &input(&tags),
            NOW,
        );
        assert_eq!(deleted_tags(&p), strs(want), "keep_last = {n}");
        assert!(p.refused.is_none());
        assert_eq!(p.kept.len() + p.deletions.len(), tags.len());
    }
    let p = plan_retention(
        &Retention {
            keep_last: Some(3),
            ..policy()
        },
        &input(&tags),
        NOW,
    );
    assert_eq!(
        kept_reason(&p, "v1.9.0"),
        &KeepReason::Newest {
            rank: 3,
            by: RankedBy::Semver,
            keep_last: 3
        }
    );
    let del = p.deletions.iter().find(|x| x.tags == ["v1.2.0"]).unwrap();
    assert_eq!(
        del.reason,
        DeleteReason::BeyondKeepLast {
            rank: 4,
            by: RankedBy::Semver,
            keep_last: 3
        }
    );
    // the text names the order used: semver here, not "age"
    assert_eq!(
        del.reason.to_string(),
        "number 4 by version (semver), beyond keep_last = 3"
    );
}

#[test]
fn keep_last_by_created_and_first_seen() {
    let tags = [
        ("a1.0.0", d(1)),
        ("1.0.0", d(2)),
        ("2.0.0", d(3)),
        ("3.0.0", d(4)),
        ("4.0.0", d(5)),
    ];
    let mut i = input(&tags);
    i.created = HashMap::from([
        ("1.0.0".to_string(), NOW - 10 * DAY),
        ("2.0.0".to_string(), NOW - 30 * DAY), // older than 1.0.0 by creation
        ("3.0.0".to_string(), NOW - DAY),
        ("4.0.0".to_string(), 0), // reproducible-build epoch: unusable
    ]);
    let pol = Retention {
        match_tags: vec![Regex::new(r"^\d+\.\d+\.\d+$").unwrap()],
        keep_last: Some(2),
        order_by: OrderBy::Created,
        ..policy()
    };
    let p = plan_retention(&pol, &i, NOW);
    assert_eq!(deleted_tags(&p), strs(&["2.0.0"]));
    assert!(matches!(
        kept_reason(&p, "4.0.0"),
        KeepReason::OrderUnknown { .. }
    ));
    assert_eq!(kept_reason(&p, "a1.0.0"), &KeepReason::NotMatched);
    assert!(matches!(
        kept_reason(&p, "1.0.0"),
        KeepReason::Newest { rank: 2, .. }
    ));

    // first_seen: a tag never seen counts as seen now (newest).
    i.first_seen = HashMap::from([
        ("1.0.0".to_string(), NOW - 3 * DAY),
        ("2.0.0".to_string(), NOW - 2 * DAY),
        ("3.0.0".to_string(), NOW - 9 * DAY),
    ]);
    let p = plan_retention(
        &Retention {
            order_by: OrderBy::FirstSeen,
            ..pol
        },
        &i,
        NOW,
    );
    assert_eq!(deleted_tags(&p), strs(&["1.0.0", "3.0.0"]));
}

#[test]
fn older_than_with_and_without_keep_last() {
    let tags = [
        ("1.0.0", d(1)),
        ("1.1.0", d(2)),
        ("1.2.0", d(3)),
        ("1.3.0", d(4)),
    ];
    let mut i = input(&tags);
    i.created = HashMap::from([
        ("1.0.0".to_string(), NOW - 100 * DAY),
        ("1.1.0".to_string(), NOW - 95 * DAY),
        ("1.2.0".to_string(), NOW - 10 * DAY),
        // 1.3.0: no created time
    ]);
    let ninety = Some(Duration::from_secs(90 * DAY as u64));
    // (keep_last, order_by, expected deleted)
    let cases: [(Option<usize>, OrderBy, &[&str]); 5] = [
        (None, OrderBy::Semver, &["1.0.0", "1.1.0"]),
        (Some(1), OrderBy::Semver, &["1.0.0", "1.1.0"]),
        // keep_last = 3 by semver keeps 1.3.0, 1.2.0, 1.1.0: only 1.0.0 is old and beyond.
        (Some(3), OrderBy::Semver, &["1.0.0"]),
        (Some(4), OrderBy::Semver, &[]),
        // By created: 1.3.0 has no time, kept; ranks 1.2.0, 1.1.0, 1.0.0.
        (Some(2), OrderBy::Created, &["1.0.0"]),
    ];
    let digits = Regex::new(r"^\d").unwrap();
    for (keep_last, order_by, want) in cases {
        let pol = Retention {
            match_tags: vec![digits.clone()],
            keep_last,
            order_by,
            older_than: ninety,
            ..policy()
        };
        let p = plan_retention(&pol, &i, NOW);
        assert_eq!(deleted_tags(&p), strs(want), "{keep_last:?} {order_by:?}");
        assert!(matches!(
            kept_reason(&p, "1.3.0"),
            KeepReason::Newest { .. } | KeepReason::OrderUnknown { .. }
        ));
    }
    let pol = Retention {
        match_tags: vec![Regex::new(r"^\d").unwrap()],
        keep_last: Some(1),
        older_than: ninety,
        ..policy()
    };
    let p = plan_retention(&pol, &i, NOW);
    assert!(matches!(
        kept_reason(&p, "1.2.0"),
        KeepReason::TooRecent { rank: 2, .. }
    ));
    let reason = &p
        .deletions
        .iter()
        .find(|x| x.tags == ["1.0.0"])
        .unwrap()
        .reason;
    assert_eq!(
        reason,
        &DeleteReason::OlderThan {
            rank: 4,
            by: RankedBy::from(pol.order_by),
            age_seconds: 100 * DAY,
            older_than_seconds: 90 * DAY
        }
    );
    assert!(
        reason.to_string().contains("100d old, older than 90d"),
        "{reason}"
    );
}

#[test]
fn protect_and_match() {
    let tags = [
        ("v1.0.0", d(1)),
        ("v1.1.0", d(2)),
        ("v2.0.0", d(3)),
        ("latest", d(4)),
        ("v0.9.0-rc1", d(5)),
    ];
    let pol = Retention {
        keep_last: Some(1),
        protect: vec![Regex::new(r"^v1\.0\.0$").unwrap()],
        ..policy()
    };
    let p = plan_retention(&pol, &input(&tags), NOW);
    assert_eq!(deleted_tags(&p), strs(&["v1.1.0"]));
    assert_eq!(kept_reason(&p, "v1.0.0"), &KeepReason::Protected);
    assert_eq!(kept_reason(&p, "latest"), &KeepReason::NotMatched);
    assert_eq!(kept_reason(&p, "v0.9.0-rc1"), &KeepReason::NotMatched);

    // A matched tag that is not a version, with semver order: kept.
    let pol = Retention {
        match_tags: vec![Regex::new(".*").unwrap()],
        keep_last: Some(1),
        ..policy()
    };
    let p = plan_retention(&pol, &input(&tags), NOW);
    assert_eq!(deleted_tags(&p), strs(&["v0.9.0-rc1", "v1.0.0", "v1.1.0"]));
    assert!(matches!(
        kept_reason(&p, "latest"),
        KeepReason::OrderUnknown { .. }
    ));
}

#[test]
fn shared_digests() {
    let pol = Retention {
        keep_last: Some(1),
        ..policy()
    };
    // v1.0.0 shares its digest with an unmatched tag: distribution would drop both.
    let p = plan_retention(
        &pol,
        &input(&[("v1.0.0", d(1)), ("stable", d(1)), ("v2.0.0", d(2))]),
        NOW,
    );
    assert!(p.to_delete().is_empty(), "{p:#?}");
    assert_eq!(
        kept_reason(&p, "v1.0.0"),
        &KeepReason::SharedWithKeptTag {
            tag: "stable".into()
        }
    );
    // Shared with a tag kept by keep_last.
    let p = plan_retention(&pol, &input(&[("v1.0.0", d(1)), ("v2.0.0", d(1))]), NOW);
    assert!(p.to_delete().is_empty(), "{p:#?}");
    assert_eq!(
        kept_reason(&p, "v1.0.0"),
        &KeepReason::SharedWithKeptTag {
            tag: "v2.0.0".into()
        }
    );
    // Both tags of the digest go: one DELETE carrying both.
    let p = plan_retention(
        &pol,
        &input(&[("v1.0.0", d(1)), ("v1.0.1", d(1)), ("v2.0.0", d(2))]),
        NOW,
    );
    assert_eq!(p.deletions.len(), 1);
    assert_eq!(p.deletions[0].tags, strs(&["v1.0.0", "v1.0.1"]));
    // Protected sibling.
    let pol2 = Retention {
        protect: vec![Regex::new("^v1.0.1$").unwrap()],
        ..pol
    };
    let p = plan_retention(
        &pol2,
        &input(&[("v1.0.0", d(1)), ("v1.0.1", d(1)), ("v2.0.0", d(2))]),
        NOW,
    );
    assert!(p.to_delete().is_empty());
}

#[test]
fn multi_arch_indexes() {
    let pol = Retention {
        keep_last: Some(1),
        untagged_older_than: Some(Duration::from_secs(DAY as u64)),
        ..policy()
    };
    // v2 (kept) is an index over d(21), d(22); its children were recorded as
    // untagged long ago (e.g. pushed by digest): they must stay.
    let mut i = input(&[("v2.0.0", d(20)), ("v1.0.0", d(10))]);
    i.manifests.insert(d(20), index(&[d(21), d(22)]));
    i.manifests.insert(d(21), image());
    i.manifests.insert(d(22), image());
    // v1 (deleted) is an index over d(11) and the shared d(22).
    i.manifests.insert(d(10), index(&[d(11), d(22)]));
    i.manifests.insert(d(11), image());
    i.untagged_since = HashMap::from([(d(21), NOW - 30 * DAY), (d(22), NOW - 30 * DAY)]);
    let p = plan_retention(&pol, &i, NOW);
    let order: Vec<Digest> = p.deletions.iter().map(|x| x.digest.clone()).collect();
    assert_eq!(
        order,
        vec![d(10), d(11)],
        "index first, then its own child: {p:#?}"
    );
    assert_eq!(
        p.deletions[1].reason,
        DeleteReason::ChildOf { index: d(10) }
    );
    let untagged_kept: Vec<(&Digest, &KeepReason)> = p
        .kept
        .iter()
        .filter(|k| k.tag.is_none())
        .map(|k| (&k.digest, &k.reason))
        .collect();
    assert_eq!(
        untagged_kept,
        vec![
            (&d(21), &KeepReason::ReferencedByKept { by: d(20) }),
            (&d(22), &KeepReason::ReferencedByKept { by: d(20) })
        ]
    );

    // A child that is also tagged (unmatched) stays; its parent still goes.
    let mut i = input(&[("v2.0.0", d(20)), ("v1.0.0", d(10)), ("amd64-only", d(11))]);
    i.manifests.insert(d(10), index(&[d(11), d(12)]));
    i.manifests.insert(d(12), image());
    let p = plan_retention(&pol, &i, NOW);
    assert_eq!(
        p.deletions.iter().map(|x| &x.digest).collect::<Vec<_>>(),
        vec![&d(10), &d(12)]
    );
    assert_eq!(kept_reason(&p, "amd64-only"), &KeepReason::NotMatched);

    // A kept tag pointing at a child of an index being deleted keeps only the child.
    // And a matched tag pointing at a child of a KEPT index cannot go.
    let mut i = input(&[("v2.0.0", d(20)), ("v1.0.0", d(21))]);
    i.manifests.insert(d(20), index(&[d(21)]));
    let p = plan_retention(&pol, &i, NOW);
    assert!(p.to_delete().is_empty());
    assert_eq!(
        kept_reason(&p, "v1.0.0"),
        &KeepReason::ReferencedByKept { by: d(20) }
    );
}

#[test]
fn nested_index_order_and_unknown_index() {
    let pol = Retention {
        keep_last: Some(0),
        ..policy()
    };
    let mut i = input(&[("v1.0.0", d(1))]);
    let mut top = index(&[d(2)]);
    top.children[0].media_type = OCI_INDEX.into();
    i.manifests.insert(d(1), top);
    i.manifests.insert(d(2), index(&[d(3), d(4)]));
    let p = plan_retention(&pol, &i, NOW);
    let order: Vec<Digest> = p.deletions.iter().map(|x| x.digest.clone()).collect();
    assert_eq!(order, vec![d(1), d(2), d(3), d(4)]);
    // The inner index not read: refuse.
    i.manifests.remove(&d(2));
    let p = plan_retention(&pol, &i, NOW);
    assert!(
        p.refused.as_deref().unwrap().contains("was not read"),
        "{p:?}"
    );
    assert!(p.to_delete().is_empty());
}

#[test]
fn referrers_go_with_their_subject_and_stay_with_a_kept_one() {
    let pol = Retention {
        keep_last: Some(1),
        ..policy()
    };
    let old = d(1);
    let new = d(2);
    let mut i = input(&[
        ("v1.0.0", old.clone()),
        ("v2.0.0", new.clone()),
        (&sig_tag(&old), d(11)),
        (&sig_tag(&new), d(12)),
        (&format!("sha256-{}.sbom", old.hex()), d(13)),
    ]);
    i.manifests.insert(d(11), referrer(&old));
    i.manifests.insert(d(12), referrer(&new));
    // d(13) is tagged in the schema but its manifest has no subject field: the tag decides.
    // d(14): an untagged referrer found through a referrers API.
    i.manifests.insert(d(14), referrer(&old));
    // An OCI referrers-index tag for the old subject, listing d(15).
    let ref_index_tag = format!("sha256-{}", old.hex());
    let mut listing = match &i.listing {
        Listing::Complete(t) => t.clone(),
        _ => unreachable!(),
    };
    listing.insert(ref_index_tag.clone(), d(16));
    i.listing = Listing::Complete(listing);
    i.manifests.insert(d(16), index(&[d(15)]));
    i.manifests.insert(d(15), referrer(&old));

    let p = plan_retention(&pol, &i, NOW);
    let order: Vec<Digest> = p.deletions.iter().map(|x| x.digest.clone()).collect();
    let pos = |x: &Digest| order.iter().position(|o| o == x).unwrap();
    assert_eq!(
        deleted_digests(&p),
        [d(1), d(11), d(13), d(14), d(15), d(16)]
            .into_iter()
            .collect()
    );
    for r in [d(11), d(13), d(14), d(15), d(16)] {
        assert!(
            pos(&r) < pos(&old),
            "referrer {r} before its subject: {order:?}"
        );
    }
    assert!(
        pos(&d(16)) < pos(&d(15)),
        "referrers index before its children"
    );
    assert_eq!(
        p.deletions[pos(&d(11))].reason,
        DeleteReason::ReferrerOf {
            subject: old.clone()
        }
    );
    assert_eq!(kept_reason(&p, &sig_tag(&new)), &KeepReason::ReferrerOfKept);
    assert_eq!(deleted_tags(&p), {
        let mut v = vec![
            "v1.0.0".to_string(),
            sig_tag(&old),
            format!("sha256-{}.sbom", old.hex()),
            ref_index_tag,
        ];
        v.sort();
        v
    });
}

#[test]
fn a_kept_referrer_keeps_its_subject() {
    let pol = Retention {
        keep_last: Some(1),
        ..policy()
    };
    // The signature's digest is also tagged with an unmatched tag, so it
    // stays; the subject it names must stay too.
    let mut i = input(&[
        ("v1.0.0", d(1)),
        ("v2.0.0", d(2)),
        (&sig_tag(&d(1)), d(11)),
        ("pinned-signature", d(11)),
    ]);
    i.manifests.insert(d(11), referrer(&d(1)));
    let p = plan_retention(&pol, &i, NOW);
    assert!(p.to_delete().is_empty(), "{p:#?}");
    assert_eq!(
        kept_reason(&p, "v1.0.0"),
        &KeepReason::ReferencedByKept { by: d(11) }
    );
    // An artifact with a subject under an ordinary, unmatched tag keeps its subject.
    let mut i = input(&[("v1.0.0", d(1)), ("v2.0.0", d(2)), ("sbom-of-v1", d(11))]);
    i.manifests.insert(d(11), referrer(&d(1)));
    let p = plan_retention(&pol, &i, NOW);
    assert!(p.to_delete().is_empty(), "{p:#?}");
}

#[test]
fn caps_and_incomplete_inventories() {
    let tags: Vec<(String, Digest)> = (0..10).map(|n| (format!("1.0.{n}"), d(n + 1))).collect();
    let refs: Vec<(&str, Digest)> = tags.iter().map(|(t, d)| (t.as_str(), d.clone())).collect();
    let pol = Retention {
        keep_last: Some(2),
        max_deletions_per_run: 7,
        ..policy()
    };
    let p = plan_retention(&pol, &input(&refs), NOW);
    assert_eq!(p.deletions.len(), 8);
    assert!(
        p.refused
            .as_deref()
            .unwrap()
            .contains("max_deletions_per_run = 7")
    );
    assert!(p.to_delete().is_empty());
    let p = plan_retention(
        &Retention {
            max_deletions_per_run: 8,
            ..pol.clone()
        },
        &input(&refs),
        NOW,
    );
    assert_eq!(p.to_delete().len(), 8);

    // Across repositories of one run.
    let mut plans = vec![p.clone(), p.clone()];
    assert!(apply_cap(&mut plans, 15));
    assert!(plans.iter().all(|p| p.to_delete().is_empty()));
    let mut plans = vec![p.clone(), p];
    assert!(!apply_cap(&mut plans, 16));

    // Incomplete listing.
    let p = plan_retention(
        &pol,
        &RepoInput::incomplete("r", "tags/list: connection reset"),
        NOW,
    );
    assert!(p.refused.unwrap().contains("connection reset"));
    // A tagged manifest that was not read.
    let mut i = input(&refs);
    i.manifests.remove(&d(1));
    let p = plan_retention(&pol, &i, NOW);
    assert!(p.refused.is_some() && p.to_delete().is_empty());
}

#[test]
fn untagged_expiry() {
    let pol = Retention {
        untagged_older_than: Some(Duration::from_secs(7 * DAY as u64)),
        ..policy()
    };
    let mut i = input(&[("v1.0.0", d(1)), ("latest", d(2))]);
    for n in [3, 4, 5, 7] {
        i.manifests.insert(d(n), image());
    }
    // d(6): untagged, recent, an index over d(7) (expired): d(7) stays.
    i.manifests.insert(d(6), index(&[d(7)]));
    i.untagged_since = HashMap::from([
        (d(1), NOW - 30 * DAY), // stale: tagged again
        (d(3), NOW - 8 * DAY),  // expired
        (d(4), NOW - 6 * DAY),  // not yet
        (d(5), NOW - 30 * DAY), // expired
        (d(6), NOW - DAY),
        (d(7), NOW - 30 * DAY),
        (d(9), NOW - 30 * DAY), // gone from the registry (not in manifests)
    ]);
    let p = plan_retention(&pol, &i, NOW);
    assert_eq!(deleted_digests(&p), [d(3), d(5)].into_iter().collect());
    assert!(p.deletions.iter().all(|x| x.tags.is_empty()));
    assert_eq!(
        p.deletions[0].reason,
        DeleteReason::UntaggedExpired {
            since: NOW - 8 * DAY,
            untagged_older_than_seconds: 7 * DAY
        }
    );
    assert_eq!(kept_reason(&p, "v1.0.0"), &KeepReason::NoAgePolicy);
    let k7 = p.kept.iter().find(|k| k.digest == d(7)).unwrap();
    assert_eq!(k7.reason, KeepReason::ReferencedByKept { by: d(6) });
    // Without the policy nothing untagged goes.
    let p = plan_retention(&policy(), &i, NOW);
    assert!(p.deletions.is_empty());
}

#[test]
fn removed_at_source() {
    let pol = Retention {
        keep_last: Some(10),
        delete_removed_at_source: true,
        protect: vec![Regex::new("^v3").unwrap()],
        ..policy()
    };
    let mut i = input(&[
        ("v1.0.0", d(1)),
        ("v2.0.0", d(2)),
        ("v3.0.0", d(3)),
        ("edge", d(4)),
    ]);
    // No source listing: nothing deleted for that reason.
    let p = plan_retention(&pol, &i, NOW);
    assert!(p.deletions.is_empty());
    i.source_tags = Some(["v1.0.0".to_string()].into_iter().collect());
    let p = plan_retention(&pol, &i, NOW);
    assert_eq!(
        deleted_tags(&p),
        strs(&["v2.0.0"]),
        "v3 protected, edge unmatched"
    );
    assert_eq!(p.deletions[0].reason, DeleteReason::RemovedAtSource);
}

/// Invariants over many generated repositories: whatever the policy, a
/// deleted digest is never pointed at by a staying tag, never reachable from
/// a kept manifest, and deletions come parents first.
#[test]
fn generated_repositories_keep_the_invariants() {
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let ones = Regex::new(r"^1\.").unwrap();
    for case in 0..3000 {
        let n_digests = 2 + next(12) as u32;
        let mut i = RepoInput::new("gen", BTreeMap::new());
        let mut listing = BTreeMap::new();
        for n in 1..=n_digests {
            let info = match next(4) {
                0 if n > 2 => {
                    let kids: Vec<Digest> = (0..1 + next(3))
                        .map(|_| d(1 + next(n as u64 - 1) as u32))
                        .collect();
                    let mut m = index(&kids);
                    m.children.dedup();
                    m
                }
                1 if n > 1 => referrer(&d(1 + next(n as u64 - 1) as u32)),
                _ => image(),
            };
            i.manifests.insert(d(n), info);
        }
        // Nested indexes must be declared as such.
        let kinds: HashMap<Digest, String> = i
            .manifests
            .iter()
            .map(|(k, v)| (k.clone(), v.media_type.clone()))
            .collect();
        for m in i.manifests.values_mut() {
            for c in &mut m.children {
                c.media_type = kinds[&c.digest].clone();
            }
        }
        for t in 0..next(10) {
            let target = d(1 + next(n_digests as u64) as u32);
            let name = match next(5) {
                0 => "latest".to_string(),
                1 => sig_tag(&d(1 + next(n_digests as u64) as u32)),
                _ => format!("1.{}.{t}", next(4)),
            };
            listing.insert(name, target);
        }
        for n in 1..=n_digests {
            if next(3) == 0 {
                i.untagged_since.insert(d(n), NOW - next(20) as i64 * DAY);
            }
        }
        for t in listing.keys() {
            i.created.insert(t.clone(), NOW - next(200) as i64 * DAY);
        }
        i.listing = Listing::Complete(listing.clone());
        let pol = Retention {
            match_tags: vec![ones.clone()],
            keep_last: [None, Some(0), Some(1), Some(3)][next(4) as usize],
            order_by: [OrderBy::Semver, OrderBy::Created, OrderBy::FirstSeen][next(3) as usize],
            older_than: [None, Some(Duration::from_secs(90 * DAY as u64))][next(2) as usize],
            untagged_older_than: [None, Some(Duration::from_secs(7 * DAY as u64))]
                [next(2) as usize],
            max_deletions_per_run: 1000,
            ..policy()
        };
        let p = plan_retention(&pol, &i, NOW);
        if p.refused.is_some() {
            continue;
        }
        let gone: BTreeSet<Digest> = deleted_digests(&p);
        let gone_tags: BTreeSet<String> = deleted_tags(&p).into_iter().collect();
        // Every tag of a deleted digest is listed with it; no staying tag points at one.
        for (t, dg) in &listing {
            assert_eq!(
                gone.contains(dg),
                gone_tags.contains(t),
                "case {case}: {t} {p:#?}"
            );
            if gone_tags.contains(t) && referrer_subject(t).is_none() {
                assert!(
                    pol.match_tags.iter().any(|r| r.is_match(t)),
                    "case {case}: unmatched {t} deleted"
                );
            }
        }
        // Nothing kept references a deleted manifest.
        let kept: Vec<Digest> = i
            .manifests
            .keys()
            .filter(|k| !gone.contains(*k))
            .filter(|k| listing.values().any(|v| v == *k) || i.untagged_since.contains_key(*k))
            .cloned()
            .collect();
        let graph = Graph::new(&listing, &i.manifests);
        let reach = graph.closure(kept.into_iter().map(|k| (k, Origin::Untagged)).collect());
        for g in &gone {
            assert!(
                !reach.contains_key(g),
                "case {case}: {g} deleted but kept-reachable: {p:#?}"
            );
        }
        // Parents first.
        let pos: HashMap<&Digest, usize> = p
            .deletions
            .iter()
            .enumerate()
            .map(|(n, x)| (&x.digest, n))
            .collect();
        for x in &p.deletions {
            let m = &i.manifests[&x.digest];
            for c in &m.children {
                if let Some(&pc) = pos.get(&c.digest) {
                    assert!(pos[&x.digest] < pc, "case {case}: child before parent");
                }
            }
            if let Some(s) = &m.subject {
                if let Some(&ps) = pos.get(s) {
                    assert!(pos[&x.digest] < ps, "case {case}: subject before referrer");
                }
            }
        }
    }
}
