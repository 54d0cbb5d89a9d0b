//! The run plan with data: copies, the journal, and retention planned
//! against the target as it will be after the copies.

use std::collections::BTreeMap;

use regex::Regex;

use super::*;
use crate::config::OrderBy;
use crate::engine::referrer_plan::SourceReferrer;
use crate::oci::OCI_MANIFEST;

const NOW: Unix = 1_800_000_000;

fn d(n: u32) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn loc(repo: &str) -> Location {
    Location::Registry {
        host: "t.example".into(),
        repo: repo.into(),
    }
}

fn keep_last(n: usize) -> Retention {
    Retention {
        match_tags: vec![Regex::new(r"^\d+\.\d+\.\d+$").unwrap()],
        keep_last: Some(n),
        order_by: OrderBy::Semver,
        older_than: None,
        protect: vec![],
        untagged_older_than: None,
        delete_removed_at_source: false,
        max_deletions_per_run: 100,
    }
}

fn image() -> ManifestInfo {
    ManifestInfo {
        media_type: OCI_MANIFEST.into(),
        ..Default::default()
    }
}

/// Source tag `t` points at digest `n`.
fn source(tags: &[(&str, u32)]) -> Vec<SourceTag> {
    tags.iter()
        .map(|(t, n)| SourceTag {
            tag: t.to_string(),
            digest: d(*n),
            referrer: false,
        })
        .collect()
}

fn digests(tags: &[(&str, u32)]) -> HashMap<String, Digest> {
    tags.iter().map(|(t, n)| (t.to_string(), d(*n))).collect()
}

/// Retention's reading of a target holding `tags` (each an image).
fn read(repo: &str, tags: &[(&str, u32)]) -> RepoInput {
    let mut input = RepoInput::new(
        loc(repo).to_string(),
        tags.iter()
            .map(|(t, n)| (t.to_string(), d(*n)))
            .collect::<BTreeMap<_, _>>(),
    );
    for (_, n) in tags {
        input.manifests.insert(d(*n), image());
    }
    input
}

/// What the source says of digests 1..=20.
fn facts() -> CopyFacts {
    CopyFacts {
        manifests: (1..=20).map(|n| (d(n), image())).collect(),
        created: HashMap::new(),
    }
}

