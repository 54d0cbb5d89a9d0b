//! Every request to a registry: read-only refusal, authentication,
//! concurrency and rate limits, retries, counting; and the errors made from
//! failed requests and unexpected responses.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{self, Challenge, Scopes};
use super::{
    MAX_ATTEMPTS, MAX_ERROR_BODY, MAX_RETRY_AFTER, Registry, RequestEvent, error_chain, header_str,
    scope_covered, wire,
};
use crate::oci::ByteStream;
use crate::transport::{Result, TransportError};

/// A request body: bytes can be sent again (retries, auth), a stream only once.
pub(super) enum ReqBody {
    Empty,
    Bytes(Bytes),
    Stream(Option<reqwest::Body>, u64),
}

pub(super) struct Req {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) scopes: Scopes,
    pub(super) headers: HeaderMap,
    pub(super) body: ReqBody,
    /// Whether 5xx, 429 and connection errors may be retried.
    pub(super) idempotent: bool,
}

impl Req {
    pub(super) fn new(method: Method, url: Url, scopes: Scopes) -> Self {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE
        );
        Req {
            method,
            url,
            scopes,
            headers: HeaderMap::new(),
            body: ReqBody::Empty,
            idempotent,
        }
    }
    pub(super) fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
    pub(super) fn bytes(mut self, b: Bytes) -> Self {
        self.body = ReqBody::Bytes(b);
        self
    }
    pub(super) fn stream(mut self, s: ByteStream, len: u64) -> Self {
        self.body = ReqBody::Stream(Some(reqwest::Body::wrap_stream(s)), len);
        self.idempotent = false;
        self
    }
    pub(super) fn replayable(&self) -> bool {
        !matches!(self.body, ReqBody::Stream(..))
    }
}

impl Registry {
    pub(super) fn record(&self, method: &Method, resp: Option<&reqwest::Response>, took: Duration) {
        let status = resp.map(|r| r.status().as_u16());
        {
            let mut st = self.stats.lock().expect("stats poisoned");
            *st.requests
                .entry((method.as_str().to_string(), status.unwrap_or(0)))
                .or_default() += 1;
            if status == Some(429) {
                st.throttled += 1;
            }
            if let Some(rem) = resp
                .and_then(|r| header_str(r, "ratelimit-remaining"))
                .and_then(wire::rate_limit_remaining)
            {
                st.rate_limit_remaining = Some(rem);
            }
        }
        if let Some(obs) = self.observer.get() {
            obs(&RequestEvent {
                registry: &self.host,
                method: method.as_str(),
                status,
                duration: took,
            });
        }
    }

