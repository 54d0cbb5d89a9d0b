//! RFC 3161 timestamps as a trusted signing time: a TimeStampToken (a CMS
//! SignedData over a TSTInfo, RFC 3161 / RFC 5652), or the TimeStampResp
//! holding one, is trusted when its TSTInfo's message imprint is the hash of
//! the timestamped bytes, its signed attributes name the TSTInfo (content
//! type) and hash it (message digest), their DER is signed by a certificate
//! (from the token or the trusted root) that is for timestamping (a critical
//! timeStamping extended key usage, RFC 3161 section 2.3), chains to a
//! `timestampAuthorities` entry of the trusted root, and is valid, with its
//! chain, at the token's genTime, which must fall inside the authority's
//! `validFor`. Parsing: asn1-rs (x509-parser's own DER reader) walks the
//! structures, x509-parser reads the certificates, ring checks signatures.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Tag, oid};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use super::trusted_root::{Authority, TrustedRoot};

/// The hash functions a message imprint or a signer may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn of_oid(o: &Oid<'_>) -> Option<Hash> {
        if *o == oid!(2.16.840.1.101.3.4.2.1) {
            Some(Hash::Sha256)
        } else if *o == oid!(2.16.840.1.101.3.4.2.2) {
            Some(Hash::Sha384)
        } else if *o == oid!(2.16.840.1.101.3.4.2.3) {
            Some(Hash::Sha512)
        } else {
            None
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// One DER element: the parsed header and content, and its whole encoding.
struct Der<'a> {
    any: Any<'a>,
    raw: &'a [u8],
}

impl<'a> Der<'a> {
    fn parse(what: &str, i: &'a [u8]) -> Result<(Der<'a>, &'a [u8]), String> {
        let (rest, any) = Any::from_der(i).map_err(|e| format!("{what} is not valid DER: {e}"))?;
        let raw = &i[..i.len() - rest.len()];
        Ok((Der { any, raw }, rest))
    }

    /// The elements inside a constructed element.
    fn children(&self, what: &str) -> Result<Vec<Der<'a>>, String> {
        if !self.any.header.is_constructed() {
            return Err(format!("{what} is not a constructed element"));
        }
        let mut out = Vec::new();
        let mut i = self.any.data;
        while !i.is_empty() {
            let (d, rest) = Der::parse(what, i)?;
            out.push(d);
            i = rest;
        }
        Ok(out)
    }

    fn is(&self, tag: Tag) -> bool {
        self.any.header.class() == Class::Universal && self.any.header.tag() == tag
    }

    fn is_context(&self, n: u32) -> bool {
        self.any.header.class() == Class::ContextSpecific && self.any.header.tag() == Tag(n)
    }

    fn oid(&self, what: &str) -> Result<Oid<'a>, String> {
        self.any
            .clone()
            .oid()
            .map_err(|_| format!("{what} is not an object identifier"))
    }

    fn octets(&self, what: &str) -> Result<&'a [u8], String> {
        if self.is(Tag::OctetString) && self.any.header.is_primitive() {
            Ok(self.any.data)
        } else {
            Err(format!("{what} is not an OCTET STRING"))
        }
    }
}

fn seq<'a>(what: &str, i: &'a [u8]) -> Result<Vec<Der<'a>>, String> {
    let (d, _) = Der::parse(what, i)?;
    if !d.is(Tag::Sequence) {
        return Err(format!("{what} is not a SEQUENCE"));
    }
    d.children(what)
}

fn nth<'b, 'a>(items: &'b [Der<'a>], n: usize, what: &str) -> Result<&'b Der<'a>, String> {
    items
        .get(n)
        .ok_or_else(|| format!("{what} is missing (truncated structure)"))
}

/// The hash an AlgorithmIdentifier names.
fn algorithm_hash(what: &str, alg: &Der<'_>) -> Result<Hash, String> {
    let o = nth(&alg.children(what)?, 0, what)?.oid(what)?;
    Hash::of_oid(&o).ok_or_else(|| format!("{what}: unsupported hash algorithm {o}"))
}

