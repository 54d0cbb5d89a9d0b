//! plan == sync: what `plan --json` lists is exactly what the following
//! `sync --json` does (as sets of (target, tag, digest) copies and (target,
//! digest) deletions), and afterwards a second plan is empty and a second
//! sync sends no write. Also: a missing source never deletes, and filters
//! that select nothing are reported.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::sync::{header, oci_digest, regkeeper, seed_two_repos, stdout};

type Copies = BTreeSet<(String, String, String)>;
type Deletions = BTreeSet<(String, String)>;

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", stdout(o)))
}

/// The copies and deletions of a SPEC section 9 document (every rule).
fn sets(doc: &Value) -> (Copies, Deletions) {
    let mut copies = Copies::new();
    let mut deletions = Deletions::new();
    for rule in doc["rules"].as_array().expect("rules") {
        for c in rule["copies"].as_array().expect("copies") {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            copies.insert((s("target"), s("tag"), s("digest")));
        }
        for d in rule["deletions"].as_array().expect("deletions") {
            let s = |k: &str| d[k].as_str().unwrap().to_string();
            deletions.insert((s("target"), s("digest")));
        }
    }
    (copies, deletions)
}

/// Runs plan, then sync, then both again: asserts plan == sync, that the
/// second plan is empty and that the second sync writes nothing (access
/// logs of `registries`; layout directories in `layouts` unchanged).
/// Returns what was compared.
fn plan_then_sync(
    dir: &Path,
    config: &str,
    registries: &[&Registry],
    layouts: &[&Path],
) -> (Copies, Deletions) {
    let marks: Vec<Mark> = registries.iter().map(|r| r.mark()).collect();
    let plan = regkeeper(dir, config, &["plan", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "plan: {}", stdout(&plan));
    for (r, m) in registries.iter().zip(&marks) {
        assert_eq!(r.writes_since(*m), vec![], "plan sends no write");
    }
    let plan = json(&plan);
    assert_eq!(plan["dry_run"], true);
    let sync = regkeeper(dir, config, &["sync", "--json"]);
    assert_eq!(sync.status.code(), Some(0), "sync: {}", stdout(&sync));
    let sync = json(&sync);
    assert_eq!(sync["dry_run"], false);
    let planned = sets(&plan);
    assert_eq!(planned, sets(&sync), "plan == sync");
    eprintln!(
        "PLAN == SYNC: {} copies, {} deletions: {planned:?}",
        planned.0.len(),
        planned.1.len()
    );
    // Bytes: what the plan estimated is what the sync sent.
    let p = total_bytes(&plan).expect("every planned copy has bytes");
    let s = total_bytes(&sync).expect("every copy of the sync has bytes");
    assert_eq!(p, s, "bytes planned == bytes sent");

    let again = json(&regkeeper(dir, config, &["plan", "--json"]));
    assert_eq!(sets(&again), Default::default(), "a second plan is empty");
    let marks: Vec<Mark> = registries.iter().map(|r| r.mark()).collect();
    let before: Vec<Vec<u8>> = layouts.iter().map(|l| index_json(l)).collect();
    let out = regkeeper(dir, config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    for (r, m) in registries.iter().zip(marks) {
        assert_eq!(r.writes_since(m), vec![], "a second sync sends no write");
    }
    for (l, b) in layouts.iter().zip(before) {
        assert_eq!(
            index_json(l),
            b,
            "a second sync leaves {} alone",
            l.display()
        );
    }
    planned
}

/// The sum of the copies' `bytes`, when every copy has them.
fn total_bytes(doc: &Value) -> Option<u64> {
    doc["rules"]
        .as_array()?
        .iter()
        .flat_map(|r| r["copies"].as_array().into_iter().flatten())
        .map(|c| c["bytes"].as_u64())
        .sum()
}

fn index_json(layout: &Path) -> Vec<u8> {
    std::fs::read(layout.join("index.json")).unwrap_or_default()
}

fn copy(target: String, tag: &str, digest: &str) -> (String, String, String) {
    (target, tag.to_string(), digest.to_string())
}

fn rule(name: &str, source: &str, targets: &[String], extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = {}\n{extra}\n",
        serde_json::to_string(targets).unwrap()
    )
}

/// Distinct images tagged with versions, pushed to `reg`; (tag, digest).
fn versions(
    corpus: &mut Corpus,
    reg: &Registry,
    repo: &str,
    tags: &[&str],
) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            let img = corpus.image(
                t,
                &ImageSpec::new(&[layer("plan-base", 4096)]).label("v", t),
            );
            corpus.push(reg, t, repo, t);
            (t.to_string(), img.digest)
        })
        .collect()
}

