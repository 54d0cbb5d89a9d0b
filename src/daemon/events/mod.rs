//! Event-driven sync (SPEC section 10): registry notifications, Harbor
//! webhooks and a trigger URL start passes of the rules they concern.
//!
//! A request is checked (bearer token, size, JSON), reduced to (rule, pass)
//! keys (`matcher`), and added to a coalescing set (`pending`); the
//! scheduler loop takes due keys whose rule is not running and starts them
//! (`launch`). An event only triggers: the pass reads the source as any run
//! does and makes the rule's plan for what it covers (retention included,
//! so it never copies what retention would delete), but sends no deletion.

mod launch;
mod matcher;
mod parse;
mod pending;
mod routes;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus::{IntCounterVec, Opts};
use tokio::sync::Notify;

use crate::config::Rule;
use crate::metrics::{Metrics, MetricsError};
use crate::secret::Secret;
use crate::shard::Shard;

pub(crate) use launch::Launch;
use matcher::Pass;
use parse::{Change, Parsed};
use pending::{Key, Pending};

/// Where an event came from (the `kind` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Distribution,
    Harbor,
    Trigger,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Distribution => "distribution",
            Kind::Harbor => "harbor",
            Kind::Trigger => "trigger",
        }
    }
}

/// What became of an event (the `result` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Matched,
    Ignored,
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One (rule, repository) an event matched.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Matched {
    pub rule: String,
    /// The source repository the pass covers; `None` for a whole-rule run.
    pub repository: Option<String>,
}

/// Receives events and holds the passes they ask for.
pub struct Hub {
    token: Secret,
    rules: RwLock<Vec<Rule>>,
    pending: Mutex<Pending>,
    wake: Notify,
    events: IntCounterVec,
    /// Of a `/*` rule, only this shard's repositories are synced here (the
    /// rules are this shard's already).
    shard: Shard,
}

impl Hub {
    /// A hub checking `token`, for these rules; its counters are
    /// registered in `metrics` (every series at 0 from the start).
    pub fn new(
        token: Secret,
        rules: &[Rule],
        metrics: &Metrics,
        shard: Shard,
    ) -> Result<Arc<Hub>, MetricsError> {
        let events = IntCounterVec::new(
            Opts::new(
                "regkeeper_events_total",
                "Events received (distribution notifications, Harbor webhooks, trigger calls) by result",
            ),
            &["kind", "result"],
        )
        .map_err(MetricsError::from)?;
        metrics.register(Box::new(events.clone()))?;
        for kind in [Kind::Distribution, Kind::Harbor, Kind::Trigger] {
            for result in [Outcome::Matched, Outcome::Ignored, Outcome::Rejected] {
                events.with_label_values(&[kind.as_str(), result.as_str()]);
            }
        }
        Ok(Arc::new(Hub {
            token,
            rules: RwLock::new(rules.to_vec()),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            events,
            shard,
        }))
    }

    /// The rules events are matched against (after a reload).
    pub fn set_rules(&self, rules: &[Rule]) {
        *self.rules.write().expect("event rules poisoned") = rules.to_vec();
    }

