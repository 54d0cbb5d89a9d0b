//! The verdict over one digest, from its signature layers: verified when one
//! layer's payload is signed by a configured key, is cosign's type, names
//! this digest, and (when the policy says) the expected docker-reference.
//! Otherwise the most telling reason any layer gave.

use super::cosign::{SignatureLayer, parse_payload};
use super::keyless;
use super::{Refusal, Verdict, VerifyPolicy};
use crate::oci::Digest;

#[cfg(test)]
pub(crate) fn judge(policy: &VerifyPolicy, digest: &Digest, layers: &[SignatureLayer]) -> Verdict {
    judge_all(policy, digest, layers, &[])
}

/// The verdict over `.sig` layers and sigstore bundles (`bundle.rs`, the
/// bytes of each bundle found as a referrer) together: any that verifies
/// makes the image verified.
pub(crate) fn judge_all(
    policy: &VerifyPolicy,
    digest: &Digest,
    layers: &[SignatureLayer],
    bundles: &[Vec<u8>],
) -> Verdict {
    if layers.is_empty() && bundles.is_empty() {
        return refused(Refusal::Unsigned, format!("no signature for {digest}"));
    }
    let outcomes = (layers.iter().map(|l| check(policy, digest, l))).chain(
        bundles
            .iter()
            .map(|b| super::bundle::check(policy, digest, b)),
    );
    let mut worst: Option<(Refusal, String)> = None;
    for outcome in outcomes {
        let (reason, detail) = match outcome {
            Ok(()) => return Verdict::Verified,
            Err(r) => r,
        };
        // Keep the most specific reason (the enum's order).
        if worst.as_ref().is_none_or(|(w, _)| reason > *w) {
            worst = Some((reason, detail));
        }
    }
    let (reason, detail) = worst.expect("at least one signature");
    refused(reason, detail)
}

fn refused(reason: Refusal, detail: String) -> Verdict {
    Verdict::Refused { reason, detail }
}

fn check(
    policy: &VerifyPolicy,
    digest: &Digest,
    layer: &SignatureLayer,
) -> Result<(), (Refusal, String)> {
    let Some(sig) = &layer.signature else {
        return Err((
            Refusal::BadSignature,
            "the signature annotation is not base64".into(),
        ));
    };
    let by_key = policy.keys.iter().any(|k| k.verifies(&layer.payload, sig));
    match &policy.keyless {
        Some(k) if !by_key && layer.certificate.is_some() => keyless::check(k, layer, sig)?,
        _ if !by_key => return Err(unverified(layer, sig)),
        _ => {}
    }
    let payload = parse_payload(&layer.payload).map_err(|e| (Refusal::BadSignature, e))?;
    if payload.digest != digest.as_str() {
        return Err((
            Refusal::DigestMismatch,
            format!(
                "the signature is for {}, not for {digest} (the digest computed over the manifest's bytes)",
                payload.digest
            ),
        ));
    }
    if let Some(want) = &policy.docker_reference {
        if normalize(&payload.reference) != normalize(want) {
            return Err((
                Refusal::IdentityMismatch,
                format!(
                    "the signature names docker-reference {:?}, expected {want:?}",
                    payload.reference
                ),
            ));
        }
    }
    Ok(())
}

/// Why a signature that verifies under no configured key is refused.
fn unverified(layer: &SignatureLayer, sig: &[u8]) -> (Refusal, String) {
    if (layer.named_key.as_ref()).is_some_and(|k| k.verifies(&layer.payload, sig)) {
        return (
            Refusal::WrongKey,
            "signed by a key that is not configured (the key its bundle or certificate names)"
                .into(),
        );
    }
    (
        Refusal::BadSignature,
        format!(
            "the signature over payload {} does not verify under any configured key",
            layer.payload_digest.short()
        ),
    )
}

/// Docker Hub's spellings of one repository compare equal.
pub(crate) fn normalize(reference: &str) -> String {
    let r = reference
        .strip_prefix("index.docker.io/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .map(|rest| rest.strip_prefix("library/").unwrap_or(rest))
        .unwrap_or(reference);
    r.to_string()
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
