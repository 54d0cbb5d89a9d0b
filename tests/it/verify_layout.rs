//! `[rule.verify]` with an `oci:` layout source: signatures kept the way
//! oras, regclient and cosign's `save` keep them in a layout (a sigstore
//! bundle referrer listed untagged in `index.json`, its manifest having a
//! `subject`; cosign's `sha256-<hex>.sig` ref name), mirrored to a real
//! docker-registry (no referrers API: the bundles arrive in its
//! `sha256-<hex>` fallback index). Tagged images and untagged entry points
//! alike: exactly the verified ones arrive, with their signatures; the
//! others are refused (an untagged entry under its digest), by `plan` and
//! `sync` alike, counted, and nothing of them is written. `copy
//! --verify-key` from a layout finds the same bundles.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::corpus::{Descriptor, MT_MANIFEST};
use crate::support::cosign::{SIGSTORE_BUNDLE, SIMPLE_SIGNING, Signer};
use crate::support::ferro::{get, manifest_bytes};
use crate::support::layouts::{EMPTY, World, desc};
use crate::support::{Daemon, Registry, free_port, wait_for};
use crate::sync::{header, regkeeper};

/// A sigstore bundle referrer of `subject` as cosign v3 / oras write it,
/// listed untagged in `index.json` with its `artifactType`.
fn bundle_referrer(w: &mut World, subject: &Descriptor, bundle: &[u8]) -> Descriptor {
    let cfg = w.corpus.write_blob(EMPTY, b"{}");
    let layer = w.corpus.write_blob(SIGSTORE_BUNDLE, bundle);
    let m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": SIGSTORE_BUNDLE,
        "config": desc(&cfg), "layers": [desc(&layer)], "subject": desc(subject),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}});
    let d = w
        .corpus
        .write_blob(MT_MANIFEST, &serde_json::to_vec(&m).unwrap());
    let entry = w.referrer_entry(&d);
    w.entry(entry, None);
    d
}

/// A key-signed bundle for `digest` (named `name`), as a referrer of `subject`.
fn signed_by_bundle(w: &mut World, s: &Signer, subject: &Descriptor, digest: &str) -> Descriptor {
    let bundle = s.dsse_bundle(&Signer::statement(digest, "example.com/app"));
    bundle_referrer(w, subject, &bundle)
}

