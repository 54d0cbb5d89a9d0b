//! Which (rule, repository) an event is about, and the rule restricted to
//! that one repository. Pure.

use crate::config::Rule;
use crate::daemon::Scope;
use crate::reference::{Location, RepoSpec, api_host, valid_repo_path};

/// What one pass of a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Pass {
    /// One repository: its path under the rule's `/*` prefix (`""` for a
    /// rule on one repository). Plans with the rule's retention, deletes
    /// nothing.
    Repo(String),
    /// Every repository of the rule, deleting nothing (what pending
    /// repository passes collapse into when too many are waiting).
    AllRepos,
    /// A normal run, as the schedule would start it (with deletions).
    Normal,
}

impl Pass {
    /// How much of the rule the pass stands for: only a normal run deletes
    /// and puts the whole rule in step (its lag).
    pub(crate) fn scope(&self) -> Scope {
        match self {
            Pass::Normal => Scope::Whole,
            Pass::Repo(_) | Pass::AllRepos => Scope::Narrowed,
        }
    }
}

/// The rule's source repository, split into host and path, when it is a
/// registry.
fn source_parts(rule: &Rule) -> Option<(&str, &str, bool)> {
    let spec = rule.source.as_ref()?;
    match &spec.location {
        Location::Registry { host, repo } => Some((host, repo, spec.wildcard)),
        Location::Layout { .. } => None,
    }
}

/// The repository's path relative to what the rule's source covers.
fn covered(prefix: &str, wildcard: bool, repository: &str) -> Option<String> {
    if !wildcard {
        return (prefix == repository).then(String::new);
    }
    if prefix.is_empty() {
        return valid_repo_path(repository).then(|| repository.to_string());
    }
    repository
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|rel| valid_repo_path(rel))
        .map(str::to_string)
}

fn same_host(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || api_host(a).eq_ignore_ascii_case(api_host(b))
}

/// The rules (by name) whose source covers `repository`, with the path
/// under each rule's prefix. When the matching rules read more than one
/// host, `host` (the event's `request.host`) picks among them; when it
/// names none of them, all stay (a sync only reads the source).
pub(crate) fn matching(
    rules: &[Rule],
    repository: &str,
    host: Option<&str>,
) -> Vec<(String, String)> {
    let found: Vec<(&str, String, String)> = rules
        .iter()
        .filter_map(|r| {
            let (h, prefix, wildcard) = source_parts(r)?;
            let rel = covered(prefix, wildcard, repository)?;
            Some((h, r.name.clone(), rel))
        })
        .collect();
    let hosts_differ = found.windows(2).any(|w| !same_host(w[0].0, w[1].0));
    let picked: Vec<&(&str, String, String)> = match host {
        Some(h) if hosts_differ => found.iter().filter(|f| same_host(f.0, h)).collect(),
        _ => Vec::new(),
    };
    if picked.is_empty() {
        found.into_iter().map(|(_, n, rel)| (n, rel)).collect()
    } else {
        picked
            .into_iter()
            .map(|(_, n, rel)| (n.clone(), rel.clone()))
            .collect()
    }
}

