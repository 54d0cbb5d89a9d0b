//! Blob bytes `[rule.verify]` already read from the source and checked
//! against their digest and size (cosign signature payloads, sigstore
//! bundle layers): a copy of the companion that lists them sends these
//! bytes instead of reading the blob from the source again, so the
//! signature written is exactly the one verified.
//!
//! Bounded: each blob is at most `verify::MAX_PAYLOAD` (256 KiB), an image
//! digest has at most 32 of each kind, and one holder keeps at most
//! [`HELD_LIMIT`] bytes; beyond that a blob is simply not held and its copy
//! reads it from the source as any other blob.

use std::collections::HashMap;

use bytes::Bytes;

use crate::oci::{Descriptor, Digest};

/// Bytes one holder (one repository's verdicts, one `copy`) keeps at most.
pub(crate) const HELD_LIMIT: u64 = 64 * 1024 * 1024;

/// Verified blob bytes by digest, within [`HELD_LIMIT`].
#[derive(Debug, Default, Clone)]
pub struct HeldBlobs {
    blobs: HashMap<Digest, Bytes>,
    bytes: u64,
}

impl HeldBlobs {
    /// Keeps `bytes` as the blob `digest` (the caller read them through a
    /// digest- and size-checked stream), unless that would pass the limit.
    /// Whether they are held.
    pub(crate) fn hold(&mut self, digest: Digest, bytes: Bytes) -> bool {
        if self.blobs.contains_key(&digest) {
            return true;
        }
        let n = bytes.len() as u64;
        if self.bytes.saturating_add(n) > HELD_LIMIT {
            return false;
        }
        self.bytes += n;
        self.blobs.insert(digest, bytes);
        true
    }

    /// Takes `other`'s blobs in, as far as the limit allows.
    pub(crate) fn extend(&mut self, other: HeldBlobs) {
        for (d, b) in other.blobs {
            self.hold(d, b);
        }
    }

    /// Keeps only the blobs `keep` accepts (by size), dropping the others.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.blobs.retain(|_, b| keep(b.len() as u64));
        self.bytes = self.blobs.values().map(|b| b.len() as u64).sum();
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<&Bytes> {
        self.blobs.get(digest)
    }

    /// The held blobs among `blobs` (what one tree's copy can send itself).
    pub(crate) fn among(&self, blobs: &[Descriptor]) -> HeldBlobs {
        let mut out = HeldBlobs::default();
        for b in blobs {
            if let Some(bytes) = self.blobs.get(&b.digest) {
                out.hold(b.digest.clone(), bytes.clone());
            }
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.blobs.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> Digest {
        Digest::of(bytes)
    }

    #[test]
    fn holds_up_to_the_limit_and_selects_by_tree() {
        let mut h = HeldBlobs::default();
        let small = Bytes::from_static(b"payload");
        assert!(h.hold(digest(b"payload"), small.clone()));
        assert!(h.hold(digest(b"payload"), small.clone()), "held once");
        assert_eq!((h.len(), h.bytes()), (1, 7));
        let big = Bytes::from(vec![0u8; HELD_LIMIT as usize]);
        assert!(!h.hold(digest(&big), big), "past the limit: not held");
        assert_eq!(h.len(), 1);
        let d = Descriptor {
            media_type: "application/vnd.dev.cosign.simplesigning.v1+json".into(),
            digest: digest(b"payload"),
            size: 7,
            platform: None,
            artifact_type: None,
        };
        let other = Descriptor {
            digest: digest(b"other"),
            ..d.clone()
        };
        let picked = h.among(&[d.clone(), other.clone()]);
        assert_eq!(picked.get(&d.digest), Some(&small));
        assert!(picked.get(&other.digest).is_none());
        h.retain(|_| false);
        assert_eq!((h.len(), h.bytes()), (0, 0));
    }
}
