//! The distribution spec's name grammar: the one check for tags and
//! repository paths that come from outside (a registry, a layout, an event,
//! the config) before they reach a URL or a file.

use super::MAX_NAME_LEN;

/// A tag as the distribution spec allows it:
/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`. The one check for every tag that
/// comes from outside (a tag list, an `index.json`, the config) before it
/// reaches a URL or a file.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// One path component as the distribution spec allows it: lowercase
/// alphanumerics, separated by one `.`, one or two `_`, or any number of `-`
/// (so `a_-_b` is refused here rather than by the registry with a bare 404).
pub(crate) fn valid_repo_component(c: &str) -> bool {
    static COMPONENT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$").expect("component regex")
    });
    COMPONENT.is_match(c)
}

/// A repository path (`team/app`): components of the grammar above joined
/// by single `/`, at most [`MAX_NAME_LEN`] bytes. So never absolute, never
/// `..` or `.`, never empty, never anything a URL or a file system would
/// read as more than a name.
pub(crate) fn valid_repo_path(path: &str) -> bool {
    !path.is_empty() && path.len() <= MAX_NAME_LEN && path.split('/').all(valid_repo_component)
}

/// What kind of name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    Tag,
    Repository,
    /// A valid repository path whose `oci:` target directory resolves
    /// (through a symlink) outside the target's directory.
    Escapes,
}

/// A name from outside (a registry, a layout, an event) that the
/// distribution grammar does not allow: it is skipped, never used in a URL
/// or a path. Displays the name escaped (`{:?}`) and shortened, so a hostile
/// name can neither forge log lines nor flood them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {} {}", self.kind_word(), self.shown(), self.rule())]
pub struct InvalidName {
    pub(crate) kind: NameKind,
    pub(crate) name: String,
}

/// Longest name shown whole in a warning.
const SHOWN_MAX: usize = 160;

impl InvalidName {
    pub(crate) fn new(kind: NameKind, name: &str) -> Self {
        InvalidName {
            kind,
            name: name.to_string(),
        }
    }
    pub(crate) fn kind_word(&self) -> &'static str {
        match self.kind {
            NameKind::Tag => "tag",
            NameKind::Repository | NameKind::Escapes => "repository",
        }
    }
    fn rule(&self) -> &'static str {
        match self.kind {
            NameKind::Tag => {
                "is not a valid tag (tags are [A-Za-z0-9_][A-Za-z0-9._-]{0,127}); skipped"
            }
            NameKind::Escapes => {
                "resolves (through a symlink) outside the oci: target directory; skipped"
            }
            NameKind::Repository => {
                "is not a valid repository path (lowercase [a-z0-9] components separated by '.', '_', \
                 '__' or '-'s, joined by '/', at most 255 characters); skipped"
            }
        }
    }
    /// The name as written in messages: escaped, cut to [`SHOWN_MAX`] characters.
    pub(crate) fn shown(&self) -> String {
        let n = self.name.chars().count();
        if n <= SHOWN_MAX {
            return format!("{:?}", self.name);
        }
        let head: String = self.name.chars().take(SHOWN_MAX).collect();
        format!("{head:?}... ({n} characters)")
    }
}

/// `Ok` when `tag` is a valid tag, else the [`InvalidName`] to report.
pub(crate) fn check_tag(tag: &str) -> Result<(), InvalidName> {
    if valid_tag(tag) {
        Ok(())
    } else {
        Err(InvalidName::new(NameKind::Tag, tag))
    }
}

/// `Ok` when `path` is a valid repository path, else the [`InvalidName`].
pub(crate) fn check_repo_path(path: &str) -> Result<(), InvalidName> {
    if valid_repo_path(path) {
        Ok(())
    } else {
        Err(InvalidName::new(NameKind::Repository, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Location;

    fn reg(host: &str, repo: &str) -> Location {
        Location::Registry {
            host: host.into(),
            repo: repo.into(),
        }
    }

    #[test]
    fn the_tag_grammar() {
        let max = "a".repeat(128);
        for ok in [
            "v1",
            "_x",
            "1.2.3",
            "V1-rc_2",
            "sha256-abc.sig",
            max.as_str(),
        ] {
            assert!(valid_tag(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".v1",
            "-v1",
            "..",
            "../../../victim/app/manifests/prod",
            "%2e%2e/%2e%2e/victim",
            "v1?x=1",
            "v1#frag",
            "sp ace",
            "a/b",
            "a:b",
            "v1\n",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_tag(bad), "{bad:?}");
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_repository_path_grammar() {
        for ok in ["a", "team/app", "a-b/c__d/e.f", "x0/9y"] {
            assert!(valid_repo_path(ok), "{ok}");
        }
        let long = format!("a/{}", "b".repeat(254));
        for bad in [
            "",
            "/etc/x",
            "hostile/../victim/app",
            "..",
            "./a",
            "a//b",
            "a/",
            "%2e%2e/victim",
            "Upper",
            "a?b",
            "a#b",
            "a b",
            "a\\b",
            long.as_str(),
        ] {
            assert!(!valid_repo_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn join_refuses_what_would_leave_the_prefix() {
        let reg_prefix = reg("127.0.0.1:5000", "team");
        assert_eq!(
            reg_prefix.join("a/b").unwrap(),
            reg("127.0.0.1:5000", "team/a/b")
        );
        let layout = Location::Layout {
            path: "/srv/mirror".into(),
        };
        for bad in ["../victim", "/etc/x", "a/../../b", "A", ""] {
            assert!(reg_prefix.join(bad).is_err(), "{bad:?}");
            assert!(layout.join(bad).is_err(), "{bad:?}");
        }
        // the whole name (host/repository) stays within 255 characters
        let fits = "a".repeat(255 - "127.0.0.1:5000/team/".len());
        assert!(reg_prefix.join(&fits).is_ok());
        assert!(reg_prefix.join(&format!("{fits}a")).is_err());
    }

    #[test]
    fn invalid_names_are_shown_escaped_and_short() {
        let e = check_tag("a\nFAKE log line").unwrap_err().to_string();
        assert!(e.contains(r#""a\nFAKE log line""#), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = check_tag(&"x".repeat(5000)).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("5000 characters"), "{e}");
    }
}
