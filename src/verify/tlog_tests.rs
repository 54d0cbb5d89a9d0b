//! Keyless sigstore bundles: a test CA and log key (keyless_tests.rs) sign
//! DSSE envelopes and SignedEntryTimestamps over `dsse` / `intoto` bodies
//! built as Rekor builds them; each check refuses on its own.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;
use crate::verify::bundle::{SIGN_PREDICATE, pae};
use crate::verify::keyless_tests::{Ca, GOOD, Leaf, NOON, ca, key, leaf, pem, policy, root};
use crate::verify::{Refusal, Verdict, judge_all};

const IN_TOTO: &str = "application/vnd.in-toto+json";
const LOG_ID: [u8; 4] = [0xc0, 0xd2, 0x3d, 0x6a];

fn statement(digest: &Digest) -> Vec<u8> {
    json!({"_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "example.com/app", "digest": {"sha256": digest.hex()}}],
        "predicateType": SIGN_PREDICATE, "predicate": {}})
    .to_string()
    .into_bytes()
}

/// A signature by a fresh leaf of `ca`: (statement, DSSE signature, leaf DER).
fn signed(ca: &Ca, l: &Leaf, digest: &Digest) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (k, cert) = leaf(ca, l);
    let st = statement(digest);
    let sig = rcgen::SigningKey::sign(&k, &pae(IN_TOTO, &st)).unwrap();
    (st, sig, cert)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Rekor's `dsse` 0.0.1 body of an envelope.
fn dsse_body(payload: &[u8], sig: &[u8], cert: &[u8]) -> Value {
    json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
        "envelopeHash": {"algorithm": "sha256", "value": sha(b"envelope")},
        "payloadHash": {"algorithm": "sha256", "value": sha(payload)},
        "signatures": [{"signature": B64.encode(sig), "verifier": B64.encode(pem(cert))}]}})
}

/// Rekor's `intoto` 0.0.2 body (signature: base64 of base64).
fn intoto_body(payload: &[u8], sig: &[u8], cert: &[u8]) -> Value {
    json!({"apiVersion": "0.0.2", "kind": "intoto", "spec": {"content": {
        "envelope": {"payloadType": IN_TOTO, "signatures": [{
            "sig": B64.encode(B64.encode(sig)), "publicKey": B64.encode(pem(cert))}]},
        "hash": {"algorithm": "sha256", "value": sha(b"envelope")},
        "payloadHash": {"algorithm": "sha256", "value": sha(payload)}}}})
}

/// A bundle tlog entry for `body`, its SET signed by `log` at `time`.
fn entry(log: &KeyPair, body: &Value, time: i64) -> Value {
    let body = B64.encode(body.to_string());
    let canonical = format!(
        "{{\"body\":\"{body}\",\"integratedTime\":{time},\"logID\":\"{}\",\"logIndex\":42}}",
        hex::encode(LOG_ID)
    );
    let set = rcgen::SigningKey::sign(log, canonical.as_bytes()).unwrap();
    let kind = serde_json::from_slice::<Value>(&B64.decode(&body).unwrap()).unwrap();
    json!({"logIndex": "42", "logId": {"keyId": B64.encode(LOG_ID)},
        "kindVersion": {"kind": kind["kind"], "version": kind["apiVersion"]},
        "integratedTime": time.to_string(),
        "inclusionPromise": {"signedEntryTimestamp": B64.encode(set)},
        "canonicalizedBody": body})
}

fn bundle(st: &[u8], sig: &[u8], cert: &[u8], entries: Vec<Value>) -> Vec<u8> {
    json!({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"certificate": {"rawBytes": B64.encode(cert)},
            "tlogEntries": entries},
        "dsseEnvelope": {"payload": B64.encode(st), "payloadType": IN_TOTO,
            "signatures": [{"sig": B64.encode(sig), "keyid": ""}]}})
    .to_string()
    .into_bytes()
}

fn verdict(p: &crate::verify::VerifyPolicy, d: &Digest, b: Vec<u8>) -> Option<(Refusal, String)> {
    match judge_all(p, d, &[], &[b]) {
        Verdict::Verified => None,
        Verdict::Refused { reason, detail } => Some((reason, detail)),
    }
}

fn reason(p: &crate::verify::VerifyPolicy, d: &Digest, b: Vec<u8>) -> Option<Refusal> {
    verdict(p, d, b).map(|(r, _)| r)
}

