//! Copying one image (a manifest tree) from a source store to target stores:
//! blobs first (skip what the target has, mount what its registry holds
//! elsewhere, otherwise stream once from the source to every target that
//! lacks it), then child manifests, then the root manifest and its tag.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::oci::{
    ByteStream, Descriptor, Digest, Manifest, Platform, RawManifest, Snapshots, Verified, is_index,
};
use crate::reference::Location;
use crate::state::{State, UploadCheckpoint, now_unix};
use crate::transport::remote::UploadSession;
use crate::transport::{Store, TransportError};

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
        first: String,
    },
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

/// The whole tree under a root manifest, as fetched from the source.
#[derive(Debug, Clone)]
pub struct ImageTree {
    pub root: RawManifest,
    /// Child manifests of an index (already filtered by platform), in order.
    pub children: Vec<RawManifest>,
    /// Unique blobs of every image manifest in the tree.
    pub blobs: Vec<Descriptor>,
}

impl ImageTree {
    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Keeps an index's bytes when every platform is kept; otherwise writes a new
/// index that lists only the wanted platforms (its digest changes). Returns
/// `None` when no child matches.
pub fn filter_index(
    raw: &RawManifest,
    platforms: &[Platform],
) -> Result<Option<RawManifest>, String> {
    if platforms.is_empty() || !is_index(&raw.media_type) {
        return Ok(Some(raw.clone()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&raw.bytes).map_err(|e| e.to_string())?;
    let Some(list) = value.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return Err("index without a manifests list".into());
    };
    let before = list.len();
    list.retain(|entry| {
        let platform: Option<Platform> = entry
            .get("platform")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        platform.is_some_and(|p| platforms.iter().any(|want| p.matches(want)))
    });
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() == before {
        return Ok(Some(raw.clone()));
    }
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    Ok(Some(RawManifest {
        media_type: raw.media_type.clone(),
        digest: Digest::of(&bytes),
        bytes,
    }))
}

/// Fetches the children of `root` (when it is an index) and lists the blobs
/// of every image manifest in the tree. `root` must already be filtered by
/// platform (see [`filter_index`]).
pub async fn expand(source: &Store, root: RawManifest) -> Result<ImageTree, CopyError> {
    let bad = |digest: &Digest, reason: String| CopyError::BadManifest {
        location: source.location().to_string(),
        digest: digest.clone(),
        reason,
    };
    let (_, parsed) = Manifest::parse(&root.media_type, &root.bytes)
        .map_err(|e| bad(&root.digest, e.to_string()))?;
    let mut children = Vec::new();
    let mut images = Vec::new();
    match &parsed {
        Manifest::Image { .. } => images.push(parsed.clone()),
        Manifest::Index { manifests, .. } => {
            let fetches = manifests.iter().map(|desc| async move {
                let child = source
                    .get_manifest(desc.digest.as_str())
                    .await?
                    .ok_or_else(|| {
                        bad(
                            &desc.digest,
                            "listed by the index but absent at the source".into(),
                        )
                    })?;
                if child.bytes.len() as u64 != desc.size {
                    return Err(bad(
                        &desc.digest,
                        format!(
                            "size {} differs from the index's {}",
                            child.bytes.len(),
                            desc.size
                        ),
                    ));
                }
                let (_, m) = Manifest::parse(&child.media_type, &child.bytes)
                    .map_err(|e| bad(&desc.digest, e.to_string()))?;
                if matches!(m, Manifest::Index { .. }) {
                    return Err(bad(&desc.digest, "nested indexes are not supported".into()));
                }
                Ok::<_, CopyError>((child, m))
            });
            for result in futures_util::future::join_all(fetches).await {
                let (child, m) = result?;
                children.push(child);
                images.push(m);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    for image in &images {
        for blob in image.blobs() {
            if seen.insert(blob.digest.clone()) {
                blobs.push(blob.clone());
            }
        }
    }
    Ok(ImageTree {
        root,
        children,
        blobs,
    })
}

/// What the copy engine knows, within one run, about which blobs each target
/// registry holds and which are being uploaded right now. It spares a HEAD
/// for blobs already seen in the same repository, turns uploads of a blob
/// that another repository of the same registry received into mounts, and
/// makes concurrent copies of one blob wait for the first instead of
/// uploading it twice. It lives for one run only: nothing stale survives.
#[derive(Default)]
pub struct BlobTracker {
    entries: Mutex<HashMap<(String, Digest), Entry>>,
}

enum Entry {
    Present(Location),
    InFlight(watch::Receiver<bool>),
}

/// Identifies a set of repositories that can share blobs by mounting.
fn registry_key(location: &Location) -> String {
    match location {
        Location::Registry { host, .. } => format!("registry:{host}"),
        Location::Layout { .. } => "layout".to_string(),
    }
}

enum Claim {
    /// The target is known to hold it; nothing to do.
    Present,
    /// Another task is getting it into this registry right now.
    Busy(watch::Receiver<bool>),
    /// Another repository of the target's registry holds it: try a mount.
    /// The guard makes the mount exclusive: distribution rewrites a blob's
    /// link on every mount, and a manifest PUT that reads the link while a
    /// second mount of the same blob rewrites it fails (MANIFEST_BLOB_UNKNOWN).
    Elsewhere(Location, OwnerGuard),
    /// This caller must check and, if needed, upload; it reports the outcome.
    Owner(OwnerGuard),
}

/// Held by the one task responsible for getting a blob into a target; on drop
/// it records the outcome and wakes waiters.
pub struct OwnerGuard {
    tracker: Arc<BlobTracker>,
    key: (String, Digest),
    location: Location,
    done: Option<watch::Sender<bool>>,
    present: bool,
}

impl OwnerGuard {
    fn succeed(mut self) {
        self.present = true;
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        let mut map = self.tracker.entries.lock().expect("tracker poisoned");
        if self.present {
            map.insert(self.key.clone(), Entry::Present(self.location.clone()));
        } else {
            map.remove(&self.key);
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(true);
        }
    }
}

impl BlobTracker {
    /// Looks a blob up without waiting. A caller that gets `Busy` must not
    /// hold any [`OwnerGuard`] while it waits, or two copies sharing two
    /// blobs could wait for each other forever.
    fn try_claim(self: &Arc<Self>, target: &Location, digest: &Digest) -> Claim {
        let mut map = self.entries.lock().expect("tracker poisoned");
        self.claim_locked(&mut map, target, digest)
    }

    /// Claims a blob for several targets at once, under one lock, so that a
    /// copy either owns the blob for every target that lacks it (and reads
    /// the source once for all of them) or for none.
    fn try_claim_all(self: &Arc<Self>, targets: &[&Location], digest: &Digest) -> Vec<Claim> {
        let mut map = self.entries.lock().expect("tracker poisoned");
        targets
            .iter()
            .map(|t| self.claim_locked(&mut map, t, digest))
            .collect()
    }

    fn claim_locked(
        self: &Arc<Self>,
        map: &mut HashMap<(String, Digest), Entry>,
        target: &Location,
        digest: &Digest,
    ) -> Claim {
        let key = (registry_key(target), digest.clone());
        match map.get(&key) {
            Some(Entry::Present(loc)) if loc == target => Claim::Present,
            Some(Entry::InFlight(rx)) => Claim::Busy(rx.clone()),
            existing => {
                let from = match existing {
                    Some(Entry::Present(loc)) => Some(loc.clone()),
                    _ => None,
                };
                let (tx, rx) = watch::channel(false);
                map.insert(key.clone(), Entry::InFlight(rx));
                let guard = OwnerGuard {
                    tracker: self.clone(),
                    key,
                    location: target.clone(),
                    done: Some(tx),
                    present: false,
                };
                match from {
                    Some(from) => Claim::Elsewhere(from, guard),
                    None => Claim::Owner(guard),
                }
            }
        }
    }

    /// Like [`Self::try_claim`], but waits out other tasks' uploads.
    async fn claim(self: &Arc<Self>, target: &Location, digest: &Digest) -> Claim {
        loop {
            match self.try_claim(target, digest) {
                Claim::Busy(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                other => return other,
            }
        }
    }
}

/// What a blob needs at one target.
enum Need {
    Nothing,
    Upload(OwnerGuard),
    /// Another copy is uploading it right now; look again once our own uploads are done.
    Later,
}

/// Shared machinery for copying images within one run.
pub struct Copier {
    pub tracker: Arc<BlobTracker>,
    pub stats: Arc<CopyStats>,
    /// Blob transfers in flight, all rules together.
    pub transfers: Arc<Semaphore>,
    /// Bytes progress callback target (for progress bars).
    pub on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Where chunked uploads are checkpointed (the daemon and `sync`); `None`
    /// for dry runs and ad hoc copies without a state directory.
    pub checkpoints: Option<State>,
    /// Cancelled on shutdown: no new transfer starts, chunked uploads stop
    /// after the chunk in flight.
    pub stop: CancellationToken,
}

type PutFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send + 'a>>;

/// How one target takes part in a transfer.
struct SinkPlan {
    /// Set when the upload is checkpointed: (target, repo) in the state.
    checkpoint: Option<(String, String)>,
    /// A session that still holds the first `offset` bytes, with the hash
    /// state at that offset.
    resume: Option<(UploadSession, Vec<u8>)>,
}

impl SinkPlan {
    fn offset(&self) -> u64 {
        self.resume.as_ref().map_or(0, |(s, _)| s.offset)
    }
}

fn interrupted(location: &Location, digest: &Digest) -> TransportError {
    TransportError::Interrupted {
        location: location.to_string(),
        detail: format!("blob {digest} not started"),
    }
}

/// The result of preparing an image for one target in a dry run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DryRunCost {
    pub blobs_to_copy: u64,
    pub bytes_to_copy: u64,
    pub blobs_to_mount: u64,
    pub blobs_present: u64,
}

impl Copier {
    /// A copier for one run: its own blob tracker (nothing learned in an
    /// earlier run survives, so a wiped target is noticed) and its own
    /// counters (concurrent runs of other rules do not mix in), sharing the
    /// global transfer limit, checkpoints and stop signal.
    pub fn for_run(&self) -> Copier {
        Copier {
            tracker: Default::default(),
            stats: Arc::new(CopyStats::default()),
            transfers: self.transfers.clone(),
            on_bytes: self.on_bytes.clone(),
            checkpoints: self.checkpoints.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Decides what `target` needs for `blob`: nothing (present, or mounted
    /// now), or an upload (the guard is held by the caller until it is done).
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
            None if wait => self.tracker.claim(loc, &blob.digest).await,
            None => self.tracker.try_claim(loc, &blob.digest),
        };
        match claim {
            Claim::Busy(_) => Ok(Need::Later),
            Claim::Present => {
                self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                Ok(Need::Nothing)
            }
            Claim::Elsewhere(from, guard) => {
                if target.mount_blob(&blob.digest, &from).await? {
                    guard.succeed();
                    self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(Need::Nothing);
                }
                // Not mountable: this task owns it in this repository.
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
        if target.blob_exists(&blob.digest).await? {
            guard.succeed();
            self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Need::Nothing);
        }
        Ok(Need::Upload(guard))
    }

    /// Whether an upload of `blob` to `sink` is checkpointed, and whether a
    /// checkpoint from an earlier run can be continued: only when the
    /// registry still knows the session (GET on it) at exactly the offset
    /// recorded. A checkpoint that cannot be used is dropped (and its
    /// session cancelled when the registry still has it).
    async fn sink_plan(&self, sink: &Store, blob: &Descriptor) -> SinkPlan {
        let none = SinkPlan {
            checkpoint: None,
            resume: None,
        };
        let (Store::Remote(remote), Some(state)) = (sink, &self.checkpoints) else {
            return none;
        };
        let chunk = remote.registry().chunk_size();
        if chunk == 0 || blob.size <= chunk {
            return none;
        }
        let (target, repo) = state_key(sink.location());
        let digest = blob.digest.as_str();
        let saved = match state.upload(&target, &repo, digest) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read upload checkpoints; uploading from the start");
                None
            }
        };
        let mut resume = None;
        if let Some(cp) = saved {
            let url = url::Url::parse(&cp.session_url);
            if let (Ok(url), Some(hash)) = (url, cp.hash_state.clone()) {
                if cp.offset > 0 && cp.offset < blob.size {
                    let at = UploadSession {
                        url,
                        offset: cp.offset,
                    };
                    match remote.upload_status(&at).await {
                        Ok(Some(s)) if s.offset == cp.offset => resume = Some((s, hash)),
                        Ok(Some(s)) => {
                            tracing::info!(
                                digest,
                                offset = cp.offset,
                                registry_offset = s.offset,
                                "upload session moved past its checkpoint; starting the blob over"
                            );
                            remote.cancel_upload(&s).await;
                        }
                        Ok(None) => tracing::info!(
                            digest,
                            offset = cp.offset,
                            "the registry no longer accepts the checkpointed upload session; starting the blob over"
                        ),
                        Err(e) => tracing::info!(digest, error = %e,
                            "checking the checkpointed upload session failed; starting the blob over"),
                    }
                }
            }
            if resume.is_none() {
                if let Err(e) = state.remove_upload(&target, &repo, digest) {
                    tracing::warn!(error = %e, "cannot drop an upload checkpoint");
                }
            } else {
                tracing::info!(digest, offset = cp.offset, target = %sink.location(), "resuming upload from checkpoint");
            }
        }
        SinkPlan {
            checkpoint: Some((target, repo)),
            resume,
        }
    }

    /// Reads a blob from the source once and streams it to every target in
    /// `sinks` at the same time. Uploads to registries with a `chunk_size`
    /// are checkpointed after every chunk and continued from a checkpoint
    /// when one is usable; the source is then read from the lowest resume
    /// offset on (HTTP Range), and the SHA-256 check continues from the hash
    /// state saved with the checkpoint, so it still covers the whole blob.
    /// Returns one result per sink, in order: the bytes sent to it.
    async fn transfer(
        &self,
        source: &Store,
        blob: &Descriptor,
        sinks: &[&Store],
    ) -> Vec<Result<u64, TransportError>> {
        let _permit = self
            .transfers
            .acquire()
            .await
            .expect("transfer semaphore closed");
        if self.stop.is_cancelled() {
            return sinks
                .iter()
                .map(|s| Err(interrupted(s.location(), &blob.digest)))
                .collect();
        }
        let mut plans = Vec::with_capacity(sinks.len());
        for sink in sinks {
            plans.push(self.sink_plan(sink, blob).await);
        }
        // One source failure, reported to every target with its kind kept,
        // so a transient one stays transient for each of them.
        let fail_all = |e: TransportError| {
            let loc = source.location().to_string();
            let mut out: Vec<_> = sinks.iter().skip(1).map(|_| Err(e.shared(&loc))).collect();
            out.insert(0, Err(e));
            out
        };
        let mut start = plans.iter().map(SinkPlan::offset).min().unwrap_or(0);
        let mut verified = None;
        if start > 0 {
            let hash = plans
                .iter()
                .find_map(|p| p.resume.as_ref().filter(|(s, _)| s.offset == start))
                .map(|(_, h)| h.clone())
                .unwrap_or_default();
            match source.get_blob_from(&blob.digest, blob.size, start).await {
                Ok((stream, got)) if got == start => {
                    match Verified::resume(
                        stream,
                        blob.digest.clone(),
                        Some(blob.size),
                        start,
                        &hash,
                    ) {
                        Ok(v) => verified = Some(v),
                        Err(e) => {
                            tracing::warn!(error = %e, "unusable hash state; reading the blob from the start");
                            start = 0;
                        }
                    }
                }
                Ok((stream, _)) => {
                    // The source ignored the range: read it all, hash it all.
                    start = 0;
                    verified = Some(Verified::new(stream, blob.digest.clone(), Some(blob.size)));
                }
                Err(e) => return fail_all(e),
            }
        }
        let verified = match verified {
            Some(v) => v,
            None => match source.get_blob(&blob.digest, blob.size).await {
                Ok(s) => Verified::new(s, blob.digest.clone(), Some(blob.size)),
                Err(e) => return fail_all(e),
            },
        };
        let chunk_sizes: Vec<u64> = sinks
            .iter()
            .zip(&plans)
            .filter(|(_, p)| p.checkpoint.is_some())
            .filter_map(|(s, _)| s.resumable())
            .collect();
        let snapshots = Snapshots::new(chunk_sizes);
        let mut verified = verified.with_snapshots(snapshots.clone());

        let mut senders = Vec::with_capacity(sinks.len());
        let mut skips = Vec::with_capacity(sinks.len());
        let mut puts: Vec<PutFuture<'_>> = Vec::with_capacity(sinks.len());
        let mut sent = Vec::with_capacity(sinks.len());
        for (sink, plan) in sinks.iter().zip(plans) {
            // A few chunks of slack per target: bounded memory, and a slow
            // target slows the read instead of filling memory.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
            senders.push(Some(tx));
            let body: ByteStream =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            let offset = plan.offset();
            skips.push(offset - start);
            sent.push(blob.size - offset);
            puts.push(match (sink, plan.checkpoint, &self.checkpoints) {
                (Store::Remote(remote), Some((target, repo)), Some(state)) => {
                    let snapshots = snapshots.clone();
                    let stop = self.stop.clone();
                    let resumed = plan.resume.is_some();
                    let stats = self.stats.clone();
                    Box::pin(async move {
                        let digest = blob.digest.as_str();
                        let on_chunk = |s: &UploadSession| {
                            let cp = UploadCheckpoint {
                                target: target.clone(),
                                repo: repo.clone(),
                                digest: digest.to_string(),
                                session_url: s.url.to_string(),
                                offset: s.offset,
                                hash_state: snapshots.at(s.offset),
                                updated: now_unix(),
                            };
                            if let Err(e) = state.save_upload(&cp) {
                                tracing::warn!(error = %e, "cannot save an upload checkpoint");
                            }
                        };
                        let session = plan.resume.map(|(s, _)| s);
                        let r = remote
                            .put_blob_resumable(
                                &blob.digest,
                                blob.size,
                                body,
                                session,
                                &on_chunk,
                                &stop,
                            )
                            .await;
                        match &r {
                            Err(TransportError::Interrupted { .. }) => {}
                            // A transient failure leaves the checkpoint: the
                            // retry asks the registry whether it still holds it.
                            Err(e) if e.is_transient() => {}
                            _ => {
                                if let Err(e) = state.remove_upload(&target, &repo, digest) {
                                    tracing::warn!(error = %e, "cannot drop an upload checkpoint");
                                }
                            }
                        }
                        if r.is_ok() && resumed {
                            stats.blobs_resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        r
                    })
                }
                _ => Box::pin(sink.put_blob(&blob.digest, blob.size, body)),
            });
        }
        let stats = self.stats.clone();
        let on_bytes = self.on_bytes.clone();
        let pump = async move {
            while let Some(item) = verified.next().await {
                match item {
                    Ok(chunk) => {
                        let n = chunk.len() as u64;
                        stats.bytes_read.fetch_add(n, Ordering::Relaxed);
                        if let Some(cb) = &on_bytes {
                            cb(n);
                        }
                        let mut live = 0;
                        for (slot, skip) in senders.iter_mut().zip(skips.iter_mut()) {
                            if let Some(tx) = slot {
                                // A target resuming further on does not get
                                // the bytes it already holds.
                                let piece = if *skip >= n {
                                    *skip -= n;
                                    live += 1;
                                    continue;
                                } else if *skip > 0 {
                                    let p = chunk.slice(*skip as usize..);
                                    *skip = 0;
                                    p
                                } else {
                                    chunk.clone()
                                };
                                if tx.send(Ok(piece)).await.is_err() {
                                    *slot = None;
                                } else {
                                    live += 1;
                                }
                            }
                        }
                        if live == 0 {
                            return;
                        }
                    }
                    Err(e) => {
                        let transient = crate::transport::io_is_transient(&e);
                        let msg = e.to_string();
                        for tx in senders.iter().flatten() {
                            let fault = crate::transport::stream_fault(transient, msg.clone());
                            let _ = tx.send(Err(fault)).await;
                        }
                        return;
                    }
                }
            }
            // Dropping the senders ends every target's stream cleanly.
        };
        let (_, results) = tokio::join!(pump, futures_util::future::join_all(puts));
        results
            .into_iter()
            .zip(sent)
            .map(|(r, n)| r.map(|()| n))
            .collect()
    }

    /// Copies `tree` to every target in `targets`, tagging it `tag` (or
    /// pushing it by digest when `tag` is `None`). Returns one result per
    /// target: a target that failed is never tagged.
    pub async fn copy_tree<'a>(
        &'a self,
        source: &'a Store,
        tree: &'a ImageTree,
        tag: Option<&str>,
        targets: &'a [Store],
    ) -> Vec<Result<(), CopyError>> {
        let mut failures: Vec<Vec<String>> = vec![Vec::new(); targets.len()];

        // 1. Blobs: per target, what is needed; then one transfer per blob.
        let prepared = futures_util::stream::iter(tree.blobs.iter())
            .map(|blob| async move {
                let mut needs = Vec::with_capacity(targets.len());
                let locations: Vec<&Location> = targets.iter().map(|t| t.location()).collect();
                let claims = self.tracker.try_claim_all(&locations, &blob.digest);
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
            let mut sinks = Vec::new();
            for (i, need) in needs.into_iter().enumerate() {
                match need {
                    Ok(Need::Nothing) => {}
                    Ok(Need::Upload(guard)) => sinks.push((i, guard)),
                    Ok(Need::Later) => later.push((blob, i)),
                    Err(e) => failures[i].push(format!("blob {}: {e}", blob.digest)),
                }
            }
            if !sinks.is_empty() {
                uploads.push((blob, sinks));
            }
        }

        // The retry layer of blob uploads: a target whose upload failed
        // transiently is tried again (its checkpoint, when the registry still
        // accepts the session, continues it; otherwise the blob restarts).
        // Source cuts never get here as transient: the source stream resumed
        // them itself, and its final failure is permanent.
        let upload = |blob: &'a Descriptor, sinks: Vec<(usize, OwnerGuard)>| async move {
            let mut pending = sinks;
            let mut errors: Vec<(usize, String)> = Vec::new();
            let mut delays = crate::transport::retry::delays();
            while !pending.is_empty() {
                let stores: Vec<&Store> = pending.iter().map(|(i, _)| &targets[*i]).collect();
                let results = self.transfer(source, blob, &stores).await;
                let delay = delays.next();
                let mut retry = Vec::new();
                for ((i, guard), result) in pending.into_iter().zip(results) {
                    match result {
                        Ok(sent) => {
                            guard.succeed();
                            self.stats.blobs_copied.fetch_add(1, Ordering::Relaxed);
                            self.stats.bytes_written.fetch_add(sent, Ordering::Relaxed);
                        }
                        Err(e) if e.is_transient() && delay.is_some() => {
                            tracing::warn!(digest = %blob.digest, target = %targets[i].location(), error = %e, "blob upload failed; retrying");
                            retry.push((i, guard));
                        }
                        Err(e) => errors.push((i, format!("blob {}: {e}", blob.digest))),
                    }
                }
                if let (false, Some(d)) = (retry.is_empty(), delay) {
                    tokio::time::sleep(d).await;
                }
                pending = retry;
            }
            errors
        };
        let transfers = futures_util::stream::iter(uploads)
            .map(|(blob, sinks)| upload(blob, sinks))
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        for (i, msg) in transfers.into_iter().flatten() {
            failures[i].push(msg);
        }

        // Blobs other copies were busy with: our own guards are released now,
        // so waiting for theirs cannot deadlock.
        for (blob, i) in later {
            match self.prepare_blob(&targets[i], blob, true, None).await {
                Ok(Need::Upload(guard)) => {
                    for (i, msg) in upload(blob, vec![(i, guard)]).await {
                        failures[i].push(msg);
                    }
                }
                Ok(_) => {}
                Err(e) => failures[i].push(format!("blob {}: {e}", blob.digest)),
            }
        }

        // 2. Manifests, children first, on each target whose blobs all arrived.
        let pushes = targets.iter().enumerate().map(|(i, target)| {
            let failed = std::mem::take(&mut failures[i]);
            async move {
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
                let reference = tag.unwrap_or(tree.root.digest.as_str());
                target.put_manifest(reference, &tree.root).await?;
                self.stats.manifests_pushed.fetch_add(1, Ordering::Relaxed);
                self.stats.images_copied.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        });
        futures_util::future::join_all(pushes).await
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
            match self.tracker.claim(target.location(), &blob.digest).await {
                Claim::Present => cost.blobs_present += 1,
                Claim::Busy(_) => unreachable!("claim waits"),
                Claim::Elsewhere(_, guard) => {
                    // As after the mount: later images find it here.
                    guard.succeed();
                    cost.blobs_to_mount += 1
                }
                Claim::Owner(guard) => {
                    if target.blob_exists(&blob.digest).await? {
                        guard.succeed();
                        cost.blobs_present += 1;
                    } else {
                        // Count it once per target: later images sharing the
                        // blob will find it "present" as it would be by then.
                        guard.succeed();
                        cost.blobs_to_copy += 1;
                        cost.bytes_to_copy += blob.size;
                    }
                }
            }
        }
        Ok(cost)
    }
}
