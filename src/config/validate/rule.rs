//! `[[rule]]`: names, sources and targets, and the keys `[defaults]` may set.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::DeValue;

use super::super::raw::RawRule;
use super::super::{Rule, Schedule, TagFilter};
use super::{Common, DEFAULT_SCHEDULE, Loader};
use crate::reference::RepoSpec;

impl Loader<'_, '_> {
    pub(super) fn rules(&mut self, value: Spanned<DeValue<'_>>, defaults: &Common) -> Vec<Rule> {
        let span = value.span();
        let items: Vec<Spanned<DeValue<'_>>> = match value.into_inner() {
            DeValue::Array(a) => a.iter().cloned().collect(),
            DeValue::Table(_) => {
                self.d.at(
                    span,
                    "`rule` must be an array of tables: write each rule under [[rule]] (double brackets)",
                );
                return Vec::new();
            }
            _ => {
                self.d.at(
                    span,
                    "`rule` must be an array of tables, each under [[rule]]",
                );
                return Vec::new();
            }
        };
        // Name -> offset of the first rule that uses it.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for item in items {
            let span = item.span();
            let (raw, dropped) = self.section::<RawRule>(item, "[[rule]]");
            if let Some(raw) = raw {
                out.push(self.rule(span, raw, &dropped, defaults, &mut seen));
            }
        }
        out
    }

    fn rule(
        &mut self,
        span: Range<usize>,
        mut raw: RawRule,
        dropped: &[String],
        defaults: &Common,
        seen: &mut HashMap<String, usize>,
    ) -> Rule {
        let name = match &raw.name {
            None => {
                if !dropped.iter().any(|k| k == "name") {
                    self.d.at(
                        span.clone(),
                        "this [[rule]] has no name; add name = \"...\" ([a-z0-9_-]+, unique)",
                    );
                }
                String::new()
            }
            Some(n) => {
                let name = n.get_ref().clone();
                if !valid_rule_name(&name) {
                    self.d.at(
                        n.span(),
                        format!(
                            "rule name {name:?} is not valid: use lowercase letters, digits, '_' and '-' only (it becomes a metrics label)"
                        ),
                    );
                } else if let Some(&first) = seen.get(&name) {
                    self.d.at(
                        n.span(),
                        format!(
                            "duplicate rule name {name:?}: line {} already uses it; rule names must be unique",
                            self.d.line_of(first)
                        ),
                    );
                } else {
                    seen.insert(name.clone(), n.span().start);
                }
                name
            }
        };
        let label = if name.is_empty() {
            "this rule".to_string()
        } else {
            format!("rule {name:?}")
        };

        let source = raw.source.as_ref().and_then(|s| {
            self.repo_spec(s.get_ref())
                .map_err(|e| self.d.at(s.span(), format!("source: {e}")))
                .ok()
        });
        let targets = self.targets(&raw, source.as_ref(), &label, span.clone(), dropped);

        let common = self.common(raw.take_common()).or(defaults);
        let retention = raw
            .retention
            .take()
            .map(|r| self.retention(r, raw.source.is_some(), &label, dropped));
        let verify = match raw.verify.take() {
            Some(v) => self.verify(v, "[rule.verify]"),
            None => self.source_verify(source.as_ref()),
        };
        let meant_either = dropped.iter().any(|k| k == "source" || k == "retention");
        if raw.source.is_none() && retention.is_none() && !meant_either {
            self.d.at(
                span,
                format!(
                    "{label} has neither source nor retention: nothing to do; add source = \"...\" to mirror, or a [rule.retention] table to clean up"
                ),
            );
        }
        Rule {
            name,
            source,
            targets,
            schedule: common.schedule.unwrap_or(Schedule::Every(DEFAULT_SCHEDULE)),
            tags: TagFilter {
                include: common.include.unwrap_or_default(),
                exclude: common.exclude.unwrap_or_default(),
                semver: common.semver,
                latest: common.latest,
            },
            platforms: common.platforms.unwrap_or_default(),
            referrers: common.referrers.unwrap_or(true),
            referrers_artifact_types: common.referrers_artifact_types.unwrap_or_default(),
            immutable: common.immutable.unwrap_or(false),
            untagged: common.untagged.unwrap_or(true),
            foreign_layers: common.foreign_layers.unwrap_or(false),
            retention,
            verify,
        }
    }

    fn targets(
        &mut self,
        raw: &RawRule,
        source: Option<&RepoSpec>,
        label: &str,
        rule_span: Range<usize>,
        dropped: &[String],
    ) -> Vec<RepoSpec> {
        let Some(list) = &raw.targets else {
            if !dropped.iter().any(|k| k == "targets") {
                self.d.at(
                    rule_span,
                    format!("{label} has no targets; add targets = [\"registry.example.com/mirror/repo\"]"),
                );
            }
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.d.at(
                list.span(),
                format!("{label} has an empty targets list; name at least one target"),
            );
            return Vec::new();
        }
        let mut out: Vec<RepoSpec> = Vec::new();
        for t in list.get_ref() {
            let spec = match self.repo_spec(t.get_ref()) {
                Ok(spec) => spec,
                Err(e) => {
                    self.d.at(t.span(), format!("target: {e}"));
                    continue;
                }
            };
            if let Some(src) = source {
                if src.wildcard && !spec.wildcard {
                    self.d.at(
                        t.span(),
                        format!(
                            "target {:?} must end in /* because the source {src} does: each source repository is mirrored under the target prefix",
                            t.get_ref()
                        ),
                    );
                } else if !src.wildcard && spec.wildcard {
                    self.d.at(
                        t.span(),
                        format!(
                            "target {:?} ends in /* but the source {src} is one repository; name one target repository, or end the source in /* too",
                            t.get_ref()
                        ),
                    );
                } else if *src == spec {
                    self.d.at(
                        t.span(),
                        format!("target {:?} is the source itself", t.get_ref()),
                    );
                }
            }
            if out.contains(&spec) {
                self.d.at(
                    t.span(),
                    format!("target {:?} is listed twice", t.get_ref()),
                );
                continue;
            }
            out.push(spec);
        }
        out
    }
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
