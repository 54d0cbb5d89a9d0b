//! The signing times of a keyless `.sig` signature: the `integratedTime` of
//! its Rekor bundle (`rekor.rs`) and the genTime of its RFC 3161 timestamp
//! (`tsa.rs`, the `dev.sigstore.cosign/rfc3161timestamp` annotation, over
//! the raw signature bytes as cosign timestamps them). Each kind the layer
//! carries must verify (evidence that fails to verify refuses the
//! signature, it is not skipped), and at least one must be there; the
//! caller checks the certificate against every time returned.

use serde::Deserialize;

use super::cosign::SignatureLayer;
use super::trusted_root::TrustedRoot;

#[derive(Deserialize)]
struct WireTimestamp {
    #[serde(rename = "SignedRFC3161Timestamp")]
    signed: String,
}

/// The verified signing times (Unix seconds), at least one.
pub(crate) fn signing_times(
    root: &TrustedRoot,
    layer: &SignatureLayer,
    sig: &[u8],
    leaf_der: &[u8],
) -> Result<Vec<i64>, String> {
    let mut times = Vec::new();
    if layer.bundle.is_some() {
        times.push(super::rekor::signing_time(root, layer, sig, leaf_der)?);
    }
    if let Some(text) = &layer.timestamp {
        let wire: WireTimestamp = serde_json::from_str(text)
            .map_err(|e| format!("the RFC 3161 timestamp annotation cannot be read: {e}"))?;
        let t = super::tsa::verified_time_b64(root, &wire.signed, sig)
            .map_err(|e| format!("the RFC 3161 timestamp: {e}"))?;
        times.push(t);
    }
    if times.is_empty() {
        return Err("the signature has neither a Rekor bundle (dev.sigstore.cosign/bundle) nor an RFC 3161 timestamp (dev.sigstore.cosign/rfc3161timestamp)".into());
    }
    Ok(times)
}
