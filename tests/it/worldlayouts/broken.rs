//! Shapes that cannot be mirrored as they are: each fails (or is skipped)
//! alone, saying why; the rest of the rule is mirrored.

use super::*;

/// What cannot be mirrored fails only its own tag, saying why: a config one
/// byte off its descriptor, a ref name given twice, a schema 1 manifest; a
/// ref name that is no tag (sylabs' `_cosign:…`) is skipped with a warning;
/// an emptied fallback index is no referrers.
#[test]
fn broken_shapes_fail_only_their_tag() {
    let mut w = World::new();
    let good = w.image("good", "linux", "amd64");
    w.entry(desc(&good.descriptor), Some("good"));
    let short = w.short_config_image("s");
    w.entry(desc(&short), Some("short"));
    let d1 = w.image("dup1", "linux", "amd64");
    let d2 = w.image("dup2", "linux", "amd64");
    w.entry(desc(&d1.descriptor), Some("dup"));
    w.entry(desc(&d2.descriptor), Some("dup"));
    let cos = w.image("cos", "linux", "amd64");
    let cosign_name = format!("_cosign:sha256-{}.sig", &good.digest[7..]);
    w.entry(desc(&cos.descriptor), Some(&cosign_name));
    let v1 = br#"{"schemaVersion":1,"name":"w/app","tag":"old","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let old = w.corpus.write_blob(
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        v1,
    );
    w.entry(desc(&old), Some("old"));
    let empty = w.corpus.write_blob(
        MT_INDEX,
        format!(r#"{{"schemaVersion":2,"mediaType":"{MT_INDEX}","manifests":null}}"#).as_bytes(),
    );
    w.entry(desc(&empty), Some(&format!("sha256-{}", &good.digest[7..])));

    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    let targets = [format!("{}/b/app", reg.host())];
    let cfg = rule(dir.path(), &[&reg], &source, &targets, "untagged = false\n");
    let out = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "partial");
    let doc = json_of(&out);
    let errors = doc["rules"][0]["errors"].to_string();
    let warnings = doc["rules"][0]["warnings"].to_string();
    assert_eq!(reg.digest_of("b/app", "good"), good.digest);
    for tag in ["short", "dup", "old"] {
        assert_eq!(reg.try_digest_of("b/app", tag), None, "{tag} not published");
    }
    assert!(
        errors.contains("the file has") && errors.contains("its descriptor"),
        "the size mismatch is named: {errors}"
    );
    assert!(errors.contains("dup twice"), "{errors}");
    assert!(errors.contains("schema 1"), "{errors}");
    assert!(warnings.contains("_cosign"), "{warnings}");
    assert!(!errors.contains("lists no manifests"), "{errors}");
}

