//! Runs rules: inventory (what source and targets hold) -> plan (pure) ->
//! copy. A failure on one image or repository is recorded and the rule goes
//! on; the report says what failed and why.

pub mod copy;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::Rule;
use crate::filter::select_tags;
use crate::oci::{Digest, Platform, RawManifest, is_index};
use crate::plan::{SourceTag, TagPlan, TargetAction, TargetTags, plan_tags, referrer_subject};
use crate::reference::Location;
use crate::retention::{Pruner, RetentionReport};
use crate::state::{State, TagObservation, TagState, now_unix};
use crate::transport::{Store, TransportError, Transports};

use copy::{Copier, CopyError, CopyStats, CopyTotals, DryRunCost, filter_index};

/// Images of one repository copied at once (each bounded further by the
/// global transfer limit).
const IMAGES_IN_PARALLEL: usize = 4;
/// Repositories of a `/*` rule inventoried at once.
const REPOS_IN_PARALLEL: usize = 16;
/// A target digest known from the state is trusted (its HEAD spared) for
/// this long after the registry last confirmed it; then it is asked again.
/// This bounds how long a target restored from an old backup (tag present,
/// older digest) can go unnoticed. A target that lost the tag is noticed at
/// once: the tag list is read on every run.
pub const REVERIFY_AFTER_SECS: i64 = 3600;

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

/// One decision about one tag at one target, with what it cost or would cost.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub source: String,
    pub target: String,
    pub tag: String,
    pub digest: Digest,
    #[serde(flatten)]
    pub action: TargetAction,
    /// For `plan`: what the copy would transfer to this target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<DryRunCost>,
    /// Set when this copy failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub result: RunResult,
    pub started_unix: u64,
    pub duration_seconds: f64,
    pub repositories: usize,
    pub tags_in_sync: usize,
    pub tags_copied: usize,
    pub tags_failed: usize,
    /// Selected source tags not compared with a target because the target
    /// could not be read (counted per target; `regkeeper_rule_tags_pending`).
    pub tags_unreachable: usize,
    /// Copies that an `immutable` rule declined.
    pub tags_kept_immutable: usize,
    pub totals: CopyTotals,
    /// Everything that was (or would be) done, and every failure.
    pub images: Vec<ImageReport>,
    /// Failures not tied to one image (listing a repository, say).
    pub errors: Vec<String>,
    /// Manifests deleted by retention in this run (`regkeeper_retention_deleted_total`).
    pub retention_deleted: usize,
    /// The retention step, for rules that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionReport>,
}

impl RuleReport {
    pub fn pending_bytes(&self) -> u64 {
        self.images
            .iter()
            .filter_map(|i| i.cost)
            .map(|c| c.bytes_to_copy)
            .sum()
    }
}

/// Runs rules against real stores. One per process run: it owns the blob
/// tracker and the global transfer limit.
pub struct Engine {
    transports: Arc<Transports>,
    copier: Copier,
    dry_run: bool,
    /// Hints about targets (spared HEADs) and where runs are recorded.
    state: Option<State>,
}

/// What one repository pair yields.
struct RepoOutcome {
    images: Vec<ImageReport>,
    errors: Vec<String>,
    /// Selected source tags times targets whose tag list could not be read.
    unreachable_tags: usize,
}

impl Engine {
    /// `dry_run`: inventory and plan only; count what would be copied with
    /// read requests, write nothing (the transports should be read-only too).
    pub fn new(
        transports: Arc<Transports>,
        max_concurrent_transfers: usize,
        dry_run: bool,
    ) -> Self {
        Engine {
            transports,
            copier: Copier {
                tracker: Default::default(),
                stats: Arc::new(CopyStats::default()),
                transfers: Arc::new(Semaphore::new(max_concurrent_transfers.max(1))),
                on_bytes: None,
                checkpoints: None,
                stop: tokio_util::sync::CancellationToken::new(),
            },
            dry_run,
            state: None,
        }
    }

    /// Uses the state database: tag hints that spare target HEADs, tag
    /// observations recorded after each repository, and upload checkpoints.
    /// Ignored for dry runs, which write nothing anywhere.
    pub fn with_state(mut self, state: State) -> Self {
        if !self.dry_run {
            self.copier.checkpoints = Some(state.clone());
            self.state = Some(state);
        }
        self
    }

