//! Keyless (Fulcio) signatures, checked offline: the layer's certificate
//! (`dev.sigstore.cosign/certificate`) must chain to a certificate authority
//! of the trusted root, be for code signing, name the configured OIDC
//! issuer (Fulcio's extension 1.3.6.1.4.1.57264.1.8, or the older .1.1) and
//! an identity (a SubjectAltName URI or email) the `identity` regex matches,
//! and its key must have signed the payload. The signing time comes from the
//! Rekor bundle (`dev.sigstore.cosign/bundle`): its SignedEntryTimestamp
//! must verify under a transparency-log key of the trusted root, and its
//! entry must be this signature, payload and certificate; or from an RFC 3161
//! timestamp of the signature (`times.rs`); the certificate and the
//! authority must be valid at each such time. Without a verifiable time
//! the signature is refused: a short-lived certificate proves nothing once
//! expired, and its own dates are no evidence of when it signed.

use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::oid;
use x509_parser::extensions::GeneralName;

use super::Refusal;
use super::cosign::SignatureLayer;
use super::keys::PublicKey;
use super::trusted_root::{TrustedRoot, Window};

/// `[rule.verify] keyless`: who may have signed.
#[derive(Debug, Clone)]
pub struct Keyless {
    pub root: TrustedRoot,
    /// The OIDC issuer the certificate must name, exactly.
    pub issuer: String,
    /// Matched against each SubjectAltName (URI, email).
    pub identity: regex::Regex,
}

pub(crate) type Refused = (Refusal, String);

fn refuse(reason: Refusal, detail: impl Into<String>) -> Refused {
    (reason, detail.into())
}

/// Whether the layer's certificate and bundle make its signature `sig` over
/// `layer.payload` a signature by the configured identity. Ok only when
/// every check passed.
pub(crate) fn check(k: &Keyless, layer: &SignatureLayer, sig: &[u8]) -> Result<(), Refused> {
    let Some(leaf_der) = &layer.certificate else {
        return Err(refuse(
            Refusal::BadSignature,
            "the signature carries no certificate (not a keyless signature) and verifies under no configured key",
        ));
    };
    let leaf = parse_leaf(leaf_der)?;
    if !leaf_key(&leaf)?.verifies(&layer.payload, sig) {
        return Err(refuse(
            Refusal::BadSignature,
            format!(
                "the signature over payload {} does not verify under its certificate's key",
                layer.payload_digest.short()
            ),
        ));
    }
    let authorities = trusted(k, &leaf)?;
    let times = super::times::signing_times(&k.root, layer, sig, leaf_der).map_err(|e| {
        refuse(
            Refusal::BadSignature,
            format!("no verifiable signing time: {e}"),
        )
    })?;
    for time in times {
        valid_at(&leaf, &authorities, time)?;
    }
    Ok(())
}

/// The leaf certificate (DER) of a keyless signature.
pub(crate) fn parse_leaf(der: &[u8]) -> Result<X509Certificate<'_>, Refused> {
    let (_, leaf) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        refuse(
            Refusal::BadSignature,
            format!("its certificate cannot be read: {e}"),
        )
    })?;
    Ok(leaf)
}

/// The key the leaf certifies (the one that must have signed).
pub(crate) fn leaf_key(leaf: &X509Certificate<'_>) -> Result<PublicKey, Refused> {
    PublicKey::from_spki(leaf.public_key())
        .map_err(|e| refuse(Refusal::BadSignature, format!("its certificate's key: {e}")))
}

/// The leaf chains to an authority of the trusted root and names the
/// configured issuer and identity: the validity windows of the authorities
/// that issued it (for `valid_at`).
pub(crate) fn trusted(k: &Keyless, leaf: &X509Certificate<'_>) -> Result<Vec<Window>, Refused> {
    let authorities = chained(k, leaf);
    if authorities.is_empty() {
        return Err(refuse(
            Refusal::WrongKey,
            "its certificate chains to no certificate authority of the trusted root",
        ));
    }
    identity(k, leaf)?;
    Ok(authorities)
}

