//! One blob read once from the source and streamed to every target that
//! lacks it, with checkpointed (resumable) uploads for chunked registries.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Copier, state_key};
use crate::oci::{ByteStream, Descriptor, Digest, Snapshots, Verified};
use crate::reference::Location;
use crate::state::{UploadCheckpoint, now_unix};
use crate::transport::remote::UploadSession;
use crate::transport::{Store, TransportError};

type PutFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send + 'a>>;

/// How one target takes part in a transfer.
struct SinkPlan {
    /// Set when the upload is checkpointed: (target, repo) in the state.
    checkpoint: Option<(String, String)>,
    /// A session that still holds its first `offset` bytes, with a hash
    /// state at an offset at or before it (the source is read from there).
    resume: Option<(UploadSession, HashAt)>,
}

/// A saved SHA-256 state and the offset it was taken at (empty at 0).
type HashAt = (Vec<u8>, u64);

impl SinkPlan {
    /// A plain upload: no checkpoint, nothing to resume.
    fn plain() -> SinkPlan {
        SinkPlan {
            checkpoint: None,
            resume: None,
        }
    }
    fn offset(&self) -> u64 {
        self.resume.as_ref().map_or(0, |(s, _)| s.offset)
    }
    /// Where the source must be read (and hashed) from for this sink.
    fn read_from(&self) -> u64 {
        self.resume.as_ref().map_or(0, |(_, (_, at))| *at)
    }
}

fn interrupted(location: &Location, digest: &Digest) -> TransportError {
    TransportError::Interrupted {
        location: location.to_string(),
        detail: format!("blob {digest} not started"),
    }
}

impl Copier {
    /// Whether an upload of `blob` to `sink` is checkpointed, and whether a
    /// checkpoint from an earlier run can be continued: only when the
    /// registry still knows the session (GET on it) at exactly the offset
    /// recorded. A checkpoint that cannot be used is dropped (and its
    /// session cancelled when the registry still has it).
    async fn sink_plan(&self, sink: &Store, blob: &Descriptor) -> SinkPlan {
        let none = SinkPlan::plain();
        let (Some((remote, chunk)), Some(state)) = (sink.resumable_uploads(), &self.checkpoints)
        else {
            return none;
        };
        if blob.size <= chunk {
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
                    // The registry says where the session stands (its
                    // Range); the source is read from the checkpoint's hash
                    // state (or from 0) and the bytes the session already
                    // holds are skipped.
                    match remote.upload_status(&at).await {
                        Ok(Some(s)) if s.offset <= blob.size => {
                            if s.offset != cp.offset {
                                tracing::info!(
                                    digest,
                                    checkpoint = cp.offset,
                                    registry_offset = s.offset,
                                    "the upload session is not where the checkpoint says; continuing from the registry's offset"
                                );
                            }
                            resume = Some(match s.offset >= cp.offset {
                                true => (s, (hash, cp.offset)),
                                false => (s, (Vec::new(), 0)),
                            });
                        }
                        Ok(Some(s)) => {
                            tracing::info!(
                                digest,
                                offset = cp.offset,
                                registry_offset = s.offset,
                                "upload session holds more than the blob; starting the blob over"
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
    /// `held`: the blob's bytes, already read from the source and checked
    /// (a verified signature payload, at most 256 KiB): sent from memory,
    /// still through the digest check, without checkpoints (nothing to
    /// resume) and without a source request.
    pub(super) async fn transfer(
        &self,
        source: &Store,
        blob: &Descriptor,
        held: Option<&Bytes>,
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
            plans.push(match held {
                Some(_) => SinkPlan::plain(),
                None => self.sink_plan(sink, blob).await,
            });
        }
        let opened = match held {
            Some(bytes) => Ok((from_memory(blob, bytes.clone()), 0)),
            None => open_source(source, blob, &plans).await,
        };
        let (verified, start) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // One source failure, reported to every target with its kind
                // and class kept, so a transient one stays transient for each
                // of them and a 404 at the source is not the target's fault.
                let loc = source.location().to_string();
                return sinks.iter().map(|_| Err(e.shared(&loc))).collect();
            }
        };
        let chunk_sizes: Vec<u64> = sinks
            .iter()
            .zip(&plans)
            .filter(|(_, p)| p.checkpoint.is_some())
            .filter_map(|(s, _)| s.resumable())
            .collect();
        let snapshots = Snapshots::new(chunk_sizes);
        let verified = verified.with_snapshots(snapshots.clone());

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
            skips.push(offset.saturating_sub(start));
            sent.push(blob.size - offset);
            puts.push(self.sink_put(sink, blob, plan, &snapshots, body));
        }
        let pump = self.pump(verified, senders, skips);
        let (_, results) = tokio::join!(pump, futures_util::future::join_all(puts));
        results
            .into_iter()
            .zip(sent)
            .map(|(r, n)| r.map(|()| n))
            .collect()
    }

    /// The upload of one target: checkpointed after every chunk when its
    /// plan says so, a plain PUT otherwise.
    fn sink_put<'a>(
        &self,
        sink: &'a Store,
        blob: &'a Descriptor,
        plan: SinkPlan,
        snapshots: &Snapshots,
        body: ByteStream,
    ) -> PutFuture<'a> {
        let (Some((remote, _)), Some((target, repo)), Some(state)) =
            (sink.resumable_uploads(), plan.checkpoint, &self.checkpoints)
        else {
            // Nothing of an unchunked upload (or a layout's file) can be
            // kept: a stop abandons it at once (its temporary file goes).
            let stop = self.stop.clone();
            return Box::pin(async move {
                tokio::select! {
                    r = sink.put_blob(&blob.digest, blob.size, body) => r,
                    _ = stop.cancelled() => Err(TransportError::Interrupted {
                        location: sink.location().to_string(),
                        detail: format!("upload of blob {} abandoned", blob.digest),
                    }),
                }
            });
        };
        let state = state.clone();
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
                .put_blob_resumable(&blob.digest, blob.size, body, session, &on_chunk, &stop)
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