struct Case {
    name: &'static str,
    source: Vec<SourceTag>,
    target: Vec<(&'static str, u32)>,
    retained_away: Vec<(&'static str, u32)>,
    immutable: bool,
    retention: Option<Retention>,
    /// Without the source's manifests (the planner must then refuse).
    no_facts: bool,
    /// Expected action per source tag: c(reate), u(pdate), s(in sync),
    /// i(mmutable), j(ournal: deleted by retention), r(etention would delete).
    actions: &'static str,
    /// Expected deletions (digest numbers), in order.
    deletions: Vec<u32>,
    refused: bool,
    referrers: Vec<SourceReferrer>,
    /// Tags `[rule.verify]` refused (action x).
    unsigned: Vec<&'static str>,
}

fn case(name: &'static str, actions: &'static str) -> Case {
    Case {
        name,
        source: source(&[("1.0.0", 1), ("1.1.0", 2), ("1.2.0", 3), ("1.3.0", 4)]),
        target: vec![],
        retained_away: vec![],
        immutable: false,
        retention: None,
        no_facts: false,
        actions,
        deletions: vec![],
        refused: false,
        referrers: vec![],
        unsigned: vec![],
    }
}

fn letter(a: &TargetAction) -> char {
    match a {
        TargetAction::Create => 'c',
        TargetAction::Update { .. } => 'u',
        TargetAction::InSync => 's',
        TargetAction::KeepImmutable { .. } => 'i',
        TargetAction::DeletedByRetention => 'j',
        TargetAction::DroppedByRetention => 'r',
        TargetAction::Refused { .. } => 'x',
    }
}

fn run(c: &Case) -> RulePlan {
    let target = TargetFacts {
        location: loc("app"),
        digests: digests(&c.target),
        retained_away: c
            .retained_away
            .iter()
            .map(|(t, n)| (t.to_string(), d(*n)))
            .collect(),
        referrers: Default::default(),
    };
    let facts = RuleFacts {
        immutable: c.immutable,
        retention: c.retention.as_ref(),
        now: NOW,
        repos: vec![RepoFacts {
            tags: c.source.clone(),
            referrers: c.referrers.clone(),
            refused: (c.unsigned.iter())
                .map(|t| {
                    (
                        t.to_string(),
                        (crate::verify::Refusal::Unsigned, String::new()),
                    )
                })
                .collect(),
            entries: Vec::new(),
            targets: vec![target],
        }],
        retention_inputs: c.retention.iter().map(|_| read("app", &c.target)).collect(),
        copy_facts: if c.no_facts {
            CopyFacts::default()
        } else {
            facts()
        },
    };
    plan_rule(&facts)
}

#[test]
fn run_plans() {
    let cases = vec![
        case("fresh target, no retention: everything is created", "cccc"),
        Case {
            target: vec![("1.0.0", 1), ("1.1.0", 9)],
            ..case("partly in step: one in sync, one moved", "succ")
        },
        Case {
            target: vec![("1.1.0", 9)],
            immutable: true,
            ..case("immutable keeps a moved tag", "cicc")
        },
        Case {
            retained_away: vec![("1.0.0", 1), ("1.1.0", 7)],
            ..case(
                "the journal: only the same tag and digest stays away",
                "jccc",
            )
        },
        Case {
            target: vec![("0.9.0", 10)],
            retention: Some(keep_last(2)),
            deletions: vec![10],
            ..case(
                "keep_last at a target the sync is about to fill: the old tag goes, the old versions are not copied",
                "rrcc",
            )
        },
        Case {
            target: vec![("1.3.0", 4), ("1.2.0", 3)],
            retention: Some(keep_last(2)),
            ..case("a target in step with keep_last: nothing to do", "rrss")
        },
        Case {
            target: vec![("0.9.0", 10)],
            retention: Some(keep_last(5)),
            ..case("keep_last above what there is: copies only", "cccc")
        },
        Case {
            target: vec![("1.0.0", 9), ("0.9.0", 10)],
            retention: Some(keep_last(5)),
            unsigned: vec!["1.0.0", "1.3.0"],
            ..case(
                "refused by verification: not copied, and what the target holds stays",
                "xccx",
            )
        },
        Case {
            target: vec![("0.9.0", 10)],
            retention: Some(Retention {
                max_deletions_per_run: 0,
                ..keep_last(2)
            }),
            refused: true,
            deletions: vec![1, 2, 10],
            ..case(
                "over the cap: retention refuses (deletes nothing), so every copy is made",
                "cccc",
            )
        },
        Case {
            target: vec![("0.9.0", 10)],
            retention: Some(keep_last(2)),
            no_facts: true,
            refused: true,
            ..case(
                "source manifests unknown: retention refuses, every copy made",
                "cccc",
            )
        },
    ];
    for c in &cases {
        let plan = run(c);
        let got: String = plan.copies[0]
            .iter()
            .map(|p| letter(&p.targets[0].1))
            .collect();
        // Plans come newest first; the case lists actions in source order.
        let mut by_tag: Vec<(String, char)> = plan.copies[0]
            .iter()
            .map(|p| (p.tag.clone(), letter(&p.targets[0].1)))
            .collect();
        by_tag.sort_by(|a, b| crate::filter::newest_first(&b.0, &a.0));
        let in_source_order: String = c
            .source
            .iter()
            .map(|t| by_tag.iter().find(|(tag, _)| *tag == t.tag).unwrap().1)
            .collect();
        assert_eq!(in_source_order, c.actions, "{}: {got}", c.name);
        let retention = plan.retention.first();
        let deleted: Vec<u32> = retention
            .map(|r| {
                r.deletions
                    .iter()
                    .map(|x| u32::from_str_radix(x.digest.hex(), 16).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(deleted, c.deletions, "{}", c.name);
        assert_eq!(
            retention.is_some_and(|r| r.refused.is_some()),
            c.refused,
            "{}: {retention:?}",
            c.name
        );
    }
}

#[test]
fn an_updated_tag_that_retention_would_delete_is_not_updated() {
    // 1.0.0 moved at the source (5) but keep_last 1 deletes it after the
    // copy: the update is dropped, and the old digest goes as planned
    // against the target as it stays.
    let c = Case {
        source: source(&[("1.0.0", 5), ("2.0.0", 6)]),
        target: vec![("1.0.0", 1)],
        retention: Some(keep_last(1)),
        deletions: vec![1],
        ..case("update dropped", "rc")
    };
    let plan = run(&c);
    let actions: Vec<(String, char)> = plan.copies[0]
        .iter()
        .map(|p| (p.tag.clone(), letter(&p.targets[0].1)))
        .collect();
    assert!(actions.contains(&("1.0.0".into(), 'r')), "{actions:?}");
    assert!(actions.contains(&("2.0.0".into(), 'c')), "{actions:?}");
    let deleted: Vec<&Digest> = plan.retention[0]
        .deletions
        .iter()
        .map(|x| &x.digest)
        .collect();
    assert_eq!(deleted, vec![&d(1)]);
}

#[test]
fn an_incomplete_reading_deletes_nothing_and_copies_everything() {
    let c = Case {
        target: vec![("0.9.0", 10)],
        retention: Some(keep_last(1)),
        ..case("incomplete", "cccc")
    };
    let target = TargetFacts {
        location: loc("app"),
        digests: digests(&c.target),
        retained_away: Default::default(),
        referrers: Default::default(),
    };
    let facts_in = RuleFacts {
        immutable: false,
        retention: c.retention.as_ref(),
        now: NOW,
        repos: vec![RepoFacts {
            tags: c.source.clone(),
            referrers: c.referrers.clone(),
            refused: (c.unsigned.iter())
                .map(|t| {
                    (
                        t.to_string(),
                        (crate::verify::Refusal::Unsigned, String::new()),
                    )
                })
                .collect(),
            entries: Vec::new(),
            targets: vec![target],
        }],
        retention_inputs: vec![RepoInput::incomplete(
            loc("app").to_string(),
            "the source could not be read",
        )],
        copy_facts: facts(),
    };
    let plan = plan_rule(&facts_in);
    assert!(plan.retention[0].to_delete().is_empty());
    assert!(plan.retention[0].refused.is_some());
    assert!(
        plan.copies[0]
            .iter()
            .all(|p| p.targets[0].1 == TargetAction::Create)
    );
}

#[test]
fn projection_puts_copies_in_place() {
    let input = read("app", &[("1.0.0", 1)]);
    let p = project(
        &input,
        &[("1.0.0".into(), d(2)), ("2.0.0".into(), d(3))],
        &facts(),
        NOW,
    );
    let Listing::Complete(tags) = &p.listing else {
        panic!("complete")
    };
    assert_eq!(tags["1.0.0"], d(2));
    assert_eq!(tags["2.0.0"], d(3));
    assert!(p.manifests.contains_key(&d(3)));
    assert_eq!(p.first_seen["2.0.0"], NOW);
}

#[test]
fn a_copy_that_moves_the_last_tag_of_a_digest_leaves_it_untagged_from_now() {
    // 1.0.0 moves from 1 to 2; 3 keeps a tag (latest) while 2.0.0 moves
    // off it; 4 was tracked as untagged and a copy tags it again.
    let mut input = read("app", &[("1.0.0", 1), ("2.0.0", 3), ("latest", 3)]);
    input.manifests.insert(d(4), image());
    input.untagged_since.insert(d(4), NOW - 50);
    let arriving = [
        ("1.0.0".into(), d(2)),
        ("2.0.0".into(), d(5)),
        ("3.0.0".into(), d(4)),
    ];
    let p = project(&input, &arriving, &facts(), NOW);
    assert_eq!(p.untagged_since, HashMap::from([(d(1), NOW)]));
    assert_eq!(
        untagged_changes(&input, &p),
        vec![
            StateUpdate::Untagged {
                digest: d(1),
                since: NOW
            },
            StateUpdate::Forget { digest: d(4) },
        ]
    );
    // Recorded now, so not expired in this run even at a zero window; a
    // later run past the window deletes it.
    let mut policy = keep_last(10);
    policy.untagged_older_than = Some(std::time::Duration::from_secs(0));
    assert!(plan_retention(&policy, &p, NOW).deletions.is_empty());
    policy.untagged_older_than = Some(std::time::Duration::from_secs(60));
    let later = plan_retention(&policy, &p, NOW + 61);
    let gone: Vec<&Digest> = later.deletions.iter().map(|x| &x.digest).collect();
    assert_eq!(gone, vec![&d(1)]);
}

#[test]
fn an_unchanged_or_incomplete_reading_learns_nothing() {
    let input = read("app", &[("1.0.0", 1)]);
    let same = project(&input, &[("1.0.0".into(), d(1))], &facts(), NOW);
    assert!(untagged_changes(&input, &same).is_empty());
    let broken = RepoInput::incomplete("app", "unreadable");
    let p = project(&broken, &[("1.0.0".into(), d(2))], &facts(), NOW);
    assert!(untagged_changes(&broken, &p).is_empty());
}

#[test]
fn referrers_by_digest_are_planned_after_tags_and_never_count_as_tags_for_retention() {
    // keep_last 1 over every tag: a referrer by digest is no tag, so
    // retention neither drops its copy nor sees it arrive.
    let entry = serde_json::json!({"mediaType": crate::oci::OCI_MANIFEST,
        "digest": d(20).to_string(), "size": 3});
    let c = Case {
        source: source(&[("1.0.0", 1)]),
        retention: Some(Retention {
            match_tags: vec![Regex::new(".*").unwrap()],
            ..keep_last(1)
        }),
        referrers: vec![SourceReferrer {
            subject: d(1),
            digest: d(20),
            root: d(1),
            depth: 1,
            entry,
        }],
        ..case("referrer", "c")
    };
    let plan = run(&c);
    let copies = &plan.copies[0];
    // The tag, the referrer (pushed by digest), the target's new fallback
    // index (this target has no referrers API).
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|p| p.targets[0].1 == TargetAction::Create)
    );
    let stages: Vec<u32> = copies.iter().map(|p| p.stage()).collect();
    assert_eq!(stages, [0, 2, u32::MAX]);
    assert_eq!(copies[1].digest, d(20));
    assert!(plan.retention[0].deletions.is_empty());
}
