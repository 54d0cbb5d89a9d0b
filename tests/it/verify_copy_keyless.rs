//! `copy --verify-trusted-root --verify-issuer --verify-identity`: keyless
//! verification for the ad hoc copy, as `[rule.verify] keyless` does it.
//! Against a real docker-registry (cosign `.sig` keyless signatures) and
//! ferro-oci-server (keyless sigstore bundles as referrers): the image signed
//! by the configured identity arrives with its signature; one signed by
//! another identity is refused (exit 1, `identity_mismatch`) and nothing of
//! it is written. Incomplete or unusable flags are usage errors (exit 2)
//! before anything is contacted. Signatures and CA by `support::cosign`.

use std::path::Path;
use std::process::Output;

use crate::support::Registry;
use crate::support::cosign::{Fulcio, Leaf, Logged, NOON_2024, SIGSTORE_BUNDLE, Signer};
use crate::support::ferro::{
    Ferro, Pushed, entry_digests, get, manifest_bytes, push_image, push_referrer, referrers,
};
use crate::sync::{header, regkeeper};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const IDENTITY: &str = "^https://github.com/org/repo/";
const GOOD: Leaf = Leaf {
    issuer: ISSUER,
    san: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main",
    logged_at: NOON_2024,
};
const FORK: Leaf = Leaf {
    san: "https://github.com/fork/repo/.github/workflows/release.yml@refs/heads/main",
    ..GOOD
};

fn write_root(dir: &Path, fulcio: &Fulcio) -> String {
    let root = dir.join("sigstore-root.json");
    std::fs::write(&root, fulcio.trusted_root()).unwrap();
    root.display().to_string()
}

/// `regkeeper copy FROM TO` with the keyless flags for `root`, then `extra`.
fn copy(dir: &Path, config: &str, from: &str, to: &str, root: &str, extra: &[&str]) -> Output {
    let mut args = vec!["copy", from, to, "--verify-trusted-root", root];
    args.extend(["--verify-issuer", ISSUER, "--verify-identity", IDENTITY]);
    args.extend(extra);
    regkeeper(dir, config, &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Nothing of `image` (tag, manifest by digest, blobs, `.sig`) is at `base`.
fn nothing_of(base: &str, repo: &str, tag: &str, image: &Pushed) {
    assert_eq!(manifest_bytes(base, repo, tag), None, "{tag}");
    assert_eq!(manifest_bytes(base, repo, &image.digest), None, "{tag}");
    let sig = sig_tag(&image.digest);
    assert_eq!(manifest_bytes(base, repo, &sig), None, "{tag}: {sig}");
    let m: serde_json::Value = serde_json::from_slice(&image.bytes).unwrap();
    let layers = m["layers"].as_array().unwrap().iter();
    for b in layers
        .chain([&m["config"]])
        .map(|d| d["digest"].as_str().unwrap())
    {
        let r = get(base, &format!("/v2/{repo}/blobs/{b}")).unwrap();
        assert_ne!(r.status, 200, "{tag}: blob {b}");
    }
}

fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.trim_start_matches("sha256:"))
}

#[test]
fn copy_keyless_sig_carries_the_signature_and_refuses_another_identity() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let fulcio = Fulcio::new();
    let (base, target) = (src.url(), dst.url());
    let name = format!("{}/app", src.host());
    let good = push_image(&base, "app", "good", "seed-good");
    let fork = push_image(&base, "app", "fork", "seed-fork");
    fulcio.push(&base, "app", &good.digest, &name, &GOOD, None);
    fulcio.push(&base, "app", &fork.digest, &name, &FORK, None);

    let dir = tempfile::tempdir().unwrap();
    let root = write_root(dir.path(), &fulcio);
    let config = header(dir.path(), &[&src, &dst]);
    let to = |tag: &str| format!("{}/copy:{tag}", dst.host());

    let out = copy(
        dir.path(),
        &config,
        &format!("{name}:good"),
        &to("good"),
        &root,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        manifest_bytes(&target, "copy", "good"),
        Some(good.bytes.clone())
    );
    let sig = sig_tag(&good.digest);
    assert_eq!(
        manifest_bytes(&target, "copy", &sig),
        manifest_bytes(&base, "app", &sig),
        "the keyless .sig arrives byte for byte"
    );
    assert!(manifest_bytes(&target, "copy", &sig).is_some());

    // With --verify-key too (a key that signed nothing here), the keyless
    // signature still counts: either kind does.
    let key = dir.path().join("other.pub");
    std::fs::write(&key, Signer::new().public_pem()).unwrap();
    let key = key.display().to_string();
    let both = ["--verify-key", key.as_str()];
    let out = copy(
        dir.path(),
        &config,
        &format!("{name}:good"),
        &to("both"),
        &root,
        &both,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        manifest_bytes(&target, "copy", "both"),
        Some(good.bytes.clone())
    );

    let out = copy(
        dir.path(),
        &config,
        &format!("{name}:fork"),
        &to("fork"),
        &root,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("refused (identity_mismatch)"), "{err}");
    nothing_of(&target, "copy", "fork", &fork);

    // The payload names the source repository; another one is refused.
    let elsewhere = ["--verify-docker-reference", "other.example/app"];
    let (from, dest) = (format!("{name}:good"), to("elsewhere"));
    let out = copy(dir.path(), &config, &from, &dest, &root, &elsewhere);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refused (identity_mismatch)"));
    assert_eq!(manifest_bytes(&target, "copy", "elsewhere"), None);
}

