//! Target repositories that do not exist yet (tag list 404): they hold no
//! blobs, so the copier sends them no blob HEADs (a mount is still tried
//! where the tracker knows a source). A real run records each one in the
//! state before its first write and clears it once a tag is there, so a run
//! killed in between leaves a repository that the next run HEADs as usual
//! (its blobs may exist), instead of uploading them all again.

use super::Engine;
use super::copy;
use super::inventory::RepoInventory;
use super::report::ImageReport;
use crate::plan::TagPlan;
use crate::reference::Location;

impl Engine {
    /// Whether a run touched `loc` and may have left blobs there untagged.
    /// Unreadable state (or an older schema in a read-only plan) counts as
    /// touched: HEADs are the safe default.
    pub(super) fn touched(&self, loc: &Location) -> bool {
        let Some(state) = &self.state else {
            return false;
        };
        let (target, repo) = copy::state_key(loc);
        state.touched(&target, &repo).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read touched repositories; HEADs as usual");
            true
        })
    }

    /// Before a repository's copies: the absent targets that plans copy
    /// into are recorded as touched (real runs), then the copier is told
    /// they hold no blobs. When the record cannot be written they are not
    /// marked: HEADs as usual, so a kill cannot mislead the next run.
    pub(super) fn mark_fresh(&self, repo: &RepoInventory, plans: &[TagPlan]) {
        let fresh: Vec<&Location> = repo
            .targets
            .iter()
            .filter(|t| {
                // By location: a plan may concern some targets only (a
                // fallback index, referrers where their image is).
                t.absent
                    && plans.iter().any(|p| {
                        p.targets
                            .iter()
                            .any(|(loc, a)| loc == t.store.location() && a.needs_copy())
                    })
            })
            .map(|t| t.store.location())
            .collect();
        if fresh.is_empty() {
            return;
        }
        if let (false, Some(state)) = (self.mode == super::Mode::Estimate, &self.state) {
            let keys: Vec<(String, String)> = fresh.iter().map(|l| copy::state_key(l)).collect();
            if let Err(e) = state.touch_repos(&keys, self.now()) {
                tracing::warn!(error = %e, "cannot record new target repositories; blob HEADs as usual");
                return;
            }
        }
        self.copier.mark_fresh(fresh.into_iter().cloned());
    }

    /// After a repository's copies: a fresh target that got a tag lists it
    /// now, so its record has nothing left to say.
    pub(super) fn settle_fresh(&self, repo: &RepoInventory, images: &[ImageReport]) {
        let Some(state) = self
            .state
            .as_ref()
            .filter(|_| self.mode == super::Mode::Apply)
        else {
            return;
        };
        for t in repo.targets.iter().filter(|t| t.absent) {
            let name = t.store.location().to_string();
            let tagged = images
                .iter()
                .any(|i| i.target == name && i.action.needs_copy() && i.error.is_none());
            if !tagged {
                continue;
            }
            let (target, r) = copy::state_key(t.store.location());
            if let Err(e) = state.untouch_repo(&target, &r) {
                tracing::warn!(error = %e, "cannot clear a touched repository");
            }
        }
    }
}
