//! How many bytes of source manifests one rule's inventory may hold at once.
//!
//! The inventory keeps the root manifest of every tag some target lacks
//! until the copies start, and a `/*` rule inventories all its repositories
//! first. A source decides how many tags it lists and how large each
//! manifest is (up to the 4 MiB per manifest the transport accepts), so
//! without a budget a hostile source would choose this process's memory.
//! Real manifests are a few KiB: the budget is far above any real rule's
//! needs (10,000 new images of 10 KiB each use 100 MiB).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of root manifests one rule run's inventory may hold.
pub(crate) const RULE_MANIFEST_BUDGET: u64 = 256 * 1024 * 1024;

pub(crate) struct ManifestBudget {
    used: AtomicU64,
    limit: u64,
}

impl ManifestBudget {
    pub(crate) fn new(limit: u64) -> Self {
        ManifestBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Counts `bytes` more as held, or says why not (nothing is counted then).
    pub(crate) fn take(&self, bytes: usize) -> Result<(), String> {
        let n = bytes as u64;
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&t| t <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| {
                format!(
                    "the source's manifests in this rule's inventory add up to more than {} (real manifests are a few KiB each); this tag is left for the next run",
                    bytesize::ByteSize(self.limit).display().iec()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_no_further() {
        let b = ManifestBudget::new(10);
        assert!(b.take(4).is_ok());
        assert!(b.take(6).is_ok());
        let e = b.take(1).unwrap_err();
        assert!(e.contains("10 B"), "{e}");
        // a refused take counts nothing
        let b = ManifestBudget::new(10);
        assert!(b.take(11).is_err());
        assert!(b.take(10).is_ok());
        assert!(b.take(usize::MAX).is_err());
    }
}
