//! `[rule.verify]` and `[registries."host".verify]`: the keys read and
//! parsed now, so a missing or wrong key file is a configuration error
//! with its line, not a refusal at run time.

use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::super::raw::{RawKeyless, RawVerify, Str};
use super::Loader;
use crate::reference::{Location, RepoSpec};
use crate::verify::{Keyless, PublicKey, Require, TrustedRoot, VerifyPolicy};

impl Loader<'_, '_> {
    pub(super) fn verify(
        &mut self,
        raw: Spanned<RawVerify>,
        label: &str,
    ) -> Option<Arc<VerifyPolicy>> {
        let span = raw.span();
        let raw = raw.into_inner();
        let keys: Vec<PublicKey> = raw
            .sigstore_keys
            .iter()
            .flatten()
            .filter_map(|s| self.public_key(s))
            .collect();
        let keyless = raw.keyless.map(|k| self.keyless(k));
        if raw.sigstore_keys.as_ref().is_none_or(Vec::is_empty) && keyless.is_none() {
            self.d.at(
                span,
                format!("{label} names no key: add sigstore_keys = [\"keys/cosign.pub\"] (cosign public keys, PEM) or keyless = {{ trusted_root, issuer, identity }}"),
            );
        }
        let keyless = keyless.flatten();
        let require = match raw.require.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "all")) => Require::All,
            Some((_, "index")) => Require::Index,
            Some((s, other)) => {
                self.d.at(
                    s.span(),
                    format!("require = {other:?} is not known: use \"all\" (the index and every image in it) or \"index\" (the index's own signature)"),
                );
                Require::All
            }
        };
        let docker_reference = raw.docker_reference.as_ref().map(|s| {
            if s.get_ref().trim().is_empty() {
                self.d.at(s.span(), "docker_reference is empty: name the repository the signatures must name, e.g. \"ghcr.io/org/app\", or leave the key out");
            }
            s.get_ref().clone()
        });
        (!keys.is_empty() || keyless.is_some()).then(|| {
            Arc::new(VerifyPolicy {
                keys,
                keyless,
                require,
                docker_reference,
            })
        })
    }

    /// `keyless`: the trusted root read and parsed, the identity compiled.
    fn keyless(&mut self, raw: Spanned<RawKeyless>) -> Option<Keyless> {
        let raw = raw.into_inner();
        let path = self.path(raw.trusted_root.get_ref());
        let root = read_trusted_root(&path)
            .map_err(|e| self.d.at(raw.trusted_root.span(), e))
            .ok();
        if let Err(e) = check_issuer(raw.issuer.get_ref()) {
            self.d.at(raw.issuer.span(), format!("keyless.issuer {e}"));
        }
        let identity = identity_regex(raw.identity.get_ref())
            .map_err(|e| {
                self.d
                    .at(raw.identity.span(), format!("keyless.identity {e}"))
            })
            .ok();
        Some(Keyless {
            root: root?,
            issuer: raw.issuer.into_inner(),
            identity: identity?,
        })
    }

    /// One key file, read and parsed.
    fn public_key(&mut self, s: &Str) -> Option<PublicKey> {
        let path = self.path(s.get_ref());
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) => {
                self.d.at(
                    s.span(),
                    format!("cannot read the key file {}: {e}", path.display()),
                );
                return None;
            }
        };
        match PublicKey::from_pem(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                self.d.at(
                    s.span(),
                    format!("{} is not a usable public key: {e}", path.display()),
                );
                None
            }
        }
    }

    /// The `verify` of the registry a rule's source is on, if any.
    pub(super) fn source_verify(&self, source: Option<&RepoSpec>) -> Option<Arc<VerifyPolicy>> {
        match &source?.location {
            Location::Registry { host, .. } => self.registry_verify.get(host).cloned(),
            Location::Layout { .. } => None,
        }
    }
}

/// A trusted root file (sigstore's `trusted_root.json`) read and parsed;
/// the error names the file. Shared by `keyless` and `copy
/// --verify-trusted-root`.
pub fn read_trusted_root(path: &Path) -> Result<TrustedRoot, String> {
    match std::fs::read(path) {
        Ok(text) => TrustedRoot::parse(&text)
            .map_err(|e| format!("{} is not a usable trusted root: {e}", path.display())),
        Err(e) => Err(format!(
            "cannot read the trusted root {}: {e}",
            path.display()
        )),
    }
}

