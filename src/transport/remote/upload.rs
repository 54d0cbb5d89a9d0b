//! Cutting one blob stream into upload request bodies without buffering a
//! chunk in memory.
//!
//! [`Source`] owns the caller's stream and hands it out piecewise: each
//! [`Source::take`] is a request body that yields exactly `n` bytes (splitting
//! `Bytes` where a piece straddles the boundary) and then ends, leaving the
//! rest for the next body.
//!
//! The source always holds back the piece it last read until the stream has
//! produced the next one or ended cleanly. The caller's verifying wrapper
//! reports a digest mismatch only at the end of the stream, so holding back
//! means the final bytes of a blob never reach the registry before the
//! verification passed: a bad stream fails the request that carries its last
//! bytes, and the blob is never committed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::oci::ByteStream;

struct State {
    inner: ByteStream,
    /// Read from `inner`, not yet released (see the module docs).
    held: Option<Bytes>,
    /// Released but not yet consumed: the tail of a piece split at a body boundary.
    leftover: Option<Bytes>,
    ended: bool,
    /// The stream's error, kept so the caller can report it instead of the
    /// request failure it caused.
    error: Option<io::Error>,
    consumed: u64,
}

impl State {
    /// The next released piece: `Ok(None)` at a clean end.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, String>>> {
        if let Some(b) = self.leftover.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        if let Some(e) = &self.error {
            return Poll::Ready(Some(Err(e.to_string())));
        }
        loop {
            if self.ended {
                return Poll::Ready(self.held.take().map(Ok));
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    if b.is_empty() {
                        continue;
                    }
                    if let Some(prev) = self.held.replace(b) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.held = None;
                    let msg = e.to_string();
                    self.error = Some(e);
                    self.ended = true;
                    return Poll::Ready(Some(Err(msg)));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Shared handle on the blob stream being uploaded.
#[derive(Clone)]
pub(crate) struct Source(Arc<Mutex<State>>);

impl Source {
    pub(crate) fn new(inner: ByteStream) -> Self {
        Source(Arc::new(Mutex::new(State {
            inner,
            held: None,
            leftover: None,
            ended: false,
            error: None,
            consumed: 0,
        })))
    }

    /// A body of exactly `n` bytes (fewer if the stream ends early, which the
    /// request's `Content-Length` then turns into a failed request).
    pub(crate) fn take(&self, n: u64) -> ByteStream {
        Box::pin(Take {
            src: self.clone(),
            remaining: n,
        })
    }

    /// The error the stream ended with, if it did (taken once).
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        self.0.lock().expect("upload source poisoned").error.take()
    }

    /// Whether the stream ended cleanly before `size` bytes (a short blob).
    pub(crate) fn ended_short(&self, size: u64) -> bool {
        let st = self.0.lock().expect("upload source poisoned");
        st.ended && st.error.is_none() && st.held.is_none() && st.consumed < size
    }

    pub(crate) fn consumed(&self) -> u64 {
        self.0.lock().expect("upload source poisoned").consumed
    }

    /// Waits for the stream's end after all announced bytes were sent:
    /// `Err` if it fails or carries more bytes than announced.
    pub(crate) async fn finish(&self) -> Result<(), String> {
        let piece = futures_util::future::poll_fn(|cx| {
            self.0
                .lock()
                .expect("upload source poisoned")
                .poll_piece(cx)
        })
        .await;
        match piece {
            None => Ok(()),
            Some(Ok(_)) => Err("the blob stream has more bytes than its declared size".into()),
            Some(Err(e)) => Err(e),
        }
    }
}

struct Take {
    src: Source,
    remaining: u64,
}

impl Stream for Take {
    type Item = Result<Bytes, io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let src = self.src.clone();
        let mut st = src.0.lock().expect("upload source poisoned");
        match st.poll_piece(cx) {
            Poll::Ready(Some(Ok(mut b))) => {
                if b.len() as u64 > self.remaining {
                    let rest = b.split_off(self.remaining as usize);
                    st.leftover = Some(rest);
                }
                self.remaining -= b.len() as u64;
                st.consumed += b.len() as u64;
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(msg))) => {
                self.remaining = 0;
                Poll::Ready(Some(Err(io::Error::other(msg))))
            }
            Poll::Ready(None) => {
                self.remaining = 0;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn stream(parts: Vec<Result<&'static [u8], &'static str>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| p.map(Bytes::from_static).map_err(io::Error::other)),
        ))
    }

    async fn collect(mut s: ByteStream) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn splits_into_exact_chunks() {
        let src = Source::new(stream(vec![
            Ok(b"abcde"),
            Ok(b""),
            Ok(b"fgh"),
            Ok(b"ijklmnop"),
        ]));
        assert_eq!(collect(src.take(4)).await.unwrap(), b"abcd");
        assert_eq!(collect(src.take(4)).await.unwrap(), b"efgh");
        assert_eq!(collect(src.take(4)).await.unwrap(), b"ijkl");
        assert_eq!(collect(src.take(4)).await.unwrap(), b"mnop");
        assert_eq!(src.consumed(), 16);
        src.finish().await.unwrap();
        assert_eq!(collect(src.take(4)).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn error_at_end_withholds_last_bytes() {
        let src = Source::new(stream(vec![Ok(b"abc"), Ok(b"def"), Err("digest mismatch")]));
        // "abc" is released once "def" arrived; "def" is never released.
        let mut body = src.take(6);
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"abc");
        let err = body.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("digest mismatch"));
        assert!(src.take_error().unwrap().to_string().contains("mismatch"));
        assert_eq!(src.consumed(), 3);
    }

    #[tokio::test]
    async fn finish_detects_extra_bytes_and_short_streams() {
        let src = Source::new(stream(vec![Ok(b"abcdef")]));
        assert_eq!(collect(src.take(4)).await.unwrap(), b"abcd");
        assert!(src.finish().await.is_err());
        let src = Source::new(stream(vec![Ok(b"ab")]));
        assert_eq!(collect(src.take(4)).await.unwrap(), b"ab");
        assert_eq!(src.consumed(), 2);
    }
}
