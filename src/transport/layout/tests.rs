use std::io;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::index::REF_NAME;
use super::*;
use crate::oci::{ByteStream, Digest, Manifest, OCI_INDEX, OCI_MANIFEST, RawManifest};
use crate::transport::ManifestHead;

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A stream of `data` in small chunks, to exercise multi-chunk writes.
fn stream(data: Vec<u8>) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn put(repo: &LayoutRepo, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    repo.put_blob(&d, data.len() as u64, stream(data.to_vec()))
        .await
        .unwrap();
    d
}

fn raw(media_type: &str, bytes: Vec<u8>) -> RawManifest {
    RawManifest {
        media_type: media_type.to_string(),
        digest: Digest::of(&bytes),
        bytes: bytes.into(),
    }
}

/// Writes config + 2 layers and returns the (not yet stored) image manifest.
/// The config is a plausible image config (diff_ids match the uncompressed
/// layers) so that skopeo accepts it.
async fn image(repo: &LayoutRepo, arch: &str, salt: &str) -> RawManifest {
    let l1 = format!("layer one {salt}").into_bytes();
    let l2 = format!("layer two {salt}").into_bytes();
    let (d1, d2) = (put(repo, &l1).await, put(repo, &l2).await);
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [d1.as_str(), d2.as_str()]},
    }))
    .unwrap();
    let dc = put(repo, &config).await;
    // Hand-formatted (with whitespace), to show bytes are kept as they are.
    let manifest = format!(
        "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {{\"mediaType\": \"{CONFIG}\", \"digest\": \"{dc}\", \"size\": {}}},\n  \"layers\": [\n    {{\"mediaType\": \"{LAYER_TAR}\", \"digest\": \"{d1}\", \"size\": {}}},\n    {{\"mediaType\": \"{LAYER_TAR}\", \"digest\": \"{d2}\", \"size\": {}}}\n  ]\n}}\n",
        config.len(),
        l1.len(),
        l2.len()
    );
    raw(OCI_MANIFEST, manifest.into_bytes())
}

