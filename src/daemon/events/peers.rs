//! Forwarding an event to the shard that owns it (Kubernetes: the Service
//! hands a webhook to any pod). The owner's URL comes from one pattern,
//! `--peer-url` / `REGKEEPER_PEER_URL`, e.g.
//! `http://regkeeper-{shard}.regkeeper:9469` (the StatefulSet's pod DNS
//! names): no coordination, the shard assignment depends on names only.
//! A forwarded request carries `FORWARDED_HEADER`, and a request that has
//! it is never forwarded again, so an event travels at most one hop.

use std::time::Duration;

use axum::http::HeaderMap;

/// Set on forwarded requests; its value is the sending shard.
pub(crate) const FORWARDED_HEADER: &str = "x-regkeeper-forwarded";

/// What `{shard}` in the pattern is replaced with.
const PLACEHOLDER: &str = "{shard}";

/// How long a peer may take to answer a forwarded event.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PeerUrlError {
    #[error(
        "peer URL {0:?} has no {{shard}} placeholder (e.g. http://regkeeper-{{shard}}.regkeeper:9469)"
    )]
    NoPlaceholder(String),
    #[error("peer URL {0:?} is not an http:// or https:// URL once {{shard}} is filled in")]
    NotHttp(String),
    #[error("cannot build the HTTP client for peers: {0}")]
    Client(String),
}

/// The other shards' event endpoints.
#[derive(Clone)]
pub struct Peers {
    pattern: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("pattern", &self.pattern)
            .finish()
    }
}

/// A forward that did not go through: which shard, where, and why.
#[derive(Debug)]
pub(crate) struct ForwardFailure {
    pub shard: u32,
    pub message: String,
}

impl Peers {
    /// Checks the pattern: one `{shard}`, an http(s) URL around it.
    pub fn parse(pattern: &str) -> Result<Peers, PeerUrlError> {
        let pattern = pattern.trim().trim_end_matches('/').to_string();
        if !pattern.contains(PLACEHOLDER) {
            return Err(PeerUrlError::NoPlaceholder(pattern));
        }
        let sample = pattern.replace(PLACEHOLDER, "0");
        match url::Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(PeerUrlError::NotHttp(pattern)),
        }
        // Idempotent; the binary installs it first, unit tests may not have.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PeerUrlError::Client(e.to_string()))?;
        Ok(Peers { pattern, client })
    }

    pub(crate) fn url(&self, shard: u32, path: &str) -> String {
        format!(
            "{}{path}",
            self.pattern.replace(PLACEHOLDER, &shard.to_string())
        )
    }

    /// POSTs `body` to `path` at `shard` with the caller's `Authorization`
    /// and `Content-Type`, marked as forwarded by `from`.
    pub(crate) async fn forward(
        &self,
        from: u32,
        shard: u32,
        path: &str,
        headers: &HeaderMap,
        body: bytes::Bytes,
    ) -> Result<(), ForwardFailure> {
        let url = self.url(shard, path);
        let mut req = self
            .client
            .post(&url)
            .header(FORWARDED_HEADER, from.to_string())
            .body(body);
        for name in [
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name.as_str(), v.as_bytes());
            }
        }
        let fail = |message: String| ForwardFailure { shard, message };
        let resp = req
            .send()
            .await
            .map_err(|e| fail(format!("{url}: {}", error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            tracing::info!(shard, %url, "event forwarded to its owner");
            Ok(())
        } else {
            Err(fail(format!("{url} answered {status}")))
        }
    }
}

/// Whether a request came from another shard.
pub(crate) fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The shard that runs `(rule, rel)`: the repository's owner under a `/*`
/// rule (`rel` not empty), else the rule's owner.
pub(crate) fn owner(shard: crate::shard::Shard, rule: &str, rel: &str) -> u32 {
    let key_owner = |k: u32| {
        let s = crate::shard::Shard {
            index: k,
            count: shard.count,
        };
        if rel.is_empty() {
            s.owns_rule(rule)
        } else {
            s.owns_repository(rule, rel)
        }
    };
    (0..shard.count.max(1)).find(|&k| key_owner(k)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_needs_a_placeholder_and_http() {
        let p = Peers::parse("http://regkeeper-{shard}.regkeeper:9469/").unwrap();
        assert_eq!(
            p.url(2, "/v1/events/harbor"),
            "http://regkeeper-2.regkeeper:9469/v1/events/harbor"
        );
        let e = Peers::parse("http://regkeeper-0.regkeeper:9469").unwrap_err();
        assert!(e.to_string().contains("{shard}"), "{e}");
        let e = Peers::parse("regkeeper-{shard}:9469").unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn exactly_one_owner_per_key() {
        let shard = crate::shard::Shard::parse("1/3").unwrap();
        for i in 0..30 {
            let rel = format!("r{i}");
            let o = owner(shard, "team", &rel);
            assert!(o < 3);
            let s = crate::shard::Shard { index: o, count: 3 };
            assert!(s.owns_repository("team", &rel));
            let o = owner(shard, &rel, "");
            assert!(crate::shard::Shard { index: o, count: 3 }.owns_rule(&rel));
        }
    }
}
