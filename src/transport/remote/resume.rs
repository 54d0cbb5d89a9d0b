//! A blob body that survives a cut: when the registry's stream fails part-way
//! (reset, timeout, a stall past `read_timeout`, a trickle below `min_rate`),
//! it asks again from the next byte it has not delivered (`Range: bytes=N-`)
//! and carries on. The consumer sees one continuous stream, so the SHA-256
//! check that wraps it simply continues over every byte.
//!
//! The first GET, its retries and every resuming GET share one attempt
//! budget (`retry::Budget`): a blob is asked for at most the documented
//! number of times (plus one per 64 MiB it delivered), and the final
//! failure is permanent, so no layer above reads it again in this run.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::pace::RateFloor;
use super::{RemoteRepo, error_chain};
use crate::oci::{ByteStream, Digest};
use crate::transport::retry::{Budget, REFUND_AFTER};
use crate::transport::stream_gave_up;

pub(super) struct Resuming {
    repo: RemoteRepo,
    digest: Digest,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    floor: RateFloor,
    /// Offset in the blob of the next byte to deliver.
    pos: u64,
    /// Bytes to drop from `body` first (a registry that ignored the range).
    skip: u64,
    budget: Budget,
    /// Bytes delivered since the budget last earned an attempt back.
    progress: u64,
}

impl Resuming {
    pub(super) fn new(
        repo: RemoteRepo,
        digest: Digest,
        resp: reqwest::Response,
        start: u64,
        budget: Budget,
    ) -> Self {
        let floor = RateFloor::new(repo.registry.min_rate, resp.content_length());
        Resuming {
            repo,
            digest,
            body: resp.bytes_stream().boxed(),
            floor,
            pos: start,
            skip: 0,
            budget,
            progress: 0,
        }
    }

    pub(super) fn into_stream(self) -> ByteStream {
        Box::pin(futures_util::stream::unfold(
            Some(self),
            |state| async move {
                let mut r = state?;
                match r.next_piece().await {
                    Ok(Some(b)) => Some((Ok(b), Some(r))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }

    async fn next_piece(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match self.floor.next(&mut self.body).await {
                Ok(None) => return Ok(None),
                Ok(Some(Ok(mut b))) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        b = b.slice(drop as usize..);
                    }
                    if b.is_empty() {
                        continue;
                    }
                    self.pos += b.len() as u64;
                    self.progress += b.len() as u64;
                    if self.progress >= REFUND_AFTER {
                        // real progress on a large blob earns one more cut
                        self.progress -= REFUND_AFTER;
                        self.budget.refund();
                    }
                    return Ok(Some(b));
                }
                Ok(Some(Err(e))) => self.reopen(error_chain(&e)).await?,
                Err(slow) => self.reopen(slow.to_string()).await?,
            }
        }
    }

    /// After a failed or too slow read: waits, then asks for the rest of
    /// the blob, within the budget.
    async fn reopen(&mut self, cause: String) -> std::io::Result<()> {
        let reg = &self.repo.registry;
        let detail = format!(
            "{}: reading blob {} at byte {}: {cause}",
            reg.host, self.digest, self.pos,
        );
        let Some(delay) = self.budget.next_delay() else {
            // retried where it happened, as often as the budget allows: no
            // layer above tries again in this run
            return Err(stream_gave_up(format!(
                "{detail}; gave up after {} attempts (the next run tries again)",
                self.budget.attempts()
            )));
        };
        tracing::info!(registry = %reg.host, digest = %self.digest, offset = self.pos,
            attempt = self.budget.attempts(), delay_ms = delay.as_millis() as u64, error = %cause,
            "blob body cut or too slow; resuming with Range");
        reg.stats.lock().expect("stats poisoned").retries += 1;
        tokio::time::sleep(delay).await;
        match self
            .repo
            .open_blob(&self.digest, self.pos, &mut self.budget)
            .await
        {
            Ok((resp, start)) => {
                self.skip = self.pos - start;
                self.floor = RateFloor::new(reg.min_rate, resp.content_length());
                self.body = resp.bytes_stream().boxed();
                Ok(())
            }
            Err(e) => Err(stream_gave_up(format!("{detail}; resuming failed: {e}"))),
        }
    }
}
