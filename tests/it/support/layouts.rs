//! OCI image layouts shaped the way other tools write them, built from a
//! [`Corpus`]'s blobs with an `index.json` written here entry by entry:
//! - nested indexes (regclient, go-containerregistry, buildx: an index whose
//!   `manifests` lists an index, with no platform on that entry);
//! - go-containerregistry's fixtures: a Docker v2 manifest body under a
//!   descriptor that says OCI manifest;
//! - untagged top-level entries (oc-mirror, imgutil, go-containerregistry,
//!   sylabs: no `org.opencontainers.image.ref.name`);
//! - referrers as oras-go's OCI store keeps them (notation signatures, oras
//!   attachments): an untagged entry whose manifest has a `subject`, its
//!   descriptor carrying `artifactType` and the manifest's annotations;
//! - sylabs' cosign-style ref names (`_cosign:sha256-….sig`), duplicate ref
//!   names, a descriptor one byte off, an emptied fallback index
//!   (`"manifests": null`), a Docker schema 1 manifest.
#![allow(dead_code)]

use serde_json::{Value, json};

use super::corpus::{Corpus, Descriptor, Image, ImageSpec, MT_INDEX, MT_MANIFEST, layer};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const NOTATION_SIG: &str = "application/vnd.cncf.notary.signature";
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A layout being written: blobs through the corpus, `index.json` here.
pub struct World {
    pub corpus: Corpus,
    entries: Vec<Value>,
}

pub fn desc(d: &Descriptor) -> Value {
    json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size})
}

/// `d` with a platform, as an index lists an image.
pub fn on(d: &Descriptor, os: &str, arch: &str) -> Value {
    let mut v = desc(d);
    v["platform"] = json!({"os": os, "architecture": arch});
    v
}

impl World {
    pub fn new() -> World {
        World {
            corpus: Corpus::new(),
            entries: Vec::new(),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.corpus.dir()
    }

    /// A small image of `os/arch` whose layers derive from `seed`.
    pub fn image(&mut self, seed: &str, os: &str, arch: &str) -> Image {
        let spec = ImageSpec::new(&[layer(&format!("{seed}-l"), 3000)])
            .platform(os, arch, None)
            .label("seed", seed);
        self.corpus.build_image(&spec)
    }

    /// An index over `entries` (descriptor JSON), with `mediaType` when `typed`.
    pub fn index(&mut self, entries: Vec<Value>, typed: bool) -> Descriptor {
        let mut v = json!({"schemaVersion": 2, "manifests": entries});
        if typed {
            v["mediaType"] = json!(MT_INDEX);
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        self.corpus.write_blob(MT_INDEX, &bytes)
    }

    /// A Docker v2 image (docker media types in the body), as
    /// go-containerregistry's fixtures hold them.
    pub fn docker_image(&mut self, seed: &str) -> Descriptor {
        let l = self
            .corpus
            .write_layer(&layer(&format!("{seed}-docker"), 2500));
        let config = json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [l.digest]}, "config": {}});
        let c = self
            .corpus
            .write_blob(DOCKER_CONFIG, &serde_json::to_vec(&config).unwrap());
        let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": c.digest, "size": c.size},
            "layers": [{"mediaType": DOCKER_LAYER, "digest": l.digest, "size": l.size}]});
        self.corpus
            .write_blob(DOCKER_MANIFEST, &serde_json::to_vec(&m).unwrap())
    }

    /// A Docker v2 image with a foreign (non-distributable) base layer, as
    /// Windows images have: the layer is listed with `urls` and, in this
    /// layout, also held.
    pub fn foreign_image(&mut self, seed: &str) -> (Descriptor, Descriptor, Descriptor) {
        let base = self
            .corpus
            .write_layer(&layer(&format!("{seed}-foreign"), 2200));
        let own = self
            .corpus
            .write_layer(&layer(&format!("{seed}-own"), 1200));
        let config = json!({"architecture": "amd64", "os": "windows",
            "rootfs": {"type": "layers", "diff_ids": [base.digest, own.digest]}});
        let c = self
            .corpus
            .write_blob(DOCKER_CONFIG, &serde_json::to_vec(&config).unwrap());
        let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": c.digest, "size": c.size},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "digest": base.digest, "size": base.size,
                 "urls": ["https://foreign.invalid/base.tar.gz"]},
                {"mediaType": DOCKER_LAYER, "digest": own.digest, "size": own.size}]});
        let d = self
            .corpus
            .write_blob(DOCKER_MANIFEST, &serde_json::to_vec(&m).unwrap());
        (d, base, own)
    }

    /// An image whose config blob is one byte shorter than its descriptor says.
    pub fn short_config_image(&mut self, seed: &str) -> Descriptor {
        let l = self
            .corpus
            .write_layer(&layer(&format!("{seed}-short"), 1500));
        let config = json!({"architecture": "amd64", "os": "linux", "seed": seed,
            "rootfs": {"type": "layers", "diff_ids": [l.digest]}});
        let c = self.corpus.write_blob(
            super::corpus::MT_CONFIG,
            &serde_json::to_vec(&config).unwrap(),
        );
        let m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": c.media_type, "digest": c.digest, "size": c.size + 1},
            "layers": [desc(&l)]});
        self.corpus
            .write_blob(MT_MANIFEST, &serde_json::to_vec(&m).unwrap())
    }

    /// A notation signature of `subject`, the way notation stores it through
    /// oras-go: an image manifest with `artifactType`, the empty config, one
    /// JWS envelope layer, and annotations.
    pub fn notation_signature(&mut self, subject: &Descriptor, seed: &str) -> Descriptor {
        let cfg = self.corpus.write_blob(EMPTY, b"{}");
        let env = self.corpus.write_blob(
            "application/jose+json",
            format!("{{\"payload\":\"{seed}\"}}").as_bytes(),
        );
        let m = json!({"schemaVersion": 2, "mediaType": MT_MANIFEST,
            "artifactType": NOTATION_SIG,
            "config": desc(&cfg), "layers": [desc(&env)], "subject": desc(subject),
            "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": format!("[\"{seed}\"]"),
                "org.opencontainers.image.created": "2024-01-02T03:04:05Z"}});
        self.corpus
            .write_blob(MT_MANIFEST, &serde_json::to_vec(&m).unwrap())
    }

    /// The descriptor oras-go writes into `index.json` for a pushed
    /// referrer: media type, digest, size, artifactType, annotations.
    pub fn referrer_entry(&self, d: &Descriptor) -> Value {
        let body: Value = serde_json::from_slice(&self.corpus.read_blob(&d.digest)).unwrap();
        let mut v = desc(d);
        v["artifactType"] = body["artifactType"].clone();
        v["annotations"] = body["annotations"].clone();
        v
    }

    /// Lists `entry` in `index.json`, tagged `name` when given.
    pub fn entry(&mut self, mut entry: Value, name: Option<&str>) {
        if let Some(n) = name {
            let mut a = entry
                .get("annotations")
                .cloned()
                .unwrap_or_else(|| json!({}));
            a[REF_NAME] = json!(n);
            entry["annotations"] = a;
        }
        self.entries.push(entry);
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.entries});
        std::fs::write(
            self.dir().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}
