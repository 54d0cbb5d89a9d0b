//! Paginated lists (`Link: <...>; rel="next"`): tags and the catalog share
//! one loop. Everything here comes from the registry, so it is bounded: a
//! page's size and number of names, the number of pages, and a next link
//! that does not move forward is an error, never a shorter list (retention
//! and `delete_removed_at_source` act on what a listing says).

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::Scopes;
use super::send::Req;
use super::{Registry, RemoteRepo, scopes, wire};
use crate::transport::Result;

/// Largest tag-list or catalog page read: a page holds what we ask for
/// (`n=1000`) or, from a registry that ignores `n`, at most
/// [`PAGE_ENTRIES`] names of at most 255 bytes, plus what some registries
/// add about each tag; a larger page is refused before it is read.
pub(super) const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Most names one page may hold (each costs a `String` in memory).
pub(super) const PAGE_ENTRIES: usize = 100_000;

/// What one list request is about.
struct Listing<'a> {
    first: Url,
    scopes: Scopes,
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
        let mut url = l.first.clone();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for page in 1.. {
            if page > self.max_pages {
                return Err(self.protocol(&l.first, too_many_pages(self.max_pages, &self.host)));
            }
            seen.insert(url.clone());
            let resp = self
                .send(Req::new(Method::GET, url.clone(), l.scopes.clone()))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND if l.missing_is_empty => return Ok(None),
                s if s.is_success() => {}
                _ => return Err(self.status_error(&Method::GET, &url, resp).await),
            }
            let next = wire::next_page(resp.headers(), &url);
            let (status, content_type) = wire::status_and_type(&resp);
            let body = self.read_body(&Method::GET, &url, resp, PAGE_BYTES).await?;
            let items = page_items(&body, l.field).map_err(|e| {
                self.protocol(&url, wire::not_json(status, &content_type, &body, e))
            })?;
            out.extend(items);
            let Some(next) = next else { break };
            advance(&l.first, &url, &next, &seen).map_err(|why| self.protocol(&url, why))?;
            url = next;
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

fn too_many_pages(max: usize, host: &str) -> String {
    format!(
        "the listing goes on past {max} pages (max_pages), so it is taken as endless and \
         not used; if it really is that long, raise max_pages for [registries.\"{host}\"]"
    )
}

/// Whether the link from page `current` to `next` moves the listing forward:
/// same origin and path as the first page, a page not read before, and a
/// `last` (the name the next page starts after) greater than the one before.
/// Anything else is an error: a registry that loops, goes backwards or
/// leads elsewhere gives no list we can act on.
pub(super) fn advance(
    first: &Url,
    current: &Url,
    next: &Url,
    seen: &HashSet<Url>,
) -> std::result::Result<(), String> {
    if next.origin() != first.origin() {
        return Err(format!(
            "the next page link leads to another host ({}); refused",
            next.origin().ascii_serialization()
        ));
    }
    if next.path() != first.path() {
        return Err(format!(
            "the next page link leaves the listing (to {}); refused",
            next.path()
        ));
    }
    let last = |u: &Url| {
        u.query_pairs()
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned())
    };
    if seen.contains(next) {
        return Err(format!(
            "the pagination does not advance: the next page link repeats an earlier page{}",
            last(next)
                .map(|l| format!(" (last={l:?})"))
                .unwrap_or_default()
        ));
    }
    if let (Some(before), Some(after)) = (last(current), last(next)) {
        if after <= before {
            return Err(format!(
                "the pagination does not advance: last={after:?} comes after last={before:?}"
            ));
        }
    }
    Ok(())
}

/// One page's names, under whichever member the listing reads.
#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<wire::Capped<String, PAGE_ENTRIES>>,
    #[serde(default)]
    repositories: Option<wire::Capped<String, PAGE_ENTRIES>>,
}

/// The list under `field` of one page, read straight into strings (no
/// `serde_json::Value` tree: that costs ten times the page). A page of
/// another shape is an error, not an empty list: an unreadable tag list
/// must never look like "no tags".
pub(super) fn page_items(body: &[u8], field: &str) -> Result<Vec<String>, serde_json::Error> {
    let page: Page = serde_json::from_slice(body)?;
    let items = match field {
        "tags" => page.tags,
        _ => page.repositories,
    };
    Ok(items.map(|c| c.0).unwrap_or_default())
}

impl RemoteRepo {
    /// Every tag; `None` when the registry says the repository does not
    /// exist (404, `NAME_UNKNOWN`).
    pub async fn list_tags(&self) -> Result<Option<Vec<String>>> {
        self.registry
            .list_pages(Listing {
                first: self.url("tags/list")?,
                scopes: self.pull(),
                missing_is_empty: true,
                field: "tags",
            })
            .await
    }
}

#[cfg(test)]
#[path = "pages_tests.rs"]
mod tests;
