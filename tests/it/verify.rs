//! `[rule.verify]`: only what a configured key signed reaches the target,
//! with its signature; plan, sync and metrics say why the rest did not, and
//! nothing of a refused image (no blob) is written. Signatures are written
//! by `support::cosign` (cosign's documented format), read back with raw
//! HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cosign::{Signer, push_signature};
use crate::support::ferro::{OCI_INDEX, Pushed, get, manifest_bytes, push_image, put_manifest};
use crate::support::{Daemon, PathKind, Registry, free_port, sha256_digest, wait_for};
use crate::sync::{header, regkeeper};

/// What the source holds: tag -> image, and the digests of an index's images.
struct Source {
    images: BTreeMap<&'static str, Pushed>,
    children: Vec<Pushed>,
    multi: String,
}

/// signed, unsigned, foreign (another key, with a bundle naming it),
/// elsewhere (our key, for another digest), tampered (payload changed after
/// signing), multi (an index: it and image a signed, image b not).
fn fill(base: &str, ours: &Signer, theirs: &Signer) -> Source {
    let mut images = BTreeMap::new();
    for tag in ["signed", "unsigned", "foreign", "elsewhere", "tampered"] {
        images.insert(tag, push_image(base, "app", tag, &format!("seed-{tag}")));
    }
    let reference = format!("{}/app", base.trim_start_matches("http://"));
    let d = |t: &str| images[t].digest.clone();
    ours.push(base, "app", &d("signed"), &reference, false);
    theirs.push(base, "app", &d("foreign"), &reference, true);
    let other = Signer::payload(&d("signed"), &reference);
    push_signature(
        base,
        "app",
        &d("elsewhere"),
        &other,
        json!({"dev.cosignproject.cosign/signature": ours.sign(&other)}),
    );
    let payload = Signer::payload(&d("tampered"), &reference);
    let sig = ours.sign(&payload);
    let changed = Signer::payload(&d("tampered"), "evil.example/app");
    push_signature(
        base,
        "app",
        &d("tampered"),
        &changed,
        json!({"dev.cosignproject.cosign/signature": sig}),
    );

    let children = vec![
        push_image(base, "app", "child-a", "seed-a"),
        push_image(base, "app", "child-b", "seed-b"),
    ];
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|c| {
            let mut d = c.descriptor();
            d["platform"] = json!({"os": "linux", "architecture": "amd64"});
            d
        }).collect::<Vec<_>>()});
    let bytes = serde_json::to_vec(&index).unwrap();
    put_manifest(base, "app", "multi", OCI_INDEX, &bytes);
    let multi = sha256_digest(&bytes);
    ours.push(base, "app", &multi, &reference, false);
    ours.push(base, "app", &children[0].digest, &reference, false);
    Source {
        images,
        children,
        multi,
    }
}

fn tags(base: &str, repo: &str) -> BTreeSet<String> {
    let r = get(base, &format!("/v2/{repo}/tags/list")).expect("tags");
    if r.status == 404 {
        return BTreeSet::new();
    }
    let v: Value = serde_json::from_slice(&r.body).expect("tags JSON");
    v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn has_blob(base: &str, repo: &str, digest: &str) -> bool {
    get(base, &format!("/v2/{repo}/blobs/{digest}"))
        .expect("blob")
        .status
        == 200
}

/// The blobs of an image pushed by `push_image`.
fn blobs(p: &Pushed) -> Vec<String> {
    let m: Value = serde_json::from_slice(&p.bytes).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string());
    std::iter::once(m["config"]["digest"].as_str().unwrap().to_string())
        .chain(layers)
        .collect()
}

