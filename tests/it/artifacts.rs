//! Every kind of artifact a mirror meets, kept byte for byte: pushed to a
//! real distribution registry with raw HTTP (their media types as the tools
//! that make them write them), mirrored by one `sync` to a registry and to
//! an `oci:` layout, then read back without regkeeper: raw HTTP at the
//! registry, the layout's own files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::ferro::{OCI_INDEX, OCI_MANIFEST, manifest_bytes, push_blob, put_manifest};
use crate::support::*;
use crate::sync::{header, regkeeper};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What was pushed: every manifest by digest (children too), with the tag
/// it is under, if any.
#[derive(Default)]
struct Pushed {
    manifests: BTreeMap<String, (Vec<u8>, Option<String>)>,
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Pushed {
    fn blob(&mut self, base: &str, repo: &str, media_type: &str, bytes: &[u8]) -> Value {
        let (digest, size) = push_blob(base, repo, bytes);
        self.blobs.insert(digest.clone(), bytes.to_vec());
        json!({"mediaType": media_type, "digest": digest, "size": size})
    }

    /// Puts `m` under `tag` (or by digest); returns its descriptor.
    fn manifest(&mut self, base: &str, repo: &str, tag: Option<&str>, m: Value) -> Value {
        let media_type = m["mediaType"].as_str().expect("mediaType").to_string();
        let bytes = serde_json::to_vec(&m).unwrap();
        let digest = sha256_digest(&bytes);
        put_manifest(base, repo, tag.unwrap_or(&digest), &media_type, &bytes);
        let size = bytes.len();
        self.manifests
            .insert(digest.clone(), (bytes, tag.map(str::to_string)));
        json!({"mediaType": media_type, "digest": digest, "size": size})
    }

    /// A single-manifest artifact: `config` and `layers` as (type, bytes).
    fn artifact(
        &mut self,
        (base, repo): (&str, &str),
        tag: &str,
        config: (&str, &[u8]),
        layers: &[(&str, &[u8])],
        extra: Value,
    ) -> Value {
        let config = self.blob(base, repo, config.0, config.1);
        let layers: Vec<Value> = layers
            .iter()
            .map(|(t, b)| self.blob(base, repo, t, b))
            .collect();
        let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers});
        if let (Value::Object(m), Value::Object(extra)) = (&mut m, extra) {
            m.extend(extra);
        }
        self.manifest(base, repo, Some(tag), m)
    }
}

fn seed_kinds(base: &str, repo: &str) -> Pushed {
    let mut p = Pushed::default();
    let at = (base, repo);
    let helm = p.artifact(
        at,
        "helm-1.0.0",
        (
            "application/vnd.cncf.helm.config.v1+json",
            br#"{"name":"chart","version":"1.0.0"}"#,
        ),
        &[(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            b"\x1f\x8b chart bytes",
        )],
        json!({}),
    );
    p.artifact(
        at,
        "wasm",
        (
            "application/vnd.wasm.config.v0+json",
            br#"{"architecture":"wasm","os":"wasip1"}"#,
        ),
        &[("application/wasm", b"\0asm\x01\0\0\0")],
        json!({}),
    );
    p.artifact(
        at,
        "sbom",
        ("application/vnd.oci.empty.v1+json", b"{}"),
        &[("application/spdx+json", br#"{"spdxVersion":"SPDX-2.3"}"#)],
        json!({"artifactType": "application/spdx+json"}),
    );
    let helm_hex = helm["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    p.artifact(
        at,
        &format!("sha256-{helm_hex}.sig"),
        (
            "application/vnd.oci.image.config.v1+json",
            br#"{"architecture":"","os":""}"#,
        ),
        &[(
            "application/vnd.dev.cosign.simplesigning.v1+json",
            br#"{"critical":{}}"#,
        )],
        json!({}),
    );
    p.artifact(
        at,
        "zstd",
        (
            "application/vnd.oci.image.config.v1+json",
            br#"{"architecture":"amd64","os":"linux"}"#,
        ),
        &[(
            "application/vnd.oci.image.layer.v1.tar+zstd",
            b"\x28\xb5\x2f\xfd zstd frame",
        )],
        json!({}),
    );
    p.artifact(
        at,
        "opa",
        ("application/vnd.cncf.openpolicyagent.config.v1+json", b"{}"),
        &[
            (
                "application/vnd.cncf.openpolicyagent.policy.layer.v1+rego",
                b"package authz\ndefault allow := false\n",
            ),
            (
                "application/vnd.cncf.openpolicyagent.data.layer.v1+json",
                br#"{"users":[]}"#,
            ),
        ],
        json!({}),
    );
    seed_docker_list(&mut p, at);
    seed_buildx(&mut p, at);
    p
}

/// A Docker manifest list of two Docker v2 images.
fn seed_docker_list(p: &mut Pushed, (base, repo): (&str, &str)) {
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = p.blob(
            base,
            repo,
            "application/vnd.docker.container.image.v1+json",
            format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).as_bytes(),
        );
        let layer = p.blob(
            base,
            repo,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            format!("gzip docker layer {arch}").as_bytes(),
        );
        let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config, "layers": [layer]});
        let mut d = p.manifest(base, repo, None, m);
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        entries.push(d);
    }
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries});
    p.manifest(base, repo, Some("docker-list"), list);
}

