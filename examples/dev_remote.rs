//! Manual check of the remote transport against real registries (development
//! aid, not a test: needs registries started by hand).
//!
//! `cargo run --example dev_remote -- MODE HOST [CA_FILE | TOKEN_KEY TOKEN_CERT]`
//! MODE: plain | basic | tls | token. `token` also serves a token endpoint on
//! 127.0.0.1:5108 signing with TOKEN_KEY/TOKEN_CERT.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use regkeeper::oci::{ByteStream, Digest, OCI_INDEX, OCI_MANIFEST, RawManifest, Verified};
use regkeeper::reference::Location;
use regkeeper::secret::Secret;
use regkeeper::transport::{RegistryOptions, Store, TransportError, Transports};

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn stream_of(data: Vec<u8>, piece: usize) -> ByteStream {
    let b = Bytes::from(data);
    let parts: Vec<Result<Bytes, std::io::Error>> = (0..b.len().div_ceil(piece))
        .map(|i| Ok(b.slice(i * piece..((i + 1) * piece).min(b.len()))))
        .collect();
    Box::pin(futures_util::stream::iter(parts))
}

fn loc(host: &str, repo: &str) -> Location {
    Location::Registry {
        host: host.into(),
        repo: repo.into(),
    }
}

async fn push_blob(store: &Store, data: Vec<u8>) -> (Digest, u64) {
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let s = Box::pin(Verified::new(
        stream_of(data, 70_000),
        d.clone(),
        Some(size),
    ));
    store.put_blob(&d, size, s).await.expect("put_blob");
    assert!(store.blob_exists(&d).await.unwrap());
    (d, size)
}

static TOKENS: AtomicUsize = AtomicUsize::new(0);

