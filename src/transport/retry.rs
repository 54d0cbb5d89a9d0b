//! The one retry policy: exponential backoff with full jitter and a bounded
//! number of attempts (backon). Each failure is retried by exactly one
//! layer, where it happens: a request in `remote::send`, a cut blob body in
//! `remote::resume` (Range from the last byte, sharing one [`Budget`] with
//! the requests that open and reopen it), a cut upload in the copier. A layer
//! that spends its budget hands up a permanent error ("gave up after N
//! attempts"), so no layer above tries again and attempts never multiply.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Tries of one operation after the first (so at most `RETRIES + 1` sends).
pub const RETRIES: usize = 5;
const MIN_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The delays before each retry: exponential (200 ms, 400 ms, ... up to
/// 10 s), each drawn uniformly from zero to that value ("full jitter"), so
/// clients that failed together do not come back together.
pub fn delays() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_max_times(RETRIES)
        .build()
        .map(full_jitter)
}

/// The attempts of one operation (a request, or a blob read and every
/// request that reopens it): at most `RETRIES + 1`, plus one more for every
/// [`REFUND_AFTER`] bytes a blob body delivered before a cut, so a large
/// blob on a flaky link still arrives while a source that cuts early cannot
/// buy more time.
pub struct Budget {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    attempts: usize,
    spare: usize,
}

/// Bytes of progress that earn a blob read one more attempt.
pub const REFUND_AFTER: u64 = 64 * 1024 * 1024;

impl Budget {
    pub fn new() -> Self {
        Budget {
            delays: Box::new(delays()),
            attempts: 1,
            spare: 0,
        }
    }

    /// The wait before one more attempt, counted; `None` when spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let d = match self.delays.next() {
            Some(d) => d,
            None if self.spare > 0 => {
                self.spare -= 1;
                full_jitter(MAX_DELAY)
            }
            None => return None,
        };
        self.attempts += 1;
        Some(d)
    }

    /// Attempts made so far (the first included).
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// One more attempt allowed (a blob body made [`REFUND_AFTER`] bytes of progress).
    pub fn refund(&mut self) {
        self.spare += 1;
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_growing_and_jittered() {
        let all: Vec<Vec<Duration>> = (0..50).map(|_| delays().collect()).collect();
        assert!(all.iter().all(|d| d.len() == RETRIES));
        // each delay stays under its exponential ceiling
        for d in &all {
            for (i, x) in d.iter().enumerate() {
                assert!(
                    *x <= (MIN_DELAY * 2u32.pow(i as u32)).min(MAX_DELAY),
                    "{i}: {x:?}"
                );
            }
        }
        // and is spread out, not constant
        let firsts: std::collections::HashSet<_> = all.iter().map(|d| d[0]).collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }

    #[test]
    fn a_budget_counts_attempts_and_refunds_one_at_a_time() {
        let mut b = Budget::new();
        assert_eq!(b.attempts(), 1);
        while b.next_delay().is_some() {}
        assert_eq!(b.attempts(), RETRIES + 1);
        b.refund();
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_none());
        assert_eq!(b.attempts(), RETRIES + 2);
    }
}