/// A foreign layer stays referenced only (its `urls` never fetched) unless
/// the rule's `foreign_layers` copies it from where the source holds it.
#[test]
fn foreign_layers_are_referenced_not_copied_unless_asked() {
    let mut w = World::new();
    let (img, base, own) = w.foreign_image("win");
    w.entry(desc(&img), Some("win"));
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    // distribution 2.8 refuses manifests with foreign URLs unless its
    // validation.manifests.urls.allow says otherwise: layout targets here
    let out_dir = dir.path().join("plain");
    let plain = rule(
        dir.path(),
        &[&reg],
        &source,
        &[format!("oci:{}", out_dir.display())],
        "",
    );
    let out = regkeeper(dir.path(), &plain, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let blob = |d: &str| out_dir.join("blobs/sha256").join(&d[7..]);
    assert!(std::fs::read(blob(&img.digest)).unwrap() == w.corpus.read_blob(&img.digest));
    assert!(!blob(&base.digest).exists(), "foreign layer not copied");
    assert!(blob(&own.digest).exists());

    let asked_dir = dir.path().join("asked");
    let asked = rule(
        dir.path(),
        &[&reg],
        &source,
        &[format!("oci:{}", asked_dir.display())],
        "foreign_layers = true\n",
    );
    let out = regkeeper(dir.path(), &asked, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let blob = asked_dir.join("blobs/sha256").join(&base.digest[7..]);
    assert!(
        std::fs::read(blob).unwrap() == w.corpus.read_blob(&base.digest),
        "copied when asked"
    );
}

/// `platforms` skips a single-platform image of another platform with a
/// warning that says why (plan and sync alike), not a failure.
#[test]
fn platforms_skip_single_platform_images_of_other_platforms() {
    let mut w = World::new();
    let amd = w.image("amd", "linux", "amd64");
    let arm = w.image("arm", "linux", "arm64");
    w.entry(desc(&amd.descriptor), Some("amd"));
    w.entry(desc(&arm.descriptor), Some("arm"));
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    let targets = [format!("{}/s/app", reg.host())];
    let cfg = rule(
        dir.path(),
        &[&reg],
        &source,
        &targets,
        "platforms = [\"linux/arm64\"]\n",
    );
    for cmd in ["plan", "sync"] {
        let out = regkeeper(dir.path(), &cfg, &[cmd, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        let warnings = json_of(&out)["rules"][0]["warnings"].to_string();
        assert!(
            warnings.contains("tag amd") && warnings.contains("linux/amd64"),
            "{cmd}: {warnings}"
        );
    }
    assert_eq!(reg.digest_of("s/app", "arm"), arm.digest);
    assert_eq!(reg.try_digest_of("s/app", "amd"), None);
}

/// Indexes nested deeper than 8 levels fail that tag with a message; the
/// rest of the rule is mirrored.
#[test]
fn indexes_nested_too_deep_fail_their_tag() {
    let mut w = World::new();
    let a = w.image("deep", "linux", "amd64");
    let mut top = w.index(vec![on(&a.descriptor, "linux", "amd64")], true);
    for _ in 0..8 {
        top = w.index(vec![desc(&top)], true);
    }
    w.entry(desc(&top), Some("deep"));
    let ok = w.image("fine", "linux", "amd64");
    w.entry(desc(&ok.descriptor), Some("fine"));
    let reg = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", w.dir().display());
    let cfg = rule(
        dir.path(),
        &[&reg],
        &source,
        &[format!("{}/d/app", reg.host())],
        "",
    );
    let out = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let errors = json_of(&out)["rules"][0]["errors"].to_string();
    assert!(errors.contains("nested more than 8 levels"), "{errors}");
    assert_eq!(reg.try_digest_of("d/app", "deep"), None);
    assert_eq!(reg.digest_of("d/app", "fine"), ok.digest);
}

/// A blob the target already holds is not read again, so its size is
/// checked at the source: a config one byte short of its descriptor is
/// never published, even where the target has the config.
#[test]
fn a_size_mismatch_fails_even_where_the_target_holds_the_blob() {
    let mut w = World::new();
    let short = w.short_config_image("held");
    w.entry(desc(&short), Some("short"));
    let body: serde_json::Value =
        serde_json::from_slice(&w.corpus.read_blob(&short.digest)).unwrap();
    let config = body["config"]["digest"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("blobs/sha256")).unwrap();
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        out.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    std::fs::write(
        out.join("blobs/sha256").join(&config[7..]),
        w.corpus.read_blob(&config),
    )
    .unwrap();
    let reg = Registry::start_plain();
    let source = format!("oci:{}", w.dir().display());
    let cfg = rule(
        dir.path(),
        &[&reg],
        &source,
        &[format!("oci:{}", out.display())],
        "",
    );
    let run = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(run.status.code(), Some(1));
    let errors = json_of(&run)["rules"][0]["errors"].to_string();
    assert!(errors.contains("its descriptor"), "{errors}");
    assert!(index_json(&out).is_empty(), "nothing tagged");
}

/// The same from a registry source: a descriptor that contradicts the
/// blob's size fails the image, which is never published.
#[test]
fn a_registry_source_descriptor_off_by_one_is_never_published() {
    use crate::support::ferro::{push_blob, put_manifest};
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"registry-source-layer-bytes".repeat(40);
    for reg in [&src, &dst] {
        push_blob(&reg.url(), "r/app", config);
        push_blob(&reg.url(), "r/app", &layer);
    }
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": crate::support::corpus::MT_MANIFEST,
        "config": {"mediaType": crate::support::corpus::MT_CONFIG,
            "digest": sha256_digest(config), "size": config.len() + 1},
        "layers": [{"mediaType": crate::support::corpus::MT_LAYER,
            "digest": sha256_digest(&layer), "size": layer.len()}]});
    let bytes = serde_json::to_vec(&m).unwrap();
    put_manifest(
        &src.url(),
        "r/app",
        "v1",
        crate::support::corpus::MT_MANIFEST,
        &bytes,
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = rule(
        dir.path(),
        &[&src, &dst],
        &format!("{}/r/app", src.host()),
        &[format!("{}/r/app", dst.host())],
        "",
    );
    let run = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(run.status.code(), Some(1));
    let errors = json_of(&run)["rules"][0]["errors"].to_string();
    assert!(errors.contains("descriptor"), "{errors}");
    assert_eq!(get(&dst, "r/app", "v1").status, 404, "never published");
}
