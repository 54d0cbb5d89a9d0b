//! The one wall clock of the process (the hidden `--now` overrides it where
//! a run takes a clock, see `Engine::with_clock`) and the one lag
//! computation shared by `/metrics` and `regkeeper status`, so the two never
//! disagree on what "lag" means.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; a clock before 1970 reads as 0.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, fractional (run start and end times,
/// metrics timestamps).
pub fn now_unix_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// Whole seconds since the Unix epoch (what the state database stores).
pub fn now_unix() -> i64 {
    since_epoch().as_secs() as i64
}

/// How far `now` is past `basis` (the start of the last run that left every
/// target in step, or of the first run when none did yet), never negative:
/// a clock stepped back reads as no lag rather than as a negative one.
pub fn lag_seconds(now: f64, basis: f64) -> f64 {
    (now - basis).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_distance_past_the_basis_and_never_negative() {
        assert_eq!(lag_seconds(130.0, 100.0), 30.0);
        assert_eq!(lag_seconds(100.0, 130.0), 0.0);
    }

    #[test]
    fn whole_and_fractional_clocks_agree() {
        let f = now_unix_f64();
        let i = now_unix();
        assert!(f > 1.6e9, "the clock reads the epoch: {f}");
        assert!((i as f64 - f).abs() < 2.0, "{i} vs {f}");
    }
}
