//! Where images live, as users write it: `host[:port]/path/repo[:tag|@digest]`
//! for a registry and `oci:DIR[:tag|@digest]` for an OCI image-layout directory.

use std::fmt;
use std::path::PathBuf;

use crate::oci::Digest;

mod names;
pub use names::InvalidName;
use names::valid_repo_component;
pub(crate) use names::{NameKind, check_repo_path, check_tag, valid_repo_path, valid_tag};

/// Docker Hub's name in references and the host its API is served from.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A repository: one place a set of tags lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// `host` is the registry as written (the key for `[registries."host"]`),
    /// `repo` the repository path (`library/` added for one-part Docker Hub names).
    Registry { host: String, repo: String },
    /// An OCI image-layout directory; one directory is one repository.
    Layout { path: PathBuf },
}

impl Location {
    /// The same location with `child` appended (used to map repositories found
    /// under a `/*` source onto the target prefix). `child` comes from a
    /// catalog, a directory listing or an event, so it is checked first: only
    /// a relative repository path of the distribution grammar is joined (no
    /// `..`, no absolute path, no empty or upper-case component), and the
    /// whole repository name must stay within the length limit.
    pub fn join(&self, child: &str) -> Result<Location, InvalidName> {
        let refuse = || InvalidName::new(NameKind::Repository, child);
        if !valid_repo_path(child) {
            return Err(refuse());
        }
        Ok(match self {
            Location::Registry { host, repo } => {
                let repo = if repo.is_empty() {
                    child.to_string()
                } else {
                    format!("{repo}/{child}")
                };
                if host.len() + 1 + repo.len() > MAX_NAME_LEN {
                    return Err(refuse());
                }
                Location::Registry {
                    host: host.clone(),
                    repo,
                }
            }
            Location::Layout { path } => Location::Layout {
                path: path.join(child),
            },
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry { host, repo } => write!(f, "{host}/{repo}"),
            Location::Layout { path } => write!(f, "oci:{}", path.display()),
        }
    }
}

/// The API host for a registry name as written.
pub fn api_host(host: &str) -> &str {
    if host == DOCKER_HUB || host == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        host
    }
}

/// Tag or digest within a repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t,
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image: a location plus an optional tag or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub location: Location,
    pub reference: Option<Reference>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        match &self.reference {
            Some(Reference::Tag(t)) => write!(f, ":{t}"),
            Some(Reference::Digest(d)) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// A rule's source or target: a repository, or with `/*` every repository under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    pub location: Location,
    pub wildcard: bool,
}

impl fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if self.wildcard {
            f.write_str("/*")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

fn bad(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// The distribution spec's limit on `host/name` (clients and registries
/// refuse longer names).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// `docker://` (skopeo's transport prefix) names a registry reference.
fn strip_transport(input: &str) -> Result<&str, ReferenceError> {
    let s = input.trim();
    if s.starts_with("oci:") {
        return Ok(s);
    }
    if let Some(rest) = s.strip_prefix("docker://") {
        return Ok(rest);
    }
    if let Some(prefix) = foreign_transport(s) {
        return Err(bad(
            input,
            format!(
                "{prefix}: is a transport regkeeper does not support; it reads and writes \
                 registries (host/repo[:tag|@digest], docker:// accepted) and OCI layout \
                 directories (oci:DIR[:tag])"
            ),
        ));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(bad(
            input,
            format!(
                "{scheme}:// is not a transport regkeeper knows; write host/repo (docker:// is accepted) or oci:DIR"
            ),
        ));
    }
    Ok(s)
}

/// Transports of containers/image (skopeo, podman) that regkeeper does not
/// speak; named so that `dir:x` is refused as such, not looked up as a host.
const FOREIGN_TRANSPORTS: [&str; 8] = [
    "dir",
    "docker-archive",
    "oci-archive",
    "containers-storage",
    "docker-daemon",
    "ostree",
    "sif",
    "tarball",
];

/// The transport prefix of `s` when it has one other than `oci:` and
/// `docker://`: a known foreign one, or `word:` followed by something that
/// is neither a tag (`alpine:3.19`) nor a port (`localhost:5000/app`).
fn foreign_transport(s: &str) -> Option<&str> {
    let (prefix, rest) = s.split_once(':')?;
    let word = !prefix.is_empty()
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !word || prefix == "oci" || rest.starts_with("//") {
        return None;
    }
    if FOREIGN_TRANSPORTS.contains(&prefix) {
        return Some(prefix);
    }
    // `name:tag` has no `/` after the colon; `host:port/repo` has digits
    // up to the first `/`.
    let port = rest.split('/').next().unwrap_or("");
    let is_port = !port.is_empty() && port.chars().all(|c| c.is_ascii_digit());
    (rest.contains('/') && !is_port).then_some(prefix)
}

/// Splits `name[:tag][@digest]` where name may hold a `host:port`.
fn split_reference(input: &str, s: &str) -> Result<(String, Option<Reference>), ReferenceError> {
    if let Some((name, digest)) = s.split_once('@') {
        let d = Digest::parse(digest).map_err(|e| bad(input, e.to_string()))?;
        // `name:tag@digest`: the digest wins, as docker does.
        let name = strip_tag(name).0;
        return Ok((name.to_string(), Some(Reference::Digest(d))));
    }
    let (name, tag) = strip_tag(s);
    match tag {
        Some(t) if !valid_tag(t) => Err(bad(input, format!("{t:?} is not a valid tag"))),
        Some(t) => Ok((name.to_string(), Some(Reference::Tag(t.to_string())))),
        None => Ok((name.to_string(), None)),
    }
}

/// `a/b:tag` -> (`a/b`, Some(tag)); a colon before the last `/` is a port.
fn strip_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    }
}

