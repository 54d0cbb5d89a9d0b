//! What a rule run did (or, for `plan`, would do): the report every command
//! prints, the daemon records, and the metrics read. Plain data.

use serde::Serialize;

use super::copy::{CopyTotals, DryRunCost};
use crate::oci::Digest;
use crate::plan::TargetAction;
use crate::retention::{DeletionStatus, RetentionReport};
use crate::transport::{ErrorClass, Side, TransportError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Success,
    Partial,
    Failed,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Partial => "partial",
            RunResult::Failed => "failed",
        }
    }
}

/// Why something failed: its class (from the typed error where it
/// happened) and the message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(class: ErrorClass, message: impl ToString) -> Self {
        Failure {
            class,
            message: message.to_string(),
        }
    }

    /// A transport failure at the source or at a target.
    pub(crate) fn transport(e: &TransportError, side: Side) -> Self {
        Failure::new(e.class(side), e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A failure not tied to one copy: a repository that could not be listed, a
/// source that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunError {
    /// The repository concerned (source or target), as written.
    pub target: String,
    /// What was being done, e.g. `listing tags`.
    pub what: String,
    pub class: ErrorClass,
    pub error: String,
}

impl RunError {
    /// The failure, logged once here with its class.
    pub(crate) fn new(target: impl ToString, what: &str, failure: Failure) -> Self {
        let e = RunError {
            target: target.to_string(),
            what: what.to_string(),
            class: failure.class,
            error: failure.message,
        };
        // at debug: the run's end logs every failure once, at WARN or ERROR
        // (`RuleReport::log_failures`)
        tracing::debug!(target = %e.target, what = %e.what, class = e.class.as_str(), error = %e.error, "failed");
        e
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.target, self.what, self.error)
    }
}

/// One decision about one tag at one target, with what it cost or would cost.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub source: String,
    pub target: String,
    pub tag: String,
    pub digest: Digest,
    #[serde(flatten)]
    pub action: TargetAction,
    /// `plan`: what the copy would transfer to this target; `sync`: what
    /// this target received (a blob streamed to several counts for each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<DryRunCost>,
    /// Set when this copy failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// A referrer pushed by digest or a fallback index merged (no tag of
    /// the selection: the state records no tag for it).
    #[serde(skip)]
    pub referrer_write: bool,
    /// A referrer pushed by digest (not a fallback index).
    #[serde(skip)]
    pub pushed_by_digest: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub result: RunResult,
    /// Whether this is a plan (nothing was done) or what a sync did.
    pub dry_run: bool,
    pub started_unix: u64,
    pub duration_seconds: f64,
    pub repositories: usize,
    /// Source tags the filters selected, over all repositories
    /// (`regkeeper_rule_tags_selected`).
    pub tags_selected: usize,
    pub tags_in_sync: usize,
    pub tags_copied: usize,
    pub tags_failed: usize,
    /// Selected source tags not compared with a target because the target
    /// could not be read, counted per target (`regkeeper_rule_tags_pending`).
    pub tags_unreachable: usize,
    /// Copies that an `immutable` rule declined.
    pub tags_kept_immutable: usize,
    /// Copies `[rule.verify]` refused (per tag and target): the run is not
    /// a success.
    pub tags_refused: usize,
    /// Referrers found by subject and pushed by digest, per target
    /// (`regkeeper_referrers_copied_total`).
    pub referrers_copied: usize,
    pub totals: CopyTotals,
    /// Everything that was (or would be) done, and every failure.
    pub images: Vec<ImageReport>,
    /// Failures not tied to one image (listing a repository, say).
    pub errors: Vec<RunError>,
    /// Things an operator should know that are not failures (filters that
    /// select nothing).
    pub warnings: Vec<String>,
    /// Names the source sent (tags, repositories) that are not valid
    /// distribution names, or that would land outside the rule's `oci:`
    /// target: skipped, each with a warning.
    pub names_skipped: usize,
    /// Manifests deleted by retention in this run (`regkeeper_retention_deleted_total`).
    pub retention_deleted: usize,
    /// The retention step, for rules that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionReport>,
    /// With `--shard`, for a `/*` rule: the source repositories this shard owns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_repositories: Option<Vec<String>>,
}

impl RuleReport {
    pub(crate) fn new(rule: &str, dry_run: bool) -> Self {
        RuleReport {
            rule: rule.to_string(),
            result: RunResult::Success,
            dry_run,
            started_unix: 0,
            duration_seconds: 0.0,
            repositories: 0,
            tags_selected: 0,
            tags_in_sync: 0,
            tags_copied: 0,
            tags_failed: 0,
            tags_unreachable: 0,
            tags_kept_immutable: 0,
            tags_refused: 0,
            referrers_copied: 0,
            totals: CopyTotals::default(),
            images: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            names_skipped: 0,
            retention_deleted: 0,
            retention: None,
            shard_repositories: None,
        }
    }

    /// Counts the images by outcome and sets the result of the copy step.
    pub(crate) fn tally(&mut self) {
        for image in &self.images {
            if image.pushed_by_digest && image.action.needs_copy() && image.error.is_none() {
                self.referrers_copied += 1;
            }
            match (&image.action, &image.error) {
                (_, Some(_)) => self.tags_failed += 1,
                (TargetAction::KeepImmutable { .. }, None) => self.tags_kept_immutable += 1,
                (TargetAction::Refused { .. }, None) => self.tags_refused += 1,
                (a, None) if a.needs_copy() => self.tags_copied += 1,
                (_, None) => self.tags_in_sync += 1,
            }
        }
        let ok = self.tags_in_sync + self.tags_copied + self.tags_kept_immutable;
        self.result = if self.tags_failed == 0 && self.tags_refused == 0 && self.errors.is_empty() {
            RunResult::Success
        } else if ok > 0 {
            RunResult::Partial
        } else {
            RunResult::Failed
        };
    }

