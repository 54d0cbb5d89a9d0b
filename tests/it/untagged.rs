//! Untagged expiry on a mirror rule: a tag moved at the source re-points
//! the tag at the target, and the manifest it pointed at before (now
//! untagged there) is recorded then, and deleted once `untagged_older_than`
//! has passed, unless something kept still references it (an index child).
//! Each `regkeeper` call is its own process: the record lives in the state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;

use crate::support::accesslog::PathKind;
use crate::support::corpus::MT_MANIFEST;
use crate::support::*;
use crate::sync::{header, oci_digest, regkeeper_with, stdout};

const REPO: &str = "it/app";
/// 2026-01-01T00:00:00Z: the clock of these tests (`--now`).
const T0: i64 = 1_767_225_600;

/// Where the rule mirrors to, and how the test looks at it.
enum Target<'a> {
    Registry(&'a Registry),
    Layout(PathBuf),
}

impl Target<'_> {
    fn spec(&self) -> String {
        match self {
            Target::Registry(r) => format!("{}/{REPO}", r.host()),
            Target::Layout(dir) => format!("oci:{}", dir.display()),
        }
    }

    /// The digest `tag` points at.
    fn tag(&self, tag: &str) -> Option<String> {
        match self {
            Target::Registry(r) => r.try_digest_of(REPO, tag),
            Target::Layout(dir) => oci_digest(dir, tag),
        }
    }

    /// Whether the manifest `digest` is still there: a raw GET by digest
    /// (registry), the manifest's blob (layout).
    fn holds(&self, digest: &str) -> bool {
        match self {
            Target::Registry(r) => {
                let accept = format!("{MT_MANIFEST}, application/vnd.oci.image.index.v1+json");
                let resp = r
                    .request(
                        "GET",
                        &format!("/v2/{REPO}/manifests/{digest}"),
                        &[("Accept", &accept)],
                        None,
                    )
                    .expect("GET manifest");
                match resp.status {
                    200 => true,
                    404 => false,
                    s => panic!("GET {digest}: unexpected {s}"),
                }
            }
            Target::Layout(dir) => {
                let hex = digest.strip_prefix("sha256:").unwrap();
                dir.join("blobs/sha256").join(hex).exists()
            }
        }
    }
}

struct Mirror {
    dir: tempfile::TempDir,
}

impl Mirror {
    fn new(registries: &[&Registry], src: &Registry, target: &Target) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{}[[rule]]\nname = \"m\"\nsource = \"{}/{REPO}\"\ntargets = [{:?}]\n\n[rule.retention]\nmatch = ['.*']\nuntagged_older_than = \"1m\"\n",
            header(dir.path(), registries),
            src.host(),
            target.spec(),
        );
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        Mirror { dir }
    }

    fn run(&self, cmd: &str, now: i64) -> Output {
        let config = self.dir.path().join("config.toml");
        let now = now.to_string();
        let mut args = vec![cmd, "--now", &now];
        if cmd == "plan" {
            args.push("--json");
        }
        let out = regkeeper_with(&config, &args);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", stdout(&out));
        out
    }

    /// The manifests the state records as untagged at the target.
    fn untagged(&self, target: &Target) -> BTreeSet<String> {
        let state = regkeeper::state::State::open(&self.dir.path().join("state")).unwrap();
        let repo = target.spec();
        regkeeper::retention::RetentionState::untagged(&state, &repo)
            .unwrap()
            .keys()
            .map(|d| d.as_str().to_string())
            .collect()
    }
}

/// The images of the scenario: `v1` moves from `old` to `new`; `arch` is
/// the first child of the index `multi` and moves to `other`.
struct Images {
    old: Image,
    new: Image,
    other: Image,
    multi: Index,
}

