//! Layouts as other tools write them (support/layouts.rs), mirrored
//! layout -> registry -> layout: every manifest byte for byte (raw HTTP by
//! digest), tags and referrers where they belong, and the shapes that
//! cannot be mirrored failing only their own tag with a message.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::support::corpus::{MT_INDEX, MT_MANIFEST};
use crate::support::layouts::*;
use crate::support::*;
use crate::sync::{header, regkeeper};

mod broken;
mod table;

pub(super) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The manifest `reference` of `repo` as the registry serves it.
pub(super) fn get(reg: &Registry, repo: &str, reference: &str) -> HttpResponse {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    http::request(None, "GET", &url, &[("Accept", ACCEPT)], None).unwrap()
}

/// Asserts the registry serves `d` by digest, byte for byte as the layout holds it.
pub(super) fn same_at(reg: &Registry, repo: &str, world: &World, d: &str) {
    let r = get(reg, repo, d);
    assert_eq!(r.status, 200, "{repo}@{d}: {}", r.text());
    assert!(
        r.body == world.corpus.read_blob(d),
        "{repo}@{d} differs from the layout's bytes"
    );
}

pub(super) fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

pub(super) fn index_json(dir: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    v["manifests"].as_array().cloned().unwrap_or_default()
}

pub(super) fn entry_of<'a>(entries: &'a [Value], digest: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e["digest"] == digest)
}

pub(super) fn rule(
    dir: &Path,
    regs: &[&Registry],
    source: &str,
    targets: &[String],
    extra: &str,
) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "{}[[rule]]\nname = \"w\"\nsource = {source:?}\ntargets = [{}]\n{extra}",
        header(dir, regs),
        targets.join(", ")
    )
}

