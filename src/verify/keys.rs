//! Public keys as cosign writes them (`cosign.pub`: a PEM `PUBLIC KEY`, an
//! X.509 SubjectPublicKeyInfo), ECDSA P-256 (cosign's default). Parsing with
//! x509-parser, verification with ring (both already in the build for TLS
//! and tests).

use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// An ECDSA P-256 public key: the uncompressed point.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    point: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey(P-256 {})",
            hex::encode(&self.point[..9.min(self.point.len())])
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "not a PEM file (expected -----BEGIN PUBLIC KEY-----, as `cosign generate-key-pair` writes cosign.pub)"
    )]
    NotPem,
    #[error("the PEM block is {0:?}, not PUBLIC KEY{hint}", hint = private_hint(.0))]
    NotPublicKey(String),
    #[error("the public key cannot be read: {0}")]
    Malformed(String),
    #[error("only ECDSA P-256 keys (cosign's default) are supported")]
    Unsupported,
}

fn private_hint(label: &str) -> &'static str {
    if label.contains("PRIVATE") {
        " (this is a private key: configure the public one, cosign.pub, and keep the private key off this machine)"
    } else {
        ""
    }
}

impl PublicKey {
    /// A key from a PEM `PUBLIC KEY` block (the first PEM block of `text`).
    pub fn from_pem(text: &[u8]) -> Result<PublicKey, KeyError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text).map_err(|_| KeyError::NotPem)?;
        if pem.label != "PUBLIC KEY" {
            return Err(KeyError::NotPublicKey(pem.label));
        }
        Self::from_spki_der(&pem.contents)
    }

    /// A key from a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError::Malformed(e.to_string()))?;
        Self::from_spki(&spki)
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKey, KeyError> {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(KeyError::Unsupported);
        }
        let point = spki.subject_public_key.data.to_vec();
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::Malformed(
                "the P-256 point is not in uncompressed form".into(),
            ));
        }
        Ok(PublicKey { point })
    }

    /// Whether `signature` (ASN.1 DER, as cosign writes it) is this key's
    /// ECDSA-SHA256 signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_p256_public_key_and_refuses_anything_else() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PublicKey::from_pem(pair.public_key_pem().as_bytes()).unwrap();
        let sig = rcgen::SigningKey::sign(&pair, b"payload").unwrap();
        assert!(key.verifies(b"payload", &sig));
        assert!(!key.verifies(b"payloaD", &sig));
        let private = pair.serialize_pem();
        let e = PublicKey::from_pem(private.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        assert_eq!(PublicKey::from_pem(b"hello").unwrap_err(), KeyError::NotPem);
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(
            PublicKey::from_pem(p384.public_key_pem().as_bytes()).unwrap_err(),
            KeyError::Unsupported
        );
    }
}
