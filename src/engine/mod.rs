//! Runs rules as one pipeline: inventory (read-only, `inventory.rs`) ->
//! run plan (pure, `runplan.rs`: copies and retention deletions together) ->
//! executor (`execute.rs` for copies, `retention::Pruner` for deletions):
//! Apply for `sync`, Estimate for `plan`. Both commands run the same
//! inventory and the same plan, so `plan` says what `sync` will do. A
//! failure on one image or repository is recorded and the rule goes on.

mod budget;
mod companions;
pub mod copy;
mod entries;
mod execute;
mod fresh;
mod inventory;
mod mode;
mod platforms;
mod referrer_exec;
mod referrer_plan;
mod referrers;
mod report;
mod resolve;
mod runplan;
mod targets;
mod verify;
mod verify_bundles;
mod verify_copy;
pub use verify_copy::VerifiedCopyError;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{Retention, Rule};
use crate::oci::{Digest, Platform};
use crate::retention::{Pruner, RuleRead};
use crate::state::{State, now_unix};
use crate::transport::{Store, TransportError, Transports};

use copy::{Copier, CopyError, CopyStats, CopyTotals};
use inventory::{RepoInventory, RuleInventory};
pub use mode::{Mode, Pass};
pub use report::{Failure, ImageReport, RuleReport, RunError, RunResult};
use runplan::{CopyFacts, RepoFacts, RuleFacts, TargetFacts};

/// Repository pairs of a `/*` rule executed at once.
const REPOS_IN_PARALLEL: usize = 4;
/// A target digest known from the state is trusted (its HEAD spared) for
/// this long after the registry last confirmed it; then it is asked again.
/// This bounds how long a target restored from an old backup (tag present,
/// older digest) can go unnoticed. A target that lost the tag is noticed at
/// once: the tag list is read on every run.
pub const REVERIFY_AFTER_SECS: i64 = 3600;

fn lock_live(
    live: &std::sync::Mutex<Vec<Arc<CopyStats>>>,
) -> std::sync::MutexGuard<'_, Vec<Arc<CopyStats>>> {
    // A panicked holder leaves a usable list: counters only.
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// See [`Engine::live_stats`].
#[derive(Clone)]
pub struct LiveStats {
    done: Arc<CopyStats>,
    live: Arc<std::sync::Mutex<Vec<Arc<CopyStats>>>>,
}

impl LiveStats {
    pub fn totals(&self) -> CopyTotals {
        let runs = lock_live(&self.live);
        runs.iter()
            .fold(self.done.totals(), |t, run| t.plus(&run.totals()))
    }
}

