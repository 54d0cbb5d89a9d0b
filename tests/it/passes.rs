//! One plan for every pass (against real registries): `sync`, `plan`, a
//! scheduled run, the trigger endpoint, an event's push pass and `prune`
//! leave a target with retention in the same state: a rule never copies
//! what it would delete and never deletes what it would copy, whichever
//! pass runs it. An event pass copies what the full plan copies and deletes
//! nothing; `plan` lists exactly what `sync` then does. Every result is read
//! back with raw HTTP from the target registry, independent of regkeeper.
//!
//! The scenario: source `app` with `1.0.0`, `1.1.0`, `1.2.0` and `latest`
//! (= `1.2.0`, not matched by retention); two rules mirror it, `app` to
//! `mirror/app` and `pinned` (immutable tags) to `pinned/app`, both keeping
//! the newest 2 releases and deleting releases removed at the source. Then
//! the source changes: `1.3.0` is pushed, `latest` moves to it and `1.1.0`
//! is deleted at the source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::accesslog::PathKind;
use crate::support::corpus::{MT_INDEX, MT_MANIFEST};
use crate::support::*;
use crate::sync::{header, regkeeper_with, stdout};

const TOKEN: &str = "passes-token-7e2a";
const RETENTION: &str = "[rule.retention]\nmatch = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 2\norder_by = \"semver\"\nuntagged_older_than = \"1h\"\ndelete_removed_at_source = true\n";
/// The two rules: name, target repository, immutable tags.
const RULES: [(&str, &str, bool); 2] =
    [("app", "mirror/app", false), ("pinned", "pinned/app", true)];
/// Tag -> digest, as a target holds it.
type Held = BTreeMap<String, String>;
/// Copies (target repository, tag, digest) and deletions (target
/// repository, digest).
type Listing = (
    BTreeSet<(String, String, String)>,
    BTreeSet<(String, String)>,
);

/// The registries, the images and the digests of the scenario.
struct World {
    src: Registry,
    dst: Registry,
    corpus: Corpus,
    digest: BTreeMap<&'static str, String>,
}

impl World {
    fn new() -> World {
        let mut corpus = Corpus::new();
        let mut digest = BTreeMap::new();
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            let spec = ImageSpec::new(&[layer("passes-base", 2000), layer(v, 1000)]).label("v", v);
            digest.insert(v, corpus.image(v, &spec).digest);
        }
        World {
            src: Registry::start_plain(),
            dst: Registry::start_plain(),
            corpus,
            digest,
        }
    }

    /// Phase 1 at the source.
    fn seed(&self) {
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            self.corpus.push(&self.src, v, "app", v);
        }
        self.corpus.push(&self.src, "1.2.0", "app", "latest");
    }

    /// Phase 2 at the source: `1.3.0` pushed, `latest` moved to it, `1.1.0`
    /// deleted (its manifest, by digest: it has no other tag).
    fn change_source(&self) {
        self.corpus.push(&self.src, "1.3.0", "app", "1.3.0");
        self.corpus.push(&self.src, "1.3.0", "app", "latest");
        let path = format!("/v2/app/manifests/{}", self.digest["1.1.0"]);
        let resp = self.src.request("DELETE", &path, &[], None).unwrap();
        assert_eq!(resp.status, 202, "DELETE {path} at the source");
    }

    /// `tag -> digest of image` for each pair.
    fn held(&self, pairs: &[(&str, &str)]) -> Held {
        pairs
            .iter()
            .map(|(tag, image)| (tag.to_string(), self.digest[image].clone()))
            .collect()
    }

    /// The `[[rule]]` sections, on `schedule`.
    fn rules(&self, schedule: &str) -> String {
        RULES
            .iter()
            .map(|(name, target, immutable)| {
                format!(
                    "[[rule]]\nname = \"{name}\"\nsource = \"{}/app\"\ntargets = [\"{}/{target}\"]\nschedule = \"{schedule}\"\nimmutable = {immutable}\n\n{RETENTION}\n",
                    self.src.host(),
                    self.dst.host()
                )
            })
            .collect()
    }

    /// Writes the config for one-shot commands (no daemon) into `dir`.
    fn cli_config(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("config.toml");
        let body = header(dir, &[&self.src, &self.dst]) + &self.rules("@every 1h");
        std::fs::write(&path, body).unwrap();
        path
    }

    /// `regkeeper run` on `schedule`, with the webhook token.
    fn daemon(&self, dir: &Path, schedule: &str) -> Daemon {
        start_daemon(dir, &[&self.src, &self.dst], &self.rules(schedule))
    }

    /// What each rule's target holds, read with raw HTTP.
    fn targets(&self) -> [Held; 2] {
        RULES.map(|(_, target, _)| held(&self.dst, target))
    }

    /// Asserts both targets hold exactly `want` (per rule).
    fn expect(&self, what: &str, want: [Held; 2]) {
        assert_eq!(self.targets(), want, "{what}: [mirror/app, pinned/app]");
    }

    /// Asserts what a pass did since `mark`: both targets hold `want`;
    /// the manifests of `deleted` (images) were deleted at each target and
    /// nothing else; `1.0.0`, beyond the newest 2, was never written.
    fn expect_pass(&self, what: &str, mark: Mark, want: [Held; 2], deleted: &[&str]) {
        self.expect(what, want);
        let [puts, deletes] = manifest_writes(&self.dst, mark);
        let want_deletes: BTreeSet<(String, String)> = RULES
            .iter()
            .flat_map(|(_, target, _)| {
                deleted
                    .iter()
                    .map(|i| (target.to_string(), self.digest[i].clone()))
            })
            .collect();
        assert_eq!(deletes, want_deletes, "{what}: manifests deleted");
        let never = ["1.0.0", self.digest["1.0.0"].as_str()];
        let written: Vec<_> = puts
            .iter()
            .filter(|(_, r)| never.contains(&r.as_str()))
            .collect();
        assert!(
            written.is_empty(),
            "{what}: copied what retention deletes: {written:?}"
        );
    }

    /// The end state of a full pass after phase 1: the newest 2 releases
    /// and `latest`, never `1.0.0`.
    fn phase1(&self) -> [Held; 2] {
        let h = self.held(&[("1.1.0", "1.1.0"), ("1.2.0", "1.2.0"), ("latest", "1.2.0")]);
        [h.clone(), h]
    }

    /// The end state of a full pass after phase 2: `1.3.0` copied, `1.1.0`
    /// deleted; `latest` follows the source unless the tags are immutable.
    fn phase2(&self) -> [Held; 2] {
        [
            self.held(&[("1.2.0", "1.2.0"), ("1.3.0", "1.3.0"), ("latest", "1.3.0")]),
            self.held(&[("1.2.0", "1.2.0"), ("1.3.0", "1.3.0"), ("latest", "1.2.0")]),
        ]
    }
}

