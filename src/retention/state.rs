//! What retention remembers between runs, behind a trait (implemented over
//! SQLite in `crate::state`, and read-only here for dry runs):
//! - per repository and tag: the digest last seen and when the tag was first
//!   seen (`order_by = "first_seen"`, and noticing a tag that moved);
//! - per repository and digest: since when a manifest has had no tag
//!   (`untagged_older_than`);
//! - the deletion journal: every deletion written before it is sent;
//! - per digest: what retention derives from a manifest (`ManifestFacts`).
//!   A digest names its content, so these never go stale: a run reads them
//!   instead of GETting the manifest (and config) again.
//!
//! Repositories are keyed by their location as displayed
//! (`host/path/repo` or `oci:/dir`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::plan::{ManifestInfo, Unix};
use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state: {0}")]
    Other(String),
}

/// What the state knows of one tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenTag {
    pub digest: Digest,
    pub first_seen: Unix,
}

/// One deletion, as journaled before it is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub rule: String,
    /// The target as configured (e.g. `host/mirror/*`).
    pub target: String,
    /// The repository the DELETE goes to.
    pub repository: String,
    pub digest: Digest,
    pub tags: Vec<String>,
    pub reason: String,
    pub time: Unix,
}

/// What retention derives from one manifest, kept by its digest: the same
/// wherever and whenever that digest is read (content-addressed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestFacts {
    /// Media type, children, subject.
    pub info: ManifestInfo,
    /// The image's `created` time: `None` when not read yet (the policy did
    /// not need it), `Some(None)` when read and the image has none.
    pub created: Option<Option<Unix>>,
}

pub type JournalId = i64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalStatus {
    /// Written, not yet known to have been sent (or the process died).
    Pending,
    Done,
    Failed {
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub id: JournalId,
    #[serde(flatten)]
    pub entry: JournalEntry,
    pub status: JournalStatus,
}

/// Retention's view of the state database. Calls are short and synchronous
/// (SQLite); every write must be durable when it returns, above all
/// [`RetentionState::journal`], which precedes a DELETE.
pub trait RetentionState: Send + Sync {
    /// The tags last recorded for `repo`.
    fn seen_tags(&self, repo: &str) -> Result<BTreeMap<String, SeenTag>, StateError>;
    /// Replaces the recorded tags of `repo` with `tags`: new tags get
    /// `first_seen = now`, known ones keep theirs, absent ones are dropped.
    fn record_tags(
        &self,
        repo: &str,
        tags: &BTreeMap<String, Digest>,
        now: Unix,
    ) -> Result<(), StateError>;
    /// Manifests of `repo` known to have lost their last tag, and since when.
    fn untagged(&self, repo: &str) -> Result<BTreeMap<Digest, Unix>, StateError>;
    /// Records that `digest` has had no tag since `since` (an earlier record wins).
    fn record_untagged(&self, repo: &str, digest: &Digest, since: Unix) -> Result<(), StateError>;
    /// Forgets an untagged record (tagged again, deleted, or gone).
    fn forget_untagged(&self, repo: &str, digest: &Digest) -> Result<(), StateError>;
    /// Writes a deletion to the journal before it is sent.
    fn journal(&self, entry: &JournalEntry) -> Result<JournalId, StateError>;
    /// Records how the journaled deletion ended.
    fn journal_done(&self, id: JournalId, result: Result<(), &str>) -> Result<(), StateError>;
    /// The latest journal records, newest first (for `status`).
    fn recent_deletions(&self, limit: usize) -> Result<Vec<JournalRecord>, StateError>;
    /// The facts known of `digest`, if any.
    fn manifest_facts(&self, digest: &Digest) -> Result<Option<ManifestFacts>, StateError>;
    /// Keeps `facts` of `digest` (a later call adds a `created` time the
    /// first did not have), used at `now`.
    fn record_manifest_facts(
        &self,
        digest: &Digest,
        facts: &ManifestFacts,
        now: Unix,
    ) -> Result<(), StateError>;
    /// Marks the facts of `digests` used at `now`, and drops the facts not
    /// used since `stale` (digests no run has seen for a long time).
    fn facts_used(&self, digests: &[Digest], now: Unix, stale: Unix) -> Result<(), StateError>;
}

/// A state for `plan` and dry runs: reads pass through, writes are dropped,
/// and the journal refuses (a dry run never deletes, so it never journals).
pub struct ReadOnly(pub std::sync::Arc<dyn RetentionState>);

impl RetentionState for ReadOnly {
    fn seen_tags(&self, repo: &str) -> Result<BTreeMap<String, SeenTag>, StateError> {
        self.0.seen_tags(repo)
    }
    fn record_tags(
        &self,
        _: &str,
        _: &BTreeMap<String, Digest>,
        _: Unix,
    ) -> Result<(), StateError> {
        Ok(())
    }
    fn untagged(&self, repo: &str) -> Result<BTreeMap<Digest, Unix>, StateError> {
        self.0.untagged(repo)
    }
    fn record_untagged(&self, _: &str, _: &Digest, _: Unix) -> Result<(), StateError> {
        Ok(())
    }
    fn forget_untagged(&self, _: &str, _: &Digest) -> Result<(), StateError> {
        Ok(())
    }
    fn journal(&self, _: &JournalEntry) -> Result<JournalId, StateError> {
        Err(StateError::Other("a dry run does not delete".into()))
    }
    fn journal_done(&self, _: JournalId, _: Result<(), &str>) -> Result<(), StateError> {
        Ok(())
    }
    fn recent_deletions(&self, limit: usize) -> Result<Vec<JournalRecord>, StateError> {
        self.0.recent_deletions(limit)
    }
    fn manifest_facts(&self, digest: &Digest) -> Result<Option<ManifestFacts>, StateError> {
        self.0.manifest_facts(digest)
    }
    fn record_manifest_facts(
        &self,
        _: &Digest,
        _: &ManifestFacts,
        _: Unix,
    ) -> Result<(), StateError> {
        Ok(())
    }
    fn facts_used(&self, _: &[Digest], _: Unix, _: Unix) -> Result<(), StateError> {
        Ok(())
    }
}

/// No state at all (a plan before any run): nothing seen, nothing
/// journaled; writes are refused.
pub struct NoState;

impl RetentionState for NoState {
    fn seen_tags(&self, _: &str) -> Result<BTreeMap<String, SeenTag>, StateError> {
        Ok(BTreeMap::new())
    }
    fn record_tags(
        &self,
        _: &str,
        _: &BTreeMap<String, Digest>,
        _: Unix,
    ) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn untagged(&self, _: &str) -> Result<BTreeMap<Digest, Unix>, StateError> {
        Ok(BTreeMap::new())
    }
    fn record_untagged(&self, _: &str, _: &Digest, _: Unix) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn forget_untagged(&self, _: &str, _: &Digest) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn journal(&self, _: &JournalEntry) -> Result<JournalId, StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn journal_done(&self, _: JournalId, _: Result<(), &str>) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn recent_deletions(&self, _: usize) -> Result<Vec<JournalRecord>, StateError> {
        Ok(Vec::new())
    }
    fn manifest_facts(&self, _: &Digest) -> Result<Option<ManifestFacts>, StateError> {
        Ok(None)
    }
    fn record_manifest_facts(
        &self,
        _: &Digest,
        _: &ManifestFacts,
        _: Unix,
    ) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
    fn facts_used(&self, _: &[Digest], _: Unix, _: Unix) -> Result<(), StateError> {
        Err(StateError::Other("no state database".into()))
    }
}
