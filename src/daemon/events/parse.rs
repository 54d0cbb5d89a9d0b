//! Event payloads to plain data: a distribution notification envelope or a
//! Harbor webhook becomes a list of [`Notice`]s. Pure; only what a sync
//! needs to know is kept (which repository, on which host, push or delete):
//! the digests in an event are never trusted, the sync reads the source.

use serde::Deserialize;

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A manifest was pushed: sync that repository now.
    Push,
    /// Something was deleted: only schedule a normal run of the rule (an
    /// event itself never deletes anything).
    Delete,
}

/// One event that counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub repository: String,
    /// The registry host the client used (`request.host`), when sent.
    pub host: Option<String>,
    pub change: Change,
}

/// A payload: the events that count, and how many were ignored (pulls, blob
/// pushes, other actions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub notices: Vec<Notice>,
    pub ignored: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed event payload: {0}")]
pub(crate) struct ParseError(#[from] serde_json::Error);

#[derive(Deserialize)]
struct Envelope {
    events: Vec<DistEvent>,
}

#[derive(Deserialize)]
struct DistEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: DistTarget,
    #[serde(default)]
    request: DistRequest,
}

#[derive(Deserialize, Default)]
struct DistTarget {
    #[serde(default, rename = "mediaType")]
    media_type: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
}

#[derive(Deserialize, Default)]
struct DistRequest {
    #[serde(default)]
    host: String,
}

/// Distribution sends one event per blob and per manifest; a blob's media
/// type is `application/octet-stream` (or layer types) and it has no tag.
fn is_manifest(t: &DistTarget) -> bool {
    if !t.tag.is_empty() {
        return true;
    }
    let m = t.media_type.as_str();
    m.contains("manifest") || m.contains("image.index")
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A distribution notification envelope
/// (`application/vnd.docker.distribution.events.v1+json`).
pub(crate) fn distribution(body: &[u8]) -> Result<Parsed, ParseError> {
    let env: Envelope = serde_json::from_slice(body)?;
    let mut out = Parsed::default();
    for e in env.events {
        let change = match e.action.as_str() {
            "push" if is_manifest(&e.target) => Change::Push,
            "delete" => Change::Delete,
            _ => {
                out.ignored += 1;
                continue;
            }
        };
        if e.target.repository.is_empty() {
            out.ignored += 1;
            continue;
        }
        out.notices.push(Notice {
            repository: e.target.repository,
            host: non_empty(&e.request.host),
            change,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct HarborHook {
    #[serde(rename = "type")]
    kind: String,
    event_data: HarborData,
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepo,
}

#[derive(Deserialize)]
struct HarborResource {
    #[serde(default)]
    resource_url: String,
}

#[derive(Deserialize)]
struct HarborRepo {
    #[serde(default)]
    repo_full_name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

/// A Harbor webhook (`{"type": "PUSH_ARTIFACT", "event_data": {"resources":
/// [{"resource_url": "host/ns/repo:tag"}], "repository": {"repo_full_name":
/// "ns/repo"}}}`). The host comes from the first resource URL.
pub(crate) fn harbor(body: &[u8]) -> Result<Parsed, ParseError> {
    let hook: HarborHook = serde_json::from_slice(body)?;
    let change = match hook.kind.as_str() {
        "PUSH_ARTIFACT" => Change::Push,
        "DELETE_ARTIFACT" => Change::Delete,
        _ => {
            return Ok(Parsed {
                notices: Vec::new(),
                ignored: 1,
            });
        }
    };
    let r = &hook.event_data.repository;
    let repository = if !r.repo_full_name.is_empty() {
        r.repo_full_name.clone()
    } else if !r.namespace.is_empty() && !r.name.is_empty() {
        format!("{}/{}", r.namespace, r.name)
    } else {
        return Ok(Parsed {
            notices: Vec::new(),
            ignored: 1,
        });
    };
    let host = hook
        .event_data
        .resources
        .iter()
        .find_map(|res| res.resource_url.split_once('/').map(|(h, _)| h))
        .and_then(non_empty);
    Ok(Parsed {
        notices: vec![Notice {
            repository,
            host,
            change,
        }],
        ignored: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_keeps_manifest_pushes_and_deletes_only() {
        let body = br#"{"events": [
          {"action": "push", "target": {"mediaType": "application/octet-stream",
             "repository": "it/app", "digest": "sha256:aa"}, "request": {"host": "h:1"}},
          {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "repository": "it/app", "tag": "v1"}, "request": {"host": "h:1"}},
          {"action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
             "repository": "it/idx", "digest": "sha256:bb"}},
          {"action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "repository": "it/app", "tag": "v1"}},
          {"action": "delete", "target": {"repository": "it/gone", "digest": "sha256:cc"}},
          {"action": "mount", "target": {"repository": "it/app"}}
        ]}"#;
        let p = distribution(body).unwrap();
        assert_eq!(p.ignored, 3);
        let got: Vec<_> = p
            .notices
            .iter()
            .map(|n| (n.repository.as_str(), n.host.as_deref(), n.change.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("it/app", Some("h:1"), Change::Push),
                ("it/idx", None, Change::Push),
                ("it/gone", None, Change::Delete),
            ]
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(distribution(b"{not json").is_err());
        assert!(distribution(br#"{"events": 3}"#).is_err());
        assert!(harbor(br#"{"type": "PUSH_ARTIFACT"}"#).is_err());
    }

    #[test]
    fn harbor_push_names_repository_and_host() {
        let body = br#"{"type": "PUSH_ARTIFACT", "occur_at": 1700000000, "operator": "ci",
          "event_data": {"resources": [{"digest": "sha256:aa", "tag": "v1",
             "resource_url": "harbor.example.com/library/app:v1"}],
           "repository": {"date_created": 1, "name": "app", "namespace": "library",
             "repo_full_name": "library/app", "repo_type": "private"}}}"#;
        let p = harbor(body).unwrap();
        assert_eq!(
            p.notices,
            [Notice {
                repository: "library/app".into(),
                host: Some("harbor.example.com".into()),
                change: Change::Push
            }]
        );
        let pull = br#"{"type": "PULL_ARTIFACT", "event_data": {"repository": {"repo_full_name": "a/b"}}}"#;
        assert_eq!(harbor(pull).unwrap().ignored, 1);
    }
}
