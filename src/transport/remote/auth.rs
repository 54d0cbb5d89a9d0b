//! Registry authentication: credentials (configured or from a docker
//! `config.json`), `WWW-Authenticate` challenges, and bearer tokens cached per
//! scope set.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use url::Url;

use crate::reference::DOCKER_HUB;
use crate::secret::Secret;

/// What a registry accepts as proof of identity.
#[derive(Clone, Debug, Default)]
pub(crate) enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the
    /// token realm with a POST.
    IdentityToken(Secret),
}

impl Credentials {
    pub(crate) fn basic_header(&self) -> Option<Secret> {
        match self {
            Credentials::Basic { username, password } => Some(basic_header(username, password)),
            _ => None,
        }
    }
    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
    }
}

pub(crate) fn basic_header(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// The docker `config.json` to read when none is configured:
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(crate) fn default_docker_config() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

/// Keys a registry may be filed under in `config.json`: docker itself writes
/// Docker Hub as its v1 URL, and older tools wrote `https://host`.
fn config_keys(host: &str) -> Vec<String> {
    if host == DOCKER_HUB || host == "index.docker.io" || host == "registry-1.docker.io" {
        return vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ];
    }
    vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
    ]
}

/// Looks `host` up in a docker config file. Blocking (it may run a credential
/// helper): call from `spawn_blocking`. `Ok(None)`: no entry for this host.
/// Errors carry no secret (helper output is never included).
pub(crate) fn from_docker_config(path: &Path, host: &str) -> Result<Option<Credentials>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    from_docker_config_bytes(&bytes, host).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn from_docker_config_bytes(
    bytes: &[u8],
    host: &str,
) -> Result<Option<Credentials>, String> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let mut helper_failed = false;
    for key in config_keys(host) {
        match docker_credential::get_credential_from_reader(bytes, &key) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                return Ok(Some(Credentials::Basic {
                    username,
                    password: Secret::new(password),
                }));
            }
            Ok(DockerCredential::IdentityToken(t)) => {
                return Ok(Some(Credentials::IdentityToken(Secret::new(t))));
            }
            Err(E::NoCredentialConfigured) => {}
            // A store/helper that has nothing for this key fails; another key may still match.
            Err(E::HelperFailure { .. }) => helper_failed = true,
            Err(E::HelperCommunicationError) => {
                return Err("cannot run the docker credential helper it names".into());
            }
            Err(E::MalformedHelperResponse) => {
                return Err("the docker credential helper gave a malformed answer".into());
            }
            Err(E::ConfigReadError) | Err(E::ConfigNotFound) => {
                return Err("not a valid docker config.json".into());
            }
            Err(E::CredentialDecodingError) => {
                return Err(format!(
                    "the `auth` entry for {key} is not base64 of user:password"
                ));
            }
            Err(E::CredentialMismatchError) => {
                return Err(format!(
                    "the entry for {key} has `auth` and username/password that disagree"
                ));
            }
        }
    }
    if helper_failed {
        tracing::debug!(
            registry = host,
            "docker credential helper has no entry for this registry"
        );
    }
    Ok(None)
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `WWW-Authenticate` values (`Bearer realm="..",service="..",scope=".."`,
/// `Basic realm=".."`). Bearer is preferred when several are offered.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for value in values {
        for (scheme, params) in split_challenges(value) {
            if scheme.eq_ignore_ascii_case("bearer") {
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                };
                if let Some(realm) = get("realm") {
                    return Some(Challenge::Bearer {
                        realm,
                        service: get("service"),
                        scope: get("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Splits one header value into challenges: a scheme token followed by
/// `key=value` / `key="quoted, value"` parameters separated by commas. A new
/// challenge starts where a bare token (no `=`) appears.
fn split_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b',' | b'=') {
            i += 1;
        }
        let token = &value[start..i];
        // skip spaces to see whether '=' follows
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // a parameter of the current challenge
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let mut val = String::new();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    // copy one UTF-8 character
                    let ch = value[i..].chars().next().expect("in bounds");
                    val.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote
            } else {
                let vs = i;
                while i < b.len() && b[i] != b',' && b[i] != b' ' {
                    i += 1;
                }
                val.push_str(&value[vs..i]);
            }
            if let Some(last) = out.last_mut() {
                last.1.push((token.to_string(), val));
            }
        } else {
            out.push((token.to_string(), Vec::new()));
        }
    }
    out
}

/// Why the token realm `realm` may not receive the credentials of the
/// registry at `registry` (`None`: it may). Over HTTPS any realm may (Docker
/// Hub's is `auth.docker.io`); over plain HTTP only the registry's own host
/// when the registry itself is plain HTTP (`plain_http`), or a host the
/// registry's `token_realms` lists (`host` or `host:port`, lowercase).
pub(crate) fn realm_refusal(
    registry: &Url,
    realm: &Url,
    token_realms: &[String],
) -> Option<String> {
    let host = realm.host_str().unwrap_or("");
    let host_port = match realm.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let listed = token_realms.iter().any(|h| *h == host || *h == host_port);
    match realm.scheme() {
        "https" => None,
        "http" if listed => None,
        "http" if registry.scheme() == "http" && registry.host_str() == Some(host) => None,
        "http" => Some(format!(
            "refused to send credentials to the token realm http://{host_port}{} over plain HTTP \
             (they would travel in clear text); nothing was sent. If that token service is \
             trusted, list it: token_realms = [\"{host_port}\"]",
            realm.path()
        )),
        other => Some(format!(
            "refused to send credentials to the token realm {host_port}: scheme {other:?} is not HTTPS"
        )),
    }
}

/// A set of token scopes (`repository:NAME:pull,push`, `registry:catalog:*`),
/// kept sorted so equal sets share one cache entry.
pub(crate) type Scopes = BTreeSet<String>;

pub(crate) fn scope_key(scopes: &Scopes) -> String {
    scopes.iter().cloned().collect::<Vec<_>>().join(" ")
}

struct CachedToken {
    token: Secret,
    /// When to stop using it: a little before the registry's expiry.
    refresh_at: Instant,
}

/// Bearer tokens per scope set.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl TokenCache {
    pub(crate) fn get(&self, key: &str) -> Option<Secret> {
        let map = self.tokens.lock().expect("token cache poisoned");
        map.get(key)
            .filter(|t| Instant::now() < t.refresh_at)
            .map(|t| t.token.clone())
    }
    pub(crate) fn put(&self, key: String, token: Secret, expires_in: Duration) {
        // Renew early: a tenth of the lifetime, at most 30 s, so a token is not
        // used at the very moment it runs out (clock skew, slow requests).
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        let refresh_at = Instant::now() + expires_in.saturating_sub(margin);
        let mut map = self.tokens.lock().expect("token cache poisoned");
        map.retain(|_, t| Instant::now() < t.refresh_at);
        map.insert(key, CachedToken { token, refresh_at });
    }
    pub(crate) fn invalidate(&self, key: &str) {
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .remove(key);
    }
}

