//! Retention's executor: journals and sends the deletions of a rule's run
//! plan, parents first, and writes what the inventory's reading found due to
//! the state. An estimate reports the plan and writes nothing (neither to
//! registries nor to the state). The engine builds it for every pass from
//! the pass's mode; it reads nothing and decides nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tracing::Instrument;

use super::plan::{Deletion, Listing, RepoInput, RepoPlan, Unix};
use super::reading::{RepoJob, RuleRead, StateUpdate};
use super::state::{JournalEntry, RetentionState};
use crate::config::Rule;
use crate::engine::{Failure, RunError};
use crate::oci::Digest;
use crate::transport::{ErrorClass, Side, Store, Transports};

/// What happened to one planned deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeletionStatus {
    /// Dry run, refused, or a pass that leaves deletions out: not sent.
    Planned,
    Deleted,
    Failed {
        error: String,
        /// What kind of failure (a refused DELETE, authentication, a
        /// timeout, or `other` when the journal was unavailable).
        class: crate::transport::ErrorClass,
    },
    /// Not sent because an earlier deletion in this repository failed.
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeletionReport {
    #[serde(flatten)]
    pub deletion: Deletion,
    pub reason_text: String,
    #[serde(flatten)]
    pub status: DeletionStatus,
}

/// Retention of one target repository.
#[derive(Clone, Debug, Serialize)]
pub struct RepoReport {
    /// The target as configured.
    pub target: String,
    pub repository: String,
    pub deletions: Vec<DeletionReport>,
    pub kept: Vec<super::plan::Kept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The class of the failure behind a refusal (the repository could not
    /// be read, a copy there failed); `other` for the policy's own refusals
    /// (the deletion cap, a reference cycle).
    #[serde(skip)]
    pub refused_class: ErrorClass,
    /// The failure behind the refusal is already one of this run's (a copy
    /// to this repository failed): the refusal is a warning, not a second
    /// failure.
    #[serde(skip)]
    pub refused_counted: bool,
}

/// Retention of one rule (every target repository).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Manifests deleted (DELETE answered with success).
    pub deleted: usize,
    /// Manifests planned for deletion (sent or not).
    pub planned: usize,
    pub failed: usize,
    /// Some repository (or the whole run, over the cap) deleted nothing on purpose.
    pub refused: bool,
    pub repositories: Vec<RepoReport>,
    /// Problems not tied to one deletion (listing, state, a stop), each
    /// with its class.
    pub errors: Vec<RunError>,
}

impl RetentionReport {
    /// Whether everything planned was done and nothing was refused.
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.refused && self.errors.is_empty()
    }
}

/// Applies retention. One per run; cheap to share.
pub struct Pruner {
    transports: Arc<Transports>,
    state: Arc<dyn RetentionState>,
    dry_run: bool,
    /// `false`: the plan's deletions are reported, never sent (an event
    /// pass); state updates are still written in a real run.
    deletes: bool,
    /// The clock of the run (`--now` in tests).
    now: Unix,
    /// Once cancelled (a signal), no further deletion is sent.
    stop: tokio_util::sync::CancellationToken,
}