fn config(dir: &Path, src: &Registry, dst: &Registry, key: &Path, listen: Option<u16>) -> String {
    let mut c = header(dir, &[src, dst]);
    if let Some(port) = listen {
        c = c.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    }
    let (s, d, k) = (src.host(), dst.host(), key.display());
    c += &format!(
        "[[rule]]\nname = \"all\"\nsource = \"{s}/app\"\ntargets = [\"{d}/all\"]\ntags.exclude = ['^child-']\n\
         [rule.verify]\nsigstore_keys = [\"{k}\"]\n\
         [[rule]]\nname = \"idx\"\nsource = \"{s}/app\"\ntargets = [\"{d}/idx\"]\ntags.include = ['^multi$']\n\
         [rule.verify]\nsigstore_keys = [\"{k}\"]\nrequire = \"index\"\n\
         [[rule]]\nname = \"ref\"\nsource = \"{s}/app\"\ntargets = [\"{d}/ref\"]\ntags.include = ['^signed$']\n\
         [rule.verify]\nsigstore_keys = [\"{k}\"]\ndocker_reference = \"registry.example.com/elsewhere\"\n"
    );
    c
}

/// Per rule, tag -> reason of the refusals a `--json` document lists.
fn refusals(doc: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
    doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let refused = r["refused"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    (
                        x["tag"].as_str().unwrap().to_string(),
                        x["reason"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (r["rule"].as_str().unwrap().to_string(), refused)
        })
        .collect()
}

fn expected() -> BTreeMap<String, BTreeMap<String, String>> {
    let m = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    BTreeMap::from([
        (
            "all".to_string(),
            m(&[
                ("elsewhere", "digest_mismatch"),
                ("foreign", "wrong_key"),
                ("multi", "unsigned"),
                ("tampered", "bad_signature"),
                ("unsigned", "unsigned"),
            ]),
        ),
        ("idx".to_string(), m(&[])),
        ("ref".to_string(), m(&[("signed", "identity_mismatch")])),
    ])
}

#[test]
fn only_signed_images_arrive_with_their_signatures() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (Signer::new(), Signer::new());
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let s = fill(&src.url(), &ours, &theirs);
    // What the target already holds under a tag that is refused stays.
    let old = push_image(&dst.url(), "all", "unsigned", "seed-old");
    let text = config(dir.path(), &src, &dst, &key, None);

    let out = regkeeper(dir.path(), &text, &["plan", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(refusals(&plan), expected());
    let text_plan = regkeeper(dir.path(), &text, &["plan"]);
    let shown = String::from_utf8_lossy(&text_plan.stdout);
    assert!(
        shown.contains("refuse") && shown.contains("wrong_key"),
        "{shown}"
    );

    let out = regkeeper(dir.path(), &text, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "refusals make sync exit 1");
    let sync: Value = serde_json::from_slice(&out.stdout).expect("sync JSON");
    assert_eq!(refusals(&sync), expected());

    let dbase = dst.url();
    let sig = |d: &str| format!("sha256-{}.sig", d.trim_start_matches("sha256:"));
    let signed = &s.images["signed"].digest;
    let want: BTreeSet<String> = ["signed".to_string(), sig(signed), "unsigned".to_string()].into();
    assert_eq!(tags(&dbase, "all"), want);
    assert_eq!(
        tags(&dbase, "idx"),
        BTreeSet::from(["multi".to_string(), sig(&s.multi)])
    );
    assert!(tags(&dbase, "ref").is_empty());
    // The signatures arrived byte for byte; the refused tag still points at what it did.
    assert_eq!(
        manifest_bytes(&dbase, "all", &sig(signed)),
        manifest_bytes(&src.url(), "app", &sig(signed))
    );
    assert_eq!(
        manifest_bytes(&dbase, "all", "unsigned"),
        Some(old.bytes.clone())
    );
    // Nothing of a refused image: no blob, no manifest.
    for tag in ["unsigned", "foreign", "elsewhere", "tampered"] {
        let image = &s.images[tag];
        for b in blobs(image) {
            assert!(
                !has_blob(&dbase, "all", &b),
                "{tag}: blob {b} reached the target"
            );
        }
        assert!(
            manifest_bytes(&dbase, "all", &image.digest).is_none(),
            "{tag}"
        );
    }
    for b in blobs(&s.children[1]) {
        assert!(
            !has_blob(&dbase, "all", &b),
            "unsigned image of the index: blob {b}"
        );
        assert!(
            has_blob(&dbase, "idx", &b),
            "require = \"index\" copies the index whole"
        );
    }
}

#[test]
fn refusals_are_counted_per_rule_and_reason() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (Signer::new(), Signer::new());
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    fill(&src.url(), &ours, &theirs);
    let port = free_port();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(dir.path(), &src, &dst, &key, Some(port))).unwrap();
    let d = Daemon::spawn(&path, port, &[]);
    let series = |rule: &str, reason: &str| {
        format!("regkeeper_rule_images_refused_total{{reason=\"{reason}\",rule=\"{rule}\"}}")
    };
    assert!(
        d.has_series(&series("idx", "wrong_key")),
        "every reason exists from start-up"
    );
    wait_for("the rules ran", Duration::from_secs(60), || {
        d.value(&series("all", "unsigned")) >= 2.0
            && d.value(&series("ref", "identity_mismatch")) >= 1.0
    });
    for (rule, reason, n) in [
        ("all", "wrong_key", 1.0),
        ("all", "digest_mismatch", 1.0),
        ("all", "bad_signature", 1.0),
        ("all", "unsigned", 2.0),
        ("ref", "identity_mismatch", 1.0),
        ("idx", "unsigned", 0.0),
    ] {
        assert_eq!(d.value(&series(rule, reason)), n, "{rule} {reason}");
    }
    assert!(d.value("regkeeper_rule_runs_total{result=\"partial\",rule=\"all\"}") >= 1.0);
}

