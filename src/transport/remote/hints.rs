//! What an error tells the user to change: the config keys of the
//! registry's `[registries."HOST"]` section, or, for `regkeeper copy`, its
//! command-line flags (a copy may have no config at all).

use crate::transport::Hints;

impl Hints {
    /// `--src-X` / `--src-X or --dest-X`, for the sides this registry is.
    fn flags(sides: &[&str], flag: &str) -> String {
        let all: Vec<String> = sides.iter().map(|s| format!("--{s}-{flag}")).collect();
        all.join(" or ")
    }

    /// A certificate that does not verify.
    pub(super) fn certificate(&self, host: &str) -> String {
        match self {
            Hints::Config => {
                format!("set ca_file for [registries.\"{host}\"], or insecure_skip_verify = true")
            }
            Hints::Flags(sides) => format!(
                "give {} DIR (a directory holding the registry's CA as a .crt file), or {}",
                Self::flags(sides, "cert-dir"),
                Self::flags(sides, "tls-verify=false")
            ),
        }
    }

    /// A TLS handshake answered in plain HTTP.
    pub(super) fn plain_http(&self, host: &str) -> String {
        match self {
            Hints::Config => {
                format!("then set plain_http = true for [registries.\"{host}\"]")
            }
            Hints::Flags(sides) => format!(
                "then give {} (plain HTTP where the registry speaks no TLS)",
                Self::flags(sides, "tls-verify=false")
            ),
        }
    }

    /// Credentials missing or refused.
    pub(super) fn credentials(&self, host: &str) -> String {
        match self {
            Hints::Config => format!("check username/password_file for [registries.\"{host}\"]"),
            Hints::Flags(sides) => format!(
                "give {} FILE (a docker config.json holding credentials for {host}), or log in with `docker login {host}`",
                Self::flags(sides, "authfile")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hints;

    #[test]
    fn copy_hints_name_its_flags_and_no_config_key() {
        let one = Hints::Flags(vec!["src"]);
        let both = Hints::Flags(vec!["src", "dest"]);
        for (h, want) in [
            (one.certificate("h"), "--src-cert-dir DIR"),
            (one.plain_http("h"), "--src-tls-verify=false"),
            (one.credentials("h"), "--src-authfile FILE"),
            (
                both.certificate("h"),
                "--src-cert-dir or --dest-cert-dir DIR",
            ),
        ] {
            assert!(h.contains(want), "{h}");
            for key in ["ca_file", "plain_http", "password_file", "registries"] {
                assert!(!h.contains(key), "{h}");
            }
        }
        assert!(Hints::Config.plain_http("h").contains("plain_http = true"));
    }
}