fn seed(src: &Registry) -> (Corpus, Images) {
    let mut corpus = Corpus::new();
    let base = [layer("untagged-base", 1024)];
    let multi = corpus.two_platform_index("multi", "multi", &base);
    corpus.set_ref("child", multi.children[0].descriptor.clone());
    let mk = |c: &mut Corpus, name: &str| {
        c.image(
            name,
            &ImageSpec::new(&base)
                .label("name", name)
                .created("2025-01-01T00:00:00Z"),
        )
    };
    let old = mk(&mut corpus, "old");
    let new = mk(&mut corpus, "new");
    let other = mk(&mut corpus, "other");
    corpus.push(src, "multi", REPO, "multi");
    corpus.push(src, "child", REPO, "arch");
    corpus.push(src, "old", REPO, "v1");
    let images = Images {
        old,
        new,
        other,
        multi,
    };
    (corpus, images)
}

/// The digests `plan --json` says it would delete.
fn planned_deletions(out: &Output) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rules"][0]["deletions"]
        .as_array()
        .map(|a| a.iter().map(|d| d["digest"].as_str().unwrap().to_string()))
        .into_iter()
        .flatten()
        .collect()
}

fn scenario(src: &Registry, registries: &[&Registry], target: &Target) {
    let (corpus, img) = seed(src);
    let child = img.multi.children[0].digest.clone();
    let m = Mirror::new(registries, src, target);
    m.run("sync", T0);
    assert_eq!(target.tag("v1"), Some(img.old.digest.clone()));
    assert_eq!(target.tag("arch"), Some(child.clone()));

    // Both tags move at the source; the next sync re-points them at the
    // target: `old` and the index's child lose their last tag there.
    corpus.push(src, "new", REPO, "v1");
    corpus.push(src, "other", REPO, "arch");
    m.run("sync", T0 + 10);
    assert_eq!(target.tag("v1"), Some(img.new.digest.clone()));
    assert_eq!(target.tag("arch"), Some(img.other.digest.clone()));
    assert!(target.holds(&img.old.digest), "untagged, within its minute");
    assert!(target.holds(&child));

    // `plan` two minutes later says what the sync will delete, and writes
    // nothing (the state stays as it is: the sync after it still deletes).
    let before = m.untagged(target);
    assert_eq!(before, [img.old.digest.clone(), child.clone()].into());
    let plan = m.run("plan", T0 + 130);
    assert_eq!(
        planned_deletions(&plan),
        [img.old.digest.clone()].into(),
        "{}",
        stdout(&plan)
    );
    assert_eq!(m.untagged(target), before, "plan wrote the state");

    // Two minutes after the move: `old` goes; the index's child stays (the
    // kept `multi` lists it); everything tagged stays.
    let mark = match target {
        Target::Registry(r) => Some(r.mark()),
        Target::Layout(_) => None,
    };
    m.run("sync", T0 + 130);
    assert!(!target.holds(&img.old.digest), "expired untagged manifest");
    assert!(target.holds(&child), "a child of a kept index");
    assert!(target.holds(&img.multi.digest));
    assert!(target.holds(&img.new.digest));
    assert_eq!(target.tag("v1"), Some(img.new.digest.clone()));
    assert_eq!(target.tag("multi"), Some(img.multi.digest.clone()));
    if let (Target::Registry(r), Some(mark)) = (target, mark) {
        let deletes: Vec<String> = r
            .requests_since(mark)
            .iter()
            .filter(|q| q.is("DELETE", PathKind::Manifest))
            .filter_map(|q| q.reference().map(String::from))
            .collect();
        assert_eq!(deletes, vec![img.old.digest.clone()]);
    }
    // Nothing more to do afterwards.
    let out = m.run("plan", T0 + 300);
    assert!(planned_deletions(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn mirror_rule_expires_a_manifest_whose_tag_moved_at_the_source() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    scenario(&src, &[&src, &dst], &Target::Registry(&dst));
}

#[test]
fn mirror_rule_expires_a_manifest_whose_tag_moved_at_the_source_in_a_layout() {
    let src = Registry::start_plain();
    let layout = tempfile::tempdir().unwrap();
    let dir = layout.path().join("mirror");
    scenario(&src, &[&src], &Target::Layout(dir));
}