/// Every tag of `repo` and the digest it points at (tag list, then a HEAD
/// per tag); empty when the repository does not exist.
fn held(reg: &Registry, repo: &str) -> Held {
    let resp = reg.get(&format!("/v2/{repo}/tags/list")).unwrap();
    if resp.status == 404 {
        return Held::new();
    }
    assert_eq!(resp.status, 200, "tags of {repo}: {}", resp.text());
    let doc: Value = serde_json::from_slice(&resp.body).unwrap();
    let tags = doc["tags"].as_array().cloned().unwrap_or_default();
    let accept = format!("{MT_MANIFEST}, {MT_INDEX}");
    tags.iter()
        .map(|t| {
            let tag = t.as_str().unwrap();
            let path = format!("/v2/{repo}/manifests/{tag}");
            let r = reg
                .request("HEAD", &path, &[("Accept", &accept)], None)
                .unwrap();
            assert_eq!(r.status, 200, "HEAD {path}");
            let digest = r.header("Docker-Content-Digest").expect("digest header");
            (tag.to_string(), digest.to_string())
        })
        .collect()
}

/// The manifest writes `reg` received since `mark`: PUTs as (repository,
/// tag or digest) and DELETEs as (repository, digest).
fn manifest_writes(reg: &Registry, mark: Mark) -> [BTreeSet<(String, String)>; 2] {
    let of = |method: &str| {
        reg.requests_since(mark)
            .iter()
            .filter(|q| q.is(method, PathKind::Manifest))
            .map(|q| (q.repo.clone().unwrap(), q.reference().unwrap().to_string()))
            .collect()
    };
    [of("PUT"), of("DELETE")]
}

/// `regkeeper run` on a config of `registries` and `rules` in `dir`, with
/// the webhook token.
fn start_daemon(dir: &Path, registries: &[&Registry], rules: &str) -> Daemon {
    let port = free_port();
    let token = dir.join("webhook.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("config.toml");
    let mut body = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nwebhook_token_file = {:?}\n\n",
        dir.join("state").display().to_string(),
        token.display().to_string(),
    );
    for r in registries {
        body += &r.regkeeper_registry_toml();
    }
    std::fs::write(&config, body + rules).unwrap();
    Daemon::spawn(&config, port, &[])
}