/// Two image manifests stored by digest, and an index over them (not stored).
async fn multi_arch(repo: &LayoutRepo) -> (RawManifest, [RawManifest; 2]) {
    let amd = image(repo, "amd64", "amd").await;
    let arm = image(repo, "arm64", "arm").await;
    for m in [&amd, &arm] {
        repo.put_manifest(m.digest.as_str(), m).await.unwrap();
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest.as_str(), "size": amd.bytes.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest.as_str(), "size": arm.bytes.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    (raw(OCI_INDEX, index), [amd, arm])
}

fn index_json(root: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn image_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let repo = LayoutRepo::new(&root, false);
    let m = image(&repo, "amd64", "x").await;
    repo.put_manifest("v1", &m).await.unwrap();

    assert_eq!(
        std::fs::read(root.join("oci-layout")).unwrap(),
        OCI_LAYOUT_CONTENT
    );
    assert_eq!(repo.list_tags().await.unwrap(), vec!["v1"]);
    let head = ManifestHead {
        digest: m.digest.clone(),
        media_type: OCI_MANIFEST.into(),
        size: m.bytes.len() as u64,
    };
    assert_eq!(repo.resolve("v1").await.unwrap(), Some(head.clone()));
    assert_eq!(
        repo.resolve(m.digest.as_str()).await.unwrap(),
        Some(head.clone())
    );
    assert_eq!(repo.resolve("v2").await.unwrap(), None);
    for reference in ["v1", m.digest.as_str()] {
        let got = repo.get_manifest(reference).await.unwrap().unwrap();
        assert_eq!(got.bytes, m.bytes);
        assert_eq!(got.digest, m.digest);
        assert_eq!(got.media_type, OCI_MANIFEST);
    }
    let (_, parsed) = Manifest::parse(OCI_MANIFEST, &m.bytes).unwrap();
    for b in parsed.blobs() {
        assert!(repo.blob_exists(&b.digest).await.unwrap());
        let data = collect(repo.get_blob(&b.digest, b.size).await.unwrap()).await;
        assert_eq!(Digest::of(&data), b.digest);
        // A config or layer is not a manifest.
        assert_eq!(repo.resolve(b.digest.as_str()).await.unwrap(), None);
    }
    // Nothing but final blob names in the blob store.
    assert!(
        files_in(&root.join("blobs/sha256"))
            .iter()
            .all(|f| !f.starts_with('.'))
    );
    let idx = index_json(&root);
    assert_eq!(
        idx["manifests"][0]["annotations"][REF_NAME],
        Value::from("v1")
    );
    assert_eq!(idx["manifests"][0]["size"], Value::from(m.bytes.len()));
}

#[tokio::test]
async fn index_with_children() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = LayoutRepo::new(tmp.path(), false);
    let (index, [amd, arm]) = multi_arch(&repo).await;
    repo.put_manifest("multi", &index).await.unwrap();
    // Children stored by digest have no tag.
    assert_eq!(repo.list_tags().await.unwrap(), vec!["multi"]);
    assert_eq!(
        index_json(tmp.path())["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let got = repo.get_manifest("multi").await.unwrap().unwrap();
    assert_eq!(got.bytes, index.bytes);
    assert_eq!(got.media_type, OCI_INDEX);
    for child in [&amd, &arm] {
        let head = repo.resolve(child.digest.as_str()).await.unwrap().unwrap();
        assert_eq!(head.media_type, OCI_MANIFEST);
        let got = repo
            .get_manifest(child.digest.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.bytes, child.bytes);
    }
}

#[tokio::test]
async fn overwrite_tag_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = LayoutRepo::new(tmp.path(), false);
    let a = image(&repo, "amd64", "a").await;
    let b = image(&repo, "amd64", "b").await;
    repo.put_manifest("first", &a).await.unwrap();
    repo.put_manifest("latest", &a).await.unwrap();
    repo.put_manifest("last", &a).await.unwrap();
    repo.put_manifest("latest", &b).await.unwrap();
    assert_eq!(
        repo.list_tags().await.unwrap(),
        vec!["first", "latest", "last"],
        "a retag keeps its place"
    );
    assert_eq!(
        repo.resolve("latest").await.unwrap().unwrap().digest,
        b.digest
    );
    assert_eq!(
        repo.resolve("first").await.unwrap().unwrap().digest,
        a.digest
    );

    // Deleting `a` takes every tag of it, and its blob.
    repo.delete_manifest(&a.digest).await.unwrap();
    assert_eq!(repo.list_tags().await.unwrap(), vec!["latest"]);
    assert!(
        !tmp.path()
            .join("blobs/sha256")
            .join(a.digest.hex())
            .exists()
    );
    assert_eq!(repo.resolve(a.digest.as_str()).await.unwrap(), None);
    assert!(
        repo.get_manifest(a.digest.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        repo.delete_manifest(&a.digest).await,
        Err(TransportError::NotFound { .. })
    ));
    // The other image is untouched.
    assert_eq!(
        repo.get_manifest("latest").await.unwrap().unwrap().bytes,
        b.bytes
    );
}

#[tokio::test]
async fn missing_layout_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = LayoutRepo::new(&tmp.path().join("nope"), false);
    let d = Digest::of(b"x");
    assert!(repo.list_tags().await.unwrap().is_empty());
    assert_eq!(repo.resolve("v1").await.unwrap(), None);
    assert_eq!(repo.resolve(d.as_str()).await.unwrap(), None);
    assert!(repo.get_manifest("v1").await.unwrap().is_none());
    assert!(!repo.blob_exists(&d).await.unwrap());
    assert!(matches!(
        repo.get_blob(&d, 1).await,
        Err(TransportError::NotFound { .. })
    ));
    assert!(
        list_repositories(&tmp.path().join("nope"))
            .await
            .unwrap()
            .is_empty()
    );
    // A directory without index.json also just has no tags.
    let bare = LayoutRepo::new(tmp.path(), false);
    assert!(bare.list_tags().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_oversized_index_json_is_refused_without_reading_it_all() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("oci-layout"), OCI_LAYOUT_CONTENT).unwrap();
    // a sparse file of 1 GiB: reading it whole would take 1 GiB of memory
    let f = std::fs::File::create(tmp.path().join("index.json")).unwrap();
    f.set_len(1 << 30).unwrap();
    let repo = LayoutRepo::new(tmp.path(), false);
    let e = repo.list_tags().await.unwrap_err().to_string();
    assert!(e.contains("larger than 64 MiB"), "{e}");
}

