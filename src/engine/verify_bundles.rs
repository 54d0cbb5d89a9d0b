//! The sigstore bundles of one image digest at the source, for
//! `[rule.verify]` (`verify.rs`): its referrers of a bundle artifact type,
//! through the OCI 1.1 referrers API, or where the source has none, the
//! entries of its `sha256-<hex>` fallback index (the referrers tag schema
//! cosign v3 and oras write; asked only when the tag list has it) and, for
//! an `oci:` source, its `index.json` entries whose manifest has that
//! subject (as oras, regclient and cosign's `save` keep them; the layout is
//! scanned once per pass, `LayoutReferrers`); each referrer manifest read by
//! digest and its bundle layer read digest- and size-checked; at most
//! `MAX_BUNDLES` of `MAX_PAYLOAD` bytes.

use std::collections::{HashMap, HashSet};

use futures_util::TryStreamExt;
use serde_json::Value;

use super::referrer_plan::fallback_tag;
use super::report::Failure;
use crate::oci::{Digest, RawManifest, Verified};
use crate::transport::{ErrorClass, Side, Store, TransportError};
use crate::verify::{MAX_BUNDLES, MAX_PAYLOAD, is_bundle_type};

fn read(e: TransportError) -> Failure {
    Failure::transport(&e, Side::Source)
}

/// A signature blob's read that failed part-way, as `what`, classed as
/// every stream failure is (`TransportError::class`): wrong bytes are
/// verification, a read the transport gave up on an unreadable source, so
/// an unreadable signature never looks like a bad one.
pub(super) fn stream_failure(e: std::io::Error, what: &str) -> Failure {
    read(TransportError::Io {
        path: what.into(),
        source: e,
    })
}

/// An `oci:` source's referrers by subject, read once (on first need) and
/// shared by every image one verification pass judges; empty for a registry.
pub(crate) type LayoutReferrers = tokio::sync::OnceCell<HashMap<Digest, Vec<Value>>>;

/// What is known of the source while judging its images: its tags (when
/// listed: a fallback index or `.sig` tag is asked only when listed) and
/// its layout referrers, once read.
#[derive(Clone, Copy)]
pub(crate) struct Known<'a> {
    pub listed: Option<&'a HashSet<String>>,
    pub by_subject: &'a LayoutReferrers,
}

/// One bundle referrer as read at the source: its descriptor (as listed),
/// its manifest (the bytes a copy writes) and its bundle layer's digest and
/// bytes.
#[derive(Debug, Clone)]
pub(crate) struct Bundle {
    pub entry: Value,
    pub manifest: RawManifest,
    pub blob: Digest,
    pub bytes: Vec<u8>,
}

/// The bundles referring to `digest`; a referrer whose layer is too large
/// or not a bundle is skipped (it is no signature regkeeper can judge; the
/// image then needs another).
/// Also the whole referrers list the API gave (`None` without the API),
/// which the inventory's referrer discovery takes rather than asking again.
pub(crate) async fn bundles(
    source: &Store,
    known: Known<'_>,
    digest: &Digest,
) -> Result<(Option<Vec<Value>>, Vec<Bundle>), Failure> {
    let api = source.referrers(digest, None).await.map_err(read)?;
    let entries = match &api {
        Some(entries) => entries.clone(),
        None => {
            let mut list = fallback_entries(source, known.listed, digest).await?;
            list.extend(layout_entries(source, known.by_subject, digest).await?);
            let mut seen = HashSet::new();
            list.retain(|e| seen.insert(e.get("digest").cloned()));
            list
        }
    };
    let listed: Vec<(Value, Digest)> = (entries.into_iter())
        .filter(|e| (e.get("artifactType").and_then(Value::as_str)).is_some_and(is_bundle_type))
        .filter_map(|e| {
            let d = serde_json::from_value(e.get("digest")?.clone()).ok()?;
            Some((e, d))
        })
        .take(MAX_BUNDLES)
        .collect();
    let mut out = Vec::new();
    for (entry, referrer) in listed {
        if let Some(b) = bundle_of(source, entry, &referrer, digest).await? {
            out.push(b);
        }
    }
    Ok((api, out))
}