fn run_ok(config: &Path, args: &[&str]) -> Output {
    let out = regkeeper_with(config, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stdout(&out));
    out
}

/// Every run of `rule` that ended, whatever its result.
fn ended(d: &Daemon, rule: &str) -> f64 {
    ["success", "partial", "failed"]
        .iter()
        .map(|r| {
            d.value(&format!(
                "regkeeper_rule_runs_total{{result=\"{r}\",rule=\"{rule}\"}}"
            ))
        })
        .sum()
}

/// A daemon whose start-up run found no source repository yet (it fails
/// and changes nothing): what follows is the work of the pass under test.
fn daemon_before_source(w: &World, dir: &Path) -> Daemon {
    let d = w.daemon(dir, "@every 1h");
    for (rule, _, _) in RULES {
        wait_for(
            &format!("the start-up run of {rule} ended"),
            Duration::from_secs(60),
            || ended(&d, rule) >= 1.0,
        );
        assert_eq!(d.runs(rule), 0.0, "{rule}: no source yet, no success");
    }
    assert_eq!(w.targets(), [Held::new(), Held::new()]);
    d
}

#[test]
fn sync_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let config = w.cli_config(dir.path());
    w.seed();
    let mark = w.dst.mark();
    run_ok(&config, &["sync"]);
    w.expect_pass("sync, phase 1", mark, w.phase1(), &[]);
    w.change_source();
    let mark = w.dst.mark();
    run_ok(&config, &["sync"]);
    w.expect_pass("sync, phase 2", mark, w.phase2(), &["1.1.0"]);
}

/// The copies and deletions of a `--json` document, keyed by target
/// repository path (`mirror/app`).
fn listed(doc: &Value, dst: &Registry) -> Listing {
    let repo = |t: &Value| {
        let t = t.as_str().unwrap();
        t.strip_prefix(&format!("{}/", dst.host()))
            .unwrap_or(t)
            .to_string()
    };
    let (mut copies, mut deletions) = (BTreeSet::new(), BTreeSet::new());
    for rule in doc["rules"].as_array().expect("rules") {
        assert_eq!(rule["errors"], Value::Array(vec![]), "{rule}");
        for c in rule["copies"].as_array().unwrap() {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            copies.insert((repo(&c["target"]), s("tag"), s("digest")));
        }
        for d in rule["deletions"].as_array().unwrap() {
            deletions.insert((
                repo(&d["target"]),
                d["digest"].as_str().unwrap().to_string(),
            ));
        }
    }
    (copies, deletions)
}

/// What changed at the targets between `before` and `after`: the tags
/// written (new or moved) and the digests no tag points at any more.
fn changes(before: &[Held; 2], after: &[Held; 2]) -> Listing {
    let (mut copies, mut deletions) = (BTreeSet::new(), BTreeSet::new());
    for ((b, a), (_, target, _)) in before.iter().zip(after).zip(RULES) {
        for (tag, digest) in a {
            if b.get(tag) != Some(digest) {
                copies.insert((target.to_string(), tag.clone(), digest.clone()));
            }
        }
        let kept: BTreeSet<&String> = a.values().collect();
        for digest in b.values().filter(|d| !kept.contains(d)) {
            deletions.insert((target.to_string(), digest.clone()));
        }
    }
    (copies, deletions)
}

/// `plan --json` sends no write and lists exactly what the `sync` after it
/// does, as read at the target before and after.
fn plan_then_sync(w: &World, config: &Path, phase: &str, want: [Held; 2], deleted: &[&str]) {
    let before = w.targets();
    let mark = w.dst.mark();
    let plan = run_ok(config, &["plan", "--json"]);
    assert_eq!(
        w.dst.writes_since(mark),
        vec![],
        "{phase}: plan writes nothing"
    );
    assert_eq!(w.targets(), before);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let mark = w.dst.mark();
    run_ok(config, &["sync"]);
    w.expect_pass(&format!("{phase}: sync after plan"), mark, want, deleted);
    let after = w.targets();
    assert_eq!(
        listed(&plan, &w.dst),
        changes(&before, &after),
        "{phase}: plan == sync"
    );
}

#[test]
fn plan_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let config = w.cli_config(dir.path());
    w.seed();
    plan_then_sync(&w, &config, "phase 1", w.phase1(), &[]);
    w.change_source();
    plan_then_sync(&w, &config, "phase 2", w.phase2(), &["1.1.0"]);
    let again: Value =
        serde_json::from_slice(&run_ok(&config, &["plan", "--json"]).stdout).unwrap();
    assert_eq!(
        listed(&again, &w.dst),
        Default::default(),
        "nothing left to do"
    );
}