#[test]
fn fresh_target_and_a_target_partly_in_step() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let seeded = seed_two_repos(&src, "p");
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}/p/alpha", dst.host());
    let config = format!(
        "{}{}",
        header(dir.path(), &[&src, &dst]),
        rule(
            "fresh",
            &format!("{}/p/alpha", src.host()),
            std::slice::from_ref(&target),
            ""
        )
    );
    let compared = plan_then_sync(dir.path(), &config, &[&src, &dst], &[]);
    let want: Copies = seeded
        .tags
        .iter()
        .filter(|(r, ..)| r == "alpha")
        .map(|(_, t, d)| copy(target.clone(), t, d))
        .collect();
    assert_eq!(compared.0, want, "fresh: every alpha tag");

    // Partly in step: one tag moved at the source, one new, the rest equal.
    let mut corpus = Corpus::new();
    let moved = versions(&mut corpus, &src, "p/alpha", &["v1", "v9"]);
    let compared = plan_then_sync(dir.path(), &config, &[&src, &dst], &[]);
    let want: Copies = moved
        .iter()
        .map(|(t, d)| copy(target.clone(), t, d))
        .collect();
    assert_eq!(compared, (want, Deletions::new()), "only what differs");
}

#[test]
fn retention_keep_last_at_a_target_the_sync_is_about_to_fill() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let mut corpus = Corpus::new();
    let tags = versions(
        &mut corpus,
        &src,
        "r/app",
        &["1.0.0", "1.1.0", "1.2.0", "1.3.0"],
    );
    let old = versions(&mut corpus, &dst, "r/app", &["0.9.0"]);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}/r/app", dst.host());
    let config = format!(
        "{}{}[rule.retention]\nmatch = ['^\\d']\nkeep_last = 2\n",
        header(dir.path(), &[&src, &dst]),
        rule(
            "keep",
            &format!("{}/r/app", src.host()),
            std::slice::from_ref(&target),
            ""
        )
    );
    let (copies, deletions) = plan_then_sync(dir.path(), &config, &[&src, &dst], &[]);
    let want: Copies = tags[2..]
        .iter()
        .map(|(t, d)| copy(target.clone(), t, d))
        .collect();
    assert_eq!(
        copies, want,
        "1.0.0 and 1.1.0 would be deleted at once: not copied"
    );
    assert_eq!(
        deletions,
        [(target.clone(), old[0].1.clone())].into(),
        "0.9.0 goes, planned against the target after the copies"
    );
    assert_eq!(dst.list_tags("r/app"), vec!["1.2.0", "1.3.0"]);
}

#[test]
fn tags_that_retention_deleted_earlier_are_not_planned_again() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let mut corpus = Corpus::new();
    versions(&mut corpus, &src, "j/app", &["1.0.0", "1.1.0", "1.2.0"]);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}/j/app", dst.host());
    let plain = format!(
        "{}{}",
        header(dir.path(), &[&src, &dst]),
        rule(
            "j",
            &format!("{}/j/app", src.host()),
            std::slice::from_ref(&target),
            ""
        )
    );
    // Everything copied first; then retention (keep_last 1) prunes two.
    assert_eq!(
        regkeeper(dir.path(), &plain, &["sync"]).status.code(),
        Some(0)
    );
    let retained = format!("{plain}[rule.retention]\nmatch = ['^\\d']\nkeep_last = 1\n");
    assert_eq!(
        regkeeper(dir.path(), &retained, &["prune"]).status.code(),
        Some(0)
    );
    assert_eq!(dst.list_tags("j/app"), vec!["1.2.0"]);
    // The journal is read by plan too: nothing to copy back, nothing to delete.
    let compared = plan_then_sync(dir.path(), &retained, &[&src, &dst], &[]);
    assert_eq!(compared, Default::default());
    assert_eq!(dst.list_tags("j/app"), vec!["1.2.0"]);
}

