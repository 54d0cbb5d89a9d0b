//! `regkeeper run`: the long-running worker. Per-rule schedules (first run
//! at start-up, jitter, never overlapping itself), one engine and one global
//! transfer limit for all rules, runs recorded in the state database and in
//! metrics, `/metrics` `/healthz` `/readyz`, reload on SIGHUP, orderly stop
//! on SIGTERM/SIGINT, and systemd notifications.

pub mod http;
pub mod schedule;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{self, Config, Rule};
use crate::engine::{Engine, RuleReport, RunResult};
use crate::metrics::{Metrics, MetricsError};
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

/// Transports for a config, with the metrics observer installed.
pub fn transports(config: &Config, read_only: bool) -> Arc<Transports> {
    let options: std::collections::HashMap<String, RegistryOptions> =
        config.registries.clone().into_iter().collect();
    Arc::new(Transports::new(options, read_only))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs one rule and records the run in the state and the metrics (either
/// may be absent). State trouble is logged, never fatal to the run.
pub async fn run_rule(
    engine: &Engine,
    state: Option<&State>,
    metrics: Option<&Metrics>,
    rule: &Rule,
    pruner: Option<&crate::retention::Pruner>,
) -> RuleReport {
    let started = unix_now();
    let id = state.and_then(|s| {
        s.run_started(&rule.name, started as i64)
            .map_err(
                |e| tracing::warn!(rule = %rule.name, error = %e, "cannot record the run start"),
            )
            .ok()
    });
    if let Some(m) = metrics {
        m.run_started(&rule.name, started);
    }
    let report = engine.run_rule(rule, pruner).await;
    let last_error = report.errors.first().cloned().or_else(|| {
        report.images.iter().find_map(|i| {
            i.error
                .as_ref()
                .map(|e| format!("{}:{} -> {}: {e}", i.source, i.tag, i.target))
        })
    });
    let mut pending = (report.tags_failed + report.tags_unreachable) as i64;
    if let (Some(s), Some(id)) = (state, id) {
        let t = &report.totals;
        let rec = RunRecord {
            id,
            rule: rule.name.clone(),
            started: started as i64,
            finished: Some(unix_now() as i64),
            result: Some(report.result.as_str().to_string()),
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
        };
        if let Err(e) = s.run_finished(id, &rec) {
            tracing::warn!(rule = %rule.name, error = %e, "cannot record the run result");
        }
        // Tags of a target that could not be read are pending too: the
        // state has no row for them.
        match s.tags_pending(&rule.name) {
            Ok(n) => pending = n + report.tags_unreachable as i64,
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "cannot count pending tags"),
        }
    }
    if let Some(m) = metrics {
        m.run_finished(&report, started, pending);
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

/// One scheduled rule.
struct Slot {
    rule: Arc<Rule>,
    /// The next fire; `None` when the schedule has no future time.
    next: Option<Instant>,
    running: Arc<AtomicBool>,
}

/// Marks a rule as running until dropped.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Slot {
    fn new(rule: Arc<Rule>, first: Instant) -> Self {
        Slot {
            rule,
            next: Some(first),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Claims the rule for one run; `None` while a run is still going (the
    /// fire is skipped: a rule never overlaps itself).
    fn try_start(&self) -> Option<RunningGuard> {
        self.running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| RunningGuard(self.running.clone()))
    }

    /// Sets the next fire after one at `fired` (monotonic) / `fired_wall`.
    fn schedule_next(&mut self, fired: Instant) {
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let bound = schedule::jitter_bound(&self.rule.schedule, now_wall);
        self.next = match &self.rule.schedule {
            // A fixed interval from the previous fire; after a long stall,
            // from now (no burst of catch-up runs).
            config::Schedule::Every(d) => {
                let due = fired + *d;
                Some(if due <= now { now + *d } else { due } + schedule::jitter(bound))
            }
            sched => schedule::next_after(sched, now_wall).map(|t| {
                let wait = t.duration_since(now_wall).unwrap_or_default();
                now + wait + schedule::jitter(bound)
            }),
        };
    }
}

/// Everything a run needs, swapped as a whole on reload.
struct Generation {
    config: Config,
    engine: Arc<Engine>,
}

fn build_generation(
    config: Config,
    state: &State,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
    previous: Option<&Generation>,
) -> Generation {
    let tr = transports(&config, false);
    tr.set_observer(metrics.observer());
    metrics.watch_transports(tr.clone());
    let mut engine = Engine::new(tr, config.daemon.max_concurrent_transfers, false)
        .with_state(state.clone())
        .with_stop(stop.clone());
    if let Some(prev) = previous {
        // Runs of the old generation may still be going: share their limit
        // so both together stay within it.
        if prev.config.daemon.max_concurrent_transfers == config.daemon.max_concurrent_transfers {
            engine = engine.with_transfer_limit(prev.engine.transfer_limit());
        }
    }
    Generation {
        config,
        engine: Arc::new(engine),
    }
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

/// The daemon. `config` is loaded and valid; returns after SIGTERM/SIGINT.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let daemon_start = unix_now();
    let metrics = Metrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();

    // Signals first: a SIGTERM during start-up is not lost.
    let sig = |kind, what| signal(kind).map_err(|source| DaemonError::Signal { what, source });
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;

    let http_stop = CancellationToken::new();
    let server = match config.daemon.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen { addr, source })?;
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            Some(tokio::spawn(http::serve(
                listener,
                metrics.clone(),
                ready.clone(),
                http_stop.clone(),
            )))
        }
        None => None,
    };

    log_warnings(&config);
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
    for rule in &config.rules {
        restore_rule_metrics(&state, &metrics, &rule.name, daemon_start);
    }
    init_registries(&config, &metrics);
    let mut generation = build_generation(config, &state, &metrics, &stop, None);
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let now = Instant::now();
    for rule in &generation.config.rules {
        let bound = schedule::jitter_bound(&rule.schedule, SystemTime::now());
        slots.insert(
            rule.name.clone(),
            Slot::new(Arc::new(rule.clone()), now + schedule::jitter(bound)),
        );
    }
    ready.store(true, Ordering::SeqCst);
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(rules = slots.len(), "regkeeper running");

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut next_watchdog = Instant::now();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut next_prune = Instant::now();

    loop {
        let now = Instant::now();
        if let Some(every) = watchdog {
            if now >= next_watchdog {
                notify(&[sd_notify::NotifyState::Watchdog]);
                next_watchdog = now + every;
            }
        }
        // Run history older than RUN_HISTORY is dropped (each rule keeps its
        // first run, last run and last success, which lag depends on).
        if now >= next_prune {
            let before = crate::state::now_unix() - RUN_HISTORY.as_secs() as i64;
            match state.prune_runs(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old run records pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old run records"),
            }
            next_prune = now + Duration::from_secs(3600);
        }
        // Fire what is due.
        for slot in slots.values_mut() {
            let Some(due) = slot.next else { continue };
            if due > now {
                continue;
            }
            match slot.try_start() {
                None => {
                    tracing::warn!(rule = %slot.rule.name, "previous run still going; this fire is skipped");
                    metrics.run_skipped(&slot.rule.name);
                }
                Some(guard) => {
                    let engine = generation.engine.clone();
                    let rule = slot.rule.clone();
                    let st = state.clone();
                    let m = metrics.clone();
                    let span = tracing::info_span!("run", rule = %rule.name);
                    let handle = tokio::runtime::Handle::current();
                    // The engine's future borrows across `buffer_unordered`
                    // closures, which rustc cannot prove `Send` for every
                    // lifetime; driving it on a blocking-pool thread needs no
                    // `Send` and keeps the scheduler loop free.
                    tasks.spawn_blocking(move || {
                        let _guard = guard;
                        handle.block_on(
                            async move {
                                // Retention runs after the sync step, on the same
                                // transports, its journal in the state database.
                                let pruner = rule.retention.as_ref().map(|_| {
                                    crate::retention::Pruner::new(
                                        engine.transports().clone(),
                                        Arc::new(st.clone()),
                                        false,
                                        unix_now() as i64,
                                    )
                                });
                                run_rule(&engine, Some(&st), Some(&m), &rule, pruner.as_ref())
                                    .await;
                            }
                            .instrument(span),
                        );
                    });
                }
            }
            slot.schedule_next(due);
        }
        let mut wake = slots
            .values()
            .filter_map(|s| s.next)
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        if watchdog.is_some() {
            wake = wake.min(next_watchdog);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a rule run panicked");
                    }
                }
            }
            _ = hup.recv() => {
                reload(&config_path, &mut generation, &mut slots, &state, &metrics, &stop);
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }

    // Stop taking work; chunked uploads finish the chunk in flight and keep
    // their checkpoint; every checkpoint is already committed.
    notify(&[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let running = tasks.len();
    if running > 0 {
        tracing::info!(running, "waiting for runs to stop");
    }
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    running = tasks.len(),
                    "runs did not stop in time; exiting (interrupted uploads restart or resume on the next run)"
                );
                tasks.abort_all();
                break;
            }
        }
    }
    http_stop.cancel();
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: validate the file; keep everything when it is invalid, else add,
/// change and remove rules (runs in progress finish with their old rule).
fn reload(
    path: &std::path::Path,
    generation: &mut Generation,
    slots: &mut BTreeMap<String, Slot>,
    state: &State,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for d in &e.diagnostics {
                tracing::error!(path = %path.display(), "{d}");
            }
            tracing::error!(path = %path.display(), "reload refused: the configuration is invalid; the previous rules keep running");
            metrics.reload(false);
            return;
        }
    };
    log_warnings(&new);
    metrics.reload(true);
    init_registries(&new, metrics);
    // A rule new to this daemon is in step as of now at worst: its lag
    // starts here, not at the daemon's start (unless its history says more).
    let reloaded_at = unix_now();
    if new.daemon.state_dir != generation.config.daemon.state_dir
        || new.daemon.listen != generation.config.daemon.listen
        || new.daemon.log_format != generation.config.daemon.log_format
    {
        tracing::warn!(
            "daemon.state_dir, daemon.listen and daemon.log_format take effect at the next restart"
        );
    }
    let now = Instant::now();
    let (mut added, mut changed, mut removed) = (0, 0, 0);
    slots.retain(|name, _| {
        let keep = new.rule(name).is_some();
        if !keep {
            metrics.remove_rule(name);
            removed += 1;
        }
        keep
    });
    for rule in &new.rules {
        let arc = Arc::new(rule.clone());
        match slots.get_mut(&rule.name) {
            Some(slot) => {
                let old_schedule = schedule_text(&slot.rule.schedule);
                if format!("{:?}", slot.rule) != format!("{rule:?}") {
                    changed += 1;
                }
                slot.rule = arc;
                if schedule_text(&rule.schedule) != old_schedule {
                    slot.schedule_next(now);
                }
            }
            None => {
                added += 1;
                restore_rule_metrics(state, metrics, &rule.name, reloaded_at);
                let bound = schedule::jitter_bound(&rule.schedule, SystemTime::now());
                slots.insert(
                    rule.name.clone(),
                    Slot::new(arc, now + schedule::jitter(bound)),
                );
            }
        }
    }
    let next = build_generation(new, state, metrics, stop, Some(generation));
    *generation = next;
    tracing::info!(
        added,
        changed,
        removed,
        rules = slots.len(),
        "configuration reloaded"
    );
}

