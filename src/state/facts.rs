//! What retention derives from a manifest, kept by digest (`manifest_facts`).
//! A digest names its content, so a fact can never be wrong for it: the
//! table needs no expiry, only a bound (facts no run used for a long time
//! are dropped, and read again from the registry if ever needed).

use rusqlite::{OptionalExtension, params};

use super::{Result, State};
use crate::oci::Digest;
use crate::retention::plan::Child;
use crate::retention::{ManifestFacts, ManifestInfo, Unix};

/// A row as stored: children are a JSON list of `[digest, media type]`.
type Row = (String, String, Option<String>, Option<i64>, bool);

impl State {
    pub(crate) fn manifest_facts(&self, digest: &Digest) -> Result<Option<ManifestFacts>> {
        let row: Option<Row> = self.with(|c| {
            c.query_row(
                "SELECT media_type, children, subject, created, created_known
                 FROM manifest_facts WHERE digest = ?1",
                params![digest.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
        })?;
        // A row that does not parse is as good as none: the caller reads the
        // manifest from the registry.
        Ok(row.and_then(decode))
    }

    pub(crate) fn record_manifest_facts(
        &self,
        digest: &Digest,
        facts: &ManifestFacts,
        now: Unix,
    ) -> Result<()> {
        let children: Vec<(&str, &str)> = facts
            .info
            .children
            .iter()
            .map(|c| (c.digest.as_str(), c.media_type.as_str()))
            .collect();
        let children = serde_json::to_string(&children).unwrap_or_else(|_| "[]".into());
        let (created, known) = match facts.created {
            Some(c) => (c, true),
            None => (None, false),
        };
        self.with(|c| {
            // Facts of a digest never change; only a `created` time read
            // later is added to a row that lacked it.
            c.execute(
                "INSERT INTO manifest_facts
                   (digest, media_type, children, subject, created, created_known, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (digest) DO UPDATE SET
                   created = CASE WHEN created_known THEN created ELSE excluded.created END,
                   created_known = created_known OR excluded.created_known,
                   used = MAX(used, excluded.used)",
                params![
                    digest.as_str(),
                    facts.info.media_type,
                    children,
                    facts.info.subject.as_ref().map(|s| s.as_str()),
                    created,
                    known,
                    now
                ],
            )?;
            Ok(())
        })
    }

    /// Marks `digests` used at `now` (rows already marked within the last
    /// day are left alone, to spare writes) and drops rows unused since `stale`.
    pub(crate) fn manifest_facts_used(
        &self,
        digests: &[Digest],
        now: Unix,
        stale: Unix,
    ) -> Result<usize> {
        self.with_tx(|tx| {
            let mut touch = tx.prepare(
                "UPDATE manifest_facts SET used = ?2 WHERE digest = ?1 AND used < ?2 - 86400",
            )?;
            for d in digests {
                touch.execute(params![d.as_str(), now])?;
            }
            tx.execute("DELETE FROM manifest_facts WHERE used < ?1", params![stale])
        })
    }
}

fn decode((media_type, children, subject, created, known): Row) -> Option<ManifestFacts> {
    let children: Vec<(String, String)> = serde_json::from_str(&children).ok()?;
    let children = children
        .into_iter()
        .map(|(d, media_type)| {
            Some(Child {
                digest: Digest::parse(&d).ok()?,
                media_type,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let subject = match subject {
        Some(s) => Some(Digest::parse(&s).ok()?),
        None => None,
    };
    Some(ManifestFacts {
        info: ManifestInfo {
            media_type,
            children,
            subject,
        },
        created: known.then_some(created),
    })
}
