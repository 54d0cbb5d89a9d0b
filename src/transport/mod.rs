//! The only module that talks to registries and touches image-layout
//! directories. One interface ([`Store`]: a repository), two implementations:
//! [`remote`] (a registry over HTTP(S)) and [`layout`] (an OCI image-layout
//! directory). The copy engine above does not know which one it talks to.

mod class;
mod error;
pub mod layout;
pub mod remote;
pub mod retry;

pub use class::{ErrorClass, Side};
pub use error::{
    StreamFault, TransportError, io_is_transient, stream_fault, stream_fault_again, stream_gave_up,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::oci::{ByteStream, Digest, RawManifest};
use crate::reference::Location;
use crate::secret::Secret;

/// Per-registry settings, as the transport needs them (built from the
/// `[registries."host"]` table of the config).
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A docker `config.json` to take credentials from (`auths`, `credsStore`,
    /// `credHelpers`); `None` = `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when present.
    pub docker_config: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub plain_http: bool,
    /// Requests in flight to this registry at once.
    pub max_concurrent: usize,
    /// Sustained request rate; `None` = unlimited.
    pub requests_per_second: Option<f64>,
    /// Upload chunk size in bytes; 0 = one monolithic PUT.
    pub chunk_size: u64,
    /// A connection that moves no byte this long is abandoned (and retried).
    pub read_timeout: std::time::Duration,
    /// `RateLimit-Remaining` at or below this pauses manifest GETs.
    pub ratelimit_min: u64,
    /// A response body slower than this many bytes per second, averaged
    /// over `MIN_RATE_WINDOW`, is abandoned; 0 = no such check.
    pub min_rate: u64,
    /// At most this many pages of one paginated list (tags, catalog,
    /// referrers) are read before the listing fails.
    pub max_pages: usize,
    /// Hosts other than the registry's own that may receive its credentials
    /// as a token realm even where that would otherwise be refused.
    pub token_realms: Vec<String>,
    /// What error hints name: config keys, or `copy`'s flags.
    pub hints: Hints,
}

/// What an error's hint names as the fix: the registry's config keys, or
/// (for `regkeeper copy`) the flags of the sides (`src`, `dest`) the
/// registry is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Hints {
    #[default]
    Config,
    Flags(Vec<&'static str>),
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            username: None,
            password: None,
            docker_config: None,
            ca_file: None,
            insecure_skip_verify: false,
            plain_http: false,
            max_concurrent: 8,
            requests_per_second: None,
            chunk_size: 16 * 1024 * 1024,
            read_timeout: std::time::Duration::from_secs(30),
            ratelimit_min: 0,
            min_rate: 10 * 1024,
            max_pages: 10_000,
            token_realms: Vec::new(),
            hints: Hints::Config,
        }
    }
}

/// What a HEAD (or a manifest lookup) tells about a tag or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// One repository in a registry or one image-layout directory.
#[derive(Clone, Debug)]
pub enum Store {
    Remote(remote::RemoteRepo),
    Layout(layout::LayoutRepo),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Remote($s) => $e,
            Store::Layout($s) => $e,
        }
    };
}

impl Store {
    pub fn location(&self) -> &Location {
        dispatch!(self, s => s.location())
    }

