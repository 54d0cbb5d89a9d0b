//! Small pure pieces of the registry HTTP protocol: `Link` pagination,
//! `Location` resolution, OCI error bodies, `Retry-After`, `RateLimit-Remaining`.

use std::time::Duration;

use url::Url;

/// The `rel="next"` target of a `Link` header, resolved against the URL the
/// response came from (registries send it relative, e.g.
/// `</v2/_catalog?last=x&n=100>; rel="next"`).
/// The next page a response's `Link` headers point to, resolved against
/// `base` (the URL of the page just read).
pub(crate) fn next_page(headers: &reqwest::header::HeaderMap, base: &Url) -> Option<Url> {
    next_link(
        headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        base,
    )
}

pub(crate) fn next_link<'a>(values: impl IntoIterator<Item = &'a str>, base: &Url) -> Option<Url> {
    for value in values {
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>')?;
            let target = &after[..close];
            let params_and_more = &after[close + 1..];
            // parameters run until the next link (next '<' after a comma)
            let params_end = params_and_more.find('<').unwrap_or(params_and_more.len());
            let params = &params_and_more[..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                if let Some((k, v)) = p.split_once('=') {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                } else {
                    false
                }
            });
            if is_next {
                return base.join(target).ok();
            }
            rest = params_and_more;
        }
    }
    None
}

/// Resolves an upload `Location` (relative or absolute) against the URL of
/// the request it answered.
pub(crate) fn resolve_location(base: &Url, location: &str) -> Option<Url> {
    base.join(location.trim()).ok()
}

/// `url` with `key=value` appended, keeping any query it already has (upload
/// locations carry their own state in the query).
pub(crate) fn with_query(url: &Url, key: &str, value: &str) -> Url {
    let mut u = url.clone();
    u.query_pairs_mut().append_pair(key, value);
    u
}

/// `path` of a URL for messages: no query (upload state is long and noisy).
pub(crate) fn display_path(url: &Url) -> String {
    url.path().to_string()
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A readable summary of an error response body: the OCI `errors` list as
/// `CODE: message; ...`, else the start of the body as text.
pub(crate) fn error_summary(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        if !parsed.errors.is_empty() {
            return parsed
                .errors
                .iter()
                .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (false, true) => e.code.clone(),
                    _ => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 200 {
        let mut cut = 200;
        while !one_line.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &one_line[..cut])
    } else {
        one_line
    }
}

/// A response's status and `Content-Type` (without parameters), kept for
/// the message when its body turns out not to be what was expected.
pub(crate) fn status_and_type(resp: &reqwest::Response) -> (u16, String) {
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|c| super::strip_params(c).to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), content_type)
}

/// Whether a body that should be JSON is HTML (a login page, a captive
/// portal, a proxy's error page).
pub(crate) fn is_html(content_type: &str, body: &[u8]) -> bool {
    let ct = content_type.to_ascii_lowercase();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    first == Some(&b'<')
        || ((ct == "text/html" || ct == "application/xhtml+xml") && first != Some(&b'{'))
}

/// Why a body the registry answered with `status` is not the JSON expected:
/// says so plainly when it is HTML rather than quoting the parser.
pub(crate) fn not_json(
    status: u16,
    content_type: &str,
    body: &[u8],
    err: impl std::fmt::Display,
) -> String {
    if is_html(content_type, body) {
        format!(
            "the registry answered HTML (a login page or proxy?), not JSON \
             (status {status}, Content-Type {content_type:?}); check the registry's \
             address and any proxy in between"
        )
    } else {
        format!("the registry's answer (status {status}) is not the JSON expected: {err}")
    }
}

/// A JSON list of at most `N` items: deserializing fails at item `N + 1`,
/// so a registry's answer cannot make us hold more than that.
#[derive(Debug)]
pub(crate) struct Capped<T, const N: usize>(pub Vec<T>);

