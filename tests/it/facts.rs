//! Manifest facts: what retention derives from a manifest (media type,
//! children, subject, the config's `created` time) is kept in the state by
//! digest, so a steady-state run asks the target for each tag's digest
//! (HEAD) and GETs no manifest or config it has read before. (Harbor counts
//! a manifest GET as a pull; Docker Hub counts it against the pull budget.)

use std::collections::BTreeMap;

use crate::support::ferro::{OCI_MANIFEST, push_blob, put_manifest};
use crate::support::*;
use crate::sync::{header, regkeeper_with, stdout};

const REPOS: usize = 20;
const TAGS: usize = 5;

/// Pushes a small image whose config has a `created` time.
fn push_dated(reg: &Registry, repo: &str, tag: &str, day: usize) {
    let base = reg.url();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2025-01-{:02}T00:00:00Z","config":{{"Labels":{{"at":"{repo}:{tag}"}}}}}}"#,
        day + 1
    );
    let (cd, cs) = push_blob(&base, repo, config.as_bytes());
    let layer = format!("layer of {repo}:{tag}").repeat(32);
    let (ld, ls) = push_blob(&base, repo, layer.as_bytes());
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    });
    put_manifest(
        &base,
        repo,
        tag,
        OCI_MANIFEST,
        &serde_json::to_vec(&m).unwrap(),
    );
}

/// Requests at `reg` since `mark`, by method and kind (`GET Manifest`...).
fn by_kind(reg: &Registry, mark: Mark) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in reg.requests_since(mark) {
        *counts
            .entry(format!("{} {:?}", r.method, r.kind))
            .or_insert(0) += 1;
    }
    counts
}

fn get(counts: &BTreeMap<String, usize>, key: &str) -> usize {
    counts.get(key).copied().unwrap_or(0)
}

#[test]
fn steady_state_retention_sends_no_manifest_get_at_the_target() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    for r in 0..REPOS {
        for t in 0..TAGS {
            push_dated(&src, &format!("it/r{r:02}"), &format!("1.{t}.0"), t);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[[rule]]\nname = \"m\"\nsource = \"{}/it/*\"\ntargets = [\"{}/it/*\"]\n\n\
         [rule.retention]\nmatch = ['.*']\nkeep_last = 10\norder_by = \"created\"\nuntagged_older_than = \"7d\"\n",
        header(dir.path(), &[&src, &dst]),
        src.host(),
        dst.host(),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, cfg).unwrap();
    let sync = || {
        let mark = dst.mark();
        let out = regkeeper_with(&config, &["sync"]);
        assert_eq!(out.status.code(), Some(0), "sync: {}", stdout(&out));
        by_kind(&dst, mark)
    };

    let first = sync();
    assert_eq!(get(&first, "PUT Manifest"), REPOS * TAGS, "{first:?}");
    // The first run that finds the images at the target reads each once.
    let second = sync();
    // From then on: the tag lists and a HEAD per tag, no manifest or config.
    let third = sync();
    eprintln!("target requests, 2nd sync: {second:?}");
    eprintln!("target requests, 3rd sync: {third:?}");
    assert_eq!(get(&third, "GET Manifest"), 0, "{third:?}");
    assert_eq!(get(&third, "GET Blob"), 0, "{third:?}");
    assert!(
        third
            .keys()
            .all(|k| !k.starts_with("PUT") && !k.starts_with("DELETE"))
    );

    // `plan` reads the kept facts too (and writes none: its state is read-only).
    let mark = dst.mark();
    let out = regkeeper_with(&config, &["plan"]);
    assert_eq!(out.status.code(), Some(0), "plan: {}", stdout(&out));
    let plan = by_kind(&dst, mark);
    eprintln!("target requests, plan: {plan:?}");
    assert_eq!(get(&plan, "GET Manifest"), 0, "{plan:?}");

    // Every tag is still there (5 < keep_last).
    for r in [0, REPOS - 1] {
        for t in 0..TAGS {
            assert!(
                dst.try_digest_of(&format!("it/r{r:02}"), &format!("1.{t}.0"))
                    .is_some(),
                "it/r{r:02}:1.{t}.0 at the target"
            );
        }
    }
}
