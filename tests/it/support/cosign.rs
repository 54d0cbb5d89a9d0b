//! Writes cosign-format signatures the way cosign documents them (not with
//! regkeeper's code): a simple-signing payload
//! (`critical.identity.docker-reference`, `critical.image.docker-manifest-digest`,
//! `critical.type`), an ECDSA P-256 / SHA-256 signature over its bytes (ASN.1
//! DER, base64) in the layer annotation `dev.cosignproject.cosign/signature`,
//! the manifest pushed under the tag `sha256-<hex>.sig`. Optionally the
//! `dev.sigstore.cosign/bundle` annotation a Rekor upload adds (its
//! `hashedrekord` body names the public key). Keys and signatures: rcgen.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::corpus::sha256_digest;
use super::ferro::{OCI_MANIFEST, push_blob, put_manifest};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

pub struct Signer {
    key: rcgen::KeyPair,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    pub fn new() -> Signer {
        Signer {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"),
        }
    }

    /// `cosign.pub`: a PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// cosign's simple-signing payload for `digest` pushed as `reference`.
    pub fn payload(digest: &str, reference: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature"
            },
            "optional": null
        }))
        .unwrap()
    }

    /// base64 of the DER ECDSA signature over `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        B64.encode(rcgen::SigningKey::sign(&self.key, payload).expect("sign"))
    }

    /// A Rekor bundle annotation naming this signer's key (no real log entry).
    pub fn bundle(&self, payload: &[u8], signature: &str) -> String {
        let body = json!({
            "apiVersion": "0.0.1", "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256",
                    "value": sha256_digest(payload).trim_start_matches("sha256:")}},
                "signature": {"content": signature,
                    "publicKey": {"content": B64.encode(self.public_pem())}}
            }
        });
        json!({"SignedEntryTimestamp": "", "Payload": {
            "body": B64.encode(body.to_string()), "integratedTime": 0, "logIndex": 0, "logID": ""}})
        .to_string()
    }

    /// Signs `digest` (its payload naming `reference`) and pushes the
    /// signature manifest as `sha256-<hex>.sig` in `repo`; returns the
    /// signature manifest's digest.
    pub fn push(
        &self,
        base: &str,
        repo: &str,
        digest: &str,
        reference: &str,
        bundle: bool,
    ) -> String {
        let payload = Self::payload(digest, reference);
        let sig = self.sign(&payload);
        let mut annotations = json!({"dev.cosignproject.cosign/signature": sig});
        if bundle {
            annotations["dev.sigstore.cosign/bundle"] = Value::String(self.bundle(&payload, &sig));
        }
        push_signature(base, repo, digest, &payload, annotations)
    }
}