/// The shapes of regclient/buildx (nested index), go-containerregistry
/// (Docker body under an OCI descriptor; untagged entries), oc-mirror
/// (untagged index without `mediaType`) and notation via oras-go (an
/// untagged signature entry with a subject) arrive intact.
#[test]
fn foreign_layouts_arrive_intact_at_a_registry_and_a_layout() {
    let mut w = World::new();
    let a = w.image("a", "linux", "amd64");
    let b = w.image("b", "linux", "arm64");
    let inner = w.index(
        vec![
            on(&a.descriptor, "linux", "amd64"),
            on(&b.descriptor, "linux", "arm64"),
        ],
        true,
    );
    let outer = w.index(vec![desc(&inner)], true);
    w.entry(desc(&outer), Some("nested"));
    let dock = w.docker_image("d");
    // the descriptor says OCI, the body is Docker v2
    w.entry(
        json!({"mediaType": MT_MANIFEST, "digest": dock.digest, "size": dock.size}),
        Some("docker"),
    );
    let u1 = w.image("u1", "linux", "amd64");
    w.entry(desc(&u1.descriptor), None);
    let c = w.image("c", "linux", "amd64");
    let u2 = w.index(vec![on(&c.descriptor, "linux", "amd64")], false);
    w.entry(desc(&u2), None);
    let sig = w.notation_signature(&dock, "s1");
    let sig_entry = w.referrer_entry(&sig);
    w.entry(sig_entry, None);

    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let source = format!("oci:{}", w.dir().display());
    let targets = [
        format!("{}/w/app", reg.host()),
        format!("oci:{}", out.display()),
    ];
    let cfg = rule(dir.path(), &[&reg], &source, &targets, "");

    let plan = regkeeper(dir.path(), &cfg, &["plan", "--json"]);
    assert_eq!(plan.status.code(), Some(0));
    let listed = stdout_of(&plan);
    for d in [&u1.digest, &u2.digest] {
        assert!(listed.contains(d.as_str()), "plan lists untagged {d}");
    }

    let sync = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(sync.status.code(), Some(0), "{}", stdout_of(&sync));
    for d in [
        &outer.digest,
        &inner.digest,
        &a.digest,
        &b.digest,
        &dock.digest,
        &u1.digest,
        &u2.digest,
        &c.digest,
        &sig.digest,
    ] {
        same_at(&reg, "w/app", &w, d);
    }
    let docker = get(&reg, "w/app", "docker");
    assert_eq!(docker.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(reg.digest_of("w/app", "nested"), outer.digest);
    assert_eq!(
        get(&reg, "w/app", &u2.digest).header("content-type"),
        Some(MT_INDEX)
    );
    // the signature is listed where a registry without the API keeps it
    let fallback = get(&reg, "w/app", &format!("sha256-{}", &dock.digest[7..]));
    assert_eq!(fallback.status, 200);
    let listed: Value = serde_json::from_slice(&fallback.body).unwrap();
    assert_eq!(listed["manifests"][0]["digest"], sig.digest.as_str());
    assert_eq!(listed["manifests"][0]["artifactType"], NOTATION_SIG);

    // the layout target: tags, untagged entries, the signature as oras writes it
    let entries = index_json(&out);
    for d in [&u1.digest, &u2.digest, &sig.digest] {
        let e = entry_of(&entries, d).unwrap_or_else(|| panic!("{d} listed in index.json"));
        assert!(e["annotations"].get(REF_NAME).is_none(), "{d} untagged");
    }
    let s = entry_of(&entries, &sig.digest).unwrap();
    assert_eq!(s["artifactType"], NOTATION_SIG);
    assert_eq!(
        s["annotations"]["io.cncf.notary.x509chain.thumbprint#S256"],
        "[\"s1\"]"
    );
    let d = entry_of(&entries, &dock.digest).unwrap();
    assert_eq!(
        d["mediaType"], DOCKER_MANIFEST,
        "the layout descriptor says what the body is"
    );
    for d in [
        &outer.digest,
        &inner.digest,
        &a.digest,
        &dock.digest,
        &sig.digest,
        &c.digest,
    ] {
        let hex = &d[7..];
        assert!(
            std::fs::read(out.join("blobs/sha256").join(hex)).unwrap() == w.corpus.read_blob(d),
            "{d} in the layout target"
        );
    }
    assert_eq!(
        crate::sync::oci_digest(&out, "nested").as_deref(),
        Some(&outer.digest[..])
    );

    // registry -> layout: the tags and the signature come back whole
    let back = dir.path().join("back");
    let cfg2 = rule(
        dir.path(),
        &[&reg],
        &format!("{}/w/app", reg.host()),
        &[format!("oci:{}", back.display())],
        "",
    );
    let again = regkeeper(dir.path(), &cfg2, &["sync"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        crate::sync::oci_digest(&back, "nested").as_deref(),
        Some(&outer.digest[..])
    );
    // skopeo reads only OCI-typed index.json entries: the Docker one is
    // checked in index.json itself
    let entries = index_json(&back);
    let tagged = entries
        .iter()
        .find(|e| e["annotations"][REF_NAME] == "docker")
        .expect("docker tagged");
    assert_eq!(tagged["digest"], dock.digest.as_str());
    assert_eq!(tagged["mediaType"], DOCKER_MANIFEST);
    assert!(
        entry_of(&entries, &sig.digest).is_some(),
        "signature listed in index.json"
    );

    // a second sync has nothing to do
    let second = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    let doc = json_of(&second);
    let copies = doc["rules"][0]["copies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        copies.iter().all(|c| c["action"] == "in_sync"),
        "second sync copies nothing: {copies:?}"
    );
}

pub(super) fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A platform filter applies inside a nested index too: the inner index is
/// rewritten to the wanted platform, the outer one to list it.
#[test]
fn platforms_filter_every_level_of_a_nested_index() {
    let mut w = World::new();
    let a = w.image("pa", "linux", "amd64");
    let b = w.image("pb", "linux", "arm64");
    let inner = w.index(
        vec![
            on(&a.descriptor, "linux", "amd64"),
            on(&b.descriptor, "linux", "arm64"),
        ],
        true,
    );
    let outer = w.index(vec![desc(&inner)], true);
    w.entry(desc(&outer), Some("nested"));
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    let targets = [format!("{}/p/app", reg.host())];
    let cfg = rule(
        dir.path(),
        &[&reg],
        &source,
        &targets,
        "platforms = [\"linux/arm64\"]\n",
    );
    let out = regkeeper(dir.path(), &cfg, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let root: Value = serde_json::from_slice(&get(&reg, "p/app", "nested").body).unwrap();
    let inner_d = root["manifests"][0]["digest"].as_str().unwrap().to_string();
    assert_ne!(inner_d, inner.digest, "the inner index is rewritten");
    let got: Value = serde_json::from_slice(&get(&reg, "p/app", &inner_d).body).unwrap();
    let kept: Vec<&str> = got["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [b.digest.as_str()]);
    assert_eq!(get(&reg, "p/app", &a.digest).status, 404, "amd64 left out");
    same_at(&reg, "p/app", &w, &b.digest);
}

/// `untagged = false` leaves untagged entries behind; a rule that then
/// selects nothing says so.
#[test]
fn untagged_false_and_an_empty_selection_warn() {
    let mut w = World::new();
    let u = w.image("only", "linux", "amd64");
    w.entry(desc(&u.descriptor), None);
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    let targets = [format!("{}/u/app", reg.host())];
    let off = rule(dir.path(), &[&reg], &source, &targets, "untagged = false\n");
    let out = regkeeper(dir.path(), &off, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let warnings = json_of(&out)["rules"][0]["warnings"].to_string();
    assert!(warnings.contains("nothing is selected"), "{warnings}");
    assert_eq!(get(&reg, "u/app", &u.digest).status, 404);

    let on = rule(dir.path(), &[&reg], &source, &targets, "");
    let out = regkeeper(dir.path(), &on, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    same_at(&reg, "u/app", &w, &u.digest);
    assert!(
        !json_of(&out)["rules"][0]["warnings"]
            .to_string()
            .contains("nothing is selected")
    );
}

/// `copy` takes a nested index whose descriptor lies about nothing and a
/// Docker body under an OCI descriptor alike.
#[test]
fn copy_takes_nested_indexes_and_docker_bodies() {
    let mut w = World::new();
    let a = w.image("ca", "linux", "amd64");
    let inner = w.index(vec![on(&a.descriptor, "linux", "amd64")], true);
    let outer = w.index(vec![desc(&inner)], true);
    w.entry(desc(&outer), Some("nested"));
    let dock = w.docker_image("cd");
    w.entry(
        json!({"mediaType": MT_MANIFEST, "digest": dock.digest, "size": dock.size}),
        Some("docker"),
    );
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let cfg = header(dir.path(), &[&reg]);
    std::fs::write(dir.path().join("config.toml"), &cfg).unwrap();
    for tag in ["nested", "docker"] {
        let out = crate::sync::regkeeper_with(
            &dir.path().join("config.toml"),
            &[
                "copy",
                &format!("oci:{}:{tag}", w.dir().display()),
                &format!("{}/c/app:{tag}", reg.host()),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "copy {tag}");
    }
    for d in [&outer.digest, &inner.digest, &a.digest, &dock.digest] {
        same_at(&reg, "c/app", &w, d);
    }
}

/// A layout skopeo itself writes with `skopeo copy … oci:DIR` (no tag):
/// every image an untagged entry. All arrive, by digest, and a layout target
/// lists them untagged too.
#[test]
fn a_layout_skopeo_writes_untagged_is_mirrored() {
    let mut corpus = Corpus::new();
    corpus.image("x", &ImageSpec::new(&[layer("sk-x", 2000)]));
    corpus.image(
        "y",
        &ImageSpec::new(&[layer("sk-y", 2100)]).platform("linux", "arm64", None),
    );
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("written");
    for name in ["x", "y"] {
        let out = std::process::Command::new("skopeo")
            .args(["copy", "-q", &corpus.oci_ref(name)])
            .arg(format!("oci:{}", written.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let entries = index_json(&written);
    assert_eq!(entries.len(), 2, "skopeo wrote two untagged entries");
    assert!(entries.iter().all(|e| e.get("annotations").is_none()));

    let reg = Registry::start_plain();
    let out_dir = dir.path().join("out");
    let source = format!("oci:{}", written.display());
    let targets = [
        format!("{}/sk/app", reg.host()),
        format!("oci:{}", out_dir.display()),
    ];
    let cfg = rule(dir.path(), &[&reg], &source, &targets, "");
    let out = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    for e in &entries {
        let d = e["digest"].as_str().unwrap();
        let r = get(&reg, "sk/app", d);
        assert_eq!(r.status, 200, "{d}");
        let held = std::fs::read(written.join("blobs/sha256").join(&d[7..])).unwrap();
        assert!(r.body == held, "{d} byte for byte");
        assert!(entry_of(&index_json(&out_dir), d).is_some());
    }
    // nothing left to do
    let again = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    let copies = json_of(&again)["rules"][0]["copies"].to_string();
    assert!(!copies.contains("\"create\""), "{copies}");
}
