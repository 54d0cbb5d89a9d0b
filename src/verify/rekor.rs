//! The signing time of a keyless signature: the `integratedTime` of its
//! Rekor bundle, trusted only when the bundle's SignedEntryTimestamp (an
//! ECDSA signature by the log over the canonical JSON of `body`,
//! `integratedTime`, `logID`, `logIndex`) verifies under a transparency-log
//! key of the trusted root, and the logged `hashedrekord` entry is this
//! signature over this payload by this certificate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::cosign::SignatureLayer;
use super::trusted_root::TrustedRoot;

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: Entry,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

/// The canonical JSON (RFC 8785) of a log entry, what its
/// SignedEntryTimestamp signs: keys sorted, no spaces; the values are
/// integers and base64/hex strings, which serde_json writes exactly as the
/// canonical form does.
fn canonical(body_b64: &str, integrated_time: i64, log_id_hex: &str, log_index: i64) -> Vec<u8> {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    format!(
        "{{\"body\":{},\"integratedTime\":{integrated_time},\"logID\":{},\"logIndex\":{log_index}}}",
        s(body_b64),
        s(log_id_hex),
    )
    .into_bytes()
}

/// The fields of a log entry a SignedEntryTimestamp covers.
pub(crate) struct Promise<'a> {
    /// The entry body, base64 (as Rekor's API returns it).
    pub body_b64: &'a str,
    pub integrated_time: i64,
    /// The log's id, hex.
    pub log_id_hex: &'a str,
    pub log_index: i64,
}

/// Whether `set` is a transparency-log key's signature (valid at the
/// entry's time per the trusted root) over the entry.
pub(crate) fn set_verifies(root: &TrustedRoot, p: &Promise<'_>, set: &[u8]) -> bool {
    let message = canonical(p.body_b64, p.integrated_time, p.log_id_hex, p.log_index);
    let t = p.integrated_time;
    (root.tlogs.iter()).any(|l| l.valid.contains(t) && l.key.verifies(&message, set))
}

/// The DER of the first certificate of a PEM text (how log entries name
/// the signer).
pub(crate) fn pem_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Some(block.contents)
}

/// The time the log vouches this signature existed (Unix seconds).
pub(crate) fn signing_time(
    root: &TrustedRoot,
    layer: &SignatureLayer,
    sig: &[u8],
    leaf_der: &[u8],
) -> Result<i64, String> {
    let text = layer
        .bundle
        .as_deref()
        .ok_or("the signature has no Rekor bundle (dev.sigstore.cosign/bundle)")?;
    let bundle: Bundle =
        serde_json::from_str(text).map_err(|e| format!("the Rekor bundle cannot be read: {e}"))?;
    let set = B64
        .decode(bundle.set.trim())
        .map_err(|_| "the bundle's SignedEntryTimestamp is not base64")?;
    let entry = &bundle.payload;
    let t = entry.integrated_time;
    let promise = Promise {
        body_b64: &entry.body,
        integrated_time: t,
        log_id_hex: &entry.log_id,
        log_index: entry.log_index,
    };
    if !set_verifies(root, &promise, &set) {
        return Err("the bundle's SignedEntryTimestamp verifies under no transparency-log key of the trusted root".into());
    }
    logged_entry(&entry.body, layer, sig, leaf_der)?;
    Ok(t)
}

/// The logged `hashedrekord` body names this payload's hash, this signature
/// and this certificate.
fn logged_entry(
    body_b64: &str,
    layer: &SignatureLayer,
    sig: &[u8],
    leaf_der: &[u8],
) -> Result<(), String> {
    let body = B64
        .decode(body_b64.trim())
        .map_err(|_| "the bundle's body is not base64")?;
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the bundle's body: {e}"))?;
    let field = |p: &str| body.pointer(p).and_then(|v| v.as_str());
    if field("/kind") != Some("hashedrekord") {
        return Err("the logged entry is not a hashedrekord".into());
    }
    let hash = hex::encode(Sha256::digest(&layer.payload));
    if field("/spec/data/hash/value") != Some(hash.as_str()) {
        return Err("the logged entry is for another payload".into());
    }
    let logged_sig = field("/spec/signature/content").and_then(|s| B64.decode(s).ok());
    if logged_sig.as_deref() != Some(sig) {
        return Err("the logged entry holds another signature".into());
    }
    let pem = field("/spec/signature/publicKey/content").and_then(|s| B64.decode(s).ok());
    let logged_cert = pem.as_deref().and_then(pem_certificate);
    if logged_cert.as_deref() != Some(leaf_der) {
        return Err("the logged entry names another certificate".into());
    }
    Ok(())
}