    /// Feeds the verified source stream to every target's channel; a
    /// target resuming further on skips the bytes it already holds.
    async fn pump(&self, mut verified: Verified, mut senders: Vec<Sender>, mut skips: Vec<u64>) {
        while let Some(item) = verified.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    for tx in senders.iter().flatten() {
                        let fault = crate::transport::stream_fault_again(&e);
                        let _ = tx.send(Err(fault)).await;
                    }
                    return;
                }
            };
            let n = chunk.len() as u64;
            self.stats.bytes_read.fetch_add(n, Ordering::Relaxed);
            if let Some(cb) = &self.on_bytes {
                cb(n);
            }
            let mut live = 0;
            for (slot, skip) in senders.iter_mut().zip(skips.iter_mut()) {
                let Some(tx) = slot else { continue };
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
            if live == 0 {
                return;
            }
        }
        // Dropping the senders ends every target's stream cleanly.
    }
}

type Sender = Option<tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>>;

/// A held blob's bytes as the stream a transfer pumps: one chunk, checked
/// against the blob's digest and size like a source's stream.
fn from_memory(blob: &Descriptor, bytes: Bytes) -> Verified {
    let stream: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(bytes) }));
    Verified::new(stream, blob.digest.clone(), Some(blob.size))
}

/// Opens the source stream at the lowest offset any target resumes hashing
/// from (0 when none resumes, or when the source ignores the range or the saved
/// hash state is unusable). Returns the verifying stream and its offset.
async fn open_source(
    source: &Store,
    blob: &Descriptor,
    plans: &[SinkPlan],
) -> Result<(Verified, u64), TransportError> {
    let start = plans.iter().map(SinkPlan::read_from).min().unwrap_or(0);
    if start > 0 {
        let hash = plans
            .iter()
            .find_map(|p| p.resume.as_ref().filter(|(_, (_, at))| *at == start))
            .map(|(_, (h, _))| h.clone())
            .unwrap_or_default();
        let (stream, got) = source.get_blob_from(&blob.digest, blob.size, start).await?;
        if got != start {
            // The source ignored the range: read it all, hash it all.
            let v = Verified::new(stream, blob.digest.clone(), Some(blob.size));
            return Ok((v, 0));
        }
        let d = blob.digest.clone();
        match Verified::resume(stream, d, Some(blob.size), start, &hash) {
            Ok(v) => return Ok((v, start)),
            Err(e) => {
                tracing::warn!(error = %e, "unusable hash state; reading the blob from the start")
            }
        }
    }
    let s = source.get_blob(&blob.digest, blob.size).await?;
    Ok((Verified::new(s, blob.digest.clone(), Some(blob.size)), 0))
}