#[test]
fn copy_verify_key_copies_only_what_the_key_signed() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (Signer::new(), Signer::new());
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let s = fill(&src.url(), &ours, &theirs);
    let text = header(dir.path(), &[&src, &dst]);
    let k = key.to_str().unwrap();
    let copy = |tag: &str, key: &str| {
        let from = format!("{}/app:{tag}", src.host());
        let to = format!("{}/copy:{tag}", dst.host());
        regkeeper(
            dir.path(),
            &text,
            &["copy", &from, &to, "--verify-key", key],
        )
    };
    let out = copy("signed", k);
    assert_eq!(out.status.code(), Some(0));
    let signed = &s.images["signed"].digest;
    let sig = format!("sha256-{}.sig", signed.trim_start_matches("sha256:"));
    assert_eq!(
        tags(&dst.url(), "copy"),
        BTreeSet::from(["signed".to_string(), sig])
    );
    for (tag, reason) in [
        ("unsigned", "unsigned"),
        ("foreign", "wrong_key"),
        ("multi", "unsigned"),
    ] {
        let out = copy(tag, k);
        assert_eq!(out.status.code(), Some(1), "{tag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("refused ({reason})")), "{tag}: {err}");
        assert!(!tags(&dst.url(), "copy").contains(tag));
        for b in blobs(&s.images.get(tag).unwrap_or(&s.children[1]).clone()) {
            assert!(!has_blob(&dst.url(), "copy", &b), "{tag}: blob {b}");
        }
    }
    // A file that is not a public key: a usage error before anything is contacted.
    let private = dir.path().join("cosign.key");
    std::fs::write(
        &private,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = copy("signed", private.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("private key"));
}

/// The cost of verification at the source, beyond what `referrers = true`
/// (the default) reads anyway: `plan` GETs each signed image's payload
/// once (the `.sig` manifest read for it is the one resolved), and nothing
/// for an unsigned one (the tag list already says it has no `.sig` tag);
/// `sync` reads no blob more than without verification: the payload it
/// verified is the one it writes, from memory, so each is read once.
/// Printed: the wall times, for the report.
#[test]
fn verification_reads_no_blob_twice() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let ours = Signer::new();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let base = src.url();
    let reference = format!("{}/app", src.host());
    for i in 0..10 {
        let signed = push_image(&base, "app", &format!("s{i}"), &format!("signed {i}"));
        ours.push(&base, "app", &signed.digest, &reference, false);
        push_image(&base, "app", &format!("u{i}"), &format!("unsigned {i}"));
    }
    let rule = |verify: bool, include: &str| {
        let mut c = header(dir.path(), &[&src, &dst]);
        c += &format!(
            "[[rule]]\nname = \"r\"\nsource = \"{}/app\"\ntargets = [\"{}/r{verify}\"]\ntags.include = ['{include}']\n",
            src.host(),
            dst.host()
        );
        if verify {
            c += &format!("[rule.verify]\nsigstore_keys = [\"{}\"]\n", key.display());
        }
        c
    };
    let mut cost = Vec::new();
    for verify in [false, true] {
        let mark = src.mark();
        let started = std::time::Instant::now();
        let out = regkeeper(dir.path(), &rule(verify, r"^[su]\d$"), &["plan", "--json"]);
        let seconds = started.elapsed().as_secs_f64();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let refused = doc["rules"][0]["refused"].as_array().map_or(0, Vec::len);
        assert_eq!(refused, if verify { 10 } else { 0 });
        let n = src.requests_since(mark).len();
        eprintln!("verify={verify}: {n} source requests, plan {seconds:.2}s");
        cost.push(n);
    }
    assert_eq!(
        cost[1] - cost[0],
        10,
        "plan: one payload GET per signed image {cost:?}"
    );

    // sync, signed images only, each into a repository of its own.
    let mut blobs = Vec::new();
    for verify in [false, true] {
        let mark = src.mark();
        let started = std::time::Instant::now();
        let out = regkeeper(dir.path(), &rule(verify, r"^s\d$"), &["sync", "--json"]);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = src.requests_since(mark);
        let gets: Vec<&str> = (log.iter())
            .filter(|r| r.is("GET", PathKind::Blob))
            .map(|r| r.path_only())
            .collect();
        let mut seen = BTreeSet::new();
        let twice: Vec<&str> = gets.iter().copied().filter(|p| !seen.insert(*p)).collect();
        assert!(twice.is_empty(), "verify={verify}: read twice: {twice:?}");
        eprintln!(
            "verify={verify}: sync {} source requests, {} blob GETs, {seconds:.2}s",
            log.len(),
            gets.len()
        );
        blobs.push(gets.len());
    }
    assert_eq!(
        blobs[0], blobs[1],
        "sync: no blob GET beyond referrers = true"
    );
    // What arrived is signed: every image with its `.sig`.
    for i in 0..10 {
        let digest = sha256_digest(&manifest_bytes(&base, "app", &format!("s{i}")).unwrap());
        let sig = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
        assert!(manifest_bytes(&dst.url(), "rtrue", &sig).is_some(), "{sig}");
    }
}

