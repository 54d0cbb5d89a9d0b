//! Static partitioning of the work across N instances (SPEC section 11),
//! without any coordination: each instance computes from the rule names (and
//! repository names) alone which share is its own.
//!
//! The assignment is rendezvous (highest-random-weight) hashing. For a key
//! and each shard `k` in `0..N`, the weight is the first 8 bytes, read as a
//! big-endian `u64`, of
//!
//! ```text
//! SHA-256( key ‖ 0x00 ‖ decimal(k) )
//! ```
//!
//! and the key belongs to the shard with the highest weight (a tie, which
//! needs a 64-bit collision, goes to the lower `k`). The key of a rule is its
//! name; the key of a repository of a `/*` rule is `rule ‖ 0x00 ‖ repository`,
//! the repository being the path relative to the rule's prefix (the same
//! under the source and every target). SHA-256 is fixed by its standard, so
//! the assignment never changes between versions or machines; std's
//! `DefaultHasher` makes no such promise. Growing N to N+1 moves only the
//! keys the new shard wins, about 1/(N+1) of them, and each moves to the new
//! shard.
//!
//! A rule whose source (or, for a cleanup-only rule, a target) ends in `/*`
//! is *spread*: every shard runs it, each over its own repositories, so one
//! large namespace is shared out too. Its fixed (non-`/*`) targets, if a
//! cleanup-only rule has any, belong to the shard that owns the rule name.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::Rule;

/// Environment variable naming this instance's shard (`K/N` or `auto`).
pub const SHARD_ENV: &str = "REGKEEPER_SHARD";
/// Environment variable giving N for `auto`.
pub const SHARDS_ENV: &str = "REGKEEPER_SHARDS";

/// Shard `index` of `count` (0-based: `0/3`, `1/3`, `2/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// How a shard is configured: fixed, or derived from the pod's hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    /// K from a StatefulSet hostname `name-K`, N from `REGKEEPER_SHARDS`.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0:?} is not K/N (e.g. \"0/3\") or \"auto\"")]
    Syntax(String),
    #[error("shard {0:?}: N must be at least 1")]
    NoShards(String),
    #[error("shard {0:?}: K must be below N (shards are numbered 0 to N-1)")]
    OutOfRange(String),
    #[error(
        "shard \"auto\": the hostname {0:?} does not end in -K (a StatefulSet pod is named like regkeeper-0); set --shard K/N instead"
    )]
    NoOrdinal(String),
    #[error("shard \"auto\": the hostname cannot be read")]
    NoHostname,
    #[error("shard \"auto\": {SHARDS_ENV} (the number of shards, e.g. 3) is not set")]
    NoCount,
    #[error("shard \"auto\": {SHARDS_ENV}={0:?} is not a whole number of at least 1")]
    BadCount(String),
}