    /// Stops taking new work when `stop` is cancelled; chunked uploads stop
    /// after the chunk in flight.
    pub fn with_stop(mut self, stop: tokio_util::sync::CancellationToken) -> Self {
        self.copier.stop = stop;
        self
    }

    /// The global transfer limit, to share it with an engine built later
    /// (after a reload) so that both together never exceed it.
    pub fn transfer_limit(&self) -> Arc<Semaphore> {
        self.copier.transfers.clone()
    }

    pub fn with_transfer_limit(mut self, limit: Arc<Semaphore>) -> Self {
        self.copier.transfers = limit;
        self
    }

    pub fn transports(&self) -> &Arc<Transports> {
        &self.transports
    }

    /// Called with the byte count of every chunk read from a source.
    pub fn on_bytes(&mut self, f: Arc<dyn Fn(u64) + Send + Sync>) {
        self.copier.on_bytes = Some(f);
    }

    pub fn stats(&self) -> &Arc<CopyStats> {
        &self.copier.stats
    }

    /// Runs one rule: the sync step (when it has a source), then, as a
    /// separate step on each target, its retention (when it has one and a
    /// pruner is given).
    pub async fn run_rule(&self, rule: &Rule, pruner: Option<&Pruner>) -> RuleReport {
        let mut report = self.sync_rule(rule).await;
        if let (Some(pruner), Some(_)) = (pruner, &rule.retention) {
            let started = Instant::now();
            let retention = pruner.prune_rule(rule).await;
            report.duration_seconds += started.elapsed().as_secs_f64();
            if let Some(r) = retention {
                apply_retention(&mut report, r, rule.source.is_none());
            }
        }
        report
    }

    /// Syncs one rule (its source to every target). Never panics on registry
    /// trouble: failures end up in the report.
    pub async fn sync_rule(&self, rule: &Rule) -> RuleReport {
        let span = tracing::info_span!("rule", rule = %rule.name);
        let run = Engine {
            transports: self.transports.clone(),
            copier: self.copier.for_run(),
            dry_run: self.dry_run,
            state: self.state.clone(),
        };
        let report = run.sync_rule_inner(rule).instrument(span).await;
        // Keep the engine-wide counters (progress, `copy`) whole.
        let t = report.totals;
        let s = &self.copier.stats;
        s.bytes_read.fetch_add(t.bytes_read, Ordering::Relaxed);
        s.bytes_written
            .fetch_add(t.bytes_written, Ordering::Relaxed);
        s.blobs_copied.fetch_add(t.blobs_copied, Ordering::Relaxed);
        s.blobs_mounted
            .fetch_add(t.blobs_mounted, Ordering::Relaxed);
        s.blobs_skipped
            .fetch_add(t.blobs_skipped, Ordering::Relaxed);
        s.blobs_resumed
            .fetch_add(t.blobs_resumed, Ordering::Relaxed);
        s.manifests_pushed
            .fetch_add(t.manifests_pushed, Ordering::Relaxed);
        report
    }