/// With `platforms` keeping part of an index, the index written is
/// regkeeper's own: the source's index must be signed and list the kept
/// images, and (`require = "all"`) each kept image must be signed.
#[test]
fn a_platform_subset_is_verified_by_the_source_index_and_its_images() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let ours = Signer::new();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let base = src.url();
    let reference = format!("{}/app", src.host());
    let amd = push_image(&base, "app", "child-amd", "amd");
    let arm = push_image(&base, "app", "child-arm", "arm");
    let entry = |p: &Pushed, arch: &str| {
        let mut d = p.descriptor();
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    };
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64")]});
    let bytes = serde_json::to_vec(&index).unwrap();
    put_manifest(&base, "app", "multi", OCI_INDEX, &bytes);
    ours.push(&base, "app", &sha256_digest(&bytes), &reference, false);
    ours.push(&base, "app", &amd.digest, &reference, false);
    let mut text = header(dir.path(), &[&src, &dst]);
    for arch in ["amd64", "arm64"] {
        text += &format!(
            "[[rule]]\nname = \"{arch}\"\nsource = \"{}/app\"\ntargets = [\"{}/{arch}\"]\n\
             tags.include = ['^multi$']\nplatforms = [\"linux/{arch}\"]\n\
             [rule.verify]\nsigstore_keys = [\"{}\"]\n",
            src.host(),
            dst.host(),
            key.display()
        );
    }
    let out = regkeeper(dir.path(), &text, &["sync", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = refusals(&doc);
    assert!(refused["amd64"].is_empty(), "{refused:?}");
    assert_eq!(
        refused["arm64"].get("multi").map(String::as_str),
        Some("unsigned")
    );
    let sig = format!("sha256-{}.sig", amd.digest.trim_start_matches("sha256:"));
    assert_eq!(
        tags(&dst.url(), "amd64"),
        BTreeSet::from(["multi".to_string(), sig])
    );
    assert!(tags(&dst.url(), "arm64").is_empty());
}
