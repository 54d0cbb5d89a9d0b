//! Transparency-log entries of a sigstore bundle
//! (`verificationMaterial.tlogEntries[]`, protobuf-JSON: int64 fields as
//! strings, bytes as base64). An entry counts only when its
//! `canonicalizedBody` is about the bundle's own signature (checked per
//! `kindVersion`: `dsse` 0.0.1 or `intoto` 0.0.2, the kinds a DSSE envelope
//! is logged as; any other kind is no evidence) and the log vouches for it:
//! an `inclusionPromise` (SignedEntryTimestamp, `rekor.rs`) verified under a
//! transparency-log key of the trusted root gives the signing time
//! (`integratedTime`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::rekor::{Promise, pem_certificate, set_verifies};
use super::trusted_root::TrustedRoot;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    #[serde(default)]
    log_index: Option<serde_json::Value>,
    #[serde(default)]
    log_id: Option<LogId>,
    #[serde(default)]
    kind_version: Option<KindVersion>,
    #[serde(default)]
    integrated_time: Option<serde_json::Value>,
    #[serde(default)]
    inclusion_promise: Option<InclusionPromise>,
    #[serde(default)]
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
struct KindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InclusionPromise {
    signed_entry_timestamp: String,
}

/// What a log entry must be about: a DSSE envelope's signature `sig` over
/// `payload` by the leaf certificate `leaf_der`.
pub(crate) struct Signed<'a> {
    pub payload_type: &'a str,
    pub payload: &'a [u8],
    pub sig: &'a [u8],
    pub leaf_der: &'a [u8],
}

/// A protobuf-JSON int64: a string, or a number from lenient writers.
fn int(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::String(s) => s.parse().ok(),
        n => n.as_i64(),
    }
}

/// The time the log vouches `entry` (about `signed`) was logged, Unix
/// seconds; Err says why the entry is no evidence.
pub(crate) fn logged_time(
    root: &TrustedRoot,
    entry: &Entry,
    signed: &Signed<'_>,
) -> Result<i64, String> {
    let body = B64
        .decode(entry.canonicalized_body.trim())
        .map_err(|_| "its canonicalizedBody is not base64".to_string())?;
    about(&body, entry.kind_version.as_ref(), signed)?;
    let promise = (entry.inclusion_promise.as_ref())
        .ok_or("it has no inclusionPromise (SignedEntryTimestamp), so no signing time")?;
    let set = B64
        .decode(promise.signed_entry_timestamp.trim())
        .map_err(|_| "its signedEntryTimestamp is not base64")?;
    let log_id = (entry.log_id.as_ref())
        .and_then(|l| B64.decode(l.key_id.trim()).ok())
        .ok_or("its logId.keyId is missing or not base64")?;
    let (Some(time), Some(index)) = (
        int(entry.integrated_time.as_ref()),
        int(entry.log_index.as_ref()),
    ) else {
        return Err("its integratedTime or logIndex is missing or not an integer".into());
    };
    let body_b64 = B64.encode(&body);
    let log_id_hex = hex::encode(log_id);
    let p = Promise {
        body_b64: &body_b64,
        integrated_time: time,
        log_id_hex: &log_id_hex,
        log_index: index,
    };
    if !set_verifies(root, &p, &set) {
        return Err(
            "its signedEntryTimestamp verifies under no transparency-log key of the trusted root"
                .into(),
        );
    }
    Ok(time)
}

/// The logged body is this signature over this payload by this leaf.
fn about(body: &[u8], kv: Option<&KindVersion>, signed: &Signed<'_>) -> Result<(), String> {
    let body: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("its body is not JSON: {e}"))?;
    let text = |p: &str| body.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    let (kind, version) = (text("/kind"), text("/apiVersion"));
    if kv.is_some_and(|kv| kv.kind != kind || kv.version != version) {
        return Err(format!(
            "its kindVersion does not match its body ({kind} {version})"
        ));
    }
    // Per kind: where the payload hash is, where the signatures are, and
    // each signature's (signature bytes, PEM of the signer).
    type Pair = (Option<Vec<u8>>, Option<Vec<u8>>);
    let (hash_at, sigs_at, pair): (&str, &str, fn(&serde_json::Value) -> Pair) =
        match (kind, version) {
            ("dsse", "0.0.1") => ("/spec/payloadHash/value", "/spec/signatures", |s| {
                (decode(s, "/signature"), decode(s, "/verifier"))
            }),
            ("intoto", "0.0.2") => {
                if text("/spec/content/envelope/payloadType") != signed.payload_type {
                    return Err("it logs an envelope of another payload type".into());
                }
                (
                    "/spec/content/payloadHash/value",
                    "/spec/content/envelope/signatures",
                    |s| (twice(s), decode(s, "/publicKey")),
                )
            }
            _ => {
                return Err(format!(
                    "it is a {kind:?} {version:?} entry, not a dsse 0.0.1 or intoto 0.0.2 one"
                ));
            }
        };
    if text(hash_at) != hex::encode(Sha256::digest(signed.payload)) {
        return Err("it logs another payload (payloadHash)".into());
    }
    let ours = |(sig, pem): Pair| {
        sig.as_deref() == Some(signed.sig)
            && pem.as_deref().and_then(pem_certificate).as_deref() == Some(signed.leaf_der)
    };
    let sigs = body.pointer(sigs_at).and_then(|v| v.as_array());
    if !sigs.is_some_and(|a| a.iter().map(pair).any(ours)) {
        return Err("it logs another signature or certificate".into());
    }
    Ok(())
}

/// intoto 0.0.2 logs a signature as base64 of the signature's base64 text.
fn twice(v: &serde_json::Value) -> Option<Vec<u8>> {
    let inner = String::from_utf8(decode(v, "/sig")?).ok()?;
    B64.decode(inner.trim()).ok()
}

/// The bytes of the base64 string at `pointer` in `v`.
fn decode(v: &serde_json::Value, pointer: &str) -> Option<Vec<u8>> {
    let s = v.pointer(pointer)?.as_str()?;
    B64.decode(s.trim()).ok()
}

#[cfg(test)]
#[path = "tlog_tests.rs"]
mod tests;
