//! Signatures go with a verified image wherever the source keeps them, read
//! once: `copy --verify-key` carries the sigstore bundle referrers that
//! verified it (ferro-oci-server, referrers API); a source without the API
//! (docker-registry 2.8.2) holds them in its `sha256-<hex>` fallback index
//! (the referrers tag schema), which verification consults and the target
//! receives (merged); the `.sig` manifest verified is the one copied, asked
//! once. Signatures written by `support::cosign`, results read with raw HTTP.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::cosign::{SIGSTORE_BUNDLE, Signer};
use crate::support::ferro::{
    Ferro, Pushed, entry_digests, get, manifest_bytes, push_fallback_index, push_image,
    push_referrer, referrers,
};
use crate::support::{PathKind, Registry};
use crate::sync::{header, regkeeper};

/// A bundle by `signer` over `digest`, as cosign v3 writes it for `name`.
fn bundle(signer: &Signer, digest: &str, name: &str) -> Vec<u8> {
    signer.dsse_bundle(&Signer::statement(digest, name))
}

fn write_key(dir: &Path, signer: &Signer) -> String {
    let key = dir.join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    key.display().to_string()
}

/// The blobs of an image pushed by `push_image`.
fn blobs(p: &Pushed) -> Vec<String> {
    let m: Value = serde_json::from_slice(&p.bytes).unwrap();
    let layers =
        (m["layers"].as_array().unwrap().iter()).map(|l| l["digest"].as_str().unwrap().to_string());
    std::iter::once(m["config"]["digest"].as_str().unwrap().to_string())
        .chain(layers)
        .collect()
}

/// Nothing of `image` (tag, manifest, blobs) is in `repo` at `base`.
fn nothing_of(base: &str, repo: &str, tag: &str, image: &Pushed) {
    assert_eq!(manifest_bytes(base, repo, tag), None, "{tag}");
    assert_eq!(manifest_bytes(base, repo, &image.digest), None, "{tag}");
    for b in blobs(image) {
        let r = get(base, &format!("/v2/{repo}/blobs/{b}")).unwrap();
        assert_ne!(r.status, 200, "{tag}: blob {b}");
    }
}

fn copy(dir: &Path, config: &str, from: &str, to: &str, key: &str) -> std::process::Output {
    regkeeper(dir, config, &["copy", from, to, "--verify-key", key])
}

#[test]
fn copy_verify_key_carries_the_bundle_referrer() {
    let (src, dst) = (Ferro::start(), Ferro::start());
    let ours = Signer::new();
    let base = src.url();
    let signed = push_image(&base, "app", "signed", "seed-signed");
    let unsigned = push_image(&base, "app", "unsigned", "seed-unsigned");
    let name = format!("{}/app", src.host());
    let bytes = bundle(&ours, &signed.digest, &name);
    let good = push_referrer(&base, "app", &signed, SIGSTORE_BUNDLE, &bytes).0;

    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), &ours);
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}",
        dir.path().join("state").display().to_string(),
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
    );
    let (from, to) = (
        format!("{name}:signed"),
        format!("{}/copy:signed", dst.host()),
    );
    let out = copy(dir.path(), &config, &from, &to, &key);
    assert_eq!(out.status.code(), Some(0));
    let target = dst.url();
    assert_eq!(
        manifest_bytes(&target, "copy", "signed"),
        Some(signed.bytes.clone())
    );
    let listed = referrers(&target, "copy", &signed.digest);
    assert_eq!(entry_digests(&listed), [good.digest.clone()].into());
    assert_eq!(listed[0]["artifactType"], SIGSTORE_BUNDLE);
    assert_eq!(
        manifest_bytes(&target, "copy", &good.digest),
        Some(good.bytes)
    );

    let (from, to) = (
        format!("{name}:unsigned"),
        format!("{}/copy:unsigned", dst.host()),
    );
    let out = copy(dir.path(), &config, &from, &to, &key);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused (unsigned)"), "{err}");
    nothing_of(&target, "copy", "unsigned", &unsigned);
}

/// What a docker-registry source holds: `bundled`, signed only by a bundle
/// its fallback index lists; `elsewhere`, whose fallback index lists a
/// bundle over `bundled`'s digest.
struct FallbackSource {
    bundled: Pushed,
    elsewhere: Pushed,
    good: Pushed,
}

