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
