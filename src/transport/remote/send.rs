//! Every request to a registry: read-only refusal, authentication,
//! concurrency and rate limits, retries, counting; and the errors made from
//! failed requests and unexpected responses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::{self, Challenge, Scopes};
use super::limits::OverBudget;
use super::pace::RateFloor;
use super::{MAX_ERROR_BODY, Registry, RequestEvent, error_chain, header_str, scope_covered, wire};
use crate::oci::ByteStream;
use crate::secret::Secret;
use crate::transport::retry;
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
    /// Notified once a streamed body has been handed over whole: the head
    /// deadline starts then (an upload's head comes after its body).
    body_sent: Option<Arc<tokio::sync::Notify>>,
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
            body_sent: None,
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
        let done = Arc::new(tokio::sync::Notify::new());
        if len == 0 {
            done.notify_one();
        }
        let (d, mut sent) = (done.clone(), 0u64);
        let s = s.inspect(move |item| {
            if let Ok(b) = item {
                sent += b.len() as u64;
                if sent >= len && !b.is_empty() {
                    d.notify_one();
                }
            }
        });
        self.body_sent = Some(done);
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
    /// (learning the scheme from a 401 and retrying once), waits for the
    /// host's limits, and retries with the one policy: a replayable
    /// idempotent request on any transient failure (5xx, 429, reset,
    /// timeout), any replayable request on a 429/503 refusal. A streamed
    /// body cannot be sent again; its caller retries (the copier).
    /// Returns any other response; the caller judges it. When the attempts
    /// are spent on a failure that would be retried, the error is
    /// [`TransportError::GaveUp`]: permanent, so no layer above retries it.
    pub(super) async fn send(&self, req: Req) -> Result<reqwest::Response> {
        self.send_within(req, &mut retry::Budget::new()).await
    }

    /// [`Registry::send`] within an attempt budget shared with the caller
    /// (a blob read: its first GET, the retries of that GET and the GETs
    /// that resume its body all count against one budget).
    pub(super) async fn send_within(
        &self,
        mut req: Req,
        budget: &mut retry::Budget,
    ) -> Result<reqwest::Response> {
        if self.read_only && !matches!(req.method, Method::GET | Method::HEAD) {
            return Err(TransportError::ReadOnly {
                registry: self.host.clone(),
                method: req.method.to_string(),
                path: wire::display_path(&req.url),
            });
        }
        if !req.replayable() {
            self.ensure_challenge().await?;
        }
        loop {
            let outcome = self.attempt(&mut req).await;
            let retry = req.replayable()
                && match &outcome {
                    // refused before it was processed: safe to send again
                    // whatever the method (a POST opens no session then)
                    Ok(resp) if refused(resp.status()) => true,
                    Ok(resp) => req.idempotent && transient_status(resp.status()),
                    Err(e) => req.idempotent && e.is_transient(),
                };
            if !retry {
                return outcome;
            }
            let Some(delay) = budget.next_delay() else {
                let last = match outcome {
                    Ok(resp) => self.status_error(&req.method, &req.url, resp).await,
                    Err(e) => e,
                };
                tracing::warn!(registry = %self.host, method = %req.method, path = %wire::display_path(&req.url),
                    attempts = budget.attempts(), error = %last, "giving up");
                return Err(TransportError::GaveUp {
                    attempts: budget.attempts(),
                    last: Box::new(last),
                });
            };
            let why = match &outcome {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(registry = %self.host, method = %req.method, path = %wire::display_path(&req.url),
                why, delay_ms = delay.as_millis() as u64, "retrying");
            self.stats.lock().expect("stats poisoned").retries += 1;
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }

    /// One try, plus one more when a 401 taught a new challenge or scope.
    async fn attempt(&self, req: &mut Req) -> Result<reqwest::Response> {
        let mut auth_retried = false;
        loop {
            let authz = self.authorization(&req.scopes).await?;
            let rb = self.builder(req, authz.as_ref())?;
            let resp = self.dispatch(req, rb).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let retry = self.learn_challenge(req, &resp, authz.as_ref()).await?;
            if retry && !auth_retried && req.replayable() {
                auth_retried = true;
                continue;
            }
            return Err(self.status_error(&req.method, &req.url, resp).await);
        }
    }

    fn builder(&self, req: &mut Req, authz: Option<&Secret>) -> Result<reqwest::RequestBuilder> {
        let mut rb = self
            .client
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(a) = authz {
            let mut v = HeaderValue::from_str(a.expose()).map_err(|_| TransportError::Auth {
                registry: self.host.clone(),
                scope: auth::scope_key(&req.scopes),
                detail: "credentials contain characters not allowed in a header".into(),
            })?;
            v.set_sensitive(true);
            rb = rb.header(header::AUTHORIZATION, v);
        }
        Ok(match &mut req.body {
            ReqBody::Empty => rb,
            ReqBody::Bytes(b) => rb.body(b.clone()),
            ReqBody::Stream(s, len) => match s.take() {
                Some(body) => rb.header(header::CONTENT_LENGTH, *len).body(body),
                None => {
                    return Err(self.protocol(&req.url, "upload body cannot be sent twice"));
                }
            },
        })
    }

    /// Sends through the host's limits and counts the request.
    async fn dispatch(&self, req: &Req, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let manifest_get = req.method == Method::GET && req.url.path().contains("/manifests/");
        let permit = self
            .limits
            .admit(manifest_get)
            .await
            .map_err(|o| self.over_budget(&o))?;
        let started = Instant::now();
        let head_deadline = async {
            if let Some(sent) = &req.body_sent {
                sent.notified().await;
            }
            tokio::time::sleep(self.head_deadline).await;
        };
        let result = tokio::select! {
            r = rb.send() => r,
            () = head_deadline => {
                drop(permit);
                self.record(&req.method, None, started.elapsed());
                let err = TransportError::Timeout {
                    registry: self.host.clone(),
                    detail: format!(
                        "{} {}: no complete response head within {} s (2 x read_timeout)",
                        req.method,
                        req.url.path(),
                        self.head_deadline.as_secs_f64()
                    ),
                };
                tracing::debug!(registry = %self.host, method = %req.method, path = %wire::display_path(&req.url), "request failed: {err}");
                return Err(err);
            }
        };
        // Held until the response head (an upload's body has been sent by
        // then), not while a downloaded body streams: a copy between two
        // repositories of one registry holds a GET body open while its
        // PUT needs a permit, which would deadlock at the limit.
        drop(permit);
        let took = started.elapsed();
        self.record(&req.method, result.as_ref().ok(), took);
        let resp = result.map_err(|e| {
            let err = self.connect_error(&req.method, &req.url, e);
            tracing::debug!(registry = %self.host, method = %req.method, path = %wire::display_path(&req.url), "request failed: {err}");
            err
        })?;
        self.limits.observe(resp.status(), resp.headers());
        tracing::debug!(registry = %self.host, method = %req.method, path = %wire::display_path(&req.url),
            status = resp.status().as_u16(), ms = took.as_millis() as u64, "request");
        Ok(resp)
    }

    fn over_budget(&self, o: &OverBudget) -> TransportError {
        let what = if o.manifests_only {
            "RateLimit-Remaining reached ratelimit_min; manifest GETs are paused"
        } else {
            "the registry asked (Retry-After) for a pause"
        };
        TransportError::Budget {
            registry: self.host.clone(),
            detail: format!("{what} for {} s more", o.wait.as_secs()),
        }
    }

    /// Learns the scheme and scopes a 401 asks for; whether to try again.
    async fn learn_challenge(
        &self,
        req: &mut Req,
        resp: &reqwest::Response,
        authz: Option<&Secret>,
    ) -> Result<bool> {
        let challenge = auth::parse_challenges(
            resp.headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let sent_bearer = authz.is_some_and(|a| a.expose().starts_with("Bearer "));
        let retry = match &challenge {
            None => false,
            Some(Challenge::Basic) => authz.is_none() && !self.credentials().await?.is_anonymous(),
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
        Ok(retry)
    }

    pub(super) fn connect_error(
        &self,
        method: &Method,
        url: &Url,
        e: reqwest::Error,
    ) -> TransportError {
        let timeout = e.is_timeout();
        let refused_redirect = redirect_refusal(&e);
        // the path is named below; the full URL may carry long upload state
        let e = e.without_url();
        let chain = error_chain(&e);
        let lower = chain.to_ascii_lowercase();
        let tls = lower.contains("certificate")
            || lower.contains("unknownissuer")
            || lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("wrong version number");
        let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
            format!(
                " (certificate verify failed: {})",
                self.hints.certificate(&self.host)
            )
        } else if lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("wrong version number")
        {
            format!(
                " (does it speak plain HTTP? {})",
                self.hints.plain_http(&self.host)
            )
        } else if lower.contains("connection refused") {
            " (connection refused)".to_string()
        } else if timeout {
            " (timed out)".to_string()
        } else {
            String::new()
        };
        let registry = self.host.clone();
        if let Some(why) = refused_redirect {
            // the same request meets the same redirect: not worth a retry
            return TransportError::Protocol {
                location: format!("{registry}{}", url.path()),
                detail: format!("{method}: {why}: {chain}"),
            };
        }
        let detail = format!("{method} {}: {chain}{hint}", url.path());
        if tls {
            // the same handshake fails the same way: not worth a retry
            TransportError::Tls { registry, detail }
        } else if timeout {
            TransportError::Timeout { registry, detail }
        } else {
            TransportError::Connect { registry, detail }
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
        let mut floor = RateFloor::new(self.min_rate, resp.content_length());
        let mut out = bytes::BytesMut::new();
        let mut stream = resp.bytes_stream();
        loop {
            let item = floor
                .next(&mut stream)
                .await
                .map_err(|slow| TransportError::Timeout {
                    registry: self.host.clone(),
                    detail: format!("{method} {}: {slow}", url.path()),
                })?;
            let Some(chunk) = item else { break };
            let chunk = chunk.map_err(|e| self.connect_error(method, url, e))?;
            if out.len() + chunk.len() > limit {
                return Err(self.protocol(url, format!("response larger than {limit} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// 429 and 503: the registry declined the request without acting on it.
fn refused(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE
}

/// Whether a response says "try again later".
fn transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

/// How fast error and token bodies must arrive; what came by the end of a
/// window that missed it is all that is read.
const SMALL_BODY_RATE: u64 = 10 * 1024;

/// Up to `limit` bytes of a body (error messages, tokens), at
/// `SMALL_BODY_RATE` or faster: a trickled answer is cut short.
pub(super) async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, reqwest::Error> {
    let len = resp.content_length().map(|l| l.min(limit as u64));
    let mut floor = RateFloor::new(SMALL_BODY_RATE, len);
    let mut out = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(chunk)) = floor.next(&mut stream).await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out.freeze())
}

/// Why a request failed in a way that no retry changes: a redirect loop or
/// too many redirects, or a redirect reqwest cannot follow (a scheme other
/// than http and https, a `Location` that is not a URL).
fn redirect_refusal(e: &reqwest::Error) -> Option<&'static str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(r) = x.downcast_ref::<reqwest::Error>() {
            if r.is_redirect() {
                return Some("redirected in a loop or more than 10 times");
            }
            if r.is_builder() {
                return Some(
                    "redirected to a URL that cannot be followed (only http and https are)",
                );
            }
        }
        cur = x.source();
    }
    None
}