    async fn sync_rule_inner(&self, rule: &Rule) -> RuleReport {
        let started = Instant::now();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let before = self.copier.stats.totals();
        let mut report = RuleReport {
            rule: rule.name.clone(),
            result: RunResult::Success,
            started_unix,
            duration_seconds: 0.0,
            repositories: 0,
            tags_in_sync: 0,
            tags_copied: 0,
            tags_failed: 0,
            tags_unreachable: 0,
            tags_kept_immutable: 0,
            totals: CopyTotals::default(),
            images: Vec::new(),
            errors: Vec::new(),
            retention_deleted: 0,
            retention: None,
        };
        let Some(source) = &rule.source else {
            // Cleanup-only rule: nothing to sync.
            report.duration_seconds = started.elapsed().as_secs_f64();
            return report;
        };

        // Which repository pairs: one, or every repository under a prefix.
        let pairs: Vec<(Location, Vec<Location>)> = if source.wildcard {
            match self.transports.list_repositories(&source.location).await {
                Ok(repos) => repos
                    .into_iter()
                    .map(|rel| {
                        let targets = rule.targets.iter().map(|t| t.location.join(&rel)).collect();
                        (source.location.join(&rel), targets)
                    })
                    .collect(),
                Err(e) => {
                    report
                        .errors
                        .push(format!("listing repositories under {source}: {e}"));
                    Vec::new()
                }
            }
        } else {
            vec![(
                source.location.clone(),
                rule.targets.iter().map(|t| t.location.clone()).collect(),
            )]
        };
        report.repositories = pairs.len();
        tracing::info!(repositories = pairs.len(), "syncing");

        let outcomes = futures_util::stream::iter(pairs)
            .map(|(src, targets)| {
                let span = tracing::info_span!("repo", source = %src);
                self.sync_repo(rule, src, targets).instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect::<Vec<_>>()
            .await;
        for outcome in outcomes {
            report.images.extend(outcome.images);
            report.errors.extend(outcome.errors);
            report.tags_unreachable += outcome.unreachable_tags;
        }
        for image in &report.images {
            match (&image.action, &image.error) {
                (_, Some(_)) => report.tags_failed += 1,
                (TargetAction::InSync | TargetAction::DeletedByRetention, None) => {
                    report.tags_in_sync += 1
                }
                (TargetAction::KeepImmutable { .. }, None) => report.tags_kept_immutable += 1,
                (_, None) => report.tags_copied += 1,
            }
        }
        let after = self.copier.stats.totals();
        report.totals = CopyTotals {
            bytes_read: after.bytes_read - before.bytes_read,
            bytes_written: after.bytes_written - before.bytes_written,
            blobs_copied: after.blobs_copied - before.blobs_copied,
            blobs_mounted: after.blobs_mounted - before.blobs_mounted,
            blobs_skipped: after.blobs_skipped - before.blobs_skipped,
            blobs_resumed: after.blobs_resumed - before.blobs_resumed,
            manifests_pushed: after.manifests_pushed - before.manifests_pushed,
            images_copied: after.images_copied - before.images_copied,
        };
        let ok = report.tags_in_sync + report.tags_copied + report.tags_kept_immutable;
        report.result = if report.tags_failed == 0 && report.errors.is_empty() {
            RunResult::Success
        } else if ok > 0 {
            RunResult::Partial
        } else {
            RunResult::Failed
        };
        report.duration_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            result = report.result.as_str(),
            copied = report.tags_copied,
            in_sync = report.tags_in_sync,
            failed = report.tags_failed,
            bytes = report.totals.bytes_written,
            seconds = report.duration_seconds,
            "rule finished"
        );
        report
    }

    async fn sync_repo(
        &self,
        rule: &Rule,
        src_loc: Location,
        target_locs: Vec<Location>,
    ) -> RepoOutcome {
        let mut out = RepoOutcome {
            images: Vec::new(),
            errors: Vec::new(),
            unreachable_tags: 0,
        };
        let open = |loc: &Location| self.transports.open(loc);
        let source = match open(&src_loc) {
            Ok(s) => s,
            Err(e) => {
                out.errors.push(e.to_string());
                return out;
            }
        };
        // Tag lists of the source and every target, all at once (one request
        // each); the per-registry limits bound what is really in flight.
        let target_stores: Vec<(Location, Result<Store, TransportError>)> = target_locs
            .iter()
            .map(|loc| (loc.clone(), open(loc)))
            .collect();
        let target_listing =
            futures_util::future::join_all(target_stores.iter().map(|(_, store)| async move {
                match store {
                    Ok(s) => Some(s.list_tags().await),
                    Err(_) => None,
                }
            }));
        let (source_listing, target_listing) = tokio::join!(source.list_tags(), target_listing);
        let all_tags = match source_listing {
            Ok(t) => t,
            Err(e) => {
                out.errors.push(format!("listing tags of {src_loc}: {e}"));
                return out;
            }
        };
        let selected = select_tags(&rule.tags, &all_tags);
        let mut targets = Vec::new();
        let mut target_lists = Vec::new();
        for ((loc, store), listing) in target_stores.into_iter().zip(target_listing) {
            match (store, listing) {
                (Ok(store), Some(Ok(tags))) => {
                    target_lists.push(tags.into_iter().collect::<HashSet<_>>());
                    targets.push(store);
                }
                (Err(e), _) => {
                    out.errors.push(e.to_string());
                    out.unreachable_tags += selected.len();
                }
                (Ok(_), Some(Err(e))) => {
                    out.errors.push(format!("listing tags of {loc}: {e}"));
                    out.unreachable_tags += selected.len();
                }
                (Ok(_), None) => unreachable!("a listing for every opened store"),
            }
        }
        if targets.is_empty() {
            return out;
        }
        let hints: Vec<HashMap<String, TagState>> = targets
            .iter()
            .map(|t| self.load_hints(rule, t.location()))
            .collect();

        // Source digests (and manifests where a copy is certain).
        let mut inventory = self
            .inventory(
                rule,
                &source,
                &selected,
                &targets,
                &target_lists,
                &hints,
                false,
                &mut out,
            )
            .await;
        let mut considered: Vec<String> = selected.clone();
        if rule.referrers {
            let subjects: HashSet<String> = inventory
                .tags
                .iter()
                .map(|t| t.digest.to_string())
                .collect();
            let referrer_tags: Vec<String> = all_tags
                .iter()
                .filter(|t| referrer_subject(t).is_some_and(|s| subjects.contains(&s)))
                .filter(|t| !selected.contains(t))
                .cloned()
                .collect();
            considered.extend(referrer_tags.iter().cloned());
            if !referrer_tags.is_empty() {
                let more = self
                    .inventory(
                        rule,
                        &source,
                        &referrer_tags,
                        &targets,
                        &target_lists,
                        &hints,
                        true,
                        &mut out,
                    )
                    .await;
                inventory.tags.extend(more.tags);
                inventory.manifests.extend(more.manifests);
                inventory.hinted.extend(more.hinted);
                for (t, more_digests) in inventory.targets.iter_mut().zip(more.targets) {
                    t.digests.extend(more_digests.digests);
                }
            }
        }

        let mut plans = plan_tags(&inventory.tags, &inventory.targets, rule.immutable);
        self.spare_retained(rule, &mut plans);
        // Ordinary tags first (in parallel), then referrers, after their subjects.
        let (ordinary, referrers): (Vec<TagPlan>, Vec<TagPlan>) =
            plans.into_iter().partition(|p| !p.referrer);
        for group in [ordinary, referrers] {
            let results = futures_util::stream::iter(group)
                .map(|plan| {
                    let manifest = inventory.manifests.get(&plan.tag).cloned();
                    let span = tracing::info_span!("image", tag = %plan.tag, digest = %plan.digest.short());
                    self.execute(rule, &source, &targets, plan, manifest).instrument(span)
                })
                .buffer_unordered(IMAGES_IN_PARALLEL)
                .collect::<Vec<_>>()
                .await;
            for images in results {
                out.images.extend(images);
            }
        }
        self.record_tags(rule, &targets, &inventory, &out.images, &considered);
        out
    }

    /// What the state believes about one target repository (empty without
    /// a state, or when it cannot be read: then every tag is asked).
    fn load_hints(&self, rule: &Rule, target: &Location) -> HashMap<String, TagState> {
        let Some(state) = &self.state else {
            return HashMap::new();
        };
        let (t, repo) = copy::state_key(target);
        state.tag_states(&rule.name, &t, &repo).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read tag hints; asking the target");
            HashMap::new()
        })
    }

    /// Records what this run saw and did per tag and target, so the next
    /// run may spare requests and `tags_pending` counts what is still
    /// different.
    /// A tag this rule's retention deleted from a target (same digest, and
    /// the DELETE went through) is not copied there again: sync and
    /// retention would otherwise undo each other on every run.
    fn spare_retained(&self, rule: &Rule, plans: &mut [TagPlan]) {
        let (Some(state), Some(_)) = (&self.state, &rule.retention) else {
            return;
        };
        for plan in plans.iter_mut() {
            for (location, action) in plan.targets.iter_mut() {
                if *action != TargetAction::Create {
                    continue;
                }
                let repo = location.to_string();
                match state.deleted_by_retention(&rule.name, &repo, plan.digest.as_str(), &plan.tag)
                {
                    Ok(true) => *action = TargetAction::DeletedByRetention,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the retention journal"),
                }
            }
        }
    }

    fn record_tags(
        &self,
        rule: &Rule,
        targets: &[Store],
        inventory: &Inventory,
        images: &[ImageReport],
        considered: &[String],
    ) {
        let Some(state) = &self.state else {
            return;
        };
        let now = now_unix();
        for (i, target) in targets.iter().enumerate() {
            let name = target.location().to_string();
            let mut seen = Vec::new();
            for image in images.iter().filter(|im| im.target == name) {
                let (target_digest, verified_now) = match (&image.action, &image.error) {
                    (TargetAction::KeepImmutable { .. }, _)
                    | (TargetAction::DeletedByRetention, _) => continue,
                    (TargetAction::InSync, _) => (
                        Some(image.digest.as_str()),
                        !inventory.hinted.contains(&(i, image.tag.clone())),
                    ),
                    (_, None) => (Some(image.digest.as_str()), true),
                    (TargetAction::Create, Some(_)) => (None, true),
                    (TargetAction::Update { from }, Some(_)) => (Some(from.as_str()), true),
                };
                seen.push(TagObservation {
                    tag: &image.tag,
                    source_digest: image.digest.as_str(),
                    target_digest,
                    verified_now,
                });
            }
            let (t, repo) = copy::state_key(target.location());
            if let Err(e) = state.record_tags(&rule.name, &t, &repo, &seen, Some(considered), now) {
                tracing::warn!(error = %e, "cannot record tag state");
            }
        }
    }

    /// Resolves the digests of `tags` at the source and at each target. A
    /// tag a target lacks (by its tag list) is certainly copied, so its source
    /// manifest is fetched right away (one GET instead of HEAD then GET) and
    /// the target is not asked about it.
    #[allow(clippy::too_many_arguments)]
    async fn inventory(
        &self,
        rule: &Rule,
        source: &Store,
        tags: &[String],
        targets: &[Store],
        target_lists: &[HashSet<String>],
        hints: &[HashMap<String, TagState>],
        referrer: bool,
        out: &mut RepoOutcome,
    ) -> Inventory {
        let now = now_unix();
        let platforms = if referrer {
            &[][..]
        } else {
            &rule.platforms[..]
        };
        let results = futures_util::stream::iter(tags.iter().cloned())
            .map(|tag| async move {
                let missing_somewhere = target_lists.iter().any(|l| !l.contains(&tag));
                // A target digest the state confirmed recently; used only if
                // the source still has that digest (checked below).
                let hint = |i: usize| {
                    hints[i]
                        .get(&tag)
                        .filter(|h| now - h.verified < REVERIFY_AFTER_SECS)
                        .and_then(|h| h.target_digest.clone())
                };
                // The source and every target that lists the tag (and has no
                // usable hint), asked at once.
                let at_targets = futures_util::future::join_all(
                    targets
                        .iter()
                        .zip(target_lists)
                        .enumerate()
                        .map(|(i, (target, list))| {
                            let tag = &tag;
                            let skip = hint(i).is_some();
                            async move {
                                if !list.contains(tag) || skip {
                                    return Ok(None);
                                }
                                target
                                    .resolve(tag)
                                    .await
                                    .map(|h| h.map(|h| h.digest))
                                    .map_err(|e| (tag.clone(), e.to_string()))
                            }
                        }),
                );
                let (source_manifest, at_targets) = tokio::join!(
                    resolve_source(source, &tag, missing_somewhere, platforms),
                    at_targets
                );
                let Some((digest, manifest)) = source_manifest? else {
                    return Ok(None);
                };
                let mut at_targets = at_targets.into_iter().collect::<Result<Vec<_>, _>>()?;
                let mut hinted = Vec::new();
                for (i, (target, list)) in targets.iter().zip(target_lists).enumerate() {
                    if !list.contains(&tag) {
                        continue;
                    }
                    let Some(believed) = hint(i) else { continue };
                    if believed == digest.as_str() {
                        // The target lists the tag, and the registry confirmed
                        // recently that it points at what the source has now.
                        at_targets[i] = Some(digest.clone());
                        hinted.push(i);
                    } else {
                        // The source moved: ask the target what it has.
                        at_targets[i] = target
                            .resolve(&tag)
                            .await
                            .map_err(|e| (tag.clone(), e.to_string()))?
                            .map(|h| h.digest);
                    }
                }
                Ok(Some((tag, digest, manifest, at_targets, hinted)))
            })
            .buffer_unordered(8)
            .collect::<Vec<Result<Option<_>, (String, String)>>>()
            .await;

        let mut inv = Inventory {
            tags: Vec::new(),
            manifests: HashMap::new(),
            hinted: HashSet::new(),
            targets: targets
                .iter()
                .map(|t| TargetTags {
                    location: t.location().clone(),
                    digests: HashMap::new(),
                })
                .collect(),
        };
        for r in results {
            match r {
                Ok(Some((tag, digest, manifest, at_targets, hinted))) => {
                    inv.hinted
                        .extend(hinted.into_iter().map(|i| (i, tag.clone())));
                    for (t, d) in inv.targets.iter_mut().zip(at_targets) {
                        if let Some(d) = d {
                            t.digests.insert(tag.clone(), d);
                        }
                    }
                    if let Some(m) = manifest {
                        inv.manifests.insert(tag.clone(), m);
                    }
                    inv.tags.push(SourceTag {
                        tag,
                        digest,
                        referrer,
                    });
                }
                Ok(None) => {}
                Err((tag, e)) => out.errors.push(format!("tag {tag}: {e}")),
            }
        }
        // Keep the selection order (newest first) for reports.
        let order: HashMap<&String, usize> = tags.iter().enumerate().map(|(i, t)| (t, i)).collect();
        inv.tags
            .sort_by_key(|t| order.get(&t.tag).copied().unwrap_or(usize::MAX));
        inv
    }

    /// Copies one tag to the targets that need it (or, in a dry run, counts
    /// what that would take). Returns one report per target.
    async fn execute(
        &self,
        rule: &Rule,
        source: &Store,
        targets: &[Store],
        plan: TagPlan,
        manifest: Option<RawManifest>,
    ) -> Vec<ImageReport> {
        let mut reports: Vec<ImageReport> = plan
            .targets
            .iter()
            .map(|(loc, action)| ImageReport {
                source: source.location().to_string(),
                target: loc.to_string(),
                tag: plan.tag.clone(),
                digest: plan.digest.clone(),
                action: action.clone(),
                cost: None,
                error: None,
            })
            .collect();
        let needing: Vec<usize> = plan
            .targets
            .iter()
            .enumerate()
            .filter(|(_, (_, a))| a.needs_copy())
            .map(|(i, _)| i)
            .collect();
        if needing.is_empty() {
            return reports;
        }
        let fail_all = |reports: &mut Vec<ImageReport>, msg: String| {
            for &i in &needing {
                reports[i].error = Some(msg.clone());
            }
        };
        if self.copier.stop.is_cancelled() {
            fail_all(
                &mut reports,
                "not started: shutting down; the next run copies it".into(),
            );
            return reports;
        }
        let platforms = if plan.referrer {
            &[][..]
        } else {
            &rule.platforms[..]
        };
        let root = match manifest {
            Some(m) => m,
            None => match resolve_source(source, &plan.tag, true, platforms).await {
                Ok(Some((_, Some(m)))) if m.digest == plan.digest => m,
                Ok(Some((_, Some(m)))) => {
                    fail_all(
                        &mut reports,
                        format!(
                            "the source tag moved to {} during the run; the next run copies it",
                            m.digest
                        ),
                    );
                    return reports;
                }
                Ok(_) => {
                    fail_all(
                        &mut reports,
                        "the source tag vanished during the run".into(),
                    );
                    return reports;
                }
                Err((_, e)) => {
                    fail_all(&mut reports, e);
                    return reports;
                }
            },
        };
        let tree = match copy::expand(source, root).await {
            Ok(t) => t,
            Err(e) => {
                fail_all(&mut reports, e.to_string());
                return reports;
            }
        };
        if self.dry_run {
            for &i in &needing {
                match self.copier.dry_run_cost(&tree, &targets[i]).await {
                    Ok(cost) => reports[i].cost = Some(cost),
                    Err(e) => reports[i].error = Some(e.to_string()),
                }
            }
            return reports;
        }
        let stores: Vec<Store> = needing.iter().map(|&i| targets[i].clone()).collect();
        let results = self
            .copier
            .copy_tree(source, &tree, Some(&plan.tag), &stores)
            .await;
        for (&i, result) in needing.iter().zip(results) {
            match result {
                Ok(()) => tracing::info!(target = %targets[i].location(), "copied"),
                Err(e) => {
                    tracing::warn!(target = %targets[i].location(), error = %e, "copy failed");
                    reports[i].error = Some(e.to_string());
                }
            }
        }
        reports
    }

    /// Copies one image ad hoc (`regkeeper copy`): `reference` at `source`
    /// to `target`, tagged `tag` or by digest.
    pub async fn copy_image(
        &self,
        source: &Store,
        reference: &str,
        target: &Store,
        tag: Option<&str>,
        platforms: &[Platform],
    ) -> Result<Digest, CopyError> {
        let root = match resolve_source(source, reference, true, platforms).await {
            Ok(Some((_, Some(m)))) => m,
            Ok(_) => {
                return Err(CopyError::Transport(TransportError::NotFound {
                    location: source.location().to_string(),
                    what: format!("manifest {reference}"),
                }));
            }
            Err((_, e)) => {
                return Err(CopyError::Transport(TransportError::Protocol {
                    location: source.location().to_string(),
                    detail: e,
                }));
            }
        };
        let digest = root.digest.clone();
        let tree = copy::expand(source, root).await?;
        let mut results = self
            .copier
            .copy_tree(source, &tree, tag, std::slice::from_ref(target))
            .await;
        results.pop().expect("one target, one result")?;
        Ok(digest)
    }
}