fn fallback_source(src: &Registry, signer: &Signer) -> FallbackSource {
    let base = src.url();
    let bundled = push_image(&base, "app", "bundled", "seed-bundled");
    let elsewhere = push_image(&base, "app", "elsewhere", "seed-elsewhere");
    let name = format!("{}/app", src.host());
    let bytes = bundle(signer, &bundled.digest, &name);
    let good = push_referrer(&base, "app", &bundled, SIGSTORE_BUNDLE, &bytes).0;
    push_fallback_index(&base, "app", &bundled.digest, &[&good]);
    let bad = push_referrer(&base, "app", &elsewhere, SIGSTORE_BUNDLE, &bytes).0;
    push_fallback_index(&base, "app", &elsewhere.digest, &[&bad]);
    FallbackSource {
        bundled,
        elsewhere,
        good,
    }
}

fn fallback_tag(digest: &str) -> String {
    format!("sha256-{}", digest.trim_start_matches("sha256:"))
}

/// `subject`'s fallback index at `base`/`repo` lists exactly `want`, whose
/// manifest is there byte for byte.
fn listed_in_fallback(base: &str, repo: &str, subject: &Pushed, want: &Pushed) {
    let index = manifest_bytes(base, repo, &fallback_tag(&subject.digest))
        .unwrap_or_else(|| panic!("{repo}: no fallback index for {}", subject.digest));
    let index: Value = serde_json::from_slice(&index).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entry_digests(entries), [want.digest.clone()].into());
    assert_eq!(entries[0]["artifactType"], SIGSTORE_BUNDLE);
    assert_eq!(
        manifest_bytes(base, repo, &want.digest),
        Some(want.bytes.clone())
    );
}