fn schedule_text(s: &config::Schedule) -> String {
    match s {
        config::Schedule::Cron { text, .. } => text.clone(),
        config::Schedule::Every(d) => format!("@every {d:?}"),
    }
}

/// Whether a report counts as leaving every target in step.
pub fn in_step(report: &RuleReport) -> bool {
    report.result == RunResult::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(every: u64) -> Arc<Rule> {
        let text = format!(
            "version = 1\n[daemon]\nstate_dir = \"/tmp/x\"\n[[rule]]\nname = \"r\"\nsource = \"oci:/tmp/a\"\ntargets = [\"oci:/tmp/b\"]\nschedule = \"@every {every}s\"\n"
        );
        let c = config::parse(&text, std::path::Path::new("t.toml")).expect("valid");
        Arc::new(c.rules[0].clone())
    }

    #[test]
    fn a_rule_never_overlaps_itself() {
        let slot = Slot::new(rule(2), Instant::now());
        let g = slot.try_start().expect("first run starts");
        assert!(
            slot.try_start().is_none(),
            "second fire while running is skipped"
        );
        drop(g);
        assert!(
            slot.try_start().is_some(),
            "after the run ends, the next fire runs"
        );
    }

    #[test]
    fn fixed_interval_with_bounded_jitter() {
        let mut slot = Slot::new(rule(10), Instant::now());
        let fired = Instant::now();
        slot.schedule_next(fired);
        let next = slot.next.unwrap();
        assert!(next >= fired + Duration::from_secs(10));
        assert!(next <= fired + Duration::from_secs(11) + Duration::from_millis(50));
        // After a stall longer than the interval: from now, no catch-up burst.
        let old = Instant::now() - Duration::from_secs(60);
        slot.schedule_next(old);
        assert!(slot.next.unwrap() >= Instant::now() + Duration::from_secs(9));
    }
}