/// Folds a retention step into the rule's report: its deletions count, and a
/// retention that failed or refused makes the run partial (or failed, for a
/// cleanup-only rule that deleted nothing).
pub fn apply_retention(report: &mut RuleReport, retention: RetentionReport, cleanup_only: bool) {
    report.retention_deleted = retention.deleted;
    if !retention.ok() {
        report.result = match report.result {
            RunResult::Success if cleanup_only && retention.deleted == 0 => RunResult::Failed,
            RunResult::Success => RunResult::Partial,
            other => other,
        };
    }
    report.retention = Some(retention);
}

struct Inventory {
    tags: Vec<SourceTag>,
    /// Source manifests already fetched (after platform filtering), by tag.
    manifests: HashMap<String, RawManifest>,
    targets: Vec<TargetTags>,
    /// (target index, tag) whose target digest came from the state, not a HEAD.
    hinted: HashSet<(usize, String)>,
}

/// The digest the targets should hold for `reference`, and the manifest when
/// it had to be fetched (`fetch`, or an index to filter by platform).
async fn resolve_source(
    source: &Store,
    reference: &str,
    fetch: bool,
    platforms: &[Platform],
) -> Result<Option<(Digest, Option<RawManifest>)>, (String, String)> {
    let err = |e: String| (reference.to_string(), e);
    let raw = if fetch {
        match source
            .get_manifest(reference)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            Some(m) => m,
            None => return Ok(None),
        }
    } else {
        let Some(head) = source
            .resolve(reference)
            .await
            .map_err(|e| err(e.to_string()))?
        else {
            return Ok(None);
        };
        if platforms.is_empty() || !is_index(&head.media_type) {
            return Ok(Some((head.digest, None)));
        }
        match source
            .get_manifest(head.digest.as_str())
            .await
            .map_err(|e| err(e.to_string()))?
        {
            Some(m) => m,
            None => return Ok(None),
        }
    };
    match filter_index(&raw, platforms).map_err(|e| err(format!("index {}: {e}", raw.digest)))? {
        Some(m) => Ok(Some((m.digest.clone(), Some(m)))),
        None => Err(err(format!(
            "none of the platforms {} is in the index",
            platforms
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
