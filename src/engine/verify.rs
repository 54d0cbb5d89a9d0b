//! Inventory stage (read-only) of `[rule.verify]`: for each image a target
//! will receive, its cosign signatures read from the source (the
//! `sha256-<hex>.sig` tag, its payload blobs) and judged against the digest
//! regkeeper computed over the manifest bytes it will write, with the
//! sigstore bundles found as its referrers (`verify_bundles.rs`;
//! `verify::judge_all`).
//! The verdicts are data for the pure plan: a refused tag gets
//! `TargetAction::Refused` and nothing of it is written.

use std::collections::{HashMap, HashSet};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::inventory::RepoInventory;
use super::report::{Failure, RunError};
use super::verify_bundles::{Bundle, Known, LayoutReferrers};
use crate::oci::{Digest, Manifest, RawManifest, Verified};
use crate::plan::referrer_subject;
use crate::transport::{ErrorClass, Side, Store};
use crate::verify::{
    Refusal, Require, SignatureLayer, Verdict, VerifyPolicy, judge_all, signature_layers,
    signature_tag,
};

/// An image's verdict and the signatures that verified it, or why it could
/// not be judged.
type Judged = Result<(Verdict, Signatures), Failure>;

/// What verified an image, as read at the source: the digests whose
/// signatures verified, their `.sig` manifests and their bundle referrers.
/// A copy writes exactly these bytes (the verified ones, read once).
#[derive(Debug, Default)]
pub(super) struct Signatures {
    pub digests: Vec<Digest>,
    /// The `.sig` manifest of each digest that has one.
    pub sig_manifests: Vec<(Digest, RawManifest)>,
    /// The bundle referrers of each digest.
    pub bundles: Vec<(Digest, Bundle)>,
    /// Each digest's referrers as the source's API listed them (all types).
    pub listings: Vec<(Digest, Vec<Value>)>,
    /// The payload and bundle blobs read (checked), for the copy to send.
    pub blobs: super::copy::HeldBlobs,
}

/// Images judged at once.
const IN_PARALLEL: usize = 8;

/// The verdicts of one repository's images.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// Tags refused, with the reason and what was found.
    pub refused: HashMap<String, (Refusal, String)>,
    /// Digests whose signatures verified (roots, and with `require = "all"`
    /// the images of an index): their `.sig` tags are copied with them.
    pub signed: HashSet<Digest>,
    /// The `.sig` manifests read and verified, by tag: the inventory takes
    /// these rather than reading them again.
    pub sig_manifests: HashMap<String, RawManifest>,
    /// What verification read of referrers, for their discovery: the API's
    /// lists by subject, and the bundle referrers' manifests by digest.
    pub referrer_lists: HashMap<Digest, Vec<Value>>,
    pub bundle_manifests: HashMap<Digest, RawManifest>,
    /// The signature payloads and bundle layers read (bounded).
    pub blobs: super::copy::HeldBlobs,
}

/// Judges every tag of `repo` that some target will receive (the tags whose
/// manifest the inventory read), and an `oci:` source's untagged entry
/// points. A tag or entry whose signatures could not be read is neither
/// copied nor refused: it fails this run (in `repo.errors`). A refused entry
/// stays in `repo.entries`, marked, for the plan to list.
pub(crate) async fn verify_repo(
    policy: &VerifyPolicy,
    repo: &mut RepoInventory,
    listed: &HashSet<String>,
    platforms: &[crate::oci::Platform],
) -> Verdicts {
    let todo: Vec<(String, RawManifest)> = repo
        .tags
        .iter()
        .filter(|t| !t.referrer && referrer_subject(&t.tag).is_none())
        .filter_map(|t| Some((t.tag.clone(), repo.manifests.get(&t.tag)?.clone())))
        .collect();
    let by_subject = LayoutReferrers::new();
    let known = Known {
        listed: Some(listed),
        by_subject: &by_subject,
    };
    let results = judge_each(policy, &repo.source, known, todo, platforms).await;
    let mut out = Verdicts::default();
    let mut failed = HashSet::new();
    for (tag, result) in results {
        match result {
            Ok((Verdict::Verified, sigs)) => out.take(sigs),
            Ok((Verdict::Refused { reason, detail }, _)) => {
                tracing::warn!(tag, reason = reason.as_str(), detail, "refused: not copied");
                out.refused.insert(tag, (reason, detail));
            }
            Err(f) => {
                let what = format!("verifying the signatures of tag {tag}");
                repo.errors
                    .push(RunError::new(repo.source.location(), &what, f));
                failed.insert(tag);
            }
        }
    }
    verify_entries(policy, repo, known, platforms, &mut out).await;
    // A selected `sha256-<hex>.sig/.att/.sbom` tag is no image of its own:
    // it goes with its subject, so only where that is a selected image that
    // was not refused (or an image of a verified index or entry).
    let kept: HashSet<String> = (repo.tags.iter())
        .filter(|t| referrer_subject(&t.tag).is_none() && !out.refused.contains_key(&t.tag))
        .filter(|t| !failed.contains(&t.tag))
        .map(|t| t.digest.to_string())
        .chain(out.signed.iter().map(|d| d.to_string()))
        .collect();
    let dropped = |tag: &str| {
        failed.contains(tag) || referrer_subject(tag).is_some_and(|s| !kept.contains(&s))
    };
    repo.tags.retain(|t| !dropped(&t.tag));
    repo.manifests.retain(|tag, _| !dropped(tag));
    out
}

