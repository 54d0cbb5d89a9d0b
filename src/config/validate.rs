//! Turns the text of a configuration file into a [`Config`], or into every
//! problem found in it.
//!
//! The document is parsed once into spanned TOML values; then each section
//! (`[daemon]`, each `[registries."host"]`, each `[[rule]]`, ...) is
//! deserialized on its own, so that a problem in one section does not hide
//! the problems in the others. Within a section, a key that serde rejects
//! (unknown, or of the wrong type) is reported, dropped and the section tried
//! again, so several such keys are all reported too.

mod paths;
mod registry;
mod retention;
mod rule;
mod secrets;
mod verify;

pub use secrets::Secrets;
pub use verify::{check_issuer, identity_regex, read_trusted_root};

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::{ConfigError, Diags};
use super::raw::{Int, RULE_ONLY_KEYS, RawDaemon, RawDefaults, RawTags, Str};
use super::schedule::parse_schedule;
use super::{Config, Daemon, LogFormat, Schedule};
use crate::oci::Platform;
use crate::reference::{Location, RepoSpec};

const TOP_KEYS: &[&str] = &["version", "daemon", "defaults", "registries", "rule"];
const DEFAULT_STATE_DIR: &str = "/var/lib/regkeeper";
const DEFAULT_LISTEN: &str = "127.0.0.1:9469";
const DEFAULT_SCHEDULE: Duration = Duration::from_secs(15 * 60);
const DEFAULT_MAX_DELETIONS: usize = 50;

/// Reads and validates the configuration file at `path`, secrets included.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, Secrets::All)
}

/// Reads and validates the configuration file at `path`, reading the
/// secrets `secrets` says.
pub fn load_with(path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::whole_file(
            path,
            format!(
                "cannot read the configuration file: {e} (choose another file with -c FILE or $REGKEEPER_CONFIG)"
            ),
        )
    })?;
    parse_with(&text, path, secrets, credentials_dir())
}

/// systemd's `$CREDENTIALS_DIRECTORY` (set for units with `LoadCredential=`).
fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}

/// Validates configuration text; `path` is used in diagnostics and kept in
/// [`Config::path`]. Secrets named in it are read; relative paths in it are
/// relative to the directory of `path`, and `~/` means `$HOME`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, Secrets::All, credentials_dir())
}

/// `parse` with the secrets and credentials directory given (the process
/// environment cannot be changed safely in tests).
#[cfg(test)]
pub(crate) fn parse_for_test(
    text: &str,
    secrets: Secrets,
    credentials: Option<&Path>,
) -> Result<Config, ConfigError> {
    parse_with(
        text,
        Path::new("test.toml"),
        secrets,
        credentials.map(Path::to_path_buf),
    )
}

fn parse_with(
    text: &str,
    path: &Path,
    secrets: Secrets,
    credentials: Option<PathBuf>,
) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::whole_file(
            path,
            "the configuration file is empty; start from config.example.toml (it needs at least version = 1 and one [[rule]])",
        ));
    }
    let mut diags = Diags::new(path, text);
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // The parser recovers, but what it makes of a broken document is a
        // guess; validating that guess would add confusing follow-up errors.
        for e in errors {
            diags.at(
                e.span().unwrap_or(0..0),
                format!("TOML syntax error: {}", e.message()),
            );
        }
        return Err(diags.into_error());
    }
    let mut config = Loader {
        d: &mut diags,
        base: paths::base_dir(path),
        secrets,
        credentials,
        registry_verify: Default::default(),
    }
    .root(root.into_inner(), path);
    if diags.is_empty() {
        config.warnings = diags.take_warnings();
        Ok(config)
    } else {
        Err(diags.into_error())
    }
}

/// The per-rule keys that `[defaults]` may also set, validated.
#[derive(Default)]
struct Common {
    schedule: Option<Schedule>,
    include: Option<Vec<Regex>>,
    exclude: Option<Vec<Regex>>,
    semver: Option<semver::VersionReq>,
    latest: Option<usize>,
    platforms: Option<Vec<Platform>>,
    referrers: Option<bool>,
    referrers_artifact_types: Option<Vec<String>>,
    immutable: Option<bool>,
    untagged: Option<bool>,
    foreign_layers: Option<bool>,
}

