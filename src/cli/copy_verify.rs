//! `copy`'s verification flags: `--verify-key` and/or keyless
//! (`--verify-trusted-root`, `--verify-issuer`, `--verify-identity`), with
//! `--verify-require` and `--verify-docker-reference` as `[rule.verify]`
//! has them. Everything is read and checked before anything is contacted;
//! a problem is a usage error (exit 2) with the same words as `check`.

use std::path::PathBuf;

use regkeeper::config::{check_issuer, identity_regex, read_trusted_root};
use regkeeper::verify::{Keyless, PublicKey, Require, VerifyPolicy};

use super::CliError;

/// `--verify-require`: which manifests of an index need a signature.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub(crate) enum RequireFlag {
    /// The index and every image in it.
    #[default]
    All,
    /// The index's own signature.
    Index,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct VerifyFlags {
    /// Copy only if a cosign signature by this public key (PEM,
    /// `cosign.pub`; repeatable: any of them) covers the image's digest,
    /// and the index's images too; the signatures (its `.sig` tag, its
    /// sigstore bundle referrers) are copied with it.
    #[arg(long = "verify-key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Keyless: copy only if a Fulcio-style certificate chaining to this
    /// trusted root (sigstore's trusted_root.json) signed the image, with a
    /// verified signing time (checked offline). Needs --verify-issuer and
    /// --verify-identity; with --verify-key, either kind of signature counts.
    #[arg(long = "verify-trusted-root", value_name = "FILE",
          requires_all = ["issuer", "identity"])]
    trusted_root: Option<PathBuf>,
    /// Keyless: the OIDC issuer the certificate must name, exactly (e.g.
    /// https://token.actions.githubusercontent.com).
    #[arg(long = "verify-issuer", value_name = "URL", requires_all = ["trusted_root", "identity"])]
    issuer: Option<String>,
    /// Keyless: a regex the certificate's identity (SubjectAltName URI or
    /// email) must match, e.g. '^https://github.com/org/repo/'.
    #[arg(long = "verify-identity", value_name = "REGEX", requires_all = ["trusted_root", "issuer"])]
    identity: Option<String>,
    /// Which manifests of an index need a signature [default: all].
    #[arg(long = "verify-require", value_name = "WHICH", value_enum)]
    require: Option<RequireFlag>,
    /// The repository the signatures' payloads must name
    /// (`docker-reference`), e.g. ghcr.io/org/app.
    #[arg(long = "verify-docker-reference", value_name = "REPO")]
    docker_reference: Option<String>,
}

fn usage(flag: &str, what: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("error: --{flag} {what}"))
}

impl VerifyFlags {
    /// The policy these flags ask for (none without a key or a trusted
    /// root), its files read and parsed now.
    pub(crate) fn policy(&self) -> Result<Option<VerifyPolicy>, CliError> {
        let keyless = self.keyless()?;
        if self.keys.is_empty() && keyless.is_none() {
            if self.require.is_some() || self.docker_reference.is_some() {
                return Err(CliError::Usage(
                    "error: --verify-require and --verify-docker-reference need --verify-key or --verify-trusted-root (with --verify-issuer, --verify-identity)".into(),
                ));
            }
            return Ok(None);
        }
        let keys = (self.keys.iter())
            .map(|f| {
                let text = std::fs::read(f)
                    .map_err(|e| usage("verify-key", format!("{}: {e}", f.display())))?;
                PublicKey::from_pem(&text)
                    .map_err(|e| usage("verify-key", format!("{}: {e}", f.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let docker_reference = match self.docker_reference.as_deref() {
            Some(r) if r.trim().is_empty() => {
                return Err(usage(
                    "verify-docker-reference",
                    "is empty: name the repository the signatures must name, e.g. ghcr.io/org/app",
                ));
            }
            r => r.map(str::to_string),
        };
        Ok(Some(VerifyPolicy {
            keys,
            keyless,
            require: match self.require.unwrap_or_default() {
                RequireFlag::All => Require::All,
                RequireFlag::Index => Require::Index,
            },
            docker_reference,
        }))
    }

    /// The keyless half: all three flags (clap sees to that) or none.
    fn keyless(&self) -> Result<Option<Keyless>, CliError> {
        let (Some(root), Some(issuer), Some(identity)) =
            (&self.trusted_root, &self.issuer, &self.identity)
        else {
            return Ok(None);
        };
        let root = read_trusted_root(root).map_err(|e| usage("verify-trusted-root", e))?;
        check_issuer(issuer).map_err(|e| usage("verify-issuer", e))?;
        let identity = identity_regex(identity).map_err(|e| usage("verify-identity", e))?;
        Ok(Some(Keyless {
            root,
            issuer: issuer.clone(),
            identity,
        }))
    }
}