/// Judges `repo.entries` (an `oci:` source's untagged entry points), found
/// by the digest the source lists them under: a refused one is marked, one
/// whose signatures cannot be read fails this run and is dropped.
async fn verify_entries(
    policy: &VerifyPolicy,
    repo: &mut RepoInventory,
    known: Known<'_>,
    platforms: &[crate::oci::Platform],
    out: &mut Verdicts,
) {
    let todo: Vec<(String, RawManifest)> = (repo.entries.iter())
        .map(|e| (entry_reference(e), e.manifest.clone()))
        .collect();
    if todo.is_empty() {
        return;
    }
    let mut results: HashMap<String, Judged> =
        judge_each(policy, &repo.source, known, todo, platforms)
            .await
            .into_iter()
            .collect();
    let mut kept = Vec::with_capacity(repo.entries.len());
    for mut entry in std::mem::take(&mut repo.entries) {
        let digest = entry_reference(&entry);
        match results.remove(&digest) {
            Some(Ok((Verdict::Verified, sigs))) => out.take(sigs),
            Some(Ok((Verdict::Refused { reason, detail }, _))) => {
                tracing::warn!(
                    entry = digest,
                    reason = reason.as_str(),
                    detail,
                    "refused: not copied"
                );
                entry.refused = Some((reason, detail));
            }
            Some(Err(f)) => {
                let what = format!("verifying the signatures of untagged entry {digest}");
                repo.errors
                    .push(RunError::new(repo.source.location(), &what, f));
                continue;
            }
            None => continue, // a digest listed twice: judged once, kept once
        }
        kept.push(entry);
    }
    repo.entries = kept;
}

/// The digest an untagged entry is listed under at the source (its
/// manifest's own unless a platform filter made a subset of it).
fn entry_reference(e: &super::entries::SourceEntry) -> String {
    (e.descriptor.get("digest").and_then(Value::as_str))
        .map_or_else(|| e.manifest.digest.to_string(), str::to_string)
}

/// Judges each (reference, root), [`IN_PARALLEL`] at a time.
async fn judge_each(
    policy: &VerifyPolicy,
    source: &Store,
    known: Known<'_>,
    todo: Vec<(String, RawManifest)>,
    platforms: &[crate::oci::Platform],
) -> Vec<(String, Judged)> {
    futures_util::stream::iter(todo)
        .map(|(reference, root)| async move {
            let image = Image {
                root: &root,
                reference: &reference,
                platforms,
            };
            let r = judge_image(policy, source, known, image).await;
            (reference, r)
        })
        .buffer_unordered(IN_PARALLEL)
        .collect()
        .await
}

impl Verdicts {
    /// Keeps what verified an image: its digests, and the signatures and
    /// referrer lists read (taken by the inventory instead of reading again).
    fn take(&mut self, sigs: Signatures) {
        self.signed.extend(sigs.digests);
        (self.sig_manifests)
            .extend((sigs.sig_manifests.into_iter()).map(|(d, m)| (signature_tag(&d), m)));
        self.referrer_lists.extend(sigs.listings);
        self.blobs.extend(sigs.blobs);
        (self.bundle_manifests).extend(
            (sigs.bundles.into_iter()).map(|(_, b)| (b.manifest.digest.clone(), b.manifest)),
        );
    }
}

/// The verdict over one image: its root, and with `require = "all"` every
/// manifest an index lists; the digests that verified.
pub(super) async fn verify_image(
    policy: &VerifyPolicy,
    source: &Store,
    listed: Option<&HashSet<String>>,
    image: Image<'_>,
) -> Judged {
    let by_subject = LayoutReferrers::new();
    let known = Known {
        listed,
        by_subject: &by_subject,
    };
    judge_image(policy, source, known, image).await
}

