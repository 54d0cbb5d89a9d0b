//! Retention's state in the state database: the tags each target
//! repository had at the last prune (with when each was first seen), the
//! manifests known to have lost their last tag, and the deletion journal.

use std::collections::BTreeMap;

use rusqlite::params;

use super::State;
use crate::oci::Digest;
use crate::retention::{
    JournalEntry, JournalId, JournalRecord, JournalStatus, ManifestFacts, RetentionState, SeenTag,
    StateError as RetentionStateError, Unix,
};

fn err(e: super::StateError) -> RetentionStateError {
    RetentionStateError::Other(e.to_string())
}

fn digest(s: String) -> rusqlite::Result<Digest> {
    Digest::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl RetentionState for State {
    fn seen_tags(&self, repo: &str) -> Result<BTreeMap<String, SeenTag>, RetentionStateError> {
        self.with(|c| {
            c.prepare("SELECT tag, digest, first_seen FROM retention_tags WHERE repo = ?1")?
                .query_map(params![repo], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        SeenTag {
                            digest: digest(r.get(1)?)?,
                            first_seen: r.get(2)?,
                        },
                    ))
                })?
                .collect()
        })
        .map_err(err)
    }

    fn record_tags(
        &self,
        repo: &str,
        tags: &BTreeMap<String, Digest>,
        now: Unix,
    ) -> Result<(), RetentionStateError> {
        self.with_tx(|tx| {
            let known: BTreeMap<String, i64> = tx
                .prepare("SELECT tag, first_seen FROM retention_tags WHERE repo = ?1")?
                .query_map(params![repo], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            tx.execute("DELETE FROM retention_tags WHERE repo = ?1", params![repo])?;
            let mut insert =
                tx.prepare("INSERT INTO retention_tags (repo, tag, digest, first_seen) VALUES (?1, ?2, ?3, ?4)")?;
            for (tag, d) in tags {
                // First seen is per tag: a tag that moves keeps it.
                let first_seen = known.get(tag).copied().unwrap_or(now);
                insert.execute(params![repo, tag, d.as_str(), first_seen])?;
            }
            Ok(())
        })
        .map_err(err)
    }

    fn untagged(&self, repo: &str) -> Result<BTreeMap<Digest, Unix>, RetentionStateError> {
        self.with(|c| {
            c.prepare("SELECT digest, since FROM retention_untagged WHERE repo = ?1")?
                .query_map(params![repo], |r| Ok((digest(r.get(0)?)?, r.get(1)?)))?
                .collect()
        })
        .map_err(err)
    }

    fn record_untagged(
        &self,
        repo: &str,
        digest: &Digest,
        since: Unix,
    ) -> Result<(), RetentionStateError> {
        self.with(|c| {
            // An earlier record wins: the window runs from the first time.
            c.execute(
                "INSERT INTO retention_untagged (repo, digest, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repo, digest) DO UPDATE SET since = MIN(since, excluded.since)",
                params![repo, digest.as_str(), since],
            )?;
            Ok(())
        })
        .map_err(err)
    }

    fn forget_untagged(&self, repo: &str, digest: &Digest) -> Result<(), RetentionStateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM retention_untagged WHERE repo = ?1 AND digest = ?2",
                params![repo, digest.as_str()],
            )?;
            Ok(())
        })
        .map_err(err)
    }

    fn journal(&self, entry: &JournalEntry) -> Result<JournalId, RetentionStateError> {
        self.journal_deletion(
            &entry.rule,
            &entry.target,
            &entry.repository,
            entry.digest.as_str(),
            &entry.tags,
            &entry.reason,
            entry.time,
        )
        .map_err(err)
    }

    fn journal_done(
        &self,
        id: JournalId,
        result: Result<(), &str>,
    ) -> Result<(), RetentionStateError> {
        let (status, error) = match result {
            Ok(()) => ("done", None),
            Err(e) => ("failed", Some(e)),
        };
        self.with(|c| {
            c.execute(
                "UPDATE deletions SET status = ?2, error = ?3 WHERE id = ?1",
                params![id, status, error],
            )?;
            Ok(())
        })
        .map_err(err)
    }

    fn recent_deletions(&self, limit: usize) -> Result<Vec<JournalRecord>, RetentionStateError> {
        self.with(|c| {
            c.prepare(
                "SELECT id, rule, target, repo, digest, tags, reason, time, status, error FROM deletions
                 ORDER BY time DESC, id DESC LIMIT ?1",
            )?
            .query_map(params![limit as i64], |r| {
                let tags: String = r.get(5)?;
                let status: String = r.get(8)?;
                let error: Option<String> = r.get(9)?;
                Ok(JournalRecord {
                    id: r.get(0)?,
                    entry: JournalEntry {
                        rule: r.get(1)?,
                        target: r.get(2)?,
                        repository: r.get(3)?,
                        digest: digest(r.get(4)?)?,
                        tags: serde_json::from_str(&tags).unwrap_or_default(),
                        reason: r.get(6)?,
                        time: r.get(7)?,
                    },
                    status: match status.as_str() {
                        "done" => JournalStatus::Done,
                        "failed" => JournalStatus::Failed { error: error.unwrap_or_default() },
                        _ => JournalStatus::Pending,
                    },
                })
            })?
            .collect()
        })
        .map_err(err)
    }

    fn manifest_facts(
        &self,
        digest: &Digest,
    ) -> Result<Option<ManifestFacts>, RetentionStateError> {
        State::manifest_facts(self, digest).map_err(err)
    }

    fn record_manifest_facts(
        &self,
        digest: &Digest,
        facts: &ManifestFacts,
        now: Unix,
    ) -> Result<(), RetentionStateError> {
        State::record_manifest_facts(self, digest, facts, now).map_err(err)
    }

    fn facts_used(
        &self,
        digests: &[Digest],
        now: Unix,
        stale: Unix,
    ) -> Result<(), RetentionStateError> {
        self.manifest_facts_used(digests, now, stale)
            .map(drop)
            .map_err(err)
    }
}