/// A keyless issuer must be named; the error follows the key's name.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    if issuer.trim().is_empty() {
        return Err("is empty: name the OIDC issuer the certificates must name, e.g. \"https://token.actions.githubusercontent.com\"".into());
    }
    Ok(())
}

/// The keyless identity, compiled; the error follows the key's name.
pub fn identity_regex(identity: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(identity).map_err(|e| format!("is not a valid regex: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn parse(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::parse(text, Path::new("/nonexistent/t.toml"))
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        f
    }

    fn config(verify: &str, registry: &str) -> String {
        format!(
            "version = 1\n{registry}\n[[rule]]\nname = \"a\"\nsource = \"127.0.0.1:1/a\"\ntargets = [\"127.0.0.1:2/a\"]\n{verify}"
        )
    }

    #[test]
    fn keys_are_read_at_check_time_with_their_line() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = file(&pair.public_key_pem());
        let private = file(&pair.serialize_pem());
        let p = public.path().display();
        let c = parse(&config(
            &format!("[rule.verify]\nsigstore_keys = [\"{p}\"]\nrequire = \"index\"\n"),
            "",
        ))
        .unwrap();
        let v = c.rules[0].verify.as_ref().expect("verify");
        assert_eq!(
            (v.keys.len(), v.require),
            (1, crate::verify::Require::Index)
        );

        let text = config(
            &format!(
                "[rule.verify]\nsigstore_keys = [\"{}\"]\n",
                private.path().display()
            ),
            "",
        );
        let e = parse(&text).unwrap_err();
        let d = &e.diagnostics[0];
        assert_eq!(d.line, 8, "{e}");
        assert!(d.message.contains("private key"), "{e}");

        let e = parse(&config(
            "[rule.verify]\nsigstore_keys = [\"missing.pub\"]\nrequire = \"some\"\n",
            "",
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the key file /nonexistent/missing.pub"),
            "{e}"
        );
        assert!(e.to_string().contains("require = \"some\""), "{e}");
        let e = parse(&config("[rule.verify]\nrequire = \"all\"\n", "")).unwrap_err();
        assert!(e.to_string().contains("names no key"), "{e}");
    }

    #[test]
    fn a_registry_verify_covers_the_rules_reading_from_it() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = file(&pair.public_key_pem());
        let reg = format!(
            "[registries.\"127.0.0.1:1\".verify]\nsigstore_keys = [\"{}\"]\n",
            public.path().display()
        );
        let c = parse(&config("", &reg)).unwrap();
        assert!(c.rules[0].verify.is_some());
        let other = reg.replace("127.0.0.1:1", "127.0.0.1:3");
        let c = parse(&config("", &other)).unwrap();
        assert!(c.rules[0].verify.is_none());
    }

    #[test]
    fn keyless_reads_its_trusted_root_and_compiles_its_identity_at_check_time() {
        use base64::Engine as _;
        let ca = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = params.self_signed(&ca).unwrap().der().to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let root = file(&format!(
            r#"{{"certificateAuthorities":[{{"certChain":{{"certificates":[{{"rawBytes":"{b64}"}}]}}}}]}}"#
        ));
        let empty = file(r#"{"certificateAuthorities": []}"#);
        let keyless = |root: &std::path::Path, identity: &str| {
            config(
                &format!(
                    "[rule.verify]\nkeyless = {{ trusted_root = \"{}\", issuer = \"https://i.example\",\n  identity = '{identity}' }}\n",
                    root.display()
                ),
                "",
            )
        };
        let c = parse(&keyless(root.path(), "^https://github.com/org/")).unwrap();
        let v = c.rules[0].verify.as_ref().expect("verify");
        assert!(v.keys.is_empty() && v.keyless.is_some());
        let e = parse(&keyless(empty.path(), "^x")).unwrap_err();
        assert_eq!(e.diagnostics[0].line, 8, "{e}");
        assert!(e.to_string().contains("no certificate authority"), "{e}");
        let e = parse(&keyless(root.path(), "^(x")).unwrap_err();
        assert_eq!(e.diagnostics[0].line, 9, "{e}");
        assert!(e.to_string().contains("not a valid regex"), "{e}");
    }
}
