//! Retention against a real registry with delete enabled. Every scenario
//! checks the exact set of surviving tags (skopeo) and digests (by digest,
//! skopeo), and that nothing else was touched.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::accesslog::PathKind;
use crate::support::corpus::MT_MANIFEST;
use crate::support::*;

const REPO: &str = "it/app";
const DAY: i64 = 86_400;
/// 2026-01-01T00:00:00Z: the clock of these tests (`--now`).
const T0: i64 = 1_767_225_600;

/// A config file with one cleanup-only rule on `targets` and the given
/// `[rule.retention]` body.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(registry_toml: &str, targets: &[String], retention: &str) -> Setup {
        Setup::with_rule(registry_toml, "", targets, retention)
    }

    fn with_rule(registry_toml: &str, source: &str, targets: &[String], retention: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let source = if source.is_empty() {
            String::new()
        } else {
            format!("source = {source:?}\n")
        };
        let cfg = format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n\n{registry_toml}\n[[rule]]\nname = \"clean\"\n{source}targets = {}\n\n[rule.retention]\n{retention}\n",
            dir.path().join("state").display().to_string(),
            serde_json::to_string(targets).unwrap(),
        );
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn run(&self, args: &[&str], now: i64) -> Output {
        let out = Command::new(regkeeper_bin())
            .arg("-c")
            .arg(self.config())
            .args(args)
            .arg("--now")
            .arg(now.to_string())
            .env("REGKEEPER_LOG", "info")
            .output()
            .unwrap();
        eprintln!(
            "regkeeper {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn prune(&self, now: i64) -> Output {
        self.run(&["prune"], now)
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn target(reg: &Registry, repo: &str) -> String {
    format!("{}/{repo}", reg.host())
}

/// An image of its own (distinct digest) created at `created`.
fn img(corpus: &mut Corpus, name: &str, created: &str) -> Image {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("retention-base", 2048)])
            .label("name", name)
            .created(created),
    )
}

/// Builds an image per name (same creation time) and pushes it to `reg`
/// under that name as its tag.
fn push_tags(reg: &Registry, corpus: &mut Corpus, names: &[String]) -> Vec<Image> {
    names
        .iter()
        .map(|n| {
            let image = img(corpus, n, "2025-01-01T00:00:00Z");
            corpus.push(reg, n, REPO, n);
            image
        })
        .collect()
}

fn rfc3339(unix: i64) -> String {
    // Days to civil date (inverse of Hinnant's days_from_civil).
    let days = unix.div_euclid(DAY);
    let secs = unix.rem_euclid(DAY);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Pushes `(tag, image name)` pairs.
fn push_all(corpus: &Corpus, reg: &Registry, repo: &str, tags: &[(&str, &str)]) {
    for (tag, name) in tags {
        corpus.push(reg, name, repo, tag);
    }
}

fn tags_of(reg: &Registry, repo: &str) -> Vec<String> {
    reg.list_tags(repo)
}

fn present(reg: &Registry, repo: &str, digest: &str) -> bool {
    reg.try_digest_of(repo, digest).is_some()
}

fn set(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn deletes_since(reg: &Registry, mark: Mark) -> BTreeSet<String> {
    reg.requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .filter_map(|r| r.reference().map(String::from))
        .collect()
}

#[test]
fn keep_last_by_semver() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let names = ["v1.0.0", "v1.2.0", "v1.10.0", "v1.9.0", "v2.0.0"];
    let images: Vec<Image> = names
        .iter()
        .map(|n| img(&mut corpus, n, "2025-01-01T00:00:00Z"))
        .collect();
    for n in names {
        corpus.push(&reg, n, REPO, n);
    }
    corpus.push(&reg, "v2.0.0", REPO, "latest");
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^v\\d+\\.\\d+\\.\\d+$']\nkeep_last = 2\n",
    );
    let mark = reg.mark();
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["latest", "v1.10.0", "v2.0.0"]));
    for (n, i) in names.iter().zip(&images) {
        let kept = matches!(*n, "v1.10.0" | "v2.0.0");
        assert_eq!(present(&reg, REPO, &i.digest), kept, "{n}");
    }
    assert_eq!(
        deletes_since(&reg, mark),
        [&images[0], &images[1], &images[3]]
            .iter()
            .map(|i| i.digest.clone())
            .collect()
    );
    assert!(stdout(&out).contains("beyond keep_last = 2"));
    // A second run deletes nothing more.
    let mark = reg.mark();
    assert_eq!(code(&s.prune(T0)), 0);
    assert!(reg.writes_since(mark).is_empty());
}