/// The parts of a token that are checked.
struct Token<'a> {
    tst_info: &'a [u8],
    certificates: Vec<&'a [u8]>,
    digest_alg: Hash,
    signed_attrs: &'a [u8],
    signature_alg: Oid<'a>,
    signature: &'a [u8],
}

/// The TimeStampToken (a ContentInfo) in `der`, which may also be a whole
/// TimeStampResp (status granted, or granted with modifications).
fn content_info(der: &[u8]) -> Result<Vec<Der<'_>>, String> {
    let outer = seq("the timestamp", der)?;
    let first = nth(&outer, 0, "the timestamp's first element")?;
    if !first.is(Tag::Sequence) {
        return Ok(outer);
    }
    let status = nth(&first.children("PKIStatusInfo")?, 0, "the response status")?
        .any
        .clone()
        .u32()
        .map_err(|_| "the response status is not a small INTEGER")?;
    if status > 1 {
        return Err(format!(
            "the timestamp response was not granted (status {status})"
        ));
    }
    let token = nth(&outer, 1, "the response's timeStampToken")?;
    seq("the timeStampToken", token.raw)
}

fn parse_token(der: &[u8]) -> Result<Token<'_>, String> {
    let ci = content_info(der)?;
    if nth(&ci, 0, "contentType")?.oid("contentType")? != oid!(1.2.840.113549.1.7.2) {
        return Err("the timestamp is not a CMS SignedData".into());
    }
    let wrapped = nth(&ci, 1, "the SignedData")?;
    let inner = nth(&wrapped.children("the SignedData")?, 0, "the SignedData")?.raw;
    let sd = seq("the SignedData", inner)?;
    let encap = nth(&sd, 2, "encapContentInfo")?.children("encapContentInfo")?;
    if nth(&encap, 0, "eContentType")?.oid("eContentType")? != oid!(1.2.840.113549.1.9.16.1.4) {
        return Err("the SignedData does not hold a TSTInfo (eContentType)".into());
    }
    let econtent = nth(&encap, 1, "eContent")?.children("eContent")?;
    let tst_info = nth(&econtent, 0, "eContent")?.octets("eContent")?;
    let certificates = match sd.iter().find(|d| d.is_context(0)) {
        Some(c) => c.children("certificates")?.iter().map(|d| d.raw).collect(),
        None => Vec::new(),
    };
    let signers = sd
        .last()
        .filter(|d| d.is(Tag::Set))
        .ok_or("no signerInfos")?;
    let signers = signers.children("signerInfos")?;
    let [signer] = signers.as_slice() else {
        return Err(format!(
            "the token has {} signers, RFC 3161 wants one",
            signers.len()
        ));
    };
    let si = signer.children("the SignerInfo")?;
    let attrs = si
        .iter()
        .find(|d| d.is_context(0))
        .ok_or("the SignerInfo has no signed attributes (RFC 3161 requires them)")?;
    let at = si.iter().position(|d| d.is_context(0)).expect("found");
    Ok(Token {
        tst_info,
        certificates,
        digest_alg: algorithm_hash(
            "the signer's digestAlgorithm",
            nth(&si, 2, "digestAlgorithm")?,
        )?,
        signed_attrs: attrs.raw,
        signature_alg: nth(
            &nth(&si, at + 1, "signatureAlgorithm")?.children("signatureAlgorithm")?,
            0,
            "signatureAlgorithm",
        )?
        .oid("signatureAlgorithm")?,
        signature: nth(&si, at + 2, "the signature")?.octets("the signature")?,
    })
}

/// The genTime of a TSTInfo whose message imprint is the hash of
/// `timestamped`.
fn check_tst_info(der: &[u8], timestamped: &[u8]) -> Result<i64, String> {
    let tst = seq("the TSTInfo", der)?;
    let imprint = nth(&tst, 2, "messageImprint")?.children("messageImprint")?;
    let hash = algorithm_hash("the message imprint", nth(&imprint, 0, "hashAlgorithm")?)?;
    let hashed = nth(&imprint, 1, "hashedMessage")?.octets("hashedMessage")?;
    if hashed != hash.digest(timestamped).as_slice() {
        return Err(format!(
            "the timestamp is for other bytes (its {hash:?} message imprint is not the hash of the signature)"
        ));
    }
    let when = nth(&tst, 4, "genTime")?;
    if !when.is(Tag::GeneralizedTime) {
        return Err("the TSTInfo's genTime is not a GeneralizedTime".into());
    }
    let (_, t) = ASN1Time::from_der(when.raw).map_err(|e| format!("the genTime: {e}"))?;
    Ok(t.timestamp())
}