/// The leaf, and an authority that issued it, were valid at `time` (a
/// verified signing time, Unix seconds).
pub(crate) fn valid_at(
    leaf: &X509Certificate<'_>,
    authorities: &[Window],
    time: i64,
) -> Result<(), Refused> {
    let v = leaf.validity();
    if time < v.not_before.timestamp() || time > v.not_after.timestamp() {
        return Err(refuse(
            Refusal::BadSignature,
            format!(
                "its certificate was not valid when it signed (signing time {time}, valid {} to {})",
                v.not_before, v.not_after
            ),
        ));
    }
    if !authorities.iter().any(|w| w.contains(time)) {
        return Err(refuse(
            Refusal::WrongKey,
            format!(
                "its certificate authority was not trusted when it signed (signing time {time}, outside validFor)"
            ),
        ));
    }
    Ok(())
}

/// The validity windows of the authorities whose chain issued `leaf` (each
/// signature in the chain verified, the last certificate by itself).
fn chained(k: &Keyless, leaf: &X509Certificate<'_>) -> Vec<Window> {
    let issued = |child: &X509Certificate<'_>, parent: &[u8]| {
        x509_parser::parse_x509_certificate(parent)
            .is_ok_and(|(_, p)| child.verify_signature(Some(p.public_key())).is_ok())
    };
    let chain_ok = |chain: &[Vec<u8>]| {
        issued(leaf, &chain[0])
            && chain.windows(2).all(|w| {
                x509_parser::parse_x509_certificate(&w[0]).is_ok_and(|(_, c)| issued(&c, &w[1]))
            })
            && x509_parser::parse_x509_certificate(chain.last().expect("non-empty"))
                .is_ok_and(|(_, r)| r.verify_signature(None).is_ok())
    };
    (k.root.authorities.iter())
        .filter(|a| chain_ok(&a.chain))
        .map(|a| a.valid)
        .collect()
}

/// Code-signing EKU, the issuer extension, and a SubjectAltName the regex
/// matches.
fn identity(k: &Keyless, leaf: &X509Certificate<'_>) -> Result<(), Refused> {
    let code_signing = matches!(leaf.extended_key_usage(), Ok(Some(e)) if e.value.code_signing);
    if !code_signing {
        return Err(refuse(
            Refusal::WrongKey,
            "its certificate is not for code signing (no codeSigning extended key usage)",
        ));
    }
    let issuer = oidc_issuer(leaf);
    if issuer.as_deref() != Some(k.issuer.as_str()) {
        return Err(refuse(
            Refusal::IdentityMismatch,
            format!(
                "its certificate's OIDC issuer is {issuer:?}, expected {:?}",
                k.issuer
            ),
        ));
    }
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => (san.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(s) | GeneralName::RFC822Name(s) => Some(s.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !names.iter().any(|n| k.identity.is_match(n)) {
        return Err(refuse(
            Refusal::IdentityMismatch,
            format!(
                "its certificate's identities {names:?} do not match identity {:?}",
                k.identity.as_str()
            ),
        ));
    }
    Ok(())
}

/// Fulcio's OIDC issuer extension: v2 (a DER UTF8String) or else v1 (the
/// raw string).
pub(crate) fn oidc_issuer(cert: &X509Certificate<'_>) -> Option<String> {
    let v2 = oid!(1.3.6.1.4.1.57264.1.8);
    let v1 = oid!(1.3.6.1.4.1.57264.1.1);
    let ext = |o| cert.extensions().iter().find(|e| e.oid == o);
    if let Some(e) = ext(v2) {
        let (_, any) = x509_parser::der_parser::der::parse_der_utf8string(e.value).ok()?;
        return any.as_str().ok().map(str::to_string);
    }
    ext(v1).and_then(|e| std::str::from_utf8(e.value).ok().map(str::to_string))
}
