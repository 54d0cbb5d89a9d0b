//! Bounded time for responses: a deadline for the response head and a
//! minimum rate for bodies, on top of `read_timeout` (which only catches
//! silence: a registry that trickles one byte a second never goes silent).
//!
//! A body must deliver `min_rate` bytes per second, counted over windows: a
//! window lasts 30 s, or the time the rest of the body needs at `min_rate`
//! when that is shorter (so a 2 KiB body is not given 30 s), but never less
//! than 2 s. A window that ends before its quota arrived abandons the body
//! like a stall (transient: a blob body resumes with Range within the same
//! attempt budget).
//!
//! Only the time spent waiting for the body counts: while the consumer does
//! not ask for more (a target that is slow or paused by its own rate limit
//! holds the source body back), the window's clock stands still. So
//! back-pressure from the other side never fails a healthy source. Once every
//! expected byte arrived, only `read_timeout` applies to the end of the body.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

/// The longest window over which a body's rate is averaged.
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(30);
/// The shortest window (a small body's rest, network hiccups).
pub(super) const MIN_WINDOW: Duration = Duration::from_secs(2);
/// The response head (status line and headers) must arrive within this
/// many `read_timeout`s of sending the request (or of the end of its
/// streamed body).
pub(super) const HEAD_DEADLINE_FACTOR: u32 = 2;

/// The rate floor of one body.
#[derive(Debug)]
pub(super) struct RateFloor {
    /// Bytes per second; 0 = off.
    min_rate: u64,
    /// Bytes still expected (`Content-Length` minus what arrived), if known.
    remaining: Option<u64>,
    window: Duration,
    /// Time spent waiting for the body in this window (not the time the
    /// consumer took between asks).
    waited: Duration,
    /// Bytes this window must deliver.
    quota: u64,
    got: u64,
}

/// A body slower than the floor: what it delivered in its window.
#[derive(Debug)]
pub(super) struct TooSlow {
    pub(super) got: u64,
    pub(super) quota: u64,
    pub(super) window: Duration,
    pub(super) min_rate: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "body slower than min_rate ({} B/s): {} of {} bytes in {:.1} s",
            self.min_rate,
            self.got,
            self.quota,
            self.window.as_secs_f64()
        )
    }
}

impl RateFloor {
    /// A floor for a body of `len` bytes (unknown: `None`), starting now.
    pub(super) fn new(min_rate: u64, len: Option<u64>) -> Self {
        let mut f = RateFloor {
            min_rate,
            remaining: len,
            window: MAX_WINDOW,
            waited: Duration::ZERO,
            quota: 0,
            got: 0,
        };
        f.next_window();
        f
    }

    fn next_window(&mut self) {
        let full = self.min_rate.saturating_mul(MAX_WINDOW.as_secs());
        let (window, quota) = match self.remaining {
            Some(rest) if rest < full && self.min_rate > 0 => {
                let need = Duration::from_secs_f64(rest as f64 / self.min_rate as f64);
                (need.max(MIN_WINDOW), rest)
            }
            _ => (MAX_WINDOW, full),
        };
        self.window = window;
        self.waited = Duration::ZERO;
        self.quota = quota;
        self.got = 0;
    }

    /// Counts `n` bytes that arrived; a window whose quota is met makes
    /// room for the next.
    pub(super) fn delivered(&mut self, n: u64) {
        self.got += n;
        if let Some(rest) = &mut self.remaining {
            *rest = rest.saturating_sub(n);
        }
        if self.got >= self.quota {
            self.next_window();
        }
    }

    fn too_slow(&self) -> TooSlow {
        TooSlow {
            got: self.got,
            quota: self.quota,
            window: self.window,
            min_rate: self.min_rate,
        }
    }

    /// The next item of `body`, or [`TooSlow`] when this window ends first.
    pub(super) async fn next<S, E>(
        &mut self,
        body: &mut S,
    ) -> Result<Option<Result<Bytes, E>>, TooSlow>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        if self.min_rate == 0 || self.remaining == Some(0) {
            return Ok(body.next().await);
        }
        let started = Instant::now();
        let left = self.window.saturating_sub(self.waited);
        tokio::select! {
            item = body.next() => {
                self.waited += started.elapsed();
                if let Some(Ok(b)) = &item {
                    self.delivered(b.len() as u64);
                }
                Ok(item)
            }
            _ = tokio::time::sleep(left) => {
                self.waited = self.window;
                Err(self.too_slow())
            }
        }
    }
}

/// How long a response head may take: `HEAD_DEADLINE_FACTOR` x `read_timeout`.
pub(super) fn head_deadline(read_timeout: Duration) -> Duration {
    read_timeout.saturating_mul(HEAD_DEADLINE_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_shrink_for_small_bodies_but_not_below_the_minimum() {
        let f = RateFloor::new(10 * 1024, Some(2048));
        assert_eq!(f.window, MIN_WINDOW);
        assert_eq!(f.quota, 2048);
        let f = RateFloor::new(10 * 1024, Some(100 * 1024));
        assert_eq!(f.window, Duration::from_secs(10));
        let f = RateFloor::new(10 * 1024, Some(1 << 30));
        assert_eq!((f.window, f.quota), (MAX_WINDOW, 300 * 1024));
        let f = RateFloor::new(10 * 1024, None);
        assert_eq!(f.window, MAX_WINDOW);
    }

    #[test]
    fn a_met_quota_starts_the_next_window_from_what_is_left() {
        let mut f = RateFloor::new(1000, Some(100_000));
        assert_eq!(f.quota, 30_000);
        f.delivered(29_999);
        assert_eq!(f.got, 29_999);
        f.delivered(1);
        assert_eq!((f.got, f.remaining), (0, Some(70_000)));
        f.delivered(60_000);
        assert_eq!((f.window, f.quota), (Duration::from_secs(10), 10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_abandoned_at_the_end_of_its_window() {
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
        });
        let mut body = Box::pin(trickle);
        let mut f = RateFloor::new(10 * 1024, Some(2048));
        let started = Instant::now();
        let err = loop {
            match f.next(&mut body).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(started.elapsed(), MIN_WINDOW);
        assert_eq!(err.got, 1, "{err}");
        let mut off = RateFloor::new(0, Some(2048));
        for _ in 0..5 {
            assert!(off.next(&mut body).await.is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_consumer_takes_between_asks_does_not_count() {
        // a healthy body (each piece at once) read by a consumer that
        // pauses 10 s between pieces (a target that throttles)
        let mut body = Box::pin(futures_util::stream::iter(
            (0..5).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"xxxx"))),
        ));
        let mut f = RateFloor::new(10 * 1024, Some(20));
        for _ in 0..5 {
            assert!(f.next(&mut body).await.is_ok());
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // every byte arrived: the end of the body waits as long as it takes
        assert_eq!(f.remaining, Some(0));
        assert!(matches!(f.next(&mut body).await, Ok(None)));
    }
}
