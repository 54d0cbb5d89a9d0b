//! The one retry policy: exponential backoff with full jitter and a bounded
//! number of attempts (backon). Each failure is retried by exactly one
//! layer, where it happens: a request in `remote::send`, a cut blob body in
//! `remote::resume` (Range from the last byte), a cut upload in the copier.
//! None of these layers wraps another, so attempts never multiply.

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
}
