//! `copy --verify-key`: the root as `copy` reads it, verified as
//! `[rule.verify]` does (`verify.rs`), then that same root copied, then the
//! signatures that verified it, as they were read: the `.sig` manifests
//! (tagged) and the sigstore bundle referrers (by digest; at a target
//! without the referrers API, also listed in its merged `sha256-<hex>`
//! fallback index, as `sync` writes it).

use serde_json::Value;

use super::copy::{self, CopyError, HeldBlobs};
use super::referrer_plan::{fallback_tag, merge_index};
use super::verify::{Image, Signatures, verify_image};
use crate::oci::{Digest, RawManifest};
use crate::reference::Location;
use crate::transport::Store;
use crate::verify::{Refusal, Verdict, VerifyPolicy, signature_tag};

/// Why `copy --verify-key` did not copy.
#[derive(Debug, thiserror::Error)]
pub enum VerifiedCopyError {
    #[error("refused ({reason}): {detail}; nothing was copied")]
    Refused { reason: Refusal, detail: String },
    #[error("cannot verify the signatures: {0}")]
    Unverifiable(String),
    #[error(transparent)]
    Copy(#[from] CopyError),
}

impl super::Engine {
    /// `copy --verify-key`: nothing is written unless the root verified;
    /// then the root, then what verified it (see the module docs).
    pub async fn copy_verified(
        &self,
        source: &Store,
        reference: &str,
        target: &Store,
        tag: Option<&str>,
        platforms: &[crate::oci::Platform],
        policy: &VerifyPolicy,
    ) -> Result<Digest, VerifiedCopyError> {
        let root = Self::copy_root(source, reference, platforms).await?;
        let image = Image {
            root: &root,
            reference,
            platforms,
        };
        let signed = match verify_image(policy, source, None, image).await {
            Ok((Verdict::Verified, signed)) => signed,
            Ok((Verdict::Refused { reason, detail }, _)) => {
                return Err(VerifiedCopyError::Refused { reason, detail });
            }
            Err(f) => return Err(VerifiedCopyError::Unverifiable(f.message)),
        };
        let digest = self.copy_tree_of(source, root, target, tag).await?;
        self.copy_signatures(source, target, signed).await?;
        Ok(digest)
    }

    /// The `.sig` manifests and bundle referrers `verify_image` read, their
    /// payload and bundle blobs sent as verification read them (no second
    /// source read).
    async fn copy_signatures(
        &self,
        source: &Store,
        target: &Store,
        signed: Signatures,
    ) -> Result<(), CopyError> {
        let held = &signed.blobs;
        for (d, sig) in signed.sig_manifests {
            let tag = signature_tag(&d);
            self.copy_held(source, sig, Push::Tag(&tag), target, held)
                .await?;
        }
        let mut subjects: Vec<(Digest, Vec<Value>)> = Vec::new();
        for (subject, bundle) in signed.bundles {
            let entry = Push::Referrer(&bundle.entry);
            self.copy_held(source, bundle.manifest, entry, target, held)
                .await?;
            match subjects.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, entries)) => entries.push(bundle.entry),
                None => subjects.push((subject, vec![bundle.entry])),
            }
        }
        for (subject, entries) in subjects {
            list_in_fallback(target, &subject, &entries).await?;
        }
        Ok(())
    }

    /// One signature's tree copied, the blobs `held` has sent from memory.
    async fn copy_held(
        &self,
        source: &Store,
        raw: RawManifest,
        push: Push<'_>,
        target: &Store,
        held: &HeldBlobs,
    ) -> Result<(), CopyError> {
        let mut tree = copy::expand(source, raw).await?;
        tree.held = held.among(&tree.blobs);
        let tag = match push {
            Push::Tag(tag) => Some(tag),
            Push::Referrer(entry) => {
                tree.entry = Some(entry.clone());
                None
            }
        };
        let mut results = (self.copier)
            .copy_tree(source, &tree, tag, std::slice::from_ref(target))
            .await;
        results.pop().expect("one target, one result").result
    }
}

/// How a signature is pushed: a `.sig` manifest under its tag, a referrer
/// by digest (listed by its descriptor in an `oci:` target's `index.json`).
#[derive(Clone, Copy)]
enum Push<'a> {
    Tag(&'a str),
    Referrer(&'a Value),
}

/// At a registry without the referrers API, `subject`'s fallback index with
/// `entries` merged in (its other entries kept, in their order); nothing
/// where the API lists them, or in an `oci:` layout (whose `index.json`
/// lists referrers by subject already).
async fn list_in_fallback(
    target: &Store,
    subject: &Digest,
    entries: &[Value],
) -> Result<(), CopyError> {
    if matches!(target.location(), Location::Layout { .. })
        || target.referrers(subject, None).await?.is_some()
    {
        return Ok(());
    }
    let tag = fallback_tag(subject);
    let existing = target.get_manifest(&tag).await?;
    let refs: Vec<&Value> = entries.iter().collect();
    let Some(merged) = merge_index(existing.as_ref(), &refs) else {
        tracing::warn!(%tag, target = %target.location(), "not an index: left alone");
        return Ok(());
    };
    if existing.is_some_and(|e| e.digest == merged.digest) {
        return Ok(());
    }
    target.put_manifest(&tag, &merged).await?;
    Ok(())
}