/// A buildx index: one image and its attestation manifest.
fn seed_buildx(p: &mut Pushed, (base, repo): (&str, &str)) {
    let config = p.blob(
        base,
        repo,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux","config":{}}"#,
    );
    let layer = p.blob(
        base,
        repo,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        b"\x1f\x8b buildx layer",
    );
    let m =
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]});
    let mut image = p.manifest(base, repo, None, m);
    image["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let att_config = p.blob(
        base,
        repo,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"unknown","os":"unknown"}"#,
    );
    let statement = p.blob(
        base,
        repo,
        "application/vnd.in-toto+json",
        br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#,
    );
    let att = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": att_config, "layers": [statement]});
    let mut att = p.manifest(base, repo, None, att);
    att["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    att["annotations"] = json!({
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": image["digest"],
    });
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [image, att]});
    p.manifest(base, repo, Some("buildx"), index);
}

/// The layout's tags (index.json's ref.name annotations) and digests.
/// The bytes the layout at `dir` holds under `digest`, if any.
fn layout_blob(dir: &Path, digest: &str) -> Option<Vec<u8>> {
    std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .ok()
}

fn layout_tags(dir: &Path) -> BTreeMap<String, String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let tag = m["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            Some((tag.to_string(), m["digest"].as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn every_artifact_kind_is_mirrored_byte_for_byte_to_a_registry_and_a_layout() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let pushed = seed_kinds(&src.url(), "kinds/app");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let cfg = format!(
        "{}[[rule]]\nname = \"kinds\"\nsource = \"{}/kinds/app\"\ntargets = [\"{}/mirror/app\", \"oci:{}\"]\n",
        header(dir.path(), &[&src, &dst]),
        src.host(),
        dst.host(),
        layout.display()
    );
    let out = regkeeper(dir.path(), &cfg, &["sync"]);
    assert_eq!(out.status.code(), Some(0));

    let tags = layout_tags(&layout);
    for (digest, (bytes, tag)) in &pushed.manifests {
        let at_registry = manifest_bytes(&dst.url(), "mirror/app", digest);
        assert_eq!(
            at_registry.as_deref(),
            Some(&bytes[..]),
            "manifest {digest} at the registry"
        );
        assert_eq!(
            layout_blob(&layout, digest).as_deref(),
            Some(&bytes[..]),
            "manifest {digest} in the layout"
        );
        if let Some(tag) = tag {
            let tagged = manifest_bytes(&dst.url(), "mirror/app", tag).map(|b| sha256_digest(&b));
            assert_eq!(tagged.as_ref(), Some(digest), "tag {tag} at the registry");
            assert_eq!(tags.get(tag), Some(digest), "tag {tag} in the layout");
        }
    }
    for (digest, bytes) in &pushed.blobs {
        let r = dst
            .get(&format!("/v2/mirror/app/blobs/{digest}"))
            .expect("blob GET");
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &bytes[..]),
            "blob {digest} at the registry"
        );
        assert_eq!(
            layout_blob(&layout, digest).as_deref(),
            Some(&bytes[..]),
            "blob {digest} in the layout"
        );
    }

    let mark = dst.mark();
    let index = std::fs::read(layout.join("index.json")).unwrap();
    let again = regkeeper(dir.path(), &cfg, &["sync"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        dst.writes_since(mark),
        Vec::new(),
        "a re-run writes nothing"
    );
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index);
}