    /// Whether a stop (a signal) cut this run short: it did not succeed and
    /// some failure is of class `interrupted`.
    pub fn interrupted(&self) -> bool {
        self.result != RunResult::Success
            && self
                .failures()
                .iter()
                .any(|f| f.class == crate::transport::ErrorClass::Interrupted)
    }

    /// Every failure of the run, once each, with its class: the run's own
    /// errors, failed copies, and retention's failed deletions, refusals
    /// and errors. What `--json` lists under `errors` and
    /// `regkeeper_rule_errors_total` counts.
    pub fn failures(&self) -> Vec<RunError> {
        let mut out = self.errors.clone();
        out.extend(self.refusals().map(|(i, reason, detail)| {
            failure(
                &i.target,
                format!("refused {}:{}", i.source, i.tag),
                ErrorClass::Verification,
                &format!("{reason}: {detail}; not copied"),
            )
        }));
        out.extend(self.images.iter().filter_map(|i| {
            let f = i.error.as_ref()?;
            Some(failure(
                &i.target,
                format!("copying {}:{}", i.source, i.tag),
                f.class,
                &f.message,
            ))
        }));
        let Some(ret) = &self.retention else {
            return out;
        };
        for repo in &ret.repositories {
            for d in &repo.deletions {
                if let DeletionStatus::Failed { error, class } = &d.status {
                    let what = format!("deleting {}", d.deletion.digest);
                    out.push(failure(&repo.repository, what, *class, error));
                }
            }
            if let Some(why) = repo.refused.as_ref().filter(|_| !repo.refused_counted) {
                let what = "retention refused".to_string();
                out.push(failure(&repo.repository, what, repo.refused_class, why));
            }
        }
        out.extend(ret.errors.iter().cloned());
        out
    }

    /// The images `[rule.verify]` refused, per tag and target, with why.
    pub fn refusals(&self) -> impl Iterator<Item = (&ImageReport, crate::verify::Refusal, &str)> {
        self.images.iter().filter_map(|i| match &i.action {
            TargetAction::Refused { reason, detail } => Some((i, *reason, detail.as_str())),
            _ => None,
        })
    }

    /// Folds the retention step in: its deletions count, and a retention
    /// that failed or refused makes the run partial (or failed, for a
    /// cleanup-only rule that deleted nothing).
    pub(crate) fn add_retention(&mut self, retention: RetentionReport, cleanup_only: bool) {
        self.retention_deleted = retention.deleted;
        // Held back by a failure already reported (a copy there failed):
        // said once as a failure, and here as what it kept from happening.
        for repo in retention.repositories.iter().filter(|r| r.refused_counted) {
            if let Some(why) = &repo.refused {
                (self.warnings).push(format!("{}: retention: {why}", repo.repository));
            }
        }
        if !retention.ok() {
            self.result = match self.result {
                RunResult::Success if cleanup_only && retention.deleted == 0 => RunResult::Failed,
                RunResult::Success => RunResult::Partial,
                other => other,
            };
        }
        self.retention = Some(retention);
    }
}

/// At most this many failures are spelled out in a run's one failure line.
const LOGGED_FAILURES: usize = 5;

impl RuleReport {
    /// Logs a partial run at WARN and a failed one at ERROR, once per run:
    /// the tag counts (copied, failed, in sync) and retention's deletions,
    /// the first failure's class, repository/tag and cause as fields, and
    /// up to [`LOGGED_FAILURES`] of them in the message. Nothing for a
    /// successful run. Called where a run finishes (daemon and `sync`).
    pub fn log_failures(&self) {
        let failures = self.failures();
        let Some(first) = failures.first() else {
            if self.result != RunResult::Success {
                tracing::warn!(rule = %self.rule, result = self.result.as_str(), "rule run not successful");
            }
            return;
        };
        let mut text: Vec<String> = failures
            .iter()
            .take(LOGGED_FAILURES)
            .map(|f| format!("[{}] {f}", f.class))
            .collect();
        if failures.len() > LOGGED_FAILURES {
            text.push(format!("and {} more", failures.len() - LOGGED_FAILURES));
        }
        let text = text.join("; ");
        // the message holds the causes; the fields the first one's class
        // and repository, for log queries
        let (class, target) = (first.class.as_str(), &first.target);
        let (n, result) = (failures.len(), self.result.as_str());
        // the counts tell a run that copied most from one that copied little
        let (copied, failed, in_sync) = (self.tags_copied, self.tags_failed, self.tags_in_sync);
        let deleted = self.retention_deleted;
        match self.result {
            RunResult::Failed => tracing::error!(
                rule = %self.rule, result, copied, failed, in_sync, deleted, failures = n,
                class, target = %target, "rule {} failed: {text}", self.rule
            ),
            _ => tracing::warn!(
                rule = %self.rule, result, copied, failed, in_sync, deleted, failures = n,
                class, target = %target, "rule {} partly failed: {text}", self.rule
            ),
        }
    }
}

/// A failure as reported (not logged again).
fn failure(target: &str, what: String, class: ErrorClass, error: &str) -> RunError {
    RunError {
        target: target.to_string(),
        what,
        class,
        error: error.to_string(),
    }
}
