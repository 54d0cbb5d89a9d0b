//! The progress line on a terminal (bytes read with rate, images pushed,
//! blobs copied and mounted); nothing otherwise (logs say enough).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};

use regkeeper::engine::Engine;
use regkeeper::engine::copy::CopyTotals;

/// The counts part of the line. Read from the engine's live counters, so
/// that a `sync` (whose runs count apart until they end) shows them moving.
pub(crate) fn counts(t: &CopyTotals) -> String {
    format!(
        "{} image(s), {} blob(s) copied, {} mounted, {} present",
        t.images_copied, t.blobs_copied, t.blobs_mounted, t.blobs_skipped
    )
}

/// `" 40% ETA 3 seconds"` once `total` blobs are known (0 = not known);
/// the ETA extrapolates the rate so far, so it waits for the first blob.
pub(crate) fn percent_eta(done: u64, total: u64, elapsed: Duration) -> String {
    if total == 0 {
        return String::new();
    }
    let done = done.min(total);
    let pct = done * 100 / total;
    if done == 0 {
        return format!(" {pct}%");
    }
    let left = elapsed.mul_f64((total - done) as f64 / done as f64);
    format!(" {pct}% ETA {}", HumanDuration(left))
}

pub(crate) fn start(engine: &mut Engine, show: bool) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}), {msg} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let b = bar.clone();
    engine.on_bytes(Arc::new(move |n| b.inc(n)));
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    engine.on_total(Arc::new(move |n| t.store(n, Ordering::Relaxed)));
    let stats = engine.live_stats();
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            let t = stats.totals();
            let done = t.blobs_copied + t.blobs_mounted + t.blobs_skipped;
            let all = total.load(Ordering::Relaxed);
            b.set_message(counts(&t) + &percent_eta(done, all, b.elapsed()));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_every_counter() {
        let t = CopyTotals {
            images_copied: 2,
            blobs_copied: 5,
            blobs_mounted: 1,
            blobs_skipped: 3,
            ..Default::default()
        };
        assert_eq!(
            counts(&t),
            "2 image(s), 5 blob(s) copied, 1 mounted, 3 present"
        );
    }

    #[test]
    fn percent_and_eta_only_with_a_total() {
        let ten = Duration::from_secs(10);
        assert_eq!(percent_eta(3, 0, ten), "");
        assert_eq!(percent_eta(0, 4, ten), " 0%");
        // A quarter in 10 s: three quarters, 30 s, to go.
        assert_eq!(percent_eta(1, 4, ten), " 25% ETA 30 seconds");
        assert_eq!(percent_eta(4, 4, ten), " 100% ETA 0 seconds");
        assert_eq!(percent_eta(9, 4, ten), " 100% ETA 0 seconds");
    }
}