    /// The `/v1/...` routes, to merge into the `listen` server.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    fn count(&self, kind: Kind, outcome: Outcome, n: usize) {
        if n > 0 {
            self.events
                .with_label_values(&[kind.as_str(), outcome.as_str()])
                .inc_by(n as u64);
        }
    }

    fn enqueue(&self, rule: &str, pass: Pass) {
        let key = Key {
            rule: rule.to_string(),
            pass,
        };
        self.pending
            .lock()
            .expect("pending passes poisoned")
            .add(key, Instant::now());
        self.wake.notify_one();
    }

    /// Queues the passes a parsed payload asks for; returns what matched.
    pub(crate) fn submit(&self, kind: Kind, parsed: Parsed) -> Vec<Matched> {
        self.count(kind, Outcome::Ignored, parsed.ignored);
        // Matching is pure and quick: hold the read lock, no copy per request.
        let rules = self.rules.read().expect("event rules poisoned");
        let mut out = Vec::new();
        for n in parsed.notices {
            let mut found = matcher::matching(&rules, &n.repository, n.host.as_deref());
            // A repository of a `/*` rule that another shard owns is that
            // shard's to copy (it gets the event too, or its schedule).
            found.retain(|(rule, rel)| {
                n.change == Change::Delete
                    || rel.is_empty()
                    || self.shard.owns_repository(rule, rel)
            });
            if found.is_empty() {
                tracing::debug!(kind = kind.as_str(), repository = %n.repository, "event matches no rule");
                self.count(kind, Outcome::Ignored, 1);
                continue;
            }
            self.count(kind, Outcome::Matched, 1);
            for (rule, rel) in found {
                let (pass, repository) = match n.change {
                    Change::Push => (Pass::Repo(rel), Some(n.repository.clone())),
                    Change::Delete => (Pass::Normal, None),
                };
                tracing::debug!(kind = kind.as_str(), %rule, repository = %n.repository, ?pass, "event queued");
                self.enqueue(&rule, pass);
                out.push(Matched { rule, repository });
            }
        }
        out
    }

    /// `POST /v1/rules/<rule>/sync`: a normal run of the rule, now; `false`
    /// when no rule has that name.
    pub(crate) fn trigger(&self, rule: &str) -> bool {
        let known = self
            .rules
            .read()
            .expect("event rules poisoned")
            .iter()
            .any(|r| r.name == rule);
        if known {
            self.count(Kind::Trigger, Outcome::Matched, 1);
            tracing::info!(%rule, "sync triggered");
            self.enqueue(rule, Pass::Normal);
        } else {
            self.count(Kind::Trigger, Outcome::Ignored, 1);
        }
        known
    }

    /// The next time a waiting pass becomes due (for the scheduler's sleep).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.pending
            .lock()
            .expect("pending passes poisoned")
            .next_due(now)
    }

    /// Resolves when an event was queued.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn config(dir: &Path, listen: &str, token_file: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "version = 1\n[daemon]\nstate_dir = \"/tmp/x\"\nlisten = \"{listen}\"\nwebhook_token_file = {:?}\n",
            dir.join(token_file).display().to_string()
        );
        crate::config::parse(&text, Path::new("t.toml")).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn each_repository_of_a_prefix_rule_is_one_shards_to_sync() {
        let c = crate::config::parse(
            "version = 1\n[daemon]\nstate_dir = \"/tmp/x\"\n[[rule]]\nname = \"team\"\nsource = \"a.example/team/*\"\ntargets = [\"b.example/m/*\"]\nschedule = \"@every 1h\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let hubs: Vec<_> = ["0/2", "1/2"]
            .iter()
            .map(|s| {
                let shard = crate::shard::Shard::parse(s).unwrap();
                let m = crate::metrics::Metrics::new().unwrap();
                super::Hub::new(crate::secret::Secret::new("t"), &c.rules, &m, shard).unwrap()
            })
            .collect();
        for i in 0..20 {
            let push = super::Parsed {
                notices: vec![super::parse::Notice {
                    repository: format!("team/r{i}"),
                    host: None,
                    change: super::Change::Push,
                }],
                ignored: 0,
            };
            let matched: usize = hubs
                .iter()
                .map(|h| h.submit(super::Kind::Distribution, push.clone()).len())
                .sum();
            assert_eq!(matched, 1, "team/r{i} is synced by exactly one shard");
        }
    }

    #[test]
    fn the_token_file_is_read_at_load_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "s3cret\n").unwrap();
        let c = config(dir.path(), "127.0.0.1:9469", "tok").unwrap();
        let token = c.daemon.webhook_token.as_ref().expect("token read");
        assert_eq!(token.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let missing = config(dir.path(), "127.0.0.1:9469", "absent").unwrap_err();
        assert!(
            missing.contains("cannot read webhook_token_file"),
            "{missing}"
        );
        let no_listen = config(dir.path(), "", "tok").unwrap_err();
        assert!(
            no_listen.contains("needs the listen address"),
            "{no_listen}"
        );
    }
}
