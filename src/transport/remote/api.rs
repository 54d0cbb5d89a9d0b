//! One repository's manifest and blob calls.

use std::sync::Arc;

use reqwest::header;
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::resume;
use super::send::Req;
use super::{
    DOCKER_CONTENT_DIGEST, MAX_MANIFEST, Registry, header_str, is_manifest_type, repo_scope,
    scopes, strip_params,
};
use crate::oci::{ByteStream, Digest, MANIFEST_ACCEPT, RawManifest};
use crate::reference::{Location, check_repo_path, check_tag};
use crate::transport::{ManifestHead, Result, TransportError};

#[derive(Clone, Debug)]
pub struct RemoteRepo {
    pub(super) registry: Arc<Registry>,
    pub(super) location: Location,
    pub(super) repo: String,
}

impl RemoteRepo {
    pub fn new(registry: Arc<Registry>, repo: &str) -> Self {
        let location = Location::Registry {
            host: registry.host.clone(),
            repo: repo.to_string(),
        };
        RemoteRepo {
            registry,
            location,
            repo: repo.to_string(),
        }
    }
    pub fn location(&self) -> &Location {
        &self.location
    }
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(super) fn pull(&self) -> Scopes {
        scopes([repo_scope(&self.repo, "pull")])
    }
    pub(super) fn push(&self) -> Scopes {
        scopes([repo_scope(&self.repo, "pull,push")])
    }
    /// `/v2/<repo>/<rest>`. The repository path is checked against the
    /// distribution grammar here, the last place before a request: a name
    /// with `..`, `%2e`, `?` or `#` would make the URL parser (WHATWG: `%2e%2e`
    /// is `..`) address another repository or drop part of the path.
    pub(super) fn url(&self, rest: &str) -> Result<Url> {
        check_repo_path(&self.repo).map_err(|e| self.bad_name(e))?;
        self.registry.url(&format!("/v2/{}/{rest}", self.repo))
    }
    /// `/v2/<repo>/manifests/<reference>`: a digest, or a tag of the
    /// grammar (refused otherwise, never sent), added as one percent-encoded
    /// path segment.
    pub(super) fn manifest_url(&self, reference: &str) -> Result<Url> {
        if Digest::parse(reference).is_err() {
            check_tag(reference).map_err(|e| self.bad_name(e))?;
        }
        let mut url = self.url("manifests")?;
        url.path_segments_mut()
            .map_err(|()| self.bad_name("the registry URL cannot take a path"))?
            .push(reference);
        Ok(url)
    }
    fn bad_name(&self, e: impl std::fmt::Display) -> TransportError {
        TransportError::Protocol {
            location: self.registry.host.clone(),
            detail: format!("refusing to send a request: {e}"),
        }
    }
    pub(super) fn integrity(&self, what: String, detail: String) -> TransportError {
        TransportError::Integrity {
            location: self.location.to_string(),
            what,
            detail,
        }
    }

    /// HEAD or GET of a manifest with every manifest type accepted; `None`
    /// on 404, an error on any other failure.
    pub(super) async fn manifest_request(
        &self,
        method: Method,
        reference: &str,
    ) -> Result<Option<reqwest::Response>> {
        let reg = &self.registry;
        let url = self.manifest_url(reference)?;
        let resp = reg
            .send(
                Req::new(method.clone(), url.clone(), self.pull())
                    .header(header::ACCEPT, MANIFEST_ACCEPT),
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            _ => Err(reg.status_error(&method, &url, resp).await),
        }
    }

