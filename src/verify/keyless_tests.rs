//! A test CA standing in for Fulcio and a test log key standing in for
//! Rekor (rcgen): every keyless check refuses on its own.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType, date_time_ymd,
};
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;
use crate::verify::{
    Keyless, Refusal, Require, SignatureLayer, TrustedRoot, Verdict, VerifyPolicy, judge,
};

pub(crate) fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

pub(crate) struct Ca {
    pub(crate) der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let k = key();
    let der = p.self_signed(&k).unwrap().der().to_vec();
    Ca {
        der,
        issuer: Issuer::new(p, k),
    }
}

/// What the leaf says: issuer extension (v2), SAN URI, EKU, validity day.
pub(crate) struct Leaf<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) san: &'a str,
    pub(crate) code_signing: bool,
}

pub(crate) const GOOD: Leaf<'static> = Leaf {
    issuer: "https://issuer.example",
    san: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main",
    code_signing: true,
};

/// 2024-01-01T12:00:00Z: inside the leaf's day.
pub(crate) const NOON: i64 = 1_704_110_400;

pub(crate) fn leaf(ca: &Ca, l: &Leaf) -> (KeyPair, Vec<u8>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.not_before = date_time_ymd(2024, 1, 1);
    p.not_after = date_time_ymd(2024, 1, 2);
    if l.code_signing {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    }
    p.subject_alt_names = vec![SanType::URI(l.san.try_into().unwrap())];
    let mut v = vec![0x0c, l.issuer.len() as u8];
    v.extend_from_slice(l.issuer.as_bytes());
    let oid = [1, 3, 6, 1, 4, 1, 57264, 1, 8];
    p.custom_extensions = vec![CustomExtension::from_oid_content(&oid, v)];
    let k = key();
    let der = p.signed_by(&k, &ca.issuer).unwrap().der().to_vec();
    (k, der)
}

pub(crate) fn root(cas: &[&Ca], log: &KeyPair) -> TrustedRoot {
    let cas: Vec<_> = cas
        .iter()
        .map(|c| {
            serde_json::json!({
        "certChain": {"certificates": [{"rawBytes": B64.encode(&c.der)}]},
        "validFor": {"start": "2020-01-01T00:00:00Z"}})
        })
        .collect();
    let doc = serde_json::json!({"certificateAuthorities": cas, "tlogs": [{
        "publicKey": {"rawBytes": B64.encode(rcgen::PublicKeyData::subject_public_key_info(log)),
            "validFor": {"start": "2020-01-01T00:00:00Z"}}}]});
    TrustedRoot::parse(doc.to_string().as_bytes()).unwrap()
}

pub(crate) fn pem(der: &[u8]) -> String {
    let b = B64.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The Rekor bundle of `sig` over `payload` by `cert`, logged at `time`.
fn bundle(log: &KeyPair, payload: &[u8], sig: &[u8], cert: &[u8], time: i64) -> String {
    let body = serde_json::json!({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))}},
        "signature": {"content": B64.encode(sig), "publicKey": {"content": B64.encode(pem(cert))}}}});
    let body = B64.encode(body.to_string());
    let canonical = format!(
        "{{\"body\":\"{body}\",\"integratedTime\":{time},\"logID\":\"ab12\",\"logIndex\":7}}"
    );
    let set = rcgen::SigningKey::sign(log, canonical.as_bytes()).unwrap();
    serde_json::json!({"SignedEntryTimestamp": B64.encode(set), "Payload": {
        "body": body, "integratedTime": time, "logIndex": 7, "logID": "ab12"}})
    .to_string()
}

fn payload(digest: &Digest) -> Vec<u8> {
    serde_json::json!({"critical": {"identity": {"docker-reference": "r/app"},
        "image": {"docker-manifest-digest": digest.as_str()},
        "type": "cosign container image signature"}, "optional": null})
    .to_string()
    .into_bytes()
}

fn layer(log: &KeyPair, ca: &Ca, l: &Leaf, digest: &Digest, time: i64) -> SignatureLayer {
    let (k, cert) = leaf(ca, l);
    let payload = payload(digest);
    let sig = rcgen::SigningKey::sign(&k, &payload).unwrap();
    SignatureLayer {
        payload_digest: Digest::of(&payload),
        payload_size: payload.len() as u64,
        bundle: Some(bundle(log, &payload, &sig, &cert, time)),
        timestamp: None,
        payload,
        signature: Some(sig),
        named_key: None,
        certificate: Some(cert),
    }
}