/// Pushes a `.sig` manifest for `subject` with one simple-signing layer
/// holding `payload` and `annotations` (whatever they say).
pub fn push_signature(
    base: &str,
    repo: &str,
    subject: &str,
    payload: &[u8],
    annotations: Value,
) -> String {
    let (pd, ps) = push_blob(base, repo, payload);
    let config = json!({"architecture": "", "config": {}, "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [pd]}});
    let (cd, cs) = push_blob(base, repo, config.to_string().as_bytes());
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": pd, "size": ps, "annotations": annotations}],
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let tag = format!("sha256-{}.sig", subject.trim_start_matches("sha256:"));
    put_manifest(base, repo, &tag, OCI_MANIFEST, &bytes);
    sha256_digest(&bytes)
}

/// A certificate authority standing in for Fulcio and a log key standing in
/// for Rekor, written as sigstore's `trusted_root.json`, and keyless
/// signatures as cosign writes them: an ephemeral key's signature, its leaf
/// certificate (code-signing EKU, the OIDC issuer in Fulcio's extension
/// 1.3.6.1.4.1.57264.1.8 as a DER UTF8String, a URI SubjectAltName, valid
/// one day) in `dev.sigstore.cosign/certificate`, the chain in
/// `dev.sigstore.cosign/chain`, and a Rekor bundle whose
/// SignedEntryTimestamp is the log key's ECDSA signature over the canonical
/// JSON of `{body, integratedTime, logID, logIndex}`.
pub struct Fulcio {
    ca_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    log: rcgen::KeyPair,
}

/// What a keyless leaf says, and when the log says it signed.
pub struct Leaf<'a> {
    pub issuer: &'a str,
    pub san: &'a str,
    /// Unix seconds; the leaf is valid 2024-01-01 to 2024-01-02.
    pub logged_at: i64,
}

/// 2024-01-01T12:00:00Z, inside every leaf's validity.
pub const NOON_2024: i64 = 1_704_110_400;

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

fn cert_pem(der: &[u8]) -> String {
    let b = B64.encode(der);
    let lines: Vec<&str> = (b.as_bytes().chunks(64))
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

impl Default for Fulcio {
    fn default() -> Self {
        Self::new()
    }
}

impl Fulcio {
    pub fn new() -> Fulcio {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let k = p256();
        let ca_der = p.self_signed(&k).unwrap().der().to_vec();
        Fulcio {
            ca_der,
            issuer: rcgen::Issuer::new(p, k),
            log: p256(),
        }
    }

    /// sigstore's trusted_root.json trusting this CA and this log.
    pub fn trusted_root(&self) -> String {
        let spki = rcgen::PublicKeyData::subject_public_key_info(&self.log);
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "certificateAuthorities": [{"certChain": {"certificates": [{"rawBytes": B64.encode(&self.ca_der)}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}}],
            "tlogs": [{"baseUrl": "https://rekor.example", "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": B64.encode(spki), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"}}}]
        })
        .to_string()
    }

    fn leaf(&self, l: &Leaf) -> (rcgen::KeyPair, Vec<u8>) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2024, 1, 2);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        p.subject_alt_names = vec![rcgen::SanType::URI(l.san.try_into().unwrap())];
        let mut v = vec![0x0c, l.issuer.len() as u8];
        v.extend_from_slice(l.issuer.as_bytes());
        let oid = [1, 3, 6, 1, 4, 1, 57264, 1, 8];
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&oid, v)];
        let k = p256();
        let der = p.signed_by(&k, &self.issuer).unwrap().der().to_vec();
        (k, der)
    }

    fn bundle(&self, payload: &[u8], sig: &[u8], cert: &[u8], time: i64) -> String {
        let body = json!({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
            "data": {"hash": {"algorithm": "sha256",
                "value": sha256_digest(payload).trim_start_matches("sha256:")}},
            "signature": {"content": B64.encode(sig),
                "publicKey": {"content": B64.encode(cert_pem(cert))}}}});
        let body = B64.encode(body.to_string());
        let log_id = "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d";
        let canonical = format!(
            "{{\"body\":\"{body}\",\"integratedTime\":{time},\"logID\":\"{log_id}\",\"logIndex\":42}}"
        );
        let set = rcgen::SigningKey::sign(&self.log, canonical.as_bytes()).unwrap();
        json!({"SignedEntryTimestamp": B64.encode(set), "Payload": {
            "body": body, "integratedTime": time, "logIndex": 42, "logID": log_id}})
        .to_string()
    }

    /// Signs `digest` keyless (payload naming `reference`, with `payload`
    /// replaced by `tampered` after signing when given) and pushes the
    /// `.sig` manifest.
    pub fn push(
        &self,
        base: &str,
        repo: &str,
        digest: &str,
        reference: &str,
        leaf: &Leaf,
        tampered: Option<&[u8]>,
    ) -> String {
        let (key, cert) = self.leaf(leaf);
        let payload = Signer::payload(digest, reference);
        let sig = rcgen::SigningKey::sign(&key, &payload).unwrap();
        let annotations = json!({
            "dev.cosignproject.cosign/signature": B64.encode(&sig),
            "dev.sigstore.cosign/certificate": cert_pem(&cert),
            "dev.sigstore.cosign/chain": cert_pem(&self.ca_der),
            "dev.sigstore.cosign/bundle": self.bundle(&payload, &sig, &cert, leaf.logged_at),
        });
        push_signature(
            base,
            repo,
            digest,
            tampered.unwrap_or(&payload),
            annotations,
        )
    }
}

/// The artifact type cosign v3 attaches image signatures under (an OCI 1.1
/// referrer whose one layer is a sigstore bundle).
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

impl Signer {
    /// The in-toto statement cosign v3 signs for an image: subject the
    /// image digest, predicate type `https://sigstore.dev/cosign/sign/v1`.
    pub fn statement(digest: &str, name: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": name, "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {}
        }))
        .unwrap()
    }

    /// A sigstore bundle (protobuf-JSON, v0.3) holding a DSSE envelope over
    /// `statement`, signed over DSSE's pre-authentication encoding
    /// (`DSSEv1 <len> <type> <len> <body>`); the key named by a hint only.
    pub fn dsse_bundle(&self, statement: &[u8]) -> Vec<u8> {
        let kind = "application/vnd.in-toto+json";
        let mut pae = format!("DSSEv1 {} {kind} {} ", kind.len(), statement.len()).into_bytes();
        pae.extend_from_slice(statement);
        serde_json::to_vec(&json!({
            "mediaType": SIGSTORE_BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": "test-key"}, "tlogEntries": []},
            "dsseEnvelope": {"payload": B64.encode(statement), "payloadType": kind,
                "signatures": [{"sig": self.sign(&pae), "keyid": ""}]}
        }))
        .unwrap()
    }
}

/// What the transparency-log entry of a keyless bundle is about.
#[derive(Clone, Copy)]
pub enum Logged {
    /// The bundle's own signature, by its certificate.
    This,
    /// Another signature of the same statement (another leaf): the log's
    /// SignedEntryTimestamp is genuine, the entry is not this signature's.
    AnotherSignature,
    /// No entry at all.
    Nothing,
}

