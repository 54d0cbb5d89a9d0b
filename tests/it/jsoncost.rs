//! Per-copy cost in `sync --json` when one image streams to several
//! targets at once: each target's `bytes`/`blobs` are its own (the whole
//! image for a fresh registry, nothing copied for a repository that could
//! mount), and they equal what `plan --json` estimated for that copy.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::*;
use crate::sync::{header, regkeeper, stdout};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// (target, tag) -> (bytes, blobs) of every copy of a SPEC section 9
/// document; a copy without figures fails the test.
fn costs(doc: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for rule in doc["rules"].as_array().expect("rules") {
        for c in rule["copies"].as_array().expect("copies") {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            let n = |k: &str| {
                c[k].as_u64()
                    .unwrap_or_else(|| panic!("copy without `{k}`: {c}"))
            };
            out.insert((s("target"), s("tag")), (n("bytes"), n("blobs")));
        }
    }
    out
}

/// Runs `cmd --json` on `config`, expecting success; its document.
fn run_json(dir: &Path, config: &str, cmd: &str) -> Value {
    let out = regkeeper(dir, config, &[cmd, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{cmd}: {}", stdout(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", stdout(&out)))
}

/// The blobs (config and layers) of `repo:tag` at `reg`, as its manifest
/// lists them over plain HTTP: (count, total bytes).
fn manifest_blobs(reg: &Registry, repo: &str, tag: &str) -> (u64, u64) {
    let r = reg
        .request(
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", ACCEPT)],
            None,
        )
        .expect("GET manifest");
    assert_eq!(r.status, 200, "{}", r.text());
    let m: Value = serde_json::from_str(&r.text()).expect("manifest JSON");
    let mut sizes = vec![m["config"]["size"].as_u64().expect("config size")];
    for l in m["layers"].as_array().expect("layers") {
        sizes.push(l["size"].as_u64().expect("layer size"));
    }
    (sizes.len() as u64, sizes.iter().sum())
}

/// Two tags with layers of their own (nothing shared between the images,
/// so the per-copy figures do not depend on which image goes first).
fn push_two_tags(src: &Registry, repo: &str) -> Vec<&'static str> {
    let mut corpus = Corpus::new();
    let tags = vec!["v1", "v2"];
    for t in &tags {
        let spec = ImageSpec::new(&[layer(&format!("cost-{t}-a"), 150_000)])
            .layer(&format!("cost-{t}-b"), 7_000)
            .label("v", t);
        corpus.image(t, &spec);
        corpus.push(src, t, repo, t);
    }
    tags
}

fn config(dir: &Path, registries: &[&Registry], source: &str, targets: &[String]) -> String {
    header(dir, registries)
        + &format!(
            "[[rule]]\nname = \"fan\"\nsource = \"{source}\"\ntargets = {}\n",
            serde_json::to_string(targets).unwrap()
        )
}

#[test]
fn two_registries_each_report_the_whole_image() {
    let (src, a, b) = (
        Registry::start_plain(),
        Registry::start_plain(),
        Registry::start_plain(),
    );
    let tags = push_two_tags(&src, "fan/app");
    let dir = tempfile::tempdir().unwrap();
    let targets = [
        format!("{}/fan/app", a.host()),
        format!("{}/fan/app", b.host()),
    ];
    let cfg = config(
        dir.path(),
        &[&src, &a, &b],
        &format!("{}/fan/app", src.host()),
        &targets,
    );

    let planned = costs(&run_json(dir.path(), &cfg, "plan"));
    let synced = costs(&run_json(dir.path(), &cfg, "sync"));
    assert_eq!(synced.len(), targets.len() * tags.len(), "{synced:?}");
    assert_eq!(synced, planned, "per copy: sync sent what plan estimated");
    for tag in &tags {
        let whole = manifest_blobs(&src, "fan/app", tag);
        for target in &targets {
            let (bytes, blobs) = synced[&(target.clone(), tag.to_string())];
            assert_eq!(
                (blobs, bytes),
                whole,
                "{target}:{tag} received the whole image"
            );
        }
    }
}

#[test]
fn a_second_repository_of_one_registry_mounts_instead_of_copying() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let tags = push_two_tags(&src, "fan/app");
    let dir = tempfile::tempdir().unwrap();
    let targets = [
        format!("{}/one/app", dst.host()),
        format!("{}/two/app", dst.host()),
    ];
    let cfg = config(
        dir.path(),
        &[&src, &dst],
        &format!("{}/fan/app", src.host()),
        &targets,
    );

    let planned = costs(&run_json(dir.path(), &cfg, "plan"));
    let synced = costs(&run_json(dir.path(), &cfg, "sync"));
    assert_eq!(synced, planned, "per copy: sync sent what plan estimated");
    for tag in &tags {
        let whole = manifest_blobs(&src, "fan/app", tag);
        let got: Vec<(u64, u64)> = targets
            .iter()
            .map(|t| synced[&(t.clone(), tag.to_string())])
            .map(|(bytes, blobs)| (blobs, bytes))
            .collect();
        // One repository received the blobs; the other mounted them all.
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, vec![(0, 0), whole], "{tag}: {got:?}");
    }
}
