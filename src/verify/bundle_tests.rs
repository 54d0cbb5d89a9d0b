use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use super::*;
use crate::verify::{PublicKey, Require, Verdict, judge_all};

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn policy(k: &rcgen::KeyPair, reference: Option<&str>) -> VerifyPolicy {
    VerifyPolicy {
        keys: vec![PublicKey::from_pem(k.public_key_pem().as_bytes()).unwrap()],
        keyless: None,
        require: Require::All,
        docker_reference: reference.map(str::to_string),
    }
}

fn statement(digest: &Digest, predicate: &str) -> Vec<u8> {
    json!({"_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "example.com/app", "digest": {"sha256": digest.hex()}}],
        "predicateType": predicate, "predicate": {}})
    .to_string()
    .into_bytes()
}

fn bundle(k: &rcgen::KeyPair, payload: &[u8], payload_type: &str) -> Vec<u8> {
    let sig = rcgen::SigningKey::sign(k, &pae(payload_type, payload)).unwrap();
    json!({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
        "dsseEnvelope": {"payload": B64.encode(payload), "payloadType": payload_type,
            "signatures": [{"sig": B64.encode(sig), "keyid": ""}]}})
    .to_string()
    .into_bytes()
}

fn reason(v: Verdict) -> Option<Refusal> {
    match v {
        Verdict::Verified => None,
        Verdict::Refused { reason, .. } => Some(reason),
    }
}

#[test]
fn pae_is_dsse_v1() {
    assert_eq!(pae("t/x", b"hello"), b"DSSEv1 3 t/x 5 hello".to_vec());
}

#[test]
fn a_bundle_verifies_only_with_every_check() {
    let (ours, theirs) = (key(), key());
    let d = Digest::of(b"image");
    let other = Digest::of(b"other");
    let p = policy(&ours, None);
    let good = bundle(&ours, &statement(&d, SIGN_PREDICATE), IN_TOTO);
    assert_eq!(
        reason(judge_all(&p, &d, &[], std::slice::from_ref(&good))),
        None
    );
    // Another digest, another key, another predicate, another payload type.
    let elsewhere = bundle(&ours, &statement(&other, SIGN_PREDICATE), IN_TOTO);
    assert_eq!(
        reason(judge_all(&p, &d, &[], &[elsewhere])),
        Some(Refusal::DigestMismatch)
    );
    let foreign = bundle(&theirs, &statement(&d, SIGN_PREDICATE), IN_TOTO);
    assert_eq!(
        reason(judge_all(&p, &d, &[], &[foreign])),
        Some(Refusal::BadSignature)
    );
    let sbom = bundle(&ours, &statement(&d, "https://cyclonedx.org/bom"), IN_TOTO);
    assert_eq!(
        reason(judge_all(&p, &d, &[], &[sbom])),
        Some(Refusal::BadSignature)
    );
    let typed = bundle(&ours, &statement(&d, SIGN_PREDICATE), "text/plain");
    assert_eq!(
        reason(judge_all(&p, &d, &[], &[typed])),
        Some(Refusal::BadSignature)
    );
    // A tampered payload: the signature no longer covers it.
    let tampered = String::from_utf8(good.clone()).unwrap().replace(
        &B64.encode(statement(&d, SIGN_PREDICATE)),
        &B64.encode(statement(&other, SIGN_PREDICATE)),
    );
    let r = reason(judge_all(&p, &other, &[], &[tampered.into_bytes()]));
    assert_eq!(r, Some(Refusal::BadSignature));
    // docker-reference against the statement's subject name.
    let named = policy(&ours, Some("example.com/app"));
    assert_eq!(
        reason(judge_all(&named, &d, &[], std::slice::from_ref(&good))),
        None
    );
    let elsewhere = policy(&ours, Some("example.com/other"));
    let r = reason(judge_all(&elsewhere, &d, &[], std::slice::from_ref(&good)));
    assert_eq!(r, Some(Refusal::IdentityMismatch));
    // Garbage and a messageSignature bundle are refused.
    assert_eq!(
        reason(judge_all(&p, &d, &[], &[b"{".to_vec()])),
        Some(Refusal::BadSignature)
    );
    let msg = json!({"messageSignature": {"messageDigest": {}, "signature": ""}});
    let r = reason(judge_all(&p, &d, &[], &[msg.to_string().into_bytes()]));
    assert_eq!(r, Some(Refusal::BadSignature));
    // Any good signature among bad ones verifies.
    let bad = bundle(&theirs, &statement(&d, SIGN_PREDICATE), IN_TOTO);
    assert_eq!(reason(judge_all(&p, &d, &[], &[bad, good])), None);
}

#[test]
fn bundle_types() {
    assert!(is_bundle_type(
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    ));
    assert!(!is_bundle_type(
        "application/vnd.dev.cosign.simplesigning.v1+json"
    ));
}
