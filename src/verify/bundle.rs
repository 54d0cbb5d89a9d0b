//! Signatures found as OCI 1.1 referrers: sigstore bundles (protobuf-JSON,
//! `application/vnd.dev.sigstore.bundle.v0.3+json`), as cosign v3 attaches
//! them to an image (a referrer manifest whose one layer is the bundle). An
//! image signature there is a DSSE envelope (`dsseEnvelope`) over an in-toto
//! statement of predicate type `https://sigstore.dev/cosign/sign/v1` whose
//! subject is the image's digest; the DSSE signature covers the envelope's
//! pre-authentication encoding (PAE) of payload type and payload.
//!
//! Verified under a configured key, or keyless (policy `keyless`): the
//! DSSE signature verifies under the key of the bundle's certificate
//! (`certificate`, v0.3, or the first of `x509CertificateChain`), which
//! passes keyless.rs's checks (chain, code signing, issuer, identity) and
//! was valid at every verified signing time, of which there must be one
//! (`signing_times`). `messageSignature` bundles sign bytes the bundle does
//! not hold, so they prove nothing about an image: refused.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::keyless::{self, Keyless};
use super::tlog::{self, Signed};
use super::trusted_root::TrustedRoot;
use super::{Refusal, VerifyPolicy};
use crate::oci::Digest;

/// The artifact type of sigstore bundles as cosign v3 attaches them (the
/// older `...bundle+json;version=0.x` spellings name bundle *files*, not
/// referrers cosign writes; one type keeps discovery at one request).
pub(crate) const BUNDLE_TYPES: [&str; 1] = ["application/vnd.dev.sigstore.bundle.v0.3+json"];

pub(crate) fn is_bundle_type(artifact_type: &str) -> bool {
    BUNDLE_TYPES.contains(&artifact_type)
}

/// Bundles read per image digest (like signature layers of a `.sig`).
pub(crate) const MAX_BUNDLES: usize = 32;

const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The predicate type of cosign's image signatures in a bundle.
pub(crate) const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

type Refused = (Refusal, String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    #[serde(default)]
    verification_material: Option<Material>,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    #[serde(default)]
    tlog_entries: Vec<tlog::Entry>,
    timestamp_verification_data: Option<TimestampData>,
}

/// `verificationMaterial.timestampVerificationData`: RFC 3161 timestamps
/// of the signature bytes (base64 DER TimeStampResp or TimeStampToken).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampData {
    #[serde(default)]
    rfc3161_timestamps: Vec<Rfc3161>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rfc3161 {
    signed_timestamp: String,
}

