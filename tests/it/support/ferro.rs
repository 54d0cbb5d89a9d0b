//! A real registry with the OCI 1.1 referrers API: `ferro-oci-server`
//! (crates.io, installed by scripts/test.sh) as a child process on
//! 127.0.0.1 with an ephemeral port and a temp storage directory, like
//! registry.rs does for docker-registry. Also raw-HTTP helpers to push
//! blobs and manifests (by digest, with a `subject`) to any registry, and to
//! read a referrers list, so tests build and check artifacts without
//! regkeeper.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::http::{self, HttpResponse};
use super::sha256_digest;

/// Where the ferro-oci-server binary is: on PATH, or in cargo's bin dir.
pub fn ferro_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("ferro-oci-server"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let p = cargo_home.join("bin/ferro-oci-server");
    assert!(
        p.is_file(),
        "ferro-oci-server is not installed (not on PATH, not at {}): run scripts/test.sh, \
         which installs it with `cargo install --locked ferro-oci-server`",
        p.display()
    );
    p
}

/// One running ferro-oci-server; killed on drop.
pub struct Ferro {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Ferro {
    pub fn start() -> Ferro {
        let dir = tempfile::tempdir().expect("ferro temp dir");
        let log = std::fs::File::create(dir.path().join("ferro.log")).expect("ferro log");
        let port = super::free_port();
        let child = Command::new(ferro_bin())
            .env("FERRO_OCI_LISTEN", format!("127.0.0.1:{port}"))
            .env("FERRO_OCI_STORAGE_DIR", dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn ferro-oci-server");
        let mut f = Ferro {
            child,
            port,
            _dir: dir,
        };
        f.wait_ready();
        f
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ferro-oci-server exited during start-up: {status}");
            }
            let up = TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok();
            if up && get(&self.url(), "/v2/").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "ferro-oci-server not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The `[registries."..."]` section regkeeper needs.
    pub fn regkeeper_registry_toml(&self) -> String {
        format!("[registries.\"{}\"]\nplain_http = true\n", self.host())
    }
}

impl Drop for Ferro {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn get(base: &str, path: &str) -> Result<HttpResponse, String> {
    http::request(None, "GET", &format!("{base}{path}"), &[], None)
}

/// Pushes a blob (POST, then PUT with the digest); returns its descriptor
/// fields (digest, size).
pub fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> (String, usize) {
    let digest = sha256_digest(bytes);
    let start = http::request(
        None,
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/"),
        &[],
        None,
    )
    .expect("start upload");
    assert_eq!(start.status, 202, "POST upload: {}", start.text());
    let loc = start.header("location").expect("upload location");
    let url = url::Url::parse(&format!("{base}/"))
        .unwrap()
        .join(loc)
        .expect("upload url");
    let sep = if url.query().is_some() { '&' } else { '?' };
    let put = http::request(
        None,
        "PUT",
        &format!("{url}{sep}digest={digest}"),
        &[("content-type", "application/octet-stream")],
        Some(bytes.to_vec()),
    )
    .expect("finish upload");
    assert_eq!(put.status, 201, "PUT blob: {}", put.text());
    (digest, bytes.len())
}

/// Puts a manifest under `reference`; returns the response (for headers).
pub fn put_manifest(
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> HttpResponse {
    let r = http::request(
        None,
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &[("content-type", media_type)],
        Some(bytes.to_vec()),
    )
    .expect("put manifest");
    assert_eq!(r.status, 201, "PUT manifest {reference}: {}", r.text());
    r
}

/// The raw bytes of a manifest (any type accepted).
pub fn manifest_bytes(base: &str, repo: &str, reference: &str) -> Option<Vec<u8>> {
    let r = http::request(
        None,
        "GET",
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &[("accept", ACCEPT)],
        None,
    )
    .expect("get manifest");
    (r.status == 200).then_some(r.body)
}

/// The entries of a referrers list (the target's own API).
pub fn referrers(base: &str, repo: &str, subject: &str) -> Vec<Value> {
    let r = get(base, &format!("/v2/{repo}/referrers/{subject}")).expect("referrers");
    assert_eq!(r.status, 200, "referrers: {}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("referrers JSON");
    v["manifests"].as_array().cloned().unwrap_or_default()
}

/// The digests an index (a referrers list, a fallback index) lists.
pub fn entry_digests(entries: &[Value]) -> std::collections::BTreeSet<String> {
    entries
        .iter()
        .map(|e| e["digest"].as_str().expect("digest").to_string())
        .collect()
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// A manifest pushed to a registry: its bytes, digest and descriptor.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub artifact_type: Option<String>,
}

impl Pushed {
    /// Its descriptor, as a subject or an index entry.
    pub fn descriptor(&self) -> Value {
        let mut d = serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.bytes.len(),
        });
        if let Some(t) = &self.artifact_type {
            d["artifactType"] = Value::String(t.clone());
        }
        d
    }
}

/// Pushes a small image (config + one layer seeded by `seed`) under `tag`.
pub fn push_image(base: &str, repo: &str, tag: &str, seed: &str) -> Pushed {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"seed":"{seed}"}}}}}}"#
    );
    let (cd, cs) = push_blob(base, repo, config.as_bytes());
    let layer = format!("layer of {seed}").repeat(64);
    let (ld, ls) = push_blob(base, repo, layer.as_bytes());
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    put_manifest(base, repo, tag, OCI_MANIFEST, &bytes);
    Pushed {
        digest: sha256_digest(&bytes),
        bytes,
        artifact_type: None,
    }
}

/// Pushes an artifact (the empty config, one layer `content`) with
/// `subject`, by digest, the OCI 1.1 way; returns it and the PUT's response.
pub fn push_referrer(
    base: &str,
    repo: &str,
    subject: &Pushed,
    artifact_type: &str,
    content: &[u8],
) -> (Pushed, HttpResponse) {
    let (ed, es) = push_blob(base, repo, b"{}");
    let (ld, ls) = push_blob(base, repo, content);
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": ed, "size": es},
        "layers": [{"mediaType": artifact_type, "digest": ld, "size": ls}],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = sha256_digest(&bytes);
    let resp = put_manifest(base, repo, &digest, OCI_MANIFEST, &bytes);
    (
        Pushed {
            bytes,
            digest,
            artifact_type: Some(artifact_type.into()),
        },
        resp,
    )
}

/// Writes `subject`'s `sha256-<hex>` fallback index listing `entries`.
pub fn push_fallback_index(base: &str, repo: &str, subject: &str, entries: &[&Pushed]) -> Vec<u8> {
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": entries.iter().map(|p| p.descriptor()).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    put_manifest(base, repo, &tag, OCI_INDEX, &bytes);
    bytes
}
