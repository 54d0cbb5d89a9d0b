//! Self-tests of the test harness (`support`): every registry mode, seeding, log counting,
//! restart, corruption and the fault proxy.

use std::time::{Duration, Instant};

use crate::support::accesslog::{self, PathKind};
use crate::support::*;

fn small_image(corpus: &mut Corpus, name: &str) -> Image {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("harness-base", 3000), layer(name, 1500)]).label("name", name),
    )
}

/// Push + read back + tags, with whatever auth/TLS the registry has.
fn push_and_verify(reg: &Registry) -> Image {
    let mut corpus = Corpus::new();
    let img = small_image(&mut corpus, "v1");
    corpus.push(reg, "v1", "it/app", "v1");
    assert_eq!(reg.digest_of("it/app", "v1"), img.digest);
    assert_eq!(reg.inspect_raw("it/app", &img.digest), img.manifest);
    assert_eq!(reg.list_tags("it/app"), vec!["v1".to_string()]);
    img
}

#[test]
fn plain_registry_push_inspect_and_count_requests() {
    let reg = Registry::start_plain();
    assert!(reg.url().starts_with("http://127.0.0.1:"));
    assert_eq!(reg.mark(), Mark(0), "harness probes are not counted");
    assert_eq!(reg.get("/v2/").unwrap().status, 200);
    assert_eq!(
        reg.count(|r| r.kind == PathKind::Ping && r.status == 200),
        1
    );

    let start = reg.mark();
    let img = push_and_verify(&reg);

    let writes = reg.writes_since(start);
    assert!(
        writes
            .iter()
            .any(|r| r.is("PUT", PathKind::Manifest) && r.status == 201),
        "manifest PUT seen: {writes:#?}"
    );
    // config + 2 layers uploaded: one session each, closed by a PUT.
    let sessions = writes
        .iter()
        .filter(|r| r.is("POST", PathKind::UploadStart))
        .count();
    let closes = writes
        .iter()
        .filter(|r| r.is("PUT", PathKind::UploadSession) && r.status == 201)
        .count();
    assert_eq!(closes, img.blobs().len(), "{writes:#?}");
    assert!(sessions >= closes);
    assert!(writes.iter().all(|r| r.repo.as_deref() == Some("it/app")));

    // A read-only step: no writes, only reads.
    let m = reg.mark();
    reg.digest_of("it/app", "v1");
    let reads = reg.requests_since(m);
    assert!(
        reads.iter().any(|r| r.is("GET", PathKind::Manifest)),
        "{reads:#?}"
    );
    assert!(reg.writes_since(m).is_empty());
    assert_eq!(
        reg.count_since(m, |r| r.kind == PathKind::Blob && r.method == "PUT"),
        0
    );
}

#[test]
fn htpasswd_registry_refuses_anonymous() {
    let reg = Registry::builder().auth(Auth::htpasswd()).start();
    let r = reg.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let auth = reg.auth_header(&[]).unwrap();
    assert_eq!(
        reg.request("GET", "/v2/", &[("Authorization", &auth)], None)
            .unwrap()
            .status,
        200
    );

    let img = push_and_verify(&reg);
    let err = try_skopeo_inspect_raw(&reg, "it/app", "v1", false).unwrap_err();
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    let mut corpus = Corpus::new();
    small_image(&mut corpus, "v2");
    assert!(try_skopeo_copy_to(&reg, &corpus.oci_ref("v2"), "it/app", "v2", false).is_err());
    assert_eq!(reg.digest_of("it/app", "v1"), img.digest);
    assert!(reg.count(|r| r.status == 401) > 0);
}

#[test]
fn tls_registry_verifies_with_generated_ca() {
    let reg = Registry::builder().tls(true).start();
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    assert!(reg.ca_pem_path().unwrap().is_file());
    assert!(reg.cert_dir().unwrap().join("ca.crt").is_file());
    assert_eq!(
        reg.get("/v2/").unwrap().status,
        200,
        "rustls verifies against the CA"
    );
    // Without the CA, verification fails.
    let untrusted = http::request(None, "GET", &format!("{}/v2/", reg.url()), &[], None);
    assert!(untrusted.is_err());
    push_and_verify(&reg);
}

#[test]
fn tls_htpasswd_registry() {
    let reg = Registry::builder().tls(true).auth(Auth::htpasswd()).start();
    assert_eq!(reg.get("/v2/").unwrap().status, 401);
    push_and_verify(&reg);
}

