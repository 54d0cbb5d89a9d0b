//! The progress line on a terminal (bytes read with rate, images pushed,
//! blobs copied and mounted, a percentage with an ETA); nothing otherwise
//! (logs say enough). The percentage moves with the bytes of the blobs
//! being copied, so it moves within one big image too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};

use regkeeper::engine::Engine;
use regkeeper::engine::copy::{BlobBytes, CopyTotals};

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

/// Steps of one image in the percentage of `sync` (so a part of one image
/// shows).
const PER_IMAGE: u64 = 1000;

/// What the line counts towards: the blob bytes of the image being copied
/// (`copy`, which `Engine::on_total` marks) or the image copies of the run
/// plans made so far (`sync`, told by `Engine::on_plan` as each rule's plan
/// is made; rules run at once), with the copies in flight counted by their
/// bytes; 0 = not known yet.
#[derive(Default)]
struct Goal {
    blobs: AtomicU64,
    images: AtomicU64,
    /// The largest fraction shown so far (in `PER_IMAGE` steps per image):
    /// the line never goes back when a new copy starts.
    shown: AtomicU64,
}

/// The share of the blob bytes of the copies in flight that is done, in
/// `PER_IMAGE` steps: bytes read plus bytes that needed no read, less the
/// bytes of the trees already finished. At most one step short of a whole
/// image until the copy ends (a copy ends when its manifests are pushed).
fn in_flight(b: BlobBytes, read: u64) -> u64 {
    let open = b.started.saturating_sub(b.finished);
    if open == 0 {
        return 0;
    }
    let done = read.saturating_add(b.settled).saturating_sub(b.finished);
    (done.min(open) as u128 * PER_IMAGE as u128 / open as u128).min(PER_IMAGE as u128 - 1) as u64
}

impl Goal {
    /// The % and ETA part of the line for the counters `t`, the blob bytes
    /// `b` and the bytes `read` from sources.
    fn describe(&self, t: &CopyTotals, b: BlobBytes, read: u64, elapsed: Duration) -> String {
        if self.blobs.load(Ordering::Relaxed) > 0 {
            // `copy`: one tree, its bytes
            let done = read.saturating_add(b.settled).min(b.started);
            let done = if b.finished > 0 { b.started } else { done };
            return percent_eta(done, b.started, elapsed);
        }
        let images = self.images.load(Ordering::Relaxed);
        let done = (t.images_copied * PER_IMAGE + in_flight(b, read)).min(images * PER_IMAGE);
        let done = self.shown.fetch_max(done, Ordering::Relaxed).max(done);
        percent_eta(done, images * PER_IMAGE, elapsed)
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
    let bytes = engine.track_progress();
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
            let share = goal.describe(&t, bytes.snapshot(), b.position(), b.elapsed());
            b.set_message(counts(&t) + &share);
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
        let none = BlobBytes::default();
        let mut t = CopyTotals::default();
        assert_eq!(goal.describe(&t, none, 0, ten), "", "no plan yet: no %");
        // Two rules' plans: 3 and 1 image copies.
        goal.images.fetch_add(3, Ordering::Relaxed);
        goal.images.fetch_add(1, Ordering::Relaxed);
        assert_eq!(goal.describe(&t, none, 0, ten), " 0%");
        t.images_copied = 2;
        assert_eq!(goal.describe(&t, none, 0, ten), " 50% ETA 10 seconds");
    }

    #[test]
    fn sync_moves_within_one_big_image() {
        let goal = Goal::default();
        let ten = Duration::from_secs(10);
        let t = CopyTotals::default();
        goal.images.store(1, Ordering::Relaxed);
        // One image of 1,000 bytes, 100 of them present at the target.
        let b = BlobBytes {
            started: 1000,
            finished: 0,
            settled: 100,
        };
        assert_eq!(goal.describe(&t, b, 0, ten), " 10% ETA 2 minutes");
        assert_eq!(goal.describe(&t, b, 400, ten), " 50% ETA 10 seconds");
        // All bytes read, manifests not pushed yet: not 100% before the end.
        assert_eq!(goal.describe(&t, b, 900, ten), " 99% ETA 0 seconds");
        // Another copy starts: the share in flight halves, the line stays.
        let b2 = BlobBytes { started: 2000, ..b };
        assert_eq!(goal.describe(&t, b2, 900, ten), " 99% ETA 0 seconds");
        // The first ends and a second image is planned: half of the whole,
        // plus what the second has done.
        goal.images.store(2, Ordering::Relaxed);
        let b = BlobBytes {
            started: 2000,
            finished: 1000,
            settled: 100,
        };
        let t = CopyTotals {
            images_copied: 1,
            ..Default::default()
        };
        assert_eq!(goal.describe(&t, b, 1000, ten), " 55% ETA 8 seconds");
        assert_eq!(goal.describe(&t, b, 1500, ten), " 80% ETA 3 seconds");
    }

    #[test]
    fn copy_counts_the_bytes_of_its_image() {
        let goal = Goal::default();
        let ten = Duration::from_secs(10);
        let t = CopyTotals::default();
        goal.blobs.store(3, Ordering::Relaxed);
        let mut b = BlobBytes {
            started: 4000,
            finished: 0,
            settled: 1000,
        };
        assert_eq!(goal.describe(&t, b, 0, ten), " 25% ETA 30 seconds");
        assert_eq!(goal.describe(&t, b, 2000, ten), " 75% ETA 3 seconds");
        b.finished = 4000;
        assert_eq!(goal.describe(&t, b, 2900, ten), " 100% ETA 0 seconds");
    }
}