fn parse_registry_name(input: &str, name: &str) -> Result<Location, ReferenceError> {
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let looks_like_host = first.contains('.') || first.contains(':') || first == "localhost";
    let (host, repo) = match (looks_like_host, rest) {
        (true, Some(r)) => (first.to_string(), r.to_string()),
        (true, None) => (first.to_string(), String::new()),
        (false, _) => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let host = if host == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        host
    };
    let repo = if host == DOCKER_HUB && !repo.is_empty() && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    if !repo.is_empty() {
        if let Some(c) = repo.split('/').find(|c| !valid_repo_component(c)) {
            return Err(bad(
                input,
                format!(
                    "repository path component {c:?} is not allowed: lowercase letters and digits, \
                     separated by one '.', one or two '_', or '-'s (e.g. \"my-app\", \"team/app_v2\")"
                ),
            ));
        }
        let len = host.len() + 1 + repo.len();
        if len > MAX_NAME_LEN {
            return Err(bad(
                input,
                format!(
                    "the name is {len} characters long; registries accept at most {MAX_NAME_LEN} (host/repository)"
                ),
            ));
        }
    }
    Ok(Location::Registry { host, repo })
}

impl ImageRef {
    /// Parses an image reference (`copy`'s SRC and DST).
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let s = strip_transport(input)?;
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad(input, "oci: needs a directory"));
            }
            let (path, reference) = split_reference(input, rest)?;
            return Ok(ImageRef {
                location: Location::Layout {
                    path: PathBuf::from(path),
                },
                reference,
            });
        }
        let (name, reference) = split_reference(input, s)?;
        let location = parse_registry_name(input, &name)?;
        if matches!(&location, Location::Registry { repo, .. } if repo.is_empty()) {
            return Err(bad(
                input,
                "a repository path is needed after the registry host",
            ));
        }
        Ok(ImageRef {
            location,
            reference,
        })
    }
}