    /// Every tag, in no particular order (pagination followed). A repository
    /// that does not exist, or whose tag list is `null`, has no tags: right
    /// for a target, wrong for a source (use [`Store::tag_listing`]).
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        Ok(self.tag_listing().await?.unwrap_or_default())
    }

    /// Every tag, or `None` when the repository does not exist (a registry's
    /// 404 / `NAME_UNKNOWN`, a directory without `index.json`). A source that
    /// does not exist is an error, never an empty list (SPEC section 4).
    pub async fn tag_listing(&self) -> Result<Option<Vec<String>>> {
        match self {
            Store::Remote(s) => s.list_tags().await,
            Store::Layout(s) => s.tag_listing().await,
        }
    }

    /// Whether uploads to this store can be checkpointed and continued
    /// (chunked upload sessions of a registry with a `chunk_size`); the
    /// chunk size when so.
    pub fn resumable(&self) -> Option<u64> {
        self.resumable_uploads().map(|(_, chunk)| chunk)
    }

    /// The capability behind [`Self::resumable`]: the repository that takes
    /// chunked upload sessions (status, cancel, resumable PUT) and its chunk
    /// size, so callers need not know which kind of store does.
    pub(crate) fn resumable_uploads(&self) -> Option<(&remote::RemoteRepo, u64)> {
        match self {
            Store::Remote(s) => Some((s, s.registry().chunk_size())).filter(|&(_, c)| c > 0),
            Store::Layout(_) => None,
        }
    }

    /// Digest, media type and size of a tag or digest; `None` when absent.
    pub async fn resolve(&self, reference: &str) -> Result<Option<ManifestHead>> {
        dispatch!(self, s => s.resolve(reference).await)
    }

    /// The manifest's raw bytes; `None` when absent. The returned digest is
    /// computed from the bytes, and must equal `reference` when that is a digest
    /// (an `Integrity` error otherwise).
    pub async fn get_manifest(&self, reference: &str) -> Result<Option<RawManifest>> {
        dispatch!(self, s => s.get_manifest(reference).await)
    }

    /// Stores `manifest` byte for byte under `reference` (a tag, or its digest).
    /// Everything it references must already be present.
    pub async fn put_manifest(&self, reference: &str, manifest: &RawManifest) -> Result<()> {
        dispatch!(self, s => s.put_manifest(reference, manifest).await)
    }

    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        dispatch!(self, s => s.blob_exists(digest).await)
    }

    /// Whether the store holds the blob, and its size where known.
    pub async fn blob_len(&self, digest: &Digest) -> Result<Option<Option<u64>>> {
        match self {
            Store::Remote(s) => s.blob_len(digest).await,
            Store::Layout(s) => Ok(s.blob_size(digest).await?.map(Some)),
        }
    }

    /// The size of a blob a layout holds (`None`: absent, or a registry,
    /// whose blobs are checked as they are read).
    pub async fn local_blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self {
            Store::Remote(_) => Ok(None),
            Store::Layout(s) => s.blob_size(digest).await,
        }
    }

    /// The blob's bytes as a stream, not yet verified (wrap in [`crate::oci::Verified`]).
    pub async fn get_blob(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        dispatch!(self, s => s.get_blob(digest, size).await)
    }

    /// Stores a blob from a stream. Commits it only when the stream ended
    /// without error and the bytes match `digest`; nothing is left visible
    /// otherwise.
    pub async fn put_blob(&self, digest: &Digest, size: u64, data: ByteStream) -> Result<()> {
        dispatch!(self, s => s.put_blob(digest, size, data).await)
    }

    /// The blob's bytes from `offset` on (resuming a download); returns the
    /// offset the stream really starts at (0 when the store cannot seek).
    pub async fn get_blob_from(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<(ByteStream, u64)> {
        match self {
            Store::Remote(s) => s.get_blob_from(digest, offset).await,
            Store::Layout(s) => Ok((s.get_blob(digest, size).await?, 0)),
        }
    }

    /// Asks the target to link a blob it already holds in `from` (another
    /// repository of the same registry). `Ok(false)`: not mounted, upload it.
    pub async fn mount_blob(&self, digest: &Digest, from: &Location) -> Result<bool> {
        dispatch!(self, s => s.mount_blob(digest, from).await)
    }

    /// The descriptors of `subject`'s referrers through the OCI referrers API
    /// (of `artifact_type` only, when given); `None` where there is no such
    /// API (a registry without it, an image layout): use the tag schema.
    pub async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        match self {
            Store::Remote(s) => s.referrers(subject, artifact_type).await,
            Store::Layout(_) => Ok(None),
        }
    }

    /// An `oci:` layout's untagged top-level manifests (`index.json`
    /// entries without a ref name), as descriptors; none for a registry.
    pub async fn untagged_entries(&self) -> Result<Vec<serde_json::Value>> {
        match self {
            Store::Remote(_) => Ok(Vec::new()),
            Store::Layout(s) => s.untagged_entries().await,
        }
    }

    /// Whether the store holds `digest` as a top-level manifest: a layout
    /// lists it in `index.json`; a registry has it.
    pub async fn has_entry(&self, digest: &Digest) -> Result<bool> {
        match self {
            Store::Remote(s) => Ok(s.resolve(digest.as_str()).await?.is_some()),
            Store::Layout(s) => s.has_entry(digest).await,
        }
    }

    /// Pushes `manifest` by digest; a layout also lists it in `index.json`
    /// without a ref name, under `descriptor` (see `LayoutRepo::put_entry`).
    pub async fn put_entry(
        &self,
        manifest: &RawManifest,
        descriptor: &serde_json::Value,
    ) -> Result<()> {
        match self {
            Store::Remote(s) => s.put_manifest(manifest.digest.as_str(), manifest).await,
            Store::Layout(s) => s.put_entry(manifest, descriptor).await,
        }
    }

    /// The referrers a layout lists in `index.json`, by subject (their
    /// manifests' `subject`, as oras, notation and regclient store them);
    /// none for a registry (its API or fallback index says).
    pub async fn referrers_by_subject(&self) -> Result<HashMap<Digest, Vec<serde_json::Value>>> {
        match self {
            Store::Remote(_) => Ok(HashMap::new()),
            Store::Layout(s) => s.referrers_by_subject().await,
        }
    }

    /// Deletes a manifest by digest (and with it every tag pointing at it).
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        dispatch!(self, s => s.delete_manifest(digest).await)
    }
}