#[test]
fn keep_last_by_created() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    // Names say nothing about age; creation times do.
    let spec = [
        ("build-a", "2025-03-01T00:00:00Z"),
        ("build-b", "2025-01-01T00:00:00Z"),
        ("build-c", "2025-05-01T00:00:00+02:00"),
        ("build-d", "2025-02-01T00:00:00.5Z"),
        ("build-e", "1970-01-01T00:00:00Z"), // reproducible build: age unknown, kept
    ];
    let images: Vec<Image> = spec.iter().map(|(n, c)| img(&mut corpus, n, c)).collect();
    for (n, _) in spec {
        corpus.push(&reg, n, REPO, n);
    }
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^build-']\nkeep_last = 2\norder_by = \"created\"\n",
    );
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["build-a", "build-c", "build-e"]));
    assert!(!present(&reg, REPO, &images[1].digest));
    assert!(!present(&reg, REPO, &images[3].digest));
    assert!(present(&reg, REPO, &images[4].digest));
    assert!(
        stdout(&out).contains("no usable created time"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn older_than_with_keep_last() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    // v1..v5, created 200, 150, 100, 40, 10 days before T0.
    let ages = [200, 150, 100, 40, 10];
    let mut images = Vec::new();
    for (i, age) in ages.iter().enumerate() {
        let name = format!("1.{i}.0");
        images.push(img(&mut corpus, &name, &rfc3339(T0 - age * DAY)));
        corpus.push(&reg, &name, REPO, &name);
    }
    // keep_last = 2 keeps 1.4 and 1.3; of the rest only those older than
    // 120d go: 1.2 (100d) stays, 1.1 and 1.0 go.
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 2\nolder_than = \"120d\"\n",
    );
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["1.2.0", "1.3.0", "1.4.0"]));
    assert!(!present(&reg, REPO, &images[0].digest));
    assert!(!present(&reg, REPO, &images[1].digest));
    assert!(stdout(&out).contains("keep 1.2.0") && stdout(&out).contains("not older than 120d"));
    // 30 days later 1.2.0 is 130 days old: it goes; 1.3.0 (70d) stays by keep_last.
    let out = s.prune(T0 + 30 * DAY);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["1.3.0", "1.4.0"]));
    assert!(present(&reg, REPO, &images[3].digest) && present(&reg, REPO, &images[4].digest));
    assert!(stdout(&out).contains("older than 120d"));
}

#[test]
fn protect_keeps_matched_tags() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    for n in ["v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0"] {
        img(&mut corpus, n, "2025-01-01T00:00:00Z");
        corpus.push(&reg, n, REPO, n);
    }
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^v']\nkeep_last = 1\nprotect = ['^v1\\.0\\.']\n",
    );
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["v1.0.0", "v2.0.0"]));
    assert!(stdout(&out).contains("keep v1.0.0") && stdout(&out).contains("protected"));
}