/// A token server's answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime (60 s when the server does not say, as the
    /// token spec prescribes).
    pub(crate) fn into_parts(self) -> Option<(Secret, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let secs = self.expires_in.filter(|s| *s > 0).unwrap_or(60);
        Some((Secret::new(token), Duration::from_secs(secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="testbed-basic-realm""#]),
            Some(Challenge::Basic)
        );
        // several challenges in one value, quoted comma, escaped quote, odd spacing
        let c = parse_challenges([
            r#"Basic realm="x", Bearer realm = "http://t/token?a=1", scope="repository:a/b:pull,push", error="insufficient_scope", service=reg"#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://t/token?a=1".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenges([r#"Negotiate"#]), None);
        let parts = split_challenges(r#"Bearer realm="a\"b""#);
        assert_eq!(parts[0].1[0].1, "a\"b");
    }

    #[test]
    fn token_response_variants() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"abc","expires_in":300}"#).unwrap();
        let (tok, ttl) = t.into_parts().unwrap();
        assert_eq!(tok.expose(), "abc");
        assert_eq!(ttl, Duration::from_secs(300));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"x"}"#).unwrap();
        assert_eq!(t.into_parts().unwrap().1, Duration::from_secs(60));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(t.into_parts().is_none());
    }

    #[test]
    fn token_cache_expires_and_invalidates() {
        let c = TokenCache::default();
        c.put("k".into(), Secret::new("t"), Duration::from_secs(60));
        assert_eq!(c.get("k").unwrap().expose(), "t");
        c.invalidate("k");
        assert!(c.get("k").is_none());
        c.put("k".into(), Secret::new("t"), Duration::ZERO);
        assert!(c.get("k").is_none());
    }

    #[test]
    fn docker_config_entries() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let cfg = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},
                "https://index.docker.io/v1/":{{"username":"hub","password":"pw"}},
                "tok.example":{{"identitytoken":"refresh"}}}}}}"#
        );
        match from_docker_config_bytes(cfg.as_bytes(), "127.0.0.1:5000").unwrap() {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!(username, "bob");
                assert_eq!(password.expose(), "s3cret");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_docker_config_bytes(cfg.as_bytes(), "docker.io").unwrap(),
            Some(Credentials::Basic { ref username, .. }) if username == "hub"
        ));
        assert!(matches!(
            from_docker_config_bytes(cfg.as_bytes(), "tok.example").unwrap(),
            Some(Credentials::IdentityToken(_))
        ));
        assert!(
            from_docker_config_bytes(cfg.as_bytes(), "other.example")
                .unwrap()
                .is_none()
        );
        let bad = r#"{"auths":{"h":{"auth":"!!!"}}}"#;
        let err = from_docker_config_bytes(bad.as_bytes(), "h").unwrap_err();
        assert!(!err.contains("!!!"));
    }

    #[test]
    fn credentials_go_to_a_realm_over_https_or_where_allowed() {
        let u = |s: &str| Url::parse(s).unwrap();
        let tls = u("https://reg.example/");
        let plain = u("http://reg.example:5000/");
        let none: &[String] = &[];
        // HTTPS: any host (Docker Hub's realm is on auth.docker.io)
        assert_eq!(
            realm_refusal(&tls, &u("https://auth.docker.io/token"), none),
            None
        );
        // plain HTTP from an https registry: refused, even on its own host
        let why = realm_refusal(&tls, &u("http://auth.example:8080/token?x=1"), none).unwrap();
        assert!(why.contains("http://auth.example:8080/token"), "{why}");
        assert!(
            why.contains(r#"token_realms = ["auth.example:8080"]"#),
            "{why}"
        );
        assert!(realm_refusal(&tls, &u("http://reg.example/token"), none).is_some());
        // ... unless listed, by host or host:port
        for allowed in ["auth.example", "auth.example:8080"] {
            let list = [allowed.to_string()];
            assert_eq!(
                realm_refusal(&tls, &u("http://auth.example:8080/t"), &list),
                None
            );
        }
        assert!(
            realm_refusal(
                &tls,
                &u("http://auth.example:8080/t"),
                &["auth.example:9".into()]
            )
            .is_some()
        );
        // a plain_http registry's own host (any port) over HTTP; not another host
        assert_eq!(
            realm_refusal(&plain, &u("http://reg.example:5001/token"), none),
            None
        );
        assert!(realm_refusal(&plain, &u("http://evil.example/token"), none).is_some());
        assert!(realm_refusal(&tls, &u("ftp://reg.example/token"), none).is_some());
    }

    #[test]
    fn basic_header_is_base64() {
        let h = basic_header("u", &Secret::new("p"));
        assert_eq!(h.expose(), "Basic dTpw");
        assert_eq!(format!("{h:?}"), "***");
    }
}