impl Common {
    /// Each key the rule does not set comes from `defaults`.
    fn or(self, defaults: &Common) -> Common {
        Common {
            schedule: self.schedule.or_else(|| defaults.schedule.clone()),
            include: self.include.or_else(|| defaults.include.clone()),
            exclude: self.exclude.or_else(|| defaults.exclude.clone()),
            semver: self.semver.or_else(|| defaults.semver.clone()),
            latest: self.latest.or(defaults.latest),
            platforms: self.platforms.or_else(|| defaults.platforms.clone()),
            referrers: self.referrers.or(defaults.referrers),
            referrers_artifact_types: self
                .referrers_artifact_types
                .or_else(|| defaults.referrers_artifact_types.clone()),
            immutable: self.immutable.or(defaults.immutable),
            untagged: self.untagged.or(defaults.untagged),
            foreign_layers: self.foreign_layers.or(defaults.foreign_layers),
        }
    }
}

/// Validates section by section. Every check reports its problem and goes on
/// with a stand-in value (the default, or nothing), so that one mistake does
/// not stop the rest of the file from being checked; `parse` throws the
/// result away when anything was reported.
struct Loader<'a, 'b> {
    d: &'a mut Diags<'b>,
    /// Where relative paths start: the configuration file's directory.
    base: PathBuf,
    secrets: Secrets,
    /// `$CREDENTIALS_DIRECTORY`, for `password_credential`.
    credentials: Option<PathBuf>,
    /// `[registries."host".verify]`, for the rules reading from that host.
    registry_verify:
        std::collections::BTreeMap<String, std::sync::Arc<crate::verify::VerifyPolicy>>,
}