/// `Ok` when `location` (a repository under the `/*` prefix `prefix`) is
/// written inside the prefix: always for a registry (the name was checked);
/// for an `oci:` directory, on the resolved path (no symlink out of it).
pub(crate) fn confined(prefix: &Location, location: &Location) -> Result<(), String> {
    match (prefix, location) {
        (Location::Layout { path: root }, Location::Layout { path }) => {
            layout::confined(root, path)
        }
        _ => Ok(()),
    }
}

/// Opens stores, sharing one HTTP client, token cache and set of limits per
/// registry host.
pub struct Transports {
    options: HashMap<String, RegistryOptions>,
    read_only: bool,
    registries: Mutex<HashMap<String, Arc<remote::Registry>>>,
    observer: Mutex<Option<remote::Observer>>,
}

impl Transports {
    /// `options` maps a registry host as written in references to its
    /// settings; hosts without an entry use the defaults. With `read_only`,
    /// every write request is refused before it is sent.
    pub fn new(options: HashMap<String, RegistryOptions>, read_only: bool) -> Self {
        Transports {
            options,
            read_only,
            registries: Mutex::new(HashMap::new()),
            observer: Mutex::new(None),
        }
    }

    /// Calls `f` after every request to any registry, opened now or later
    /// (metrics).
    pub fn set_observer(&self, f: remote::Observer) {
        for reg in self
            .registries
            .lock()
            .expect("registry map poisoned")
            .values()
        {
            reg.set_observer(f.clone());
        }
        *self.observer.lock().expect("observer poisoned") = Some(f);
    }

    /// Request counters of every registry contacted so far, by host.
    pub fn registry_stats(&self) -> Vec<(String, remote::RegistryStats)> {
        let map = self.registries.lock().expect("registry map poisoned");
        let mut out: Vec<_> = map.iter().map(|(h, r)| (h.clone(), r.stats())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn registry(&self, host: &str) -> Result<Arc<remote::Registry>> {
        let mut map = self.registries.lock().expect("registry map poisoned");
        if let Some(r) = map.get(host) {
            return Ok(r.clone());
        }
        let opts = self.options.get(host).cloned().unwrap_or_default();
        let reg = Arc::new(remote::Registry::new(host, &opts, self.read_only)?);
        if let Some(f) = self.observer.lock().expect("observer poisoned").clone() {
            reg.set_observer(f);
        }
        map.insert(host.to_string(), reg.clone());
        Ok(reg)
    }

    pub fn open(&self, location: &Location) -> Result<Store> {
        match location {
            Location::Registry { host, repo } => Ok(Store::Remote(remote::RemoteRepo::new(
                self.registry(host)?,
                repo,
            ))),
            Location::Layout { path } => {
                Ok(Store::Layout(layout::LayoutRepo::new(path, self.read_only)))
            }
        }
    }

    /// Repositories under `prefix`, as paths relative to it (for `/*` sources).
    pub async fn list_repositories(&self, prefix: &Location) -> Result<Vec<String>> {
        match prefix {
            Location::Registry { host, repo } => self.registry(host)?.list_repositories(repo).await,
            Location::Layout { path } => layout::list_repositories(path).await,
        }
    }
}
