//! The progress line on a terminal (bytes read with rate, images pushed,
//! blobs copied and mounted); nothing otherwise (logs say enough).

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use regkeeper::engine::Engine;

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
    let stats = engine.stats().clone();
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            let t = stats.totals();
            b.set_message(format!(
                "{} image(s), {} blob(s) copied, {} mounted, {} present",
                t.images_copied, t.blobs_copied, t.blobs_mounted, t.blobs_skipped
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Some(bar)
}
