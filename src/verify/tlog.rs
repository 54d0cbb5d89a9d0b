//! Transparency-log entries of a sigstore bundle
//! (`verificationMaterial.tlogEntries[]`, protobuf-JSON: int64 fields as
//! strings, bytes as base64). An entry counts only when its
//! `canonicalizedBody` is about the bundle's own signature (checked per
//! `kindVersion`: `dsse` 0.0.1 or `intoto` 0.0.2, the kinds a DSSE envelope
//! is logged as; any other kind is no evidence) and the log vouches for it:
//! an `inclusionPromise` (SignedEntryTimestamp, `rekor.rs`) verified under a
//! transparency-log key of the trusted root gives the signing time
//! (`integratedTime`); a Rekor v2 entry (`dsse` 0.0.2) with only an
//! `inclusionProof` and its signed checkpoint (`checkpoint.rs`) proves it
//! was logged but gives no time (that must come from a timestamp).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::checkpoint;
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
    inclusion_proof: Option<InclusionProof>,
    #[serde(default)]
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InclusionProof {
    #[serde(default)]
    log_index: Option<serde_json::Value>,
    root_hash: String,
    #[serde(default)]
    tree_size: Option<serde_json::Value>,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Checkpoint,
}

#[derive(Deserialize)]
struct Checkpoint {
    envelope: String,
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
/// Protobuf-JSON leaves out fields of value zero (sigstore-js writes no
/// `logIndex` for entry 0): absent is 0.
fn int(v: Option<&serde_json::Value>) -> Option<i64> {
    let Some(v) = v else {
        return Some(0);
    };
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        n => n.as_i64(),
    }
}

/// The time the log vouches `entry` (about `signed`) was logged, Unix
/// seconds, from its SignedEntryTimestamp; None when only an inclusion
/// proof and a checkpoint vouch for it (Rekor v2: logged, but no time).
/// Err says why the entry is no evidence.
pub(crate) fn logged_time(
    root: &TrustedRoot,
    entry: &Entry,
    signed: &Signed<'_>,
) -> Result<Option<i64>, String> {
    let body = B64
        .decode(entry.canonicalized_body.trim())
        .map_err(|_| "its canonicalizedBody is not base64".to_string())?;
    about(&body, entry.kind_version.as_ref(), signed)?;
    match (&entry.inclusion_promise, &entry.inclusion_proof) {
        (Some(promise), _) => promised(root, entry, &body, promise).map(Some),
        (None, Some(proof)) => included(root, &body, proof).map(|()| None),
        (None, None) => Err("it has neither an inclusionPromise nor an inclusionProof".into()),
    }
}

/// The entry's `integratedTime`, when its SignedEntryTimestamp verifies.
fn promised(
    root: &TrustedRoot,
    entry: &Entry,
    body: &[u8],
    promise: &InclusionPromise,
) -> Result<i64, String> {
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
    let body_b64 = B64.encode(body);
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

/// The audit path leads from the body to the root hash of a checkpoint a
/// transparency-log key of the trusted root signed.
fn included(root: &TrustedRoot, body: &[u8], proof: &InclusionProof) -> Result<(), String> {
    let (Some(index), Some(size)) = (
        int(proof.log_index.as_ref()).and_then(|i| u64::try_from(i).ok()),
        int(proof.tree_size.as_ref()).and_then(|i| u64::try_from(i).ok()),
    ) else {
        return Err("its inclusionProof's logIndex or treeSize is not an integer".into());
    };
    let hashes: Option<Vec<[u8; 32]>> = (proof.hashes.iter())
        .map(|h| B64.decode(h.trim()).ok()?.try_into().ok())
        .collect();
    let hashes = hashes.ok_or("its inclusionProof's hashes are not base64 SHA-256 hashes")?;
    let root_hash = B64.decode(proof.root_hash.trim()).ok();
    let computed = checkpoint::root_from_proof(index, size, checkpoint::leaf_hash(body), &hashes);
    if computed.is_none() || root_hash.as_deref() != computed.as_ref().map(|h| h.as_slice()) {
        return Err("its inclusionProof does not lead from its body to its rootHash".into());
    }
    let (signed_size, signed_root) =
        checkpoint::verified_checkpoint(root, &proof.checkpoint.envelope)?;
    if signed_size != size || Some(signed_root) != computed {
        return Err("its checkpoint names another tree than its inclusionProof".into());
    }
    Ok(())
}

/// A logged signature: (signature, signer certificate DER).
type Pair = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Where a kind of body holds the payload hash (hex, or base64 in Rekor
/// v2's protobuf-JSON) and the signatures, and how to read one.
struct Layout {
    hash_at: &'static str,
    hex_hash: bool,
    sigs_at: &'static str,
    pair: fn(&serde_json::Value) -> Pair,
}

const DSSE_V1: Layout = Layout {
    hash_at: "/spec/payloadHash/value",
    hex_hash: true,
    sigs_at: "/spec/signatures",
    pair: |s| (decode(s, "/signature"), pem_at(s, "/verifier")),
};

const INTOTO: Layout = Layout {
    hash_at: "/spec/content/payloadHash/value",
    hex_hash: true,
    sigs_at: "/spec/content/envelope/signatures",
    pair: |s| (twice(s), pem_at(s, "/publicKey")),
};

const DSSE_V2: Layout = Layout {
    hash_at: "/spec/dsseV002/payloadHash/digest",
    hex_hash: false,
    sigs_at: "/spec/dsseV002/signatures",
    pair: |s| {
        let der = decode(s, "/verifier/x509Certificate/rawBytes");
        (decode(s, "/content"), der)
    },
};

/// The DER of the certificate whose PEM is base64 at `pointer`.
fn pem_at(v: &serde_json::Value, pointer: &str) -> Option<Vec<u8>> {
    pem_certificate(&decode(v, pointer)?)
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
    let layout = match (kind, version) {
        ("dsse", "0.0.1") => &DSSE_V1,
        ("intoto", "0.0.2") => {
            if text("/spec/content/envelope/payloadType") != signed.payload_type {
                return Err("it logs an envelope of another payload type".into());
            }
            &INTOTO
        }
        ("dsse", "0.0.2") => &DSSE_V2,
        _ => {
            return Err(format!(
                "it is a {kind:?} {version:?} entry, not a dsse (0.0.1, 0.0.2) or intoto 0.0.2 one"
            ));
        }
    };
    let (hash_at, hex_hash, sigs_at, pair) =
        (layout.hash_at, layout.hex_hash, layout.sigs_at, layout.pair);
    let logged = if hex_hash {
        hex::decode(text(hash_at)).ok()
    } else {
        B64.decode(text(hash_at)).ok()
    };
    if logged.as_deref() != Some(Sha256::digest(signed.payload).as_slice()) {
        return Err("it logs another payload (payloadHash)".into());
    }
    let ours = |(sig, der): Pair| {
        sig.as_deref() == Some(signed.sig) && der.as_deref() == Some(signed.leaf_der)
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