#[test]
fn scheduled_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    w.seed();
    let mark = w.dst.mark();
    let d = w.daemon(dir.path(), "@every 2s");
    for (rule, _, _) in RULES {
        d.wait_runs(rule, 1.0);
    }
    w.expect_pass("scheduled, phase 1", mark, w.phase1(), &[]);
    let mark = w.dst.mark();
    w.change_source();
    // Two more runs each: at least one started after the change.
    for (rule, _, _) in RULES {
        let n = d.runs(rule);
        d.wait_runs(rule, n + 2.0);
    }
    w.expect_pass("scheduled, phase 2", mark, w.phase2(), &["1.1.0"]);
}

/// POSTs the trigger of every rule and waits for run `n` of each.
fn trigger_all(d: &Daemon, n: f64) {
    for (rule, _, _) in RULES {
        let resp = d.post(&format!("/v1/rules/{rule}/sync"), Some(TOKEN), b"");
        assert_eq!(resp.status, 202, "trigger {rule}: {}", resp.text());
    }
    for (rule, _, _) in RULES {
        d.wait_runs(rule, n);
    }
}

#[test]
fn trigger_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_before_source(&w, dir.path());
    w.seed();
    let mark = w.dst.mark();
    trigger_all(&d, 1.0);
    w.expect_pass("trigger, phase 1", mark, w.phase1(), &[]);
    w.change_source();
    let mark = w.dst.mark();
    trigger_all(&d, 2.0);
    w.expect_pass("trigger, phase 2", mark, w.phase2(), &["1.1.0"]);
}

/// A distribution push envelope for `app:tag` at the source.
fn push_event(d: &Daemon, src: &Registry, tag: &str) {
    let body = serde_json::json!({"events": [{
        "id": format!("app-{tag}"), "action": "push",
        "target": {"mediaType": MT_MANIFEST, "repository": "app", "tag": tag, "digest": "sha256:00"},
        "request": {"host": src.host(), "method": "PUT"}
    }]});
    let resp = d.post(
        "/v1/events/distribution",
        Some(TOKEN),
        body.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 202, "event for app:{tag}: {}", resp.text());
}

/// The event pass copies what the full plan copies for the repository
/// (every tag, not only the one pushed; never what retention deletes) and
/// deletes nothing: after phase 2, `1.1.0` (gone at the source, beyond the
/// newest 2) is still there.
#[test]
fn event_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_before_source(&w, dir.path());
    w.seed();
    let mark = w.dst.mark();
    push_event(&d, &w.src, "1.2.0");
    for (rule, _, _) in RULES {
        d.wait_runs(rule, 1.0);
    }
    w.expect_pass("event, phase 1", mark, w.phase1(), &[]);
    w.change_source();
    let mark = w.dst.mark();
    push_event(&d, &w.src, "1.3.0");
    for (rule, _, _) in RULES {
        d.wait_runs(rule, 2.0);
    }
    let [mut mirror, mut pinned] = w.phase2();
    mirror.insert("1.1.0".into(), w.digest["1.1.0"].clone());
    pinned.insert("1.1.0".into(), w.digest["1.1.0"].clone());
    w.expect_pass(
        "event, phase 2: deletes nothing",
        mark,
        [mirror, pinned],
        &[],
    );
}

/// `prune` on targets filled with every source tag leaves what the full
/// passes leave (it copies nothing); after phase 2 it deletes `1.1.0`,
/// which the source no longer has, though it is within the newest 2 there.
#[test]
fn prune_pass() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let config = w.cli_config(dir.path());
    w.seed();
    for (_, target, _) in RULES {
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            w.corpus.push(&w.dst, v, target, v);
        }
        w.corpus.push(&w.dst, "1.2.0", target, "latest");
    }
    let mark = w.dst.mark();
    run_ok(&config, &["prune"]);
    w.expect_pass("prune, phase 1", mark, w.phase1(), &["1.0.0"]);
    w.change_source();
    run_ok(&config, &["prune"]);
    let h = w.held(&[("1.2.0", "1.2.0"), ("latest", "1.2.0")]);
    w.expect_pass("prune, phase 2", mark, [h.clone(), h], &["1.0.0", "1.1.0"]);
    let [puts, _] = manifest_writes(&w.dst, mark);
    assert_eq!(puts, BTreeSet::new(), "prune copies nothing");
}

/// Untagged expiry by each deleting pass: `v1` moves at the source from
/// `old` to `new`; the pass re-points it at the target, `old` is untagged
/// there from then on and deleted once `untagged_older_than` has passed.
struct Moved {
    src: Registry,
    dst: Registry,
    corpus: Corpus,
    old: String,
    new: String,
}