impl Fulcio {
    /// A keyless sigstore bundle (v0.3) as cosign v3 writes one: a DSSE
    /// envelope over `statement` signed (over DSSE's PAE) by an ephemeral
    /// key, that key's leaf certificate in `verificationMaterial.certificate`,
    /// and a transparency-log entry as Rekor logs a DSSE envelope (`dsse`
    /// 0.0.1: `payloadHash`, `signatures[]` of signature and verifier PEM)
    /// with its SignedEntryTimestamp over the canonical JSON of
    /// `{body, integratedTime, logID, logIndex}`.
    pub fn keyless_bundle(&self, statement: &[u8], leaf: &Leaf, logged: Logged) -> Vec<u8> {
        let kind = "application/vnd.in-toto+json";
        let mut pae = format!("DSSEv1 {} {kind} {} ", kind.len(), statement.len()).into_bytes();
        pae.extend_from_slice(statement);
        let sign = |k: &rcgen::KeyPair| rcgen::SigningKey::sign(k, &pae).unwrap();
        let (key, cert) = self.leaf(leaf);
        let sig = sign(&key);
        let entries = match logged {
            Logged::This => vec![self.dsse_entry(statement, &sig, &cert, leaf.logged_at)],
            Logged::AnotherSignature => {
                let (k2, c2) = self.leaf(leaf);
                vec![self.dsse_entry(statement, &sign(&k2), &c2, leaf.logged_at)]
            }
            Logged::Nothing => Vec::new(),
        };
        serde_json::to_vec(&json!({
            "mediaType": SIGSTORE_BUNDLE,
            "verificationMaterial": {"certificate": {"rawBytes": B64.encode(&cert)},
                "tlogEntries": entries},
            "dsseEnvelope": {"payload": B64.encode(statement), "payloadType": kind,
                "signatures": [{"sig": B64.encode(&sig), "keyid": ""}]}
        }))
        .unwrap()
    }

    /// A bundle's `tlogEntries[]` item (protobuf-JSON: int64 as strings,
    /// bytes as base64) for a `dsse` 0.0.1 body; the log id is the SHA-256
    /// of the log key's SubjectPublicKeyInfo, hex in what the SET signs.
    fn dsse_entry(&self, payload: &[u8], sig: &[u8], cert: &[u8], time: i64) -> Value {
        let hash = |b: &[u8]| sha256_digest(b).trim_start_matches("sha256:").to_string();
        let body = json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hash(b"envelope")},
            "payloadHash": {"algorithm": "sha256", "value": hash(payload)},
            "signatures": [{"signature": B64.encode(sig),
                "verifier": B64.encode(cert_pem(cert))}]}});
        let body = B64.encode(body.to_string());
        let log_id = hash(&rcgen::PublicKeyData::subject_public_key_info(&self.log));
        let canonical = format!(
            "{{\"body\":\"{body}\",\"integratedTime\":{time},\"logID\":\"{log_id}\",\"logIndex\":7}}"
        );
        let set = rcgen::SigningKey::sign(&self.log, canonical.as_bytes()).unwrap();
        json!({"logIndex": "7", "logId": {"keyId": B64.encode(hex::decode(&log_id).unwrap())},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": time.to_string(),
            "inclusionPromise": {"signedEntryTimestamp": B64.encode(set)},
            "canonicalizedBody": body})
    }
}

/// A keyless signature made now (for timestamps from a TSA that stamps the
/// current time): the leaf is valid from yesterday to the day after
/// tomorrow.
pub struct KeylessNow {
    pub payload: Vec<u8>,
    /// The raw (DER) signature: what cosign timestamps.
    pub signature: Vec<u8>,
    /// The layer's signature, certificate and chain annotations (no Rekor
    /// bundle).
    pub annotations: Value,
}

impl Fulcio {
    pub fn sign_now(&self, digest: &str, reference: &str, issuer: &str, san: &str) -> KeylessNow {
        use chrono::Datelike as _;
        let day = |d: i64| {
            let t = chrono::Utc::now() + chrono::Duration::days(d);
            rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
        };
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        (p.not_before, p.not_after) = (day(-1), day(2));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        p.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
        let mut v = vec![0x0c, issuer.len() as u8];
        v.extend_from_slice(issuer.as_bytes());
        let oid = [1, 3, 6, 1, 4, 1, 57264, 1, 8];
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&oid, v)];
        let k = p256();
        let cert = p.signed_by(&k, &self.issuer).unwrap().der().to_vec();
        let payload = Signer::payload(digest, reference);
        let signature = rcgen::SigningKey::sign(&k, &payload).unwrap();
        let annotations = json!({
            "dev.cosignproject.cosign/signature": B64.encode(&signature),
            "dev.sigstore.cosign/certificate": cert_pem(&cert),
            "dev.sigstore.cosign/chain": cert_pem(&self.ca_der),
        });
        KeylessNow {
            payload,
            signature,
            annotations,
        }
    }
}
