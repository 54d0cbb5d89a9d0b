//! The pure part of copying referrers (SPEC section 4 step 4): from the
//! referrers found at the source and what each target lists, which referrers
//! are pushed where, and at a target without the referrers API, the merged
//! `sha256-<hex>` index that lists them. No I/O: `plan` shows these copies
//! and `sync` makes exactly them.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde_json::Value;

use super::runplan::TargetFacts;
use crate::oci::{Digest, OCI_INDEX, RawManifest};
use crate::plan::{TagPlan, TargetAction, Write};

/// A referrer found at the source (through the API or a fallback index).
#[derive(Clone, Debug)]
pub(crate) struct SourceReferrer {
    pub subject: Digest,
    pub digest: Digest,
    /// The selected image (tag digest) the chain of subjects starts from: a
    /// referrer goes only where that image is or arrives.
    pub root: Digest,
    /// 1 for a referrer of a copied image, 2 for a referrer of such a
    /// referrer, and so on: each level is written after the one before.
    pub depth: u32,
    /// Its descriptor as a referrers index lists it (media type, digest,
    /// size, `artifactType`, annotations), kept as the source wrote it.
    pub entry: Value,
}

/// What one target holds of the referrers of interest.
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetReferrers {
    /// The target answers the referrers API: it indexes what is pushed.
    pub api: bool,
    /// Per subject, the referrers the target lists (its API, or its
    /// fallback index).
    pub listed: HashMap<Digest, HashSet<Digest>>,
    /// Per subject, the fallback index the target holds (no API).
    pub fallback: HashMap<Digest, RawManifest>,
    /// Reading the target failed: no referrer is written there this run
    /// (a fallback index written blind could drop another tool's entries).
    pub unreadable: bool,
}

/// The tag-schema name of `subject`'s fallback index.
pub(crate) fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// One push by digest per referrer (to the targets that do not list it),
/// then per target without the API and subject, the merged fallback index.
/// A referrer goes only to targets where its image is or arrives (per
/// `tags`, the pair's tag plans after retention): not where retention
/// drops it or an immutable tag keeps another digest.
pub(crate) fn plan_referrers(
    found: &[SourceReferrer],
    targets: &[TargetFacts],
    tags: &[TagPlan],
) -> Vec<TagPlan> {
    let present: Vec<HashSet<&Digest>> = (0..targets.len())
        .map(|k| {
            tags.iter()
                .filter(|p| matches!(p.write, Write::Tag | Write::Entry))
                .filter(|p| {
                    p.targets
                        .get(k)
                        .is_some_and(|(_, a)| a.needs_copy() || *a == TargetAction::InSync)
                })
                .map(|p| &p.digest)
                .collect()
        })
        .collect();
    let found_at = |k: usize| {
        let here = &present[k];
        found.iter().filter(move |r| here.contains(&r.root))
    };
    let listed = |t: &TargetFacts, r: &SourceReferrer| {
        t.referrers
            .listed
            .get(&r.subject)
            .is_some_and(|s| s.contains(&r.digest))
    };
    let mut plans: Vec<TagPlan> = found
        .iter()
        .map(|r| TagPlan {
            tag: fallback_tag(&r.subject),
            digest: r.digest.clone(),
            referrer: true,
            write: Write::Referrer { depth: r.depth },
            targets: targets
                .iter()
                .enumerate()
                .filter(|(k, t)| !t.referrers.unreadable && present[*k].contains(&r.root))
                .map(|(_, t)| {
                    let action = if listed(t, r) {
                        TargetAction::InSync
                    } else {
                        TargetAction::Create
                    };
                    (t.location.clone(), action)
                })
                .collect(),
        })
        .filter(|p: &TagPlan| !p.targets.is_empty())
        .collect();
    for (k, t) in targets.iter().enumerate() {
        if t.referrers.api || t.referrers.unreadable {
            continue;
        }
        let mut subjects: Vec<&Digest> = Vec::new();
        let mut missing: HashMap<&Digest, Vec<&Value>> = HashMap::new();
        for r in found_at(k).filter(|r| !listed(t, r)) {
            if !missing.contains_key(&r.subject) {
                subjects.push(&r.subject);
            }
            missing.entry(&r.subject).or_default().push(&r.entry);
        }
        for subject in subjects {
            let existing = t.referrers.fallback.get(subject);
            let Some(merged) = merge_index(existing, &missing[subject]) else {
                continue; // an existing "index" we cannot read: left alone
            };
            let action = match existing {
                Some(e) => TargetAction::Update {
                    from: e.digest.clone(),
                },
                None => TargetAction::Create,
            };
            plans.push(TagPlan {
                tag: fallback_tag(subject),
                digest: merged.digest.clone(),
                referrer: true,
                write: Write::FallbackIndex(merged),
                targets: vec![(t.location.clone(), action)],
            });
        }
    }
    plans
}

