//! Deterministic test images in an OCI image layout, pushed with skopeo.
//!
//! Layers are arbitrary pseudo-random bytes (seeded by a name) with media type
//! `application/vnd.oci.image.layer.v1.tar`; distribution does not look inside. The same
//! `(seed, size)` always yields the same bytes, so layers are shared between images by
//! reusing a spec.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::registry::Registry;

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A layer: `size` pseudo-random bytes determined by `seed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    pub seed: String,
    pub size: u64,
}

/// Shorthand for [`LayerSpec`].
pub fn layer(seed: &str, size: u64) -> LayerSpec {
    LayerSpec {
        seed: seed.to_string(),
        size,
    }
}

/// What an image is made of.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<LayerSpec>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub labels: Vec<(String, String)>,
    pub created: String,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            layers: Vec::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            labels: Vec::new(),
            created: "2024-01-01T00:00:00Z".into(),
        }
    }
}

impl ImageSpec {
    /// linux/amd64 with these layers.
    pub fn new(layers: &[LayerSpec]) -> Self {
        ImageSpec {
            layers: layers.to_vec(),
            ..Default::default()
        }
    }

    pub fn layer(mut self, seed: &str, size: u64) -> Self {
        self.layers.push(layer(seed, size));
        self
    }

    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self.variant = variant.map(String::from);
        self
    }

    /// A config label (changes the config, hence the manifest digest).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn created(mut self, rfc3339: &str) -> Self {
        self.created = rfc3339.into();
        self
    }
}

/// A built image manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// Manifest digest.
    pub digest: String,
    /// Manifest descriptor (with `MT_MANIFEST`).
    pub descriptor: Descriptor,
    /// Raw manifest bytes.
    pub manifest: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub spec: ImageSpec,
}

impl Image {
    /// Config and layer descriptors.
    pub fn blobs(&self) -> Vec<Descriptor> {
        std::iter::once(self.config.clone())
            .chain(self.layers.iter().cloned())
            .collect()
    }
}

/// A built image index (multi-platform).
#[derive(Debug, Clone)]
pub struct Index {
    pub digest: String,
    pub descriptor: Descriptor,
    /// Raw index bytes.
    pub manifest: Vec<u8>,
    pub children: Vec<Image>,
}

impl Index {
    /// Every blob of every child (config + layers, deduplicated).
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = Vec::new();
        for d in self.children.iter().flat_map(|c| c.blobs()) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }
}

/// An OCI image layout directory being filled with named images and indexes.
pub struct Corpus {
    dir: PathBuf,
    _tmp: Option<TempDir>,
    /// ref name -> descriptor, in insertion order.
    refs: Vec<(String, Descriptor)>,
    layers: HashMap<LayerSpec, Descriptor>,
}

impl Corpus {
    /// A layout in a fresh temp dir (removed on drop).
    pub fn new() -> Corpus {
        let tmp = tempfile::Builder::new()
            .prefix("regkeeper-it-corpus-")
            .tempdir()
            .expect("corpus temp dir");
        let mut c = Corpus::at(tmp.path());
        c._tmp = Some(tmp);
        c
    }

    /// A layout in `dir` (created; kept).
    pub fn at(dir: &Path) -> Corpus {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let c = Corpus {
            dir: dir.to_path_buf(),
            _tmp: None,
            refs: Vec::new(),
            layers: HashMap::new(),
        };
        c.write_index_json();
        c
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `oci:DIR:NAME`, the skopeo reference of a named image/index.
    pub fn oci_ref(&self, name: &str) -> String {
        assert!(
            self.refs.iter().any(|(n, _)| n == name),
            "no image named {name:?} in corpus"
        );
        format!("oci:{}:{name}", self.dir.display())
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Reads a blob of the layout.
    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).expect("read layout blob")
    }

    /// Builds an image and names it `name` in `index.json` (replacing an older one).
    pub fn image(&mut self, name: &str, spec: &ImageSpec) -> Image {
        let img = self.build_image(spec);
        self.set_ref(name, img.descriptor.clone());
        img
    }

    /// Builds an image index over one image per spec (use `ImageSpec::platform`) and
    /// names it `name`. Children are stored but not named.
    pub fn index(&mut self, name: &str, children: &[ImageSpec]) -> Index {
        let children: Vec<Image> = children.iter().map(|s| self.build_image(s)).collect();
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|c| {
                let mut p = json!({"os": c.spec.os, "architecture": c.spec.architecture});
                if let Some(v) = &c.spec.variant {
                    p["variant"] = json!(v);
                }
                let mut d = c.descriptor.to_json();
                d["platform"] = p;
                d
            })
            .collect();
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": manifests,
        }))
        .expect("index json");
        let descriptor = self.write_blob(MT_INDEX, &bytes);
        self.set_ref(name, descriptor.clone());
        Index {
            digest: descriptor.digest.clone(),
            descriptor,
            manifest: bytes,
            children,
        }
    }

    /// A linux/amd64 + linux/arm64/v8 index, each child with its own layers derived from
    /// `seed` plus the given shared layers.
    pub fn two_platform_index(&mut self, name: &str, seed: &str, shared: &[LayerSpec]) -> Index {
        let amd = ImageSpec::new(shared).layer(&format!("{seed}-amd64"), 2048);
        let arm = ImageSpec::new(shared)
            .layer(&format!("{seed}-arm64"), 2048)
            .platform("linux", "arm64", Some("v8"));
        self.index(name, &[amd, arm])
    }

    /// Builds an image's blobs and manifest without naming it.
    pub fn build_image(&mut self, spec: &ImageSpec) -> Image {
        let layers: Vec<Descriptor> = spec.layers.iter().map(|l| self.write_layer(l)).collect();
        let labels: serde_json::Map<String, serde_json::Value> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut config = json!({
            "architecture": spec.architecture,
            "os": spec.os,
            "created": spec.created,
            "config": {"Labels": labels},
            // Layers are uncompressed, so diff IDs equal the layer digests.
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        });
        if let Some(v) = &spec.variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).expect("config json");
        let config = self.write_blob(MT_CONFIG, &config_bytes);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        }))
        .expect("manifest json");
        let descriptor = self.write_blob(MT_MANIFEST, &manifest);
        Image {
            digest: descriptor.digest.clone(),
            descriptor,
            manifest,
            config,
            layers,
            spec: spec.clone(),
        }
    }

    /// Writes a layer's bytes (streamed, cached per spec) and returns its descriptor.
    pub fn write_layer(&mut self, spec: &LayerSpec) -> Descriptor {
        if let Some(d) = self.layers.get(spec) {
            return d.clone();
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("blobs/.tmp-{}-{n}", std::process::id()));
        let mut f = fs::File::create(&tmp).expect("create layer temp file");
        let mut hasher = Sha256::new();
        let mut rng = SplitMix::from_seed(&spec.seed);
        let mut left = spec.size;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).expect("write layer");
            left -= n as u64;
        }
        drop(f);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        fs::rename(&tmp, self.blob_path(&digest)).expect("rename layer");
        let d = Descriptor {
            media_type: MT_LAYER.into(),
            digest,
            size: spec.size,
        };
        self.layers.insert(spec.clone(), d.clone());
        d
    }

    /// Writes arbitrary bytes as a blob.
    pub fn write_blob(&mut self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes).expect("write blob");
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
        }
    }

    /// Names a manifest/index descriptor in `index.json`.
    pub fn set_ref(&mut self, name: &str, d: Descriptor) {
        assert!(
            !name.is_empty() && !name.contains(':') && !name.contains('@'),
            "bad ref name {name:?}"
        );
        self.refs.retain(|(n, _)| n != name);
        self.refs.push((name.to_string(), d));
        self.write_index_json();
    }

    fn write_index_json(&self) {
        let manifests: Vec<serde_json::Value> = self
            .refs
            .iter()
            .map(|(n, d)| {
                let mut v = d.to_json();
                v["annotations"] = json!({"org.opencontainers.image.ref.name": n});
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).expect("index.json"),
        )
        .expect("write index.json");
    }

    /// Pushes the named image or index to `reg` as `repo:tag` with
    /// `skopeo copy --all --preserve-digests` (digests stay exactly the corpus ones).
    pub fn push(&self, reg: &Registry, name: &str, repo: &str, tag: &str) {
        super::skopeo::skopeo_copy_to(reg, &self.oci_ref(name), repo, tag);
    }
}

impl Default for Corpus {
    fn default() -> Self {
        Corpus::new()
    }
}

/// splitmix64: fast, deterministic, good enough to make incompressible test bytes.
struct SplitMix(u64);

impl SplitMix {
    fn from_seed(seed: &str) -> Self {
        let h = Sha256::digest(seed.as_bytes());
        SplitMix(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