#[test]
fn token_registry_flow_and_policy() {
    let reg = Registry::builder()
        .auth(Auth::Token)
        .token_lifetime(Duration::from_secs(120))
        .start();
    let r = reg.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_string();
    let ts = reg.token_server().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&ts.realm()), "{challenge}");
    assert!(challenge.contains(ts.service()), "{challenge}");

    // A minted token works directly against the registry.
    let auth = reg.auth_header(&["repository:it/app:pull"]).unwrap();
    let r = reg
        .request(
            "GET",
            "/v2/it/app/tags/list",
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404, "authorized, repo unknown: {}", r.text());

    let img = push_and_verify(&reg);
    let after_push = ts.request_count();
    assert!(after_push > 0);
    let reqs = ts.requests();
    assert!(reqs.iter().all(|t| t.status == 200));
    assert!(
        reqs.iter()
            .any(|t| t.user.as_deref() == Some("tester")
                && t.granted.iter().any(|g| g.contains("push"))),
        "{reqs:#?}"
    );

    // Anonymous: pull allowed, push refused.
    let raw = try_skopeo_inspect_raw(&reg, "it/app", "v1", false).unwrap();
    assert_eq!(sha256_digest(&raw), img.digest);
    let mut corpus = Corpus::new();
    small_image(&mut corpus, "v2");
    assert!(try_skopeo_copy_to(&reg, &corpus.oci_ref("v2"), "it/app", "v2", false).is_err());
    let anon: Vec<_> = ts
        .requests()
        .into_iter()
        .skip(after_push)
        .filter(|t| t.user.is_none())
        .collect();
    assert!(!anon.is_empty());
    assert!(
        anon.iter()
            .all(|t| t.granted.iter().all(|g| g.ends_with(":pull"))),
        "{anon:#?}"
    );

    // Wrong password: the token server says 401.
    let bad = http::request(
        None,
        "GET",
        &format!(
            "{}?service={}&scope=repository:it/app:pull",
            ts.realm(),
            ts.service()
        ),
        &[("Authorization", "Basic dGVzdGVyOndyb25n")],
        None,
    )
    .unwrap();
    assert_eq!(bad.status, 401);
    // Issued tokens carry the configured lifetime.
    let ok = http::request(
        None,
        "GET",
        &format!(
            "{}?service={}&scope=repository:it/app:pull,push",
            ts.realm(),
            ts.service()
        ),
        &[],
        None,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(v["expires_in"], 120);
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(
        ts.requests().last().unwrap().granted,
        vec!["repository:it/app:pull".to_string()]
    );
}

#[test]
fn token_tls_registry() {
    let reg = Registry::builder().auth(Auth::Token).tls(true).start();
    push_and_verify(&reg);
}

#[test]
fn index_push_and_restart_keeps_data() {
    let mut reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let shared = [layer("shared-base", 4096)];
    let idx = corpus.two_platform_index("multi", "multi", &shared);
    let single = corpus.image("single", &ImageSpec::new(&shared).layer("single-top", 100));
    corpus.push(&reg, "multi", "it/multi", "latest");
    corpus.push(&reg, "single", "it/single", "v1");

    assert_eq!(reg.inspect_raw("it/multi", "latest"), idx.manifest);
    for child in &idx.children {
        assert_eq!(reg.digest_of("it/multi", &child.digest), child.digest);
    }
    assert_eq!(
        idx.blobs().len(),
        5,
        "2 configs, 2 own layers, 1 shared layer"
    );
    for b in idx.blobs().iter().chain(single.blobs().iter()) {
        assert!(reg.has_blob(&b.digest), "{b:?} stored");
    }
    assert_eq!(
        reg.stored_repos(),
        vec!["it/multi".to_string(), "it/single".to_string()]
    );

    let (port, before) = (reg.port(), reg.requests().len());
    reg.restart();
    assert_eq!(reg.port(), port);
    assert_eq!(reg.digest_of("it/multi", "latest"), idx.digest);
    assert_eq!(reg.digest_of("it/single", "v1"), single.digest);
    assert!(
        reg.requests().len() > before,
        "log continues across restarts"
    );
}

#[tokio::test]
async fn corrupt_blob_serves_wrong_bytes() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let img = small_image(&mut corpus, "v1");
    corpus.push(&reg, "v1", "it/app", "v1");
    let victim = &img.layers[1];
    reg.corrupt_blob(&victim.digest);
    let body = reg
        .client()
        .get(format!("{}/v2/it/app/blobs/{}", reg.url(), victim.digest))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len() as u64, victim.size);
    assert_ne!(sha256_digest(&body), victim.digest);
}

#[test]
fn corpus_is_deterministic() {
    let mut a = Corpus::new();
    let mut b = Corpus::new();
    let spec = ImageSpec::new(&[layer("x", 100_000), layer("y", 7)]);
    assert_eq!(a.image("t", &spec).digest, b.image("t", &spec).digest);
    let idx_a = a.two_platform_index("i", "s", &[]);
    let idx_b = b.two_platform_index("i", "s", &[]);
    assert_eq!(idx_a.digest, idx_b.digest);
    assert_ne!(idx_a.children[0].digest, idx_a.children[1].digest);
    assert_eq!(a.read_blob(&idx_a.digest), idx_a.manifest);
}