#[test]
fn bundles_in_the_fallback_index_verify_and_arrive() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let ours = Signer::new();
    let s = fallback_source(&src, &ours);
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), &ours);
    let base = header(dir.path(), &[&src, &dst]);
    let rule = format!(
        "{base}[[rule]]\nname = \"app\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nsigstore_keys = [{key:?}]\n",
        src.host(),
        dst.host(),
    );
    let out = regkeeper(dir.path(), &rule, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a refusal makes sync exit 1");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused: Vec<(String, String)> = (doc["rules"][0]["refused"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["tag"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(refused, [("elsewhere".into(), "digest_mismatch".into())]);
    let target = dst.url();
    assert_eq!(
        manifest_bytes(&target, "mirror", "bundled"),
        Some(s.bundled.bytes.clone())
    );
    listed_in_fallback(&target, "mirror", &s.bundled, &s.good);
    nothing_of(&target, "mirror", "elsewhere", &s.elsewhere);
    assert_eq!(
        manifest_bytes(&target, "mirror", &fallback_tag(&s.elsewhere.digest)),
        None
    );

    // copy --verify-key: the same check, the same signatures carried.
    let name = format!("{}/app", src.host());
    let to = |tag: &str| format!("{}/copy:{tag}", dst.host());
    let out = copy(
        dir.path(),
        &base,
        &format!("{name}:bundled"),
        &to("bundled"),
        &key,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        manifest_bytes(&target, "copy", "bundled"),
        Some(s.bundled.bytes.clone())
    );
    listed_in_fallback(&target, "copy", &s.bundled, &s.good);
    let out = copy(
        dir.path(),
        &base,
        &format!("{name}:elsewhere"),
        &to("elsewhere"),
        &key,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused (digest_mismatch)"), "{err}");
    nothing_of(&target, "copy", "elsewhere", &s.elsewhere);
}

/// The requests for `tag`'s manifest at `reg` since `mark`: (method, status).
/// The digest of a manifest's first layer (a signature payload, a bundle).
fn layer_digest(manifest: &[u8]) -> String {
    let m: Value = serde_json::from_slice(manifest).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_string()
}

/// GETs of blob `digest` at `reg` since `mark`.
fn blob_gets(reg: &Registry, mark: crate::support::Mark, digest: &str) -> usize {
    let path = format!("/blobs/{digest}");
    reg.count_since(mark, |r| {
        r.is("GET", PathKind::Blob) && r.path_only().ends_with(&path)
    })
}

fn asked(reg: &Registry, mark: crate::support::Mark, tag: &str) -> Vec<(String, u16)> {
    (reg.requests_since(mark).into_iter())
        .filter(|r| r.kind == PathKind::Manifest && r.reference() == Some(tag))
        .map(|r| (r.method.clone(), r.status))
        .collect()
}

#[test]
fn the_verified_sig_manifest_is_read_once_and_copied() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let ours = Signer::new();
    let base = src.url();
    let image = push_image(&base, "app", "signed", "seed-signed");
    let name = format!("{}/app", src.host());
    let sig_digest = ours.push(&base, "app", &image.digest, &name, false);
    let sig = format!("{}.sig", fallback_tag(&image.digest));
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), &ours);
    let text = header(dir.path(), &[&src, &dst]);
    let rule = format!(
        "{text}[[rule]]\nname = \"app\"\nsource = \"{name}\"\ntargets = [\"{}/mirror\"]\n\
         tags.include = ['^signed$']\n[rule.verify]\nsigstore_keys = [{key:?}]\n",
        dst.host(),
    );
    let get_once = vec![("GET".to_string(), 200)];
    let mark = src.mark();
    let out = regkeeper(dir.path(), &rule, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(asked(&src, mark, &sig), get_once, "sync");
    let copied = manifest_bytes(&dst.url(), "mirror", &sig).expect("the .sig tag arrived");
    assert_eq!(crate::support::sha256_digest(&copied), sig_digest);
    // The payload verified is the one written: read once, not again to copy.
    let payload = layer_digest(&copied);
    assert_eq!(blob_gets(&src, mark, &payload), 1, "sync");

    let mark = src.mark();
    let to = format!("{}/copy:signed", dst.host());
    let out = copy(dir.path(), &text, &format!("{name}:signed"), &to, &key);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(asked(&src, mark, &sig), get_once, "copy");
    assert_eq!(blob_gets(&src, mark, &payload), 1, "copy");
    let tags: BTreeSet<String> = ["signed".to_string(), sig.clone()].into();
    let listed: Value =
        serde_json::from_slice(&get(&dst.url(), "/v2/copy/tags/list").unwrap().body).unwrap();
    let have: BTreeSet<String> = (listed["tags"].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(have, tags);
    assert_eq!(manifest_bytes(&dst.url(), "copy", &sig), Some(copied));
}

/// `sync` under `[rule.verify]` asks the source's referrers API once per
/// image and reads the bundle referrer once: discovery for the copy takes
/// what verification read (and the copied referrer is the one verified).
#[test]
fn the_verified_bundle_referrer_is_read_once_and_copied() {
    use crate::support::{HostileRegistry, Reply};
    let (src, dst) = (Ferro::start(), Ferro::start());
    let proxy = HostileRegistry::start(Some(&src.url()), |_| Reply::Forward);
    let ours = Signer::new();
    let base = src.url();
    let image = push_image(&base, "app", "signed", "seed-signed");
    let name = format!("{}/app", proxy.host());
    let bytes = bundle(&ours, &image.digest, &name);
    let good = push_referrer(&base, "app", &image, SIGSTORE_BUNDLE, &bytes).0;
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), &ours);
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
         [[rule]]\nname = \"r\"\nsource = \"{name}\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nsigstore_keys = [{key:?}]\n",
        dir.path().join("state").display().to_string(),
        proxy.registry_toml(""),
        dst.regkeeper_registry_toml(),
        dst.host()
    );
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let asked = |path: String| proxy.count(|s| s.method == "GET" && s.path() == path);
    assert_eq!(asked(format!("/v2/app/referrers/{}", image.digest)), 1);
    assert_eq!(asked(format!("/v2/app/manifests/{}", good.digest)), 1);
    // The bundle verified is the one written: read once, not again to copy.
    let layer = format!("/v2/app/blobs/{}", layer_digest(&good.bytes));
    assert_eq!(asked(layer.clone()), 1, "sync");
    let listed = referrers(&dst.url(), "mirror", &image.digest);
    assert_eq!(entry_digests(&listed), [good.digest.clone()].into());
    assert_eq!(
        manifest_bytes(&dst.url(), "mirror", &good.digest),
        Some(good.bytes.clone())
    );

    // `copy --verify-key` to a registry of its own (ferro shares blobs
    // between repositories): the bundle layer read once there too.
    let other = Ferro::start();
    let config = format!("{config}{}", other.regkeeper_registry_toml());
    proxy.clear_records();
    let to = format!("{}/copy:signed", other.host());
    let out = copy(dir.path(), &config, &format!("{name}:signed"), &to, &key);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(asked(layer), 1, "copy");
    assert_eq!(
        manifest_bytes(&other.url(), "copy", &good.digest),
        Some(good.bytes)
    );
}