/// Runs rules against real stores. One per process run (per configuration
/// generation in the daemon): it owns the blob tracker, which every rule run
/// shares, and the global transfer limit.
pub struct Engine {
    transports: Arc<Transports>,
    copier: Copier,
    mode: Mode,
    /// Hints about targets (spared HEADs) and where runs are recorded.
    state: Option<State>,
    /// A fixed clock (`--now`); `None`: the system clock.
    clock: Option<i64>,
    /// This instance's share of the repositories of `/*` rules.
    shard: crate::shard::Shard,
    /// Counters of the runs in progress (each run counts apart, and adds to
    /// the engine's at its end), so that progress can show them live.
    live: Arc<std::sync::Mutex<Vec<Arc<CopyStats>>>>,
    /// Told the blob count of an image once `copy_image` knows it (progress %).
    on_total: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Told how many image copies a rule's run plan holds, once it is made
    /// (progress % of `sync`).
    on_plan: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Engine {
    /// An engine in `mode`, on transports built for that mode (an estimate
    /// on transports that could write is a bug: refused here).
    pub fn new(transports: Arc<Transports>, max_concurrent_transfers: usize, mode: Mode) -> Self {
        assert_eq!(
            transports.read_only(),
            mode.read_only(),
            "the transports must be built for the engine's mode"
        );
        Engine {
            transports,
            copier: Copier {
                tracker: Default::default(),
                since: Instant::now(),
                fresh: Default::default(),
                stats: Arc::new(CopyStats::default()),
                transfers: Arc::new(Semaphore::new(max_concurrent_transfers.max(1))),
                on_bytes: None,
                progress: None,
                checkpoints: None,
                stop: tokio_util::sync::CancellationToken::new(),
            },
            mode,
            state: None,
            clock: None,
            shard: crate::shard::Shard::WHOLE,
            live: Default::default(),
            on_total: None,
            on_plan: None,
        }
    }

    /// Runs only this shard's repositories of `/*` rules.
    pub fn with_shard(mut self, shard: crate::shard::Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Uses the state database: tag hints that spare target HEADs and the
    /// retention journal (read by the inventory, in plans too), tag
    /// observations recorded after each repository and upload checkpoints
    /// (real runs only; a plan should pass a read-only state).
    pub fn with_state(mut self, state: State) -> Self {
        if self.mode == Mode::Apply {
            self.copier.checkpoints = Some(state.clone());
        }
        self.state = Some(state);
        self
    }

    /// Runs as if the time were `now` (Unix seconds; the hidden `--now`):
    /// the one clock for hints, first-seen times and retention.
    pub fn with_clock(mut self, now: Option<i64>) -> Self {
        self.clock = now;
        self
    }

    /// The time of this run's clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.unwrap_or_else(now_unix)
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

    /// The blob tracker, to share it with an engine built later (after a
    /// reload): runs of both generations may overlap, and a mount must stay
    /// exclusive per blob and registry across them.
    pub fn blob_tracker(&self) -> Arc<copy::BlobTracker> {
        self.copier.tracker.clone()
    }

    pub fn with_blob_tracker(mut self, tracker: Arc<copy::BlobTracker>) -> Self {
        self.copier.tracker = tracker;
        self
    }

    pub fn transports(&self) -> &Arc<Transports> {
        &self.transports
    }

    /// Called with the byte count of every chunk read from a source.
    pub fn on_bytes(&mut self, f: Arc<dyn Fn(u64) + Send + Sync>) {
        self.copier.on_bytes = Some(f);
    }

    /// Keeps byte counts of the image trees being copied, for a progress
    /// display (with `on_bytes`, how far the copies in flight are).
    pub fn track_progress(&mut self) -> Arc<copy::BlobProgress> {
        let p = Arc::new(copy::BlobProgress::default());
        self.copier.progress = Some(p.clone());
        p
    }

    /// Called with the number of blobs `copy_image` will handle (copied,
    /// mounted or found present), as soon as the image tree is known.
    pub fn on_total(&mut self, f: Arc<dyn Fn(u64) + Send + Sync>) {
        self.on_total = Some(f);
    }

    /// Called with the number of image copies (per target) each rule's run
    /// plan holds, before its executor starts.
    pub fn on_plan(&mut self, f: Arc<dyn Fn(u64) + Send + Sync>) {
        self.on_plan = Some(f);
    }

    pub fn stats(&self) -> &Arc<CopyStats> {
        &self.copier.stats
    }

    /// Runs one rule through the pipeline: its copies and its retention,
    /// planned together, of which `pass` carries out its part. Never panics
    /// on registry trouble: failures end up in the report.
    pub async fn run_rule(&self, rule: &Rule, pass: Pass) -> RuleReport {
        let dry_run = self.mode.read_only();
        let span = tracing::info_span!("rule", rule = %rule.name, dry_run, pass = ?pass);
        let run = Engine {
            transports: self.transports.clone(),
            copier: self.copier.for_run(),
            mode: self.mode,
            state: self.state.clone(),
            clock: self.clock,
            shard: self.shard,
            live: self.live.clone(),
            on_total: None,
            on_plan: self.on_plan.clone(),
        };
        let stats = run.copier.stats.clone();
        self.live_runs().push(stats.clone());
        let report = run.run_inner(rule, pass).instrument(span).await;
        // Out of the live list as the totals move in, under one lock: a
        // reader sees the run counted exactly once.
        let mut runs = self.live_runs();
        runs.retain(|s| !Arc::ptr_eq(s, &stats));
        self.add_totals(&report.totals);
        drop(runs);
        report
    }

    /// The retention executor of a pass: this engine's mode, transports,
    /// state and clock; an event pass sends no deletion.
    fn pruner(&self, pass: Pass) -> Pruner {
        let p = Pruner::new(
            self.transports.clone(),
            self.retention_state(),
            self.mode.read_only(),
            self.now(),
        );
        if pass.deletes() {
            p
        } else {
            p.without_deletions()
        }
    }

    fn live_runs(&self) -> std::sync::MutexGuard<'_, Vec<Arc<CopyStats>>> {
        lock_live(&self.live)
    }

    /// A handle on the engine's counters plus those of the runs still in
    /// progress (for a progress display that outlives a borrow).
    pub fn live_stats(&self) -> LiveStats {
        LiveStats {
            done: self.copier.stats.clone(),
            live: self.live.clone(),
        }
    }

    /// Keeps the engine-wide counters (progress, `copy`) whole.
    pub(crate) fn add_totals(&self, t: &CopyTotals) {
        let s = &self.copier.stats;
        for (counter, n) in [
            (&s.bytes_read, t.bytes_read),
            (&s.bytes_written, t.bytes_written),
            (&s.blobs_copied, t.blobs_copied),
            (&s.blobs_mounted, t.blobs_mounted),
            (&s.blobs_skipped, t.blobs_skipped),
            (&s.blobs_resumed, t.blobs_resumed),
            (&s.manifests_pushed, t.manifests_pushed),
            (&s.images_copied, t.images_copied),
        ] {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    async fn run_inner(&self, rule: &Rule, pass: Pass) -> RuleReport {
        let started = Instant::now();
        let mut report = RuleReport::new(&rule.name, self.mode.read_only());
        report.started_unix = self.now() as u64;
        let policy = rule.retention.as_ref();
        let now = self.now();

        // 1. Inventory: read-only, for every pass alike; each target
        // repository read once, for copies and retention.
        let inv = self.inventory(rule, pass).await;
        let mut read = match policy {
            Some(policy) => Some(self.retention_read(rule, policy, &inv).await),
            None => None,
        };
        let copy_facts = match policy {
            Some(policy) => copy_facts(&inv, policy).await,
            None => CopyFacts::default(),
        };

        // 2. The run plan: pure.
        let facts = RuleFacts {
            immutable: rule.immutable,
            retention: policy,
            now,
            repos: inv.repos.iter().map(repo_facts).collect(),
            retention_inputs: read
                .iter()
                .flat_map(|r| r.repos.iter().map(|x| x.input.clone()))
                .collect(),
            copy_facts,
        };
        let plan = runplan::plan_rule(&facts);
        if let Some(f) = &self.on_plan {
            f(plan.image_copies());
        }

        // 3. Execute: copies, then the retention plan.
        self.execute_rule(rule, &inv, plan.copies, &mut report)
            .await;
        if let Some(mut read) = read.take().filter(|_| policy.is_some()) {
            record_arrivals(&mut read, &report, &facts.copy_facts, now);
            keep_copy_facts(self.retention_state().as_ref(), &facts.copy_facts);
            let held = held_repositories(&report);
            let pruner = self.pruner(pass);
            let r = pruner.apply_rule(rule, read, plan.retention, &held).await;
            report.add_retention(r, rule.source.is_none());
        }
        report.duration_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            result = report.result.as_str(),
            selected = report.tags_selected,
            copied = report.tags_copied,
            in_sync = report.tags_in_sync,
            failed = report.tags_failed,
            deleted = report.retention_deleted,
            bytes = report.totals.bytes_written,
            seconds = report.duration_seconds,
            "rule finished"
        );
        report.log_failures();
        report
    }

    /// Runs the copy executor over every repository pair and tallies.
    async fn execute_rule(
        &self,
        rule: &Rule,
        inv: &RuleInventory,
        copies: Vec<Vec<crate::plan::TagPlan>>,
        report: &mut RuleReport,
    ) {
        let before = self.copier.stats.totals();
        report.repositories = inv.repos.len();
        if rule.source.as_ref().is_some_and(|s| s.wildcard) && !self.shard.is_whole() {
            let repos = inv.repos.iter().map(|r| r.source.location().to_string());
            report.shard_repositories = Some(repos.collect());
        }
        report.errors.extend(inv.errors.iter().cloned());
        let skipped = inv.repos.iter().flat_map(|r| &r.skipped);
        for s in inv.skipped.iter().chain(skipped) {
            report.names_skipped += 1;
            report.warnings.push(s.to_string());
        }
        let mut empty_selections = Vec::new();
        for repo in &inv.repos {
            report.errors.extend(repo.errors.iter().cloned());
            report.warnings.extend(repo.warnings.iter().cloned());
            report.tags_selected += repo.selected;
            report.tags_unreachable += repo.selected * repo.unreadable_targets;
            if let (Some(listed), 0) = (&repo.source_tags, repo.selected) {
                empty_selections.push(entries::nothing_selected(repo, listed.len()));
            }
        }
        if !empty_selections.is_empty() {
            tracing::warn!(
                repositories = empty_selections.len(),
                first = %empty_selections[0],
                "tag filters select nothing"
            );
        }
        report.warnings.extend(empty_selections);
        let images = futures_util::stream::iter(inv.repos.iter().zip(copies))
            .map(|(repo, plans)| {
                let span = tracing::info_span!("repo", source = %repo.source.location());
                self.execute_copies(rule, repo, plans).instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect::<Vec<_>>()
            .await;
        report.images = images.into_iter().flatten().collect();
        report.totals = totals_since(self.copier.stats.totals(), before);
        report.tally();
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
        let root = Self::copy_root(source, reference, platforms).await?;
        self.copy_tree_of(source, root, target, tag).await
    }

    /// The root manifest `copy` starts from (after platform filtering).
    pub(crate) async fn copy_root(
        source: &Store,
        reference: &str,
        platforms: &[Platform],
    ) -> Result<crate::oci::RawManifest, CopyError> {
        match resolve::resolve_source(source, reference, true, platforms).await {
            Ok(Some((_, Some(m)))) => Ok(m),
            Ok(_) => Err(CopyError::Transport(TransportError::NotFound {
                location: source.location().to_string(),
                what: format!("manifest {reference}"),
            })),
            Err((_, e)) => Err(CopyError::Transport(TransportError::Protocol {
                location: source.location().to_string(),
                detail: e.message,
            })),
        }
    }

    /// Copies the tree under `root` (as read) from `source` to `target`.
    pub(crate) async fn copy_tree_of(
        &self,
        source: &Store,
        root: crate::oci::RawManifest,
        target: &Store,
        tag: Option<&str>,
    ) -> Result<Digest, CopyError> {
        let digest = root.digest.clone();
        let tree = copy::expand(source, root).await?;
        if let Some(f) = &self.on_total {
            f(tree.blobs.len() as u64);
        }
        let mut results = self
            .copier
            .copy_tree(source, &tree, tag, std::slice::from_ref(target))
            .await;
        results.pop().expect("one target, one result").result?;
        Ok(digest)
    }
}

/// The plan's view of one repository pair.
fn repo_facts(repo: &RepoInventory) -> RepoFacts {
    RepoFacts {
        tags: repo.tags.clone(),
        referrers: repo.referrers.clone(),
        refused: repo.refused.clone(),
        entries: repo.entries.clone(),
        targets: repo
            .targets
            .iter()
            .map(|t| TargetFacts {
                location: t.store.location().clone(),
                digests: t.digests.clone(),
                retained_away: t.retained_away.clone(),
                referrers: t.referrers.clone(),
            })
            .collect(),
    }
}

/// What retention needs of the manifests a copy may bring (read-only, from
/// the source): references, and creation times where the policy needs them.
async fn copy_facts(inv: &RuleInventory, policy: &Retention) -> CopyFacts {
    let mut facts = CopyFacts::default();
    let with_created = crate::retention::needs_created(policy);
    for repo in &inv.repos {
        for raw in repo.manifests.values() {
            match targets::manifest_info(raw) {
                Ok(info) => facts.manifests.insert(raw.digest.clone(), info),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a manifest's references");
                    continue;
                }
            };
            if with_created {
                match targets::created_in(&repo.source, raw).await {
                    Ok(Some(t)) => {
                        facts.created.insert(raw.digest.clone(), t);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read an image's creation time"),
                }
            }
        }
    }
    facts
}

/// Lets retention record the target as it is after the copies that went
/// through (first-seen times, the baseline for tags that move).
fn record_arrivals(read: &mut RuleRead, report: &RuleReport, facts: &CopyFacts, now: i64) {
    for r in &mut read.repos {
        let arrived: Vec<(String, Digest)> = report
            .images
            .iter()
            .filter(|i| {
                i.target == r.input.repository
                    && i.action.needs_copy()
                    && i.error.is_none()
                    && !i.referrer_write
            })
            .map(|i| (i.tag.clone(), i.digest.clone()))
            .collect();
        if !arrived.is_empty() {
            let after = runplan::project(&r.input, &arrived, facts, now);
            r.updates
                .extend(runplan::untagged_changes(&r.input, &after));
            r.input = after;
        }
    }
}

/// Keeps the facts of the manifests this run read at the source for its
/// copies (content-addressed: true wherever the digest is), so the next
/// reading of a target they reached HEADs them instead of GETting them. An
/// estimate's state drops the writes.
fn keep_copy_facts(state: &dyn crate::retention::RetentionState, facts: &CopyFacts) {
    let now = crate::clock::now_unix();
    for (digest, info) in &facts.manifests {
        let kept = crate::retention::ManifestFacts {
            info: info.clone(),
            created: facts.created.get(digest).map(|t| Some(*t)),
        };
        if let Err(e) = state.record_manifest_facts(digest, &kept, now) {
            tracing::debug!(%digest, error = %e, "cannot keep manifest facts");
            return;
        }
    }
}

/// Target repositories where a planned copy failed: their retention plan
/// assumed the copy, so none of its deletions is sent this run.
fn held_repositories(report: &RuleReport) -> HashMap<String, Failure> {
    let mut held = HashMap::new();
    if report.dry_run {
        // A plan copies nothing: an estimate that failed holds nothing back.
        return held;
    }
    for image in &report.images {
        let Some(e) = &image.error else { continue };
        held.entry(image.target.clone()).or_insert_with(|| {
            let why = format!(
                "a copy to this repository failed ({}), so it is not as planned; nothing deleted this run",
                image.tag
            );
            Failure::new(e.class, why)
        });
    }
    held
}

/// What the counters gained since `before`.
fn totals_since(after: CopyTotals, before: CopyTotals) -> CopyTotals {
    CopyTotals {
        bytes_read: after.bytes_read - before.bytes_read,
        bytes_written: after.bytes_written - before.bytes_written,
        blobs_copied: after.blobs_copied - before.blobs_copied,
        blobs_mounted: after.blobs_mounted - before.blobs_mounted,
        blobs_skipped: after.blobs_skipped - before.blobs_skipped,
        blobs_resumed: after.blobs_resumed - before.blobs_resumed,
        manifests_pushed: after.manifests_pushed - before.manifests_pushed,
        images_copied: after.images_copied - before.images_copied,
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    #[test]
    fn live_stats_add_runs_in_progress_to_finished_ones() {
        let engine = Engine::new(
            Arc::new(Transports::new(HashMap::new(), false)),
            1,
            Mode::Apply,
        );
        let live = engine.live_stats();
        engine
            .copier
            .stats
            .images_copied
            .fetch_add(1, Ordering::Relaxed);
        let run = Arc::new(CopyStats::default());
        engine.live_runs().push(run.clone());
        run.blobs_copied.fetch_add(4, Ordering::Relaxed);
        run.images_copied.fetch_add(2, Ordering::Relaxed);
        let t = live.totals();
        assert_eq!((t.images_copied, t.blobs_copied), (3, 4));
    }
}
