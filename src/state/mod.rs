//! The state database (SQLite, WAL): the only module that touches it.
//!
//! Everything stored here is a *hint* or a *record*, never the truth about a
//! registry: runs and their results (for `status`, lag and metrics after a
//! restart), what the engine last saw per rule/target/tag (to spare requests),
//! upload checkpoints (to resume an interrupted blob upload), and the
//! retention journal. A wrong or lost belief costs requests, never
//! correctness: every reader falls back to asking the registry.
//!
//! One [`State`] owns one connection behind a mutex. Every method is a short
//! synchronous statement (sub-millisecond in WAL mode with
//! `synchronous = NORMAL`), so async callers call them inline.

mod facts;
mod lock;
mod retention;
mod schema;
mod touched;

pub use lock::{LockError, StateLock};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// File name of the database inside `daemon.state_dir`.
pub const DB_FILE: &str = "regkeeper.db";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {path}: {source}; create it or point daemon.state_dir at a writable directory"
    )]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state database {path}: cannot open: {source}; check that the file is a regkeeper database and that this user may write it and its directory"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "state database {path}: schema version {found} is newer than this regkeeper understands ({supported}); run a newer regkeeper or move the file away"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "state database {path}: migration to schema version {version} failed: {source}; the database was left at the previous version"
    )]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error(
        "state database {path}: {source}; the disk may be full or the file damaged (it only holds hints and history: moving it away is safe)"
    )]
    Query {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Seconds since the Unix epoch: the process's one clock, re-exported here
/// because state callers have always named it `state::now_unix`.
pub use crate::clock::now_unix;

/// Handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct State {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

/// How a run ended, as stored.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunRecord {
    pub id: i64,
    pub rule: String,
    pub started: i64,
    pub finished: Option<i64>,
    /// `success`, `partial`, `failed`; `None` while running (or if the
    /// process died during the run).
    pub result: Option<String>,
    pub tags_copied: i64,
    pub tags_in_sync: i64,
    pub tags_failed: i64,
    pub bytes_copied: i64,
    pub blobs_copied: i64,
    pub blobs_mounted: i64,
    pub blobs_skipped: i64,
    pub blobs_resumed: i64,
    pub manifests_pushed: i64,
    pub last_error: Option<String>,
    /// The class of `last_error` (`authentication`, `not_found`...).
    pub error_class: Option<String>,
    /// The first warning of the run (tag filters that select nothing).
    pub warning: Option<String>,
}

/// What the engine last saw for one tag at one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    pub source_digest: String,
    /// `None`: the tag was missing at the target.
    pub target_digest: Option<String>,
    /// When the tag was first seen at the target.
    pub first_seen: Option<i64>,
    /// When a difference between source and target was first seen; `None`
    /// while they are in step.
    pub diff_first_seen: Option<i64>,
    /// When `target_digest` was last confirmed by the registry (a HEAD or
    /// our own successful push).
    pub verified: i64,
}

/// One observation to record in `tag_state`.
#[derive(Debug, Clone)]
pub struct TagObservation<'a> {
    pub tag: &'a str,
    pub source_digest: &'a str,
    pub target_digest: Option<&'a str>,
    /// The target digest was confirmed just now (HEAD or push), not taken
    /// from the state.
    pub verified_now: bool,
}

/// An unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadCheckpoint {
    pub target: String,
    pub repo: String,
    pub digest: String,
    pub session_url: String,
    pub offset: u64,
    /// The SHA-256 state after `offset` bytes, so the download can resume
    /// with Range and the verification still covers the whole blob.
    #[serde(skip)]
    pub hash_state: Option<Vec<u8>>,
    pub updated: i64,
}

/// One entry of the retention journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deletion {
    pub id: i64,
    pub rule: String,
    pub target: String,
    pub repo: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub reason: String,
    pub time: i64,
    /// `pending` (journaled, not yet sent), `done` or `failed`.
    pub status: String,
}