    /// Sends one request: refuses writes in read-only mode, authenticates
    /// (learning the scheme from a 401 and retrying once), limits concurrency
    /// and rate, retries idempotent requests on 5xx/429/connection errors.
    /// Returns any response that is not one of those; the caller judges it.
    pub(super) async fn send(&self, mut req: Req) -> Result<reqwest::Response> {
        let path = wire::display_path(&req.url);
        if self.read_only && !matches!(req.method, Method::GET | Method::HEAD) {
            return Err(TransportError::ReadOnly {
                registry: self.host.clone(),
                method: req.method.to_string(),
                path,
            });
        }
        if !req.replayable() {
            self.ensure_challenge().await?;
        }
        let mut attempt: u32 = 0;
        let mut auth_retried = false;
        loop {
            attempt += 1;
            let authz = self.authorization(&req.scopes).await?;
            let mut rb = self
                .client
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(a) = &authz {
                let mut v =
                    HeaderValue::from_str(a.expose()).map_err(|_| TransportError::Auth {
                        registry: self.host.clone(),
                        scope: auth::scope_key(&req.scopes),
                        detail: "credentials contain characters not allowed in a header".into(),
                    })?;
                v.set_sensitive(true);
                rb = rb.header(header::AUTHORIZATION, v);
            }
            rb = match &mut req.body {
                ReqBody::Empty => rb,
                ReqBody::Bytes(b) => rb.body(b.clone()),
                ReqBody::Stream(s, len) => match s.take() {
                    Some(body) => rb.header(header::CONTENT_LENGTH, *len).body(body),
                    None => {
                        return Err(self.protocol(&req.url, "upload body cannot be sent twice"));
                    }
                },
            };
            if let Some(p) = &self.pacer {
                p.wait().await;
            }
            let permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            let started = Instant::now();
            let result = rb.send().await;
            // Held until the response head (an upload's body has been sent by
            // then), not while a downloaded body streams: a copy between two
            // repositories of one registry holds a GET body open while its
            // PUT needs a permit, which would deadlock at the limit.
            drop(permit);
            let took = started.elapsed();
            self.record(&req.method, result.as_ref().ok(), took);
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    let err = self.connect_error(&req.method, &req.url, e);
                    let tls = matches!(&err, TransportError::Connect { detail, .. } if detail.contains("certificate"));
                    tracing::debug!(registry = %self.host, method = %req.method, path, attempt, "request failed: {err}");
                    if req.idempotent && !tls && attempt < MAX_ATTEMPTS {
                        self.backoff(attempt, None).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            tracing::debug!(registry = %self.host, method = %req.method, path, status = status.as_u16(),
                ms = took.as_millis() as u64, "request");
            if status == StatusCode::UNAUTHORIZED {
                let challenge = auth::parse_challenges(
                    resp.headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                let sent_bearer = authz
                    .as_ref()
                    .is_some_and(|a| a.expose().starts_with("Bearer "));
                let retry = match &challenge {
                    None => false,
                    Some(Challenge::Basic) => {
                        authz.is_none() && !self.credentials().await?.is_anonymous()
                    }
                    // no token yet, a stale one, or Basic sent where Bearer is wanted
                    Some(Challenge::Bearer { .. }) => true,
                };
                if let Some(ch) = challenge {
                    if let Challenge::Bearer {
                        scope: Some(wanted),
                        ..
                    } = &ch
                    {
                        // The registry names the scope it wants; ask for it too.
                        for s in wanted.split(' ').filter(|s| !s.is_empty()) {
                            if !scope_covered(&req.scopes, s) {
                                req.scopes.insert(s.to_string());
                            }
                        }
                    }
                    let learned = match ch {
                        Challenge::Bearer { realm, service, .. } => Challenge::Bearer {
                            realm,
                            service,
                            scope: None,
                        },
                        b => b,
                    };
                    *self.challenge.write().expect("challenge poisoned") = Some(learned);
                }
                if sent_bearer {
                    self.tokens.invalidate(&auth::scope_key(&req.scopes));
                }
                if retry && !auth_retried && req.replayable() {
                    auth_retried = true;
                    attempt -= 1;
                    continue;
                }
                return Err(self.status_error(&req.method, &req.url, resp).await);
            }
            let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if transient && req.idempotent && attempt < MAX_ATTEMPTS {
                let after = wire::retry_after(header_str(&resp, "retry-after"));
                if after.is_none_or(|d| d <= MAX_RETRY_AFTER) {
                    tracing::debug!(registry = %self.host, method = %req.method, path, status = status.as_u16(), attempt, "retrying");
                    self.stats.lock().expect("stats poisoned").retries += 1;
                    self.backoff(attempt, after).await;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    pub(super) async fn backoff(&self, attempt: u32, retry_after: Option<Duration>) {
        let d = retry_after.unwrap_or_else(|| {
            let base = Duration::from_millis(250) * 2u32.pow(attempt.saturating_sub(1).min(5));
            // a little jitter so parallel retries do not arrive together
            let jitter = Duration::from_millis(u64::from(
                Instant::now().elapsed().subsec_nanos() % 100 + (attempt * 37 % 50),
            ));
            (base + jitter).min(Duration::from_secs(8))
        });
        tokio::time::sleep(d).await;
    }

    pub(super) fn connect_error(
        &self,
        method: &Method,
        url: &Url,
        e: reqwest::Error,
    ) -> TransportError {
        let timeout = e.is_timeout();
        // the path is named below; the full URL may carry long upload state
        let e = e.without_url();
        let chain = error_chain(&e);
        let lower = chain.to_ascii_lowercase();
        let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
            format!(
                " (certificate verify failed: set ca_file for [registries.\"{}\"], or insecure_skip_verify = true)",
                self.host
            )
        } else if lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("wrong version number")
        {
            format!(
                " (does it speak plain HTTP? then set plain_http = true for [registries.\"{}\"])",
                self.host
            )
        } else if lower.contains("connection refused") {
            " (connection refused)".to_string()
        } else if timeout {
            " (timed out)".to_string()
        } else {
            String::new()
        };
        TransportError::Connect {
            registry: self.host.clone(),
            detail: format!("{method} {}: {chain}{hint}", url.path()),
        }
    }

    /// The error for a response that is not what the operation expected.
    pub(super) async fn status_error(
        &self,
        method: &Method,
        url: &Url,
        resp: reqwest::Response,
    ) -> TransportError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let summary = wire::error_summary(&body);
        let message = if summary.is_empty() {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .to_string()
        } else {
            summary
        };
        if status == 401 || status == 403 {
            return TransportError::Auth {
                registry: self.host.clone(),
                scope: format!("{method} {}", url.path()),
                detail: format!("answered {status} ({message}); {}", self.hint()),
            };
        }
        TransportError::Status {
            registry: self.host.clone(),
            method: method.to_string(),
            path: url.path().to_string(),
            status,
            message,
        }
    }

    pub(super) async fn read_body(
        &self,
        method: &Method,
        url: &Url,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Bytes> {
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(self.protocol(url, format!("response larger than {limit} bytes")));
        }
        let mut out = bytes::BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.connect_error(method, url, e))?;
            if out.len() + chunk.len() > limit {
                return Err(self.protocol(url, format!("response larger than {limit} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

pub(super) async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, reqwest::Error> {
    let mut out = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out.freeze())
}
