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

/// What the line counts towards: the blobs of the image being copied
/// (`copy`, told by `Engine::on_total`) or the image copies of the run
/// plans made so far (`sync`, told by `Engine::on_plan` as each rule's plan
/// is made; rules run at once); 0 = not known yet.
#[derive(Default)]
struct Goal {
    blobs: AtomicU64,
    images: AtomicU64,
}

impl Goal {
    /// The % and ETA part of the line for the counters `t`.
    fn describe(&self, t: &CopyTotals, elapsed: Duration) -> String {
        let blobs = self.blobs.load(Ordering::Relaxed);
        if blobs > 0 {
            let done = t.blobs_copied + t.blobs_mounted + t.blobs_skipped;
            return percent_eta(done, blobs, elapsed);
        }
        let images = self.images.load(Ordering::Relaxed);
        percent_eta(t.images_copied, images, elapsed)
    }
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
    let goal = Arc::new(Goal::default());
    let g = goal.clone();
    engine.on_total(Arc::new(move |n| g.blobs.store(n, Ordering::Relaxed)));
    let stats = engine.live_stats();
    let g = goal.clone();
    engine.on_plan(Arc::new(move |n| {
        g.images.fetch_add(n, Ordering::Relaxed);
    }));
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            let t = stats.totals();
            b.set_message(counts(&t) + &goal.describe(&t, b.elapsed()));
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

    #[test]
    fn sync_counts_the_images_of_the_plans_made_so_far() {
        let goal = Goal::default();
        let ten = Duration::from_secs(10);
        let mut t = CopyTotals::default();
        assert_eq!(goal.describe(&t, ten), "", "no plan yet: no %");
        // Two rules' plans: 3 and 1 image copies.
        goal.images.fetch_add(3, Ordering::Relaxed);
        goal.images.fetch_add(1, Ordering::Relaxed);
        assert_eq!(goal.describe(&t, ten), " 0%");
        t.images_copied = 2;
        assert_eq!(goal.describe(&t, ten), " 50% ETA 10 seconds");
        // `copy` tells a blob total: it wins.
        goal.blobs.store(10, Ordering::Relaxed);
        t.blobs_copied = 5;
        assert_eq!(goal.describe(&t, ten), " 50% ETA 10 seconds");
        t.blobs_mounted = 3;
        assert_eq!(goal.describe(&t, ten), " 80% ETA 3 seconds");
    }
}
