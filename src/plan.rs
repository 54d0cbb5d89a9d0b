//! The pure decision step: from what the source and targets hold (an
//! inventory), which tags must be copied where, and why. No I/O here, so
//! `plan` (a dry run) and `sync` decide with the same code.

use std::collections::HashMap;

use serde::Serialize;

use crate::oci::{Digest, RawManifest};
use crate::reference::Location;

/// One selected source tag and the digest the targets should end up holding
/// (after platform filtering, which may produce a new index).
#[derive(Clone, Debug)]
pub(crate) struct SourceTag {
    pub tag: String,
    pub digest: Digest,
    /// A referrer in the `sha256-<hex>[.sig|.att|.sbom]` tag schema: copied
    /// after every ordinary tag, so after its subject.
    pub referrer: bool,
}

/// What one target holds for the tags of interest. A tag missing from
/// `digests` is absent at the target.
#[derive(Clone, Debug)]
pub(crate) struct TargetTags {
    pub location: Location,
    pub digests: HashMap<String, Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TargetAction {
    /// The target already holds the same digest under this tag.
    InSync,
    /// The tag is absent at the target.
    Create,
    /// The target's tag points at another digest.
    Update { from: Digest },
    /// `immutable = true` and the target's tag points at another digest.
    KeepImmutable { existing: Digest },
    /// This rule's retention deleted this digest under this tag at the
    /// target: copying it again would only have it deleted again.
    DeletedByRetention,
    /// This rule's retention, planned against the target as it will be after
    /// this run's copies, would delete it in the same run: not copied.
    DroppedByRetention,
    /// `[rule.verify]`: the image has no valid signature; nothing of it is
    /// written (what the target holds is left alone).
    Refused {
        reason: crate::verify::Refusal,
        detail: String,
    },
}

impl TargetAction {
    pub fn needs_copy(&self) -> bool {
        matches!(self, TargetAction::Create | TargetAction::Update { .. })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TagPlan {
    pub tag: String,
    pub digest: Digest,
    pub referrer: bool,
    /// What is written: the tag (as today), or a referrer by digest, or a
    /// merged fallback index.
    pub write: Write,
    /// One entry per target concerned (every target of the inventory, in its
    /// order, except for a fallback index, which concerns one).
    pub targets: Vec<(Location, TargetAction)>,
}

/// How a plan's manifest reaches a target.
#[derive(Clone, Debug, Default)]
pub(crate) enum Write {
    /// Copied under its tag.
    #[default]
    Tag,
    /// A referrer found by its subject (referrers API or fallback index),
    /// pushed by digest; `depth` 1 refers to a copied image, 2 to such a
    /// referrer, ...: each depth is written after the one before.
    Referrer { depth: u32 },
    /// An untagged top-level manifest of an `oci:` source, pushed by
    /// digest (listed untagged in a layout target's `index.json`).
    Entry,
    /// The `sha256-<hex>` index listing a subject's referrers at a target
    /// without the API: the target's own entries plus the missing ones.
    FallbackIndex(RawManifest),
}

impl TagPlan {
    /// The order of writing: ordinary tags, tag-schema referrers, referrers
    /// by depth, then fallback indexes (which list what was pushed before).
    pub(crate) fn stage(&self) -> u32 {
        match (&self.write, self.referrer) {
            (Write::Tag, false) | (Write::Entry, _) => 0,
            (Write::Tag, true) => 1,
            (Write::Referrer { depth }, _) => 1 + depth,
            (Write::FallbackIndex(_), _) => u32::MAX,
        }
    }
}

/// Decides, for each source tag and target, what to do. Ordinary tags come
/// before referrer tags, so that a signature is never pushed before its subject.
pub(crate) fn plan_tags(
    tags: &[SourceTag],
    targets: &[TargetTags],
    immutable: bool,
) -> Vec<TagPlan> {
    let mut plans: Vec<TagPlan> = tags
        .iter()
        .map(|t| TagPlan {
            tag: t.tag.clone(),
            digest: t.digest.clone(),
            referrer: t.referrer,
            write: Write::Tag,
            targets: targets
                .iter()
                .map(|target| {
                    let action = match target.digests.get(&t.tag) {
                        None => TargetAction::Create,
                        Some(d) if *d == t.digest => TargetAction::InSync,
                        Some(d) if immutable => TargetAction::KeepImmutable {
                            existing: d.clone(),
                        },
                        Some(d) => TargetAction::Update { from: d.clone() },
                    };
                    (target.location.clone(), action)
                })
                .collect(),
        })
        .collect();
    // Stable: keeps the newest-first order within each group.
    plans.sort_by_key(|p| p.referrer);
    plans
}

/// Whether a tag names a referrer in the tag schema, and of which digest.
pub(crate) fn referrer_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = match rest.split_once('.') {
        Some((h, s)) => (h, Some(s)),
        None => (rest, None),
    };
    let suffix_ok = matches!(suffix, None | Some("sig") | Some("att") | Some("sbom"));
    (hex.len() == 64 && suffix_ok && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn loc(n: &str) -> Location {
        Location::Registry {
            host: "h".into(),
            repo: n.into(),
        }
    }

    #[test]
    fn decides_per_target() {
        let tags = vec![
            SourceTag {
                tag: format!("sha256-{}.sig", "a".repeat(64)),
                digest: d('e'),
                referrer: true,
            },
            SourceTag {
                tag: "v1".into(),
                digest: d('a'),
                referrer: false,
            },
            SourceTag {
                tag: "v2".into(),
                digest: d('b'),
                referrer: false,
            },
        ];
        let t1 = TargetTags {
            location: loc("t1"),
            digests: HashMap::from([("v1".to_string(), d('a'))]),
        };
        let t2 = TargetTags {
            location: loc("t2"),
            digests: HashMap::from([("v2".to_string(), d('c'))]),
        };
        let plans = plan_tags(&tags, &[t1.clone(), t2.clone()], false);
        assert_eq!(
            plans.iter().map(|p| p.tag.as_str()).collect::<Vec<_>>()[..2],
            ["v1", "v2"]
        );
        assert!(plans[2].referrer, "referrers come last");
        assert_eq!(plans[0].targets[0].1, TargetAction::InSync);
        assert_eq!(plans[0].targets[1].1, TargetAction::Create);
        assert_eq!(plans[1].targets[1].1, TargetAction::Update { from: d('c') });
        assert!(
            plans
                .iter()
                .any(|p| p.targets.iter().any(|(_, a)| a.needs_copy()))
        );

        let plans = plan_tags(&tags, &[t1, t2], true);
        assert_eq!(
            plans[1].targets[1].1,
            TargetAction::KeepImmutable { existing: d('c') }
        );
        assert_eq!(
            plans[1].targets[0].1,
            TargetAction::Create,
            "immutable still creates missing tags"
        );
    }

    #[test]
    fn referrer_tags() {
        let hex = "ab".repeat(32);
        assert_eq!(
            referrer_subject(&format!("sha256-{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            referrer_subject(&format!("sha256-{hex}.sig")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(referrer_subject(&format!("sha256-{hex}.foo")), None);
        assert_eq!(referrer_subject("sha256-abc"), None);
        assert_eq!(referrer_subject("v1"), None);
    }
}
