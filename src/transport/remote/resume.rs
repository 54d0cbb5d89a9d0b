//! A blob body that survives a cut: when the registry's stream fails part-way
//! (reset, timeout, a stall past `read_timeout`), it asks again from the next
//! byte it has not delivered (`Range: bytes=N-`) and carries on. The consumer
//! sees one continuous stream, so the SHA-256 check that wraps it simply
//! continues over every byte.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{RemoteRepo, error_chain};
use crate::oci::{ByteStream, Digest};
use crate::transport::{retry, stream_fault};

pub(super) struct Resuming {
    repo: RemoteRepo,
    digest: Digest,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// Offset in the blob of the next byte to deliver.
    pos: u64,
    /// Bytes to drop from `body` first (a registry that ignored the range).
    skip: u64,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Resuming {
    pub(super) fn new(
        repo: RemoteRepo,
        digest: Digest,
        resp: reqwest::Response,
        start: u64,
    ) -> Self {
        Resuming {
            repo,
            digest,
            body: resp.bytes_stream().boxed(),
            pos: start,
            skip: 0,
            delays: Box::new(retry::delays()),
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
            match self.body.next().await {
                None => return Ok(None),
                Some(Ok(mut b)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        b = b.slice(drop as usize..);
                    }
                    if b.is_empty() {
                        continue;
                    }
                    self.pos += b.len() as u64;
                    // progress: the next cut gets a fresh set of attempts
                    self.delays = Box::new(retry::delays());
                    return Ok(Some(b));
                }
                Some(Err(e)) => self.reopen(&e).await?,
            }
        }
    }

    /// After a failed read: waits, then asks for the rest of the blob.
    async fn reopen(&mut self, cause: &reqwest::Error) -> std::io::Result<()> {
        let reg = &self.repo.registry;
        let detail = format!(
            "{}: reading blob {} at byte {}: {}",
            reg.host,
            self.digest,
            self.pos,
            error_chain(cause)
        );
        let Some(delay) = self.delays.next() else {
            // retried where it happened, as often as the policy allows: no
            // layer above tries again in this run
            return Err(stream_fault(
                false,
                format!("{detail}; gave up after {} attempts", retry::RETRIES + 1),
            ));
        };
        tracing::info!(registry = %reg.host, digest = %self.digest, offset = self.pos,
            delay_ms = delay.as_millis() as u64, error = %error_chain(cause), "blob body cut; resuming with Range");
        reg.stats.lock().expect("stats poisoned").retries += 1;
        tokio::time::sleep(delay).await;
        match self.repo.open_blob(&self.digest, self.pos).await {
            Ok((resp, start)) => {
                self.skip = self.pos - start;
                self.body = resp.bytes_stream().boxed();
                Ok(())
            }
            Err(e) => Err(stream_fault(
                false,
                format!("{detail}; resuming failed: {e}"),
            )),
        }
    }
}