impl Moved {
    fn new() -> Moved {
        let mut corpus = Corpus::new();
        let mut mk = |name: &str| {
            let spec = ImageSpec::new(&[layer("moved-base", 2000)]).label("name", name);
            corpus.image(name, &spec).digest
        };
        let (old, new) = (mk("old"), mk("new"));
        let m = Moved {
            src: Registry::start_plain(),
            dst: Registry::start_plain(),
            corpus,
            old,
            new,
        };
        m.corpus.push(&m.src, "old", "app", "v1");
        m
    }

    fn rule(&self, schedule: &str, older_than: &str) -> String {
        format!(
            "[[rule]]\nname = \"u\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"{schedule}\"\n\n[rule.retention]\nmatch = ['.*']\nuntagged_older_than = \"{older_than}\"\n",
            self.src.host(),
            self.dst.host()
        )
    }

    fn move_tag(&self) {
        assert_eq!(held(&self.dst, "mirror/app").get("v1"), Some(&self.old));
        self.corpus.push(&self.src, "new", "app", "v1");
    }

    /// Whether the target still holds the manifest `digest` (raw GET).
    fn holds(&self, digest: &str) -> bool {
        let path = format!("/v2/mirror/app/manifests/{digest}");
        let accept = format!("{MT_MANIFEST}, {MT_INDEX}");
        match self
            .dst
            .request("GET", &path, &[("Accept", &accept)], None)
            .unwrap()
            .status
        {
            200 => true,
            404 => false,
            s => panic!("GET {path}: unexpected {s}"),
        }
    }

    /// `v1` points at `new` and `old` is gone.
    fn expired(&self) {
        assert!(!self.holds(&self.old), "the untagged manifest expired");
        assert!(self.holds(&self.new));
        let want: Held = [("v1".to_string(), self.new.clone())].into();
        assert_eq!(held(&self.dst, "mirror/app"), want);
    }

    /// A daemon on `schedule` with `untagged_older_than = "1s"`, after its
    /// start-up run copied `v1`.
    fn daemon(&self, dir: &Path, schedule: &str) -> Daemon {
        let rule = self.rule(schedule, "1s");
        let d = start_daemon(dir, &[&self.src, &self.dst], &rule);
        d.wait_runs("u", 1.0);
        d
    }
}

/// 2026-01-01T00:00:00Z: the clock of the one-shot commands (`--now`).
const T0: i64 = 1_767_225_600;

#[test]
fn prune_expires_a_manifest_whose_tag_moved_at_the_source() {
    let m = Moved::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let body = header(dir.path(), &[&m.src, &m.dst]) + &m.rule("@every 1h", "1m");
    std::fs::write(&config, body).unwrap();
    let at = |t: i64| (T0 + t).to_string();
    run_ok(&config, &["sync", "--now", &at(0)]);
    m.move_tag();
    run_ok(&config, &["sync", "--now", &at(10)]);
    assert!(m.holds(&m.old), "re-pointed, not yet expired");
    run_ok(&config, &["prune", "--now", &at(30)]);
    assert!(m.holds(&m.old), "prune: untagged for 20 s of its minute");
    run_ok(&config, &["prune", "--now", &at(130)]);
    m.expired();
}

#[test]
fn scheduled_runs_expire_a_manifest_whose_tag_moved_at_the_source() {
    let m = Moved::new();
    let dir = tempfile::tempdir().unwrap();
    let d = m.daemon(dir.path(), "@every 1s");
    m.move_tag();
    wait_for(
        "the untagged manifest deleted by a scheduled run",
        Duration::from_secs(60),
        || !m.holds(&m.old),
    );
    m.expired();
    assert!(
        d.runs("u") >= 3.0,
        "a run copied, one re-pointed, one deleted"
    );
}

#[test]
fn triggered_runs_expire_a_manifest_whose_tag_moved_at_the_source() {
    let m = Moved::new();
    let dir = tempfile::tempdir().unwrap();
    let d = m.daemon(dir.path(), "@every 1h");
    m.move_tag();
    // Trigger runs until one finds `old` untagged for over a second.
    let mut n = d.runs("u");
    wait_for(
        "the untagged manifest deleted by a triggered run",
        Duration::from_secs(60),
        || {
            let resp = d.post("/v1/rules/u/sync", Some(TOKEN), b"");
            assert_eq!(resp.status, 202);
            n += 1.0;
            d.wait_runs("u", n);
            !m.holds(&m.old)
        },
    );
    m.expired();
}