#[test]
fn access_log_parsing() {
    let line = r#"127.0.0.1 - - [23/Nov/2026:09:13:57 +0000] "HEAD /v2/a/b/manifests/x HTTP/1.1" 404 91 "" "curl/7.88.1""#;
    let r = accesslog::parse_line(line).unwrap();
    assert_eq!((r.method.as_str(), r.status, r.bytes), ("HEAD", 404, 91));
    assert_eq!(
        (r.kind, r.repo.as_deref(), r.reference()),
        (PathKind::Manifest, Some("a/b"), Some("x"))
    );
    assert!(accesslog::parse_line(r#"time="2026" level=info msg="response completed""#).is_none());
    let cases = [
        ("/v2/", PathKind::Ping, None),
        ("/v2/_catalog?n=10", PathKind::Catalog, None),
        ("/v2/r/tags/list", PathKind::TagsList, Some("r")),
        (
            "/v2/blobs/manifests/sha256:ab",
            PathKind::Manifest,
            Some("blobs"),
        ),
        ("/v2/x/blobs/sha256:ab", PathKind::Blob, Some("x")),
        ("/v2/x/y/blobs/uploads/", PathKind::UploadStart, Some("x/y")),
        (
            "/v2/x/blobs/uploads/?mount=sha256:ab&from=z",
            PathKind::UploadStart,
            Some("x"),
        ),
        (
            "/v2/x/blobs/uploads/0a-1b?_state=zz",
            PathKind::UploadSession,
            Some("x"),
        ),
        ("/v2/x/referrers/sha256:ab", PathKind::Referrers, Some("x")),
        ("/metrics", PathKind::Other, None),
    ];
    for (path, kind, repo) in cases {
        assert_eq!(
            accesslog::classify(path),
            (kind, repo.map(String::from)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn fault_proxy_throttles_resets_and_goes_down() {
    let reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    let img = corpus.image("big", &ImageSpec::new(&[layer("big", 200_000)]));
    corpus.push(&reg, "big", "it/big", "v1");
    let proxy = FaultProxy::to_registry(&reg);
    let client = reg.client();
    let blob_url = format!("{}/v2/it/big/blobs/{}", proxy.url(), img.layers[0].digest);
    let get = || async {
        let resp = client.get(&blob_url).send().await?;
        resp.bytes().await
    };

    // Transparent.
    assert_eq!(sha256_digest(&get().await.unwrap()), img.layers[0].digest);

    // Reset once after 50 kB: the first try fails, the next succeeds.
    proxy.reset_after(50_000, Some(1));
    let fresh = reg.client(); // new connection, so the reset hits this transfer
    let url = blob_url.clone();
    let first = async { fresh.get(&url).send().await?.bytes().await }.await;
    assert!(first.is_err(), "reset mid-body");
    assert_eq!(proxy.resets(), 1);
    assert_eq!(sha256_digest(&get().await.unwrap()), img.layers[0].digest);

    // Throttle: 200 kB at 400 kB/s takes about half a second.
    proxy.clear_faults();
    proxy.throttle(Some(400_000));
    let t = Instant::now();
    let fresh = reg.client();
    let body = fresh
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 200_000);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    proxy.throttle(None);

    // Outage: requests fail until it is over.
    proxy.set_down(true);
    assert!(
        client
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .await
            .is_err()
    );
    proxy.set_down(false);
    let ok = client
        .get(format!("{}/v2/", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(proxy.connections() >= 4);
    assert!(proxy.bytes_down() >= 400_000);
}

#[test]
fn regkeeper_config_sections() {
    let plain = Registry::start_plain();
    let s = plain.regkeeper_registry_toml();
    assert!(
        s.contains(&format!("[registries.\"{}\"]", plain.host()))
            && s.contains("plain_http = true"),
        "{s}"
    );
    let tls = Registry::builder().tls(true).auth(Auth::htpasswd()).start();
    let s = tls.regkeeper_registry_toml();
    assert!(
        s.contains("ca_file = ") && s.contains("username = \"tester\""),
        "{s}"
    );
    let pw = tls.root_dir().join("regkeeper-password");
    assert_eq!(std::fs::read_to_string(pw).unwrap(), "s3cret-pass");
    assert!(std::path::Path::new(regkeeper_bin()).is_file());
}

#[test]
fn token_strict_expiry_makes_the_registry_refuse_old_tokens() {
    let reg = Registry::builder()
        .auth(Auth::Token)
        .token_lifetime(Duration::from_secs(3))
        .token_strict_expiry(true)
        .start();
    let minted = Instant::now();
    let auth = reg.auth_header(&["repository:x:pull"]).unwrap();
    let get = || {
        reg.request("GET", "/v2/x/tags/list", &[("Authorization", &auth)], None)
            .unwrap()
            .status
    };
    assert_eq!(get(), 404, "valid token: authorized, repo unknown");
    // `exp` has one-second resolution: 3 s lifetime + 1 s rounding + margin.
    std::thread::sleep(Duration::from_millis(4200).saturating_sub(minted.elapsed()));
    assert_eq!(get(), 401, "expired token refused");
}
