//! Vocabulary of the OCI image and distribution specs: digests, media types,
//! descriptors and the parts of a manifest the copy engine needs.
//!
//! Manifests are never re-serialized: they are parsed only to find their
//! children, and copied as the raw bytes they were fetched as.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type regkeeper copies, for `Accept` headers. A registry
/// answers 404 (or converts to schema 1) when the stored type is not accepted.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Why a Docker schema 1 manifest is refused, and what to do about it.
pub const SCHEMA1: &str = "a Docker schema 1 manifest (image format deprecated since Docker \
1.10, refused by current registries and runtimes); it is not copied: rebuild or re-push the \
image with a current Docker or buildah, which write schema 2";

fn is_schema1(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.distribution.manifest.v1")
}

/// A non-distributable layer (Docker's foreign layers, OCI's deprecated
/// `nondistributable` types): registries accept a manifest that lists it
/// without holding it, and runtimes fetch it from its `urls`.
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// A content digest, `sha256:<64 lowercase hex>`. Other algorithms are refused
/// at parse time, so everything downstream can verify with SHA-256.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, InvalidDigest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| InvalidDigest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The hex part, as used in blob paths and the `sha256-<hex>` tag schema.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}
impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_string();
        let architecture = parts.next().filter(|p| !p.is_empty())?.to_string();
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            architecture,
            os,
            variant,
        })
    }
    /// Whether this platform (from a manifest) is the one `want` names. A filter
    /// without a variant matches every variant.
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || want.variant == self.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    /// At most `i64::MAX`: the image spec's `size` is an int64, and a larger
    /// value from a source is refused as a malformed manifest.
    #[serde(deserialize_with = "size_int64")]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

fn size_int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n > i64::MAX as u64 {
        return Err(serde::de::Error::custom(format!(
            "descriptor size {n} is larger than an int64 allows"
        )));
    }
    Ok(n)
}

/// What the copy engine needs to know of a manifest: its children.
#[derive(Clone, Debug)]
pub enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
        subject: Option<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
        subject: Option<Descriptor>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse manifest ({media_type}): {reason}")]
pub struct ManifestError {
    pub media_type: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

impl Manifest {
    /// Parses raw manifest bytes. `media_type` is the one the registry (or
    /// the layout descriptor) declared; it is only named in errors. The
    /// returned media type is the one the body declares (`mediaType`), or,
    /// when it has none, the one its shape implies (an OCI index when it has
    /// `manifests`, else an OCI image manifest: Docker's types require the
    /// field), never one the body contradicts: that is what a registry
    /// accepts the bytes as.
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<(String, Manifest), ManifestError> {
        let err = |reason: String| ManifestError {
            media_type: media_type.to_string(),
            reason,
        };
        let wire: WireManifest = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        if wire.schema_version == Some(1) || wire.media_type.as_deref().is_some_and(is_schema1) {
            return Err(err(SCHEMA1.into()));
        }
        let media = match wire.media_type.filter(|m| !m.is_empty()) {
            Some(declared) => declared,
            None if wire.manifests.is_some() => OCI_INDEX.to_string(),
            None => OCI_MANIFEST.to_string(),
        };
        // `"manifests": null` (or none at all) in an index: an empty list, as
        // an empty fallback index written by go-containerregistry has it.
        if wire.manifests.is_some() || (is_index(&media) && wire.config.is_none()) {
            return Ok((
                media,
                Manifest::Index {
                    manifests: wire.manifests.unwrap_or_default(),
                    subject: wire.subject,
                },
            ));
        }
        match wire.config {
            Some(config) => Ok((
                media,
                Manifest::Image {
                    config,
                    layers: wire.layers.unwrap_or_default(),
                    subject: wire.subject,
                },
            )),
            None => Err(err("neither `config` nor `manifests`".into())),
        }
    }

    pub fn subject(&self) -> Option<&Descriptor> {
        match self {
            Manifest::Image { subject, .. } | Manifest::Index { subject, .. } => subject.as_ref(),
        }
    }

    /// Blobs of an image manifest, config first.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image { config, layers, .. } => {
                std::iter::once(config).chain(layers.iter()).collect()
            }
            Manifest::Index { .. } => Vec::new(),
        }
    }
}

/// A manifest exactly as stored: the bytes its digest was computed over.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// Byte stream of a blob. Errors are boxed so that both transports can feed it.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Wraps a blob stream and checks, at its end, that the bytes that went
/// through have the expected size and SHA-256. On a mismatch the stream ends
/// with an error instead of a clean end, so no consumer can commit the blob.
pub struct Verified {
    inner: ByteStream,
    hasher: Option<Sha256>,
    expected: Digest,
    expected_size: Option<u64>,
    seen: u64,
    /// Bytes read from `inner` but not yet passed on (split at a snapshot boundary).
    pending: Option<Bytes>,
    snapshots: Option<Snapshots>,
}

