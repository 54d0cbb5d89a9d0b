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
mod peers;
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
pub use peers::{PeerUrlError, Peers};
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
    /// Sent on to the shard that owns it.
    Forwarded,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
            Outcome::Forwarded => "forwarded",
        }
    }
}

/// One (rule, repository) an event matched.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Matched {
    pub rule: String,
    /// The source repository the pass covers; `None` for a whole-rule run.
    pub repository: Option<String>,
    /// The shard the event was forwarded to, when another one owns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<u32>,
}

/// What a request asked for: passes queued here, and the shards it goes on to.
#[derive(Debug, Default)]
pub(crate) struct Submitted {
    pub matched: Vec<Matched>,
    pub forward: std::collections::BTreeSet<u32>,
}

/// What became of a trigger call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Triggered {
    /// No rule has that name.
    Unknown,
    /// Queued here; forward to these shards too (a `/*` rule runs on all).
    Queued(Vec<u32>),
    /// Another shard owns the rule: forward it there.
    Elsewhere(u32),
}

/// Receives events and holds the passes they ask for.
pub struct Hub {
    token: Secret,
    /// Every rule of the config, not only this shard's: an event for a rule
    /// or repository another shard owns is forwarded there.
    rules: RwLock<Vec<Rule>>,
    pending: Mutex<Pending>,
    wake: Notify,
    events: IntCounterVec,
    /// Of a `/*` rule, only this shard's repositories are synced here; of
    /// the other rules, only this shard's.
    shard: Shard,
    /// Where the other shards listen; without it, what another shard owns
    /// is ignored here.
    peers: Option<Peers>,
}

impl Hub {
    /// A hub checking `token`, for these rules (all of the config's); its
    /// counters are registered in `metrics` (every series at 0 from the
    /// start).
    pub fn new(
        token: Secret,
        rules: &[Rule],
        metrics: &Metrics,
        shard: Shard,
        peers: Option<Peers>,
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
            for result in [
                Outcome::Matched,
                Outcome::Ignored,
                Outcome::Rejected,
                Outcome::Forwarded,
            ] {
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
            peers,
        }))
    }

    /// The rules events are matched against (after a reload): all of the
    /// config's.
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

    /// Queues the passes a parsed payload asks for that this shard owns;
    /// the rest goes to its owner (`forward`), unless the request was
    /// forwarded already or no peers are known (then it is ignored here).
    pub(crate) fn submit(&self, kind: Kind, parsed: Parsed, forwarded: bool) -> Submitted {
        self.count(kind, Outcome::Ignored, parsed.ignored);
        let may_forward = !forwarded && self.peers.is_some();
        // Matching is pure and quick: hold the read lock, no copy per request.
        let rules = self.rules.read().expect("event rules poisoned");
        let mut out = Submitted::default();
        for n in parsed.notices {
            let found = matcher::matching(&rules, &n.repository, n.host.as_deref());
            let (mut here, mut there) = (Vec::new(), Vec::new());
            for (rule, rel) in found {
                match peers::owner(self.shard, &rule, &rel) {
                    o if o == self.shard.index => here.push((rule, rel)),
                    o if may_forward => there.push((rule, o)),
                    o => {
                        tracing::debug!(kind = kind.as_str(), %rule, owner = o, "event for another shard ignored")
                    }
                }
            }
            if here.is_empty() && there.is_empty() {
                tracing::debug!(kind = kind.as_str(), repository = %n.repository, "event matches no rule of this shard");
                self.count(kind, Outcome::Ignored, 1);
                continue;
            }
            let outcome = if here.is_empty() {
                Outcome::Forwarded
            } else {
                Outcome::Matched
            };
            self.count(kind, outcome, 1);
            let repository = (n.change == Change::Push).then(|| n.repository.clone());
            for (rule, owner) in there {
                out.forward.insert(owner);
                let repository = repository.clone();
                out.matched.push(Matched {
                    rule,
                    repository,
                    forwarded_to: Some(owner),
                });
            }
            for (rule, rel) in here {
                let pass = match n.change {
                    Change::Push => Pass::Repo(rel),
                    Change::Delete => Pass::Normal,
                };
                tracing::debug!(kind = kind.as_str(), %rule, repository = %n.repository, ?pass, "event queued");
                self.enqueue(&rule, pass);
                let repository = repository.clone();
                out.matched.push(Matched {
                    rule,
                    repository,
                    forwarded_to: None,
                });
            }
        }
        out
    }

    /// `POST /v1/rules/<rule>/sync`: a normal run of the rule, now, where
    /// it runs: here, at its owner, or (a `/*` rule) on every shard.
    pub(crate) fn trigger(&self, rule: &str, forwarded: bool) -> Triggered {
        let rules = self.rules.read().expect("event rules poisoned");
        let Some(r) = rules.iter().find(|r| r.name == rule) else {
            self.count(Kind::Trigger, Outcome::Ignored, 1);
            return Triggered::Unknown;
        };
        let may_forward = !forwarded && self.peers.is_some();
        if crate::shard::spread(r) || self.shard.owns_rule(rule) {
            self.count(Kind::Trigger, Outcome::Matched, 1);
            tracing::info!(%rule, "sync triggered");
            self.enqueue(rule, Pass::Normal);
            let others = match crate::shard::spread(r) && may_forward {
                true => (0..self.shard.count)
                    .filter(|&k| k != self.shard.index)
                    .collect(),
                false => Vec::new(),
            };
            return Triggered::Queued(others);
        }
        let owner = peers::owner(self.shard, rule, "");
        if may_forward {
            self.count(Kind::Trigger, Outcome::Forwarded, 1);
            Triggered::Elsewhere(owner)
        } else {
            self.count(Kind::Trigger, Outcome::Ignored, 1);
            tracing::debug!(%rule, owner, "trigger for another shard's rule ignored");
            Triggered::Unknown
        }
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
                super::Hub::new(crate::secret::Secret::new("t"), &c.rules, &m, shard, None).unwrap()
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
                .map(|h| {
                    h.submit(super::Kind::Distribution, push.clone(), false)
                        .matched
                        .len()
                })
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
