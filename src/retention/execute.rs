//! Runs retention for a rule: reads each target repository into planner
//! input (tags, manifests, times, state), plans (pure), applies the cap across
//! the run, then journals and deletes, parents first. A dry run does the same
//! reads and no write at all (neither to registries nor to the state).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::Instrument;

use super::plan::{
    Child, Deletion, Listing, ManifestInfo, RepoInput, RepoPlan, Unix, apply_cap, plan_retention,
};
use super::state::{JournalEntry, RetentionState, StateError};
use crate::config::{OrderBy, Retention, Rule};
use crate::oci::{Digest, Manifest, Verified, is_index};
use crate::plan::referrer_subject;
use crate::reference::{Location, RepoSpec};
use crate::transport::{Store, TransportError, Transports};

/// Manifest and config reads in flight per repository.
const READS_IN_PARALLEL: usize = 8;
/// Target repositories read at once.
const REPOS_IN_PARALLEL: usize = 4;
/// Image configs larger than this are not read for their `created` time.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// What happened to one planned deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeletionStatus {
    /// Dry run, or refused: not sent.
    Planned,
    Deleted,
    Failed {
        error: String,
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
    /// Problems not tied to one deletion (listing, state).
    pub errors: Vec<String>,
}

impl RetentionReport {
    /// Whether everything planned was done and nothing was refused.
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.refused && self.errors.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Inventory(String),
}

/// Applies retention. One per run; cheap to share.
pub struct Pruner {
    transports: Arc<Transports>,
    state: Arc<dyn RetentionState>,
    dry_run: bool,
    now: Unix,
}

/// One target repository to prune.
struct RepoJob {
    target: String,
    location: Location,
    source: Option<Location>,
}