/// Where [`Verified`] records the SHA-256 state at chosen offsets, so a
/// transfer checkpointed at such an offset can resume there later.
#[derive(Clone)]
pub struct Snapshots {
    /// Offsets that are multiples of any of these get a snapshot.
    every: Vec<u64>,
    taken: Arc<Mutex<BTreeMap<u64, Vec<u8>>>>,
}

impl Snapshots {
    /// Snapshots at every multiple of each value in `every` (zeros ignored).
    pub fn new(every: Vec<u64>) -> Self {
        Snapshots {
            every: every.into_iter().filter(|e| *e > 0).collect(),
            taken: Arc::default(),
        }
    }

    /// The hasher state after exactly `offset` bytes, if one was taken.
    pub fn at(&self, offset: u64) -> Option<Vec<u8>> {
        self.taken
            .lock()
            .expect("snapshots poisoned")
            .get(&offset)
            .cloned()
    }

    fn next_boundary(&self, after: u64) -> Option<u64> {
        self.every.iter().map(|m| (after / m + 1) * m).min()
    }

    fn is_boundary(&self, offset: u64) -> bool {
        offset > 0 && self.every.iter().any(|m| offset % m == 0)
    }
}

impl Verified {
    pub fn new(inner: ByteStream, expected: Digest, expected_size: Option<u64>) -> Self {
        Verified {
            inner,
            hasher: Some(Sha256::new()),
            expected,
            expected_size,
            seen: 0,
            pending: None,
            snapshots: None,
        }
    }

    /// Continues a verification that was interrupted after `offset` bytes:
    /// `inner` yields the bytes from `offset` on, `state` is the hasher state
    /// taken at `offset` (see [`Snapshots`]). The check still covers every
    /// byte of the blob.
    pub fn resume(
        inner: ByteStream,
        expected: Digest,
        expected_size: Option<u64>,
        offset: u64,
        state: &[u8],
    ) -> Result<Self, String> {
        use sha2::digest::common::hazmat::{SerializableState, SerializedState};
        let serialized = SerializedState::<Sha256>::try_from(state)
            .map_err(|_| format!("saved hash state has {} bytes", state.len()))?;
        let hasher = Sha256::deserialize(&serialized)
            .map_err(|_| "saved hash state is not a SHA-256 state".to_string())?;
        let mut v = Verified::new(inner, expected, expected_size);
        v.hasher = Some(hasher);
        v.seen = offset;
        Ok(v)
    }

    /// Records the hasher state at every boundary of `snapshots` (chunks are
    /// split there, so each boundary is hit exactly).
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(snapshots);
        self
    }
}