#[test]
fn a_keyless_bundle_verifies_with_a_dsse_or_intoto_entry() {
    let (fulcio, log) = (ca(), key());
    let p = policy(root(&[&fulcio], &log));
    let d = Digest::of(b"image");
    let (st, sig, cert) = signed(&fulcio, &GOOD, &d);
    let dsse = entry(&log, &dsse_body(&st, &sig, &cert), NOON);
    assert_eq!(verdict(&p, &d, bundle(&st, &sig, &cert, vec![dsse])), None);
    let intoto = entry(&log, &intoto_body(&st, &sig, &cert), NOON);
    let good = bundle(&st, &sig, &cert, vec![intoto.clone()]);
    assert_eq!(verdict(&p, &d, good.clone()), None);
    // The v0.1/0.2 spelling of the certificate.
    let chain = String::from_utf8(good).unwrap().replace(
        "\"certificate\":{",
        "\"x509CertificateChain\":{\"certificates\":[{",
    );
    let chain = chain.replace("},\"tlogEntries\"", "}]},\"tlogEntries\"");
    assert!(chain.contains("x509CertificateChain") && !chain.contains("\"certificate\""));
    assert_eq!(verdict(&p, &d, chain.into_bytes()), None);
    // An entry about another signature among them does not matter.
    let (_, other_sig, other_cert) = signed(&fulcio, &GOOD, &d);
    let other = entry(&log, &dsse_body(&st, &other_sig, &other_cert), NOON);
    let b = bundle(&st, &sig, &cert, vec![other, intoto]);
    assert_eq!(verdict(&p, &d, b), None);
    // Without `keyless` in the policy it stays a wrong key.
    let mut keys_only = p.clone();
    keys_only.keyless = None;
    let dsse = entry(&log, &dsse_body(&st, &sig, &cert), NOON);
    let r = reason(&keys_only, &d, bundle(&st, &sig, &cert, vec![dsse]));
    assert_eq!(r, Some(Refusal::WrongKey));
}

#[test]
fn each_keyless_bundle_check_refuses_on_its_own() {
    let (fulcio, rogue_ca, log, rogue_log) = (ca(), ca(), key(), key());
    let p = policy(root(&[&fulcio], &log));
    let d = Digest::of(b"image");
    let (st, sig, cert) = signed(&fulcio, &GOOD, &d);
    let with = |entries: Vec<Value>| bundle(&st, &sig, &cert, entries);
    let time_refusal = |b: Vec<u8>| {
        let (r, detail) = verdict(&p, &d, b).expect("refused");
        assert_eq!(r, Refusal::BadSignature, "{detail}");
        assert!(detail.contains("no verifiable signing time"), "{detail}");
    };
    // No entry; an entry about another signature or another payload; a SET
    // by a log the root does not know; a retimed entry; an unknown kind.
    time_refusal(with(vec![]));
    let (_, other_sig, other_cert) = signed(&fulcio, &GOOD, &d);
    time_refusal(with(vec![entry(
        &log,
        &dsse_body(&st, &other_sig, &other_cert),
        NOON,
    )]));
    time_refusal(with(vec![entry(
        &log,
        &dsse_body(&st, &sig, &other_cert),
        NOON,
    )]));
    time_refusal(with(vec![entry(
        &log,
        &dsse_body(b"other", &sig, &cert),
        NOON,
    )]));
    time_refusal(with(vec![entry(
        &rogue_log,
        &dsse_body(&st, &sig, &cert),
        NOON,
    )]));
    let retimed = entry(&log, &dsse_body(&st, &sig, &cert), NOON);
    let retimed = retimed
        .to_string()
        .replace(&NOON.to_string(), &(NOON + 1).to_string());
    assert!(retimed.contains(&(NOON + 1).to_string()));
    time_refusal(with(vec![serde_json::from_str(&retimed).unwrap()]));
    let mut hashed = dsse_body(&st, &sig, &cert);
    hashed["kind"] = json!("hashedrekord");
    time_refusal(with(vec![entry(&log, &hashed, NOON)]));
    // A verified time outside the leaf's validity.
    let late = entry(&log, &dsse_body(&st, &sig, &cert), NOON + 2 * 86_400);
    assert_eq!(
        reason(&p, &d, with(vec![late])),
        Some(Refusal::BadSignature)
    );
    // Untrusted CA, another identity, a signature its leaf did not make.
    let (st2, sig2, cert2) = signed(&rogue_ca, &GOOD, &d);
    let e = entry(&log, &dsse_body(&st2, &sig2, &cert2), NOON);
    let r = reason(&p, &d, bundle(&st2, &sig2, &cert2, vec![e]));
    assert_eq!(r, Some(Refusal::WrongKey));
    let fork = Leaf {
        san: "https://github.com/fork/repo/x",
        ..GOOD
    };
    let (st3, sig3, cert3) = signed(&fulcio, &fork, &d);
    let e = entry(&log, &dsse_body(&st3, &sig3, &cert3), NOON);
    let r = reason(&p, &d, bundle(&st3, &sig3, &cert3, vec![e]));
    assert_eq!(r, Some(Refusal::IdentityMismatch));
    let e = entry(&log, &dsse_body(&st, &other_sig, &cert), NOON);
    let r = reason(&p, &d, bundle(&st, &other_sig, &cert, vec![e]));
    assert_eq!(r, Some(Refusal::BadSignature));
    // Fully valid, but for another image.
    let elsewhere = Digest::of(b"elsewhere");
    let (st4, sig4, cert4) = signed(&fulcio, &GOOD, &elsewhere);
    let e = entry(&log, &dsse_body(&st4, &sig4, &cert4), NOON);
    let r = reason(&p, &d, bundle(&st4, &sig4, &cert4, vec![e]));
    assert_eq!(r, Some(Refusal::DigestMismatch));
}

