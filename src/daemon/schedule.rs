//! When rules fire: the next time of a schedule, and the jitter that keeps
//! many rules from firing in the same second. Pure functions of time.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::config::Schedule;

/// The largest jitter added to a fire time.
pub const MAX_JITTER: Duration = Duration::from_secs(10);

/// The next fire strictly after `after` (ignoring jitter). `Every(d)` is a
/// fixed interval from `after`; a cron expression without a future time
/// (e.g. a year in the past) never fires again.
pub fn next_after(schedule: &Schedule, after: SystemTime) -> Option<SystemTime> {
    match schedule {
        Schedule::Every(d) => Some(after + *d),
        Schedule::Cron { schedule, .. } => {
            let dt: DateTime<Utc> = after.into();
            schedule.after(&dt).next().map(SystemTime::from)
        }
    }
}

/// The typical time between two fires (for bounding jitter).
pub fn interval(schedule: &Schedule, at: SystemTime) -> Duration {
    match schedule {
        Schedule::Every(d) => *d,
        Schedule::Cron { schedule, .. } => {
            let dt: DateTime<Utc> = at.into();
            let mut it = schedule.after(&dt);
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::ZERO),
                _ => Duration::ZERO,
            }
        }
    }
}

/// The upper bound of the jitter for a schedule: a tenth of its interval,
/// at most [`MAX_JITTER`].
pub fn jitter_bound(schedule: &Schedule, at: SystemTime) -> Duration {
    (interval(schedule, at) / 10).min(MAX_JITTER)
}

/// A random duration in `[0, bound]`.
pub fn jitter(bound: Duration) -> Duration {
    if bound.is_zero() {
        return Duration::ZERO;
    }
    // RandomState is seeded randomly per process and per instance: enough
    // randomness to spread fires, no extra dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let millis = bound.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % (millis + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron {
            schedule: Box::new(cron::Schedule::from_str(expr).unwrap()),
            text: expr.into(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn next_fire_times() {
        let every = Schedule::Every(Duration::from_secs(120));
        assert_eq!(next_after(&every, at(1000)), Some(at(1120)));
        // every 10 minutes at second 0; 1_700_000_000 is 22:13:20 UTC
        let c = cron("0 */10 * * * *");
        assert_eq!(next_after(&c, at(1_700_000_000)), Some(at(1_700_000_400)));
        assert_eq!(interval(&c, at(1_700_000_000)), Duration::from_secs(600));
        let s = cron("*/2 * * * * *");
        assert_eq!(next_after(&s, at(1_700_000_000)), Some(at(1_700_000_002)));
        assert_eq!(next_after(&s, at(1_700_000_001)), Some(at(1_700_000_002)));
        let hourly = cron("@hourly");
        assert_eq!(
            interval(&hourly, at(1_700_000_000)),
            Duration::from_secs(3600)
        );
        let past = cron("0 0 0 1 1 * 2001");
        assert_eq!(next_after(&past, at(1_700_000_000)), None);
    }

    #[test]
    fn jitter_is_bounded() {
        let c = cron("*/2 * * * * *");
        assert_eq!(
            jitter_bound(&c, at(1_700_000_000)),
            Duration::from_millis(200)
        );
        assert_eq!(
            jitter_bound(&Schedule::Every(Duration::from_secs(3600)), at(0)),
            MAX_JITTER
        );
        let bound = Duration::from_millis(500);
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let j = jitter(bound);
            assert!(j <= bound);
            distinct.insert(j);
        }
        assert!(distinct.len() > 10, "jitter should vary: {distinct:?}");
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