#[test]
fn multi_arch_index_kept_while_its_children_are_untagged() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let shared = [layer("multi-shared", 1024)];
    let old = corpus.two_platform_index("old", "old", &shared);
    let new = corpus.two_platform_index("new", "new", &shared);
    corpus.push(&reg, "old", REPO, "v1.0.0");
    corpus.push(&reg, "new", REPO, "v2.0.0");
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^v']\nkeep_last = 1\nuntagged_older_than = \"1d\"\n",
    );
    let mark = reg.mark();
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["v2.0.0"]));
    // The kept index and both of its (untagged) children are intact and pullable.
    assert!(present(&reg, REPO, &new.digest));
    for c in &new.children {
        assert!(present(&reg, REPO, &c.digest), "child {} kept", c.digest);
    }
    assert_eq!(reg.inspect_raw(REPO, "v2.0.0"), new.manifest);
    // The deleted index went first, then its children.
    assert!(!present(&reg, REPO, &old.digest));
    for c in &old.children {
        assert!(!present(&reg, REPO, &c.digest));
    }
    let order: Vec<String> = reg
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .filter_map(|r| r.reference().map(String::from))
        .collect();
    assert_eq!(order.len(), 3);
    assert_eq!(order[0], old.digest, "parent before children: {order:?}");
    // Much later, with untagged expiry on: the kept index's children still stay.
    let mark = reg.mark();
    assert_eq!(code(&s.prune(T0 + 30 * DAY)), 0);
    assert!(reg.writes_since(mark).is_empty());
    assert!(new.children.iter().all(|c| present(&reg, REPO, &c.digest)));
}

#[test]
fn two_tags_sharing_a_digest_where_only_one_matches() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let a = img(&mut corpus, "a", "2025-01-01T00:00:00Z");
    let b = img(&mut corpus, "b", "2025-01-02T00:00:00Z");
    let c = img(&mut corpus, "c", "2025-01-03T00:00:00Z");
    let d = img(&mut corpus, "d", "2025-01-04T00:00:00Z");
    push_all(
        &corpus,
        &reg,
        REPO,
        &[
            ("1.0.0", "a"),
            ("stable", "a"), // not matched: keeps a
            ("1.1.0", "b"),
            ("1.1.1", "b"), // both matched, both beyond keep_last: b goes
            ("1.2.0", "c"),
            ("2.0.0", "d"),
        ],
    );
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^\\d']\nkeep_last = 2\n",
    );
    let mark = reg.mark();
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(
        tags_of(&reg, REPO),
        set(&["1.0.0", "1.2.0", "2.0.0", "stable"])
    );
    assert!(present(&reg, REPO, &a.digest));
    assert!(!present(&reg, REPO, &b.digest));
    assert!(present(&reg, REPO, &c.digest) && present(&reg, REPO, &d.digest));
    assert_eq!(deletes_since(&reg, mark), [b.digest.clone()].into());
    assert!(stdout(&out).contains("same digest as kept tag \"stable\""));
}

/// Pushes a signature manifest (OCI, with `subject`) for `subject` under the
/// cosign tag `sha256-<hex>.sig`; its blobs are the subject's own.
fn push_signature(reg: &Registry, subject: &Image, note: &str) -> String {
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": subject.config.media_type, "digest": subject.config.digest, "size": subject.config.size},
        "layers": [{"mediaType": subject.layers[0].media_type, "digest": subject.layers[0].digest, "size": subject.layers[0].size}],
        "annotations": {"note": note},
        "subject": {"mediaType": MT_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let digest = sha256_digest(&body);
    let tag = format!(
        "sha256-{}.sig",
        subject.digest.trim_start_matches("sha256:")
    );
    let r = reg
        .request(
            "PUT",
            &format!("/v2/{REPO}/manifests/{tag}"),
            &[("Content-Type", MT_MANIFEST)],
            Some(body),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    digest
}

#[test]
fn referrers_go_with_their_subject_and_stay_with_a_kept_one() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let old = img(&mut corpus, "old", "2025-01-01T00:00:00Z");
    let new = img(&mut corpus, "new", "2025-02-01T00:00:00Z");
    push_all(&corpus, &reg, REPO, &[("v1.0.0", "old"), ("v2.0.0", "new")]);
    let old_sig = push_signature(&reg, &old, "old");
    let new_sig = push_signature(&reg, &new, "new");
    let new_sig_tag = format!("sha256-{}.sig", new.digest.trim_start_matches("sha256:"));
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        // Even a match that would select everything never picks referrer tags by itself.
        "match = ['.*']\nkeep_last = 1\n",
    );
    let mark = reg.mark();
    let out = s.prune(T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&reg, REPO), set(&["v2.0.0", &new_sig_tag]));
    assert!(!present(&reg, REPO, &old.digest));
    assert!(!present(&reg, REPO, &old_sig));
    assert!(present(&reg, REPO, &new.digest) && present(&reg, REPO, &new_sig));
    let order: Vec<String> = reg
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .filter_map(|r| r.reference().map(String::from))
        .collect();
    assert_eq!(order, vec![old_sig, old.digest.clone()], "referrer first");
    assert!(stdout(&out).contains("referrer of deleted"));
}

