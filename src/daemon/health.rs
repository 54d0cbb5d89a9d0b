//! `/healthz` answers 503 when the scheduler loop stops making progress,
//! as systemd's watchdog would kill it: the loop beats at least every
//! `BEAT_EVERY`, and a loop silent for `STALL_AFTER` is stuck (a blocked
//! thread, a deadlock), so Kubernetes' liveness probe restarts the pod.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The scheduler loop wakes at least this often.
pub(crate) const BEAT_EVERY: Duration = Duration::from_secs(10);

/// A loop that has not beaten for this long is reported stuck.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(60);

/// When the scheduler loop last went round.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that has just beaten (start-up counts as progress).
    pub(crate) fn new() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the loop has been silent at `now`.
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// `None` while healthy, else what `/healthz` says with its 503.
    pub(crate) fn stalled(&self, now: Instant) -> Option<String> {
        let silent = self.silent_for(now);
        (silent > STALL_AFTER).then(|| {
            format!(
                "scheduler loop stalled: no progress for {} s (limit {} s)\n",
                silent.as_secs(),
                STALL_AFTER.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_past_the_limit_is_stalled_until_the_next_beat() {
        let h = Heartbeat::new();
        let t0 = h.origin;
        assert_eq!(h.stalled(t0 + Duration::from_secs(30)), None);
        let msg = h
            .stalled(t0 + STALL_AFTER + Duration::from_secs(1))
            .unwrap();
        assert!(msg.contains("no progress for 61 s"), "{msg}");
        h.beat_at(t0 + Duration::from_secs(70));
        assert_eq!(h.stalled(t0 + Duration::from_secs(100)), None);
        // A late beat from an older instant never moves it back.
        h.beat_at(t0 + Duration::from_secs(5));
        assert_eq!(
            h.silent_for(t0 + Duration::from_secs(71)),
            Duration::from_secs(1)
        );
    }
}
