//! The sigstore bundles of one image digest at the source, for
//! `[rule.verify]` (`verify.rs`): its referrers of a bundle artifact type,
//! through the OCI 1.1 referrers API (none where the source has no API),
//! each referrer manifest read by digest and its bundle layer read
//! digest- and size-checked; at most `MAX_BUNDLES` of `MAX_PAYLOAD` bytes.

use futures_util::TryStreamExt;
use serde_json::Value;

use super::report::Failure;
use crate::oci::{Digest, Verified};
use crate::transport::{ErrorClass, Side, Store, TransportError};
use crate::verify::{MAX_BUNDLES, MAX_PAYLOAD, is_bundle_type};

fn read(e: TransportError) -> Failure {
    Failure::transport(&e, Side::Source)
}

/// The bytes of each bundle referring to `digest`; a referrer whose layer
/// is too large or not a bundle is skipped (it is no signature regkeeper
/// can judge; the image then needs another).
pub(crate) async fn bundles(source: &Store, digest: &Digest) -> Result<Vec<Vec<u8>>, Failure> {
    let Some(entries) = source.referrers(digest, None).await.map_err(read)? else {
        return Ok(Vec::new());
    };
    let listed: Vec<Digest> = (entries.iter())
        .filter(|e| (e.get("artifactType").and_then(Value::as_str)).is_some_and(is_bundle_type))
        .filter_map(|e| serde_json::from_value(e.get("digest")?.clone()).ok())
        .take(MAX_BUNDLES)
        .collect();
    let mut out = Vec::new();
    for referrer in listed {
        if let Some(bytes) = bundle_of(source, &referrer).await? {
            out.push(bytes);
        }
    }
    Ok(out)
}

/// The bundle layer of one referrer manifest, read and checked.
async fn bundle_of(source: &Store, referrer: &Digest) -> Result<Option<Vec<u8>>, Failure> {
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
            let why = format!("reading the sigstore bundle {blob} of {referrer}: {e}");
            Failure::new(ErrorClass::Verification, why)
        })?;
    Ok(Some(chunks.concat()))
}

fn layer_is_bundle(layer: &Value) -> bool {
    (layer.get("mediaType").and_then(Value::as_str)).is_some_and(is_bundle_type)
}