#[test]
fn deletion_cap_deletes_nothing_and_reports() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let all: Vec<String> = (0..6).map(|i| format!("1.0.{i}")).collect();
    push_tags(&reg, &mut corpus, &all);
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^1']\nkeep_last = 1\nmax_deletions_per_run = 4\n",
    );
    let mark = reg.mark();
    let out = s.prune(T0);
    assert_eq!(code(&out), 1, "a refused run is partial");
    assert!(reg.writes_since(mark).is_empty());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(tags_of(&reg, REPO), set(&all));
    assert!(
        stdout(&out).contains("more than max_deletions_per_run = 4"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("would delete"));
}

#[test]
fn listing_failure_midway_deletes_nothing() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let names: Vec<String> = (0..30).map(|i| format!("1.0.{i}")).collect();
    push_tags(&reg, &mut corpus, &names);
    let proxy = FaultProxy::to_registry(&reg);
    let registry_toml = format!("[registries.\"{}\"]\nplain_http = true\n", proxy.host());
    let s = Setup::new(
        &registry_toml,
        &[format!("{}/{REPO}", proxy.host())],
        "match = ['^1']\nkeep_last = 2\n",
    );
    // Slow enough that the manifest reads are still going on when the
    // registry becomes unreachable.
    proxy.throttle(Some(3_000));
    let mark = reg.mark();
    let child = Command::new(regkeeper_bin())
        .arg("-c")
        .arg(s.config())
        .args(["prune", "--now", &T0.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = reg.count_since(mark, |r| r.is("GET", PathKind::Manifest));
        if seen > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no manifest read seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reg.count_since(mark, |r| r.kind == PathKind::TagsList) > 0);
    proxy.set_down(true);
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.set_down(false);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("inventory incomplete"),
        "{}",
        stdout(&out)
    );
    assert!(reg.writes_since(mark).is_empty());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(tags_of(&reg, REPO), set(&names));
}

#[test]
fn untagged_expiry_after_a_tag_moved() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let first = img(&mut corpus, "first", "2025-01-01T00:00:00Z");
    let second = img(&mut corpus, "second", "2025-01-02T00:00:00Z");
    corpus.push(&reg, "first", REPO, "dev");
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^v']\nuntagged_older_than = \"7d\"\n",
    );
    // Run 1 records the tags.
    assert_eq!(code(&s.prune(T0)), 0);
    // The tag moves: `first` has no tag any more.
    corpus.push(&reg, "second", REPO, "dev");
    assert!(present(&reg, REPO, &first.digest));
    // Run 2 (a day later) notices it and records the time; too recent to delete.
    let mark = reg.mark();
    let out = s.prune(T0 + DAY);
    assert_eq!(code(&out), 0);
    assert!(reg.writes_since(mark).is_empty());
    assert!(stdout(&out).contains("keep untagged"), "{}", stdout(&out));
    // Run 3, 6 days after the move: still within the window.
    assert_eq!(code(&s.prune(T0 + 7 * DAY)), 0);
    assert!(present(&reg, REPO, &first.digest));
    // Run 4, 8 days after the move: deleted; the moved tag stays.
    let mark = reg.mark();
    let out = s.prune(T0 + 9 * DAY);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("untagged since"));
    assert_eq!(deletes_since(&reg, mark), [first.digest.clone()].into());
    assert!(!present(&reg, REPO, &first.digest));
    assert_eq!(tags_of(&reg, REPO), set(&["dev"]));
    assert_eq!(reg.digest_of(REPO, "dev"), second.digest);
    // The journal in the state database recorded it, and that it was sent.
    let state = regkeeper::state::State::open(&s.dir.path().join("state")).unwrap();
    let journal = regkeeper::retention::RetentionState::recent_deletions(&state, 10).unwrap();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0].entry.digest.as_str(), first.digest);
    assert_eq!(journal[0].status, regkeeper::retention::JournalStatus::Done);
}

