//! Why retention deletes a manifest or keeps it: the reasons every plan
//! reports, as data (JSON) and as the text an operator reads.

use std::fmt;

use serde::Serialize;

use super::plan::Unix;
use crate::config::OrderBy;
use crate::oci::Digest;

/// The order a rank counts in: the rule's `order_by`, named in every reason
/// that gives a rank, so "number 3" says number 3 of what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RankedBy {
    Semver,
    Created,
    FirstSeen,
}

impl From<OrderBy> for RankedBy {
    fn from(o: OrderBy) -> Self {
        match o {
            OrderBy::Semver => RankedBy::Semver,
            OrderBy::Created => RankedBy::Created,
            OrderBy::FirstSeen => RankedBy::FirstSeen,
        }
    }
}

impl fmt::Display for RankedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RankedBy::Semver => "by version (semver)",
            RankedBy::Created => "by created time",
            RankedBy::FirstSeen => "by first seen",
        })
    }
}

/// Why a manifest is deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeleteReason {
    /// Ranked beyond `keep_last` (rank counts from 1 = newest).
    BeyondKeepLast {
        rank: usize,
        by: RankedBy,
        keep_last: usize,
    },
    /// Older than `older_than` (and, with `keep_last`, beyond it).
    OlderThan {
        rank: usize,
        by: RankedBy,
        age_seconds: i64,
        older_than_seconds: i64,
    },
    /// The tag no longer exists at the source (`delete_removed_at_source`).
    RemovedAtSource,
    /// Untagged for longer than `untagged_older_than`.
    UntaggedExpired {
        since: Unix,
        untagged_older_than_seconds: i64,
    },
    /// A referrer (signature, SBOM, ...) of a deleted manifest.
    ReferrerOf { subject: Digest },
    /// A child of a deleted index, referenced by nothing kept.
    ChildOf { index: Digest },
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::BeyondKeepLast {
                rank,
                by,
                keep_last,
            } => {
                write!(f, "number {rank} {by}, beyond keep_last = {keep_last}")
            }
            DeleteReason::OlderThan {
                rank,
                by,
                age_seconds,
                older_than_seconds,
            } => write!(
                f,
                "number {rank} {by}, {} old, older than {}",
                human(*age_seconds),
                human(*older_than_seconds)
            ),
            DeleteReason::RemovedAtSource => f.write_str("removed at the source"),
            DeleteReason::UntaggedExpired {
                since,
                untagged_older_than_seconds,
            } => write!(
                f,
                "untagged since {} (unix), longer than {}",
                since,
                human(*untagged_older_than_seconds)
            ),
            DeleteReason::ReferrerOf { subject } => {
                write!(f, "referrer of deleted {}", subject.short())
            }
            DeleteReason::ChildOf { index } => {
                write!(f, "child of deleted index {}", index.short())
            }
        }
    }
}

/// Why a tag or manifest is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeepReason {
    /// `match` does not select the tag: retention never touches it.
    NotMatched,
    Protected,
    /// Among the newest `keep_last`.
    Newest {
        rank: usize,
        by: RankedBy,
        keep_last: usize,
    },
    /// Beyond `keep_last` (if any) but not older than `older_than`.
    TooRecent {
        rank: usize,
        by: RankedBy,
        age_seconds: i64,
        older_than_seconds: i64,
    },
    /// The age or order of the tag cannot be told (no usable `created`
    /// time, not a version under `order_by = "semver"`).
    OrderUnknown {
        detail: String,
    },
    /// A referrer whose subject is kept.
    ReferrerOfKept,
    /// Untagged, but not yet for `untagged_older_than` (or no such policy).
    UntaggedRecently {
        since: Unix,
    },
    /// Would be deleted, but a kept tag points at the same digest.
    SharedWithKeptTag {
        tag: String,
    },
    /// Would be deleted, but a kept manifest references it (a kept index
    /// lists it, or a kept referrer names it as subject).
    ReferencedByKept {
        by: Digest,
    },
    /// Matched but no age policy applies (only untagged/removed policies set).
    NoAgePolicy,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotMatched => f.write_str("not matched by retention.match"),
            KeepReason::Protected => f.write_str("protected"),
            KeepReason::Newest {
                rank,
                by,
                keep_last,
            } => {
                write!(f, "number {rank} {by}, within keep_last = {keep_last}")
            }
            KeepReason::TooRecent {
                rank,
                by,
                age_seconds,
                older_than_seconds,
            } => write!(
                f,
                "number {rank} {by}, {} old, not older than {}",
                human(*age_seconds),
                human(*older_than_seconds)
            ),
            KeepReason::OrderUnknown { detail } => write!(f, "kept to be safe: {detail}"),
            KeepReason::ReferrerOfKept => f.write_str("referrer of a kept manifest"),
            KeepReason::UntaggedRecently { since } => {
                write!(f, "untagged since {since} (unix), not long enough")
            }
            KeepReason::SharedWithKeptTag { tag } => {
                write!(f, "same digest as kept tag {tag:?}")
            }
            KeepReason::ReferencedByKept { by } => {
                write!(f, "referenced by kept manifest {}", by.short())
            }
            KeepReason::NoAgePolicy => f.write_str("no keep_last or older_than set"),
        }
    }
}

/// A duration as an operator writes it in the config: `90d`, `36h`, `15m`, `42s`.
fn human(seconds: i64) -> String {
    let (sign, s) = if seconds < 0 {
        ("-", -seconds)
    } else {
        ("", seconds)
    };
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    let text = if d > 0 {
        if h > 0 {
            format!("{d}d{h}h")
        } else {
            format!("{d}d")
        }
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    };
    format!("{sign}{text}")
}