#[tokio::test]
async fn corrupt_manifest_is_an_integrity_error() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = LayoutRepo::new(tmp.path(), false);
    let m = image(&repo, "amd64", "c").await;
    repo.put_manifest("v1", &m).await.unwrap();
    let path = tmp.path().join("blobs/sha256").join(m.digest.hex());
    let mut bytes = m.bytes.to_vec();
    bytes[0] = b' ';
    std::fs::write(&path, bytes).unwrap();
    for reference in ["v1", m.digest.as_str()] {
        let err = repo.get_manifest(reference).await.unwrap_err();
        assert!(
            matches!(err, TransportError::Integrity { .. }),
            "{reference}: {err}"
        );
    }
    // A manifest whose bytes do not match its digest is refused on write.
    let mut bad = m.clone();
    bad.bytes = Bytes::from_static(b"{}");
    assert!(matches!(
        repo.put_manifest("v2", &bad).await,
        Err(TransportError::Integrity { .. })
    ));
}

#[tokio::test]
async fn failed_put_blob_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = LayoutRepo::new(tmp.path(), false);
    let blobs = tmp.path().join("blobs/sha256");
    let data = b"some blob content".to_vec();
    let d = Digest::of(&data);

    // Wrong content for the digest.
    let err = repo
        .put_blob(
            &d,
            data.len() as u64,
            stream(b"other blob content".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Integrity { .. }), "{err}");
    // Right content, wrong size.
    let err = repo
        .put_blob(&d, data.len() as u64 - 1, stream(data.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Integrity { .. }), "{err}");
    // The source fails half-way.
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"some blob")),
        Err(io::Error::other("connection reset")),
    ]));
    let err = repo
        .put_blob(&d, data.len() as u64, failing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");

    assert!(!repo.blob_exists(&d).await.unwrap());
    assert!(files_in(&blobs).is_empty(), "{:?}", files_in(&blobs));

    // A blob already present is not read again.
    put(&repo, &data).await;
    let poison: ByteStream = Box::pin(futures_util::stream::iter(vec![Err(io::Error::other(
        "must not be read",
    ))]));
    repo.put_blob(&d, data.len() as u64, poison).await.unwrap();
    assert_eq!(files_in(&blobs), vec![d.hex().to_string()]);
}

#[tokio::test]
async fn read_only_refuses_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ro");
    let repo = LayoutRepo::new(&root, true);
    let m = raw(OCI_MANIFEST, b"{}".to_vec());
    let d = Digest::of(b"x");
    let other = Location::Layout {
        path: tmp.path().join("other"),
    };
    let results = [
        repo.put_manifest("v1", &m).await,
        repo.put_manifest(m.digest.as_str(), &m).await,
        repo.put_blob(&d, 1, stream(b"x".to_vec())).await,
        repo.mount_blob(&d, &other).await.map(|_| ()),
        repo.delete_manifest(&d).await,
    ];
    for r in results {
        let err = r.unwrap_err();
        assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("ro"), "{err}");
    }
    assert!(!root.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tags_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("busy");
    let first = LayoutRepo::new(&root, false);
    let m = image(&first, "amd64", "busy").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        // Half of the tasks spell the path differently: the lock must be
        // keyed by the directory, not by the string.
        let path = if i % 2 == 0 {
            root.clone()
        } else {
            root.join(".")
        };
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let repo = LayoutRepo::new(&path, false);
            repo.put_manifest(&format!("t{i}"), &m).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut tags = first.list_tags().await.unwrap();
    tags.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    want.sort();
    assert_eq!(tags, want);
    assert!(files_in(&root).iter().all(|f| !f.starts_with('.')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_writes_share_one_layout() {
    // Many tasks creating the same fresh layout: none may replace an index
    // another one already tagged into.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fresh");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            let repo = LayoutRepo::new(&root, false);
            let m = raw(
                OCI_MANIFEST,
                format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[],"n":{i}}}"#, Digest::of(b"c")).into_bytes(),
            );
            repo.put_manifest(&format!("t{i}"), &m).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        LayoutRepo::new(&root, false)
            .list_tags()
            .await
            .unwrap()
            .len(),
        20
    );
}

#[tokio::test]
async fn lists_nested_repositories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for p in ["a", "team/b", "team/b/nested", "team/deep/er/c"] {
        let repo = LayoutRepo::new(&root.join(p), false);
        put(&repo, p.as_bytes()).await;
    }
    // Not repositories: a plain directory, and a decoy inside a blob store.
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    std::fs::create_dir_all(root.join("a/blobs/decoy")).unwrap();
    std::fs::write(root.join("a/blobs/decoy/oci-layout"), OCI_LAYOUT_CONTENT).unwrap();
    std::fs::write(root.join("a/README"), "file, not a dir").unwrap();
    assert_eq!(
        list_repositories(root).await.unwrap(),
        vec!["a", "team/b", "team/b/nested", "team/deep/er/c"]
    );
    assert_eq!(
        list_repositories(&root.join("team")).await.unwrap(),
        vec!["b", "b/nested", "deep/er/c"]
    );
}

