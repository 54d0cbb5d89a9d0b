//! Where a registry's password comes from: `password_file`,
//! `password_env` or `password_credential` (systemd's `LoadCredential=`).
//! Which of them are read depends on the command ([`Secrets`]): `status`
//! needs none, and `check` runs in an operator's shell, which has neither the
//! service's environment nor its credentials.

use std::os::unix::fs::PermissionsExt as _;

use super::super::raw::{RawRegistry, Str};
use super::Loader;
use crate::secret::Secret;

/// Which secrets a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Every source: commands that contact registries.
    All,
    /// Password files only; environment variables and credentials are the
    /// service's, so they are only checked for form (`check`).
    FilesOnly,
    /// None (`status`).
    None,
}

impl Loader<'_, '_> {
    /// The password of a registry section, from the one source it names.
    pub(super) fn password(&mut self, raw: &RawRegistry, section: &str) -> Option<Secret> {
        let sources: Vec<(&str, &Str)> = [
            ("password_file", &raw.password_file),
            ("password_env", &raw.password_env),
            ("password_credential", &raw.password_credential),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        match (&raw.username, sources.first()) {
            (None, Some((_, v))) => self.d.at(
                v.span(),
                format!("{section} has a password but no username; add username = \"...\""),
            ),
            (Some(user), None) => self.d.at(
                user.span(),
                format!(
                    "{section} has a username but no password; add password_file, password_env or password_credential"
                ),
            ),
            _ => {}
        }
        if let [(first, at), (second, v), ..] = sources[..] {
            self.d.at(
                v.span(),
                format!(
                    "{section} sets both {first} (line {}) and {second}; keep one",
                    self.d.line_of(at.span().start)
                ),
            );
            return None;
        }
        match sources.first() {
            Some(("password_file", v)) => self.password_file(v),
            Some(("password_env", v)) => self.password_env(v),
            Some((_, v)) => self.password_credential(v),
            None => None,
        }
    }

    fn password_file(&mut self, file: &Str) -> Option<Secret> {
        self.secret_file(file, "password_file")
    }

    /// A secret read from a file (`key` names the setting in messages):
    /// `password_file`, `daemon.webhook_token_file`.
    pub(super) fn secret_file(&mut self, file: &Str, key: &str) -> Option<Secret> {
        let path = self.path(file.get_ref());
        if self.secrets == Secrets::None {
            return None;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.d.at(
                    file.span(),
                    format!(
                        "cannot read {key} {}: {e}; create it or correct the path",
                        path.display()
                    ),
                );
                return None;
            }
        };
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o004 != 0
        {
            self.d.warn(
                file.span(),
                format!(
                    "{key} {} is readable by every user; chmod 600 it (or use LoadCredential= under systemd)",
                    path.display()
                ),
            );
        }
        secret_text(&text).or_else(|| {
            let msg = format!("{key} {} is empty", path.display());
            self.d.at(file.span(), msg);
            None
        })
    }

    fn password_env(&mut self, env: &Str) -> Option<Secret> {
        let name = env.get_ref();
        if !env_name(name) {
            // Not shown: what was pasted here may be the password itself.
            self.d.at(
                env.span(),
                "password_env must name an environment variable, e.g. \"REGISTRY_TOKEN\" \
                 (upper-case letters, digits and '_'); this value is not one, and it is not \
                 shown in case it is the password itself (use password_file for a literal secret)",
            );
            return None;
        }
        if self.secrets != Secrets::All {
            return None;
        }
        match std::env::var(name) {
            Ok(v) if v.is_empty() => {
                self.d.at(
                    env.span(),
                    format!("password_env: environment variable {name} is empty"),
                );
                None
            }
            Ok(v) => Some(Secret::new(v)),
            Err(std::env::VarError::NotPresent) => {
                self.d.at(
                    env.span(),
                    format!(
                        "password_env: environment variable {name} is not set; set it in the service's environment"
                    ),
                );
                None
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                self.d.at(
                    env.span(),
                    format!("password_env: environment variable {name} is not valid UTF-8"),
                );
                None
            }
        }
    }

    /// `$CREDENTIALS_DIRECTORY/name`, which systemd fills from
    /// `LoadCredential=name:/path` (readable by this service only).
    fn password_credential(&mut self, cred: &Str) -> Option<Secret> {
        let name = cred.get_ref();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            self.d.at(
                cred.span(),
                format!(
                    "password_credential = {name:?} must be a credential name as in LoadCredential=NAME:/path (no '/')"
                ),
            );
            return None;
        }
        if self.secrets != Secrets::All {
            return None;
        }
        let Some(dir) = self.credentials.clone() else {
            self.d.at(
                cred.span(),
                format!(
                    "password_credential {name:?}: $CREDENTIALS_DIRECTORY is not set; systemd sets it for a unit with \
                     LoadCredential={name}:/path/to/secret (outside systemd, use password_file)"
                ),
            );
            return None;
        };
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => secret_text(&text).or_else(|| {
                let msg = format!("credential {name:?} ({}) is empty", path.display());
                self.d.at(cred.span(), msg);
                None
            }),
            Err(e) => {
                self.d.at(
                    cred.span(),
                    format!(
                        "cannot read credential {name:?} at {}: {e}; add LoadCredential={name}:/path to the unit",
                        path.display()
                    ),
                );
                None
            }
        }
    }
}

/// Files written by `echo` or an editor end in a newline that is not part of
/// the password; `None` when nothing else is left.
fn secret_text(text: &str) -> Option<Secret> {
    let s = text.trim_end_matches(['\n', '\r']);
    (!s.is_empty()).then(|| Secret::new(s))
}

/// An environment variable name as services conventionally write them.
fn env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}