impl Pruner {
    /// `dry_run`: read and plan only (the transports should be read-only
    /// too). `now`: the clock the policy is evaluated at.
    pub fn new(
        transports: Arc<Transports>,
        state: Arc<dyn RetentionState>,
        dry_run: bool,
        now: Unix,
    ) -> Self {
        Pruner {
            transports,
            state,
            dry_run,
            now,
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Applies `rule`'s retention to each of its targets. `None` when the
    /// rule has no retention.
    pub async fn prune_rule(&self, rule: &Rule) -> Option<RetentionReport> {
        let policy = rule.retention.as_ref()?;
        let span = tracing::info_span!("retention", rule = %rule.name, dry_run = self.dry_run);
        Some(self.prune_inner(rule, policy).instrument(span).await)
    }

    async fn prune_inner(&self, rule: &Rule, policy: &Retention) -> RetentionReport {
        let mut report = RetentionReport {
            dry_run: self.dry_run,
            ..Default::default()
        };
        let jobs = self.jobs(rule, &mut report).await;
        let want_source = policy.delete_removed_at_source && rule.source.is_some();

        // Read and plan every repository first: the cap applies to the run.
        let inputs: Vec<(RepoJob, RepoInput)> = futures_util::stream::iter(jobs)
            .map(|job| {
                let span = tracing::info_span!("repo", repository = %job.location);
                async move {
                    let input = self
                        .read_repo(&job, policy, want_source)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the repository completely; deleting nothing in it");
                            RepoInput::incomplete(job.location.to_string(), e.to_string())
                        });
                    (job, input)
                }
                .instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect()
            .await;
        let mut plans: Vec<(RepoJob, RepoInput, RepoPlan)> = inputs
            .into_iter()
            .map(|(job, input)| {
                let plan = plan_retention(policy, &input, self.now);
                (job, input, plan)
            })
            .collect();
        plans.sort_by(|a, b| a.2.repository.cmp(&b.2.repository));
        let mut only_plans: Vec<RepoPlan> = plans.iter().map(|p| p.2.clone()).collect();
        if apply_cap(&mut only_plans, policy.max_deletions_per_run) {
            tracing::warn!(
                cap = policy.max_deletions_per_run,
                "more deletions planned than max_deletions_per_run; deleting nothing"
            );
        }
        for ((job, input, _), capped) in plans.into_iter().zip(only_plans) {
            let span = tracing::info_span!("repo", repository = %job.location);
            let repo = self
                .apply(rule, &job, &input, capped, &mut report)
                .instrument(span)
                .await;
            report.repositories.push(repo);
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

    /// The target repositories of a rule (a `/*` target: every repository
    /// under it, from the catalog) and their source counterparts.
    async fn jobs(&self, rule: &Rule, report: &mut RetentionReport) -> Vec<RepoJob> {
        let mut jobs = Vec::new();
        for target in &rule.targets {
            if !target.wildcard {
                jobs.push(RepoJob {
                    target: target.to_string(),
                    location: target.location.clone(),
                    source: rule.source.as_ref().map(|s| s.location.clone()),
                });
                continue;
            }
            match self.transports.list_repositories(&target.location).await {
                Ok(rels) => {
                    let sources: Option<HashSet<String>> = match &rule.source {
                        Some(RepoSpec {
                            location,
                            wildcard: true,
                        }) => self
                            .transports
                            .list_repositories(location)
                            .await
                            .ok()
                            .map(|v| v.into_iter().collect()),
                        _ => None,
                    };
                    for rel in rels {
                        // A target repository without a source counterpart has
                        // no source listing: nothing is deleted as removed.
                        let source = match (&rule.source, &sources) {
                            (Some(s), Some(known)) if known.contains(&rel) => {
                                Some(s.location.join(&rel))
                            }
                            _ => None,
                        };
                        jobs.push(RepoJob {
                            target: target.to_string(),
                            location: target.location.join(&rel),
                            source,
                        });
                    }
                }
                Err(e) => {
                    report
                        .errors
                        .push(format!("listing repositories under {target}: {e}"));
                }
            }
        }
        jobs
    }

    /// Everything the planner needs about one repository. Any read failure
    /// is an error: the caller then deletes nothing there.
    async fn read_repo(
        &self,
        job: &RepoJob,
        policy: &Retention,
        want_source: bool,
    ) -> Result<RepoInput, RetentionError> {
        let repo_key = job.location.to_string();
        let store = self.transports.open(&job.location)?;
        let tag_list = store.list_tags().await?;
        let source_tags = if want_source {
            match &job.source {
                Some(loc) => {
                    let src = self.transports.open(loc)?;
                    Some(src.list_tags().await?.into_iter().collect::<BTreeSet<_>>())
                }
                None => None,
            }
        } else {
            None
        };

        // Every tagged manifest (one GET each: digest, children and subject at once).
        let fetched: Vec<(String, Digest, ManifestInfo)> = futures_util::stream::iter(tag_list)
            .map(|tag| {
                let store = &store;
                async move {
                    let (digest, info) = fetch_info(store, &tag).await?.ok_or_else(|| {
                        RetentionError::Inventory(format!(
                            "tag {tag:?} vanished while the repository was read"
                        ))
                    })?;
                    Ok::<_, RetentionError>((tag, digest, info))
                }
            })
            .buffer_unordered(READS_IN_PARALLEL)
            .try_collect()
            .await?;
        let mut tags: BTreeMap<String, Digest> = BTreeMap::new();
        let mut manifests: HashMap<Digest, ManifestInfo> = HashMap::new();
        for (tag, digest, info) in fetched {
            manifests.insert(digest.clone(), info);
            tags.insert(tag, digest);
        }

        // Tags that moved off a digest since the last run: it may now be untagged.
        let seen = self.state.seen_tags(&repo_key)?;
        let tagged: HashSet<&Digest> = tags.values().collect();
        let mut untagged = self.state.untagged(&repo_key)?;
        for old in seen.values() {
            if !tagged.contains(&old.digest) && !untagged.contains_key(&old.digest) {
                tracing::debug!(digest = %old.digest, "lost its last tag");
                if !self.dry_run {
                    self.state
                        .record_untagged(&repo_key, &old.digest, self.now)?;
                }
                untagged.insert(old.digest.clone(), self.now);
            }
        }
        let mut untagged_since = HashMap::new();
        for (digest, since) in untagged {
            if tagged.contains(&digest) {
                if !self.dry_run {
                    self.state.forget_untagged(&repo_key, &digest)?;
                }
                continue;
            }
            match fetch_info(&store, digest.as_str()).await? {
                Some((_, info)) => {
                    manifests.insert(digest.clone(), info);
                    untagged_since.insert(digest, since);
                }
                None => {
                    // Gone (deleted elsewhere, or garbage collected).
                    if !self.dry_run {
                        self.state.forget_untagged(&repo_key, &digest)?;
                    }
                }
            }
        }

        // Nested indexes: their children decide what stays.
        loop {
            let missing: BTreeSet<Digest> = manifests
                .values()
                .flat_map(|m| m.children.iter())
                .filter(|c| is_index(&c.media_type) && !manifests.contains_key(&c.digest))
                .map(|c| c.digest.clone())
                .collect();
            if missing.is_empty() {
                break;
            }
            for d in missing {
                let (_, info) = fetch_info(&store, d.as_str()).await?.ok_or_else(|| {
                    RetentionError::Inventory(format!("index {d} is referenced but missing"))
                })?;
                manifests.insert(d, info);
            }
        }

        // Image creation times, only where the policy needs them and only
        // for candidates.
        let needs_created = match policy.order_by {
            OrderBy::Created => policy.keep_last.is_some() || policy.older_than.is_some(),
            OrderBy::Semver => policy.older_than.is_some(),
            OrderBy::FirstSeen => false,
        };
        let mut created = HashMap::new();
        if needs_created {
            let candidates: Vec<(String, Digest)> = tags
                .iter()
                .filter(|(t, _)| {
                    referrer_subject(t).is_none()
                        && policy.match_tags.iter().any(|r| r.is_match(t))
                        && !policy.protect.iter().any(|r| r.is_match(t))
                })
                .map(|(t, d)| (t.clone(), d.clone()))
                .collect();
            let times: Vec<(String, Option<Unix>)> = futures_util::stream::iter(candidates)
                .map(|(tag, digest)| {
                    let store = &store;
                    async move {
                        let t = created_of(store, &digest).await?;
                        Ok::<_, RetentionError>((tag, t))
                    }
                })
                .buffer_unordered(READS_IN_PARALLEL)
                .try_collect()
                .await?;
            created.extend(times.into_iter().filter_map(|(t, c)| c.map(|c| (t, c))));
        }

        let first_seen = seen.into_iter().map(|(t, s)| (t, s.first_seen)).collect();
        Ok(RepoInput {
            repository: repo_key,
            listing: Listing::Complete(tags),
            manifests,
            created,
            first_seen,
            untagged_since,
            source_tags,
        })
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
        };
        report.planned += plan.deletions.len();
        if let Some(why) = &plan.refused {
            tracing::warn!(reason = %why, planned = plan.deletions.len(), "deleting nothing");
            report.refused = true;
        }
        let send = !self.dry_run && plan.refused.is_none();
        let store = match self.transports.open(&job.location) {
            Ok(s) => Some(s),
            Err(e) => {
                report.errors.push(e.to_string());
                None
            }
        };
        let mut stopped = false;
        let mut deleted_tags: HashSet<String> = HashSet::new();
        for deletion in &plan.deletions {
            let status = match (&store, send, stopped) {
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
            report.errors.push(format!(
                "{}: a deletion failed; the rest of this repository was not pruned (children stay while their parent does)",
                plan.repository
            ));
        }
        // Remember what the repository holds now (first-seen times, and the
        // baseline for noticing tags that move).
        if !self.dry_run {
            if let Listing::Complete(tags) = &input.listing {
                let now_tags: BTreeMap<String, Digest> = tags
                    .iter()
                    .filter(|(t, _)| !deleted_tags.contains(*t))
                    .map(|(t, d)| (t.clone(), d.clone()))
                    .collect();
                if let Err(e) = self
                    .state
                    .record_tags(&plan.repository, &now_tags, self.now)
                {
                    report.errors.push(e.to_string());
                }
            }
        }
        repo
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
                tracing::warn!(digest = %deletion.digest, error = %error, "delete failed");
                if let Err(e) = self.state.journal_done(id, Err(&error)) {
                    tracing::warn!(error = %e, "cannot mark the journal entry failed");
                }
                DeletionStatus::Failed { error }
            }
        }
    }
}

/// A manifest's digest and references; `None` when absent.
async fn fetch_info(
    store: &Store,
    reference: &str,
) -> Result<Option<(Digest, ManifestInfo)>, RetentionError> {
    let Some(raw) = store.get_manifest(reference).await? else {
        return Ok(None);
    };
    let (media_type, manifest) = Manifest::parse(&raw.media_type, &raw.bytes).map_err(|e| {
        RetentionError::Inventory(format!("manifest {reference} ({}): {e}", raw.digest))
    })?;
    let children = match &manifest {
        Manifest::Index { manifests, .. } => manifests
            .iter()
            .map(|c| Child {
                digest: c.digest.clone(),
                media_type: c.media_type.clone(),
            })
            .collect(),
        Manifest::Image { .. } => Vec::new(),
    };
    let info = ManifestInfo {
        media_type,
        children,
        subject: manifest.subject().map(|s| s.digest.clone()),
    };
    Ok(Some((raw.digest, info)))
}

/// The `created` time of an image (for an index: its newest child). `None`
/// when the config has no readable time.
async fn created_of(store: &Store, digest: &Digest) -> Result<Option<Unix>, RetentionError> {
    let Some(raw) = store.get_manifest(digest.as_str()).await? else {
        return Err(RetentionError::Inventory(format!(
            "manifest {digest} vanished while the repository was read"
        )));
    };
    let (_, manifest) = Manifest::parse(&raw.media_type, &raw.bytes)
        .map_err(|e| RetentionError::Inventory(format!("manifest {digest}: {e}")))?;
    match manifest {
        Manifest::Image { config, .. } => {
            if config.size as usize > MAX_CONFIG_BYTES {
                return Ok(None);
            }
            let stream = store.get_blob(&config.digest, config.size).await?;
            let mut verified = Verified::new(stream, config.digest.clone(), Some(config.size));
            let mut bytes = Vec::with_capacity(config.size as usize);
            while let Some(chunk) = verified.next().await {
                let chunk = chunk.map_err(|e| {
                    RetentionError::Inventory(format!("config {}: {e}", config.digest))
                })?;
                bytes.extend_from_slice(&chunk);
            }
            #[derive(serde::Deserialize)]
            struct Config {
                created: Option<String>,
            }
            Ok(serde_json::from_slice::<Config>(&bytes)
                .ok()
                .and_then(|c| c.created)
                .and_then(|c| parse_rfc3339(&c)))
        }
        Manifest::Index { manifests, .. } => {
            let mut newest: Option<Unix> = None;
            for child in manifests {
                if is_index(&child.media_type) {
                    continue;
                }
                if let Some(t) = Box::pin(created_of(store, &child.digest)).await? {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            Ok(newest)
        }
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-31T12:00:00.5Z`, `...+02:00`) to
/// Unix seconds (chrono's parser: offsets, fractions and date validity).
pub fn parse_rfc3339(s: &str) -> Option<Unix> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00.123456789+02:00"),
            Some(1_704_067_200)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:15-01:00"),
            Some(1_709_213_415)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some(-62_135_596_800));
        assert_eq!(parse_rfc3339("2024-01-01"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
        assert_eq!(
            parse_rfc3339("2023-02-29T00:00:00Z"),
            None,
            "not a leap year"
        );
    }
}