#[test]
fn copy_keyless_bundle_carries_the_referrer_and_refuses_another_identity() {
    let (src, dst) = (Ferro::start(), Ferro::start());
    let fulcio = Fulcio::new();
    let (base, target) = (src.url(), dst.url());
    let name = format!("{}/app", src.host());
    let mut bundles = Vec::new();
    let mut images = Vec::new();
    for (tag, leaf) in [("good", &GOOD), ("fork", &FORK)] {
        let image = push_image(&base, "app", tag, &format!("seed-{tag}"));
        let statement = Signer::statement(&image.digest, &name);
        let bytes = fulcio.keyless_bundle(&statement, leaf, Logged::This);
        bundles.push(push_referrer(&base, "app", &image, SIGSTORE_BUNDLE, &bytes).0);
        images.push(image);
    }

    let dir = tempfile::tempdir().unwrap();
    let root = write_root(dir.path(), &fulcio);
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}",
        dir.path().join("state").display().to_string(),
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
    );
    let to = |tag: &str| format!("{}/copy:{tag}", dst.host());
    let out = copy(
        dir.path(),
        &config,
        &format!("{name}:good"),
        &to("good"),
        &root,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let good = &images[0];
    assert_eq!(
        manifest_bytes(&target, "copy", "good"),
        Some(good.bytes.clone())
    );
    let listed = referrers(&target, "copy", &good.digest);
    assert_eq!(entry_digests(&listed), [bundles[0].digest.clone()].into());
    assert_eq!(
        manifest_bytes(&target, "copy", &bundles[0].digest),
        Some(bundles[0].bytes.clone())
    );

    let out = copy(
        dir.path(),
        &config,
        &format!("{name}:fork"),
        &to("fork"),
        &root,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("refused (identity_mismatch)"), "{err}");
    nothing_of(&target, "copy", "fork", &images[1]);
    assert_eq!(manifest_bytes(&target, "copy", &bundles[1].digest), None);
}

#[test]
fn incomplete_or_unusable_keyless_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = "version = 1\n";
    let (from, to) = ("127.0.0.1:1/app:v1", "127.0.0.1:2/app:v1");
    let root = write_root(dir.path(), &Fulcio::new());
    let run = |args: &[&str]| {
        let mut all = vec!["copy", from, to];
        all.extend(args);
        let out = regkeeper(dir.path(), config, &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };

    let err = run(&["--verify-trusted-root", &root, "--verify-issuer", ISSUER]);
    assert!(err.contains("--verify-identity"), "{err}");
    let err = run(&["--verify-issuer", ISSUER, "--verify-identity", IDENTITY]);
    assert!(err.contains("--verify-trusted-root"), "{err}");
    let err = run(&[
        "--verify-trusted-root",
        &root,
        "--verify-identity",
        IDENTITY,
    ]);
    assert!(err.contains("--verify-issuer"), "{err}");

    let private = dir.path().join("private.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&private, pair.serialize_pem()).unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, r#"{"certificateAuthorities": []}"#).unwrap();
    for bad in [&private, &garbage] {
        let bad = bad.display().to_string();
        let err = copy_err(&run, &bad, IDENTITY);
        assert!(
            err.contains(&bad) && err.contains("not a usable trusted root"),
            "{err}"
        );
    }
    let err = copy_err(&run, &root, "^(x");
    assert!(
        err.contains("--verify-identity") && err.contains("not a valid regex"),
        "{err}"
    );
    let err = run(&["--verify-require", "index"]);
    assert!(
        err.contains("need --verify-key or --verify-trusted-root"),
        "{err}"
    );
}

fn copy_err(run: &dyn Fn(&[&str]) -> String, root: &str, identity: &str) -> String {
    run(&[
        "--verify-trusted-root",
        root,
        "--verify-issuer",
        ISSUER,
        "--verify-identity",
        identity,
    ])
}
