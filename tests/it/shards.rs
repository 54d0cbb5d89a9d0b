//! Shards (SPEC section 11) against real registries: 20 plain rules and one
//! `/*` rule over 20 repositories, split over three instances with separate
//! state directories. The registry's storage and skopeo judge what each
//! shard wrote; the access log counts retention's DELETEs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::*;

mod kubernetes;

const REPOS: usize = 20;
const SHARDS: u32 = 3;

fn name(i: usize) -> String {
    format!("r{i:02}")
}

/// A source with `ns/r00..r19` (tag 1.0.0, tiny images sharing a base).
struct Source {
    reg: Registry,
    /// Repository name (`r07`) -> digest of its 1.0.0.
    digests: BTreeMap<String, String>,
}

fn source() -> Source {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let mut digests = BTreeMap::new();
    for i in 0..REPOS {
        let n = name(i);
        let img = corpus.image(
            &n,
            &ImageSpec::new(&[layer("shards-base", 2000), layer(&n, 800)]).label("repo", &n),
        );
        corpus.push(&reg, &n, &format!("ns/{n}"), "1.0.0");
        digests.insert(n, img.digest);
    }
    Source { reg, digests }
}

/// Seeds `dst` with an old tag 0.0.1 in every `wild/rNN`, for retention to
/// delete (keep_last 1 keeps the mirrored 1.0.0).
fn seed_old_tags(dst: &Registry) {
    let mut corpus = Corpus::new();
    for i in 0..REPOS {
        let n = format!("{}-old", name(i));
        corpus.image(
            &n,
            &ImageSpec::new(&[layer("shards-base", 2000), layer(&n, 500)]),
        );
        corpus.push(dst, &n, &format!("wild/{}", name(i)), "0.0.1");
    }
}

/// 20 rules `rule-rNN` (ns/rNN -> single/rNN) and the `/*` rule `all`
/// (ns/* -> wild/*), with retention on `all` when asked.
fn rules(src: &Registry, dst: &Registry, schedule: &str, retention: bool) -> String {
    let mut out = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    for i in 0..REPOS {
        let n = name(i);
        out += &format!(
            "[[rule]]\nname = \"rule-{n}\"\nsource = \"{}/ns/{n}\"\ntargets = [\"{}/single/{n}\"]\nschedule = \"{schedule}\"\n",
            src.host(),
            dst.host()
        );
    }
    out += &format!(
        "[[rule]]\nname = \"all\"\nsource = \"{}/ns/*\"\ntargets = [\"{}/wild/*\"]\nschedule = \"{schedule}\"\n",
        src.host(),
        dst.host()
    );
    if retention {
        out += "[rule.retention]\nmatch = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\norder_by = \"semver\"\n";
    }
    out
}

