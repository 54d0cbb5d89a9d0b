//! Copying one image (a manifest tree) from a source store to target stores:
//! blobs first (skip what the target has, mount what its registry holds
//! elsewhere, otherwise stream once from the source to every target that
//! lacks it), then child manifests, then the root manifest and its tag.
//!
//! Split by concern: `tracker.rs` (what each target registry holds, shared
//! by every run of the engine), `tree.rs` (reading the tree at the source), `nested.rs` (the platform
//! filter at every level of nested indexes), `transfer.rs` (one blob
//! streamed to several targets, resumable uploads), `image.rs` (one tree
//! copied to its targets); this file holds the copier, errors and counters.

mod held;
mod image;
mod nested;
mod progress;
mod tracker;
mod transfer;
mod tree;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::oci::Digest;
use crate::reference::Location;
use crate::state::State;
use crate::transport::{ErrorClass, Side, Store, TransportError};

use super::report::Failure;

pub use held::HeldBlobs;
pub(crate) use nested::{FilterError, filter_tree};
pub use progress::{BlobBytes, BlobProgress};
pub use tracker::BlobTracker;
use tracker::Claim;
pub use tree::{ImageTree, expand, filter_index};

/// `(target, repo)` as the state database names a target repository: the
/// registry host and repository, or `oci:<dir>` and an empty repository.
pub fn state_key(location: &Location) -> (String, String) {
    match location {
        Location::Registry { host, repo } => (host.clone(), repo.clone()),
        Location::Layout { path } => (format!("oci:{}", path.display()), String::new()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{location}: manifest {digest}: {reason}")]
    BadManifest {
        location: String,
        digest: Digest,
        reason: String,
    },
    #[error("{location}: blob {digest}: {reason}")]
    Blob {
        location: String,
        digest: Digest,
        reason: String,
    },
    #[error("{target}: not tagged, {missing} blob(s) or manifest(s) could not be copied: {first}")]
    Incomplete {
        target: String,
        missing: usize,
        /// The first failure, whose class is the copy's.
        first: Failure,
    },
}

impl CopyError {
    /// The class of this failure; `side` for transport failures that have
    /// no kind of their own (a source failure shared with the targets
    /// keeps the source's class).
    pub(crate) fn class(&self, side: Side) -> ErrorClass {
        match self {
            CopyError::Transport(e) => e.class(side),
            CopyError::BadManifest { .. } => ErrorClass::InvalidInput,
            CopyError::Blob { .. } => ErrorClass::InvalidInput,
            CopyError::Incomplete { first, .. } => first.class,
        }
    }
}

/// Counters shared by every copy of one run.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// Bytes read from sources.
    pub bytes_read: AtomicU64,
    /// Bytes written to targets (a blob sent to two targets counts twice).
    pub bytes_written: AtomicU64,
    pub blobs_copied: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_skipped: AtomicU64,
    /// Uploads continued from a checkpoint instead of started over.
    pub blobs_resumed: AtomicU64,
    pub manifests_pushed: AtomicU64,
    /// Images (root manifests) pushed: one per tag and target.
    pub images_copied: AtomicU64,
}

/// Snapshot of [`CopyStats`].
#[derive(Debug, Default, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct CopyTotals {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub blobs_resumed: u64,
    pub manifests_pushed: u64,
    pub images_copied: u64,
}

impl CopyStats {
    pub fn totals(&self) -> CopyTotals {
        CopyTotals {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            blobs_copied: self.blobs_copied.load(Ordering::Relaxed),
            blobs_mounted: self.blobs_mounted.load(Ordering::Relaxed),
            blobs_skipped: self.blobs_skipped.load(Ordering::Relaxed),
            blobs_resumed: self.blobs_resumed.load(Ordering::Relaxed),
            manifests_pushed: self.manifests_pushed.load(Ordering::Relaxed),
            images_copied: self.images_copied.load(Ordering::Relaxed),
        }
    }
}

impl CopyTotals {
    /// Both snapshots added up (progress of several runs at once).
    pub fn plus(&self, o: &CopyTotals) -> CopyTotals {
        CopyTotals {
            bytes_read: self.bytes_read + o.bytes_read,
            bytes_written: self.bytes_written + o.bytes_written,
            blobs_copied: self.blobs_copied + o.blobs_copied,
            blobs_mounted: self.blobs_mounted + o.blobs_mounted,
            blobs_skipped: self.blobs_skipped + o.blobs_skipped,
            blobs_resumed: self.blobs_resumed + o.blobs_resumed,
            manifests_pushed: self.manifests_pushed + o.manifests_pushed,
            images_copied: self.images_copied + o.images_copied,
        }
    }
}