    pub async fn resolve(&self, reference: &str) -> Result<Option<ManifestHead>> {
        let Some(resp) = self.manifest_request(Method::HEAD, reference).await? else {
            return Ok(None);
        };
        let digest = header_str(&resp, DOCKER_CONTENT_DIGEST).and_then(|d| Digest::parse(d).ok());
        let media_type = header_str(&resp, "content-type").map(|c| strip_params(c).to_string());
        let size = header_str(&resp, "content-length").and_then(|l| l.parse::<u64>().ok());
        match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size)) if is_manifest_type(&media_type) => {
                if let Ok(want) = Digest::parse(reference) {
                    if want != digest {
                        return Err(self.integrity(
                            format!("manifest {reference}"),
                            format!("the registry reports digest {digest}"),
                        ));
                    }
                }
                Ok(Some(ManifestHead {
                    digest,
                    media_type,
                    size,
                }))
            }
            // Without a digest header (or a usable type) the bytes must be fetched and hashed.
            _ => Ok(self.get_manifest(reference).await?.map(|m| ManifestHead {
                size: m.bytes.len() as u64,
                digest: m.digest,
                media_type: m.media_type,
            })),
        }
    }

    pub async fn get_manifest(&self, reference: &str) -> Result<Option<RawManifest>> {
        let reg = &self.registry;
        let Some(resp) = self.manifest_request(Method::GET, reference).await? else {
            return Ok(None);
        };
        let header_digest = header_str(&resp, DOCKER_CONTENT_DIGEST).map(str::to_string);
        let content_type = header_str(&resp, "content-type")
            .map(|c| strip_params(c).to_string())
            .unwrap_or_default();
        let url = resp.url().clone();
        let status = resp.status().as_u16();
        let bytes = reg
            .read_body(&Method::GET, &url, resp, MAX_MANIFEST)
            .await?;
        if super::wire::is_html(&content_type, &bytes) {
            let why = super::wire::not_json(status, &content_type, &bytes, "");
            return Err(reg.protocol(&url, format!("manifest {reference}: {why}")));
        }
        let digest = Digest::of(&bytes);
        if let Ok(want) = Digest::parse(reference) {
            if want != digest {
                return Err(self.integrity(
                    format!("manifest {reference}"),
                    format!("its bytes hash to {digest}"),
                ));
            }
        }
        if let Some(h) = header_digest {
            // Only sha256 is comparable; other algorithms are not ours to check.
            if h.starts_with("sha256:") && h != digest.as_str() {
                return Err(self.integrity(
                    format!("manifest {reference}"),
                    format!("the registry says {h}, its bytes hash to {digest}"),
                ));
            }
        }
        let media_type = if is_manifest_type(&content_type) {
            content_type
        } else {
            // Some registries answer `application/json`; the body says what it is.
            crate::oci::Manifest::parse(&content_type, &bytes)
                .map(|(mt, _)| mt)
                .unwrap_or(content_type)
        };
        Ok(Some(RawManifest {
            media_type,
            digest,
            bytes,
        }))
    }

    pub async fn put_manifest(&self, reference: &str, m: &RawManifest) -> Result<()> {
        let reg = &self.registry;
        let url = self.manifest_url(reference)?;
        let resp = reg
            .send(
                Req::new(Method::PUT, url.clone(), self.push())
                    .header(header::CONTENT_TYPE, &m.media_type)
                    .bytes(m.bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(reg.status_error(&Method::PUT, &url, resp).await);
        }
        if header_str(&resp, "oci-subject").is_some() {
            // The registry indexed the manifest's subject: it has the API.
            reg.learn_referrers_api(true);
        }
        if let Some(d) = header_str(&resp, DOCKER_CONTENT_DIGEST) {
            if d.starts_with("sha256:") && d != m.digest.as_str() {
                return Err(self.integrity(
                    format!("manifest {reference}"),
                    format!("pushed {} but the registry stored {d}", m.digest),
                ));
            }
        }
        Ok(())
    }

    pub async fn blob_exists(&self, d: &Digest) -> Result<bool> {
        Ok(self.blob_len(d).await?.is_some())
    }

    /// Whether the registry holds the blob, and its size when it says
    /// (`Some(None)`: present, no usable Content-Length).
    pub async fn blob_len(&self, d: &Digest) -> Result<Option<Option<u64>>> {
        let reg = &self.registry;
        let url = self.url(&format!("blobs/{d}"))?;
        let resp = reg
            .send(Req::new(Method::HEAD, url.clone(), self.pull()))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let len = header_str(&resp, "content-length").and_then(|l| l.parse().ok());
                Ok(Some(len))
            }
            _ => Err(reg.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    pub async fn get_blob(&self, d: &Digest, _size: u64) -> Result<ByteStream> {
        Ok(self.get_blob_from(d, 0).await?.0)
    }

    /// The blob's bytes from `offset` on (HTTP Range), for resuming a
    /// download. Returns the offset the stream actually starts at: 0 when the
    /// registry ignored the range and sends the whole blob.
    /// One attempt budget covers the whole read: the first GET, its retries
    /// and every GET that resumes a cut or slow body.
    pub async fn get_blob_from(&self, d: &Digest, offset: u64) -> Result<(ByteStream, u64)> {
        let mut budget = crate::transport::retry::Budget::new();
        let (resp, start) = self.open_blob(d, offset, &mut budget).await?;
        let body = resume::Resuming::new(self.clone(), d.clone(), resp, start, budget);
        Ok((body.into_stream(), start))
    }

    /// One GET of the blob from `offset` (Range), within `budget`; the
    /// response and the offset its body starts at (0 when the registry
    /// ignored the range).
    pub(super) async fn open_blob(
        &self,
        d: &Digest,
        offset: u64,
        budget: &mut crate::transport::retry::Budget,
    ) -> Result<(reqwest::Response, u64)> {
        let reg = &self.registry;
        let url = self.url(&format!("blobs/{d}"))?;
        let mut req = Req::new(Method::GET, url.clone(), self.pull());
        if offset > 0 {
            req = req.header(header::RANGE, &format!("bytes={offset}-"));
        }
        let resp = reg.send_within(req, budget).await?;
        let start = match resp.status() {
            StatusCode::NOT_FOUND => {
                return Err(TransportError::NotFound {
                    location: self.location.to_string(),
                    what: format!("blob {d}"),
                });
            }
            StatusCode::PARTIAL_CONTENT => offset,
            StatusCode::OK => 0,
            _ => return Err(reg.status_error(&Method::GET, &url, resp).await),
        };
        Ok((resp, start))
    }

    pub async fn delete_manifest(&self, d: &Digest) -> Result<()> {
        let reg = &self.registry;
        let url = self.url(&format!("manifests/{d}"))?;
        let sc = scopes([repo_scope(&self.repo, "pull,push,delete")]);
        let resp = reg.send(Req::new(Method::DELETE, url.clone(), sc)).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => {
                tracing::debug!(registry = %reg.host, digest = %d, "manifest already gone");
                Ok(())
            }
            s if s.is_success() => Ok(()),
            _ => Err(reg.status_error(&Method::DELETE, &url, resp).await),
        }
    }
}