#[test]
fn dry_run_and_plan_send_no_write_and_match_the_real_prune() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let names: Vec<String> = (0..5).map(|i| format!("1.{i}.0")).collect();
    let images = push_tags(&reg, &mut corpus, &names);
    push_signature(&reg, &images[0], "sig");
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^1']\nkeep_last = 2\n",
    );
    let before = tags_of(&reg, REPO);
    let mark = reg.mark();
    let dry = s.run(&["prune", "--dry-run", "--json"], T0);
    assert_eq!(code(&dry), 0);
    let plan = s.run(&["plan", "--json"], T0);
    assert_eq!(code(&plan), 0);
    let text = s.run(&["prune", "--dry-run"], T0);
    assert!(stdout(&text).contains("would delete"));
    assert!(
        reg.writes_since(mark).is_empty(),
        "{:#?}",
        reg.writes_since(mark)
    );
    assert!(reg.count_since(mark, |r| r.is("GET", PathKind::Manifest)) > 0);
    assert_eq!(tags_of(&reg, REPO), before);

    // prune and plan print one document: {"dry_run": true, "rules":
    // [{..., "deletions": [{target, digest, tags, reason}]}]}.
    let deletions = |out: &Output| -> BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["dry_run"], true);
        assert_eq!(v["rules"][0]["rule"], "clean");
        v["rules"][0]["deletions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let mut keys: Vec<&str> =
                    d.as_object().unwrap().keys().map(|k| k.as_str()).collect();
                keys.sort();
                assert_eq!(keys, ["digest", "reason", "tags", "target"]);
                assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()));
                d["digest"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (from_dry, from_plan) = (deletions(&dry), deletions(&plan));
    assert_eq!(from_dry.len(), 4, "3 images + 1 signature: {from_dry:?}");
    assert_eq!(from_dry, from_plan);

    let mark = reg.mark();
    assert_eq!(code(&s.prune(T0)), 0);
    assert_eq!(
        deletes_since(&reg, mark),
        from_dry,
        "the real prune did what the dry run said"
    );
    assert_eq!(tags_of(&reg, REPO), set(&["1.3.0", "1.4.0"]));
}