impl State {
    /// Opens (creating `state_dir` and the file when missing) and migrates
    /// `state_dir/regkeeper.db`.
    pub fn open(state_dir: &Path) -> Result<State> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&state_dir.join(DB_FILE))
    }

    /// Opens `state_dir/regkeeper.db` read-only, for `plan`: it reads the
    /// journal and hints as data and can write nothing (SQLite refuses).
    /// `None` when there is no database yet (nothing was ever recorded).
    pub fn open_read_only(state_dir: &Path) -> Result<Option<State>> {
        use rusqlite::OpenFlags;
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version != schema::VERSION {
            // Not migrated by this build (older, or newer): its tables may
            // differ, and a read-only run may not migrate. Plan without it.
            tracing::warn!(path = %path.display(), version, "state database at another schema version; planning without it");
            return Ok(None);
        }
        Ok(Some(State {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path),
        }))
    }

    /// Opens a database file directly (tests, tools).
    pub fn open_file(path: &Path) -> Result<State> {
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL: readers (status) never block the daemon's writes.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state database is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        schema::migrate(&mut conn, path)?;
        Ok(State {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_path_buf()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| StateError::Query {
            path: self.path.to_path_buf(),
            source,
        })
    }

    fn with_tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let q = |source| StateError::Query {
            path: self.path.to_path_buf(),
            source,
        };
        let tx = conn.transaction().map_err(q)?;
        let out = f(&tx).map_err(q)?;
        tx.commit().map_err(q)?;
        Ok(out)
    }

    pub fn schema_version(&self) -> Result<i64> {
        self.with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    // ---- runs ---------------------------------------------------------

    /// Records the start of a run; returns its id.
    pub(crate) fn run_started(&self, rule: &str, started: i64) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (rule, started) VALUES (?1, ?2)",
                params![rule, started],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how a run ended.
    pub(crate) fn run_finished(&self, id: i64, r: &RunRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished = ?2, result = ?3, tags_copied = ?4, tags_in_sync = ?5,
                   tags_failed = ?6, bytes_copied = ?7, blobs_copied = ?8, blobs_mounted = ?9,
                   blobs_skipped = ?10, blobs_resumed = ?11, manifests_pushed = ?12, last_error = ?13,
                   warning = ?14, error_class = ?15
                 WHERE id = ?1",
                params![
                    id,
                    r.finished,
                    r.result,
                    r.tags_copied,
                    r.tags_in_sync,
                    r.tags_failed,
                    r.bytes_copied,
                    r.blobs_copied,
                    r.blobs_mounted,
                    r.blobs_skipped,
                    r.blobs_resumed,
                    r.manifests_pushed,
                    r.last_error,
                    r.warning,
                    r.error_class
                ],
            )?;
            Ok(())
        })
    }

    /// The most recent run of `rule` (finished or not).
    pub(crate) fn last_run(&self, rule: &str) -> Result<Option<RunRecord>> {
        self.run_where(rule, "1")
    }

    /// The most recent run that left every target in step.
    pub(crate) fn last_success(&self, rule: &str) -> Result<Option<RunRecord>> {
        self.run_where(rule, "result = 'success'")
    }

    /// The start of the first run ever recorded for `rule`.
    pub(crate) fn first_run_started(&self, rule: &str) -> Result<Option<i64>> {
        self.with(|c| {
            c.query_row(
                "SELECT MIN(started) FROM runs WHERE rule = ?1",
                params![rule],
                |r| r.get(0),
            )
        })
    }

    fn run_where(&self, rule: &str, cond: &str) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT id, rule, started, finished, result, tags_copied, tags_in_sync, tags_failed,
                    bytes_copied, blobs_copied, blobs_mounted, blobs_skipped, blobs_resumed,
                    manifests_pushed, last_error, warning, error_class
             FROM runs WHERE rule = ?1 AND {cond} ORDER BY started DESC, id DESC LIMIT 1"
        );
        self.with(|c| {
            c.query_row(&sql, params![rule], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    rule: r.get(1)?,
                    started: r.get(2)?,
                    finished: r.get(3)?,
                    result: r.get(4)?,
                    tags_copied: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                    tags_in_sync: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                    tags_failed: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
                    bytes_copied: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
                    blobs_copied: r.get::<_, Option<i64>>(9)?.unwrap_or(0),
                    blobs_mounted: r.get::<_, Option<i64>>(10)?.unwrap_or(0),
                    blobs_skipped: r.get::<_, Option<i64>>(11)?.unwrap_or(0),
                    blobs_resumed: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
                    manifests_pushed: r.get::<_, Option<i64>>(13)?.unwrap_or(0),
                    last_error: r.get(14)?,
                    warning: r.get(15)?,
                    error_class: r.get(16)?,
                })
            })
            .optional()
        })
    }

    /// Deletes runs older than `before` except each rule's latest run and
    /// latest success (lag must survive).
    pub(crate) fn prune_runs(&self, before: i64) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM runs WHERE started < ?1
                   AND id NOT IN (SELECT MAX(id) FROM runs GROUP BY rule)
                   AND id NOT IN (SELECT MAX(id) FROM runs WHERE result = 'success' GROUP BY rule)
                   AND id NOT IN (SELECT MIN(id) FROM runs GROUP BY rule)",
                params![before],
            )
        })
    }

    // ---- tag_state ----------------------------------------------------

    /// Everything known about the tags of one rule at one target repository.
    pub(crate) fn tag_states(
        &self,
        rule: &str,
        target: &str,
        repo: &str,
    ) -> Result<HashMap<String, TagState>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT tag, source_digest, target_digest, first_seen, diff_first_seen, verified
                 FROM tag_state WHERE rule = ?1 AND target = ?2 AND repo = ?3",
            )?;
            st.query_map(params![rule, target, repo], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    TagState {
                        source_digest: r.get(1)?,
                        target_digest: r.get(2)?,
                        first_seen: r.get(3)?,
                        diff_first_seen: r.get(4)?,
                        verified: r.get(5)?,
                    },
                ))
            })?
            .collect()
        })
    }

    /// Records what one run saw for the tags of one target repository, and
    /// forgets tags that are no longer selected at the source (`keep` lists
    /// every tag still selected; `None` keeps all). One transaction.
    pub(crate) fn record_tags(
        &self,
        rule: &str,
        target: &str,
        repo: &str,
        seen: &[TagObservation<'_>],
        keep: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        self.with_tx(|tx| {
            {
                let mut up = tx.prepare(
                    "INSERT INTO tag_state (rule, target, repo, tag, source_digest, target_digest,
                        first_seen, diff_first_seen, verified, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                        CASE WHEN ?6 IS NULL THEN NULL ELSE ?7 END,
                        CASE WHEN ?6 IS ?5 THEN NULL ELSE ?7 END,
                        CASE WHEN ?8 THEN ?7 ELSE 0 END, ?7)
                     ON CONFLICT (rule, target, repo, tag) DO UPDATE SET
                        source_digest = excluded.source_digest,
                        target_digest = excluded.target_digest,
                        first_seen = CASE WHEN excluded.target_digest IS NULL THEN NULL
                                          ELSE COALESCE(tag_state.first_seen, ?7) END,
                        diff_first_seen = CASE WHEN excluded.target_digest IS excluded.source_digest THEN NULL
                                               ELSE COALESCE(tag_state.diff_first_seen, ?7) END,
                        verified = CASE WHEN ?8 THEN ?7 ELSE tag_state.verified END,
                        updated = ?7",
                )?;
                for o in seen {
                    up.execute(params![
                        rule,
                        target,
                        repo,
                        o.tag,
                        o.source_digest,
                        o.target_digest,
                        now,
                        o.verified_now
                    ])?;
                }
            }
            if let Some(keep) = keep {
                let keep: std::collections::HashSet<&str> =
                    keep.iter().map(String::as_str).collect();
                let mut st = tx.prepare(
                    "SELECT tag FROM tag_state WHERE rule = ?1 AND target = ?2 AND repo = ?3",
                )?;
                let stale: Vec<String> = st
                    .query_map(params![rule, target, repo], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
                    .into_iter()
                    .filter(|t| !keep.contains(t.as_str()))
                    .collect();
                let mut del = tx.prepare(
                    "DELETE FROM tag_state WHERE rule = ?1 AND target = ?2 AND repo = ?3 AND tag = ?4",
                )?;
                for t in stale {
                    del.execute(params![rule, target, repo, t])?;
                }
            }
            Ok(())
        })
    }

    /// Differences seen but not yet copied, for one rule.
    pub(crate) fn tags_pending(&self, rule: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM tag_state WHERE rule = ?1 AND diff_first_seen IS NOT NULL",
                params![rule],
                |r| r.get(0),
            )
        })
    }

    // ---- uploads --------------------------------------------------------

    /// Commits an upload checkpoint (after an acknowledged chunk).
    pub(crate) fn save_upload(&self, cp: &UploadCheckpoint) -> Result<()> {
        self.with(|c| {
            c.prepare(
                "INSERT INTO uploads (target, repo, digest, session_url, offset, hash_state, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (target, repo, digest) DO UPDATE SET session_url = excluded.session_url,
                   offset = excluded.offset, hash_state = excluded.hash_state, updated = excluded.updated",
            )?
            .execute(params![
                cp.target,
                cp.repo,
                cp.digest,
                cp.session_url,
                cp.offset as i64,
                cp.hash_state,
                cp.updated
            ])?;
            Ok(())
        })
    }

    pub(crate) fn upload(
        &self,
        target: &str,
        repo: &str,
        digest: &str,
    ) -> Result<Option<UploadCheckpoint>> {
        self.with(|c| {
            c.prepare(
                "SELECT target, repo, digest, session_url, offset, hash_state, updated FROM uploads
                 WHERE target = ?1 AND repo = ?2 AND digest = ?3",
            )?
            .query_row(params![target, repo, digest], upload_row)
            .optional()
        })
    }

    pub(crate) fn remove_upload(&self, target: &str, repo: &str, digest: &str) -> Result<()> {
        self.with(|c| {
            c.prepare("DELETE FROM uploads WHERE target = ?1 AND repo = ?2 AND digest = ?3")?
                .execute(params![target, repo, digest])?;
            Ok(())
        })
    }

    /// Every unfinished upload.
    pub fn uploads(&self) -> Result<Vec<UploadCheckpoint>> {
        self.with(|c| {
            c.prepare(
                "SELECT target, repo, digest, session_url, offset, hash_state, updated FROM uploads
                 ORDER BY updated",
            )?
            .query_map([], upload_row)?
            .collect()
        })
    }

    // ---- retention: deletion journal --------------------------------------

    /// Journals a deletion *before* it is sent; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn journal_deletion(
        &self,
        rule: &str,
        target: &str,
        repo: &str,
        digest: &str,
        tags: &[String],
        reason: &str,
        time: i64,
    ) -> Result<i64> {
        let tags = serde_json::to_string(tags).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.execute(
                "INSERT INTO deletions (rule, target, repo, digest, tags, reason, time, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                params![rule, target, repo, digest, tags, reason, time],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// What retention (of `rule`) deleted from the repository `repo` (a
    /// location as written) with a DELETE that went through: (tag, digest)
    /// pairs. Read by the inventory, so that sync does not copy back what its
    /// own retention deleted.
    pub(crate) fn retained_away(
        &self,
        rule: &str,
        repo: &str,
    ) -> Result<std::collections::HashSet<(String, String)>> {
        self.with(|c| {
            let rows: Vec<(String, String)> = c
                .prepare(
                    "SELECT tags, digest FROM deletions
                     WHERE rule = ?1 AND repo = ?2 AND status = 'done'",
                )?
                .query_map(params![rule, repo], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows
                .into_iter()
                .flat_map(|(tags, digest)| {
                    serde_json::from_str::<Vec<String>>(&tags)
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |t| (t, digest.clone()))
                })
                .collect())
        })
    }

    /// The latest `limit` journal entries of a rule, newest first.
    pub(crate) fn deletions(&self, rule: &str, limit: usize) -> Result<Vec<Deletion>> {
        self.with(|c| {
            c.prepare(
                "SELECT id, rule, target, repo, digest, tags, reason, time, status FROM deletions
                 WHERE rule = ?1 ORDER BY time DESC, id DESC LIMIT ?2",
            )?
            .query_map(params![rule, limit as i64], |r| {
                let tags: String = r.get(5)?;
                Ok(Deletion {
                    id: r.get(0)?,
                    rule: r.get(1)?,
                    target: r.get(2)?,
                    repo: r.get(3)?,
                    digest: r.get(4)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    reason: r.get(6)?,
                    time: r.get(7)?,
                    status: r.get(8)?,
                })
            })?
            .collect()
        })
    }
}

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadCheckpoint> {
    Ok(UploadCheckpoint {
        target: r.get(0)?,
        repo: r.get(1)?,
        digest: r.get(2)?,
        session_url: r.get(3)?,
        offset: r.get::<_, i64>(4)?.max(0) as u64,
        hash_state: r.get(5)?,
        updated: r.get(6)?,
    })
}

#[cfg(test)]
mod tests;