/// cosign's `.sig` manifest for `subject` (simple-signing payload, its
/// signature in the layer annotation), under the ref name `sha256-<hex>.sig`.
fn sig_tag(w: &mut World, s: &Signer, subject: &str) -> Descriptor {
    let payload = Signer::payload(subject, "example.com/app");
    let annotations = json!({"dev.cosignproject.cosign/signature": s.sign(&payload)});
    let p = w.corpus.write_blob(SIMPLE_SIGNING, &payload);
    let config = json!({"architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [p.digest]}});
    let c = w.corpus.write_blob(
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let mut layer = desc(&p);
    layer["annotations"] = annotations;
    let m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": desc(&c), "layers": [layer]});
    let d = w
        .corpus
        .write_blob(MT_MANIFEST, &serde_json::to_vec(&m).unwrap());
    let tag = format!("sha256-{}.sig", subject.trim_start_matches("sha256:"));
    w.entry(desc(&d), Some(&tag));
    d
}

fn config(dir: &std::path::Path, layout: &World, dst: &Registry, key: &str) -> String {
    format!(
        "{}[[rule]]\nname = \"lay\"\nsource = \"oci:{}\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nsigstore_keys = [{key:?}]\n",
        header(dir, &[dst]),
        layout.dir().display(),
        dst.host(),
    )
}

/// tag -> reason of the refusals a `--json` document lists.
fn refusals(doc: &Value) -> BTreeMap<String, String> {
    (doc["rules"].as_array().unwrap().iter())
        .flat_map(|r| r["refused"].as_array().cloned().unwrap_or_default())
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap().to_string();
            (s("tag"), s("reason"))
        })
        .collect()
}

/// Runs `plan --json` then `sync --json`: both list `want` as refused (and
/// exit 1 for sync); plan writes nothing (`probe` is still absent after it).
fn plan_then_sync(dir: &std::path::Path, cfg: &str, want: &BTreeMap<String, String>, probe: &str) {
    let base = |doc: &str| -> Value {
        serde_json::from_str(doc).unwrap_or_else(|e| panic!("JSON: {e}: {doc}"))
    };
    let plan = regkeeper(dir, cfg, &["plan", "--json"]);
    let doc = base(&String::from_utf8_lossy(&plan.stdout));
    assert_eq!(&refusals(&doc), want, "plan: {doc}");
    assert!(get_status(probe) == 404, "plan wrote {probe}");
    let sync = regkeeper(dir, cfg, &["sync", "--json"]);
    let doc = base(&String::from_utf8_lossy(&sync.stdout));
    assert_eq!(sync.status.code(), Some(1), "refusals make sync exit 1");
    assert_eq!(&refusals(&doc), want, "sync: {doc}");
}

/// The status of a GET of `url` (a full URL at the target).
fn get_status(url: &str) -> u16 {
    let (base, path) = url.split_at(url.find("/v2/").unwrap());
    get(base, path).expect("GET").status
}

/// The digests a `sha256-<hex>` fallback index at the target lists.
fn fallback(base: &str, subject: &str) -> Vec<String> {
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let Some(bytes) = manifest_bytes(base, "mirror", &tag) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    (v["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter())
    .map(|e| e["digest"].as_str().unwrap().to_string())
    .collect()
}

#[test]
fn layout_signatures_verify_tagged_images() {
    let dst = Registry::start_plain();
    let (ours, theirs) = (Signer::new(), Signer::new());
    let mut w = World::new();
    let signed = w.image("signed", "linux", "amd64");
    let elsewhere = w.image("elsewhere", "linux", "amd64");
    let by_sig = w.image("by-sig", "linux", "amd64");
    let foreign = w.image("foreign", "linux", "amd64");
    for (img, tag) in [
        (&signed, "signed"),
        (&elsewhere, "elsewhere"),
        (&by_sig, "by-sig"),
        (&foreign, "foreign"),
    ] {
        w.entry(desc(&img.descriptor), Some(tag));
    }
    let good = signed_by_bundle(&mut w, &ours, &signed.descriptor, &signed.digest);
    // Our key, but over the other image's digest.
    let wrong = signed_by_bundle(&mut w, &ours, &elsewhere.descriptor, &signed.digest);
    let sig = sig_tag(&mut w, &ours, &by_sig.digest);
    sig_tag(&mut w, &theirs, &foreign.digest);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let cfg = config(dir.path(), &w, &dst, key.to_str().unwrap());
    let want: BTreeMap<String, String> = [
        ("elsewhere", "digest_mismatch"),
        ("foreign", "bad_signature"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let base = dst.url();
    let probe = format!("{base}/v2/mirror/manifests/signed");
    plan_then_sync(dir.path(), &cfg, &want, &probe);

    // The bundle-signed image arrived with its bundle, in the fallback index.
    assert_eq!(
        manifest_bytes(&base, "mirror", "signed"),
        Some(signed.manifest.clone())
    );
    assert_eq!(fallback(&base, &signed.digest), vec![good.digest.clone()]);
    assert!(manifest_bytes(&base, "mirror", &good.digest).is_some());
    // The `.sig`-signed image arrived with its `.sig` tag.
    assert_eq!(
        manifest_bytes(&base, "mirror", "by-sig"),
        Some(by_sig.manifest.clone())
    );
    let sig_tag = format!("sha256-{}.sig", by_sig.digest.trim_start_matches("sha256:"));
    let got = manifest_bytes(&base, "mirror", &sig_tag).map(|b| crate::support::sha256_digest(&b));
    assert_eq!(got, Some(sig.digest.clone()));
    // Nothing of the refused ones: no tag, manifest, blob, bundle or index.
    for img in [&elsewhere, &foreign] {
        assert_eq!(manifest_bytes(&base, "mirror", &img.digest), None);
        for b in img.blobs() {
            let url = format!("{base}/v2/mirror/blobs/{}", b.digest);
            assert_eq!(get_status(&url), 404, "blob of a refused image: {url}");
        }
        assert!(fallback(&base, &img.digest).is_empty());
    }
    for tag in ["elsewhere", "foreign", wrong.digest.as_str()] {
        assert_eq!(manifest_bytes(&base, "mirror", tag), None, "{tag}");
    }
}

#[test]
fn untagged_entries_are_verified_like_tags() {
    let dst = Registry::start_plain();
    let ours = Signer::new();
    let mut w = World::new();
    let by_bundle = w.image("by-bundle", "linux", "amd64");
    let by_sig = w.image("by-sig", "linux", "amd64");
    let unsigned = w.image("unsigned", "linux", "amd64");
    for img in [&by_bundle, &by_sig, &unsigned] {
        w.entry(desc(&img.descriptor), None);
    }
    let bundle = signed_by_bundle(&mut w, &ours, &by_bundle.descriptor, &by_bundle.digest);
    sig_tag(&mut w, &ours, &by_sig.digest);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let cfg = config(dir.path(), &w, &dst, key.to_str().unwrap());
    let want: BTreeMap<String, String> = [(unsigned.digest.clone(), "unsigned".to_string())].into();
    let base = dst.url();
    let probe = format!("{base}/v2/mirror/manifests/{}", by_bundle.digest);
    plan_then_sync(dir.path(), &cfg, &want, &probe);

    for img in [&by_bundle, &by_sig] {
        let got = manifest_bytes(&base, "mirror", &img.digest);
        assert_eq!(got, Some(img.manifest.clone()), "verified entry arrives");
    }
    assert_eq!(
        fallback(&base, &by_bundle.digest),
        vec![bundle.digest.clone()]
    );
    let sig_tag = format!("sha256-{}.sig", by_sig.digest.trim_start_matches("sha256:"));
    assert!(manifest_bytes(&base, "mirror", &sig_tag).is_some());
    assert_eq!(manifest_bytes(&base, "mirror", &unsigned.digest), None);
    for b in unsigned.blobs() {
        let url = format!("{base}/v2/mirror/blobs/{}", b.digest);
        assert_eq!(get_status(&url), 404, "blob of a refused entry: {url}");
    }

    // The daemon counts the refusal per rule and reason.
    let port = free_port();
    let path = dir.path().join("daemon.toml");
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    std::fs::write(&path, cfg.replace("listen = \"\"", &listen)).unwrap();
    let d = Daemon::spawn(&path, port, &[]);
    let series = |reason: &str| {
        format!("regkeeper_rule_images_refused_total{{reason=\"{reason}\",rule=\"lay\"}}")
    };
    wait_for("the rule ran", Duration::from_secs(60), || {
        d.value(&series("unsigned")) >= 1.0
    });
    assert_eq!(d.value(&series("digest_mismatch")), 0.0);
}

#[test]
fn copy_verify_key_finds_bundles_in_a_layout() {
    let dst = Registry::start_plain();
    let ours = Signer::new();
    let mut w = World::new();
    let signed = w.image("signed", "linux", "amd64");
    let elsewhere = w.image("elsewhere", "linux", "amd64");
    w.entry(desc(&signed.descriptor), Some("signed"));
    w.entry(desc(&elsewhere.descriptor), Some("elsewhere"));
    let good = signed_by_bundle(&mut w, &ours, &signed.descriptor, &signed.digest);
    signed_by_bundle(&mut w, &ours, &elsewhere.descriptor, &signed.digest);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let text = header(dir.path(), &[&dst]);
    let copy = |tag: &str| {
        let from = format!("oci:{}:{tag}", w.dir().display());
        let to = format!("{}/mirror:{tag}", dst.host());
        let args = ["copy", &from, &to, "--verify-key", key.to_str().unwrap()];
        regkeeper(dir.path(), &text, &args)
    };
    let out = copy("signed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = dst.url();
    assert_eq!(
        manifest_bytes(&base, "mirror", "signed"),
        Some(signed.manifest.clone())
    );
    assert_eq!(fallback(&base, &signed.digest), vec![good.digest.clone()]);
    let out = copy("elsewhere");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("digest_mismatch"),
        "{err}"
    );
    assert_eq!(manifest_bytes(&base, "mirror", &elsewhere.digest), None);
}