/// How long the tracker keeps what it learned about a blob's whereabouts
/// (as a mount source only, see [`BlobTracker`]): long enough for rules
/// scheduled apart during a day to mount from each other, short enough to
/// bound a daemon's memory by its recent copies.
const TRACKER_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Shared machinery for copying images within one run.
pub struct Copier {
    /// The engine's one tracker: shared by every run.
    pub tracker: Arc<BlobTracker>,
    /// When this run started: what the tracker learned since then is
    /// trusted as is; older knowledge is only a mount source.
    pub since: Instant,
    /// Target repositories of this run that hold no blobs (they did not
    /// exist at the inventory, and no interrupted run touched them): no blob
    /// HEADs there.
    pub fresh: Arc<Mutex<HashSet<Location>>>,
    pub stats: Arc<CopyStats>,
    /// Blob transfers in flight, all rules together.
    pub transfers: Arc<Semaphore>,
    /// Bytes progress callback target (for progress bars).
    pub on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Blob bytes of the trees being copied (for progress bars).
    pub progress: Option<Arc<BlobProgress>>,
    /// Where chunked uploads are checkpointed (the daemon and `sync`); `None`
    /// for dry runs and ad hoc copies without a state directory.
    pub checkpoints: Option<State>,
    /// Cancelled on shutdown: no new transfer starts, chunked uploads stop
    /// after the chunk in flight.
    pub stop: CancellationToken,
}

/// What copying an image to one target would take (`plan`, dry runs) or
/// took (`sync`: what that target itself received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DryRunCost {
    pub blobs_to_copy: u64,
    pub bytes_to_copy: u64,
    pub blobs_to_mount: u64,
    pub blobs_present: u64,
}

/// One target's outcome of [`Copier::copy_tree`], with what it received.
#[derive(Debug)]
pub struct TargetCopy {
    pub result: Result<(), CopyError>,
    pub cost: DryRunCost,
}

impl Copier {
    /// A copier for one run: the engine's blob tracker, read with this
    /// run's start as the line between trusted and checked knowledge (so a
    /// target wiped between runs is noticed), its own counters (concurrent
    /// runs of other rules do not mix in), sharing the global transfer
    /// limit, checkpoints and stop signal.
    pub fn for_run(&self) -> Copier {
        let since = Instant::now();
        if let Some(cutoff) = since.checked_sub(TRACKER_MEMORY) {
            self.tracker.forget_before(cutoff);
        }
        tracing::debug!(known = self.tracker.known(), "blob tracker");
        Copier {
            since,
            fresh: Default::default(),
            ..self.view()
        }
    }

    /// The same run's copier with counters of its own (what one image's
    /// copy did can then be told apart).
    pub fn view(&self) -> Copier {
        Copier {
            tracker: self.tracker.clone(),
            since: self.since,
            fresh: self.fresh.clone(),
            stats: Arc::new(CopyStats::default()),
            transfers: self.transfers.clone(),
            on_bytes: self.on_bytes.clone(),
            progress: self.progress.clone(),
            checkpoints: self.checkpoints.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Tells the copier that these target repositories hold no blobs.
    pub(crate) fn mark_fresh(&self, locations: impl IntoIterator<Item = Location>) {
        self.fresh_set().extend(locations);
    }

    /// Whether `target` is known to hold no blob but what this run put there
    /// (which the tracker knows): a HEAD could only answer 404.
    pub(crate) fn is_fresh(&self, target: &Location) -> bool {
        self.fresh_set().contains(target)
    }

    fn fresh_set(&self) -> std::sync::MutexGuard<'_, HashSet<Location>> {
        // Plain data: a panicked holder leaves a usable set.
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts what copying `tree` to `target` would transfer, with read
    /// requests only (HEAD), for `plan` and dry runs.
    pub async fn dry_run_cost(
        &self,
        tree: &ImageTree,
        target: &Store,
    ) -> Result<DryRunCost, TransportError> {
        let mut cost = DryRunCost::default();
        for blob in &tree.blobs {
            match self
                .tracker
                .claim(target.location(), &blob.digest, self.since)
                .await
            {
                Claim::Present => cost.blobs_present += 1,
                Claim::Busy(_) => unreachable!("claim waits"),
                Claim::Elsewhere(_, guard) => {
                    // As after the mount: later images find it here.
                    guard.succeed();
                    cost.blobs_to_mount += 1
                }
                Claim::Owner(guard) => {
                    let fresh = self.is_fresh(target.location()) && !guard.known_here;
                    if !fresh && target.blob_exists(&blob.digest).await? {
                        guard.succeed();
                        cost.blobs_present += 1;
                    } else if guard.mount_source().is_some() {
                        guard.succeed();
                        cost.blobs_to_mount += 1;
                    } else {
                        // Count it once per target: later images sharing the
                        // blob will find it "present" as it would be by then.
                        guard.succeed();
                        cost.blobs_to_copy += 1;
                        cost.bytes_to_copy = cost.bytes_to_copy.saturating_add(blob.size);
                    }
                }
            }
        }
        Ok(cost)
    }
}
