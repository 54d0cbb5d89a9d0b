//! A repository in a registry, over HTTP(S).
//!
//! One thin layer over one `reqwest::Client` per registry host: it owns the
//! token cache, the concurrency and rate limits, retries and request
//! counting, so every request to a registry goes through [`Registry::send`].
//!
//! TLS: verification is on unless `insecure_skip_verify` is set. reqwest 0.13
//! with `rustls-no-provider` verifies with `rustls-platform-verifier` (the
//! system's roots); `ca_file` certificates are added to those roots
//! (`tls_certs_merge`), not put in their place.
//!
//! Redirects are followed (blob GETs are commonly redirected to object
//! storage). reqwest drops `Authorization` (and cookies) when a redirect goes
//! to another host, port or scheme (`redirect::remove_sensitive_headers` in
//! reqwest 0.13.5), so registry tokens never reach the storage host.

mod auth;
mod upload;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;
use url::Url;

use self::auth::{Challenge, Credentials, Scopes, TokenCache};
use super::{ManifestHead, RegistryOptions, Result, TransportError};
use crate::oci::{ByteStream, Digest, MANIFEST_ACCEPT, RawManifest};
use crate::reference::{Location, api_host};
use crate::secret::Secret;

/// Manifests larger than this are refused (registries cap them at 4 MiB too).
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Error bodies are read up to this size for their message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Attempts of one idempotent request (first try included).
const MAX_ATTEMPTS: u32 = 4;
/// A `Retry-After` longer than this is not waited for inside one request: the
/// error goes up and the rule's next run tries again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// One request as seen by an observer (metrics).
#[derive(Clone, Debug)]
pub struct RequestEvent<'a> {
    pub registry: &'a str,
    pub method: &'a str,
    /// `None` when no response came (connection or TLS failure).
    pub status: Option<u16>,
    pub duration: Duration,
}

pub type Observer = Arc<dyn Fn(&RequestEvent<'_>) + Send + Sync>;

/// Counters of one registry since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegistryStats {
    /// Requests by (method, status code); code 0 = no response.
    pub requests: BTreeMap<(String, u16), u64>,
    /// Responses with status 429.
    pub throttled: u64,
    /// Requests tried again (after 5xx, 429 or a connection error).
    pub retries: u64,
    /// The last `RateLimit-Remaining` value the registry sent.
    pub rate_limit_remaining: Option<u64>,
}

/// An open upload session: where to send the next bytes and how many the
/// registry has. Persisting both allows resuming after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    pub url: Url,
    pub offset: u64,
}

/// A request body: bytes can be sent again (retries, auth), a stream only once.
enum ReqBody {
    Empty,
    Bytes(Bytes),
    Stream(Option<reqwest::Body>, u64),
}

struct Req {
    method: Method,
    url: Url,
    scopes: Scopes,
    headers: HeaderMap,
    body: ReqBody,
    /// Whether 5xx, 429 and connection errors may be retried.
    idempotent: bool,
}