/// [`verify_image`], with what is known of the source shared between images.
async fn judge_image(
    policy: &VerifyPolicy,
    source: &Store,
    known: Known<'_>,
    image: Image<'_>,
) -> Judged {
    let root = image.root;
    let children = index_children(root);
    let mut signed_root = root.digest.clone();
    if let (Some(children), false) = (&children, image.platforms.is_empty()) {
        // A platform subset is regkeeper's own index: what was signed is
        // the source's, which must list every image of the subset.
        let read = |e: crate::transport::TransportError| Failure::transport(&e, Side::Source);
        let original = source.get_manifest(image.reference).await.map_err(read)?;
        let original = original.ok_or_else(|| {
            Failure::new(
                ErrorClass::NotFound,
                format!("{} vanished", image.reference),
            )
        })?;
        if original.digest != root.digest {
            let listed = index_children(&original).unwrap_or_default();
            if let Some(c) = children.iter().find(|c| !listed.contains(c)) {
                let detail = format!("image {c} is not in the source's index {}", original.digest);
                let reason = Refusal::DigestMismatch;
                return Ok((Verdict::Refused { reason, detail }, Signatures::default()));
            }
            signed_root = original.digest;
        }
    }
    let mut digests = vec![signed_root.clone()];
    if policy.require == Require::All {
        digests.extend(children.into_iter().flatten());
    }
    let mut found = Signatures::default();
    for (i, digest) in digests.iter().enumerate() {
        let (sig, layers) = signatures(source, known.listed, digest).await?;
        let (listing, bundles) = super::verify_bundles::bundles(source, known, digest).await?;
        let bytes: Vec<Vec<u8>> = bundles.iter().map(|b| b.bytes.clone()).collect();
        if let Verdict::Refused { reason, detail } = judge_all(policy, digest, &layers, &bytes) {
            let detail = if i == 0 {
                detail
            } else {
                format!("image {digest} of the index: {detail}")
            };
            return Ok((Verdict::Refused { reason, detail }, Signatures::default()));
        }
        let read = |l: &SignatureLayer| l.payload_size <= crate::verify::MAX_PAYLOAD;
        for l in layers.into_iter().filter(read) {
            found.blobs.hold(l.payload_digest, l.payload.into());
        }
        for b in &bundles {
            found.blobs.hold(b.blob.clone(), b.bytes.clone().into());
        }
        found.sig_manifests.extend(sig.map(|m| (digest.clone(), m)));
        (found.bundles).extend(bundles.into_iter().map(|b| (digest.clone(), b)));
        found.listings.extend(listing.map(|l| (digest.clone(), l)));
    }
    // The source index's signature does not go with a subset of it.
    digests.retain(|d| *d == root.digest || *d != signed_root);
    found.sig_manifests.retain(|(d, _)| digests.contains(d));
    found.bundles.retain(|(d, _)| digests.contains(d));
    found.listings.retain(|(d, _)| digests.contains(d));
    found.digests = digests;
    Ok((Verdict::Verified, found))
}

/// The root `copy` or the inventory read, how it was named at the source,
/// and the rule's platform filter.
#[derive(Clone, Copy)]
pub(super) struct Image<'a> {
    pub root: &'a RawManifest,
    pub reference: &'a str,
    pub platforms: &'a [crate::oci::Platform],
}

/// The digests an index lists; `None` for an image manifest.
fn index_children(m: &RawManifest) -> Option<Vec<Digest>> {
    match Manifest::parse(&m.media_type, &m.bytes) {
        Ok((_, Manifest::Index { manifests, .. })) => {
            Some(manifests.into_iter().map(|d| d.digest).collect())
        }
        _ => None,
    }
}

/// The `.sig` manifest of `digest` at the source and its signature layers,
/// payloads read (each checked against its digest and size). None without
/// the `.sig` tag (no request when the tag list, `listed`, says so).
async fn signatures(
    source: &Store,
    listed: Option<&HashSet<String>>,
    digest: &Digest,
) -> Result<(Option<RawManifest>, Vec<SignatureLayer>), Failure> {
    let tag = signature_tag(digest);
    if listed.is_some_and(|l| !l.contains(&tag)) {
        return Ok((None, Vec::new()));
    }
    let read = |e: crate::transport::TransportError| Failure::transport(&e, Side::Source);
    let Some(manifest) = source.get_manifest(&tag).await.map_err(read)? else {
        return Ok((None, Vec::new()));
    };
    let mut layers = match signature_layers(&manifest.bytes) {
        Ok(l) => l,
        Err(e) => {
            return Err(Failure::new(
                ErrorClass::InvalidInput,
                format!("{tag}: {e}"),
            ));
        }
    };
    for layer in &mut layers {
        if layer.payload_size > crate::verify::MAX_PAYLOAD {
            // Not a simple-signing payload; judged as a signature over nothing.
            continue;
        }
        let stream = source
            .get_blob(&layer.payload_digest, layer.payload_size)
            .await
            .map_err(read)?;
        let verified = Verified::new(
            stream,
            layer.payload_digest.clone(),
            Some(layer.payload_size),
        );
        let chunks: Vec<bytes::Bytes> = verified.try_collect().await.map_err(|e| {
            let what = format!("reading the signature payload {}", layer.payload_digest);
            super::verify_bundles::stream_failure(e, &what)
        })?;
        layer.payload = chunks.concat();
    }
    Ok((Some(manifest), layers))
}