#[test]
fn sync_plans_retention_against_the_target_after_its_copies() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let names: Vec<String> = (0..4).map(|i| format!("1.{i}.0")).collect();
    push_tags(&src, &mut corpus, &names);
    // An old tag only the target has.
    img(&mut corpus, "0.9.0", "2024-01-01T00:00:00Z");
    corpus.push(&dst, "0.9.0", REPO, "0.9.0");
    let registries = format!(
        "{}\n{}",
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml()
    );
    let s = Setup::with_rule(
        &registries,
        &target(&src, REPO),
        &[target(&dst, REPO)],
        "match = ['^\\d']\nkeep_last = 2\n",
    );
    let mark = dst.mark();
    let out = s.run(&["sync"], T0);
    assert_eq!(code(&out), 0);
    assert_eq!(tags_of(&dst, REPO), set(&["1.2.0", "1.3.0"]));
    assert_eq!(src.list_tags(REPO).len(), 4, "the source is never pruned");
    assert!(stdout(&out).contains("1 deleted"), "only 0.9.0");
    // 1.0.0 and 1.1.0 were never pushed: retention would have deleted them
    // in the same run (SPEC section 6).
    let pushed: BTreeSet<String> = dst
        .requests_since(mark)
        .iter()
        .filter(|r| r.is("PUT", PathKind::Manifest))
        .filter_map(|r| r.reference().map(String::from))
        .collect();
    assert_eq!(pushed, ["1.2.0", "1.3.0"].map(String::from).into());
    // The next sync does nothing (nor does it delete again): sync and
    // retention do not undo each other.
    let mark = dst.mark();
    let out = s.run(&["sync"], T0 + 60);
    assert_eq!(code(&out), 0);
    assert_eq!(dst.writes_since(mark), vec![], "{}", stdout(&out));
    assert_eq!(tags_of(&dst, REPO), set(&["1.2.0", "1.3.0"]));
}

/// Not a pass/fail test: how long a prune of 1,000 tags takes and how many
/// requests it makes. `cargo test --test integration -- --ignored --nocapture prune_1000`
#[test]
#[ignore]
fn prune_1000_tags_measurement() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let base = img(&mut corpus, "base", "2025-01-01T00:00:00Z");
    corpus.push(&reg, "base", REPO, "base");
    // 1,000 distinct manifests over the same blobs, pushed directly.
    let t = Instant::now();
    let client = reg.client();
    let url = reg.url();
    let bodies: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            let body = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": base.config.media_type, "digest": base.config.digest, "size": base.config.size},
                "layers": [{"mediaType": base.layers[0].media_type, "digest": base.layers[0].digest, "size": base.layers[0].size}],
                "annotations": {"n": i.to_string()},
            }))
            .unwrap();
            (format!("1.{}.{}", i / 100, i % 100), body)
        })
        .collect();
    block_on_thread(async move {
        use futures_util::StreamExt;
        futures_util::stream::iter(bodies)
            .map(|(tag, body)| {
                let client = client.clone();
                let url = format!("{url}/v2/{REPO}/manifests/{tag}");
                async move {
                    let r = client
                        .put(url)
                        .header("Content-Type", MT_MANIFEST)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
    eprintln!("seeded 1000 tags in {:?}", t.elapsed());
    let s = Setup::new(
        &reg.regkeeper_registry_toml(),
        &[target(&reg, REPO)],
        "match = ['^1\\.']\nkeep_last = 10\nmax_deletions_per_run = 2000\n",
    );
    for (label, args) in [
        ("dry run", &["prune", "--dry-run"][..]),
        ("prune", &["prune"][..]),
        ("second prune (nothing left to delete)", &["prune"][..]),
    ] {
        let mark = reg.mark();
        let t = Instant::now();
        let out = Command::new(regkeeper_bin())
            .arg("-c")
            .arg(s.config())
            .args(args)
            .args(["--now", &T0.to_string()])
            .env("REGKEEPER_LOG", "regkeeper::retention=debug")
            .output()
            .unwrap();
        let elapsed = t.elapsed();
        let _ = std::fs::write(
            std::env::temp_dir().join(format!("regkeeper-measure-{}.log", label.replace(' ', "-"))),
            &out.stderr,
        );
        let reqs = reg.requests_since(mark);
        let by = |m: &str| reqs.iter().filter(|r| r.method == m).count();
        eprintln!(
            "MEASURE {label}: exit {:?}, {:.2} s, {} requests (GET {}, HEAD {}, DELETE {})",
            out.status.code(),
            elapsed.as_secs_f64(),
            reqs.len(),
            by("GET"),
            by("HEAD"),
            by("DELETE")
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(reg.list_tags(REPO).len(), 11, "10 newest + base");
}
