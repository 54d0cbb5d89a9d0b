//! `regkeeper status`: per rule, what the state database says.

use serde::Serialize;

use crate::config::Config;
use crate::engine::copy::state_key;
use crate::state::{Deletion, RunRecord, State, StateError, UploadCheckpoint, now_unix};

#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub rule: String,
    pub last_run: Option<RunRecord>,
    /// Start of the last run that left every target in step.
    pub last_success: Option<i64>,
    /// Seconds since `last_success` (or since the first run, when none
    /// succeeded yet); `None` before any run.
    pub lag_seconds: Option<i64>,
    pub tags_pending: i64,
    pub unfinished_uploads: Vec<UploadCheckpoint>,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` is (`authentication`, `not_found`...).
    pub last_error_class: Option<String>,
    pub last_deletions: Vec<Deletion>,
}

/// Status of every configured rule.
pub fn collect(config: &Config, state: &State) -> Result<Vec<RuleStatus>, StateError> {
    let now = now_unix();
    let uploads = state.uploads()?;
    let mut out = Vec::new();
    for rule in &config.rules {
        let last_run = state.last_run(&rule.name)?;
        let last_success = state.last_success(&rule.name)?.map(|r| r.started);
        let basis = match last_success {
            Some(t) => Some(t),
            None => state.first_run_started(&rule.name)?,
        };
        let targets: Vec<(String, String)> = rule
            .targets
            .iter()
            .map(|t| state_key(&t.location))
            .collect();
        let unfinished_uploads = uploads
            .iter()
            .filter(|u| {
                targets.iter().any(|(t, r)| {
                    *t == u.target
                        && (*r == u.repo || r.is_empty() || u.repo.starts_with(&format!("{r}/")))
                })
            })
            .cloned()
            .collect();
        out.push(RuleStatus {
            rule: rule.name.clone(),
            last_success,
            // The same lag as `/metrics` reports, in whole seconds (both ends
            // are whole, so nothing is rounded away).
            lag_seconds: basis.map(|b| crate::clock::lag_seconds(now as f64, b as f64) as i64),
            tags_pending: state.tags_pending(&rule.name)?,
            unfinished_uploads,
            last_error: last_run.as_ref().and_then(|r| r.last_error.clone()),
            last_error_class: last_run.as_ref().and_then(|r| r.error_class.clone()),
            last_deletions: state.deletions(&rule.name, 5)?,
            last_run,
        });
    }
    Ok(out)
}

use crate::human::{ago, size};

/// Human-readable text.
pub fn render_text(rules: &[RuleStatus]) -> String {
    let now = now_unix();
    let mut s = String::new();
    for r in rules {
        s += &format!("rule {}:\n", r.rule);
        match &r.last_run {
            None => s += "  last run:    never\n",
            Some(run) => {
                s += &format!(
                    "  last run:    {} ({}), {}\n",
                    run.result.as_deref().unwrap_or("running or interrupted"),
                    ago(run.started, now),
                    format_args!(
                        "{} copied, {} in sync, {} failed, {}",
                        run.tags_copied,
                        run.tags_in_sync,
                        run.tags_failed,
                        size(run.bytes_copied.max(0) as u64)
                    )
                );
            }
        }
        s += &format!(
            "  last success: {}\n",
            r.last_success
                .map(|t| ago(t, now))
                .unwrap_or_else(|| "never".into())
        );
        s += &format!(
            "  lag:         {}\n",
            r.lag_seconds
                .map(|l| crate::human::duration(l.max(0) as u64))
                .unwrap_or_else(|| "unknown (no run yet)".into())
        );
        s += &format!("  pending tags: {}\n", r.tags_pending);
        if r.unfinished_uploads.is_empty() {
            s += "  unfinished uploads: none\n";
        } else {
            for u in &r.unfinished_uploads {
                s += &format!(
                    "  unfinished upload: {}/{} {} at {} ({})\n",
                    u.target,
                    u.repo,
                    u.digest,
                    size(u.offset),
                    ago(u.updated, now)
                );
            }
        }
        if let Some(e) = &r.last_error {
            match &r.last_error_class {
                Some(class) => s += &format!("  last error:  [{class}] {e}\n"),
                None => s += &format!("  last error:  {e}\n"),
            }
        }
        if let Some(w) = r.last_run.as_ref().and_then(|run| run.warning.as_ref()) {
            s += &format!("  warning:     {w}\n");
        }
        for d in &r.last_deletions {
            // `repo` is the whole repository (the target is the
            // configured one, a prefix of it)
            s += &format!(
                "  deleted:     {} {} [{}] {} ({}, {})\n",
                d.repo,
                d.digest,
                d.tags.join(","),
                d.reason,
                d.status,
                ago(d.time, now)
            );
        }
    }
    s
}