impl Req {
    fn new(method: Method, url: Url, scopes: Scopes) -> Self {
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
    fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
    fn bytes(mut self, b: Bytes) -> Self {
        self.body = ReqBody::Bytes(b);
        self
    }
    fn stream(mut self, s: ByteStream, len: u64) -> Self {
        self.body = ReqBody::Stream(Some(reqwest::Body::wrap_stream(s)), len);
        self.idempotent = false;
        self
    }
    fn replayable(&self) -> bool {
        !matches!(self.body, ReqBody::Stream(..))
    }
}

/// One registry host: client, credentials, tokens, limits, counters.
pub struct Registry {
    host: String,
    base: Url,
    client: reqwest::Client,
    read_only: bool,
    explicit: Option<Credentials>,
    docker_config: Option<(PathBuf, bool)>,
    credentials: tokio::sync::OnceCell<Credentials>,
    /// The scheme the registry asked for, learned from its first 401, so
    /// later requests authenticate up front without a probe.
    challenge: RwLock<Option<Challenge>>,
    /// `GET /v2/` was asked once (a registry without auth teaches no challenge).
    probed: AtomicBool,
    tokens: TokenCache,
    token_fetch: tokio::sync::Mutex<()>,
    permits: Arc<Semaphore>,
    pacer: Option<wire::Pacer>,
    chunk_size: u64,
    stats: Mutex<RegistryStats>,
    observer: OnceLock<Observer>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("base", &self.base.as_str())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn repo_scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

fn scopes<const N: usize>(items: [String; N]) -> Scopes {
    items.into_iter().collect()
}

/// Whether `wanted` (one scope from a challenge) is already granted by `have`.
fn scope_covered(have: &Scopes, wanted: &str) -> bool {
    let Some((resource, actions)) = wanted.rsplit_once(':') else {
        return true;
    };
    have.iter().any(|h| {
        h.rsplit_once(':').is_some_and(|(r, a)| {
            r == resource && {
                let granted: Vec<&str> = a.split(',').collect();
                actions.split(',').all(|x| granted.contains(&x))
            }
        })
    })
}

fn is_manifest_type(media_type: &str) -> bool {
    use crate::oci::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type)
}

fn strip_params(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The causes of an error, joined (reqwest's own message is only the top).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl Registry {
    pub fn new(host: &str, opts: &RegistryOptions, read_only: bool) -> Result<Self> {
        // reqwest is built without a crypto provider; ring is the one linked in.
        // Installing twice fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scheme = if opts.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", api_host(host))).map_err(|e| {
            TransportError::Protocol {
                location: host.to_string(),
                detail: format!("not a usable registry host: {e}"),
            }
        })?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("regkeeper/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // per read, not per request: a stalled connection fails, a long blob does not
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10));
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(|source| TransportError::Io {
                path: ca.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                TransportError::Protocol {
                    location: ca.display().to_string(),
                    detail: format!("ca_file for [registries.\"{host}\"] is not PEM: {e}"),
                }
            })?;
            if certs.is_empty() {
                return Err(TransportError::Protocol {
                    location: ca.display().to_string(),
                    detail: format!("ca_file for [registries.\"{host}\"] holds no certificate"),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        if opts.insecure_skip_verify {
            tracing::warn!(registry = host, "TLS certificate verification is off");
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder.build().map_err(|e| TransportError::Connect {
            registry: host.to_string(),
            detail: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })?;
        let explicit = match (&opts.username, &opts.password) {
            (Some(u), Some(p)) => Some(Credentials::Basic {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        };
        let docker_config = match &opts.docker_config {
            Some(p) => Some((p.clone(), true)),
            None => auth::default_docker_config().map(|p| (p, false)),
        };
        Ok(Registry {
            host: host.to_string(),
            base,
            client,
            read_only,
            explicit,
            docker_config,
            credentials: tokio::sync::OnceCell::new(),
            challenge: RwLock::new(None),
            probed: AtomicBool::new(false),
            tokens: TokenCache::default(),
            token_fetch: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            pacer: opts.requests_per_second.and_then(wire::Pacer::new),
            chunk_size: opts.chunk_size,
            stats: Mutex::new(RegistryStats::default()),
            observer: OnceLock::new(),
        })
    }

    /// The host as written in references (the `[registries]` key).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A snapshot of this registry's request counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats.lock().expect("stats poisoned").clone()
    }

    /// Upload chunk size in bytes; 0 = monolithic uploads.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Calls `f` after every request (for metrics histograms). Set once; later
    /// calls are ignored.
    pub fn set_observer(&self, f: Observer) {
        let _ = self.observer.set(f);
    }

    /// Repositories under `prefix` (catalog API, paginated), relative to it.
    pub async fn list_repositories(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_matches('/');
        let mut url = self.url("/v2/_catalog?n=1000")?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            if !seen.insert(url.clone()) {
                break; // a registry that links a page to itself
            }
            let sc = scopes(["registry:catalog:*".to_string()]);
            let resp = self.send(Req::new(Method::GET, url.clone(), sc)).await?;
            if !resp.status().is_success() {
                return Err(self.status_error(&Method::GET, &url, resp).await);
            }
            let next = wire::next_link(
                resp.headers()
                    .get_all(header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                &url,
            );
            #[derive(serde::Deserialize)]
            struct Catalog {
                #[serde(default)]
                repositories: Option<Vec<String>>,
            }
            let body = self
                .read_body(&Method::GET, &url, resp, MAX_MANIFEST)
                .await?;
            let page: Catalog =
                serde_json::from_slice(&body).map_err(|e| self.protocol(&url, e))?;
            for r in page.repositories.unwrap_or_default() {
                if prefix.is_empty() {
                    out.push(r);
                } else if let Some(rel) = r.strip_prefix(prefix).and_then(|s| s.strip_prefix('/')) {
                    if !rel.is_empty() {
                        out.push(rel.to_string());
                    }
                }
            }
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn url(&self, path_and_query: &str) -> Result<Url> {
        self.base
            .join(path_and_query)
            .map_err(|e| TransportError::Protocol {
                location: format!("{}{}", self.host, path_and_query),
                detail: format!("cannot form a URL: {e}"),
            })
    }

    fn protocol(&self, url: &Url, e: impl std::fmt::Display) -> TransportError {
        TransportError::Protocol {
            location: format!("{}{}", self.host, url.path()),
            detail: e.to_string(),
        }
    }

    fn hint(&self) -> String {
        format!(
            "check username/password_file for [registries.\"{}\"]",
            self.host
        )
    }

    async fn credentials(&self) -> Result<&Credentials> {
        self.credentials
            .get_or_try_init(|| async {
                if let Some(c) = &self.explicit {
                    return Ok(c.clone());
                }
                let Some((path, configured)) = self.docker_config.clone() else {
                    return Ok(Credentials::Anonymous);
                };
                let host = self.host.clone();
                let p = path.clone();
                let found = tokio::task::spawn_blocking(move || auth::from_docker_config(&p, &host))
                    .await
                    .map_err(|e| TransportError::Auth {
                        registry: self.host.clone(),
                        scope: "credentials".into(),
                        detail: format!("reading the docker config failed: {e}"),
                    })?;
                match found {
                    Ok(Some(c)) => {
                        tracing::debug!(registry = %self.host, config = %path.display(), "using credentials from docker config");
                        Ok(c)
                    }
                    Ok(None) => Ok(Credentials::Anonymous),
                    Err(detail) if configured => Err(TransportError::Auth {
                        registry: self.host.clone(),
                        scope: "credentials".into(),
                        detail: format!("docker_config: {detail}"),
                    }),
                    Err(detail) => {
                        tracing::warn!(registry = %self.host, "ignoring docker config: {detail}");
                        Ok(Credentials::Anonymous)
                    }
                }
            })
            .await
    }

    /// The `Authorization` value for a request needing `scopes`, as far as the
    /// registry's scheme is known; `None` = send without.
    async fn authorization(&self, scopes: &Scopes) -> Result<Option<Secret>> {
        let challenge = self.challenge.read().expect("challenge poisoned").clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials().await?.basic_header()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = auth::scope_key(scopes);
                if let Some(t) = self.tokens.get(&key) {
                    return Ok(Some(Secret::new(format!("Bearer {}", t.expose()))));
                }
                // One token fetch at a time: concurrent requests for the same
                // scopes wait and then find the token cached.
                let _guard = self.token_fetch.lock().await;
                if let Some(t) = self.tokens.get(&key) {
                    return Ok(Some(Secret::new(format!("Bearer {}", t.expose()))));
                }
                let (token, ttl) = self.fetch_token(&realm, service.as_deref(), scopes).await?;
                self.tokens.put(key, token.clone(), ttl);
                Ok(Some(Secret::new(format!("Bearer {}", token.expose()))))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &Scopes,
    ) -> Result<(Secret, Duration)> {
        let scope_text = auth::scope_key(scopes);
        let auth_err = |detail: String| TransportError::Auth {
            registry: self.host.clone(),
            scope: scope_text.clone(),
            detail,
        };
        let mut realm_url = Url::parse(realm)
            .map_err(|e| auth_err(format!("token realm {realm:?} is not a URL: {e}")))?;
        let creds = self.credentials().await?;
        let started = Instant::now();
        let request = match creds {
            Credentials::IdentityToken(refresh) => {
                // OAuth2 refresh-token grant, as docker does with an identity token.
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", "regkeeper")
                    .append_pair("refresh_token", refresh.expose())
                    .append_pair("scope", &scope_text);
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                self.client
                    .post(realm_url.clone())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            other => {
                {
                    let mut q = realm_url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                let mut rb = self.client.get(realm_url.clone());
                if let Some(b) = other.basic_header() {
                    rb = rb.header(header::AUTHORIZATION, b.expose());
                }
                rb
            }
        };
        let resp = request.send().await.map_err(|e| {
            auth_err(format!(
                "token server {} unreachable: {}",
                realm_url.host_str().unwrap_or(realm),
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        tracing::debug!(registry = %self.host, realm = %realm_url.path(), status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64, scopes = %scope_text, "token request");
        if !status.is_success() {
            let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
            let mut detail = format!(
                "token server answered {status} ({})",
                wire::error_summary(&body)
            );
            if matches!(status.as_u16(), 401 | 403) {
                detail.push_str(&format!("; {}", self.hint()));
            }
            return Err(auth_err(detail));
        }
        let body = read_limited(resp, MAX_ERROR_BODY)
            .await
            .map_err(|e| auth_err(format!("reading the token failed: {}", error_chain(&e))))?;
        serde_json::from_slice::<auth::TokenResponse>(&body)
            .ok()
            .and_then(auth::TokenResponse::into_parts)
            .ok_or_else(|| auth_err("the token server's answer holds no token".into()))
    }

    /// Learns the registry's auth scheme without sending data (before a
    /// request whose body cannot be sent twice).
    async fn ensure_challenge(&self) -> Result<()> {
        if self.probed.load(Ordering::Relaxed)
            || self.challenge.read().expect("challenge poisoned").is_some()
        {
            return Ok(());
        }
        let url = self.url("/v2/")?;
        // boxed: send() calls this function
        let resp = Box::pin(self.send(Req::new(Method::GET, url, Scopes::new()))).await?;
        let _ = resp.bytes().await;
        self.probed.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn record(&self, method: &Method, resp: Option<&reqwest::Response>, took: Duration) {
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
    async fn send(&self, mut req: Req) -> Result<reqwest::Response> {
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

    async fn backoff(&self, attempt: u32, retry_after: Option<Duration>) {
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

    fn connect_error(&self, method: &Method, url: &Url, e: reqwest::Error) -> TransportError {
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
    async fn status_error(
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

    async fn read_body(
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

async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Bytes, reqwest::Error> {
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

#[derive(Clone, Debug)]
pub struct RemoteRepo {
    registry: Arc<Registry>,
    location: Location,
    repo: String,
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

    fn pull(&self) -> Scopes {
        scopes([repo_scope(&self.repo, "pull")])
    }
    fn push(&self) -> Scopes {
        scopes([repo_scope(&self.repo, "pull,push")])
    }
    fn url(&self, rest: &str) -> Result<Url> {
        self.registry.url(&format!("/v2/{}/{rest}", self.repo))
    }
    fn integrity(&self, what: String, detail: String) -> TransportError {
        TransportError::Integrity {
            location: self.location.to_string(),
            what,
            detail,
        }
    }

    /// Every tag; `None` when the registry says the repository does not
    /// exist (404, `NAME_UNKNOWN`).
    pub async fn list_tags(&self) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let reg = &self.registry;
        let mut url = self.url("tags/list")?;
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while seen.insert(url.clone()) {
            let resp = reg
                .send(Req::new(Method::GET, url.clone(), self.pull()))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND => return Ok(None),
                s if s.is_success() => {}
                _ => return Err(reg.status_error(&Method::GET, &url, resp).await),
            }
            let next = wire::next_link(
                resp.headers()
                    .get_all(header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                &url,
            );
            let body = reg
                .read_body(&Method::GET, &url, resp, 64 * MAX_MANIFEST)
                .await?;
            let page: TagList = serde_json::from_slice(&body).map_err(|e| reg.protocol(&url, e))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(Some(tags))
    }

    /// HEAD or GET of a manifest with every manifest type accepted; `None`
    /// on 404, an error on any other failure.
    async fn manifest_request(
        &self,
        method: Method,
        reference: &str,
    ) -> Result<Option<reqwest::Response>> {
        let reg = &self.registry;
        let url = self.url(&format!("manifests/{reference}"))?;
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
        let bytes = reg
            .read_body(&Method::GET, &url, resp, MAX_MANIFEST)
            .await?;
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
        let url = self.url(&format!("manifests/{reference}"))?;
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
        let reg = &self.registry;
        let url = self.url(&format!("blobs/{d}"))?;
        let resp = reg
            .send(Req::new(Method::HEAD, url.clone(), self.pull()))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Err(reg.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    pub async fn get_blob(&self, d: &Digest, _size: u64) -> Result<ByteStream> {
        Ok(self.get_blob_from(d, 0).await?.0)
    }

    /// The blob's bytes from `offset` on (HTTP Range), for resuming a
    /// download. Returns the offset the stream actually starts at: 0 when the
    /// registry ignored the range and sends the whole blob.
    pub async fn get_blob_from(&self, d: &Digest, offset: u64) -> Result<(ByteStream, u64)> {
        let reg = &self.registry;
        let url = self.url(&format!("blobs/{d}"))?;
        let mut req = Req::new(Method::GET, url.clone(), self.pull());
        if offset > 0 {
            req = req.header(header::RANGE, &format!("bytes={offset}-"));
        }
        let resp = reg.send(req).await?;
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
        let host = reg.host.clone();
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| {
                std::io::Error::other(format!("{host}: reading blob: {}", error_chain(&e)))
            })
        });
        Ok((Box::pin(stream), start))
    }

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
    async fn send_blob(
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
    async fn send_chunks(
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
            let n = chunk.min(size - session.offset);
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
    fn stream_cause(
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

    fn stream_error(&self, d: &Digest, source: std::io::Error) -> TransportError {
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

    fn session_from(
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

    async fn upload_whole(
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

    async fn expect_created(&self, url: &Url, resp: reqwest::Response, d: &Digest) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_coverage() {
        let have = scopes([repo_scope("a/b", "pull,push")]);
        assert!(scope_covered(&have, "repository:a/b:pull"));
        assert!(scope_covered(&have, "repository:a/b:push,pull"));
        assert!(!scope_covered(&have, "repository:a/b:delete"));
        assert!(!scope_covered(&have, "repository:c:pull"));
        assert!(!scope_covered(&have, "registry:catalog:*"));
    }

    #[test]
    fn base_urls() {
        let r = Registry::new("docker.io", &RegistryOptions::default(), false).unwrap();
        assert_eq!(r.base.as_str(), "https://registry-1.docker.io/");
        let opts = RegistryOptions {
            plain_http: true,
            ..Default::default()
        };
        let r = Registry::new("127.0.0.1:5000", &opts, true).unwrap();
        assert_eq!(
            r.url("/v2/a/b/manifests/v1").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/b/manifests/v1"
        );
    }

    #[tokio::test]
    async fn read_only_refuses_writes_before_sending() {
        let opts = RegistryOptions {
            plain_http: true,
            ..Default::default()
        };
        // port 9 (discard) is never contacted: the refusal comes first
        let reg = Arc::new(Registry::new("127.0.0.1:9", &opts, true).unwrap());
        let repo = RemoteRepo::new(reg.clone(), "a");
        let d = Digest::of(b"x");
        let err = repo.delete_manifest(&d).await.unwrap_err();
        assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
        let err = repo
            .put_blob(&d, 1, Box::pin(futures_util::stream::empty()))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
        assert!(reg.stats().requests.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let opts = RegistryOptions {
            username: Some("u".into()),
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        let r = Registry::new("h.example", &opts, false).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