/// Verified's own verdict: the bytes are wrong, and reading them again gives
/// the same bytes, so it is never transient. An error of the inner stream
/// passes through as it came, keeping its kind (a cut stays transient).
fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl Stream for Verified {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        let next = match this.pending.take() {
            Some(b) => Poll::Ready(Some(Ok(b))),
            None => this.inner.as_mut().poll_next(cx),
        };
        match next {
            Poll::Ready(Some(Ok(mut chunk))) => {
                if let Some(snap) = &this.snapshots {
                    if let Some(b) = snap.next_boundary(this.seen) {
                        let room = b - this.seen;
                        if (chunk.len() as u64) > room {
                            this.pending = Some(chunk.split_off(room as usize));
                        }
                    }
                }
                this.seen += chunk.len() as u64;
                if let Some(limit) = this.expected_size {
                    if this.seen > limit {
                        this.hasher = None;
                        return Poll::Ready(Some(Err(invalid(format!(
                            "blob {} is larger than its descriptor's {limit} bytes",
                            this.expected
                        )))));
                    }
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                    if let Some(snap) = &this.snapshots {
                        if snap.is_boundary(this.seen) {
                            use sha2::digest::common::hazmat::SerializableState;
                            snap.taken
                                .lock()
                                .expect("snapshots poisoned")
                                .insert(this.seen, h.serialize().to_vec());
                        }
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let hasher = this.hasher.take().expect("checked above");
                let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                if actual != this.expected.as_str() {
                    return Poll::Ready(Some(Err(invalid(format!(
                        "digest mismatch: expected {}, got {actual}",
                        this.expected
                    )))));
                }
                if let Some(limit) = this.expected_size {
                    if this.seen != limit {
                        return Poll::Ready(Some(Err(invalid(format!(
                            "blob {} has {} bytes, its descriptor says {limit}",
                            this.expected, this.seen
                        )))));
                    }
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn verified_keeps_the_kind_of_its_input_failure() {
        use crate::transport::{io_is_transient, stream_fault};
        let cut: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"hel")),
            Err(stream_fault(true, "reset after 3 bytes")),
        ]));
        let mut s = Verified::new(cut, Digest::of(b"hello"), Some(5));
        assert!(s.next().await.unwrap().is_ok());
        let e = s.next().await.unwrap().unwrap_err();
        assert!(
            io_is_transient(&e),
            "a cut stays transient through Verified"
        );
        // its own verdict is permanent: reading the same bytes again gives the same digest
        let mut s = Verified::new(stream_of(&[b"hellx"]), Digest::of(b"hello"), Some(5));
        let e = loop {
            if let Err(e) = s.next().await.unwrap() {
                break e;
            }
        };
        assert!(!io_is_transient(&e), "{e}");
    }

    #[tokio::test]
    async fn verified_passes_matching_bytes_and_fails_others() {
        let good = Digest::of(b"hello world");
        let mut s = Verified::new(stream_of(&[b"hello ", b"world"]), good.clone(), Some(11));
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item.unwrap());
        }
        assert_eq!(out, b"hello world");

        let mut s = Verified::new(stream_of(&[b"hello ", b"there"]), good.clone(), None);
        let mut last = None;
        while let Some(item) = s.next().await {
            last = Some(item);
        }
        assert!(
            last.unwrap()
                .unwrap_err()
                .to_string()
                .contains("digest mismatch")
        );

        let mut s = Verified::new(stream_of(&[b"hello world!"]), good, Some(11));
        assert!(s.next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn verified_resumes_from_a_snapshot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let parts: Vec<&'static [u8]> = data
            .chunks(77)
            .map(|c| &*Box::leak(c.to_vec().into_boxed_slice()))
            .collect();
        let snaps = Snapshots::new(vec![100, 0]);
        let mut s = Verified::new(stream_of(&parts), digest.clone(), Some(1000))
            .with_snapshots(snaps.clone());
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            let b = item.unwrap();
            // no piece straddles a multiple of 100
            assert!((out.len() / 100) == ((out.len() + b.len() - 1) / 100));
            out.extend_from_slice(&b);
        }
        assert_eq!(out, data);
        let state = snaps.at(300).expect("snapshot at 300");
        let rest: &'static [u8] = Box::leak(data[300..].to_vec().into_boxed_slice());
        let mut r =
            Verified::resume(stream_of(&[rest]), digest.clone(), Some(1000), 300, &state).unwrap();
        while let Some(item) = r.next().await {
            item.unwrap();
        }
        // the wrong prefix state fails at the end
        let wrong = snaps.at(200).unwrap();
        let mut r = Verified::resume(stream_of(&[rest]), digest, Some(1000), 300, &wrong).unwrap();
        let mut last = None;
        while let Some(item) = r.next().await {
            last = Some(item);
        }
        assert!(last.unwrap().is_err());
        assert!(Verified::resume(stream_of(&[]), Digest::of(b""), None, 0, b"xx").is_err());
    }

    #[test]
    fn digest_parse_rejects_bad_input() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn platform_matching() {
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!arm.matches(&Platform::parse("linux/arm64/v7").unwrap()));
        assert!(Platform::parse("linux").is_none());
    }

    #[test]
    fn parses_index_and_image() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":7,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let (mt, m) = Manifest::parse("", idx).unwrap();
        assert_eq!(mt, OCI_INDEX);
        assert!(matches!(m, Manifest::Index { ref manifests, .. } if manifests.len() == 1));
    }

    #[test]
    fn the_body_says_what_a_manifest_is_never_its_descriptor() {
        let z = "0".repeat(64);
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{z}","size":2}},"layers":[]}}"#
        );
        assert_eq!(
            Manifest::parse(OCI_MANIFEST, docker.as_bytes()).unwrap().0,
            DOCKER_MANIFEST
        );
        let bare = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"sha256:{z}","size":2}}}}"#
        );
        assert_eq!(
            Manifest::parse(DOCKER_MANIFEST, bare.as_bytes()).unwrap().0,
            OCI_MANIFEST
        );
        let list = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            Manifest::parse(DOCKER_LIST, list.as_bytes()).unwrap().0,
            OCI_INDEX
        );
        // an emptied fallback index: `manifests` null, or absent
        for empty in [
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":null}}"#),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#),
        ] {
            let (_, m) = Manifest::parse("", empty.as_bytes()).unwrap();
            assert!(matches!(m, Manifest::Index { ref manifests, .. } if manifests.is_empty()));
        }
        let v1 = r#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[]}"#;
        let e = Manifest::parse("", v1.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("schema 1") && e.contains("re-push"), "{e}");
    }

    #[test]
    fn sizes_beyond_int64_are_malformed() {
        let with = |size: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{z}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{z}","size":{size}}}]}}"#,
                z = "0".repeat(64)
            )
        };
        assert!(Manifest::parse("", with("9223372036854775807").as_bytes()).is_ok());
        for bad in ["9223372036854775808", "18446744073709551615", "-1", "1e3"] {
            assert!(
                Manifest::parse("", with(bad).as_bytes()).is_err(),
                "size {bad} accepted"
            );
        }
    }
}