impl Material {
    /// The signing certificate's DER, if the bundle has one.
    fn leaf(&self) -> Option<Vec<u8>> {
        let c = (self.certificate.as_ref())
            .or_else(|| self.x509_certificate_chain.as_ref()?.certificates.first())?;
        B64.decode(c.raw_bytes.trim()).ok()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    #[serde(default)]
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    predicate_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: std::collections::HashMap<String, String>,
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn bad(detail: impl Into<String>) -> Refused {
    (Refusal::BadSignature, detail.into())
}

/// Ok only when the bundle `bytes` holds a signature by a configured key
/// over cosign's image-signature statement for `digest` (and, when the
/// policy names one, a subject of that docker-reference).
pub(crate) fn check(policy: &VerifyPolicy, digest: &Digest, bytes: &[u8]) -> Result<(), Refused> {
    let bundle: Bundle = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the sigstore bundle cannot be parsed: {e}")))?;
    let Some(env) = bundle.dsse_envelope else {
        let what = if bundle.message_signature.is_some() {
            "a messageSignature bundle (it signs bytes it does not hold, not this image)"
        } else {
            "a bundle without a dsseEnvelope"
        };
        return Err(bad(format!("the sigstore bundle is {what}")));
    };
    let payload = B64
        .decode(env.payload.trim())
        .map_err(|_| bad("the bundle's DSSE payload is not base64"))?;
    let dsse = Dsse {
        message: pae(&env.payload_type, &payload),
        payload_type: &env.payload_type,
        payload,
        sigs: (env.signatures.iter())
            .filter_map(|s| B64.decode(s.sig.trim()).ok())
            .collect(),
    };
    let by_key =
        (dsse.sigs.iter()).any(|s| policy.keys.iter().any(|k| k.verifies(&dsse.message, s)));
    let material = bundle.verification_material.as_ref();
    if !by_key {
        match (&policy.keyless, material) {
            (Some(k), Some(m)) if m.leaf().is_some() => keyless_check(k, m, &dsse)?,
            _ => return Err(unverified(material, &dsse.message, &dsse.sigs)),
        }
    }
    statement(policy, digest, dsse.payload_type, &dsse.payload)
}

/// A bundle's DSSE envelope, decoded: `message` is what its signatures
/// (the ones that are base64) sign.
struct Dsse<'a> {
    payload_type: &'a str,
    payload: Vec<u8>,
    message: Vec<u8>,
    sigs: Vec<Vec<u8>>,
}

/// The signed statement names cosign's signature predicate and `digest`.
fn statement(
    policy: &VerifyPolicy,
    digest: &Digest,
    payload_type: &str,
    payload: &[u8],
) -> Result<(), Refused> {
    if payload_type != IN_TOTO {
        return Err(bad(format!(
            "the bundle's DSSE payload type is {payload_type:?}, not {IN_TOTO:?}"
        )));
    }
    let st: Statement = serde_json::from_slice(payload).map_err(|e| {
        bad(format!(
            "the bundle's payload is not an in-toto statement: {e}"
        ))
    })?;
    if st.predicate_type != SIGN_PREDICATE {
        return Err(bad(format!(
            "the bundle's statement is of predicate type {:?}, not an image signature ({SIGN_PREDICATE:?})",
            st.predicate_type
        )));
    }
    let ours: Vec<&Subject> = (st.subject.iter())
        .filter(|s| s.digest.get("sha256").map(String::as_str) == Some(digest.hex()))
        .collect();
    if ours.is_empty() {
        let named: Vec<String> = (st.subject.iter())
            .filter_map(|s| s.digest.get("sha256").map(|h| format!("sha256:{h}")))
            .collect();
        return Err((
            Refusal::DigestMismatch,
            format!(
                "the bundle's signature is for {named:?}, not for {digest} (the digest computed over the manifest's bytes)"
            ),
        ));
    }
    if let Some(want) = &policy.docker_reference {
        let norm = super::judge::normalize;
        if !ours.iter().any(|s| norm(&s.name) == norm(want)) {
            let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
            return Err((
                Refusal::IdentityMismatch,
                format!("the bundle's statement names {names:?}, expected {want:?}"),
            ));
        }
    }
    Ok(())
}

/// The keyless checks of a bundle whose signature is by its certificate:
/// Ok only when every one passed.
fn keyless_check(k: &Keyless, material: &Material, dsse: &Dsse<'_>) -> Result<(), Refused> {
    let leaf_der = material.leaf().unwrap_or_default();
    let leaf = keyless::parse_leaf(&leaf_der)?;
    let key = keyless::leaf_key(&leaf)?;
    let Some(sig) = dsse.sigs.iter().find(|s| key.verifies(&dsse.message, s)) else {
        return Err(bad(
            "the sigstore bundle's DSSE signature does not verify under its certificate's key",
        ));
    };
    let signed = Signed {
        payload_type: dsse.payload_type,
        payload: &dsse.payload,
        sig,
        leaf_der: &leaf_der,
    };
    let authorities = keyless::trusted(k, &leaf)?;
    let times = signing_times(&k.root, material, &signed).map_err(|e| {
        bad(format!(
            "the sigstore bundle has no verifiable signing time: {e}"
        ))
    })?;
    for t in times {
        keyless::valid_at(&leaf, &authorities, t)?;
    }
    Ok(())
}

/// The verified signing times of a bundle's signature (Unix seconds, at
/// least one, else Err with why each candidate failed): the
/// `integratedTime` of each transparency-log entry about this signature
/// whose SignedEntryTimestamp verifies (`tlog.rs`; entries about something
/// else are no evidence, and a Rekor v2 entry proves logging but no time),
/// and the genTime of each RFC 3161 timestamp of the signature bytes
/// (`tsa.rs`). A timestamp that does not verify refuses the bundle, as for
/// `.sig` layers (`times.rs`). The certificate must have been valid at
/// every time returned.
fn signing_times(
    root: &TrustedRoot,
    material: &Material,
    signed: &Signed<'_>,
) -> Result<Vec<i64>, String> {
    let mut times = Vec::new();
    let mut why = Vec::new();
    for (i, entry) in material.tlog_entries.iter().enumerate() {
        match tlog::logged_time(root, entry, signed) {
            Ok(Some(t)) => times.push(t),
            Ok(None) => why.push(format!(
                "tlogEntries[{i}]: logged (inclusion proof and checkpoint verified), but a Rekor v2 entry gives no signing time"
            )),
            Err(e) => why.push(format!("tlogEntries[{i}]: {e}")),
        }
    }
    let stamps = (material.timestamp_verification_data.as_ref())
        .map_or(&[][..], |d| &d.rfc3161_timestamps[..]);
    for (i, stamp) in stamps.iter().enumerate() {
        let what = format!("timestampVerificationData.rfc3161Timestamps[{i}]");
        let t = super::tsa::verified_time_b64(root, &stamp.signed_timestamp, signed.sig)
            .map_err(|e| format!("{what}: {e}"))?;
        times.push(t);
    }
    if times.is_empty() {
        if why.is_empty() {
            return Err("it has neither a transparency-log entry (tlogEntries) nor an RFC 3161 timestamp (timestampVerificationData)".into());
        }
        return Err(why.join("; "));
    }
    Ok(times)
}

/// Why a bundle that verifies under no configured key is refused: a wrong
/// key when its own certificate's key verifies it, else a bad signature.
fn unverified(material: Option<&Material>, message: &[u8], sigs: &[Vec<u8>]) -> Refused {
    let der = material.and_then(Material::leaf);
    let key = (der.as_deref())
        .and_then(|d| keyless::parse_leaf(d).ok())
        .and_then(|leaf| keyless::leaf_key(&leaf).ok());
    if key.is_some_and(|k| sigs.iter().any(|s| k.verifies(message, s))) {
        return (
            Refusal::WrongKey,
            "the sigstore bundle is signed by its certificate's key, which is not a configured key (configure `keyless` to accept keyless signatures)".into(),
        );
    }
    bad("the sigstore bundle's signature does not verify under any configured key")
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