impl Shard {
    /// One instance doing everything.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// `K/N`.
    pub fn parse(text: &str) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(text.to_string());
        let (k, n) = text.trim().split_once('/').ok_or_else(syntax)?;
        let index: u32 = parse_number(k).ok_or_else(syntax)?;
        let count: u32 = parse_number(n).ok_or_else(syntax)?;
        Shard::new(index, count, text)
    }

    fn new(index: u32, count: u32, text: &str) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::NoShards(text.to_string()));
        }
        if index >= count {
            return Err(ShardError::OutOfRange(text.to_string()));
        }
        Ok(Shard { index, count })
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether this instance runs `rule` at all: a spread rule runs on every
    /// shard (over that shard's repositories), any other on its owner only.
    pub fn runs_rule(&self, rule: &Rule) -> bool {
        spread(rule) || self.owns_rule(&rule.name)
    }

    /// Whether this shard owns the rule name.
    pub fn owns_rule(&self, rule: &str) -> bool {
        owner(rule.as_bytes(), self.count) == self.index
    }

    /// Whether this shard owns `repository` (relative to the prefix) of the
    /// `/*` rule `rule`.
    pub fn owns_repository(&self, rule: &str, repository: &str) -> bool {
        owner(&repo_key(rule, repository), self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl ShardSpec {
    /// `K/N` or `auto`.
    pub fn parse(text: &str) -> Result<ShardSpec, ShardError> {
        if text.trim() == "auto" {
            return Ok(ShardSpec::Auto);
        }
        Shard::parse(text).map(ShardSpec::Fixed)
    }

    /// The shard this spec names. `hostname` and `shards` (the value of
    /// `REGKEEPER_SHARDS`) are only used by `auto`.
    pub fn resolve(
        self,
        hostname: Option<&str>,
        shards: Option<&str>,
    ) -> Result<Shard, ShardError> {
        let ShardSpec::Fixed(s) = self else {
            let host = hostname.ok_or(ShardError::NoHostname)?;
            let index = ordinal(host).ok_or_else(|| ShardError::NoOrdinal(host.to_string()))?;
            let n = shards.ok_or(ShardError::NoCount)?;
            let count = parse_number(n)
                .filter(|&c| c > 0)
                .ok_or_else(|| ShardError::BadCount(n.to_string()))?;
            return Shard::new(index, count, &format!("{index}/{count} (from {host})"));
        };
        Ok(s)
    }
}

/// Where an instance's shard comes from, highest precedence first.
#[derive(Debug, Default, Clone)]
pub struct ShardSources<'a> {
    /// `--shard`.
    pub flag: Option<&'a str>,
    /// `REGKEEPER_SHARD`.
    pub env: Option<&'a str>,
    /// `daemon.shard` (already parsed by config validation).
    pub config: Option<ShardSpec>,
    /// For `auto`: this machine's hostname.
    pub hostname: Option<&'a str>,
    /// For `auto`: `REGKEEPER_SHARDS`.
    pub shards: Option<&'a str>,
}

impl ShardSources<'_> {
    /// The effective shard: flag, else environment, else config, else the
    /// whole (1/1). An empty flag or variable counts as unset.
    pub fn resolve(&self) -> Result<Shard, ShardError> {
        let given = |v: Option<&str>| v.filter(|s| !s.trim().is_empty()).map(ShardSpec::parse);
        let spec = match given(self.flag).or_else(|| given(self.env)) {
            Some(spec) => spec?,
            None => match self.config {
                Some(spec) => spec,
                None => return Ok(Shard::WHOLE),
            },
        };
        spec.resolve(self.hostname, self.shards)
    }
}

/// Whether a rule is split by repository across all shards: its source is a
/// `/*` prefix, or (cleanup-only) one of its targets is.
pub fn spread(rule: &Rule) -> bool {
    match &rule.source {
        Some(s) => s.wildcard,
        None => rule.targets.iter().any(|t| t.wildcard),
    }
}

/// What this shard runs, for `plan` and `status`; `None` without sharding.
pub fn summary(shard: Shard, rules: &[Rule]) -> Option<String> {
    if shard.is_whole() {
        return None;
    }
    let (spread_rules, own): (Vec<&Rule>, Vec<&Rule>) = rules
        .iter()
        .filter(|r| shard.runs_rule(r))
        .partition(|r| spread(r));
    let names = |v: &[&Rule]| {
        v.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "shard {shard}: owns rules [{}]; its share of the repositories of [{}]",
        names(&own),
        names(&spread_rules)
    ))
}

/// The shard (of `count`) that owns `key`: the highest weight wins.
pub fn owner(key: &[u8], count: u32) -> u32 {
    let mut best = (0u64, 0u32);
    for k in 0..count.max(1) {
        let w = weight(key, k);
        // Strictly greater: a tie keeps the lower shard.
        if k == 0 || w > best.0 {
            best = (w, k);
        }
    }
    best.1
}

