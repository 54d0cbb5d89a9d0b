//! Paginated lists (`Link: <...>; rel="next"`): tags and the catalog share
//! one loop.

use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::send::Req;
use super::{MAX_MANIFEST, Registry, RemoteRepo, scopes, wire};
use crate::transport::Result;

/// What one list request is about.
struct Listing<'a> {
    first: Url,
    scopes: Scopes,
    /// Largest page body accepted.
    limit: usize,
    /// A 404 means the list does not exist (`None`: a repository that does
    /// not exist), rather than an error.
    missing_is_empty: bool,
    /// The member holding the page's items (`tags`, `repositories`);
    /// absent or `null` counts as none.
    field: &'a str,
}

impl Registry {
    /// Every item of a paginated list, sorted and without duplicates.
    async fn list_pages(&self, l: Listing<'_>) -> Result<Option<Vec<String>>> {
        let mut url = l.first;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // a registry that links a page to itself ends the loop
        while seen.insert(url.clone()) {
            let resp = self
                .send(Req::new(Method::GET, url.clone(), l.scopes.clone()))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND if l.missing_is_empty => return Ok(None),
                s if s.is_success() => {}
                _ => return Err(self.status_error(&Method::GET, &url, resp).await),
            }
            let next = wire::next_page(resp.headers(), &url);
            let body = self.read_body(&Method::GET, &url, resp, l.limit).await?;
            let items = page_items(&body, l.field).map_err(|e| self.protocol(&url, e))?;
            out.extend(items);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(Some(out))
    }

    /// Repositories under `prefix` (catalog API, paginated), relative to it.
    pub async fn list_repositories(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_matches('/');
        let all = self
            .list_pages(Listing {
                first: self.url("/v2/_catalog?n=1000")?,
                scopes: scopes(["registry:catalog:*".to_string()]),
                limit: MAX_MANIFEST,
                missing_is_empty: false,
                field: "repositories",
            })
            .await?
            .unwrap_or_default();
        if prefix.is_empty() {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .filter_map(|r| {
                let rel = r.strip_prefix(prefix)?.strip_prefix('/')?;
                (!rel.is_empty()).then(|| rel.to_string())
            })
            .collect())
    }
}

/// The list under `field` of one page. A page of another shape is an error,
/// not an empty list: an unreadable tag list must never look like "no tags".
fn page_items(body: &[u8], field: &str) -> Result<Vec<String>, serde_json::Error> {
    let mut page: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    match page.remove(field) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v),
    }
}

impl RemoteRepo {
    /// Every tag; `None` when the registry says the repository does not
    /// exist (404, `NAME_UNKNOWN`).
    pub async fn list_tags(&self) -> Result<Option<Vec<String>>> {
        self.registry
            .list_pages(Listing {
                first: self.url("tags/list")?,
                scopes: self.pull(),
                limit: 64 * MAX_MANIFEST,
                missing_is_empty: true,
                field: "tags",
            })
            .await
    }
}