/// The rule as one pass runs it: for a repository, the source and every
/// target narrowed to it (the same pairs, and so the same state keys and
/// journal, as a full run of a `/*` rule produces). Retention stays: the
/// pass plans as the full rule does for that repository (never copying what
/// it would delete); that it sends no deletion is its `scope`'s business.
pub(crate) fn restrict(rule: &Rule, pass: &Pass) -> Rule {
    let mut r = rule.clone();
    match pass {
        Pass::Normal | Pass::AllRepos => {}
        Pass::Repo(rel) => {
            // `rel` passed `covered` (a valid repository path); should it
            // not join, the pass covers the whole prefix, as a full run does.
            let narrow = |spec: &RepoSpec| match spec.location.join(rel) {
                Ok(location) if spec.wildcard && !rel.is_empty() => RepoSpec {
                    location,
                    wildcard: false,
                },
                _ => spec.clone(),
            };
            r.source = r.source.as_ref().map(narrow);
            if rule.source.as_ref().is_some_and(|s| s.wildcard) {
                r.targets = r.targets.iter().map(narrow).collect();
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<Rule> {
        let c = crate::config::parse(
            &format!("version = 1\n[daemon]\nstate_dir = \"/tmp/x\"\n{text}"),
            std::path::Path::new("t.toml"),
        )
        .expect("valid");
        c.rules
    }

    fn rule(name: &str, source: &str, target: &str) -> String {
        format!(
            "[[rule]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = [\"{target}\"]\nschedule = \"@every 1h\"\n"
        )
    }

    #[test]
    fn exact_and_prefix_sources_cover_their_repositories() {
        let rs = rules(&format!(
            "{}{}",
            rule("one", "a.example:5000/it/app", "b.example/m/app"),
            rule("team", "a.example:5000/team/*", "b.example/m/*"),
        ));
        assert_eq!(
            matching(&rs, "it/app", None),
            [("one".into(), String::new())]
        );
        assert_eq!(
            matching(&rs, "team/x/y", Some("a.example:5000")),
            [("team".into(), "x/y".into())]
        );
        // "teamx/y" is not under "team/".
        assert!(matching(&rs, "teamx/y", Some("a.example:5000")).is_empty());
        assert!(matching(&rs, "team", None).is_empty());
        assert!(matching(&rs, "it/app2", None).is_empty());
        // A whole registry covers every repository.
        let all = rules(&rule("all", "c.example/*", "b.example/c/*"));
        assert_eq!(
            matching(&all, "it/app", None),
            [("all".into(), "it/app".into())]
        );
    }

    #[test]
    fn an_event_repository_that_is_not_a_repository_path_selects_nothing() {
        let rs = rules(&format!(
            "{}{}",
            rule("team", "a.example:5000/team/*", "b.example/m/*"),
            rule("all", "c.example/*", "b.example/c/*"),
        ));
        for bad in [
            "team/../victim/app",
            "team/%2e%2e/victim",
            "team//etc/x",
            "team/Upper",
            "/etc/x",
            "../x",
        ] {
            assert!(matching(&rs, bad, None).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn request_host_picks_among_rules_sharing_a_path() {
        let rs = rules(&format!(
            "{}{}",
            rule("east", "east.example/it/app", "t.example/e/app"),
            rule("west", "west.example/it/app", "t.example/w/app"),
        ));
        assert_eq!(
            matching(&rs, "it/app", Some("west.example")),
            [("west".into(), String::new())]
        );
        // No host, or one naming neither: both (a sync only reads).
        assert_eq!(matching(&rs, "it/app", None).len(), 2);
        assert_eq!(matching(&rs, "it/app", Some("elsewhere")).len(), 2);
    }

    #[test]
    fn a_repository_pass_narrows_source_and_targets_and_keeps_retention() {
        let rs = rules(
            "[[rule]]\nname = \"team\"\nsource = \"a.example/team/*\"\ntargets = [\"b.example/m/*\"]\nschedule = \"@every 1h\"\n[rule.retention]\nmatch = [\"^v\"]\nkeep_last = 3\n",
        );
        let r = restrict(&rs[0], &Pass::Repo("x/y".into()));
        assert_eq!(r.source.as_ref().unwrap().to_string(), "a.example/team/x/y");
        assert_eq!(r.targets[0].to_string(), "b.example/m/x/y");
        // The same plan as a full run for that repository: retention stays
        // (what it would delete is not copied); the scope leaves deletions out.
        let text = |r: &Rule| format!("{r:?}");
        assert_eq!(
            format!("{:?}", r.retention),
            format!("{:?}", rs[0].retention)
        );
        assert!(r.retention.is_some());
        assert_eq!(text(&restrict(&rs[0], &Pass::AllRepos)), text(&rs[0]));
        assert_eq!(text(&restrict(&rs[0], &Pass::Normal)), text(&rs[0]));
        assert_eq!(Pass::Repo("x/y".into()).scope(), Scope::Narrowed);
        assert_eq!(Pass::AllRepos.scope(), Scope::Narrowed);
        assert_eq!(Pass::Normal.scope(), Scope::Whole);
    }
}
