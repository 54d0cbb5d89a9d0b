//! A Docker registry token server (the `auth.token` flow of distribution), on its own
//! thread and runtime so that it serves sync and async tests alike.
//!
//! `GET /token?service=S&scope=repository:NAME:pull,push&scope=...` with optional Basic
//! auth answers `{"token", "access_token", "expires_in", "issued_at"}`. The JWT is ES256,
//! signed by a key whose self-signed certificate is the registry's `rootcertbundle`, and
//! carries that certificate in the `x5c` header (which distribution 2.8 verifies against
//! the bundle).
//!
//! Policy: anonymous requests get `pull` only (other actions are silently dropped, as real
//! token servers do); the configured user gets every action requested. Wrong credentials
//! get 401.
//!
//! Note: distribution allows 60 s of clock skew (leeway) when checking `exp`/`nbf`, so by
//! default the registry keeps accepting a token for about a minute past `exp` and a short
//! lifetime only drives *client-side* refresh (through `expires_in`). With
//! `set_strict_expiry(true)` the JWT's `exp` is backdated by the leeway, so the registry
//! starts refusing the token (401) right when `expires_in` runs out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::json;

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// User from Basic auth, `None` for anonymous (or rejected) requests.
    pub user: Option<String>,
    pub service: Option<String>,
    /// Scopes as requested (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    /// Scopes as granted (same syntax, actions filtered by policy).
    pub granted: Vec<String>,
    /// HTTP status answered (200, or 401 for bad credentials).
    pub status: u16,
}

struct Inner {
    issuer: String,
    service: String,
    user: String,
    pass: String,
    lifetime: Mutex<Duration>,
    strict_expiry: AtomicBool,
    key: EncodingKey,
    x5c: String,
    log: Mutex<Vec<TokenRequest>>,
    counter: AtomicU64,
}

/// A running token server. Stopped (and its thread joined) on drop.
pub struct TokenServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    bundle: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Clock-skew leeway distribution applies to `exp`/`nbf`.
pub const REGISTRY_LEEWAY_SECS: u64 = 60;

pub const DEFAULT_ISSUER: &str = "regkeeper-test-issuer";

impl TokenServer {
    /// Starts a token server on 127.0.0.1 (ephemeral port). Writes the signing certificate
    /// to `dir/token-signing.crt` (use as the registry's `rootcertbundle`).
    pub fn start(dir: &Path, service: &str, user: &str, pass: &str, lifetime: Duration) -> Self {
        std::fs::create_dir_all(dir).expect("create token dir");
        let key = KeyPair::generate().expect("token signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("token cert params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, DEFAULT_ISSUER);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).expect("self-sign token cert");
        let bundle = dir.join("token-signing.crt");
        std::fs::write(&bundle, cert.pem()).expect("write token-signing.crt");
        let encoding =
            EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("token encoding key");

        let inner = Arc::new(Inner {
            issuer: DEFAULT_ISSUER.to_string(),
            service: service.to_string(),
            user: user.to_string(),
            pass: pass.to_string(),
            lifetime: Mutex::new(lifetime),
            strict_expiry: AtomicBool::new(false),
            key: encoding,
            x5c: B64.encode(cert.der()),
            log: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("token server addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let app = Router::new()
                        .route("/token", get(token_handler))
                        .with_state(state);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await
                        .expect("token server");
                });
            })
            .expect("spawn token server thread");

        TokenServer {
            addr,
            inner,
            bundle,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/token` — the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn service(&self) -> &str {
        &self.inner.service
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Path of the signing certificate (the registry's `auth.token.rootcertbundle`).
    pub fn rootcertbundle(&self) -> &Path {
        &self.bundle
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.inner.lifetime.lock().unwrap() = lifetime;
    }

    /// Backdate `exp` by the registry's 60 s leeway so tokens really stop working after
    /// `expires_in` (see module docs).
    pub fn set_strict_expiry(&self, strict: bool) {
        self.inner.strict_expiry.store(strict, Ordering::SeqCst);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Number of requests answered so far.
    pub fn request_count(&self) -> usize {
        self.inner.log.lock().unwrap().len()
    }

    /// Mints a token directly (no HTTP, not logged), with the same policy as the endpoint.
    pub fn issue(&self, user: Option<&str>, scopes: &[&str]) -> String {
        let granted: Vec<String> = scopes
            .iter()
            .filter_map(|s| grant(s, user.is_some()))
            .collect();
        mint(&self.inner, user, &granted).0
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Applies the policy to one scope; `None` when nothing is granted.
fn grant(scope: &str, authenticated: bool) -> Option<String> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .filter(|a| authenticated || (typ == "repository" && *a == "pull"))
        .collect();
    if actions.is_empty() {
        return None;
    }
    Some(format!("{typ}:{name}:{}", actions.join(",")))
}

fn mint(inner: &Inner, user: Option<&str>, granted: &[String]) -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let lifetime = inner.lifetime.lock().unwrap().as_secs().max(1);
    // distribution 2.8 accepts tokens up to 60 s past `exp` (and before `nbf`).
    let leeway = if inner.strict_expiry.load(Ordering::SeqCst) {
        REGISTRY_LEEWAY_SECS
    } else {
        0
    };
    let n = inner.counter.fetch_add(1, Ordering::Relaxed);
    let access: Vec<serde_json::Value> = granted
        .iter()
        .filter_map(|g| {
            let (typ, rest) = g.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({
                "type": typ,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let claims = json!({
        "iss": inner.issuer,
        "sub": user.unwrap_or(""),
        "aud": inner.service,
        "exp": (now + lifetime).saturating_sub(leeway),
        "nbf": now.saturating_sub(1 + leeway),
        "iat": now,
        "jti": format!("harness-{n}-{now}"),
        "access": access,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.x5c = Some(vec![inner.x5c.clone()]);
    let token = jsonwebtoken::encode(&header, &claims, &inner.key).expect("sign JWT");
    (token, lifetime)
}

fn basic_user(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, cred) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = match B64.decode(cred.trim()) {
        Ok(d) => d,
        Err(_) => return Some(Err(())),
    };
    let s = String::from_utf8_lossy(&decoded).into_owned();
    Some(match s.split_once(':') {
        Some((u, p)) => Ok((u.to_string(), p.to_string())),
        None => Err(()),
    })
}

async fn token_handler(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut service = None;
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "service" => service = Some(v.into_owned()),
            // Some clients put several space-separated scopes in one parameter.
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            _ => {}
        }
    }
    let user = match basic_user(&headers) {
        None => None,
        Some(Ok((u, p))) if u == inner.user && p == inner.pass => Some(u),
        Some(_) => {
            inner.log.lock().unwrap().push(TokenRequest {
                user: None,
                service,
                scopes,
                granted: Vec::new(),
                status: 401,
            });
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"regkeeper-test-token\"",
                )],
                "bad credentials",
            )
                .into_response();
        }
    };
    let granted: Vec<String> = scopes
        .iter()
        .filter_map(|s| grant(s, user.is_some()))
        .collect();
    let (token, expires_in) = mint(&inner, user.as_deref(), &granted);
    inner.log.lock().unwrap().push(TokenRequest {
        user: user.clone(),
        service,
        scopes,
        granted,
        status: 200,
    });
    let issued_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at,
    }))
    .into_response()
}