/// The cost of verification per image, for the record (run with
/// `--ignored --nocapture`): 20 images on ferro-oci-server (10 signed by a
/// `.sig` tag, 10 by a bundle referrer), read through a recording proxy;
/// `plan` then `sync` into an empty registry of its own, without signatures copied
/// (`referrers = false`), with them (`referrers = true`, the default) and
/// with `[rule.verify]`: source requests and wall time of each. `sync`
/// with verification asks the source nothing more than with `referrers =
/// true`: the payloads and bundles it verified are the ones it writes.
#[test]
#[ignore]
fn measure_the_cost_of_verification() {
    use crate::support::{HostileRegistry, Reply};
    let src = Ferro::start();
    let proxy = HostileRegistry::start(Some(&src.url()), |_| Reply::Forward);
    let ours = Signer::new();
    let base = src.url();
    let name = format!("{}/app", proxy.host());
    for i in 0..10 {
        let s = push_image(&base, "app", &format!("s{i}"), &format!("sig {i}"));
        ours.push(&base, "app", &s.digest, &name, false);
        let b = push_image(&base, "app", &format!("b{i}"), &format!("bundle {i}"));
        let bytes = bundle(&ours, &b.digest, &name);
        push_referrer(&base, "app", &b, SIGSTORE_BUNDLE, &bytes);
    }
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), &ours);
    let variants = [
        ("referrers=false", "referrers = false\n".to_string()),
        ("referrers=true", String::new()),
        (
            "verify",
            format!("[rule.verify]\nsigstore_keys = [{key:?}]\n"),
        ),
    ];
    let mut lines = Vec::new();
    let mut syncs = Vec::new();
    let mut last = None;
    for (label, extra) in variants {
        let dst = Ferro::start();
        let config = format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
             [[rule]]\nname = \"r\"\nsource = \"{name}\"\ntargets = [\"{}/mirror\"]\n\
             tags.include = ['^[sb]\\d$']\n{extra}",
            dir.path().join(label).display().to_string(),
            proxy.registry_toml(""),
            dst.regkeeper_registry_toml(),
            dst.host()
        );
        for command in ["plan", "sync"] {
            proxy.clear_records();
            let started = std::time::Instant::now();
            let out = regkeeper(dir.path(), &config, &[command, "--json"]);
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(out.status.code(), Some(0), "{label} {command}");
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                doc["rules"][0]["refused"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            );
            let n = proxy.records().len();
            if command == "sync" {
                syncs.push(n);
            }
            let per = |path: &str| proxy.count(|s| s.path().contains(path));
            lines.push(format!(
                "{label:16} {command}: {n:3} source requests ({} manifests, {} blobs, {} referrers), {seconds:.2} s",
                per("/manifests/"),
                per("/blobs/"),
                per("/referrers/"),
            ));
        }
        last = Some(dst);
    }
    let dst = last.unwrap();
    let listed = referrers(&dst.url(), "mirror", &ours_first_bundle_subject(&base));
    assert_eq!(listed.len(), 1, "the bundle arrived with its image");
    for l in &lines {
        eprintln!("{l}");
    }
    assert_eq!(
        syncs[1], syncs[2],
        "verify's sync reads what referrers = true reads"
    );
}

/// The digest of image `b0` at `base` (its bundle's subject).
fn ours_first_bundle_subject(base: &str) -> String {
    crate::support::sha256_digest(&manifest_bytes(base, "app", "b0").unwrap())
}
