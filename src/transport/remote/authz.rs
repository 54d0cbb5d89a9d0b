//! The `Authorization` of a request: credentials (configured or from a
//! docker config), the scheme learned from a challenge, bearer tokens.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header;
use url::Url;

use super::auth::{self, Challenge, Credentials, Scopes};
use super::send::{Req, read_limited};
use super::{MAX_ERROR_BODY, Registry, error_chain, wire};
use crate::secret::Secret;
use crate::transport::{Result, TransportError};

impl Registry {
    pub(super) async fn credentials(&self) -> Result<&Credentials> {
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
    pub(super) async fn authorization(&self, scopes: &Scopes) -> Result<Option<Secret>> {
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

    pub(super) async fn fetch_token(
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
        if !creds.is_anonymous() {
            if let Some(why) = auth::realm_refusal(&self.base, &realm_url, &self.token_realms) {
                tracing::warn!(registry = %self.host, realm = %realm_url.host_str().unwrap_or(""),
                    "token realm refused: credentials not sent");
                return Err(auth_err(format!("{why} in [registries.\"{}\"]", self.host)));
            }
        }
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
        let resp = tokio::time::timeout(self.head_deadline, request.send())
            .await
            .map_err(|_| auth_err("the token server sent no response head in time".into()))?
            .map_err(|e| {
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
    pub(super) async fn ensure_challenge(&self) -> Result<()> {
        if self.probed.load(Ordering::Relaxed)
            || self.challenge.read().expect("challenge poisoned").is_some()
        {
            return Ok(());
        }
        let url = self.url("/v2/")?;
        // boxed: send() calls this function
        let resp = Box::pin(self.send(Req::new(Method::GET, url, Scopes::new()))).await?;
        let _ = read_limited(resp, MAX_ERROR_BODY).await;
        self.probed.store(true, Ordering::Relaxed);
        Ok(())
    }
}