/// Writes `dir/config.toml`: its own state dir, `listen`, then `body`.
fn write_config(dir: &Path, listen: &str, daemon_extra: &str, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"{listen}\"\n{daemon_extra}\n{body}",
        dir.join("state").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn regkeeper(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(regkeeper_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .env("REGKEEPER_LOG", "warn")
        .env_remove("REGKEEPER_SHARD")
        .envs(env.iter().copied())
        .output()
        .expect("run regkeeper");
    if !out.status.success() {
        eprintln!(
            "regkeeper {args:?} -> {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `single/rNN` and `wild/rNN` repositories that hold 1.0.0 in `dst`'s storage.
fn mirrored(dst: &Registry) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut single = BTreeSet::new();
    let mut wild = BTreeSet::new();
    for repo in dst.stored_repos() {
        let tag = dst
            .data_dir()
            .join("docker/registry/v2/repositories")
            .join(&repo)
            .join("_manifests/tags/1.0.0");
        if !tag.exists() {
            continue;
        }
        if let Some(n) = repo.strip_prefix("single/") {
            single.insert(n.to_string());
        } else if let Some(n) = repo.strip_prefix("wild/") {
            wild.insert(n.to_string());
        }
    }
    (single, wild)
}

/// Sets that are each non-empty, pairwise disjoint, and together all 20.
fn assert_partition(what: &str, parts: &[BTreeSet<String>]) {
    let mut union = BTreeSet::new();
    for (k, p) in parts.iter().enumerate() {
        assert!(!p.is_empty(), "{what}: shard {k} got nothing: {parts:?}");
        for n in p {
            assert!(
                union.insert(n.clone()),
                "{what}: {n} on two shards: {parts:?}"
            );
        }
    }
    let all: BTreeSet<String> = (0..REPOS).map(name).collect();
    assert_eq!(
        union, all,
        "{what}: the shards together cover every repository"
    );
}

/// How one shard is named on its command line and in its environment.
struct ShardRun<'a> {
    config: PathBuf,
    args: &'a [&'a str],
    env: Vec<(&'a str, &'a str)>,
}

/// What one shard's sync added: rules, `/*` repositories, repositories pruned.
struct Share {
    rules: BTreeSet<String>,
    repos: BTreeSet<String>,
    pruned: BTreeSet<String>,
}

/// The rules and `/*` repositories `plan --json` says this shard owns.
fn planned(run: &ShardRun<'_>, k: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = regkeeper(
        &run.config,
        &[&["plan", "--json"], run.args].concat(),
        &run.env,
    );
    assert_eq!(out.status.code(), Some(0), "plan of shard {k}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["shard"]["index"], k, "{plan}");
    let rules = plan["rules"].as_array().unwrap();
    let names = rules
        .iter()
        .filter_map(|r| r["rule"].as_str()?.strip_prefix("rule-").map(String::from))
        .collect();
    let all = rules
        .iter()
        .find(|r| r["rule"] == "all")
        .expect("the /* rule runs on every shard");
    let repos = all["shard_repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    (names, repos)
}

/// Runs one shard's sync and returns what it added beyond `seen`.
fn sync_share(run: &ShardRun<'_>, k: usize, dst: &Registry, seen: &Share) -> Share {
    let mark = dst.mark();
    let t = Instant::now();
    let out = regkeeper(&run.config, &[&["sync"], run.args].concat(), &run.env);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "sync of shard {k}");
    let (single, wild) = mirrored(dst);
    let share = Share {
        rules: single.difference(&seen.rules).cloned().collect(),
        repos: wild.difference(&seen.repos).cloned().collect(),
        pruned: dst
            .requests_since(mark)
            .iter()
            .filter(|r| r.method == "DELETE")
            .map(|r| {
                r.repo
                    .clone()
                    .unwrap()
                    .trim_start_matches("wild/")
                    .to_string()
            })
            .collect(),
    };
    println!(
        "shard {k}/3: {} rules, {} repositories of `all`, {} pruned, {took:.2?}",
        share.rules.len(),
        share.repos.len(),
        share.pruned.len()
    );
    share
}

/// Three `sync --shard K/3` one after another, each with its own state dir:
/// each copies a non-empty share, the shares are disjoint and cover all 20
/// rules and all 20 repositories of the `/*` rule; retention deletes the old
/// tag of each repository exactly once, on the shard that owns it; `plan`
/// named each share beforehand.
#[test]
fn sequential_shards_split_rules_and_repositories() {
    let src = source();
    let dst = Registry::start_plain();
    seed_old_tags(&dst);
    let body = rules(&src.reg, &dst, "@every 1h", true);
    let dirs: Vec<tempfile::TempDir> = (0..SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |k: usize, extra: &str| write_config(dirs[k].path(), "", extra, &body);
    // The three ways to name a shard: flag (beating the environment),
    // environment, config.
    let runs = [
        ShardRun {
            config: config(0, ""),
            args: &["--shard", "0/3"],
            env: vec![("REGKEEPER_SHARD", "2/3")],
        },
        ShardRun {
            config: config(1, ""),
            args: &[],
            env: vec![("REGKEEPER_SHARD", "1/3")],
        },
        ShardRun {
            config: config(2, "shard = \"2/3\""),
            args: &[],
            env: vec![],
        },
    ];
    let mut seen = Share {
        rules: BTreeSet::new(),
        repos: BTreeSet::new(),
        pruned: BTreeSet::new(),
    };
    let mut shares = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let (plan_rules, plan_repos) = planned(run, k);
        let share = sync_share(run, k, &dst, &seen);
        assert_eq!(
            plan_rules, share.rules,
            "plan and sync agree on shard {k}'s rules"
        );
        assert_eq!(
            plan_repos, share.repos,
            "plan and sync agree on shard {k}'s repositories"
        );
        assert_eq!(
            share.pruned, share.repos,
            "shard {k} pruned only its repositories"
        );
        seen.rules.extend(share.rules.iter().cloned());
        seen.repos.extend(share.repos.iter().cloned());
        shares.push(share);
    }
    let parts =
        |f: fn(&Share) -> &BTreeSet<String>| shares.iter().map(f).cloned().collect::<Vec<_>>();
    assert_partition("rules", &parts(|s| &s.rules));
    assert_partition("repositories of the /* rule", &parts(|s| &s.repos));
    assert_partition("retention", &parts(|s| &s.pruned));

    // skopeo, independently: every target holds the source's digest, and
    // retention left only 1.0.0 in every wild/ repository.
    assert_eq!(
        dst.count(|r| r.method == "DELETE"),
        REPOS,
        "one DELETE per repository"
    );
    for (n, digest) in &src.digests {
        assert_eq!(
            &skopeo_digest(&dst, &format!("single/{n}"), "1.0.0"),
            digest
        );
        assert_eq!(&skopeo_digest(&dst, &format!("wild/{n}"), "1.0.0"), digest);
        assert_eq!(skopeo_list_tags(&dst, &format!("wild/{n}")), vec!["1.0.0"]);
    }
}

/// `regkeeper run` over `body` in `dir`, as shard `shard` when given.
fn start(dir: &Path, body: &str, shard: Option<&str>) -> Daemon {
    let port = free_port();
    let config = write_config(dir, &format!("127.0.0.1:{port}"), "", body);
    let args: Vec<&str> = shard.map(|s| vec!["--shard", s]).unwrap_or_default();
    Daemon::spawn_logging(&config, port, &args, "info")
}

/// Rules with a `regkeeper_rule_last_success_timestamp_seconds` series,
/// and those with any `rule` label at all.
fn rules_seen(d: &Daemon) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = d.metrics();
    let label = |l: &str| {
        let rest = &l[l.find("rule=\"")? + 6..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let succeeded = text
        .lines()
        .filter(|l| l.starts_with("regkeeper_rule_last_success_timestamp_seconds{"))
        .filter_map(label)
        .collect();
    let any = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(label)
        .collect();
    (succeeded, any)
}

fn all_rule_names() -> BTreeSet<String> {
    let mut all: BTreeSet<String> = (0..REPOS).map(|i| format!("rule-{}", name(i))).collect();
    all.insert("all".into());
    all
}

/// Waits until every daemon's rules have all succeeded once; returns the
/// time from `since`.
fn wait_in_step(daemons: &[&Daemon], since: Instant) -> Duration {
    loop {
        let done = daemons.iter().all(|d| {
            let (ok, any) = rules_seen(d);
            !any.is_empty() && ok == any
        });
        if done {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "daemons did not finish their first runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per rule, `lag_seconds` from `regkeeper status --json` of one shard.
fn status_lags(d: &Daemon, shard: &str) -> BTreeMap<String, i64> {
    let out = regkeeper(d.config(), &["status", "--json", "--shard", shard], &[]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["lag_seconds"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Three `regkeeper run --shard K/3` at once: everything is mirrored, each
/// instance's metrics carry only its rules (and the `/*` rule, which every
/// shard runs over its repositories); after one is killed, the other two stay
/// in step and only the dead shard's rules fall behind in `status`. Also
/// times one whole instance against the three on the same corpus.
#[test]
fn three_daemons_share_the_work_and_a_dead_one_costs_only_its_share() {
    let src = source();
    // One process doing everything, for the timing comparison (the same
    // schedule: start-up jitter is a tenth of the interval).
    let whole_dst = Registry::start_plain();
    let whole_dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let whole = start(
        whole_dir.path(),
        &rules(&src.reg, &whole_dst, "@every 2s", false),
        None,
    );
    let one = wait_in_step(&[&whole], t);
    assert_eq!(rules_seen(&whole).1, all_rule_names());
    drop(whole);

    let dst = Registry::start_plain();
    let body = rules(&src.reg, &dst, "@every 2s", false);
    let dirs: Vec<tempfile::TempDir> = (0..SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = Instant::now();
    let mut daemons: Vec<Daemon> = dirs
        .iter()
        .enumerate()
        .map(|(k, d)| start(d.path(), &body, Some(&format!("{k}/3"))))
        .collect();
    let three = wait_in_step(&daemons.iter().collect::<Vec<_>>(), t);
    println!(
        "first full pass over 21 rules / 40 repositories: one process {one:.2?}, three shards at once {three:.2?}"
    );

    let (single, wild) = mirrored(&dst);
    assert_eq!(single.len(), REPOS, "every plain rule mirrored");
    assert_eq!(
        wild.len(),
        REPOS,
        "every repository of the /* rule mirrored"
    );
    for (n, digest) in &src.digests {
        assert_eq!(&skopeo_digest(&dst, &format!("wild/{n}"), "1.0.0"), digest);
    }
    // Each instance's metrics: its shard, its own rules, and `all`.
    let mut owned = Vec::new();
    for (k, d) in daemons.iter().enumerate() {
        let text = d.metrics();
        let info = format!("regkeeper_shard_info{{shard=\"{k}\",shards=\"3\"}} 1");
        assert!(text.contains(&info), "shard {k} metrics lack {info}");
        let (_, any) = rules_seen(d);
        assert!(any.contains("all"), "the /* rule runs on shard {k}");
        owned.push(
            any.iter()
                .filter_map(|r| r.strip_prefix("rule-").map(String::from))
                .collect::<BTreeSet<_>>(),
        );
    }
    assert_partition("rules in metrics", &owned);

    // Kill shard 1; the others keep running every 2 s.
    daemons[1].kill();
    check_lags_after_kill(&daemons, 1);
}

/// `status` of each shard a while after shard `dead` was killed: its rules'
/// lag grows, every other rule stays in step.
fn check_lags_after_kill(daemons: &[Daemon], dead: usize) {
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let lags = || -> Vec<BTreeMap<String, i64>> {
        (0..daemons.len())
            .map(|k| status_lags(&daemons[k], &format!("{k}/3")))
            .collect()
    };
    let before = lags();
    std::thread::sleep(Duration::from_secs(3));
    let after = lags();
    for k in 0..daemons.len() {
        for (rule, lag) in &after[k] {
            if k == dead {
                assert!(
                    *lag >= killed.elapsed().as_secs() as i64 - 1 && *lag > before[k][rule],
                    "dead shard's {rule}: lag {lag} should grow (was {})",
                    before[k][rule]
                );
            } else {
                assert!(
                    *lag < 10,
                    "live shard {k}'s {rule}: lag {lag} s, expected in step"
                );
            }
        }
        println!("shard {k} status lags after the kill: {:?}", after[k]);
    }
}

/// `shard = "auto"` end to end: K from the StatefulSet-style hostname, N from
/// REGKEEPER_SHARDS; `status` reports that shard and only its rules; a
/// hostname without an ordinal, or no N, is a usage error that says why.
#[test]
fn auto_shard_from_the_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::new();
    for i in 0..REPOS {
        let n = name(i);
        let layout = |side: &str| dir.path().join(side).join(&n).display().to_string();
        body += &format!(
            "[[rule]]\nname = \"rule-{n}\"\nsource = \"oci:{}\"\ntargets = [\"oci:{}\"]\n",
            layout("src"),
            layout("dst")
        );
    }
    let config = write_config(dir.path(), "", "shard = \"auto\"", &body);
    let status = |host: &str, n: Option<&str>| {
        let mut env = vec![("HOSTNAME", host)];
        env.extend(n.map(|n| ("REGKEEPER_SHARDS", n)));
        regkeeper(&config, &["status", "--json"], &env)
    };
    let mut seen = BTreeSet::new();
    for k in 0..SHARDS {
        let out = status(&format!("regkeeper-{k}"), Some("3"));
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["shard"]["index"], k);
        assert_eq!(v["shard"]["count"], 3);
        for r in v["rules"].as_array().unwrap() {
            assert!(
                seen.insert(str_of(&r["rule"]).to_string()),
                "{r} on two shards"
            );
        }
    }
    assert_eq!(seen.len(), REPOS, "every rule on exactly one shard");
    let out = status("mirror", Some("3"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"mirror\" does not end in -K"));
    let out = status("regkeeper-0", None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REGKEEPER_SHARDS"));
}

fn str_of(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}
