//! `[rule.retention]`: what a rule may delete, validated.

use std::time::Duration;

use toml::Spanned;

use super::super::raw::{RawRetention, Str};
use super::super::{OrderBy, Retention};
use super::{DEFAULT_MAX_DELETIONS, Loader};

impl Loader<'_, '_> {
    pub(super) fn retention(
        &mut self,
        raw: Spanned<RawRetention>,
        has_source: bool,
        label: &str,
        dropped: &[String],
    ) -> Retention {
        let meant = |key: &str| dropped.iter().any(|k| *k == format!("retention.{key}"));
        let span = raw.span();
        let raw = raw.into_inner();
        let match_tags = match &raw.match_tags {
            Some(list) => self.regexes(list, "retention.match"),
            None if meant("match") => Vec::new(),
            None => {
                self.d.at(
                    span.clone(),
                    format!(
                        "the retention of {label} has no `match`: list the regexes of the tags it may delete, e.g. match = ['^v\\d+\\.\\d+\\.\\d+$']"
                    ),
                );
                Vec::new()
            }
        };
        let keep_last = raw
            .keep_last
            .as_ref()
            .map(|n| self.at_least(Some(n), "keep_last", 0, 0));
        let order_by = self.order_by(raw.order_by.as_ref());
        let older_than = raw
            .older_than
            .as_ref()
            .and_then(|s| self.duration(s, "older_than"));
        let untagged_older_than = raw
            .untagged_older_than
            .as_ref()
            .and_then(|s| self.duration(s, "untagged_older_than"));
        let protect = raw
            .protect
            .as_ref()
            .map(|l| self.regexes(l, "retention.protect"))
            .unwrap_or_default();
        let delete_removed_at_source = raw
            .delete_removed_at_source
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        if delete_removed_at_source && !has_source {
            let b = raw.delete_removed_at_source.as_ref().expect("set");
            self.d.at(
                b.span(),
                format!("delete_removed_at_source needs a source, and {label} has none"),
            );
        }
        let max_deletions_per_run = self.at_least(
            raw.max_deletions_per_run.as_ref(),
            "max_deletions_per_run",
            1,
            DEFAULT_MAX_DELETIONS,
        );
        let deletes_something = raw.keep_last.is_some()
            || raw.older_than.is_some()
            || raw.untagged_older_than.is_some()
            || delete_removed_at_source;
        self.check_deletes_something(deletes_something, span.clone(), label, &meant);
        if keep_last == Some(0) && raw.older_than.is_none() && raw.delete_all_matched != Some(true)
        {
            let at = raw.keep_last.as_ref().map_or(span, |k| k.span());
            self.d.at(
                at,
                format!(
                    "keep_last = 0 without older_than deletes every tag that `match` selects on the targets of {label}; if that is meant, add delete_all_matched = true to its retention, else raise keep_last or add older_than"
                ),
            );
        }
        Retention {
            match_tags,
            keep_last,
            order_by,
            older_than,
            protect,
            untagged_older_than,
            delete_removed_at_source,
            max_deletions_per_run,
        }
    }

    fn order_by(&mut self, raw: Option<&Str>) -> OrderBy {
        let Some(s) = raw else {
            return OrderBy::Semver;
        };
        match s.get_ref().as_str() {
            "semver" => OrderBy::Semver,
            "created" => OrderBy::Created,
            "first_seen" => OrderBy::FirstSeen,
            other => {
                self.d.at(
                    s.span(),
                    format!(
                        "order_by = {other:?} is not known; use \"semver\", \"created\" or \"first_seen\""
                    ),
                );
                OrderBy::Semver
            }
        }
    }

    /// A retention with no deleting key is a mistake, unless one of those
    /// keys was given but refused (its own error already says why).
    fn check_deletes_something(
        &mut self,
        deletes_something: bool,
        span: std::ops::Range<usize>,
        label: &str,
        meant: &dyn Fn(&str) -> bool,
    ) {
        let refused = [
            "keep_last",
            "older_than",
            "untagged_older_than",
            "delete_removed_at_source",
        ]
        .iter()
        .any(|k| meant(k));
        if !deletes_something && !refused {
            self.d.at(
                span,
                format!(
                    "the retention of {label} deletes nothing: set keep_last, older_than, untagged_older_than or delete_removed_at_source"
                ),
            );
        }
    }

    pub(super) fn duration(&mut self, s: &Str, key: &str) -> Option<Duration> {
        humantime::parse_duration(s.get_ref().trim())
            .map_err(|e| {
                self.d.at(
                    s.span(),
                    format!(
                        "{key} = {:?} is not a duration: {e}; write e.g. \"90d\", \"12h\" or \"1h30m\"",
                        s.get_ref()
                    ),
                )
            })
            .ok()
    }
}
