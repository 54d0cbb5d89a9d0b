//! Inclusion in a transparency log without a SignedEntryTimestamp (Rekor
//! v2 entries): an RFC 6962 audit path from the entry's leaf hash
//! (SHA-256 of 0x00 || body) to a root hash, and a checkpoint (a signed
//! note: origin, tree size, base64 root hash, then after a blank line
//! signature lines `— <name> <base64 of 4-byte key hint || signature>`)
//! naming that size and root, signed by a transparency-log key of the
//! trusted root. Proves the entry was logged, not when.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

use super::trusted_root::TrustedRoot;

type Hash = [u8; 32];

fn node(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 6962 leaf hash of an entry body.
pub(crate) fn leaf_hash(body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// The root the audit path `proof` leads to from leaf `index` of a tree of
/// `size` leaves (RFC 9162 section 2.1.3.2), or None when the path has the
/// wrong length for that position.
pub(crate) fn root_from_proof(index: u64, size: u64, leaf: Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    // Levels below the split of index and the last leaf; the rest border
    // the right edge of the tree.
    let inner = (u64::BITS - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    if proof.len() != inner + border {
        return None;
    }
    let mut r = leaf;
    for (i, h) in proof[..inner].iter().enumerate() {
        r = if (index >> i) & 1 == 0 {
            node(&r, h)
        } else {
            node(h, &r)
        };
    }
    for h in &proof[inner..] {
        r = node(h, &r);
    }
    Some(r)
}

/// The tree size and root hash a checkpoint signed by a transparency-log
/// key of `root` states; Err says why it is no evidence.
pub(crate) fn verified_checkpoint(root: &TrustedRoot, note: &str) -> Result<(u64, Hash), String> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or("the checkpoint is not a signed note (no blank line before its signatures)")?;
    let text = format!("{text}\n");
    let signed = sigs.lines().filter_map(|l| {
        let b64 = l.strip_prefix("\u{2014} ")?.rsplit(' ').next()?;
        let raw = B64.decode(b64).ok()?;
        (raw.len() > 4).then(|| raw[4..].to_vec())
    });
    let by_log = |sig: &[u8]| (root.tlogs.iter()).any(|l| l.key.verifies(text.as_bytes(), sig));
    if !signed.collect::<Vec<_>>().iter().any(|s| by_log(s)) {
        return Err(
            "its checkpoint is signed by no transparency-log key of the trusted root".into(),
        );
    }
    let mut lines = text.lines().skip(1);
    let size = lines.next().and_then(|s| s.parse().ok());
    let hash = lines.next().and_then(|s| B64.decode(s).ok());
    match (size, hash.and_then(|h| Hash::try_from(h).ok())) {
        (Some(size), Some(hash)) => Ok((size, hash)),
        _ => Err("its checkpoint does not state a tree size and root hash".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_root(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = leaves.len().next_power_of_two() / 2;
        node(&tree_root(&leaves[..k]), &tree_root(&leaves[k..]))
    }

    /// RFC 6962's PATH(m, D[n]), computed the recursive way.
    fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(tree_root(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(tree_root(&leaves[..k]));
            p
        }
    }

    #[test]
    fn audit_paths_lead_to_the_root_for_every_leaf_and_size() {
        for n in 1..=13usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
            let want = tree_root(&leaves);
            for m in 0..n {
                let p = path(m, &leaves);
                let got = root_from_proof(m as u64, n as u64, leaves[m], &p);
                assert_eq!(got, Some(want), "leaf {m} of {n}");
                let other = root_from_proof(m as u64, n as u64, leaf_hash(b"x"), &p);
                assert_ne!(other, Some(want));
                if !p.is_empty() {
                    let short = root_from_proof(m as u64, n as u64, leaves[m], &p[1..]);
                    assert_eq!(short, None);
                }
            }
        }
        assert_eq!(root_from_proof(3, 3, leaf_hash(b""), &[]), None);
    }
}