/// The rendezvous weight of `key` at shard `k` (see the module docs).
fn weight(key: &[u8], k: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(key);
    h.update([0u8]);
    h.update(k.to_string().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn repo_key(rule: &str, repository: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(rule.len() + 1 + repository.len());
    key.extend_from_slice(rule.as_bytes());
    key.push(0);
    key.extend_from_slice(repository.as_bytes());
    key
}

/// Digits only (no sign, no spaces inside).
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// K of a StatefulSet pod name `name-K` (the first DNS label of the hostname).
fn ordinal(hostname: &str) -> Option<u32> {
    let label = hostname.trim().split('.').next()?;
    let (name, k) = label.rsplit_once('-')?;
    if name.is_empty() {
        return None;
    }
    parse_number(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owners computed independently (Python's hashlib over the documented
    /// formula), for N = 1..=5. If these change, every deployment's
    /// assignment changes: that is a breaking change.
    #[test]
    fn fixed_vectors() {
        let rules: [(&str, [u32; 5]); 4] = [
            ("alpine", [0, 0, 2, 2, 2]),
            ("postgres", [0, 1, 1, 1, 1]),
            ("node", [0, 0, 0, 3, 3]),
            ("nginx", [0, 0, 0, 0, 0]),
        ];
        for (name, owners) in rules {
            for (n, want) in (1..=5).zip(owners) {
                assert_eq!(owner(name.as_bytes(), n), want, "{name} over {n}");
            }
        }
        assert_eq!(weight(b"alpine", 0), 0x825273da109d079b);
        let repos = [
            ("all", "team/app", [1, 1, 3]),
            ("mirror", "library/alpine", [0, 2, 2]),
        ];
        for (rule, repo, owners) in repos {
            for (n, want) in (2..=4).zip(owners) {
                let s = Shard {
                    index: want,
                    count: n,
                };
                assert!(s.owns_repository(rule, repo), "{rule} {repo} over {n}");
            }
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("rule-{i:04}")).collect()
    }

    /// 1,000 rule names over 3 shards: each gets within 25% of a third.
    #[test]
    fn balanced() {
        let mut counts = [0usize; 3];
        for name in names(1000) {
            counts[owner(name.as_bytes(), 3) as usize] += 1;
        }
        println!("1000 rule names over 3 shards: {counts:?}");
        let third = 1000.0 / 3.0;
        for c in counts {
            assert!((c as f64 - third).abs() <= 0.25 * third, "{counts:?}");
        }
        // Repositories of one rule spread too.
        let mut counts = [0usize; 3];
        for i in 0..1000 {
            let s = (0..3)
                .find(|&k| {
                    Shard { index: k, count: 3 }.owns_repository("all", &format!("team/r{i}"))
                })
                .unwrap();
            counts[s as usize] += 1;
        }
        println!("1000 repositories of one rule over 3 shards: {counts:?}");
        for c in counts {
            assert!((c as f64 - third).abs() <= 0.25 * third, "{counts:?}");
        }
    }

    /// Growing N to N+1 moves about 1/(N+1) of the keys, all to the new shard.
    #[test]
    fn growing_moves_about_one_in_n() {
        for n in [1u32, 2, 3, 5] {
            let all = names(1000);
            let moved: Vec<&String> = all
                .iter()
                .filter(|k| owner(k.as_bytes(), n) != owner(k.as_bytes(), n + 1))
                .collect();
            let share = moved.len() as f64 / 1000.0;
            println!(
                "{n} -> {} shards: {} of 1000 rule names move ({share:.3})",
                n + 1,
                moved.len()
            );
            let expected = 1.0 / f64::from(n + 1);
            assert!((share - expected).abs() < 0.25 * expected, "{n}: {share}");
            for k in moved {
                assert_eq!(owner(k.as_bytes(), n + 1), n, "{k} moved to the new shard");
            }
        }
    }

    #[test]
    fn exactly_one_owner() {
        for name in names(200) {
            let owners = (0..4)
                .filter(|&k| Shard { index: k, count: 4 }.owns_rule(&name))
                .count();
            assert_eq!(owners, 1, "{name}");
        }
    }

    #[test]
    fn parses_k_of_n_with_clear_errors() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(Shard::parse(" 0/1 "), Ok(Shard::WHOLE));
        assert_eq!(Shard::parse("1/3").unwrap().to_string(), "1/3");
        for bad in ["3", "a/3", "1/", "-1/3", "1/3/4", "", "1 /+3"] {
            let e = Shard::parse(bad).unwrap_err();
            assert!(matches!(e, ShardError::Syntax(_)), "{bad}: {e}");
            assert!(e.to_string().contains("K/N"), "{e}");
        }
        assert!(matches!(
            Shard::parse("3/3"),
            Err(ShardError::OutOfRange(_))
        ));
        assert!(matches!(Shard::parse("0/0"), Err(ShardError::NoShards(_))));
        assert_eq!(ShardSpec::parse("auto"), Ok(ShardSpec::Auto));
    }

    #[test]
    fn auto_reads_the_statefulset_ordinal() {
        let auto = |host: Option<&str>, n: Option<&str>| ShardSpec::Auto.resolve(host, n);
        assert_eq!(
            auto(Some("regkeeper-2"), Some("3")),
            Ok(Shard { index: 2, count: 3 })
        );
        assert_eq!(
            auto(
                Some("mirror-eu-10.regkeeper.ns.svc.cluster.local"),
                Some("12")
            ),
            Ok(Shard {
                index: 10,
                count: 12
            })
        );
        let e = auto(Some("regkeeper"), Some("3")).unwrap_err();
        assert_eq!(e, ShardError::NoOrdinal("regkeeper".into()));
        assert!(e.to_string().contains("does not end in -K"), "{e}");
        assert!(matches!(
            auto(Some("node-a"), Some("3")),
            Err(ShardError::NoOrdinal(_))
        ));
        assert!(matches!(
            auto(Some("-1"), Some("3")),
            Err(ShardError::NoOrdinal(_))
        ));
        assert_eq!(auto(Some("regkeeper-0"), None), Err(ShardError::NoCount));
        assert!(matches!(
            auto(Some("regkeeper-0"), Some("0")),
            Err(ShardError::BadCount(_))
        ));
        assert!(matches!(
            auto(Some("regkeeper-3"), Some("3")),
            Err(ShardError::OutOfRange(_))
        ));
        assert_eq!(auto(None, Some("3")), Err(ShardError::NoHostname));
    }

    #[test]
    fn flag_beats_env_beats_config() {
        let mut s = ShardSources {
            flag: Some("0/3"),
            env: Some("1/3"),
            config: Some(ShardSpec::Fixed(Shard { index: 2, count: 3 })),
            hostname: Some("regkeeper-1"),
            shards: Some("2"),
        };
        assert_eq!(s.resolve().unwrap().index, 0);
        s.flag = None;
        assert_eq!(s.resolve().unwrap().index, 1);
        s.env = Some("");
        assert_eq!(s.resolve().unwrap().index, 2);
        s.config = Some(ShardSpec::Auto);
        assert_eq!(s.resolve(), Ok(Shard { index: 1, count: 2 }));
        s.config = None;
        assert_eq!(s.resolve(), Ok(Shard::WHOLE));
        s.env = Some("x");
        assert!(
            s.resolve().is_err(),
            "a bad variable is an error, not ignored"
        );
    }

    #[test]
    fn config_key_is_validated_with_its_position() {
        let parse = |v: &str| {
            let text = format!("version = 1\n[daemon]\nshard = \"{v}\"\n");
            crate::config::parse(&text, std::path::Path::new("t.toml"))
        };
        assert_eq!(parse("auto").unwrap().daemon.shard, Some(ShardSpec::Auto));
        assert_eq!(
            parse("2/3").unwrap().daemon.shard,
            Some(ShardSpec::Fixed(Shard { index: 2, count: 3 }))
        );
        let e = parse("3/3").unwrap_err();
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.column), (3, 9), "{d:?}");
        assert!(
            d.message.contains("daemon.shard") && d.message.contains("below N"),
            "{d:?}"
        );
    }

    fn rule(source: Option<&str>, target: &str) -> Rule {
        let source = source
            .map(|s| format!("source = \"{s}\"\n"))
            .unwrap_or_default();
        let retention = "[rule.retention]\nmatch = ['.*']\nkeep_last = 1\n";
        let text = format!(
            "version = 1\n[[rule]]\nname = \"r\"\n{source}targets = [\"{target}\"]\n{retention}"
        );
        crate::config::parse(&text, std::path::Path::new("t.toml"))
            .expect("valid")
            .rules
            .remove(0)
    }

    #[test]
    fn spread_rules_run_everywhere_others_on_their_owner() {
        let plain = rule(Some("127.0.0.1:1/a"), "127.0.0.1:2/a");
        let wild = rule(Some("127.0.0.1:1/team/*"), "127.0.0.1:2/team/*");
        let cleanup = rule(None, "127.0.0.1:2/team/*");
        assert!(!spread(&plain) && spread(&wild) && spread(&cleanup));
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        assert_eq!(shards.iter().filter(|s| s.runs_rule(&plain)).count(), 1);
        assert!(
            shards
                .iter()
                .all(|s| s.runs_rule(&wild) && s.runs_rule(&cleanup))
        );
        assert!(Shard::WHOLE.runs_rule(&plain));
        let rules = [plain.clone(), wild.clone()];
        let owner = shards.iter().find(|s| s.owns_rule("r")).unwrap();
        let text = summary(*owner, &rules).unwrap();
        assert!(
            text.starts_with(&format!("shard {owner}: owns rules [r]")),
            "{text}"
        );
        assert!(summary(Shard::WHOLE, &rules).is_none());
        assert!(Shard::WHOLE.owns_repository("r", "anything"));
    }
}
