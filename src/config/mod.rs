//! The TOML configuration file (SPEC section 3), validated completely before
//! anything is contacted. `load` turns a file into a [`Config`] or into a list
//! of errors, each with file, line and column.

mod error;
mod raw;
mod schedule;
mod validate;

#[cfg(test)]
mod keys_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ops;

pub use error::{ConfigError, Diagnostic};
pub use validate::{
    Secrets, check_issuer, identity_regex, load, load_with, parse, read_trusted_root,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::oci::Platform;
use crate::reference::RepoSpec;
use crate::transport::RegistryOptions;

/// Where the configuration is read from when `-c` is not given:
/// `$REGKEEPER_CONFIG`, else `/etc/regkeeper/config.toml`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("REGKEEPER_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/etc/regkeeper/config.toml"),
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub daemon: Daemon,
    /// Per registry host, as written in references (e.g. `docker.io`, `127.0.0.1:5000`).
    pub registries: BTreeMap<String, RegistryOptions>,
    /// In file order; names are unique.
    pub rules: Vec<Rule>,
    /// What is not wrong enough to refuse the file (e.g. a world-readable
    /// password file); commands print them, the daemon logs them.
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Daemon {
    /// Absolute (relative paths in the file start at its directory).
    pub state_dir: PathBuf,
    /// Whether the file names `state_dir` (else it is the default, which the
    /// daemon says at start-up).
    pub state_dir_given: bool,
    /// `None` when `listen = ""`.
    pub listen: Option<SocketAddr>,
    pub max_concurrent_transfers: usize,
    pub log_format: LogFormat,
    /// `daemon.webhook_token_file`, read: the bearer token that event and
    /// trigger requests must carry; `None`: those paths answer 404.
    pub webhook_token: Option<crate::secret::Secret>,
    /// `daemon.shard` (`K/N` or `auto`); `--shard` and `REGKEEPER_SHARD` override it.
    pub shard: Option<crate::shard::ShardSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// `[a-z0-9_-]+`, unique.
    pub name: String,
    /// `None`: a cleanup-only rule.
    pub source: Option<RepoSpec>,
    pub targets: Vec<RepoSpec>,
    pub schedule: Schedule,
    pub tags: TagFilter,
    /// Empty = every platform.
    pub platforms: Vec<Platform>,
    pub referrers: bool,
    /// Only referrers of these artifact types are copied; empty = all.
    pub referrers_artifact_types: Vec<String>,
    pub immutable: bool,
    /// An `oci:` source's untagged top-level manifests (index.json entries
    /// without a ref name) are copied too, by digest.
    pub untagged: bool,
    /// Non-distributable (foreign) layers are copied where the source
    /// holds them; by default they are not, and never fetched from `urls`.
    pub foreign_layers: bool,
    pub retention: Option<Retention>,
    /// `[rule.verify]`, or the source registry's `verify`: only images
    /// signed as it says are copied.
    pub verify: Option<std::sync::Arc<crate::verify::VerifyPolicy>>,
}

#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (5-field input gets a leading seconds field of 0),
    /// or `@hourly`-style shorthand. `text` is as the user wrote it.
    Cron {
        schedule: Box<cron::Schedule>,
        text: String,
    },
    /// `@every 10m`.
    Every(Duration),
}

#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    pub semver: Option<semver::VersionReq>,
    pub latest: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderBy {
    Semver,
    Created,
    FirstSeen,
}

#[derive(Debug, Clone)]
pub struct Retention {
    pub match_tags: Vec<Regex>,
    pub keep_last: Option<usize>,
    pub order_by: OrderBy,
    pub older_than: Option<Duration>,
    pub protect: Vec<Regex>,
    pub untagged_older_than: Option<Duration>,
    pub delete_removed_at_source: bool,
    pub max_deletions_per_run: usize,
}
