//! Byte progress of image copies, for the progress line: how many blob
//! bytes the trees being copied hold, and how many of those need no read
//! (present or mounted at every target). With the bytes read from sources
//! (`Engine::on_bytes`) that tells how far the copies in flight are, so the
//! line moves within one big image.

use std::sync::atomic::{AtomicU64, Ordering};

use super::ImageTree;

/// Counters the copier keeps when a progress display asks for them.
#[derive(Debug, Default)]
pub struct BlobProgress {
    /// Blob bytes of every tree whose copy started (each once, whatever
    /// the number of targets).
    started: AtomicU64,
    /// Blob bytes of every tree whose copy ended (done or failed).
    finished: AtomicU64,
    /// Blob bytes that needed no read: present or mounted at every target.
    settled: AtomicU64,
}

/// A snapshot of [`BlobProgress`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobBytes {
    pub started: u64,
    pub finished: u64,
    pub settled: u64,
}

impl BlobProgress {
    pub(crate) fn start(&self, tree: &ImageTree) {
        let n = tree.total_blob_bytes();
        self.started.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn finish(&self, tree: &ImageTree) {
        let n = tree.total_blob_bytes();
        self.finished.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn settle(&self, bytes: u64) {
        self.settled.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BlobBytes {
        BlobBytes {
            started: self.started.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            settled: self.settled.load(Ordering::Relaxed),
        }
    }
}
