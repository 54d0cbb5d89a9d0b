//! What retention remembers between runs, behind a trait so that the state
//! database (SQLite, in `crate::state` once it exists) and the local
//! implementation here are interchangeable:
//! - per repository and tag: the digest last seen and when the tag was first
//!   seen (`order_by = "first_seen"`, and noticing a tag that moved);
//! - per repository and digest: since when a manifest has had no tag
//!   (`untagged_older_than`);
//! - the deletion journal: every deletion written before it is sent.
//!
//! Repositories are keyed by their location as displayed
//! (`host/path/repo` or `oci:/dir`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::plan::Unix;
use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not readable state: {detail}")]
    Corrupt { path: PathBuf, detail: String },
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
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RepoState {
    #[serde(default)]
    tags: BTreeMap<String, SeenTag>,
    #[serde(default)]
    untagged: BTreeMap<Digest, Unix>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Data {
    #[serde(default)]
    repos: BTreeMap<String, RepoState>,
    #[serde(default)]
    journal: Vec<JournalRecord>,
    #[serde(default)]
    next_id: JournalId,
}

/// Journal records kept by [`LocalState`] (the oldest are dropped).
const JOURNAL_KEEP: usize = 10_000;

/// Retention state in memory, optionally persisted to a JSON file (written
/// atomically and synced after every change). For tests, and for runs
/// without the state database.
pub struct LocalState {
    data: Mutex<Data>,
    path: Option<PathBuf>,
}

impl LocalState {
    pub fn in_memory() -> Self {
        LocalState {
            data: Mutex::new(Data::default()),
            path: None,
        }
    }

    /// Opens (or starts) the state kept in `path`. The directory is created
    /// when missing.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => return Err(io(e)),
        };
        Ok(LocalState {
            data: Mutex::new(data),
            path: Some(path.to_path_buf()),
        })
    }

    /// Reads the state in `path` (if any) without ever writing it back: for
    /// `plan` and dry runs.
    pub fn snapshot(path: &Path) -> Result<Self, StateError> {
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        Ok(LocalState {
            data: Mutex::new(data),
            path: None,
        })
    }

    fn update<T>(&self, f: impl FnOnce(&mut Data) -> T) -> Result<T, StateError> {
        let mut data = self
            .data
            .lock()
            .map_err(|_| StateError::Other("lock poisoned".into()))?;
        let out = f(&mut data);
        if let Some(path) = &self.path {
            persist(path, &data)?;
        }
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Data) -> T) -> Result<T, StateError> {
        let data = self
            .data
            .lock()
            .map_err(|_| StateError::Other("lock poisoned".into()))?;
        Ok(f(&data))
    }
}

fn persist(path: &Path, data: &Data) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(data).map_err(|e| StateError::Other(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl RetentionState for LocalState {
    fn seen_tags(&self, repo: &str) -> Result<BTreeMap<String, SeenTag>, StateError> {
        self.read(|d| {
            d.repos
                .get(repo)
                .map(|r| r.tags.clone())
                .unwrap_or_default()
        })
    }

    fn record_tags(
        &self,
        repo: &str,
        tags: &BTreeMap<String, Digest>,
        now: Unix,
    ) -> Result<(), StateError> {
        self.update(|d| {
            let r = d.repos.entry(repo.to_string()).or_default();
            let old = std::mem::take(&mut r.tags);
            r.tags = tags
                .iter()
                .map(|(t, dg)| {
                    let first_seen = old.get(t).map(|s| s.first_seen).unwrap_or(now);
                    (
                        t.clone(),
                        SeenTag {
                            digest: dg.clone(),
                            first_seen,
                        },
                    )
                })
                .collect();
        })
    }

    fn untagged(&self, repo: &str) -> Result<BTreeMap<Digest, Unix>, StateError> {
        self.read(|d| {
            d.repos
                .get(repo)
                .map(|r| r.untagged.clone())
                .unwrap_or_default()
        })
    }

    fn record_untagged(&self, repo: &str, digest: &Digest, since: Unix) -> Result<(), StateError> {
        self.update(|d| {
            let r = d.repos.entry(repo.to_string()).or_default();
            let e = r.untagged.entry(digest.clone()).or_insert(since);
            *e = (*e).min(since);
        })
    }

    fn forget_untagged(&self, repo: &str, digest: &Digest) -> Result<(), StateError> {
        let known = self.read(|d| {
            d.repos
                .get(repo)
                .is_some_and(|r| r.untagged.contains_key(digest))
        })?;
        if !known {
            return Ok(());
        }
        self.update(|d| {
            if let Some(r) = d.repos.get_mut(repo) {
                r.untagged.remove(digest);
            }
        })
    }

    fn journal(&self, entry: &JournalEntry) -> Result<JournalId, StateError> {
        self.update(|d| {
            d.next_id += 1;
            let id = d.next_id;
            d.journal.push(JournalRecord {
                id,
                entry: entry.clone(),
                status: JournalStatus::Pending,
            });
            if d.journal.len() > JOURNAL_KEEP {
                let excess = d.journal.len() - JOURNAL_KEEP;
                d.journal.drain(..excess);
            }
            id
        })
    }

    fn journal_done(&self, id: JournalId, result: Result<(), &str>) -> Result<(), StateError> {
        self.update(|d| {
            if let Some(r) = d.journal.iter_mut().rev().find(|r| r.id == id) {
                r.status = match result {
                    Ok(()) => JournalStatus::Done,
                    Err(e) => JournalStatus::Failed {
                        error: e.to_string(),
                    },
                };
            }
        })
    }

    fn recent_deletions(&self, limit: usize) -> Result<Vec<JournalRecord>, StateError> {
        self.read(|d| d.journal.iter().rev().take(limit).cloned().collect())
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    #[test]
    fn tags_untagged_and_journal_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/retention-state.json");
        {
            let s = LocalState::open(&path).unwrap();
            let tags = BTreeMap::from([("a".to_string(), d(1)), ("b".to_string(), d(2))]);
            s.record_tags("r", &tags, 100).unwrap();
            let tags = BTreeMap::from([("a".to_string(), d(3))]);
            s.record_tags("r", &tags, 200).unwrap();
            s.record_untagged("r", &d(1), 200).unwrap();
            s.record_untagged("r", &d(1), 300).unwrap();
            s.record_untagged("r", &d(2), 200).unwrap();
            s.forget_untagged("r", &d(2)).unwrap();
            let id = s
                .journal(&JournalEntry {
                    rule: "x".into(),
                    target: "t".into(),
                    repository: "r".into(),
                    digest: d(1),
                    tags: vec![],
                    reason: "why".into(),
                    time: 5,
                })
                .unwrap();
            s.journal_done(id, Err("boom")).unwrap();
        }
        let s = LocalState::open(&path).unwrap();
        let seen = s.seen_tags("r").unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen["a"],
            SeenTag {
                digest: d(3),
                first_seen: 100
            }
        );
        assert_eq!(s.untagged("r").unwrap(), BTreeMap::from([(d(1), 200)]));
        let j = s.recent_deletions(10).unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(
            j[0].status,
            JournalStatus::Failed {
                error: "boom".into()
            }
        );
        // A snapshot never writes.
        let snap = LocalState::snapshot(&path).unwrap();
        snap.record_untagged("r", &d(9), 1).unwrap();
        let again = LocalState::open(&path).unwrap();
        assert!(!again.untagged("r").unwrap().contains_key(&d(9)));
    }
}