/// `existing` (another tool's entries included, in their order) with
/// `entries` appended; a new index when there is none. `None` when
/// `existing` is not an index with a manifests list: never overwritten.
pub(crate) fn merge_index(
    existing: Option<&RawManifest>,
    entries: &[&Value],
) -> Option<RawManifest> {
    let mut index: Value = match existing {
        Some(raw) => serde_json::from_slice(&raw.bytes).ok()?,
        None => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
        }),
    };
    let list = index.get_mut("manifests")?.as_array_mut()?;
    let have: HashSet<String> = list
        .iter()
        .filter_map(|e| e.get("digest")?.as_str().map(str::to_string))
        .collect();
    for e in entries {
        let d = e.get("digest").and_then(Value::as_str).unwrap_or("");
        if !have.contains(d) {
            list.push((*e).clone());
        }
    }
    let bytes = Bytes::from(serde_json::to_vec(&index).ok()?);
    Some(RawManifest {
        media_type: OCI_INDEX.to_string(),
        digest: Digest::of(&bytes),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Location;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn entry(c: char) -> Value {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d(c).to_string(), "size": 10, "artifactType": "application/spdx+json"})
    }

    fn referrer(subject: char, c: char) -> SourceReferrer {
        SourceReferrer {
            subject: d(subject),
            digest: d(c),
            root: d(subject),
            depth: 1,
            entry: entry(c),
        }
    }

    fn target(name: &str, referrers: TargetReferrers) -> TargetFacts {
        TargetFacts {
            location: Location::Registry {
                host: "h".into(),
                repo: name.into(),
            },
            digests: HashMap::new(),
            retained_away: HashSet::new(),
            referrers,
        }
    }

    fn image(c: char, action: TargetAction) -> TagPlan {
        TagPlan {
            tag: "v1".into(),
            digest: d(c),
            referrer: false,
            write: Write::Tag,
            targets: vec![(target("t", Default::default()).location, action)],
        }
    }

    #[test]
    fn no_referrer_goes_where_its_image_does_not() {
        for action in [
            TargetAction::DroppedByRetention,
            TargetAction::DeletedByRetention,
            TargetAction::KeepImmutable { existing: d('e') },
        ] {
            let plans = plan_referrers(
                &[referrer('a', 'b')],
                &[target("t", Default::default())],
                &[image('a', action)],
            );
            assert!(plans.is_empty(), "{plans:?}");
        }
    }

    #[test]
    fn api_targets_get_pushes_only_and_listed_ones_are_in_sync() {
        let api = TargetReferrers {
            api: true,
            listed: HashMap::from([(d('a'), HashSet::from([d('b')]))]),
            fallback: HashMap::new(),
            unreadable: false,
        };
        let plans = plan_referrers(
            &[referrer('a', 'b'), referrer('a', 'c')],
            &[target("t", api)],
            &[image('a', TargetAction::Create)],
        );
        assert_eq!(plans.len(), 2, "no fallback index at an API target");
        assert_eq!(plans[0].targets[0].1, TargetAction::InSync);
        assert_eq!(plans[1].targets[0].1, TargetAction::Create);
        assert!(matches!(plans[1].write, Write::Referrer { depth: 1 }));
    }

    #[test]
    fn fallback_index_keeps_foreign_entries_and_is_stable_when_complete() {
        let foreign = merge_index(None, &[&entry('f')]).unwrap();
        let no_api = TargetReferrers {
            api: false,
            listed: HashMap::from([(d('a'), HashSet::from([d('f')]))]),
            fallback: HashMap::from([(d('a'), foreign.clone())]),
            unreadable: false,
        };
        let plans = plan_referrers(
            &[referrer('a', 'b')],
            &[target("t", no_api.clone())],
            &[image('a', TargetAction::InSync)],
        );
        assert_eq!(plans.len(), 2);
        let Write::FallbackIndex(merged) = &plans[1].write else {
            panic!("expected the merged index: {plans:?}")
        };
        assert_eq!(plans[1].tag, fallback_tag(&d('a')));
        assert_eq!(
            plans[1].targets[0].1,
            TargetAction::Update {
                from: foreign.digest.clone()
            }
        );
        let v: Value = serde_json::from_slice(&merged.bytes).unwrap();
        let digests: Vec<&str> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, [d('f').as_str(), d('b').as_str()]);

        // Everything listed already: nothing is written.
        let mut done = no_api;
        done.listed.get_mut(&d('a')).unwrap().insert(d('b'));
        let plans = plan_referrers(
            &[referrer('a', 'b')],
            &[target("t", done)],
            &[image('a', TargetAction::InSync)],
        );
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].targets[0].1, TargetAction::InSync);
    }

    #[test]
    fn unreadable_fallback_index_is_not_overwritten() {
        let junk = RawManifest {
            media_type: OCI_INDEX.into(),
            digest: Digest::of(b"x"),
            bytes: Bytes::from_static(b"x"),
        };
        assert!(merge_index(Some(&junk), &[&entry('b')]).is_none());
    }
}
