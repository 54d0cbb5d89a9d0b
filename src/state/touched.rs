//! Target repositories a run started writing into while they did not exist
//! (their tag list answered 404). Such a repository holds no blobs, so the
//! copier skips its blob HEADs; but a run killed before it tagged anything
//! there leaves blobs behind under a tag list that still answers 404. This
//! record, written before the first write and removed once a tag is there,
//! tells the next run to HEAD as usual.

use rusqlite::params;

use super::{Result, State};

impl State {
    /// Records that a run is about to write into these (non-existent)
    /// repositories, `(target, repo)` as in `tag_state`; one transaction,
    /// committed before any blob is sent.
    pub(crate) fn touch_repos(&self, repos: &[(String, String)], now: i64) -> Result<()> {
        self.with_tx(|tx| {
            let mut insert = tx.prepare(
                "INSERT INTO touched_repos (target, repo, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (target, repo) DO NOTHING",
            )?;
            for (target, repo) in repos {
                insert.execute(params![target, repo, now])?;
            }
            Ok(())
        })
    }

    /// Whether a run touched the repository and may not have tagged it.
    pub(crate) fn touched(&self, target: &str, repo: &str) -> Result<bool> {
        self.with(|c| {
            c.prepare("SELECT 1 FROM touched_repos WHERE target = ?1 AND repo = ?2")?
                .exists(params![target, repo])
        })
    }

    /// The repository got a tag: its tag list no longer answers 404, so the
    /// record has nothing left to say.
    pub(crate) fn untouch_repo(&self, target: &str, repo: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM touched_repos WHERE target = ?1 AND repo = ?2",
                params![target, repo],
            )?;
            Ok(())
        })
    }
}