/// Rekor v2's `dsse` 0.0.2 body (protobuf-JSON, bytes base64).
fn dsse_v2_body(payload: &[u8], sig: &[u8], cert: &[u8]) -> Value {
    json!({"apiVersion": "0.0.2", "kind": "dsse", "spec": {"dsseV002": {
        "payloadHash": {"algorithm": "SHA2_256", "digest": B64.encode(Sha256::digest(payload))},
        "signatures": [{"content": B64.encode(sig), "verifier": {
            "x509Certificate": {"rawBytes": B64.encode(cert)},
            "keyDetails": "PKIX_ECDSA_P256_SHA_256"}}]}}})
}

fn hash_pair(l: &[u8], r: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().to_vec()
}

fn leaf_of(b: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(b);
    h.finalize().to_vec()
}

/// A Rekor v2 entry for `body`, leaf 1 of a 3-leaf tree, with a
/// checkpoint signed by `log` (no SignedEntryTimestamp, no time).
fn v2_entry(log: &KeyPair, body: &Value) -> Value {
    let body = body.to_string().into_bytes();
    let (l0, l2) = (leaf_of(b"first"), leaf_of(b"third"));
    let root = hash_pair(&hash_pair(&l0, &leaf_of(&body)), &l2);
    let text = format!("log.example - 1\n3\n{}\n", B64.encode(&root));
    let mut sig = vec![1, 2, 3, 4];
    sig.extend(rcgen::SigningKey::sign(log, text.as_bytes()).unwrap());
    let note = format!("{text}\n\u{2014} log.example {}\n", B64.encode(sig));
    json!({"logIndex": "1", "logId": {"keyId": B64.encode(LOG_ID)},
        "kindVersion": {"kind": "dsse", "version": "0.0.2"},
        "integratedTime": "0",
        "inclusionProof": {"logIndex": "1", "rootHash": B64.encode(&root), "treeSize": "3",
            "hashes": [B64.encode(&l0), B64.encode(&l2)],
            "checkpoint": {"envelope": note}},
        "canonicalizedBody": B64.encode(&body)})
}

#[test]
fn a_rekor_v2_entry_proves_inclusion_but_gives_no_time() {
    let (fulcio, log, rogue_log) = (ca(), key(), key());
    let p = policy(root(&[&fulcio], &log));
    let d = Digest::of(b"image");
    let (st, sig, cert) = signed(&fulcio, &GOOD, &d);
    let detail = |entry: Value| {
        let (r, detail) = verdict(&p, &d, bundle(&st, &sig, &cert, vec![entry])).expect("refused");
        assert_eq!(r, Refusal::BadSignature, "{detail}");
        assert!(detail.contains("no verifiable signing time"), "{detail}");
        detail
    };
    let body = dsse_v2_body(&st, &sig, &cert);
    let logged = detail(v2_entry(&log, &body));
    assert!(logged.contains("gives no signing time"), "{logged}");
    let rogue = detail(v2_entry(&rogue_log, &body));
    assert!(rogue.contains("checkpoint is signed by no"), "{rogue}");
    let mut cut = v2_entry(&log, &body);
    cut["inclusionProof"]["hashes"] = json!([cut["inclusionProof"]["hashes"][0]]);
    let cut = detail(cut);
    assert!(cut.contains("does not lead"), "{cut}");
    let mut moved = v2_entry(&log, &body);
    moved["inclusionProof"]["logIndex"] = json!("0");
    let moved = detail(moved);
    assert!(moved.contains("does not lead"), "{moved}");
    let (_, other_sig, _) = signed(&fulcio, &GOOD, &d);
    let other = detail(v2_entry(&log, &dsse_v2_body(&st, &other_sig, &cert)));
    assert!(other.contains("another signature"), "{other}");
}
