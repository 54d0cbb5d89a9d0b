//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`): an index
//! of the manifests whose `subject` is a digest, paginated with `Link`,
//! optionally filtered by `?artifactType=`. Whether a registry has the API is
//! learned once (the endpoint answering an index, or `OCI-Subject` on a
//! manifest push) and remembered on the [`Registry`] for an hour: a daemon
//! keeps its registries across runs, and a registry may gain the API.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::send::{Req, read_limited};
use super::{MAX_ERROR_BODY, MAX_MANIFEST, Registry, RemoteRepo, wire};
use crate::oci::{Digest, OCI_INDEX};
use crate::transport::Result;

/// How long an answer about the API is believed before it is asked again.
const API_KNOWN_FOR: Duration = Duration::from_secs(3600);
/// Most referrers one subject may have (over all pages): a registry's answer
/// beyond that is refused rather than held in memory.
pub(crate) const MAX_REFERRERS: usize = 10_000;
/// Most bytes of referrers pages read for one subject.
const MAX_LISTING_BYTES: usize = 4 * MAX_MANIFEST;

impl Registry {
    /// Whether this registry has the referrers API, as far as is known.
    pub fn has_referrers_api(&self) -> Option<bool> {
        let known = *self.referrers_api.lock().expect("referrers_api poisoned");
        known
            .filter(|(_, at)| at.elapsed() < API_KNOWN_FOR)
            .map(|(yes, _)| yes)
    }

    pub(super) fn learn_referrers_api(&self, yes: bool) {
        let mut known = self.referrers_api.lock().expect("referrers_api poisoned");
        if known.map(|(y, _)| y) != Some(yes) {
            tracing::debug!(registry = %self.host, api = yes, "referrers API detected");
        }
        *known = Some((yes, Instant::now()));
    }
}

impl RemoteRepo {
    /// The descriptors of `subject`'s referrers, as the registry wrote them
    /// (every page), of `artifact_type` only when given; `None` when the
    /// registry has no referrers API (then the tag schema is the way).
    pub async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Value>>> {
        let reg = &self.registry;
        // While nobody knows yet, one request at a time finds out.
        let _probe = match reg.has_referrers_api() {
            Some(false) => return Ok(None),
            Some(true) => None,
            None => {
                let guard = reg.referrers_probe.lock().await;
                match reg.has_referrers_api() {
                    Some(false) => return Ok(None),
                    Some(true) => None,
                    None => Some(guard),
                }
            }
        };
        let mut url = self.url(&format!("referrers/{subject}"))?;
        if let Some(t) = artifact_type {
            url = wire::with_query(&url, "artifactType", t);
        }
        let first = url.clone();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut total = 0;
        for page in 1.. {
            if page > reg.max_pages {
                return Err(reg.protocol(&first, too_many(reg.max_pages, &reg.host)));
            }
            seen.insert(url.clone());
            let resp = reg
                .send(Req::new(Method::GET, url.clone(), self.pull()))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND => return self.not_found(resp).await,
                s if s.is_success() => {}
                _ => return Err(reg.status_error(&Method::GET, &url, resp).await),
            }
            // Header names are case-insensitive (ferro-oci-server sends them
            // in lower case).
            let filtered = resp
                .headers()
                .get_all("oci-filters-applied")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|f| f.trim() == "artifactType"));
            let next = wire::next_page(resp.headers(), &url);
            let (status, content_type) = wire::status_and_type(&resp);
            let body = reg
                .read_body(&Method::GET, &url, resp, MAX_MANIFEST)
                .await?;
            total += body.len();
            let page = page_entries(&body).map_err(|e| {
                let why = match e {
                    PageError::Json(e) => wire::not_json(status, &content_type, &body, e),
                    PageError::Shape(e) => e,
                };
                reg.protocol(&url, why)
            })?;
            reg.learn_referrers_api(true);
            // A registry that ignored the filter: filter here.
            out.extend(
                page.into_iter()
                    .filter(|e| wanted(e, filtered, artifact_type)),
            );
            if out.len() > MAX_REFERRERS || total > MAX_LISTING_BYTES {
                return Err(reg.protocol(
                    &first,
                    format!(
                        "more than {MAX_REFERRERS} referrers or {MAX_LISTING_BYTES} bytes of \
                         them for {subject}; refused as a hostile or broken answer"
                    ),
                ));
            }
            let Some(n) = next else { break };
            super::pages::advance(&first, &url, &n, &seen)
                .map_err(|why| reg.protocol(&url, why))?;
            url = n;
        }
        Ok(Some(out))
    }

    /// A 404 from the referrers endpoint: a registry without the API answers
    /// it for the unknown route; one with the API may answer it (with
    /// `NAME_UNKNOWN`) for a repository that does not exist yet, which has
    /// no referrers.
    async fn not_found(&self, resp: reqwest::Response) -> Result<Option<Vec<Value>>> {
        let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        if wire::error_summary(&body).contains("NAME_UNKNOWN") {
            return Ok(Some(Vec::new()));
        }
        self.registry.learn_referrers_api(false);
        Ok(None)
    }
}

