//! The progress line on a terminal (bytes read with rate, images pushed,
//! blobs copied and mounted); nothing otherwise (logs say enough).

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

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
    let stats = engine.live_stats();
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            b.set_message(counts(&stats.totals()));
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
}