impl<'de, T: serde::Deserialize<'de>, const N: usize> serde::Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Seq<T, N> {
            type Value = Capped<T, N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a list of at most {N} entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = a.next_element::<T>()? {
                    if out.len() == N {
                        return Err(serde::de::Error::custom(format!(
                            "the list holds more than {N} entries"
                        )));
                    }
                    out.push(item);
                }
                Ok(Capped(out))
            }
        }
        d.deserialize_seq(Seq::<T, N>(std::marker::PhantomData))
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare on registries and is
/// treated as absent).
pub(crate) fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `RateLimit-Remaining: 76;w=21600` (Docker Hub) or a bare number.
pub(crate) fn rate_limit_remaining(value: &str) -> Option<u64> {
    rate_limit(value).map(|(n, _)| n)
}

/// `RateLimit-Remaining` as (remaining, window): `76;w=21600` is 76
/// requests left in a window of 21600 s.
pub(crate) fn rate_limit(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split([';', ',']);
    let n = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((n, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_next_relative_and_absolute() {
        let base = Url::parse("http://127.0.0.1:5000/v2/_catalog?n=1000").unwrap();
        let n = next_link([r#"</v2/_catalog?last=b&n=1000>; rel="next""#], &base).unwrap();
        assert_eq!(
            n.as_str(),
            "http://127.0.0.1:5000/v2/_catalog?last=b&n=1000"
        );
        let n = next_link(
            [r#"<https://other.example/v2/x/tags/list?last=v9>; rel=next"#],
            &base,
        )
        .unwrap();
        assert_eq!(n.host_str(), Some("other.example"));
        let n = next_link(
            [r#"</a>; rel="prev", </b?x=1>; title="t"; rel="next""#],
            &base,
        )
        .unwrap();
        assert_eq!(n.path(), "/b");
        assert!(next_link([r#"</a>; rel="prev""#], &base).is_none());
        assert!(next_link(Vec::<&str>::new(), &base).is_none());
    }

    #[test]
    fn locations_and_queries() {
        let base = Url::parse("https://r.example/v2/a/blobs/uploads/").unwrap();
        let l = resolve_location(&base, "/v2/a/blobs/uploads/uuid?_state=xyz").unwrap();
        assert_eq!(
            l.as_str(),
            "https://r.example/v2/a/blobs/uploads/uuid?_state=xyz"
        );
        let l = resolve_location(&base, "https://s3.example/up/1").unwrap();
        assert_eq!(l.host_str(), Some("s3.example"));
        let d = with_query(&l, "digest", "sha256:ab");
        assert_eq!(d.as_str(), "https://s3.example/up/1?digest=sha256%3Aab");
        let base2 = Url::parse("http://h/v2/a/blobs/uploads/u?_state=a%2Bb").unwrap();
        let d = with_query(&base2, "digest", "sha256:ab");
        assert_eq!(d.query(), Some("_state=a%2Bb&digest=sha256%3Aab"));
        assert_eq!(display_path(&d), "/v2/a/blobs/uploads/u");
    }

    #[test]
    fn error_bodies() {
        let b = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"x"}]}"#;
        assert_eq!(
            error_summary(b),
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry"
        );
        assert_eq!(error_summary(b"404 page\n not found"), "404 page not found");
        assert_eq!(error_summary(&[b'x'; 300]).len(), 203);
    }

    #[test]
    fn html_is_named_as_such() {
        let m = not_json(
            200,
            "text/html",
            b"<html>",
            "expected value at line 1 column 1",
        );
        assert!(m.contains("answered HTML") && m.contains("200"), "{m}");
        let m = not_json(200, "", b"  \n<!DOCTYPE html>", "x");
        assert!(m.contains("answered HTML"), "{m}");
        let m = not_json(200, "application/json", b"{\"tags\":1}", "invalid type");
        assert!(!m.contains("HTML") && m.contains("invalid type"), "{m}");
    }

    #[test]
    fn headers() {
        assert_eq!(retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(rate_limit_remaining("76;w=21600"), Some(76));
        assert_eq!(rate_limit_remaining("5"), Some(5));
        assert_eq!(
            rate_limit("76;w=21600"),
            Some((76, Some(Duration::from_secs(21600))))
        );
        assert_eq!(rate_limit("3"), Some((3, None)));
    }
}
