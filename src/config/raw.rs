//! The file as written: serde structs that only check key names and value
//! types. Everything is optional and spanned so that validation (in
//! `validate.rs`) can point at the exact key or value that is wrong, and can
//! word its own "missing key" errors.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type Str = Spanned<String>;
pub(crate) type Int = Spanned<i64>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDaemon {
    pub state_dir: Option<Str>,
    pub listen: Option<Str>,
    pub max_concurrent_transfers: Option<Int>,
    pub log_format: Option<Str>,
    pub webhook_token_file: Option<Str>,
    pub shard: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRegistry {
    pub username: Option<Str>,
    pub password_file: Option<Str>,
    pub password_env: Option<Str>,
    pub password_credential: Option<Str>,
    pub docker_config: Option<Str>,
    pub ca_file: Option<Str>,
    pub insecure_skip_verify: Option<bool>,
    pub plain_http: Option<bool>,
    pub max_concurrent: Option<Int>,
    pub requests_per_second: Option<Spanned<f64>>,
    /// A size string ("16MiB") or an integer number of bytes.
    pub chunk_size: Option<Spanned<toml::Value>>,
    pub ratelimit_min: Option<Int>,
    pub read_timeout: Option<Str>,
    /// A size per second ("10KiB"), or "0" to turn the check off.
    pub min_rate: Option<Spanned<toml::Value>>,
    pub max_pages: Option<Int>,
    pub token_realms: Option<Vec<Str>>,
    /// Signatures every rule reading from this registry requires.
    pub verify: Option<Spanned<RawVerify>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTags {
    pub include: Option<Vec<Str>>,
    pub exclude: Option<Vec<Str>>,
    pub semver: Option<Str>,
    pub latest: Option<Int>,
}

/// The keys a rule may inherit from `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDefaults {
    pub schedule: Option<Str>,
    pub tags: Option<RawTags>,
    pub platforms: Option<Vec<Str>>,
    pub referrers: Option<bool>,
    pub referrers_artifact_types: Option<Vec<Str>>,
    pub immutable: Option<bool>,
    pub untagged: Option<bool>,
    pub foreign_layers: Option<bool>,
}

/// Keys of `[defaults]` that belong to one rule only.
pub(crate) const RULE_ONLY_KEYS: &[&str] = &["name", "source", "targets", "retention", "verify"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRule {
    pub name: Option<Str>,
    pub source: Option<Str>,
    pub targets: Option<Spanned<Vec<Str>>>,
    pub retention: Option<Spanned<RawRetention>>,
    pub verify: Option<Spanned<RawVerify>>,
    // The same keys as `RawDefaults` (serde's `flatten` does not combine with
    // `deny_unknown_fields`, so they are repeated).
    pub schedule: Option<Str>,
    pub tags: Option<RawTags>,
    pub platforms: Option<Vec<Str>>,
    pub referrers: Option<bool>,
    pub referrers_artifact_types: Option<Vec<Str>>,
    pub immutable: Option<bool>,
    pub untagged: Option<bool>,
    pub foreign_layers: Option<bool>,
}

impl RawRule {
    /// Splits off the keys that `[defaults]` may also set.
    pub(crate) fn take_common(&mut self) -> RawDefaults {
        RawDefaults {
            schedule: self.schedule.take(),
            tags: self.tags.take(),
            platforms: self.platforms.take(),
            referrers: self.referrers.take(),
            referrers_artifact_types: self.referrers_artifact_types.take(),
            immutable: self.immutable.take(),
            untagged: self.untagged.take(),
            foreign_layers: self.foreign_layers.take(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRetention {
    #[serde(rename = "match")]
    pub match_tags: Option<Vec<Str>>,
    pub keep_last: Option<Int>,
    pub order_by: Option<Str>,
    pub older_than: Option<Str>,
    pub protect: Option<Vec<Str>>,
    pub untagged_older_than: Option<Str>,
    pub delete_removed_at_source: Option<Spanned<bool>>,
    pub max_deletions_per_run: Option<Int>,
    /// Says that `keep_last = 0` without `older_than` (every matched tag
    /// deleted) is meant.
    pub delete_all_matched: Option<bool>,
}

/// `[rule.verify]` and `[registries."host".verify]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawVerify {
    pub sigstore_keys: Option<Vec<Str>>,
    pub require: Option<Str>,
    pub docker_reference: Option<Str>,
    pub keyless: Option<Spanned<RawKeyless>>,
}

/// `keyless = { trusted_root, issuer, identity }` of `[rule.verify]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawKeyless {
    pub trusted_root: Str,
    pub issuer: Str,
    pub identity: Str,
}

/// Every key of the file as docs/configuration.md documents it: (section,
/// key), the section as its heading names it (`""` for the top level) and a
/// nested table's keys dotted (`tags.include`). `[defaults]` takes the rule
/// keys outside `RULE_ONLY_KEYS`.
///
/// `keys_tests.rs` checks this list both ways against the structs above
/// (serde's own list of each struct's fields) and against the doc's
/// tables. A new key: add its field, a line here and a row in the doc's
/// table. A new section (say `[rule.verify]` with a `RawVerify`): add its
/// lines here, its table under a `### \`[rule.verify]\`` heading, and one
/// line to `keys_tests::schema`.
#[cfg(test)]
pub(crate) const DOCUMENTED_KEYS: &[(&str, &str)] = &[
    ("", "version"),
    ("daemon", "state_dir"),
    ("daemon", "listen"),
    ("daemon", "max_concurrent_transfers"),
    ("daemon", "log_format"),
    ("daemon", "webhook_token_file"),
    ("daemon", "shard"),
    ("registries", "username"),
    ("registries", "password_file"),
    ("registries", "password_env"),
    ("registries", "password_credential"),
    ("registries", "docker_config"),
    ("registries", "ca_file"),
    ("registries", "insecure_skip_verify"),
    ("registries", "plain_http"),
    ("registries", "max_concurrent"),
    ("registries", "requests_per_second"),
    ("registries", "chunk_size"),
    ("registries", "ratelimit_min"),
    ("registries", "read_timeout"),
    ("registries", "min_rate"),
    ("registries", "max_pages"),
    ("registries", "token_realms"),
    ("registries", "verify"),
    ("rule", "name"),
    ("rule", "source"),
    ("rule", "targets"),
    ("rule", "schedule"),
    ("rule", "tags.include"),
    ("rule", "tags.exclude"),
    ("rule", "tags.semver"),
    ("rule", "tags.latest"),
    ("rule", "platforms"),
    ("rule", "referrers"),
    ("rule", "referrers_artifact_types"),
    ("rule", "immutable"),
    ("rule", "untagged"),
    ("rule", "foreign_layers"),
    ("rule.retention", "match"),
    ("rule.retention", "keep_last"),
    ("rule.retention", "order_by"),
    ("rule.retention", "older_than"),
    ("rule.retention", "protect"),
    ("rule.retention", "untagged_older_than"),
    ("rule.retention", "delete_removed_at_source"),
    ("rule.retention", "max_deletions_per_run"),
    ("rule.retention", "delete_all_matched"),
    ("rule.verify", "sigstore_keys"),
    ("rule.verify", "require"),
    ("rule.verify", "docker_reference"),
    ("rule.verify", "keyless.trusted_root"),
    ("rule.verify", "keyless.issuer"),
    ("rule.verify", "keyless.identity"),
];
