//! Signature verification of images before they are mirrored (`[rule.verify]`,
//! `copy --verify-key`): public keys (`keys.rs`), cosign's signature format
//! (`cosign.rs`: the `sha256-<hex>.sig` manifest, its simple-signing payloads,
//! the key a Rekor bundle names), sigstore bundles found as referrers
//! (`bundle.rs`, their transparency-log entries in `tlog.rs` and
//! `checkpoint.rs`), keyless certificates (`keyless.rs`, `rekor.rs`,
//! `trusted_root.rs`) and the verdict over one digest
//! (`judge.rs`). Pure: the engine fetches (`engine/verify.rs`), this decides.

mod bundle;
mod checkpoint;
mod cosign;
mod judge;
mod keyless;
mod keys;
mod rekor;
mod times;
mod tlog;
mod trusted_root;
mod tsa;

pub(crate) use bundle::{BUNDLE_TYPES, MAX_BUNDLES, is_bundle_type};
pub(crate) use cosign::{MAX_PAYLOAD, SignatureLayer, signature_layers, signature_tag};
#[cfg(test)]
pub(crate) use judge::judge;
pub(crate) use judge::judge_all;
pub use keyless::Keyless;
pub use keys::{KeyError, PublicKey};
pub use trusted_root::TrustedRoot;

use serde::Serialize;

/// What a rule (or a registry entry, for every rule reading from it)
/// requires of the images it copies.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// Any of these keys may have signed (cosign / sigstore public keys).
    pub keys: Vec<PublicKey>,
    /// Or a keyless (Fulcio certificate) signature by this identity.
    pub keyless: Option<Keyless>,
    /// Which manifests of an index need a signature.
    pub require: Require,
    /// When set, the payload's `critical.identity.docker-reference` must
    /// equal this (Docker Hub spellings normalized).
    pub docker_reference: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    /// The index and every image it lists (what `cosign sign --recursive` signs).
    All,
    /// The root manifest only (an index's signature covers the children
    /// by digest).
    Index,
}

/// Why an image was refused. Label values of
/// `regkeeper_rule_images_refused_total` and words of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No signature at all (no `sha256-<hex>.sig` tag, or none in it).
    Unsigned,
    /// A signature that does not verify under any configured key and names
    /// no key it does verify under (tampered payload, garbled signature).
    BadSignature,
    /// A valid signature by a key that is not configured (the key its Rekor
    /// bundle or certificate names verifies it).
    WrongKey,
    /// Signed by a configured key, but for another digest.
    DigestMismatch,
    /// Signed by a configured key for this digest, but for another
    /// `docker-reference` than `docker_reference` says.
    IdentityMismatch,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Unsigned,
        Refusal::BadSignature,
        Refusal::WrongKey,
        Refusal::DigestMismatch,
        Refusal::IdentityMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongKey => "wrong_key",
            Refusal::DigestMismatch => "digest_mismatch",
            Refusal::IdentityMismatch => "identity_mismatch",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict over one image: verified, or refused with a reason and what
/// was found (for the operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    Refused { reason: Refusal, detail: String },
}

#[cfg(test)]
#[path = "keyless_tests.rs"]
mod keyless_tests;
