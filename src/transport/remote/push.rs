//! Blob uploads: sessions, chunks, checkpointed resumes, mounts.

use std::path::PathBuf;

use bytes::Bytes;
use reqwest::header;
use reqwest::{Method, StatusCode};
use url::Url;

use super::send::Req;
use super::{
    DOCKER_CONTENT_DIGEST, RemoteRepo, UploadSession, header_str, repo_scope, scopes, upload, wire,
};
use crate::oci::{ByteStream, Digest};
use crate::reference::{Location, api_host};
use crate::transport::{Result, TransportError};

impl RemoteRepo {
    pub async fn put_blob(&self, d: &Digest, size: u64, data: ByteStream) -> Result<()> {
        let source = upload::Source::new(data);
        let mut session = self.start_upload().await?;
        match self.send_blob(&source, &mut session, d, size).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The stream's own failure (digest mismatch, source gone) is
                // the cause; the request failure is only its consequence.
                let err = self.stream_cause(&source, d, size, 0).unwrap_or(e);
                tracing::debug!(registry = %self.registry.host, digest = %d,
                    "upload failed, cancelling the session: {err}");
                self.cancel_upload(&session).await;
                Err(err)
            }
        }
    }

    /// Uploads a blob in chunks of the registry's `chunk_size`, through
    /// `resume` (a session that already holds `resume.offset` bytes; `data`
    /// then starts at that offset) or a new session. After every
    /// acknowledged chunk `on_chunk` gets the session to use next, so the
    /// caller can checkpoint it. When `stop` is cancelled, the chunk in
    /// flight is finished and the upload stops with
    /// [`TransportError::Interrupted`], leaving the session open for a later
    /// resume. A failure of the stream itself (digest mismatch) cancels the
    /// session.
    pub async fn put_blob_resumable(
        &self,
        d: &Digest,
        size: u64,
        data: ByteStream,
        resume: Option<UploadSession>,
        on_chunk: &(dyn Fn(&UploadSession) + Send + Sync),
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let source = upload::Source::new(data);
        let mut session = match resume {
            Some(s) => s,
            None => self.start_upload().await?,
        };
        let chunk = self.registry.chunk_size.max(1);
        let start = session.offset;
        let result = self
            .send_chunks(&source, &mut session, d, size, chunk, on_chunk, Some(stop))
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e @ TransportError::Interrupted { .. }) => Err(e),
            Err(e) => match self.stream_cause(&source, d, size, start) {
                Some(cause) => {
                    self.cancel_upload(&session).await;
                    Err(cause)
                }
                // A request failed: leave the session; the caller's
                // checkpoint decides (GET on it) whether it can go on.
                None => Err(e),
            },
        }
    }

    /// Sends the whole blob through `session`, keeping it at the latest
    /// Location so a failure can cancel the right one.
    pub(super) async fn send_blob(
        &self,
        source: &upload::Source,
        session: &mut UploadSession,
        d: &Digest,
        size: u64,
    ) -> Result<()> {
        let chunk = self.registry.chunk_size;
        if chunk == 0 || size <= chunk {
            return self
                .upload_whole(session.clone(), d, source.take(size), size)
                .await;
        }
        self.send_chunks(source, session, d, size, chunk, &|_| {}, None)
            .await
    }

    /// Sends `source` through `session` in chunks of `chunk` bytes from the
    /// session's offset, checking each acknowledged offset, then commits the
    /// blob. `on_chunk` sees the session after every chunk (checkpoints);
    /// when `stop` is cancelled, the chunk in flight finishes and the upload
    /// stops with [`TransportError::Interrupted`], the session left open.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_chunks(
        &self,
        source: &upload::Source,
        session: &mut UploadSession,
        d: &Digest,
        size: u64,
        chunk: u64,
        on_chunk: &(dyn Fn(&UploadSession) + Send + Sync),
        stop: Option<&tokio_util::sync::CancellationToken>,
    ) -> Result<()> {
        while session.offset < size {
            if stop.is_some_and(|s| s.is_cancelled()) {
                return Err(TransportError::Interrupted {
                    location: self.location.to_string(),
                    detail: format!(
                        "upload of blob {d} stopped at {} of {size} bytes",
                        session.offset
                    ),
                });
            }
            // Chunks end at multiples of `chunk` (where hash states are
            // saved), also after resuming at another offset.
            let n = (chunk - session.offset % chunk).min(size - session.offset);
            let expected = session.offset + n;
            *session = self
                .upload_chunk(session.clone(), source.take(n), n)
                .await?;
            if session.offset != expected {
                return Err(self.registry.protocol(
                    &session.url,
                    format!(
                        "the registry acknowledged {} bytes, {expected} were sent",
                        session.offset
                    ),
                ));
            }
            on_chunk(session);
        }
        source
            .finish()
            .await
            .map_err(|e| self.stream_error(d, std::io::Error::other(e)))?;
        self.finish_upload(session, d).await
    }

    /// When an upload failed because of its input stream (a digest mismatch
    /// the verifying wrapper reported, the source gone, or fewer bytes than
    /// announced), that is the real cause; the request failure is only its
    /// consequence. `start` is the offset the stream began at.
    pub(super) fn stream_cause(
        &self,
        source: &upload::Source,
        d: &Digest,
        size: u64,
        start: u64,
    ) -> Option<TransportError> {
        if let Some(se) = source.take_error() {
            return Some(self.stream_error(d, se));
        }
        source.ended_short(size - start).then(|| {
            self.stream_error(
                d,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the blob stream ended after {} of {size} bytes",
                        start + source.consumed()
                    ),
                ),
            )
        })
    }

    pub(super) fn stream_error(&self, d: &Digest, source: std::io::Error) -> TransportError {
        TransportError::Io {
            path: PathBuf::from(format!("{} (upload of blob {d})", self.location)),
            source,
        }
    }

    /// Opens an upload session (POST). Also obtains the push token, so the
    /// streamed requests that follow never meet a 401.
    pub async fn start_upload(&self) -> Result<UploadSession> {
        let reg = &self.registry;
        let url = self.url("blobs/uploads/")?;
        let resp = reg
            .send(Req::new(Method::POST, url.clone(), self.push()))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(reg.status_error(&Method::POST, &url, resp).await);
        }
        let mut session = self.session_from(&url, &resp, 0)?;
        session.offset = 0; // a new session holds nothing, whatever its Range says
        Ok(session)
    }

    pub(super) fn session_from(
        &self,
        base: &Url,
        resp: &reqwest::Response,
        fallback: u64,
    ) -> Result<UploadSession> {
        let reg = &self.registry;
        let loc = header_str(resp, "location")
            .ok_or_else(|| reg.protocol(base, "upload response has no Location"))?;
        let url = wire::resolve_location(base, loc)
            .ok_or_else(|| reg.protocol(base, "upload Location is not a URL"))?;
        // `Range: 0-<last>` says how much the registry holds.
        let offset = header_str(resp, "range")
            .and_then(|r| r.trim().trim_start_matches("bytes=").split_once('-'))
            .and_then(|(_, last)| last.parse::<u64>().ok())
            // distribution reports an empty session as `0-0` too (ambiguous
            // with one byte; chunks are never one byte long)
            .map(|last| if last == 0 { 0 } else { last + 1 })
            .unwrap_or(fallback);
        Ok(UploadSession { url, offset })
    }

    /// Where a session stands (GET on its URL); `None` when the registry no
    /// longer knows it (restart the blob with a new session then).
    pub async fn upload_status(&self, s: &UploadSession) -> Result<Option<UploadSession>> {
        let reg = &self.registry;
        let resp = reg
            .send(Req::new(Method::GET, s.url.clone(), self.push()))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::NO_CONTENT | StatusCode::OK => {
                let mut next = self.session_from(&s.url, &resp, 0)?;
                if header_str(&resp, "range").is_none() {
                    next.offset = 0;
                }
                Ok(Some(next))
            }
            _ => Err(reg.status_error(&Method::GET, &s.url, resp).await),
        }
    }

    /// Sends `len` bytes of `body` as one PATCH; returns the session to use next.
    pub async fn upload_chunk(
        &self,
        s: UploadSession,
        body: ByteStream,
        len: u64,
    ) -> Result<UploadSession> {
        let reg = &self.registry;
        let end = (s.offset + len).saturating_sub(1);
        let resp = reg
            .send(
                Req::new(Method::PATCH, s.url.clone(), self.push())
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_RANGE, &format!("{}-{end}", s.offset))
                    .stream(body, len),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(reg.status_error(&Method::PATCH, &s.url, resp).await);
        }
        self.session_from(&s.url, &resp, s.offset + len)
    }

    /// Commits the session as blob `d` (PUT `?digest=`, empty body).
    pub async fn finish_upload(&self, s: &UploadSession, d: &Digest) -> Result<()> {
        let reg = &self.registry;
        let url = wire::with_query(&s.url, "digest", d.as_str());
        let mut req = Req::new(Method::PUT, url.clone(), self.push())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .bytes(Bytes::new());
        // the session URL is single-use state: a retried PUT would meet a stale _state
        req.idempotent = false;
        let resp = reg.send(req).await?;
        self.expect_created(&url, resp, d).await
    }

    pub(super) async fn upload_whole(
        &self,
        s: UploadSession,
        d: &Digest,
        body: ByteStream,
        size: u64,
    ) -> Result<()> {
        let url = wire::with_query(&s.url, "digest", d.as_str());
        let resp = self
            .registry
            .send(
                Req::new(Method::PUT, url.clone(), self.push())
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .stream(body, size),
            )
            .await?;
        self.expect_created(&url, resp, d).await
    }

    pub(super) async fn expect_created(
        &self,
        url: &Url,
        resp: reqwest::Response,
        d: &Digest,
    ) -> Result<()> {
        if resp.status() != StatusCode::CREATED {
            return Err(self.registry.status_error(&Method::PUT, url, resp).await);
        }
        if let Some(got) = header_str(&resp, DOCKER_CONTENT_DIGEST) {
            if got.starts_with("sha256:") && got != d.as_str() {
                return Err(
                    self.integrity(format!("blob {d}"), format!("the registry stored {got}"))
                );
            }
        }
        Ok(())
    }

    /// Cancels an upload session, best effort (the registry purges forgotten
    /// sessions itself eventually).
    pub async fn cancel_upload(&self, s: &UploadSession) {
        // distribution wants `delete` for DELETE on a session; same scope set
        // as delete_manifest, so the token is shared
        let sc = scopes([repo_scope(&self.repo, "pull,push,delete")]);
        let req = Req::new(Method::DELETE, s.url.clone(), sc);
        match self.registry.send(req).await {
            Ok(r) => {
                tracing::debug!(registry = %self.registry.host, status = r.status().as_u16(), "upload session cancelled")
            }
            Err(e) => {
                tracing::debug!(registry = %self.registry.host, "cancelling an upload session failed: {e}")
            }
        }
    }

    pub async fn mount_blob(&self, d: &Digest, from: &Location) -> Result<bool> {
        let Location::Registry {
            host,
            repo: from_repo,
        } = from
        else {
            return Ok(false);
        };
        if api_host(host) != api_host(&self.registry.host) || *from_repo == self.repo {
            return Ok(false);
        }
        let reg = &self.registry;
        let mut url = self.url("blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", d.as_str())
            .append_pair("from", from_repo);
        let sc = scopes([
            repo_scope(&self.repo, "pull,push"),
            repo_scope(from_repo, "pull"),
        ]);
        let resp = match reg.send(Req::new(Method::POST, url.clone(), sc)).await {
            Ok(r) => r,
            Err(e) if e.is_transient() || matches!(e, TransportError::ReadOnly { .. }) => {
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(registry = %reg.host, digest = %d, "mount not possible: {e}");
                return Ok(false);
            }
        };
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // Not mounted: the registry opened an ordinary upload session instead.
                if let Ok(s) = self.session_from(&url, &resp, 0) {
                    self.cancel_upload(&s).await;
                }
                Ok(false)
            }
            _ => {
                let err = reg.status_error(&Method::POST, &url, resp).await;
                if err.is_transient() {
                    return Err(err);
                }
                tracing::debug!(registry = %reg.host, digest = %d, "mount refused: {err}");
                Ok(false)
            }
        }
    }
}