/// The entries of `digest`'s fallback index at the source (none when the
/// tag is not listed or absent); bounded as a referrers list is.
async fn fallback_entries(
    source: &Store,
    listed: Option<&HashSet<String>>,
    digest: &Digest,
) -> Result<Vec<Value>, Failure> {
    let tag = fallback_tag(digest);
    if listed.is_some_and(|l| !l.contains(&tag)) {
        return Ok(Vec::new());
    }
    match source.get_manifest(&tag).await.map_err(read)? {
        Some(raw) => super::referrers::index_entries(&raw),
        None => Ok(Vec::new()),
    }
}

/// The referrers of `digest` an `oci:` source lists in `index.json` (none
/// for a registry); the layout is scanned on the first call only, that scan
/// bounded by the layout transport.
async fn layout_entries(
    source: &Store,
    by_subject: &LayoutReferrers,
    digest: &Digest,
) -> Result<Vec<Value>, Failure> {
    let all = (by_subject.get_or_try_init(|| async { source.referrers_by_subject().await }))
        .await
        .map_err(read)?;
    Ok(all.get(digest).cloned().unwrap_or_default())
}

/// The bundle layer of one referrer manifest of `subject`, read and
/// checked; none when the manifest's own `subject` is another image (a
/// source listing it under this one is lying: it signs nothing here).
async fn bundle_of(
    source: &Store,
    entry: Value,
    referrer: &Digest,
    subject: &Digest,
) -> Result<Option<Bundle>, Failure> {
    let Some(raw) = source.get_manifest(referrer.as_str()).await.map_err(read)? else {
        let why = format!("bundle referrer {referrer} is listed but absent");
        return Err(Failure::new(ErrorClass::NotFound, why));
    };
    if raw.digest != *referrer {
        let why = format!("bundle referrer {referrer} came back as {}", raw.digest);
        return Err(Failure::new(ErrorClass::Verification, why));
    }
    let manifest: Value = serde_json::from_slice(&raw.bytes).map_err(|e| {
        let why = format!("bundle referrer {referrer} cannot be parsed: {e}");
        Failure::new(ErrorClass::InvalidInput, why)
    })?;
    let names = manifest.pointer("/subject/digest").and_then(Value::as_str);
    if names != Some(subject.as_str()) {
        tracing::warn!(%referrer, %subject, named = names.unwrap_or("none"),
            "a bundle referrer listed for another subject than its own: not counted");
        return Ok(None);
    }
    let layer = (manifest.get("layers").and_then(Value::as_array))
        .and_then(|l| l.iter().find(|l| layer_is_bundle(l)));
    let Some(layer) = layer else {
        return Ok(None);
    };
    let size = layer.get("size").and_then(Value::as_u64);
    let blob: Option<Digest> =
        (layer.get("digest").cloned()).and_then(|d| serde_json::from_value(d).ok());
    let (Some(size), Some(blob)) = (size, blob) else {
        return Ok(None);
    };
    if size > MAX_PAYLOAD {
        return Ok(None);
    }
    let stream = source.get_blob(&blob, size).await.map_err(read)?;
    let chunks: Vec<bytes::Bytes> = Verified::new(stream, blob.clone(), Some(size))
        .try_collect()
        .await
        .map_err(|e| {
            stream_failure(
                e,
                &format!("reading the sigstore bundle {blob} of {referrer}"),
            )
        })?;
    Ok(Some(Bundle {
        entry,
        manifest: raw,
        blob,
        bytes: chunks.concat(),
    }))
}

fn layer_is_bundle(layer: &Value) -> bool {
    (layer.get("mediaType").and_then(Value::as_str)).is_some_and(is_bundle_type)
}
