//! Parsing the registry's access log (Apache combined format, written by distribution to
//! stdout, which the harness sends to the instance's log file):
//!
//! `127.0.0.1 - - [23/Nov/2026:09:13:57 +0000] "HEAD /v2/foo/manifests/x HTTP/1.1" 404 91 "" "curl/7.88.1"`

use std::sync::OnceLock;

use regex::Regex;

/// What an API path addresses (query string ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// `/v2/`
    Ping,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/NAME/tags/list`
    TagsList,
    /// `/v2/NAME/manifests/REF`
    Manifest,
    /// `/v2/NAME/blobs/DIGEST`
    Blob,
    /// `/v2/NAME/blobs/uploads/` (POST opens a session or mounts)
    UploadStart,
    /// `/v2/NAME/blobs/uploads/UUID` (PATCH, PUT, GET status, DELETE cancel)
    UploadSession,
    /// `/v2/NAME/referrers/DIGEST`
    Referrers,
    Other,
}

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Request target as logged, query string included.
    pub path: String,
    pub status: u16,
    /// Response body bytes written (0 when logged as `-`).
    pub bytes: u64,
    pub kind: PathKind,
    /// Repository name for repository-scoped paths.
    pub repo: Option<String>,
}

impl LoggedRequest {
    /// POST, PUT, PATCH or DELETE.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }

    pub fn is(&self, method: &str, kind: PathKind) -> bool {
        self.method == method && self.kind == kind
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// Last path segment (digest or tag for blobs/manifests).
    pub fn reference(&self) -> Option<&str> {
        match self.kind {
            PathKind::Manifest | PathKind::Blob | PathKind::Referrers | PathKind::UploadSession => {
                self.path_only().rsplit('/').next()
            }
            _ => None,
        }
    }
}

/// A position in the access log (number of requests seen), see `Registry::mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(pub usize);

fn line_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) [^"]*" (\d{3}) (\d+|-)"#)
            .expect("access log regex")
    })
}

/// Parses one log line; `None` for anything that is not an access-log line.
pub fn parse_line(line: &str) -> Option<LoggedRequest> {
    let c = line_re().captures(line)?;
    let method = c[1].to_string();
    let path = c[2].to_string();
    let status = c[3].parse().ok()?;
    let bytes = c[4].parse().unwrap_or(0);
    let (kind, repo) = classify(&path);
    Some(LoggedRequest {
        method,
        path,
        status,
        bytes,
        kind,
        repo,
    })
}

/// Parses every access-log line of a log text, in order.
pub fn parse_log(text: &str) -> Vec<LoggedRequest> {
    text.lines().filter_map(parse_line).collect()
}

/// Classifies an API path, returning the repository name where there is one.
pub fn classify(path: &str) -> (PathKind, Option<String>) {
    let p = path.split('?').next().unwrap_or("");
    let Some(rest) = p.strip_prefix("/v2/") else {
        return (
            if p == "/v2" {
                PathKind::Ping
            } else {
                PathKind::Other
            },
            None,
        );
    };
    if rest.is_empty() {
        return (PathKind::Ping, None);
    }
    if rest == "_catalog" {
        return (PathKind::Catalog, None);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let repo = |upto: usize| Some(segs[..upto].join("/")).filter(|r| !r.is_empty());
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return (PathKind::TagsList, repo(n - 2));
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return (PathKind::UploadStart, repo(n - 2));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let kind = if segs[n - 1].is_empty() {
            PathKind::UploadStart
        } else {
            PathKind::UploadSession
        };
        return (kind, repo(n - 3));
    }
    if n >= 3 && segs[n - 2] == "blobs" {
        return (PathKind::Blob, repo(n - 2));
    }
    if n >= 3 && segs[n - 2] == "manifests" {
        return (PathKind::Manifest, repo(n - 2));
    }
    if n >= 3 && segs[n - 2] == "referrers" {
        return (PathKind::Referrers, repo(n - 2));
    }
    (PathKind::Other, None)
}