/// The signed attributes name a TSTInfo as content type and carry its hash
/// as message digest, each exactly once.
fn check_attributes(t: &Token<'_>) -> Result<(), String> {
    let (attrs, _) = Der::parse("the signed attributes", t.signed_attrs)?;
    let (mut content_type, mut digest) = (Vec::new(), Vec::new());
    for a in attrs.children("the signed attributes")? {
        let parts = a.children("a signed attribute")?;
        let kind = nth(&parts, 0, "an attribute type")?.oid("an attribute type")?;
        let values = nth(&parts, 1, "an attribute value")?.children("an attribute value")?;
        if kind == oid!(1.2.840.113549.1.9.3) {
            for v in &values {
                content_type.push(v.oid("the content-type attribute")?);
            }
        } else if kind == oid!(1.2.840.113549.1.9.4) {
            for v in &values {
                digest.push(v.octets("the message-digest attribute")?);
            }
        }
    }
    if content_type != [oid!(1.2.840.113549.1.9.16.1.4)] {
        return Err("the signed content-type attribute is not one TSTInfo".into());
    }
    if digest != [t.digest_alg.digest(t.tst_info).as_slice()] {
        return Err(
            "the signed message-digest attribute is not the hash of the TSTInfo (altered after signing)"
                .into(),
        );
    }
    Ok(())
}

/// ring's algorithm for this signature algorithm (or, for CMS's bare
/// `rsaEncryption` / `id-ecPublicKey`, the signer's digest) and key.
fn algorithm(
    cert: &X509Certificate<'_>,
    sig_alg: &Oid<'_>,
    digest: Hash,
) -> Option<&'static dyn VerificationAlgorithm> {
    let hash = if *sig_alg == oid!(1.2.840.10045.4.3.2) || *sig_alg == oid!(1.2.840.113549.1.1.11) {
        Hash::Sha256
    } else if *sig_alg == oid!(1.2.840.10045.4.3.3) || *sig_alg == oid!(1.2.840.113549.1.1.12) {
        Hash::Sha384
    } else if *sig_alg == oid!(1.2.840.10045.4.3.4) || *sig_alg == oid!(1.2.840.113549.1.1.13) {
        Hash::Sha512
    } else if *sig_alg == oid!(1.2.840.113549.1.1.1) || *sig_alg == oid!(1.2.840.10045.2.1) {
        digest
    } else {
        return None;
    };
    let spki = &cert.public_key().algorithm;
    let curve = spki.parameters.as_ref().and_then(|p| p.as_oid().ok());
    let rsa_sig = sig_alg.to_id_string().starts_with("1.2.840.113549.1.1.");
    if spki.algorithm == oid!(1.2.840.113549.1.1.1) && rsa_sig {
        return Some(match hash {
            Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        });
    }
    if spki.algorithm != oid!(1.2.840.10045.2.1) || rsa_sig {
        return None;
    }
    let p256 = curve == Some(oid!(1.2.840.10045.3.1.7));
    let p384 = curve == Some(oid!(1.3.132.0.34));
    match (p256, p384, hash) {
        (true, _, Hash::Sha256) => Some(&signature::ECDSA_P256_SHA256_ASN1),
        (true, _, Hash::Sha384) => Some(&signature::ECDSA_P256_SHA384_ASN1),
        (_, true, Hash::Sha256) => Some(&signature::ECDSA_P384_SHA256_ASN1),
        (_, true, Hash::Sha384) => Some(&signature::ECDSA_P384_SHA384_ASN1),
        _ => None,
    }
}