impl RepoSpec {
    /// Parses a rule's `source` or one of its `targets`: no tag or digest; a
    /// trailing `/*` selects every repository under the prefix.
    pub fn parse(input: &str) -> Result<RepoSpec, ReferenceError> {
        let s = strip_transport(input)?;
        let (s, wildcard) = match s.strip_suffix("/*") {
            Some(p) => (p, true),
            None => (s, false),
        };
        if s.contains('*') {
            return Err(bad(
                input,
                "only a trailing `/*` is supported as a wildcard",
            ));
        }
        if let Some(path) = s.strip_prefix("oci:") {
            if path.is_empty() {
                return Err(bad(input, "oci: needs a directory"));
            }
            return Ok(RepoSpec {
                location: Location::Layout {
                    path: PathBuf::from(path),
                },
                wildcard,
            });
        }
        // `host:port/*`: with nothing after the host, the colon is a port.
        let (name, reference) = if wildcard && !s.contains('/') {
            (s.to_string(), None)
        } else {
            split_reference(input, s)?
        };
        if reference.is_some() {
            return Err(bad(
                input,
                "a rule names repositories, not tags or digests (use tags.include)",
            ));
        }
        let location = parse_registry_name(input, &name)?;
        if !wildcard && matches!(&location, Location::Registry { repo, .. } if repo.is_empty()) {
            return Err(bad(
                input,
                "a repository path is needed after the registry host (or `/*` for all)",
            ));
        }
        Ok(RepoSpec { location, wildcard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(host: &str, repo: &str) -> Location {
        Location::Registry {
            host: host.into(),
            repo: repo.into(),
        }
    }

    #[test]
    fn image_refs() {
        let cases = [
            ("alpine", reg("docker.io", "library/alpine"), None),
            (
                "docker.io/alpine:3.19",
                reg("docker.io", "library/alpine"),
                Some(Reference::Tag("3.19".into())),
            ),
            (
                "127.0.0.1:5000/a/b:v1",
                reg("127.0.0.1:5000", "a/b"),
                Some(Reference::Tag("v1".into())),
            ),
            ("localhost/x", reg("localhost", "x"), None),
            ("ghcr.io/org/img", reg("ghcr.io", "org/img"), None),
        ];
        for (input, loc, reference) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.location, loc, "{input}");
            assert_eq!(r.reference, reference, "{input}");
        }
        let d = format!("sha256:{}", "b".repeat(64));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a@{d}")).unwrap();
        assert_eq!(
            r.reference,
            Some(Reference::Digest(Digest::parse(&d).unwrap()))
        );
        let r = ImageRef::parse("oci:/srv/dr/alpine:3.19").unwrap();
        assert_eq!(
            r.location,
            Location::Layout {
                path: "/srv/dr/alpine".into()
            }
        );
        assert_eq!(r.reference, Some(Reference::Tag("3.19".into())));
        let r = ImageRef::parse("oci:rel/dir").unwrap();
        assert_eq!(r.reference, None);
    }

    #[test]
    fn bad_refs() {
        for input in [
            "Upper/Case",
            "127.0.0.1:5000",
            "host.io/a:bad tag",
            "a@sha256:12",
            "oci:",
            "127.0.0.1:5000/a_-_b",
            "127.0.0.1:5000/a__-b",
            "127.0.0.1:5000/-a",
            "127.0.0.1:5000/a.",
            "127.0.0.1:5000/a..b",
            "https://127.0.0.1:5000/a",
        ] {
            assert!(ImageRef::parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn names_the_distribution_spec_allows() {
        for ok in ["a-b", "a--b", "a__b", "a_b", "a.b", "team/app_v2", "x0/9y"] {
            assert!(
                RepoSpec::parse(&format!("127.0.0.1:5000/{ok}")).is_ok(),
                "{ok}"
            );
        }
        let long = format!("127.0.0.1:5000/{}", "a".repeat(250));
        let e = RepoSpec::parse(&long).unwrap_err();
        assert!(e.reason.contains("at most 255"), "{e}");
        let fits = format!("127.0.0.1:5000/{}", "a".repeat(255 - 15));
        assert!(RepoSpec::parse(&fits).is_ok());
    }

    #[test]
    fn docker_transport_prefix() {
        for foreign in [
            "dir:/tmp/x",
            "docker-archive:app.tar",
            "docker-archive:/tmp/app.tar:app:v1",
            "containers-storage:localhost/app:v1",
            "docker-daemon:app:v1",
            "oci-archive:/tmp/a.tar",
            "weird:some/path",
        ] {
            let e = ImageRef::parse(foreign).unwrap_err();
            assert!(e.reason.contains("does not support"), "{foreign}: {e}");
            assert!(e.reason.contains("oci:DIR"), "{foreign}: {e}");
        }
        for fine in [
            "alpine:3.19",
            "localhost:5000/app:v1",
            "myhost:5000/a/b",
            "app",
        ] {
            ImageRef::parse(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
        let r = ImageRef::parse("docker://127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(r.location, reg("127.0.0.1:5000", "a/b"));
        let s = RepoSpec::parse("docker://docker.io/alpine").unwrap();
        assert_eq!(s.location, reg("docker.io", "library/alpine"));
        let e = ImageRef::parse("containers-storage://x").unwrap_err();
        assert!(e.reason.contains("docker:// is accepted"), "{e}");
    }

    #[test]
    fn repo_specs() {
        let s = RepoSpec::parse("127.0.0.1:5000/team/*").unwrap();
        assert!(s.wildcard);
        assert_eq!(s.location, reg("127.0.0.1:5000", "team"));
        let s = RepoSpec::parse("127.0.0.1:5000/*").unwrap();
        assert_eq!(s.location, reg("127.0.0.1:5000", ""));
        assert!(RepoSpec::parse("127.0.0.1:5000/a:tag").is_err());
        assert!(RepoSpec::parse("127.0.0.1:5000/a*b").is_err());
        assert_eq!(
            s.location.join("x/y").unwrap(),
            reg("127.0.0.1:5000", "x/y")
        );
    }
}
