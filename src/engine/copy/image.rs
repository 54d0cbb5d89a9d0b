//! Copying one manifest tree to its targets: blobs (skipped, mounted or
//! transferred, with retries), then child manifests, then the root.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::tracker::{Claim, OwnerGuard};
use super::{Copier, CopyError, DryRunCost, ImageTree, TargetCopy};
use crate::engine::report::Failure;
use crate::oci::Descriptor;
use crate::reference::Location;
use crate::transport::{Side, Store, TransportError};

/// What a blob needs at one target.
enum Need {
    /// Already there.
    Present,
    /// Mounted there just now from another repository of its registry.
    Mounted,
    Upload(OwnerGuard),
    /// Another copy is uploading it right now; look again once our own uploads are done.
    Later,
}

impl Copier {
    /// Decides what `target` needs for `blob`: nothing (present, or mounted
    /// now, as the target's own counts tell), or an upload (the guard is held by the caller until it is done).
    async fn prepare_blob(
        &self,
        target: &Store,
        blob: &Descriptor,
        wait: bool,
        first: Option<Claim>,
    ) -> Result<Need, TransportError> {
        let loc = target.location();
        let claim = match first {
            Some(c) => c,
            None if wait => self.tracker.claim(loc, &blob.digest, self.since).await,
            None => self.tracker.try_claim(loc, &blob.digest, self.since),
        };
        match claim {
            Claim::Busy(_) => Ok(Need::Later),
            Claim::Present => {
                self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                Ok(Need::Present)
            }
            Claim::Elsewhere(from, guard) => {
                if target.mount_blob(&blob.digest, &from).await? {
                    guard.succeed();
                    self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(Need::Mounted);
                }
                // Not mountable (gone there, or not shared): this task owns
                // it in this repository.
                guard.mount_failed(&from);
                self.check_or_upload(target, blob, guard).await
            }
            Claim::Owner(guard) => self.check_or_upload(target, blob, guard).await,
        }
    }