#[test]
fn immutable_and_platform_filter() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let mut corpus = Corpus::new();
    let tags = versions(&mut corpus, &src, "i/app", &["v1", "v2"]);
    versions(&mut corpus, &dst, "i/app", &["v0"]);
    // The target's v1 is another image: immutable keeps it.
    let other = corpus.image("other", &ImageSpec::new(&[layer("other", 1000)]));
    corpus.push(&dst, "other", "i/app", "v1");
    let idx = corpus.two_platform_index("multi", "pf", &[layer("pf-base", 4000)]);
    corpus.push(&src, "multi", "i/multi", "m");
    let dir = tempfile::tempdir().unwrap();
    let (t_app, t_multi) = (
        format!("{}/i/app", dst.host()),
        format!("{}/i/multi", dst.host()),
    );
    let config = format!(
        "{}{}{}",
        header(dir.path(), &[&src, &dst]),
        rule(
            "imm",
            &format!("{}/i/app", src.host()),
            std::slice::from_ref(&t_app),
            "immutable = true"
        ),
        rule(
            "pf",
            &format!("{}/i/multi", src.host()),
            std::slice::from_ref(&t_multi),
            "platforms = [\"linux/amd64\"]"
        )
    );
    let (copies, _) = plan_then_sync(dir.path(), &config, &[&src, &dst], &[]);
    assert!(copies.contains(&copy(t_app.clone(), "v2", &tags[1].1)));
    assert!(
        !copies.iter().any(|(_, t, _)| t == "v1"),
        "immutable: v1 is not replaced"
    );
    assert_eq!(dst.try_digest_of("i/app", "v1"), Some(other.digest));
    let filtered = copies
        .iter()
        .find(|(t, ..)| *t == t_multi)
        .expect("the filtered index is copied");
    assert_ne!(filtered.2, idx.digest, "a new, smaller index");
    assert_eq!(dst.try_digest_of("i/multi", "m"), Some(filtered.2.clone()));
}

#[test]
fn prefix_rule_to_a_registry_and_a_layout() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let seeded = seed_two_repos(&src, "w");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let config = format!(
        "{}{}{}",
        header(dir.path(), &[&src, &dst]),
        rule(
            "all",
            &format!("{}/w/*", src.host()),
            &[format!("{}/m/*", dst.host())],
            ""
        ),
        rule(
            "two",
            &format!("{}/w/beta", src.host()),
            &[
                format!("{}/two/beta", dst.host()),
                format!("oci:{}", layout.display()),
            ],
            ""
        )
    );
    let (copies, _) = plan_then_sync(dir.path(), &config, &[&src, &dst], &[&layout]);
    let mut want = Copies::new();
    for (repo, tag, digest) in &seeded.tags {
        want.insert(copy(format!("{}/m/{repo}", dst.host()), tag, digest));
        if repo == "beta" {
            want.insert(copy(format!("{}/two/beta", dst.host()), tag, digest));
            want.insert(copy(format!("oci:{}", layout.display()), tag, digest));
            assert_eq!(oci_digest(&layout, tag).as_deref(), Some(digest.as_str()));
        }
    }
    assert_eq!(copies, want);
}

/// A target with three tags, and retention that mirrors deletions at the
/// source: the source below must never be read as "every tag removed".
fn populated_target(dst: &Registry) -> Vec<String> {
    let mut corpus = Corpus::new();
    versions(&mut corpus, dst, "m/app", &["1.0.0", "1.1.0", "1.2.0"]);
    dst.list_tags("m/app")
}

fn missing_source_config(
    dir: &Path,
    registries: &[&Registry],
    dst: &Registry,
    source: &str,
) -> String {
    format!(
        "{}{}[rule.retention]\nmatch = ['.*']\ndelete_removed_at_source = true\n",
        header(dir, registries),
        rule("m", source, &[format!("{}/m/app", dst.host())], "")
    )
}

