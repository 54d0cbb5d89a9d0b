//! Sigstore's `trusted_root.json` (the file `cosign` and sigstore clients
//! read): the certificate authorities keyless certificates must chain to
//! (`certificateAuthorities[].certChain.certificates[].rawBytes`, base64 DER,
//! the issuing certificate first) and the transparency logs whose keys sign
//! the signing time (`tlogs[].publicKey.rawBytes`, base64 DER
//! SubjectPublicKeyInfo), each with its `validFor` window; optionally the
//! timestamp authorities whose RFC 3161 timestamps give a signing time
//! (`timestampAuthorities[]`, chains like the certificate authorities', the
//! TSA's own certificate usually first).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::keys::PublicKey;

/// A window of Unix seconds; `end` open when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub start: i64,
    pub end: Option<i64>,
}

impl Window {
    pub(crate) fn contains(&self, t: i64) -> bool {
        self.start <= t && self.end.is_none_or(|e| t <= e)
    }
}

/// A certificate authority: its chain in DER, the issuing certificate first,
/// the root last.
#[derive(Debug, Clone)]
pub(crate) struct Authority {
    pub chain: Vec<Vec<u8>>,
    pub valid: Window,
}

/// A transparency log's signing key.
#[derive(Debug, Clone)]
pub(crate) struct Tlog {
    pub key: PublicKey,
    pub valid: Window,
}

#[derive(Debug, Clone)]
pub struct TrustedRoot {
    pub(crate) authorities: Vec<Authority>,
    pub(crate) tlogs: Vec<Tlog>,
    pub(crate) tsas: Vec<Authority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRoot {
    #[serde(default)]
    certificate_authorities: Vec<WireCa>,
    #[serde(default)]
    tlogs: Vec<WireTlog>,
    #[serde(default)]
    timestamp_authorities: Vec<WireCa>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCa {
    cert_chain: WireChain,
    valid_for: Option<WireWindow>,
}

#[derive(Deserialize)]
struct WireChain {
    certificates: Vec<WireRaw>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRaw {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTlog {
    public_key: WireKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireKey {
    raw_bytes: String,
    valid_for: Option<WireWindow>,
}

#[derive(Deserialize)]
struct WireWindow {
    start: Option<String>,
    end: Option<String>,
}

fn seconds(what: &str, s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| format!("{what}: {s:?} is not an RFC 3339 time: {e}"))
}

fn window(what: &str, w: Option<&WireWindow>) -> Result<Window, String> {
    let start = match w.and_then(|w| w.start.as_deref()) {
        Some(s) => seconds(what, s)?,
        None => i64::MIN,
    };
    let end = match w.and_then(|w| w.end.as_deref()) {
        Some(s) => Some(seconds(what, s)?),
        None => None,
    };
    Ok(Window { start, end })
}

fn der(what: &str, b64: &str) -> Result<Vec<u8>, String> {
    B64.decode(b64.trim())
        .map_err(|e| format!("{what}: rawBytes is not base64: {e}"))
}

impl TrustedRoot {
    /// Parses the file; at least one certificate authority, each
    /// certificate readable (a broken root is refused now, not at run time).
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, String> {
        let wire: WireRoot = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a sigstore trusted_root.json: {e}"))?;
        let authorities = (wire.certificate_authorities.iter().enumerate())
            .map(|(i, ca)| authority(&format!("certificateAuthorities[{i}]"), ca))
            .collect::<Result<Vec<_>, _>>()?;
        if authorities.is_empty() {
            return Err("it lists no certificate authority (certificateAuthorities)".into());
        }
        let mut tlogs = Vec::new();
        for (i, t) in wire.tlogs.iter().enumerate() {
            let what = format!("tlogs[{i}]");
            let key = PublicKey::from_spki_der(&der(&what, &t.public_key.raw_bytes)?)
                .map_err(|e| format!("{what}: {e}"))?;
            let valid = window(&what, t.public_key.valid_for.as_ref())?;
            tlogs.push(Tlog { key, valid });
        }
        let tsas = (wire.timestamp_authorities.iter().enumerate())
            .map(|(i, ca)| authority(&format!("timestampAuthorities[{i}]"), ca))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedRoot {
            authorities,
            tlogs,
            tsas,
        })
    }
}

/// A chain of readable certificates, not empty, and its window.
fn authority(what: &str, ca: &WireCa) -> Result<Authority, String> {
    let chain = (ca.cert_chain.certificates.iter())
        .map(|c| der(what, &c.raw_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(format!("{what}: the certificate chain is empty"));
    }
    for c in &chain {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("{what}: a certificate cannot be read: {e}"))?;
    }
    let valid = window(what, ca.valid_for.as_ref())?;
    Ok(Authority { chain, valid })
}