fn too_many(max: usize, host: &str) -> String {
    format!(
        "the referrers listing goes on past {max} pages (max_pages), so it is taken as \
         endless; if it really is that long, raise max_pages for [registries.\"{host}\"]"
    )
}

/// Why a referrers page is unusable: not JSON at all, or JSON of another shape.
#[derive(Debug)]
enum PageError {
    Json(serde_json::Error),
    Shape(String),
}

/// One referrers page as read: only what is used, the entries capped.
#[derive(serde::Deserialize)]
struct Page {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<wire::Capped<Value, MAX_REFERRERS>>,
}

/// The `manifests` of one referrers page (an image index). Anything else is
/// an error: an unreadable list must not look like "no referrers".
fn page_entries(body: &[u8]) -> std::result::Result<Vec<Value>, PageError> {
    let page: Page = serde_json::from_slice(body).map_err(PageError::Json)?;
    if let Some(mt) = page.media_type.filter(|mt| mt != OCI_INDEX) {
        return Err(PageError::Shape(format!(
            "referrers answered {mt}, not an image index"
        )));
    }
    let list = page.manifests.map(|c| c.0).unwrap_or_default();
    for e in &list {
        let d = e.get("digest").and_then(Value::as_str).unwrap_or("");
        Digest::parse(d).map_err(|e| PageError::Shape(e.to_string()))?;
    }
    Ok(list)
}

/// Whether a listed entry is wanted: all of them when the registry applied
/// the `artifactType` filter (or none was asked), else those of the type.
fn wanted(entry: &Value, filtered: bool, artifact_type: Option<&str>) -> bool {
    filtered || artifact_type.is_none_or(|t| entry_artifact_type(entry) == Some(t))
}

/// A descriptor's `artifactType`.
pub(crate) fn entry_artifact_type(entry: &Value) -> Option<&str> {
    entry.get("artifactType").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_indexes_of_valid_descriptors() {
        let d = format!("sha256:{}", "a".repeat(64));
        let ok = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"x","digest":"{d}","size":1,"artifactType":"t"}}]}}"#
        );
        let list = page_entries(ok.as_bytes()).unwrap();
        assert_eq!(entry_artifact_type(&list[0]), Some("t"));
        assert!(page_entries(br#"{"manifests":null}"#).unwrap().is_empty());
        assert!(page_entries(br#"{"manifests":{"a":1}}"#).is_err());
        let many = format!(
            r#"{{"manifests":[{}]}}"#,
            vec!["{}"; MAX_REFERRERS + 1].join(",")
        );
        assert!(page_entries(many.as_bytes()).is_err());
        assert!(page_entries(br#"{"manifests":[{"digest":"sha256:zz"}]}"#).is_err());
        assert!(page_entries(br#"{"mediaType":"text/html"}"#).is_err());
        assert!(page_entries(b"<html>").is_err());
    }

    #[test]
    fn a_filter_the_registry_did_not_apply_is_applied_here() {
        let sbom = serde_json::json!({"artifactType": "application/spdx+json"});
        let sig = serde_json::json!({"artifactType": "application/vnd.cncf.notary.signature"});
        let t = Some("application/spdx+json");
        assert!(wanted(&sbom, false, t));
        assert!(
            !wanted(&sig, false, t),
            "OCI-Filters-Applied absent: filtered here"
        );
        assert!(
            wanted(&sig, true, t),
            "the registry filtered: its answer stands"
        );
        assert!(wanted(&sig, false, None));
    }
}
