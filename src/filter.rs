//! Tag selection (pure): include and exclude regexes, a semver range, and the
//! newest N in semver order.

use std::cmp::Ordering;

use crate::config::TagFilter;

/// Reads a tag as a version, leniently: a leading `v` is dropped and missing
/// minor or patch numbers count as 0 (`3.19` is 3.19.0), because image tags
/// rarely carry all three.
pub(crate) fn parse_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    // Split off pre-release / build parts and pad the numeric core.
    let core_end = t.find(['-', '+']).unwrap_or(t.len());
    let (core, rest) = t.split_at(core_end);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut padded = parts.join(".");
    for _ in parts.len()..3 {
        padded.push_str(".0");
    }
    semver::Version::parse(&format!("{padded}{rest}")).ok()
}

/// Orders tags newest first: versions by semver precedence, then tags that
/// are not versions by name (they sort after every version).
pub(crate) fn newest_first(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Some(va), Some(vb)) => vb.cmp(&va).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The tags a rule mirrors, newest first.
pub(crate) fn select_tags(filter: &TagFilter, tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tags
        .iter()
        .filter(|t| filter.include.is_empty() || filter.include.iter().any(|r| r.is_match(t)))
        .filter(|t| !filter.exclude.iter().any(|r| r.is_match(t)))
        .filter(|t| match &filter.semver {
            Some(req) => parse_version(t).is_some_and(|v| req.matches(&v)),
            None => true,
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| newest_first(a, b));
    out.dedup();
    if let Some(n) = filter.latest {
        out.truncate(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lenient_versions() {
        assert_eq!(parse_version("3.19").unwrap().to_string(), "3.19.0");
        assert_eq!(
            parse_version("v1.2.3-rc1").unwrap().to_string(),
            "1.2.3-rc1"
        );
        assert_eq!(parse_version("7").unwrap().to_string(), "7.0.0");
        assert!(parse_version("latest").is_none());
        assert!(parse_version("1.2.3.4").is_none());
        assert!(parse_version("sha256-abc.sig").is_none());
    }

    #[test]
    fn include_exclude_semver_latest() {
        let all = tags(&[
            "3.17", "3.18", "3.18.4", "3.19", "3.20-rc1", "latest", "edge", "3.19.1",
        ]);
        let f = TagFilter {
            include: vec![
                Regex::new(r"^3\.\d+(\.\d+)?").unwrap(),
                Regex::new("^latest$").unwrap(),
            ],
            exclude: vec![Regex::new("-rc").unwrap()],
            semver: None,
            latest: None,
        };
        assert_eq!(
            select_tags(&f, &all),
            tags(&["3.19.1", "3.19", "3.18.4", "3.18", "3.17", "latest"])
        );

        let f = TagFilter {
            semver: Some(semver::VersionReq::parse(">=3.18").unwrap()),
            latest: Some(3),
            ..f
        };
        assert_eq!(select_tags(&f, &all), tags(&["3.19.1", "3.19", "3.18.4"]));

        let none = TagFilter::default();
        assert_eq!(select_tags(&none, &all).len(), all.len());
    }
}
