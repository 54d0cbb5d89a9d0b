//! `regkeeper copy` without a config: skopeo-style per-side flags say how to
//! reach each registry; skopeo checks what landed.

use std::path::Path;
use std::process::Output;

use base64::Engine as _;

use crate::support::*;

/// Runs `regkeeper copy ARGS` with no config anywhere (no -c, none in the
/// environment, and a docker config dir that holds nothing).
pub fn copy_without_config(home: &Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(regkeeper_bin())
        .arg("copy")
        .args(args)
        .current_dir(home)
        .env_remove("REGKEEPER_CONFIG")
        .env("DOCKER_CONFIG", home)
        .env("HOME", home)
        .env("REGKEEPER_LOG", "info")
        .output()
        .expect("run regkeeper");
    eprintln!(
        "regkeeper copy {args:?} -> {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn seed(reg: &Registry, repo: &str, tag: &str) -> String {
    let mut corpus = Corpus::new();
    let img = corpus.image("one", &ImageSpec::new(&[layer(repo, 40_000)]));
    corpus.push(reg, "one", repo, tag);
    img.digest
}

#[test]
fn tls_verify_false_reaches_plain_http_registries() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let digest = seed(&src, "cf/app", "v1");
    let home = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/cf/app:v1", src.host());
    let to = format!("docker://{}/cf/copy:v1", dst.host());

    // Without the flags regkeeper speaks HTTPS, which these registries do not.
    let refused = copy_without_config(home.path(), &[&from, &to]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(dst.try_digest_of("cf/copy", "v1"), None);

    let out = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &from,
            &to,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(dst.digest_of("cf/copy", "v1"), digest);
}

#[test]
fn cert_dir_and_authfile_reach_a_tls_htpasswd_registry() {
    let src = Registry::start_plain();
    let dst = Registry::builder().auth(Auth::htpasswd()).tls(true).start();
    let digest = seed(&src, "cf/tls", "v2");
    let home = tempfile::tempdir().unwrap();
    let authfile = home.path().join("auth.json");
    let (user, pass) = dst.credentials().unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let auths = serde_json::json!({ "auths": { dst.host(): { "auth": token } } });
    std::fs::write(&authfile, auths.to_string()).unwrap();
    let cert_dir = dst.cert_dir().unwrap().display().to_string();
    let from = format!("{}/cf/tls:v2", src.host());
    let to = format!("{}/cf/tls:v2", dst.host());

    // The CA alone is not enough: the registry wants credentials.
    let no_creds = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-cert-dir",
            &cert_dir,
            &from,
            &to,
        ],
    );
    assert_eq!(no_creds.status.code(), Some(1));

    let out = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-cert-dir",
            &cert_dir,
            "--dest-authfile",
            &authfile.display().to_string(),
            &from,
            &to,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(dst.digest_of("cf/tls", "v2"), digest);
}

/// skopeo's meaning of `--dest-tls-verify=false`: a registry that speaks
/// TLS with a certificate nobody can verify is reached over HTTPS without
/// verification (not refused, and not spoken to in plain HTTP).
#[test]
fn tls_verify_false_reaches_an_unverifiable_https_registry() {
    let src = Registry::start_plain();
    let dst = Registry::builder().tls(true).start();
    let digest = seed(&src, "cf/self", "v3");
    let home = tempfile::tempdir().unwrap();
    let from = format!("{}/cf/self:v3", src.host());
    let to = format!("{}/cf/self:v3", dst.host());

    // Verification on: the test CA is unknown to the system roots.
    let refused = copy_without_config(home.path(), &["--src-tls-verify=false", &from, &to]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(dst.try_digest_of("cf/self", "v3"), None);

    let out = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &from,
            &to,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https (unverified)"), "{err}");
    assert_eq!(dst.digest_of("cf/self", "v3"), digest);
}

#[test]
fn missing_oci_source_directory_is_named() {
    let dst = Registry::start_plain();
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-such-layout");
    let out = copy_without_config(
        home.path(),
        &[
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", missing.display()),
            &format!("{}/cf/none:v1", dst.host()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(dst.requests().is_empty(), "nothing sent to the registry");
}

/// The progress total `copy` shows a percentage against: every blob of the
/// image, and the counters that progress compares with it reach it.
#[tokio::test]
async fn copy_image_reports_its_blob_total() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use regkeeper::engine::Engine;
    use regkeeper::reference::ImageRef;
    use regkeeper::transport::{RegistryOptions, Transports};

    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let spec = ImageSpec::new(&[layer("t1", 30_000), layer("t2", 20_000)]);
    corpus.image("two", &spec);
    corpus.push(&src, "two", "cf/total", "v1");
    let plain = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let options = [(src.host(), plain.clone()), (dst.host(), plain)];
    let transports = Arc::new(Transports::new(options.into_iter().collect(), false));
    let open = |s: String| {
        transports
            .open(&ImageRef::parse(&s).unwrap().location)
            .unwrap()
    };
    let source = open(format!("{}/cf/total", src.host()));
    let target = open(format!("{}/cf/total", dst.host()));
    let mut engine = Engine::new(transports.clone(), 2, regkeeper::engine::Mode::Apply);
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    engine.on_total(Arc::new(move |n| t.store(n, Ordering::Relaxed)));
    engine
        .copy_image(&source, "v1", &target, Some("v1"), &[])
        .await
        .unwrap();
    // A config and two layers.
    assert_eq!(total.load(Ordering::Relaxed), 3);
    let s = engine.live_stats().totals();
    assert_eq!(s.blobs_copied + s.blobs_mounted + s.blobs_skipped, 3);
}
