use std::sync::Arc;

use super::*;
use crate::oci::Digest;
use crate::secret::Secret;
use crate::transport::{RegistryOptions, TransportError};

#[test]
fn scope_coverage() {
    let have = scopes([repo_scope("a/b", "pull,push")]);
    assert!(scope_covered(&have, "repository:a/b:pull"));
    assert!(scope_covered(&have, "repository:a/b:push,pull"));
    assert!(!scope_covered(&have, "repository:a/b:delete"));
    assert!(!scope_covered(&have, "repository:c:pull"));
    assert!(!scope_covered(&have, "registry:catalog:*"));
}

#[test]
fn base_urls() {
    let r = Registry::new("docker.io", &RegistryOptions::default(), false).unwrap();
    assert_eq!(r.base.as_str(), "https://registry-1.docker.io/");
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let r = Registry::new("127.0.0.1:5000", &opts, true).unwrap();
    assert_eq!(
        r.url("/v2/a/b/manifests/v1").unwrap().as_str(),
        "http://127.0.0.1:5000/v2/a/b/manifests/v1"
    );
}

#[test]
fn request_paths_take_only_valid_names() {
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let reg = Arc::new(Registry::new("127.0.0.1:5000", &opts, false).unwrap());
    let repo = RemoteRepo::new(reg.clone(), "a/b");
    assert_eq!(
        repo.manifest_url("v1").unwrap().as_str(),
        "http://127.0.0.1:5000/v2/a/b/manifests/v1"
    );
    let d = format!("sha256:{}", "c".repeat(64));
    assert!(repo.manifest_url(&d).unwrap().path().ends_with(&d));
    for bad in [
        "../../../victim/app/manifests/prod",
        "%2e%2e/x",
        "v1?x=1",
        "v1#f",
        "",
        "a/b",
    ] {
        let e = repo.manifest_url(bad).unwrap_err();
        assert!(e.to_string().contains("refusing to send"), "{bad:?}: {e}");
    }
    for bad in ["a/../victim", "/etc/x", "a/%2e%2e/b", "A"] {
        assert!(
            RemoteRepo::new(reg.clone(), bad).url("tags/list").is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn read_only_refuses_writes_before_sending() {
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    // port 9 (discard) is never contacted: the refusal comes first
    let reg = Arc::new(Registry::new("127.0.0.1:9", &opts, true).unwrap());
    let repo = RemoteRepo::new(reg.clone(), "a");
    let d = Digest::of(b"x");
    let err = repo.delete_manifest(&d).await.unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    let err = repo
        .put_blob(&d, 1, Box::pin(futures_util::stream::empty()))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    assert!(reg.stats().requests.is_empty());
}

#[test]
fn secrets_stay_out_of_debug() {
    let opts = RegistryOptions {
        username: Some("u".into()),
        password: Some(Secret::new("hunter2")),
        ..Default::default()
    };
    let r = Registry::new("h.example", &opts, false).unwrap();
    assert!(!format!("{r:?}").contains("hunter2"));
}
