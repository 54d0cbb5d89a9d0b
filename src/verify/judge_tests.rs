use super::*;
use crate::verify::{PublicKey, Require};

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn public(k: &rcgen::KeyPair) -> PublicKey {
    PublicKey::from_pem(k.public_key_pem().as_bytes()).unwrap()
}

fn payload(digest: &str, reference: &str) -> Vec<u8> {
    serde_json::json!({"critical": {"identity": {"docker-reference": reference},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature"}, "optional": null})
    .to_string()
    .into_bytes()
}

fn layer(k: &rcgen::KeyPair, payload: Vec<u8>, named: bool) -> SignatureLayer {
    let sig = rcgen::SigningKey::sign(k, &payload).unwrap();
    SignatureLayer {
        payload_digest: Digest::of(&payload),
        payload_size: payload.len() as u64,
        payload,
        signature: Some(sig),
        named_key: named.then(|| public(k)),
        certificate: None,
        bundle: None,
        timestamp: None,
    }
}

fn policy(k: &rcgen::KeyPair, reference: Option<&str>) -> VerifyPolicy {
    VerifyPolicy {
        keys: vec![public(k)],
        keyless: None,
        require: Require::All,
        docker_reference: reference.map(str::to_string),
    }
}

fn reason(v: Verdict) -> Option<Refusal> {
    match v {
        Verdict::Verified => None,
        Verdict::Refused { reason, .. } => Some(reason),
    }
}

#[test]
fn each_case_gets_its_reason() {
    let (ours, theirs) = (key(), key());
    let d = Digest::of(b"image");
    let other = Digest::of(b"other");
    let p = policy(&ours, None);
    let good = layer(&ours, payload(d.as_str(), "r/app"), false);
    assert_eq!(reason(judge(&p, &d, std::slice::from_ref(&good))), None);
    assert_eq!(reason(judge(&p, &d, &[])), Some(Refusal::Unsigned));
    let foreign = layer(&theirs, payload(d.as_str(), "r/app"), true);
    assert_eq!(reason(judge(&p, &d, &[foreign])), Some(Refusal::WrongKey));
    let anonymous = layer(&theirs, payload(d.as_str(), "r/app"), false);
    assert_eq!(
        reason(judge(&p, &d, &[anonymous])),
        Some(Refusal::BadSignature)
    );
    let mut tampered = good.clone();
    tampered.payload = payload(other.as_str(), "r/app");
    assert_eq!(
        reason(judge(&p, &other, &[tampered])),
        Some(Refusal::BadSignature)
    );
    let elsewhere = layer(&ours, payload(other.as_str(), "r/app"), false);
    assert_eq!(
        reason(judge(&p, &d, &[elsewhere])),
        Some(Refusal::DigestMismatch)
    );
    let strict = policy(&ours, Some("docker.io/library/app"));
    assert_eq!(
        reason(judge(&strict, &d, std::slice::from_ref(&good))),
        Some(Refusal::IdentityMismatch)
    );
    let hub = layer(
        &ours,
        payload(d.as_str(), "index.docker.io/library/app"),
        false,
    );
    assert_eq!(reason(judge(&strict, &d, &[hub])), None);
    // One good signature among bad ones is enough.
    let bad = layer(&theirs, payload(d.as_str(), "r/app"), true);
    assert_eq!(reason(judge(&p, &d, &[bad, good])), None);
}

#[test]
fn a_payload_of_another_type_is_refused() {
    let k = key();
    let d = Digest::of(b"image");
    let text = payload(d.as_str(), "r").to_vec();
    let other = String::from_utf8(text)
        .unwrap()
        .replace("cosign container image signature", "x");
    let l = layer(&k, other.into_bytes(), false);
    assert_eq!(
        reason(judge(&policy(&k, None), &d, &[l])),
        Some(Refusal::BadSignature)
    );
}
