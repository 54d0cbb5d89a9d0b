//! cosign's signature format: for an image `sha256:<hex>`, the manifest
//! tagged `sha256-<hex>.sig` whose layers are simple-signing payloads, each
//! with its base64 ECDSA signature in the layer annotation
//! `dev.cosignproject.cosign/signature` (and optionally a Rekor bundle or
//! a certificate naming the signing key).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::keys::PublicKey;
use crate::oci::Digest;

pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// An RFC 3161 timestamp over the signature bytes, as JSON
/// `{"SignedRFC3161Timestamp": "<base64 DER>"}`.
const TIMESTAMP_ANNOTATION: &str = "dev.sigstore.cosign/rfc3161timestamp";
/// The `critical.type` of a cosign signature payload.
pub(crate) const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Signature layers read per image, and bytes per payload: a source cannot
/// make us read more.
pub(crate) const MAX_LAYERS: usize = 32;
pub(crate) const MAX_PAYLOAD: u64 = 256 * 1024;

/// The tag cosign puts the signatures of `digest` under.
pub(crate) fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// One signature: its payload blob (read by the engine), the signature, and
/// the key the layer itself names, if any (only to tell a wrong key from a
/// bad signature: never trusted).
#[derive(Debug, Clone)]
pub(crate) struct SignatureLayer {
    pub payload_digest: Digest,
    pub payload_size: u64,
    /// Filled in by the engine from the blob (checked against its digest).
    pub payload: Vec<u8>,
    /// Decoded from base64; `None` when it was not valid base64.
    pub signature: Option<Vec<u8>>,
    pub named_key: Option<PublicKey>,
    /// The DER of the layer's certificate (keyless signatures: the Fulcio
    /// leaf), and its Rekor bundle (JSON), as the layer carries them.
    pub certificate: Option<Vec<u8>>,
    pub bundle: Option<String>,
    /// The layer's RFC 3161 timestamp annotation (JSON), as it carries it.
    pub timestamp: Option<String>,
}

#[derive(Deserialize)]
struct WireManifest {
    #[serde(default)]
    layers: Vec<WireLayer>,
}

#[derive(Deserialize)]
struct WireLayer {
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The signature layers of a `.sig` manifest (layers without a signature
/// annotation are not signatures and are skipped; at most `MAX_LAYERS`).
pub(crate) fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let wire: WireManifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest cannot be parsed: {e}"))?;
    let layers = wire
        .layers
        .into_iter()
        .filter_map(|l| {
            let sig = l.annotations.get(SIGNATURE_ANNOTATION)?;
            Some(SignatureLayer {
                payload_digest: l.digest,
                payload_size: l.size,
                payload: Vec::new(),
                signature: B64.decode(sig.trim()).ok(),
                named_key: named_key(&l.annotations),
                certificate: (l.annotations.get(CERTIFICATE_ANNOTATION))
                    .and_then(|p| x509_parser::pem::parse_x509_pem(p.as_bytes()).ok())
                    .filter(|(_, b)| b.label == "CERTIFICATE")
                    .map(|(_, b)| b.contents),
                bundle: l.annotations.get(BUNDLE_ANNOTATION).cloned(),
                timestamp: l.annotations.get(TIMESTAMP_ANNOTATION).cloned(),
            })
        })
        .take(MAX_LAYERS)
        .collect();
    Ok(layers)
}

/// The key a layer names: its certificate's, or the one in its Rekor
/// bundle's `hashedrekord` body (a PEM public key or certificate).
fn named_key(annotations: &HashMap<String, String>) -> Option<PublicKey> {
    if let Some(pem) = annotations.get(CERTIFICATE_ANNOTATION) {
        return key_of_pem(pem.as_bytes());
    }
    let bundle: serde_json::Value =
        serde_json::from_str(annotations.get(BUNDLE_ANNOTATION)?).ok()?;
    let body = B64
        .decode(bundle.pointer("/Payload/body")?.as_str()?)
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let pem = B64
        .decode(
            body.pointer("/spec/signature/publicKey/content")?
                .as_str()?,
        )
        .ok()?;
    key_of_pem(&pem)
}

/// A PEM public key, or the key of a PEM certificate.
fn key_of_pem(pem: &[u8]) -> Option<PublicKey> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    match block.label.as_str() {
        "PUBLIC KEY" => PublicKey::from_spki_der(&block.contents).ok(),
        "CERTIFICATE" => {
            let cert = block.parse_x509().ok()?;
            PublicKey::from_spki(cert.public_key()).ok()
        }
        _ => None,
    }
}

/// What a simple-signing payload says (the parts that are checked).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Payload {
    pub digest: String,
    pub reference: String,
}

#[derive(Deserialize)]
struct WirePayload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Parses a simple-signing payload of cosign's type.
pub(crate) fn parse_payload(bytes: &[u8]) -> Result<Payload, String> {
    let wire: WirePayload = serde_json::from_slice(bytes)
        .map_err(|e| format!("the signed payload is not a simple-signing document: {e}"))?;
    if wire.critical.kind != PAYLOAD_TYPE {
        return Err(format!(
            "the signed payload's critical.type is {:?}, not {PAYLOAD_TYPE:?}",
            wire.critical.kind
        ));
    }
    Ok(Payload {
        digest: wire.critical.image.docker_manifest_digest,
        reference: wire.critical.identity.docker_reference,
    })
}