impl Loader<'_, '_> {
    fn root(&mut self, table: DeTable<'_>, path: &Path) -> Config {
        let mut daemon = None;
        let mut defaults = None;
        let mut registries = None;
        let mut rules = None;
        let mut version = false;
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "version" => {
                    version = true;
                    self.version(value);
                }
                "daemon" => daemon = self.section::<RawDaemon>(value, "[daemon]").0,
                "defaults" => defaults = self.section::<RawDefaults>(value, "[defaults]").0,
                "registries" => registries = Some(value),
                "rule" => rules = Some(value),
                other => {
                    let hint = hint(other, TOP_KEYS);
                    self.d.at(
                        key.span(),
                        format!("unknown key `{other}` at the top level{hint}"),
                    );
                }
            }
        }
        if !version {
            self.d.at(
                0..0,
                "the file has no `version`; add version = 1 as its first line",
            );
        }
        let daemon = self.daemon(daemon);
        let defaults = self.common(defaults.unwrap_or_default());
        let registries = registries.map(|v| self.registries(v)).unwrap_or_default();
        let rules = rules.map(|v| self.rules(v, &defaults)).unwrap_or_default();
        Config {
            path: path.to_path_buf(),
            daemon,
            registries,
            rules,
            warnings: Vec::new(),
        }
    }

    /// A path as written in the file, resolved (see `paths`).
    fn path(&self, s: &str) -> PathBuf {
        paths::resolve(&self.base, s)
    }

    /// A source or target; a relative `oci:` directory starts at the file's
    /// directory.
    fn repo_spec(&self, s: &str) -> Result<RepoSpec, crate::reference::ReferenceError> {
        let mut spec = RepoSpec::parse(s)?;
        if let Location::Layout { path } = &spec.location {
            let resolved = self.path(&path.to_string_lossy());
            spec.location = Location::Layout { path: resolved };
        }
        Ok(spec)
    }

    /// Deserializes one section. Each key serde rejects is reported and
    /// removed, then the section is tried again. Returns the section (when it
    /// could be read at all) and the dotted keys that were meant to be set
    /// but were dropped (a wrong type, or the likely intent of a misspelt
    /// key): a "missing key" complaint about those would only be noise.
    fn section<T: DeserializeOwned>(
        &mut self,
        mut value: Spanned<DeValue<'_>>,
        section: &str,
    ) -> (Option<T>, Vec<String>) {
        let mut dropped = Vec::new();
        // Each round removes one key, so this ends; the bound is a safety net.
        for _ in 0..10_000 {
            match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(t) => return (Some(t), dropped),
                Err(e) => {
                    let span = e.span().unwrap_or_else(|| value.span());
                    let removed = remove_at(&mut value, span.start);
                    dropped.extend(self.serde_error(&e, span, removed.as_deref(), section));
                    if removed.is_none() {
                        return (None, dropped);
                    }
                }
            }
        }
        (None, dropped)
    }

    fn serde_error(
        &mut self,
        e: &toml::de::Error,
        span: Range<usize>,
        key_path: Option<&[String]>,
        section: &str,
    ) -> Option<String> {
        let msg = e.message();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let full = key_path.map_or_else(|| name.to_string(), |p| p.join("."));
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            // Hints name keys with the same dotted prefix as the unknown one.
            let prefix = full.strip_suffix(name).unwrap_or("");
            let qualified: Vec<String> =
                candidates.iter().map(|c| format!("{prefix}{c}")).collect();
            let qualified: Vec<&str> = qualified.iter().map(String::as_str).collect();
            let meant = closest(&full, &qualified).map(str::to_string);
            let hint = if section == "[defaults]" && RULE_ONLY_KEYS.contains(&name) {
                format!("; `{name}` belongs to each [[rule]], it cannot have a default")
            } else {
                hint(&full, &qualified)
            };
            self.d
                .at(span, format!("unknown key `{full}` in {section}{hint}"));
            return meant;
        }
        let msg = msg
            .replace("expected i64", "expected an integer")
            .replace("expected f64", "expected a number")
            .replace("a sequence", "an array");
        match key_path {
            Some(p) => {
                let key = p.join(".");
                self.d.at(span, format!("`{key}` in {section}: {msg}"));
                Some(key)
            }
            None => {
                self.d.at(span, format!("{section}: {msg}"));
                None
            }
        }
    }

    fn version(&mut self, value: Spanned<DeValue<'_>>) {
        let (v, _) = self.section::<Int>(value, "`version`");
        if let Some(v) = v
            && *v.get_ref() != 1
        {
            self.d.at(
                v.span(),
                format!(
                    "unsupported configuration version {}; this regkeeper reads version 1",
                    v.get_ref()
                ),
            );
        }
    }

    fn daemon(&mut self, raw: Option<RawDaemon>) -> Daemon {
        let raw = raw.unwrap_or(RawDaemon {
            state_dir: None,
            listen: None,
            max_concurrent_transfers: None,
            log_format: None,
            webhook_token_file: None,
            shard: None,
        });
        let state_dir = match &raw.state_dir {
            Some(s) if s.get_ref().trim().is_empty() => {
                self.d.at(
                    s.span(),
                    "state_dir is empty; name a directory (default /var/lib/regkeeper)",
                );
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(s) => self.path(s.get_ref()),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let state_dir_given = raw.state_dir.is_some();
        let listen = match &raw.listen {
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => match s.get_ref().trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.d.at(
                        s.span(),
                        format!(
                            "listen = {:?} is not an IP address and port such as \"127.0.0.1:9469\" or \"[::]:9469\" \
                             (host names are not accepted); \"\" disables the metrics endpoint",
                            s.get_ref()
                        ),
                    );
                    None
                }
            },
            None => Some(DEFAULT_LISTEN.parse().expect("default listen address")),
        };
        let max_concurrent_transfers = self.at_least(
            raw.max_concurrent_transfers.as_ref(),
            "max_concurrent_transfers",
            1,
            8,
        );
        let log_format = match &raw.log_format {
            None => LogFormat::Text,
            Some(s) => match s.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.d.at(
                        s.span(),
                        format!("log_format = {other:?} is not known; use \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
            },
        };
        let webhook_token = raw.webhook_token_file.as_ref().and_then(|f| {
            if listen.is_none() {
                self.d.at(
                    f.span(),
                    "webhook_token_file needs the listen address (listen = \"\" disables it); set listen or drop webhook_token_file",
                );
            }
            self.secret_file(f, "webhook_token_file")
        });
        let shard = raw.shard.as_ref().and_then(|s| {
            crate::shard::ShardSpec::parse(s.get_ref())
                .map_err(|e| self.d.at(s.span(), format!("daemon.shard: {e}")))
                .ok()
        });
        Daemon {
            state_dir,
            state_dir_given,
            listen,
            max_concurrent_transfers,
            log_format,
            webhook_token,
            shard,
        }
    }

    /// An integer setting with a lower bound, or its default when absent.
    fn at_least(&mut self, v: Option<&Int>, key: &str, min: i64, default: usize) -> usize {
        match v {
            None => default,
            Some(v) if *v.get_ref() < min => {
                self.d.at(
                    v.span(),
                    format!(
                        "{key} = {} is too small; it must be at least {min}",
                        v.get_ref()
                    ),
                );
                default
            }
            Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
        }
    }

    fn common(&mut self, raw: RawDefaults) -> Common {
        let schedule = raw.schedule.as_ref().and_then(|s| {
            parse_schedule(s.get_ref())
                .map_err(|msg| self.d.at(s.span(), format!("schedule: {msg}")))
                .ok()
        });
        let tags = raw.tags.unwrap_or_default();
        let RawTags {
            include,
            exclude,
            semver,
            latest,
        } = tags;
        let include = include.map(|l| self.regexes(&l, "tags.include"));
        let exclude = exclude.map(|l| self.regexes(&l, "tags.exclude"));
        let semver = semver.and_then(|s| match semver::VersionReq::parse(s.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                self.d.at(
                    s.span(),
                    format!(
                        "tags.semver = {:?} is not a version requirement: {e}; write e.g. \">=3.18\" or \"^1.2, <1.5\"",
                        s.get_ref()
                    ),
                );
                None
            }
        });
        let latest = latest.map(|n| self.at_least(Some(&n), "tags.latest", 1, 1));
        let platforms = raw.platforms.map(|list| {
            list.iter()
                .filter_map(|p| match Platform::parse(p.get_ref()) {
                    Some(pl) if pl.variant.as_deref() != Some("") => Some(pl),
                    _ => {
                        self.d.at(
                            p.span(),
                            format!(
                                "platform {:?} is not os/arch[/variant], e.g. \"linux/amd64\" or \"linux/arm/v7\"",
                                p.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect()
        });
        Common {
            schedule,
            include,
            exclude,
            semver,
            latest,
            platforms,
            referrers: raw.referrers,
            referrers_artifact_types: raw
                .referrers_artifact_types
                .map(|l| l.into_iter().map(|t| t.into_inner()).collect()),
            immutable: raw.immutable,
            untagged: raw.untagged,
            foreign_layers: raw.foreign_layers,
        }
    }

    fn regexes(&mut self, list: &[Str], key: &str) -> Vec<Regex> {
        list.iter()
            .filter_map(|s| match Regex::new(s.get_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.d.at(
                        s.span(),
                        format!(
                            "{key}: invalid regular expression {:?}: {}",
                            s.get_ref(),
                            regex_reason(&e)
                        ),
                    );
                    None
                }
            })
            .collect()
    }
}

/// Removes from a table the key that the error at byte `at` is about (the
/// deepest one whose key or value contains it) and returns its dotted path.
fn remove_at(value: &mut Spanned<DeValue<'_>>, at: usize) -> Option<Vec<String>> {
    match value.get_mut() {
        DeValue::Table(table) => remove_in_table(table, at),
        _ => None,
    }
}

fn remove_in_table(table: &mut DeTable<'_>, at: usize) -> Option<Vec<String>> {
    let mut found = None;
    for (k, v) in table.iter_mut() {
        if k.span().contains(&at) {
            found = Some(k.clone());
            break;
        }
        if let DeValue::Table(inner) = v.get_mut()
            && let Some(mut path) = remove_in_table(inner, at)
        {
            path.insert(0, k.get_ref().to_string());
            return Some(path);
        }
        if v.span().contains(&at) {
            found = Some(k.clone());
            break;
        }
    }
    let key = found?;
    table.remove(&key);
    Some(vec![key.into_inner().into_owned()])
}

/// "; did you mean `x`?" for a close candidate, else the list of valid keys.
fn hint(name: &str, candidates: &[&str]) -> String {
    match closest(name, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None if candidates.is_empty() => String::new(),
        None => format!("; valid keys here: {}", candidates.join(", ")),
    }
}

/// The candidate a misspelt `name` most likely meant, if any is close enough.
fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(name, c), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 2.max(name.chars().count() / 3))
        .map(|(_, c)| c)
}

/// The one-line reason from a regex error (its Display spans several lines
/// to draw a caret under the problem).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(|| text.replace('\n', " "), str::to_string)
}
