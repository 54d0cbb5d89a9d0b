//! `regkeeper run`: the long-running worker. Per-rule schedules (first run
//! at start-up, jitter, never overlapping itself), one engine and one global
//! transfer limit for all rules, runs recorded in the state database and in
//! metrics, `/metrics` `/healthz` `/readyz`, reload on SIGHUP, orderly stop
//! on SIGTERM/SIGINT, and systemd notifications.

mod events;
pub use events::{PeerUrlError, Peers};
mod health;
pub(crate) mod http;
mod listener;
pub(crate) mod schedule;
mod scheduler;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use scheduler::{Scheduler, Signals};

use crate::config::{Config, Rule};
use crate::engine::{Engine, RuleReport};
use crate::metrics::{Metrics, MetricsError};
use crate::shard::{Shard, ShardSpec};
use crate::state::{RunRecord, State, StateError};
use crate::transport::{RegistryOptions, Transports};

/// How long runs get to wind down after SIGTERM before the process exits
/// anyway (SPEC: exit within 10 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How long run records are kept in the state database.
pub const RUN_HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(
        "cannot listen on {addr} (daemon.listen): {source}; pick a free address or set listen = \"\""
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the {what} signal handler: {source}")]
    Signal {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Transports for a config in `mode` (an estimate's refuse every write
/// before it is sent).
pub fn transports(config: &Config, mode: crate::engine::Mode) -> Arc<Transports> {
    let options: std::collections::HashMap<String, RegistryOptions> =
        config.registries.clone().into_iter().collect();
    Arc::new(Transports::new(options, mode.read_only()))
}

/// The process's one clock (fractional seconds), under the name the daemon's
/// modules import.
pub(crate) use crate::clock::now_unix_f64 as unix_now;

/// How much of a rule one run stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole rule (schedule, trigger, `sync`): copies and deletions, and
    /// a success puts the rule in step (last success, lag).
    Whole,
    /// An event pass (one repository, or every repository without
    /// deletions): the full plan's copies, no deletion, and never the
    /// rule's last success or lag, which only a whole run can vouch for.
    Narrowed,
}

impl Scope {
    /// What a run of this scope carries out of the rule's plan.
    pub fn pass(self) -> crate::engine::Pass {
        match self {
            Scope::Whole => crate::engine::Pass::Whole,
            Scope::Narrowed => crate::engine::Pass::NoDeletions,
        }
    }
}

/// Runs one rule and records the run in the state and the metrics (either
/// may be absent). State trouble is logged, never fatal to the run. A
/// narrowed run counts in `regkeeper_rule_runs_total` and the transfer
/// counters, and its tags are recorded, but it is no run of the rule: no row
/// in the run history (where last success and lag come from after a
/// restart) and no last-run, last-success or lag update.
pub async fn run_rule(
    engine: &Engine,
    state: Option<&State>,
    metrics: Option<&Metrics>,
    rule: &Rule,
    scope: Scope,
) -> RuleReport {
    let started = unix_now();
    let whole = scope == Scope::Whole;
    let id = state.filter(|_| whole).and_then(|s| {
        s.run_started(&rule.name, started as i64)
            .map_err(
                |e| tracing::warn!(rule = %rule.name, error = %e, "cannot record the run start"),
            )
            .ok()
    });
    if let Some(m) = metrics.filter(|_| whole) {
        m.run_started(&rule.name, started);
    }
    let report = engine.run_rule(rule, scope.pass()).await;
    // the run's first failure (listing, copy, verification or retention)
    let first = report.failures().into_iter().next();
    let last_error = first.as_ref().map(|e| e.to_string());
    let error_class = first.map(|e| e.class);
    let mut pending = (report.tags_failed + report.tags_unreachable) as i64;
    if let (Some(s), Some(id)) = (state, id) {
        let t = &report.totals;
        let rec = RunRecord {
            id,
            rule: rule.name.clone(),
            started: started as i64,
            finished: Some(unix_now() as i64),
            // `status` tells a run a signal stopped from one that failed.
            result: Some(match report.interrupted() {
                true => "interrupted".to_string(),
                false => report.result.as_str().to_string(),
            }),
            tags_copied: report.tags_copied as i64,
            tags_in_sync: report.tags_in_sync as i64,
            tags_failed: report.tags_failed as i64,
            bytes_copied: t.bytes_written as i64,
            blobs_copied: t.blobs_copied as i64,
            blobs_mounted: t.blobs_mounted as i64,
            blobs_skipped: t.blobs_skipped as i64,
            blobs_resumed: t.blobs_resumed as i64,
            manifests_pushed: t.manifests_pushed as i64,
            last_error,
            error_class: error_class.map(|c| c.as_str().to_string()),
            warning: report.warnings.first().cloned(),
        };
        if let Err(e) = s.run_finished(id, &rec) {
            tracing::warn!(rule = %rule.name, error = %e, "cannot record the run result");
        }
    }
    if let Some(s) = state {
        // Tags of a target that could not be read are pending too: the
        // state has no row for them.
        match s.tags_pending(&rule.name) {
            Ok(n) => pending = n + report.tags_unreachable as i64,
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "cannot count pending tags"),
        }
    }
    if let Some(m) = metrics {
        m.run_finished(&report, started, pending, whole);
    }
    report
}

/// Where a rule's lag counts from after a (re)start: the start of its last
/// complete run, else of its first run ever, else now.
fn restore_rule_metrics(state: &State, metrics: &Metrics, rule: &str, daemon_start: f64) {
    let last_success = state
        .last_success(rule)
        .ok()
        .flatten()
        .map(|r| r.started as f64);
    let first = state
        .first_run_started(rule)
        .ok()
        .flatten()
        .map(|s| s as f64);
    let last_run = state
        .last_run(rule)
        .ok()
        .flatten()
        .map(|r| r.started as f64);
    let basis = last_success
        .or(first)
        .unwrap_or(daemon_start)
        .min(daemon_start);
    let pending = state.tags_pending(rule).unwrap_or(0);
    metrics.init_rule(rule, basis, last_success, last_run, pending);
}

/// Every registry host the config names (sections, sources, targets).
fn init_registries(config: &Config, metrics: &Metrics) {
    let mut hosts: std::collections::BTreeSet<&str> =
        config.registries.keys().map(String::as_str).collect();
    for rule in &config.rules {
        for spec in rule.source.iter().chain(&rule.targets) {
            if let crate::reference::Location::Registry { host, .. } = &spec.location {
                hosts.insert(host);
            }
        }
    }
    for host in hosts {
        metrics.init_registry(host);
    }
}

/// What the config loader found suspicious but not invalid.
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(file = %w.file.display(), line = w.line, "{}", w.message);
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The shard the daemon resolved at start-up (`run` stores it in the config).
fn shard_of(config: &Config) -> Shard {
    match config.daemon.shard {
        Some(ShardSpec::Fixed(s)) => s,
        _ => Shard::WHOLE,
    }
}

/// Keeps the rules this shard runs; the shard stays as resolved at start-up
/// (a reload does not move an instance to another shard).
fn restrict_to_shard(config: &mut Config, shard: Shard) {
    config.daemon.shard = Some(ShardSpec::Fixed(shard));
    config.rules.retain(|r| shard.runs_rule(r));
}

/// The daemon. `config` is loaded and valid; returns after SIGTERM/SIGINT.
/// Only `shard`'s rules (and repositories of `/*` rules) are run; events
/// for another shard's go to it through `peers`, when given.
pub async fn run(
    mut config: Config,
    config_path: PathBuf,
    shard: Shard,
    peers: Option<events::Peers>,
) -> Result<(), DaemonError> {
    let daemon_start = unix_now();
    let metrics = Metrics::new()?;
    metrics.shard_info(shard)?;
    let all_rules = config.rules.clone();
    restrict_to_shard(&mut config, shard);
    tracing::info!(%shard, rules = config.rules.len(), "shard");
    let ready = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(health::Heartbeat::new());
    let mut signals = Signals::install()?;
    // Event endpoints (SPEC section 10) only with a webhook token.
    let events = match &config.daemon.webhook_token {
        Some(token) => Some(events::Hub::new(
            token.clone(),
            &all_rules,
            &metrics,
            shard,
            peers,
        )?),
        None => None,
    };
    let http_stop = CancellationToken::new();
    let server = match config.daemon.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen { addr, source })?;
            tracing::info!(%addr, events = events.is_some(), "serving /metrics, /healthz, /readyz");
            Some(tokio::spawn(http::serve_with(
                listener,
                metrics.clone(),
                ready.clone(),
                heartbeat.clone(),
                http_stop.clone(),
                events
                    .as_ref()
                    .map_or_else(axum::Router::new, |h| h.router()),
            )))
        }
        None => None,
    };
    // (The config's warnings were printed by the command that loaded it.)
    let state = open_state(&config)?;
    for rule in &config.rules {
        restore_rule_metrics(&state, &metrics, &rule.name, daemon_start);
    }
    init_registries(&config, &metrics);
    let mut scheduler = Scheduler::new(config, config_path, state, metrics, events, heartbeat);
    ready.store(true, Ordering::SeqCst);
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(rules = scheduler.rules(), "regkeeper running");

    scheduler.run(&mut signals).await;

    notify(&[sd_notify::NotifyState::Stopping]);
    scheduler.drain().await;
    http_stop.cancel();
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the state database and says where it is (and whether that is the
/// default, which a config without `state_dir` does not show).
fn open_state(config: &Config) -> Result<State, DaemonError> {
    let state = State::open(&config.daemon.state_dir)?;
    if config.daemon.state_dir_given {
        tracing::info!(path = %state.path().display(), "state database open");
    } else {
        tracing::info!(
            path = %state.path().display(),
            "state database open (the config sets no daemon.state_dir; this is the default)"
        );
    }
    let uploads = state.uploads().unwrap_or_default();
    if !uploads.is_empty() {
        tracing::info!(
            count = uploads.len(),
            "unfinished uploads from an earlier run; they resume when their rules run"
        );
    }
    Ok(state)
}
