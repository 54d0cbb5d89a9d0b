//! What users have is the repository: its docs must match the program. The
//! series a real daemon exposes against docs/metrics.md; README, docs/ and
//! every `--help` against references to files the repository does not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use crate::sync::header;

/// Documented series that a plain daemon does not expose: only with a
/// shard, only for registries that send `RateLimit-Remaining`. A new
/// series that exists only in some setups goes here; any other new series
/// needs only its row in docs/metrics.md.
const NOT_ALWAYS_THERE: &[&str] = &[
    "regkeeper_shard_info",
    "regkeeper_registry_rate_limit_remaining",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (type, label names) per series documented in docs/metrics.md's table.
fn documented_series() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `regkeeper_"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let name = format!("regkeeper_{}", cells[0].trim_end_matches('`'));
            let labels = cells[2]
                .split(", ")
                .map(|l| l.trim_matches('`').to_string())
                .filter(|l| !l.is_empty())
                .collect();
            (name, (cells[1].to_string(), labels))
        })
        .collect()
}

/// (type, label names) per series family in a scrape (`le` of histograms
/// left out).
fn scraped_series(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_string()).or_default().0 = kind.to_string();
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, labels)) = line.split_once('{') else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(series);
        let names = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| k != "le");
        out.get_mut(family).expect(line).1.extend(names);
    }
    out
}

#[test]
fn every_series_of_a_real_daemon_is_in_docs_metrics_md_and_back() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    corpus.image("m", &ImageSpec::new(&[layer("docs-metrics", 2000)]));
    corpus.push(&src, "m", "docs/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("webhook.token");
    std::fs::write(&token, "docs-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = free_port();
    let config = header(dir.path(), &[&src, &dst]).replace(
        "listen = \"\"",
        &format!("listen = \"127.0.0.1:{port}\"\nwebhook_token_file = {token:?}"),
    ) + &format!(
        "[[rule]]\nname = \"app\"\nsource = \"{}/docs/app\"\ntargets = [\"{}/docs/app\"]\n",
        src.host(),
        dst.host()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let d = Daemon::spawn(&path, port, &[]);
    d.wait_runs("app", 1.0);

    let scraped = scraped_series(&d.metrics());
    let documented = documented_series();
    assert!(documented.len() >= 20, "the table parsed: {documented:?}");
    for (name, got) in &scraped {
        let doc = documented.get(name);
        assert_eq!(
            doc,
            Some(got),
            "{name}: docs/metrics.md (type, labels) vs /metrics"
        );
    }
    for name in documented.keys() {
        assert!(
            scraped.contains_key(name) || NOT_ALWAYS_THERE.contains(&name.as_str()),
            "{name} is documented but a daemon after a sync does not expose it"
        );
    }
}

/// Markdown files users read: README.md and docs/.
fn user_docs() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files
}

/// Relative link targets in markdown (`](path)` and `](path#anchor)`).
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or("").to_string())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

/// Every `--help` the binary has: the top level and each subcommand's.
fn all_help() -> Vec<(String, String)> {
    let help = |args: &[&str]| {
        let out = Command::new(regkeeper_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .expect(&top)
        .lines()
        .skip(1) // the rest of the "Commands:" line
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 7, "{commands:?}");
    let mut out = vec![("--help".to_string(), top)];
    for c in commands {
        let text = help(&[&c, "--help"]);
        out.push((format!("{c} --help"), text));
    }
    out
}

#[test]
fn docs_and_help_point_only_at_what_the_repository_holds() {
    for file in user_docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.display();
        assert!(
            !text.contains("SPEC"),
            "{name} mentions SPEC, which users do not have"
        );
        let dir = file.parent().unwrap();
        for link in relative_links(&text) {
            assert!(
                Path::new(dir).join(&link).exists(),
                "{name} links to {link}, which the repository does not hold"
            );
        }
    }
    for (what, text) in all_help() {
        assert!(
            !text.contains("SPEC"),
            "`regkeeper {what}` mentions SPEC:\n{text}"
        );
    }
}
