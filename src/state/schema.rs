//! Schema migrations, numbered by `PRAGMA user_version`. Each step runs in
//! one transaction together with the version bump, so a failed step leaves
//! the database at the previous version. Never edit a released step: add one.

use std::path::Path;

use rusqlite::Connection;

use super::StateError;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER,
        result TEXT,
        tags_copied INTEGER,
        tags_in_sync INTEGER,
        tags_failed INTEGER,
        bytes_copied INTEGER,
        blobs_copied INTEGER,
        blobs_mounted INTEGER,
        blobs_skipped INTEGER,
        blobs_resumed INTEGER,
        manifests_pushed INTEGER,
        last_error TEXT
    );
    CREATE INDEX runs_by_rule ON runs (rule, started);
    CREATE TABLE tag_state (
        rule TEXT NOT NULL,
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        target_digest TEXT,
        first_seen INTEGER,
        diff_first_seen INTEGER,
        verified INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL,
        PRIMARY KEY (rule, target, repo, tag)
    ) WITHOUT ROWID;
    CREATE TABLE target_blobs (
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        seen INTEGER NOT NULL,
        PRIMARY KEY (target, repo, digest)
    ) WITHOUT ROWID;
    CREATE TABLE uploads (
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        session_url TEXT NOT NULL,
        offset INTEGER NOT NULL,
        hash_state BLOB,
        updated INTEGER NOT NULL,
        PRIMARY KEY (target, repo, digest)
    ) WITHOUT ROWID;
    CREATE TABLE deletions (
        id INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        tags TEXT NOT NULL,
        reason TEXT NOT NULL,
        time INTEGER NOT NULL,
        status TEXT NOT NULL
    );
    CREATE INDEX deletions_by_rule ON deletions (rule, time);
    CREATE TABLE tag_history (
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        untagged_since INTEGER,
        PRIMARY KEY (target, repo, tag, digest)
    ) WITHOUT ROWID;
    CREATE INDEX tag_history_by_digest ON tag_history (target, repo, digest);",
    // 2: retention's own view of target repositories (keyed by the
    // repository's location), and why a journaled deletion failed.
    "CREATE TABLE retention_tags (
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        PRIMARY KEY (repo, tag)
    ) WITHOUT ROWID;
    CREATE TABLE retention_untagged (
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (repo, digest)
    ) WITHOUT ROWID;
    ALTER TABLE deletions ADD COLUMN error TEXT;",
    // 3: nothing reads blob hints (nothing learned about blobs survives a
    // run) or the per-digest tag history (retention keeps its own tables).
    "DROP TABLE target_blobs;
    DROP TABLE tag_history;",
    // 4: what a run reported that is not an error (filters selecting 0 of
    // N tags), for `status`.
    "ALTER TABLE runs ADD COLUMN warning TEXT;",
    // 5: target repositories a run started writing into while they did not
    // exist (tag list 404): such a repository is known to hold no blobs
    // (its blob HEADs are skipped) unless a run that touched it was
    // interrupted before it was tagged.
    "CREATE TABLE touched_repos (
        target TEXT NOT NULL,
        repo TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (target, repo)
    ) WITHOUT ROWID;",
    // 6: the class of a run's first failure (`authentication`,
    // `not_found`...), for `status`.
    "ALTER TABLE runs ADD COLUMN error_class TEXT;",
    // 7: what retention derives from a manifest, by digest (content-
    // addressed, so never stale): media type, children and subject, and the
    // image's `created` time once read (`created_known`). `used`: the last
    // run that needed them; facts unused for long are dropped.
    "CREATE TABLE manifest_facts (
        digest TEXT NOT NULL PRIMARY KEY,
        media_type TEXT NOT NULL,
        children TEXT NOT NULL,
        subject TEXT,
        created INTEGER,
        created_known INTEGER NOT NULL DEFAULT 0,
        used INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StateError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if current > VERSION {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let err = |source| StateError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        // IMMEDIATE takes the write lock at BEGIN, and the version is read
        // again under it: a second process opening the database at the same
        // time (`status` beside a starting daemon) skips a step the first
        // one applied instead of running it twice.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if now >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(path = %path.display(), version, "state database migrated");
    }
    Ok(())
}