fn assert_missing_source_deletes_nothing(dir: &Path, dst: &Registry, config: &str) {
    let tags = populated_target(dst);
    assert_eq!(tags.len(), 3);
    for cmd in [
        &["sync"][..],
        &["sync", "--json"],
        &["plan", "--json"],
        &["prune"],
    ] {
        let mark = dst.mark();
        let out = regkeeper(dir, config, cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", stdout(&out));
        assert_eq!(dst.writes_since(mark), vec![], "{cmd:?} writes nothing");
        assert_eq!(dst.list_tags("m/app"), tags, "{cmd:?}: every tag intact");
    }
    let doc = json(&regkeeper(dir, config, &["sync", "--json"]));
    assert_eq!(doc["rules"][0]["result"], "failed");
    let errors = doc["rules"][0]["errors"].to_string();
    assert!(errors.contains("does not exist"), "{errors}");
}

#[test]
fn a_source_repository_that_does_not_exist_deletes_nothing() {
    // distribution answers 404 NAME_UNKNOWN for the tag list.
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let source = format!("{}/typo/app", src.host());
    let config = missing_source_config(dir.path(), &[&src, &dst], &dst, &source);
    let probe = src.get("/v2/typo/app/tags/list").unwrap();
    assert_eq!(probe.status, 404);
    assert!(probe.text().contains("NAME_UNKNOWN"), "{}", probe.text());
    assert_missing_source_deletes_nothing(dir.path(), &dst, &config);
}

#[test]
fn a_missing_oci_source_directory_deletes_nothing() {
    let dst = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("unmounted");
    let source = format!("oci:{}", gone.display());
    let config = missing_source_config(dir.path(), &[&dst], &dst, &source);
    assert_missing_source_deletes_nothing(dir.path(), &dst, &config);
}

#[test]
fn filters_that_select_nothing_are_reported() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let mut corpus = Corpus::new();
    versions(&mut corpus, &src, "z/app", &["v1", "v2"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = rule(
        "z",
        &format!("{}/z/app", src.host()),
        &[format!("{}/z/app", dst.host())],
        "tags.include = ['^release-']\nschedule = \"@every 1h\"",
    );
    let config = header(dir.path(), &[&src, &dst])
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
        + &body;
    let plan = regkeeper(dir.path(), &config, &["plan"]);
    assert_eq!(plan.status.code(), Some(0));
    assert!(
        stdout(&plan).contains("WARNING") && stdout(&plan).contains("select 0 of 2 tags"),
        "{}",
        stdout(&plan)
    );
    let sync = regkeeper(dir.path(), &config, &["sync", "--json"]);
    let warnings = json(&sync)["rules"][0]["warnings"].to_string();
    assert!(warnings.contains("select 0 of 2 tags"), "{warnings}");
    assert!(
        String::from_utf8_lossy(&sync.stderr).contains("tag filters select nothing"),
        "logged"
    );
    let status = stdout(&regkeeper(dir.path(), &config, &["status"]));
    assert!(
        status.contains("warning:") && status.contains("select 0 of 2 tags"),
        "{status}"
    );
    assert_eq!(
        metric_after_first_run(dir.path(), port, "regkeeper_rule_tags_selected{rule=\"z\"}"),
        0.0
    );
}

/// Starts `regkeeper run` on the config in `dir`, waits for the first run
/// of the rule to finish, reads one series from /metrics, stops it.
fn metric_after_first_run(dir: &Path, port: u16, series: &str) -> f64 {
    let mut child = Command::new(regkeeper_bin())
        .args(["run", "-c"])
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start regkeeper run");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let started = Instant::now();
    let value = loop {
        let text = http::request(None, "GET", &url, &[], None)
            .map(|r| r.text())
            .unwrap_or_default();
        let ran = text
            .lines()
            .any(|l| l.starts_with("regkeeper_rule_runs_total{") && !l.ends_with(" 0"));
        let value = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if let (true, Some(v)) = (ran, value) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {series}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    value
}
