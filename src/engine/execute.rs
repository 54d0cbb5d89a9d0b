//! Stage 3: carries out the copies of a run plan. Two executors over the
//! same plan: Apply (`sync`: blobs, manifests, tags; then the state learns
//! what was seen and done) and Estimate (`plan`: HEADs only on read-only
//! transports, counting what a copy would transfer). Neither decides
//! anything: what to copy where is the plan's.

use futures_util::StreamExt;
use tracing::Instrument;

use super::Engine;
use super::copy;
use super::inventory::RepoInventory;
use super::report::{Failure, ImageReport};
use crate::config::Rule;
use crate::plan::{TagPlan, TargetAction, Write};
use crate::state::TagObservation;
use crate::transport::{ErrorClass, Side, Store};

/// Images of one repository copied at once (each bounded further by the
/// global transfer limit).
const IMAGES_IN_PARALLEL: usize = 4;

impl Engine {
    /// Carries out one repository pair's copy plans: ordinary tags first (in
    /// parallel), then referrers, after their subjects. One report per tag
    /// and target.
    pub(crate) async fn execute_copies(
        &self,
        rule: &Rule,
        repo: &RepoInventory,
        plans: Vec<TagPlan>,
    ) -> Vec<ImageReport> {
        self.mark_fresh(repo, &plans);
        let mut images: Vec<ImageReport> = Vec::new();
        for group in super::referrer_exec::stages(plans) {
            let group = super::referrer_exec::hold_back(
                &repo.source.location().to_string(),
                group,
                &mut images,
            );
            let results = futures_util::stream::iter(group)
                .map(|plan| {
                    let span = tracing::info_span!("image", tag = %plan.tag, digest = %plan.digest.short());
                    self.execute_tag(repo, plan).instrument(span)
                })
                .buffer_unordered(IMAGES_IN_PARALLEL)
                .collect::<Vec<_>>()
                .await;
            images.extend(results.into_iter().flatten());
        }
        if self.mode == super::Mode::Apply {
            let tags: Vec<ImageReport> = images
                .iter()
                .filter(|i| !i.referrer_write)
                .cloned()
                .collect();
            self.record_tags(rule, repo, &tags);
            self.settle_fresh(repo, &tags);
        }
        images
    }

    /// Copies one tag to the targets whose action says so (or, estimating,
    /// counts what that would take).
    async fn execute_tag(&self, repo: &RepoInventory, plan: TagPlan) -> Vec<ImageReport> {
        let source = &repo.source;
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
                referrer_write: !matches!(plan.write, Write::Tag),
                pushed_by_digest: matches!(plan.write, Write::Referrer { .. }),
            })
            .collect();
        let needing: Vec<usize> = (0..plan.targets.len())
            .filter(|&i| plan.targets[i].1.needs_copy())
            .collect();
        if needing.is_empty() {
            return reports;
        }
        let fail_all = |reports: &mut Vec<ImageReport>, f: Failure| {
            tracing::warn!(class = f.class.as_str(), error = %f, "copy failed");
            for &i in &needing {
                reports[i].error = Some(f.clone());
            }
        };
        if self.copier.stop.is_cancelled() {
            let why = "not started: shutting down; the next run copies it";
            fail_all(&mut reports, Failure::new(ErrorClass::Interrupted, why));
            return reports;
        }
        let tree = match super::referrer_exec::tree_of(repo, &plan).await {
            Ok(t) => t,
            Err(e) => {
                fail_all(&mut reports, e);
                return reports;
            }
        };
        // By location: a fallback index concerns one target, not all.
        let targets: Vec<Store> = needing
            .iter()
            .filter_map(|&i| {
                let loc = &plan.targets[i].0;
                repo.targets.iter().find(|t| t.store.location() == loc)
            })
            .map(|t| t.store.clone())
            .collect();
        if self.mode == super::Mode::Estimate {
            for (&i, target) in needing.iter().zip(&targets) {
                match self.copier.dry_run_cost(&tree, target).await {
                    Ok(cost) => reports[i].cost = Some(cost),
                    Err(e) => {
                        let f = Failure::transport(&e, Side::Target);
                        tracing::warn!(target = %target.location(), class = f.class.as_str(), error = %f, "estimate failed");
                        reports[i].error = Some(f);
                    }
                }
            }
            return reports;
        }
        // A referrer pushed by digest has no tag (its registry indexes it by
        // its subject).
        let tag =
            matches!(plan.write, Write::Tag | Write::FallbackIndex(_)).then_some(&plan.tag[..]);
        // A view of the run's copier with counters of this image's own,
        // added to the run's once the copy is done.
        let copier = self.copier.view();
        let results = copier.copy_tree(source, &tree, tag, &targets).await;
        self.add_totals(&copier.stats.totals());
        for ((&i, target), copied) in needing.iter().zip(&targets).zip(results) {
            reports[i].cost = Some(copied.cost);
            match copied.result {
                Ok(()) => tracing::info!(target = %target.location(), "copied"),
                Err(e) => {
                    let class = e.class(Side::Target);
                    tracing::warn!(target = %target.location(), class = class.as_str(), error = %e, "copy failed");
                    reports[i].error = Some(Failure::new(class, e));
                }
            }
        }
        reports
    }

    /// Records what this run saw and did per tag and target, so the next
    /// run may spare requests and `tags_pending` counts what is still
    /// different.
    fn record_tags(&self, rule: &Rule, repo: &RepoInventory, images: &[ImageReport]) {
        let Some(state) = &self.state else {
            return;
        };
        let now = self.now();
        for target in &repo.targets {
            let name = target.store.location().to_string();
            let mut seen = Vec::new();
            for image in images.iter().filter(|im| im.target == name) {
                let (target_digest, verified_now) = match (&image.action, &image.error) {
                    (TargetAction::KeepImmutable { .. }, _)
                    | (TargetAction::DeletedByRetention, _)
                    | (TargetAction::DroppedByRetention, _)
                    | (TargetAction::Refused { .. }, _) => continue,
                    (TargetAction::InSync, _) => (
                        Some(image.digest.as_str()),
                        !target.hinted.contains(&image.tag),
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
            let (t, r) = copy::state_key(target.store.location());
            let considered = Some(&repo.considered[..]);
            if let Err(e) = state.record_tags(&rule.name, &t, &r, &seen, considered, now) {
                tracing::warn!(error = %e, "cannot record tag state");
            }
        }
    }
}