pub(crate) fn policy(root: TrustedRoot) -> VerifyPolicy {
    VerifyPolicy {
        keys: Vec::new(),
        keyless: Some(Keyless {
            root,
            issuer: GOOD.issuer.into(),
            identity: regex::Regex::new("^https://github.com/org/repo/").unwrap(),
        }),
        require: Require::All,
        docker_reference: None,
    }
}

fn reason(p: &VerifyPolicy, d: &Digest, l: SignatureLayer) -> Option<Refusal> {
    match judge(p, d, &[l]) {
        Verdict::Verified => None,
        Verdict::Refused { reason, .. } => Some(reason),
    }
}

#[test]
fn each_keyless_check_refuses_on_its_own() {
    let (fulcio, other, log, rogue_log) = (ca(), ca(), key(), key());
    let p = policy(root(&[&fulcio], &log));
    let d = Digest::of(b"image");
    let good = layer(&log, &fulcio, &GOOD, &d, NOON);
    assert_eq!(reason(&p, &d, good.clone()), None);

    let issuer = Leaf {
        issuer: "https://evil.example",
        ..GOOD
    };
    assert_eq!(
        reason(&p, &d, layer(&log, &fulcio, &issuer, &d, NOON)),
        Some(Refusal::IdentityMismatch)
    );
    let san = Leaf {
        san: "https://github.com/evil/repo/x",
        ..GOOD
    };
    assert_eq!(
        reason(&p, &d, layer(&log, &fulcio, &san, &d, NOON)),
        Some(Refusal::IdentityMismatch)
    );
    let eku = Leaf {
        code_signing: false,
        ..GOOD
    };
    assert_eq!(
        reason(&p, &d, layer(&log, &fulcio, &eku, &d, NOON)),
        Some(Refusal::WrongKey)
    );
    assert_eq!(
        reason(&p, &d, layer(&log, &other, &GOOD, &d, NOON)),
        Some(Refusal::WrongKey)
    );
    // Logged after the leaf expired; logged by a log the root does not know.
    let late = NOON + 2 * 86_400;
    assert_eq!(
        reason(&p, &d, layer(&log, &fulcio, &GOOD, &d, late)),
        Some(Refusal::BadSignature)
    );
    assert_eq!(
        reason(&p, &d, layer(&rogue_log, &fulcio, &GOOD, &d, NOON)),
        Some(Refusal::BadSignature)
    );
    // No bundle: no trusted time, refused.
    let mut bare = good.clone();
    bare.bundle = None;
    assert_eq!(reason(&p, &d, bare), Some(Refusal::BadSignature));
    // A bundle of another signature (same leaf, same time): refused.
    let mut swapped = good.clone();
    swapped.bundle = layer(&log, &fulcio, &GOOD, &d, NOON).bundle;
    assert_eq!(reason(&p, &d, swapped), Some(Refusal::BadSignature));
    // The logged time changed after the log signed it.
    let mut retimed = good.clone();
    retimed.bundle = good
        .bundle
        .as_ref()
        .map(|b| b.replace(&NOON.to_string(), &(NOON + 1).to_string()));
    assert_eq!(reason(&p, &d, retimed), Some(Refusal::BadSignature));
    // Payload changed after signing.
    let mut tampered = good.clone();
    tampered.payload = payload(&Digest::of(b"other"));
    assert_eq!(reason(&p, &d, tampered), Some(Refusal::BadSignature));
    // Valid, but for another image.
    let elsewhere = layer(&log, &fulcio, &GOOD, &Digest::of(b"other"), NOON);
    assert_eq!(reason(&p, &d, elsewhere), Some(Refusal::DigestMismatch));
    // A second authority in the root is enough to trust the other CA.
    let both = policy(root(&[&fulcio, &other], &log));
    assert_eq!(
        reason(&both, &d, layer(&log, &other, &GOOD, &d, NOON)),
        None
    );
}

#[test]
fn the_issuer_extension_v1_is_read_too_and_a_root_needs_a_ca() {
    let fulcio = ca();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let oid = [1, 3, 6, 1, 4, 1, 57264, 1, 1];
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &oid,
        b"https://v1.example".to_vec(),
    )];
    let der = p.signed_by(&key(), &fulcio.issuer).unwrap().der().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        super::keyless::oidc_issuer(&cert).as_deref(),
        Some("https://v1.example")
    );
    let e = TrustedRoot::parse(br#"{"certificateAuthorities": [], "tlogs": []}"#).unwrap_err();
    assert!(e.contains("no certificate authority"), "{e}");
    assert!(TrustedRoot::parse(b"{").is_err());
}