async fn token_server(key_pem: Vec<u8>, cert_pem: String) {
    use axum::extract::RawQuery;
    use axum::http::HeaderMap;
    use base64::Engine;
    let der_b64: String = cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).expect("rsa key");
    let handler = move |headers: HeaderMap, RawQuery(q): RawQuery| {
        let key = key.clone();
        let der_b64 = der_b64.clone();
        async move {
            TOKENS.fetch_add(1, Ordering::Relaxed);
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("testuser:testpass")
            );
            let authed = match headers.get("authorization") {
                None => false,
                Some(v) if v.to_str().unwrap() == expected => true,
                Some(_) => {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        "{\"details\":\"bad creds\"}".to_string(),
                    );
                }
            };
            let q = q.unwrap_or_default();
            let mut service = String::new();
            let mut access = Vec::new();
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                match &*k {
                    "service" => service = v.to_string(),
                    "scope" => {
                        let mut parts = v.splitn(3, ':');
                        let (t, rest) = (parts.next().unwrap(), parts.collect::<Vec<_>>());
                        let (name, actions) = (rest[0], rest[1]);
                        let actions: Vec<&str> = actions
                            .split(',')
                            .filter(|a| authed || *a == "pull")
                            .collect();
                        access
                            .push(serde_json::json!({"type": t, "name": name, "actions": actions}));
                    }
                    _ => {}
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = serde_json::json!({
                "iss": "testbed-token-issuer", "sub": if authed {"testuser"} else {""},
                "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
                "jti": format!("{}", TOKENS.load(Ordering::Relaxed)), "access": access,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.x5c = Some(vec![der_b64]);
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            (
                axum::http::StatusCode::OK,
                serde_json::json!({"token": token, "expires_in": 300}).to_string(),
            )
        }
    };
    let app = axum::Router::new().route("/token", axum::routing::get(handler));
    let l = tokio::net::TcpListener::bind("127.0.0.1:5108")
        .await
        .unwrap();
    axum::serve(l, app).await.unwrap();
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args: Vec<String> = std::env::args().collect();
    let mode = args[1].clone();
    let host = args[2].clone();
    let mut opts = RegistryOptions {
        chunk_size: 1024 * 1024,
        max_concurrent: 4,
        requests_per_second: Some(200.0),
        ..Default::default()
    };
    match mode.as_str() {
        "plain" => opts.plain_http = true,
        "basic" => {
            opts.plain_http = true;
            // credentials from a docker config.json, as `docker login` writes it
            let dir = tempfile::tempdir().unwrap().keep();
            let p = dir.join("config.json");
            std::fs::write(
                &p,
                format!(r#"{{"auths":{{"{host}":{{"auth":"dGVzdHVzZXI6dGVzdHBhc3M="}}}}}}"#),
            )
            .unwrap();
            opts.docker_config = Some(p);
        }
        "tls" => opts.ca_file = Some(args[3].clone().into()),
        "token" => {
            opts.plain_http = true;
            opts.username = Some("testuser".into());
            opts.password = Some(Secret::new("testpass"));
            let key = std::fs::read(&args[3]).unwrap();
            let cert = std::fs::read_to_string(&args[4]).unwrap();
            tokio::spawn(token_server(key, cert));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        m => panic!("mode {m}"),
    }
    let t = Transports::new(HashMap::from([(host.clone(), opts.clone())]), false);
    let app = t.open(&loc(&host, "dev/app")).unwrap();
    let other = t.open(&loc(&host, "dev/other")).unwrap();

    // blobs: config (tiny, monolithic), a 3.5 MiB layer (chunked), a 600 kB layer (monolithic)
    let (cfg, cfg_size) = push_blob(
        &app,
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    )
    .await;
    let big = pseudo_random(3 * 1024 * 1024 + 512 * 1024 + 7, 1);
    let (l1, l1_size) = push_blob(&app, big.clone()).await;
    let (l2, l2_size) = push_blob(&app, pseudo_random(600_000, 2)).await;
    // again: already there, the registry accepts it again
    push_blob(&app, pseudo_random(600_000, 2)).await;
    println!("blobs pushed");

    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_size},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l1, "size": l1_size},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l2, "size": l2_size},
        ]
    });
    let mb = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    let m = RawManifest {
        media_type: OCI_MANIFEST.into(),
        digest: Digest::of(&mb),
        bytes: mb,
    };
    app.put_manifest("v1", &m).await.unwrap();
    let head = app.resolve("v1").await.unwrap().unwrap();
    assert_eq!(head.digest, m.digest);
    assert_eq!(head.media_type, OCI_MANIFEST);
    assert_eq!(head.size, m.bytes.len() as u64);
    let got = app.get_manifest(m.digest.as_str()).await.unwrap().unwrap();
    assert_eq!(got.bytes, m.bytes);
    assert!(app.resolve("nope").await.unwrap().is_none());
    assert!(app.get_manifest("nope").await.unwrap().is_none());

    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m.digest, "size": m.bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let ib = Bytes::from(serde_json::to_vec(&index).unwrap());
    let idx = RawManifest {
        media_type: OCI_INDEX.into(),
        digest: Digest::of(&ib),
        bytes: ib,
    };
    app.put_manifest("multi", &idx).await.unwrap();
    assert_eq!(
        app.get_manifest("multi").await.unwrap().unwrap().media_type,
        OCI_INDEX
    );
    let mut tags = app.list_tags().await.unwrap();
    tags.sort();
    assert_eq!(tags, ["multi", "v1"]);
    assert!(
        t.open(&loc(&host, "dev/none"))
            .unwrap()
            .list_tags()
            .await
            .unwrap()
            .is_empty()
    );
    println!("manifests ok");

    // blob download, verified
    let s = app.get_blob(&l1, l1_size).await.unwrap();
    let mut v = Verified::new(s, l1.clone(), Some(l1_size));
    let mut n = 0;
    while let Some(c) = v.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n as u64, l1_size);
    let missing = Digest::of(b"missing");
    assert!(matches!(
        app.get_blob(&missing, 1).await,
        Err(TransportError::NotFound { .. })
    ));
    assert!(!app.blob_exists(&missing).await.unwrap());
    if let Store::Remote(r) = &app {
        let (s, start) = r.get_blob_from(&l1, 1000).await.unwrap();
        let mut rest = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            rest.extend_from_slice(&c.unwrap());
        }
        assert_eq!(start, 1000);
        assert_eq!(&rest[..], &big[1000..]);
    }
    println!("blob get ok");

    // corrupt uploads: bytes that do not match the digest, chunked and monolithic
    for (len, tag) in [(2_500_000usize, "chunked"), (1000, "monolithic")] {
        let claimed = Digest::of(&pseudo_random(len, 77));
        let bad = pseudo_random(len, 78);
        let s = Box::pin(Verified::new(
            stream_of(bad, 64 * 1024),
            claimed.clone(),
            Some(len as u64),
        ));
        let err = app.put_blob(&claimed, len as u64, s).await.unwrap_err();
        println!("corrupt {tag} upload refused: {err}");
        assert!(!app.blob_exists(&claimed).await.unwrap());
    }
    // a stream shorter than announced
    let d = Digest::of(b"short");
    let err = app
        .put_blob(&d, 10, stream_of(b"short".to_vec(), 2))
        .await
        .unwrap_err();
    println!("short upload refused: {err}");
    assert!(!app.blob_exists(&d).await.unwrap());

    // resumable steps: one chunk, ask the registry where the session stands, finish
    if let Store::Remote(r) = &app {
        let data = pseudo_random(1536 * 1024, 9);
        let d = Digest::of(&data);
        let s = r.start_upload().await.unwrap();
        let s = r
            .upload_chunk(
                s,
                stream_of(data[..1024 * 1024].to_vec(), 50_000),
                1024 * 1024,
            )
            .await
            .unwrap();
        let status = r.upload_status(&s).await.unwrap().expect("session known");
        assert_eq!(status.offset, 1024 * 1024);
        let s = r
            .upload_chunk(
                status,
                stream_of(data[1024 * 1024..].to_vec(), 50_000),
                512 * 1024,
            )
            .await
            .unwrap();
        r.finish_upload(&s, &d).await.unwrap();
        assert!(app.blob_exists(&d).await.unwrap());
        println!("resumable session steps ok");
    }
    // mounts
    assert!(other.mount_blob(&l1, &loc(&host, "dev/app")).await.unwrap());
    assert!(other.blob_exists(&l1).await.unwrap());
    assert!(
        !other
            .mount_blob(&missing, &loc(&host, "dev/app"))
            .await
            .unwrap()
    );
    assert!(
        !other
            .mount_blob(&l1, &loc("elsewhere.example", "dev/app"))
            .await
            .unwrap()
    );
    println!("mounts ok");

    let mut repos = t.list_repositories(&loc(&host, "dev")).await.unwrap();
    repos.sort();
    assert!(repos.contains(&"app".to_string()) && repos.contains(&"other".to_string()));
    assert!(repos.iter().all(|r| !r.starts_with("dev/")));
    let all = t.list_repositories(&loc(&host, "")).await.unwrap();
    assert!(all.contains(&"dev/app".to_string()));
    println!("catalog ok: {all:?}");

    app.delete_manifest(&idx.digest).await.unwrap();
    app.delete_manifest(&idx.digest).await.unwrap(); // already gone
    assert_eq!(app.list_tags().await.unwrap(), ["v1"]);
    println!("delete ok");

    // read-only: writes refused before sending
    let ro = Transports::new(HashMap::from([(host.clone(), opts.clone())]), true);
    let roapp = ro.open(&loc(&host, "dev/app")).unwrap();
    assert_eq!(roapp.resolve("v1").await.unwrap().unwrap().digest, m.digest);
    assert!(matches!(
        roapp.put_manifest("x", &m).await,
        Err(TransportError::ReadOnly { .. })
    ));
    assert!(matches!(
        roapp.delete_manifest(&m.digest).await,
        Err(TransportError::ReadOnly { .. })
    ));

    // wrong credentials / no credentials
    if mode == "basic" || mode == "token" {
        let mut bad = opts.clone();
        bad.docker_config = None;
        bad.username = Some("testuser".into());
        bad.password = Some(Secret::new("wrong-secret"));
        let bt = Transports::new(HashMap::from([(host.clone(), bad)]), false);
        let err = bt
            .open(&loc(&host, "dev/app"))
            .unwrap()
            .list_tags()
            .await
            .unwrap_err();
        println!("wrong password: {err}");
        assert!(matches!(err, TransportError::Auth { .. }));
        assert!(!err.to_string().contains("wrong-secret"));
        let mut anon = opts.clone();
        anon.docker_config = Some("/nonexistent/config.json".into());
        anon.username = None;
        anon.password = None;
        let at = Transports::new(HashMap::from([(host.clone(), anon)]), false);
        let aapp = at.open(&loc(&host, "dev/app")).unwrap();
        match aapp.list_tags().await {
            Ok(tags) => println!("anonymous pull allowed: {tags:?}"),
            Err(e) => println!("anonymous pull refused: {e}"),
        }
        let err = aapp.put_manifest("anon", &m).await.unwrap_err();
        println!("anonymous push: {err}");
        assert!(matches!(err, TransportError::Auth { .. }));
    }
    if mode == "tls" {
        let mut noca = opts.clone();
        noca.ca_file = None;
        let nt = Transports::new(HashMap::from([(host.clone(), noca.clone())]), false);
        let err = nt
            .open(&loc(&host, "dev/app"))
            .unwrap()
            .list_tags()
            .await
            .unwrap_err();
        println!("no ca_file: {err}");
        noca.insecure_skip_verify = true;
        let it = Transports::new(HashMap::from([(host.clone(), noca)]), false);
        assert_eq!(
            it.open(&loc(&host, "dev/app"))
                .unwrap()
                .list_tags()
                .await
                .unwrap(),
            ["v1"]
        );
    }
    if mode == "plain" {
        let x = Transports::new(
            HashMap::from([(host.clone(), RegistryOptions::default())]),
            false,
        );
        let err = x
            .open(&loc(&host, "dev/app"))
            .unwrap()
            .list_tags()
            .await
            .unwrap_err();
        println!("https to a plain registry: {err}");
    }
    if let Store::Remote(r) = &app {
        println!("stats: {:?}", r.registry().stats());
    }
    println!("token requests: {}", TOKENS.load(Ordering::Relaxed));
    println!("ALL OK ({mode})");
}