    async fn check_or_upload(
        &self,
        target: &Store,
        blob: &Descriptor,
        guard: OwnerGuard,
    ) -> Result<Need, TransportError> {
        // A repository that did not exist holds nothing a HEAD could find,
        // unless this process put the blob there (a concurrent run may have).
        let fresh = self.is_fresh(target.location()) && !guard.known_here;
        if !fresh && present_as_described(target, blob).await? {
            guard.succeed();
            self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Need::Present);
        }
        // Gone here (a wiped target) but known elsewhere: a mount still
        // spares the source read.
        if let Some(from) = guard.mount_source() {
            if target.mount_blob(&blob.digest, &from).await? {
                guard.succeed();
                self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                return Ok(Need::Mounted);
            }
            guard.mount_failed(&from);
        }
        Ok(Need::Upload(guard))
    }

    /// Copies `tree` to every target in `targets`, tagging it `tag` (or
    /// pushing it by digest when `tag` is `None`). Returns one outcome per
    /// target, with what that target itself received (a blob streamed to
    /// several targets counts in full for each): a target that failed is
    /// never tagged.
    pub async fn copy_tree<'a>(
        &'a self,
        source: &'a Store,
        tree: &'a ImageTree,
        tag: Option<&str>,
        targets: &'a [Store],
    ) -> Vec<TargetCopy> {
        let mut failures: Vec<Vec<Failure>> = vec![Vec::new(); targets.len()];
        let mut costs = vec![DryRunCost::default(); targets.len()];
        if let Some(p) = &self.progress {
            p.start(tree);
        }

        // 1. Blobs: per target, what is needed; then one transfer per blob.
        let (uploads, later) = self
            .prepare_all(tree, targets, &mut failures, &mut costs)
            .await;
        let transfers = futures_util::stream::iter(uploads)
            .map(|(blob, sinks)| self.upload(source, tree, blob, targets, sinks))
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        for (i, outcome) in transfers.into_iter().flatten() {
            settle(&mut costs[i], &mut failures[i], outcome);
        }

        // Blobs other copies were busy with: our own guards are released now,
        // so waiting for theirs cannot deadlock.
        for (blob, i) in later {
            match self.prepare_blob(&targets[i], blob, true, None).await {
                Ok(Need::Upload(guard)) => {
                    let sinks = vec![(i, guard)];
                    for (i, outcome) in self.upload(source, tree, blob, targets, sinks).await {
                        settle(&mut costs[i], &mut failures[i], outcome);
                    }
                }
                Ok(need) => count(&mut costs[i], &need),
                Err(e) => failures[i].push(blob_failure(blob, &e)),
            }
        }

        // 2. Manifests, children first, on each target whose blobs all arrived.
        let pushes = targets
            .iter()
            .zip(failures)
            .map(|(target, failed)| self.push_manifests(tree, tag, target, failed));
        let results = futures_util::future::join_all(pushes).await;
        if let Some(p) = &self.progress {
            p.finish(tree);
        }
        results
            .into_iter()
            .zip(costs)
            .map(|(result, cost)| TargetCopy { result, cost })
            .collect()
    }

    /// What every target needs of every blob of `tree`, claimed in one go per
    /// blob: the uploads to run (blob, target indexes and their guards) and
    /// the (blob, target) pairs another copy is busy with. Errors go to
    /// `failures`, blobs present or mounted to each target's `costs`.
    async fn prepare_all<'a>(
        &self,
        tree: &'a ImageTree,
        targets: &[Store],
        failures: &mut [Vec<Failure>],
        costs: &mut [DryRunCost],
    ) -> (Vec<Upload<'a>>, Vec<(&'a Descriptor, usize)>) {
        let prepared = futures_util::stream::iter(tree.blobs.iter())
            .map(|blob| async move {
                let mut needs = Vec::with_capacity(targets.len());
                let locations: Vec<&Location> = targets.iter().map(|t| t.location()).collect();
                let claims = self
                    .tracker
                    .try_claim_all(&locations, &blob.digest, self.since);
                for (target, claim) in targets.iter().zip(claims) {
                    needs.push(self.prepare_blob(target, blob, false, Some(claim)).await);
                }
                (blob, needs)
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;

        let mut uploads = Vec::new();
        let mut later = Vec::new();
        for (blob, needs) in prepared {
            if let Some(p) = &self.progress {
                let read = needs
                    .iter()
                    .any(|n| matches!(n, Ok(Need::Upload(_) | Need::Later)));
                if !read {
                    p.settle(blob.size);
                }
            }
            let mut sinks = Vec::new();
            for (i, need) in needs.into_iter().enumerate() {
                match need {
                    Ok(Need::Upload(guard)) => sinks.push((i, guard)),
                    Ok(Need::Later) => later.push((blob, i)),
                    Ok(need) => count(&mut costs[i], &need),
                    Err(e) => failures[i].push(blob_failure(blob, &e)),
                }
            }
            if !sinks.is_empty() {
                uploads.push((blob, sinks));
            }
        }
        (uploads, later)
    }

    /// The retry layer of blob uploads: a target whose upload failed
    /// transiently is tried again (its checkpoint, when the registry still
    /// accepts the session, continues it; otherwise the blob restarts), at
    /// most `retry::RETRIES + 1` attempts in all. Source failures never get
    /// here as transient: the source's requests and its resuming stream
    /// spent their own budget, and their final failure is permanent
    /// (`GaveUp`), so attempts do not multiply. Returns per target the
    /// bytes its successful attempt sent, or why it failed for good. A blob
    /// `tree` holds (verified earlier) is sent from memory, not read again.
    async fn upload(
        &self,
        source: &Store,
        tree: &ImageTree,
        blob: &Descriptor,
        targets: &[Store],
        sinks: Vec<(usize, OwnerGuard)>,
    ) -> Vec<(usize, Result<u64, Failure>)> {
        let mut pending = sinks;
        let mut outcomes: Vec<(usize, Result<u64, Failure>)> = Vec::new();
        let mut budget = crate::transport::retry::Budget::new();
        while !pending.is_empty() {
            let stores: Vec<&Store> = pending.iter().map(|(i, _)| &targets[*i]).collect();
            let held = tree.held.get(&blob.digest);
            let results = self.transfer(source, blob, held, &stores).await;
            let attempts = budget.attempts();
            let delay = budget.next_delay();
            let mut retry = Vec::new();
            for ((i, guard), result) in pending.into_iter().zip(results) {
                match result {
                    Ok(sent) => {
                        guard.succeed();
                        self.stats.blobs_copied.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_written.fetch_add(sent, Ordering::Relaxed);
                        outcomes.push((i, Ok(sent)));
                    }
                    Err(e) if e.is_transient() && delay.is_some() => {
                        tracing::warn!(digest = %blob.digest, target = %targets[i].location(), error = %e, "blob upload failed; retrying");
                        retry.push((i, guard));
                    }
                    Err(e) if e.is_transient() => outcomes.push((
                        i,
                        Err(Failure::new(
                            e.class(Side::Target),
                            format!(
                                "blob {}: {e}; gave up after {attempts} attempts (the next run tries again)",
                                blob.digest
                            ),
                        )),
                    )),
                    Err(e) => outcomes.push((i, Err(blob_failure(blob, &e)))),
                }
            }
            if let (false, Some(d)) = (retry.is_empty(), delay) {
                tokio::time::sleep(d).await;
            }
            pending = retry;
        }
        outcomes
    }

    /// Pushes the child manifests, then the root under `tag` (or its
    /// digest), to a target whose blobs all arrived; a target with `failed`
    /// blobs is left untagged.
    async fn push_manifests(
        &self,
        tree: &ImageTree,
        tag: Option<&str>,
        target: &Store,
        failed: Vec<Failure>,
    ) -> Result<(), CopyError> {
        if let Some(first) = failed.first() {
            return Err(CopyError::Incomplete {
                target: target.location().to_string(),
                missing: failed.len(),
                first: first.clone(),
            });
        }
        for child in &tree.children {
            target.put_manifest(child.digest.as_str(), child).await?;
            self.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
        }
        match (tag, &tree.entry) {
            (None, Some(descriptor)) => target.put_entry(&tree.root, descriptor).await?,
            _ => {
                let reference = tag.unwrap_or(tree.root.digest.as_str());
                target.put_manifest(reference, &tree.root).await?
            }
        }
        self.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
        self.stats.images_copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One blob to transfer and the targets (index, guard) that need it.
type Upload<'a> = (&'a Descriptor, Vec<(usize, OwnerGuard)>);

/// Adds a blob a target did not need uploaded to that target's counts.
fn count(cost: &mut DryRunCost, need: &Need) {
    match need {
        Need::Present => cost.blobs_present += 1,
        Need::Mounted => cost.blobs_to_mount += 1,
        Need::Upload(_) | Need::Later => {}
    }
}

/// Adds an upload's outcome at one target: its bytes, or a failure.
fn settle(cost: &mut DryRunCost, failures: &mut Vec<Failure>, outcome: Result<u64, Failure>) {
    match outcome {
        Ok(sent) => {
            cost.blobs_to_copy += 1;
            cost.bytes_to_copy += sent;
        }
        Err(msg) => failures.push(msg),
    }
}

/// A blob that did not reach a target: a target failure unless the error
/// says otherwise (a source failure shared with every target keeps its class).
fn blob_failure(blob: &Descriptor, e: &TransportError) -> Failure {
    Failure::new(e.class(Side::Target), format!("blob {}: {e}", blob.digest))
}

/// Whether `target` holds `blob`; a copy it holds under the same digest with
/// another size means the source's descriptor is wrong (the bytes are the
/// digest's): that image fails, its tag is never published.
async fn present_as_described(target: &Store, blob: &Descriptor) -> Result<bool, TransportError> {
    match target.blob_len(&blob.digest).await? {
        Some(Some(len)) if len != blob.size => Err(TransportError::Integrity {
            location: target.location().to_string(),
            what: format!("blob {} ({})", blob.digest, blob.media_type),
            detail: format!(
                "held with {len} bytes, but its descriptor at the source says {}; the image is \
                 not copied (fix the manifest that lists it)",
                blob.size
            ),
        }),
        found => Ok(found.is_some()),
    }
}