impl Pruner {
    /// Built by the engine from its mode: `dry_run` for an estimate (whose
    /// transports are read-only and whose state drops writes). `now`: the
    /// run's clock.
    pub(crate) fn new(
        transports: Arc<Transports>,
        state: Arc<dyn RetentionState>,
        dry_run: bool,
        now: Unix,
    ) -> Self {
        Pruner {
            transports,
            state,
            dry_run,
            deletes: true,
            now,
            stop: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Sends no further deletion once `stop` is cancelled (`sync` and
    /// `prune` after SIGINT/SIGTERM); the rest are reported as skipped.
    pub fn with_stop(mut self, stop: tokio_util::sync::CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Plans as ever but sends no deletion (an event pass: the same plan,
    /// so nothing retention would delete is copied, and nothing deleted).
    pub(crate) fn without_deletions(mut self) -> Self {
        self.deletes = false;
        self
    }

    /// Carries out a rule's retention plans (one per repository read, in
    /// order). `held` names repositories whose deletions must not be sent
    /// (this run's copies there failed, so the target is not as planned),
    /// with why.
    pub(crate) async fn apply_rule(
        &self,
        rule: &Rule,
        read: RuleRead,
        plans: Vec<RepoPlan>,
        held: &HashMap<String, Failure>,
    ) -> RetentionReport {
        let mut report = RetentionReport {
            dry_run: self.dry_run,
            errors: read.errors,
            ..Default::default()
        };
        if plans
            .iter()
            .any(|p| p.refused.is_some() && !p.deletions.is_empty())
        {
            tracing::warn!("some deletions were refused (see the report); deleting nothing there");
        }
        for (repo, mut plan) in read.repos.into_iter().zip(plans) {
            let span = tracing::info_span!("repo", repository = %repo.job.location);
            let mut why_refused = repo.unread.as_ref().map_or(ErrorClass::Other, |f| f.class);
            let mut counted = false;
            if let Some(why) = held.get(&repo.input.repository) {
                if plan.refused.is_none() && !plan.deletions.is_empty() {
                    plan.refused = Some(why.message.clone());
                    why_refused = why.class;
                    counted = true;
                }
            }
            if !self.dry_run {
                self.write_updates(&repo.input.repository, &repo.updates, &mut report);
            }
            let mut out = self
                .apply(rule, &repo.job, &repo.input, plan, &mut report)
                .instrument(span)
                .await;
            out.refused_class = why_refused;
            out.refused_counted = counted;
            report.repositories.push(out);
        }
        tracing::info!(
            deleted = report.deleted,
            planned = report.planned,
            failed = report.failed,
            refused = report.refused,
            "retention finished"
        );
        report
    }

    fn write_updates(&self, repo: &str, updates: &[StateUpdate], report: &mut RetentionReport) {
        for u in updates {
            let r = match u {
                StateUpdate::Untagged { digest, since } => {
                    self.state.record_untagged(repo, digest, *since)
                }
                StateUpdate::Forget { digest } => self.state.forget_untagged(repo, digest),
            };
            if let Err(e) = r {
                let f = Failure::new(ErrorClass::Other, e);
                report
                    .errors
                    .push(RunError::new(repo, "recording untagged manifests", f));
            }
        }
    }

    /// Journals and sends the deletions of one plan (or, in a dry run,
    /// reports them), then records what the repository holds now.
    async fn apply(
        &self,
        rule: &Rule,
        job: &RepoJob,
        input: &RepoInput,
        plan: RepoPlan,
        report: &mut RetentionReport,
    ) -> RepoReport {
        let mut repo = RepoReport {
            target: job.target.clone(),
            repository: plan.repository.clone(),
            deletions: Vec::new(),
            kept: plan.kept.clone(),
            refused: plan.refused.clone(),
            refused_class: ErrorClass::Other,
            refused_counted: false,
        };
        report.planned += plan.deletions.len();
        if let Some(why) = &plan.refused {
            tracing::warn!(reason = %why, planned = plan.deletions.len(), "deleting nothing");
            report.refused = true;
        }
        let send = !self.dry_run && self.deletes && plan.refused.is_none();
        if !self.deletes && !plan.deletions.is_empty() {
            tracing::info!(
                planned = plan.deletions.len(),
                "this pass deletes nothing; the rule's next full run does"
            );
        }
        let store = match self.transports.open(&job.location) {
            Ok(s) => Some(s),
            Err(e) => {
                let f = Failure::transport(&e, Side::Target);
                report
                    .errors
                    .push(RunError::new(&plan.repository, "opening for retention", f));
                None
            }
        };
        let mut stopped = false;
        let mut halted = false;
        let mut deleted_tags: HashSet<String> = HashSet::new();
        for deletion in &plan.deletions {
            if send && !stopped && !halted && self.stop.is_cancelled() {
                halted = true;
                let f = Failure::new(
                    ErrorClass::Interrupted,
                    "interrupted; the remaining deletions are left to the next run",
                );
                report
                    .errors
                    .push(RunError::new(&plan.repository, "deleting", f));
            }
            let status = match (&store, send, stopped || halted) {
                (_, false, _) => DeletionStatus::Planned,
                (None, true, _) | (_, true, true) => DeletionStatus::Skipped,
                (Some(store), true, false) => {
                    let status = self.delete_one(rule, job, &plan, store, deletion).await;
                    match &status {
                        DeletionStatus::Deleted => {
                            report.deleted += 1;
                            deleted_tags.extend(deletion.tags.iter().cloned());
                        }
                        _ => {
                            report.failed += 1;
                            stopped = true;
                        }
                    }
                    status
                }
            };
            repo.deletions.push(DeletionReport {
                reason_text: deletion.reason.to_string(),
                deletion: deletion.clone(),
                status,
            });
        }
        if stopped {
            // the failed deletion is the failure (with its class); the rest
            // are reported as skipped, no failure of their own
            tracing::warn!(
                repository = %plan.repository,
                "a deletion failed; the rest of this repository was not pruned (children stay while their parent does)"
            );
        }
        self.record_holdings(&plan.repository, input, &deleted_tags, report);
        repo
    }

    /// Remembers what the repository holds now (first-seen times, and the
    /// baseline for noticing tags that move); a real run only.
    fn record_holdings(
        &self,
        repository: &str,
        input: &RepoInput,
        deleted_tags: &HashSet<String>,
        report: &mut RetentionReport,
    ) {
        let Listing::Complete(tags) = &input.listing else {
            return;
        };
        if self.dry_run {
            return;
        }
        let now_tags: BTreeMap<String, Digest> = tags
            .iter()
            .filter(|(t, _)| !deleted_tags.contains(*t))
            .map(|(t, d)| (t.clone(), d.clone()))
            .collect();
        if let Err(e) = self.state.record_tags(repository, &now_tags, self.now) {
            let f = Failure::new(ErrorClass::Other, e);
            report
                .errors
                .push(RunError::new(repository, "recording tags seen", f));
        }
    }

    /// Journal, DELETE, journal outcome. Never sends without a journal entry.
    async fn delete_one(
        &self,
        rule: &Rule,
        job: &RepoJob,
        plan: &RepoPlan,
        store: &Store,
        deletion: &Deletion,
    ) -> DeletionStatus {
        let entry = JournalEntry {
            rule: rule.name.clone(),
            target: job.target.clone(),
            repository: plan.repository.clone(),
            digest: deletion.digest.clone(),
            tags: deletion.tags.clone(),
            reason: deletion.reason.to_string(),
            time: self.now,
        };
        let id = match self.state.journal(&entry) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, digest = %deletion.digest, "cannot journal; not deleting");
                return DeletionStatus::Failed {
                    error: format!("not sent, journal unavailable: {e}"),
                    class: crate::transport::ErrorClass::Other,
                };
            }
        };
        tracing::debug!(journal_id = id, digest = %deletion.digest, "journaled; sending DELETE");
        match store.delete_manifest(&deletion.digest).await {
            Ok(()) => {
                tracing::info!(digest = %deletion.digest, tags = ?deletion.tags, reason = %deletion.reason, "deleted");
                if let Err(e) = self.state.journal_done(id, Ok(())) {
                    tracing::warn!(error = %e, "cannot mark the journal entry done");
                }
                if let Err(e) = self
                    .state
                    .forget_untagged(&plan.repository, &deletion.digest)
                {
                    tracing::warn!(error = %e, "cannot update the untagged record");
                }
                DeletionStatus::Deleted
            }
            Err(e) => {
                let error = e.to_string();
                let class = e.class(crate::transport::Side::Target);
                tracing::warn!(digest = %deletion.digest, error = %error, class = class.as_str(), "delete failed");
                if let Err(e) = self.state.journal_done(id, Err(&error)) {
                    tracing::warn!(error = %e, "cannot mark the journal entry failed");
                }
                DeletionStatus::Failed { error, class }
            }
        }
    }
}
