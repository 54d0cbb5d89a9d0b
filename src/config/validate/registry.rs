//! `[registries."host"]`: credentials, TLS, limits and chunk sizes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::DeValue;

use super::super::raw::{RawRegistry, Str};
use super::Loader;
use crate::transport::RegistryOptions;

impl Loader<'_, '_> {
    pub(super) fn registries(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, RegistryOptions> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.d.at(
                span,
                "`registries` must be a table of per-host tables, e.g. [registries.\"ghcr.io\"]",
            );
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (host, value) in table {
            let host_span = host.span();
            let host = host.into_inner().into_owned();
            if let Some(problem) = host_problem(&host) {
                self.d.at(
                    host_span,
                    format!("registry key {host:?} {problem}; write the host as in references, e.g. \"ghcr.io\" or \"127.0.0.1:5000\""),
                );
            }
            let section = format!("[registries.{host:?}]");
            let (raw, _) = self.section::<RawRegistry>(value, &section);
            if let Some(mut raw) = raw {
                if let Some(v) = raw.verify.take() {
                    let label = format!("{section}.verify");
                    if let Some(policy) = self.verify(v, &label) {
                        self.registry_verify.insert(host.clone(), policy);
                    }
                }
                let opts = self.registry(raw, &section);
                out.insert(host, opts);
            }
        }
        out
    }

    fn registry(&mut self, raw: RawRegistry, section: &str) -> RegistryOptions {
        let defaults = RegistryOptions::default();
        let password = self.password(&raw, section);
        let docker_config = raw
            .docker_config
            .as_ref()
            .map(|s| self.existing_file(s, "docker_config"));
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|s| self.existing_file(s, "ca_file"));
        let max_concurrent = self.at_least(
            raw.max_concurrent.as_ref(),
            "max_concurrent",
            1,
            defaults.max_concurrent,
        );
        let requests_per_second = raw.requests_per_second.as_ref().and_then(|r| {
            let v = *r.get_ref();
            if v.is_finite() && v > 0.0 {
                Some(v)
            } else {
                self.d.at(
                    r.span(),
                    format!(
                        "requests_per_second = {v} must be a number above 0; leave it out for no limit"
                    ),
                );
                None
            }
        });
        let chunk_size = match &raw.chunk_size {
            None => defaults.chunk_size,
            Some(v) => match chunk_size(v.get_ref()) {
                Ok(n) => n,
                Err(msg) => {
                    self.d.at(v.span(), msg);
                    defaults.chunk_size
                }
            },
        };
        let min_rate = match &raw.min_rate {
            None => defaults.min_rate,
            Some(v) => match self::chunk_size(v.get_ref()) {
                Ok(n) => n,
                Err(_) => {
                    self.d.at(
                        v.span(),
                        "min_rate must be a size per second, e.g. \"10KiB\" or \"1MB\", or \"0\" to turn the check off",
                    );
                    defaults.min_rate
                }
            },
        };
        let token_realms = raw
            .token_realms
            .iter()
            .flatten()
            .filter_map(|h| {
                let host = h.get_ref().trim().to_ascii_lowercase();
                match host_problem(&host) {
                    None => Some(host),
                    Some(problem) => {
                        self.d.at(
                            h.span(),
                            format!("token_realms entry {host:?} {problem}; write a host, e.g. \"auth.example.com\""),
                        );
                        None
                    }
                }
            })
            .collect();
        RegistryOptions {
            username: raw.username.map(Spanned::into_inner),
            password,
            docker_config,
            ca_file,
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
            plain_http: raw.plain_http.unwrap_or(false),
            max_concurrent,
            requests_per_second,
            chunk_size,
            ratelimit_min: self.at_least(raw.ratelimit_min.as_ref(), "ratelimit_min", 0, 0) as u64,
            read_timeout: raw
                .read_timeout
                .as_ref()
                .and_then(|s| self.duration(s, "read_timeout"))
                .filter(|d| !d.is_zero())
                .unwrap_or(defaults.read_timeout),
            min_rate,
            max_pages: self.at_least(raw.max_pages.as_ref(), "max_pages", 1, defaults.max_pages),
            token_realms,
            hints: Default::default(),
        }
    }

    /// A path that must name a readable file now (rather than fail at the first sync).
    pub(super) fn existing_file(&mut self, s: &Str, key: &str) -> PathBuf {
        let path = self.path(s.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self
                .d
                .at(s.span(), format!("{key} {} is not a file", path.display())),
            Err(e) => self.d.at(
                s.span(),
                format!("cannot read {key} {}: {e}", path.display()),
            ),
        }
        path
    }
}

/// What is wrong with a `[registries."..."]` key, if anything.
fn host_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        Some("is empty")
    } else if host.contains("://") {
        Some("is a URL, not a host")
    } else if host.contains('/') {
        Some("contains a path")
    } else if host.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else {
        None
    }
}

/// A chunk size: bytes as an integer, or a size string as `bytesize` reads
/// it ("16MiB", "512 KiB", "1GB"; "0" = one monolithic PUT).
pub(super) fn chunk_size(v: &toml::Value) -> Result<u64, String> {
    const HOW: &str =
        "write e.g. \"16MiB\", \"512KiB\", \"1GB\", or \"0\" for one monolithic upload";
    match v {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("chunk_size = {n} is negative; {HOW}"))
        }
        toml::Value::String(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| format!("chunk_size = {s:?} is not a size; {HOW}")),
        other => Err(format!(
            "chunk_size must be a string or an integer, not a {}; {HOW}",
            other.type_str()
        )),
    }
}