#[tokio::test]
async fn mount_between_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let a = LayoutRepo::new(&tmp.path().join("a"), false);
    let b = LayoutRepo::new(&tmp.path().join("b"), false);
    let data = b"shared layer".to_vec();
    let d = put(&a, &data).await;
    assert!(b.mount_blob(&d, a.location()).await.unwrap());
    assert!(b.blob_exists(&d).await.unwrap());
    // Same filesystem: linked, not copied.
    let linked = std::fs::metadata(tmp.path().join("b/blobs/sha256").join(d.hex())).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&linked), 2);
    assert_eq!(collect(b.get_blob(&d, 12).await.unwrap()).await, data);
    // Again: already there.
    assert!(b.mount_blob(&d, a.location()).await.unwrap());
    // Not in the source, or the source is a registry: upload instead.
    let missing = Digest::of(b"absent");
    assert!(!b.mount_blob(&missing, a.location()).await.unwrap());
    let registry = Location::Registry {
        host: "example.com".into(),
        repo: "x".into(),
    };
    assert!(!b.mount_blob(&d, &registry).await.unwrap());
    assert!(!b.blob_exists(&missing).await.unwrap());
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn skopeo_reads_what_we_write() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ours");
    let repo = LayoutRepo::new(&root, false);
    let m = image(&repo, "amd64", "sk").await;
    repo.put_manifest("v1", &m).await.unwrap();
    let (index, _) = multi_arch(&repo).await;
    repo.put_manifest("multi", &index).await.unwrap();

    let dir = root.to_str().unwrap();
    assert_eq!(
        skopeo(&["inspect", "--raw", &format!("oci:{dir}:v1")]),
        m.bytes
    );
    assert_eq!(
        skopeo(&["inspect", "--raw", &format!("oci:{dir}:multi")]),
        index.bytes
    );
    // skopeo also finds the config and layers.
    let config = skopeo(&["inspect", "--config", "--raw", &format!("oci:{dir}:v1")]);
    assert!(String::from_utf8(config).unwrap().contains("amd64"));
}

#[tokio::test]
async fn we_read_what_skopeo_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let src_root = tmp.path().join("src");
    let dst_root = tmp.path().join("dst");
    let src = LayoutRepo::new(&src_root, false);
    let single = image(&src, "amd64", "single").await;
    src.put_manifest("one", &single).await.unwrap();
    let (index, children) = multi_arch(&src).await;
    src.put_manifest("all", &index).await.unwrap();

    let (s, d) = (src_root.to_str().unwrap(), dst_root.to_str().unwrap());
    // Without --preserve-digests skopeo gzips the (uncompressed) test layers
    // on the way into an OCI layout, which rewrites the manifests.
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        &format!("oci:{s}:one"),
        &format!("oci:{d}:one"),
    ]);
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--all",
        &format!("oci:{s}:all"),
        &format!("oci:{d}:all"),
    ]);

    let dst = LayoutRepo::new(&dst_root, false);
    let mut tags = dst.list_tags().await.unwrap();
    tags.sort();
    assert_eq!(tags, vec!["all", "one"]);
    for (tag, want) in [("one", &single), ("all", &index)] {
        let head = dst.resolve(tag).await.unwrap().unwrap();
        assert_eq!(head.digest, want.digest, "{tag}");
        let got = dst.get_manifest(tag).await.unwrap().unwrap();
        assert_eq!(got.bytes, want.bytes, "{tag}");
        assert_eq!(got.media_type, want.media_type, "{tag}");
    }
    for child in children.iter().chain([&single]) {
        let got = dst
            .get_manifest(child.digest.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.bytes, child.bytes);
        let (_, parsed) = Manifest::parse(&got.media_type, &got.bytes).unwrap();
        for b in parsed.blobs() {
            let data = collect(dst.get_blob(&b.digest, b.size).await.unwrap()).await;
            assert_eq!(Digest::of(&data), b.digest);
        }
    }
    assert_eq!(
        list_repositories(tmp.path()).await.unwrap(),
        vec!["dst", "src"]
    );

    // And our writer keeps skopeo's index entries when adding a tag.
    dst.put_manifest("extra", &single).await.unwrap();
    assert_eq!(dst.list_tags().await.unwrap().len(), 3);
    assert_eq!(
        skopeo(&["inspect", "--raw", &format!("oci:{d}:all")]),
        index.bytes
    );
}
