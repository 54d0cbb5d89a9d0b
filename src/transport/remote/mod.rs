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
//! reqwest 0.13.5), so registry tokens never reach the storage host; no
//! `Referer` is sent either (reqwest's default would name the registry URL).
//! A redirect loop, more than 10 redirects or a redirect to a scheme other
//! than http(s) fails at once: the same request would meet the same answer.
//!
//! Time is bounded per request (`pace`): the response head within
//! 2 x `read_timeout`, a body at `min_rate` or faster, silence at most
//! `read_timeout`.

mod api;
mod auth;
mod authz;
mod hints;
mod limits;
mod pace;
mod pages;
mod probe;
mod push;
pub(crate) mod referrers;
mod resume;
mod send;
#[cfg(test)]
mod tests;
mod upload;
mod wire;

pub use api::RemoteRepo;
pub use probe::speaks_https;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use url::Url;

use self::auth::{Challenge, Credentials, Scopes, TokenCache};
use super::{RegistryOptions, Result, TransportError};
use crate::reference::api_host;

/// Manifests larger than this are refused (registries cap them at 4 MiB too).
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Error bodies are read up to this size for their message.
const MAX_ERROR_BODY: usize = 64 * 1024;
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
    /// The adaptive concurrency window now.
    pub concurrency: u64,
}

/// An open upload session: where to send the next bytes and how many the
/// registry has. Persisting both allows resuming after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    pub url: Url,
    pub offset: u64,
}

/// One registry host: client, credentials, tokens, limits, counters.
pub struct Registry {
    host: String,
    base: Url,
    client: reqwest::Client,
    read_only: bool,
    explicit: Option<Credentials>,
    docker_config: Option<(PathBuf, bool)>,
    /// Hosts that may receive the credentials as a token realm over plain HTTP.
    token_realms: Vec<String>,
    /// Config keys or `copy`'s flags, in error hints.
    hints: super::Hints,
    credentials: tokio::sync::OnceCell<Credentials>,
    /// The scheme the registry asked for, learned from its first 401, so
    /// later requests authenticate up front without a probe.
    challenge: RwLock<Option<Challenge>>,
    /// `GET /v2/` was asked once (a registry without auth teaches no challenge).
    probed: AtomicBool,
    tokens: TokenCache,
    token_fetch: tokio::sync::Mutex<()>,
    limits: limits::Limits,
    chunk_size: u64,
    /// Pages of one paginated list read at most (`max_pages`).
    max_pages: usize,
    /// Bytes per second a response body must keep up (0 = off).
    min_rate: u64,
    /// How long a response head may take (`pace::head_deadline`).
    head_deadline: Duration,
    stats: Mutex<RegistryStats>,
    observer: OnceLock<Observer>,
    /// Whether the referrers API answers here, and since when that is known.
    referrers_api: Mutex<Option<(bool, std::time::Instant)>>,
    /// Held by the one request that finds out whether the API exists, so
    /// that repositories asking at once do not each send the probe.
    referrers_probe: tokio::sync::Mutex<()>,
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
            // per read, not per request: a stalled connection fails (and is
            // retried), a long blob does not
            .read_timeout(opts.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10))
            // the source URL is nobody else's business (object storage, a CDN)
            .referer(false);
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
            // plain HTTP has no certificate to verify: nothing to warn about
            if !opts.plain_http {
                tracing::warn!(registry = host, "TLS certificate verification is off");
            }
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
            token_realms: opts.token_realms.clone(),
            hints: opts.hints.clone(),
            credentials: tokio::sync::OnceCell::new(),
            challenge: RwLock::new(None),
            probed: AtomicBool::new(false),
            tokens: TokenCache::default(),
            token_fetch: tokio::sync::Mutex::new(()),
            limits: limits::Limits::new(
                opts.max_concurrent,
                opts.requests_per_second,
                opts.ratelimit_min,
            ),
            chunk_size: opts.chunk_size,
            max_pages: opts.max_pages,
            min_rate: opts.min_rate,
            head_deadline: pace::head_deadline(opts.read_timeout),
            stats: Mutex::new(RegistryStats::default()),
            observer: OnceLock::new(),
            referrers_api: Mutex::new(None),
            referrers_probe: tokio::sync::Mutex::new(()),
        })
    }

    /// The host as written in references (the `[registries]` key).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A snapshot of this registry's request counters.
    pub fn stats(&self) -> RegistryStats {
        let mut s = self.stats.lock().expect("stats poisoned").clone();
        s.concurrency = self.limits.concurrency() as u64;
        s
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
        self.hints.credentials(&self.host)
    }
}