/// Whether `cert`'s key made the token's signature over the DER of its
/// signed attributes (re-tagged as the SET OF they are, RFC 5652 5.4).
fn signed_by(cert: &X509Certificate<'_>, t: &Token<'_>) -> bool {
    let Some(alg) = algorithm(cert, &t.signature_alg, t.digest_alg) else {
        return false;
    };
    let mut message = t.signed_attrs.to_vec();
    message[0] = 0x31;
    let key = &cert.public_key().subject_public_key.data;
    UnparsedPublicKey::new(alg, key.as_ref())
        .verify(&message, t.signature)
        .is_ok()
}

fn valid_at(c: &X509Certificate<'_>, t: i64) -> bool {
    let v = c.validity();
    v.not_before.timestamp() <= t && t <= v.not_after.timestamp()
}

/// Whether the authority's chain issued the signer: the signer is in the
/// chain (sigstore lists the TSA leaf first) or issued by its first
/// certificate; each link's signature verified, the last certificate by
/// itself; every certificate of the path valid at `at`.
fn vouches(a: &Authority, signer_der: &[u8], signer: &X509Certificate<'_>, at: i64) -> bool {
    let Ok(chain) = (a.chain.iter())
        .map(|c| X509Certificate::from_der(c).map(|(_, c)| c))
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let path = match a.chain.iter().position(|c| c == signer_der) {
        Some(p) => &chain[p..],
        None => {
            if signer
                .verify_signature(Some(chain[0].public_key()))
                .is_err()
            {
                return false;
            }
            &chain[..]
        }
    };
    let linked = path
        .windows(2)
        .all(|w| w[0].verify_signature(Some(w[1].public_key())).is_ok());
    let last = path.last().expect("non-empty chain");
    linked
        && last.verify_signature(None).is_ok()
        && valid_at(signer, at)
        && path.iter().all(|c| valid_at(c, at))
}

/// A critical extended key usage of timeStamping (RFC 3161 2.3).
fn for_timestamping(c: &X509Certificate<'_>) -> bool {
    matches!(c.extended_key_usage(), Ok(Some(e)) if e.critical && e.value.time_stamping)
}

/// [`verified_time`] of a token as signatures carry it: base64 DER.
pub(crate) fn verified_time_b64(
    root: &TrustedRoot,
    token_b64: &str,
    timestamped: &[u8],
) -> Result<i64, String> {
    use base64::Engine as _;
    let der = (base64::engine::general_purpose::STANDARD.decode(token_b64.trim()))
        .map_err(|_| "the RFC 3161 timestamp is not base64".to_string())?;
    verified_time(root, &der, timestamped)
}

/// The time (Unix seconds) a timestamp authority of `root` vouches that
/// `timestamped` existed, from `token_der` (a TimeStampToken or a
/// TimeStampResp); an error says which check failed.
pub(crate) fn verified_time(
    root: &TrustedRoot,
    token_der: &[u8],
    timestamped: &[u8],
) -> Result<i64, String> {
    if root.tsas.is_empty() {
        return Err("the trusted root lists no timestamp authority (timestampAuthorities)".into());
    }
    let t = parse_token(token_der)?;
    let gen_time = check_tst_info(t.tst_info, timestamped)?;
    check_attributes(&t)?;
    let from_root = root
        .tsas
        .iter()
        .flat_map(|a| a.chain.iter().map(Vec::as_slice));
    let mut failure = None;
    for der in t.certificates.iter().copied().chain(from_root) {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        if !signed_by(&cert, &t) {
            continue;
        }
        if !for_timestamping(&cert) {
            failure = Some("its signer's certificate is not for timestamping (no critical timeStamping extended key usage)".to_string());
            continue;
        }
        let chains: Vec<&Authority> = (root.tsas.iter())
            .filter(|a| vouches(a, der, &cert, gen_time))
            .collect();
        if chains.iter().any(|a| a.valid.contains(gen_time)) {
            return Ok(gen_time);
        }
        failure = Some(if !chains.is_empty() {
            format!("its genTime {gen_time} is outside the timestamp authority's validFor")
        } else {
            format!(
                "its signer chains to no timestamp authority of the trusted root valid at its genTime {gen_time}"
            )
        });
    }
    Err(failure.unwrap_or_else(|| {
        "its signature verifies under no certificate of the token or the trusted root's timestamp authorities".into()
    }))
}

#[cfg(test)]
#[path = "tsa_tests.rs"]
mod tests;
