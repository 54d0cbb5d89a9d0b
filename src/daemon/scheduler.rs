//! The scheduler loop of `regkeeper run`: per-rule slots (first fire at
//! start-up with jitter, never overlapping itself), the current generation
//! (config and engine, swapped on reload), systemd watchdog keep-alives
//! and the runs in flight.
//!
//! The keep-alives are sent from this loop on purpose: if it stalls (a
//! blocking read, a deadlock), systemd stops hearing from it and restarts
//! the service, which a keep-alive from a task of its own would hide.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::Signal;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    DaemonError, SHUTDOWN_GRACE, Scope, init_registries, log_warnings, notify,
    restore_rule_metrics, restrict_to_shard, run_rule, schedule, shard_of, transports, unix_now,
};
use crate::config::{self, Config, Rule};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::state::State;

/// One scheduled rule.
pub(crate) struct Slot {
    pub(crate) rule: Arc<Rule>,
    /// The next fire; `None` when the schedule has no future time.
    next: Option<Instant>,
    running: Arc<AtomicBool>,
}

/// Marks a rule as running until dropped.
pub(crate) struct RunningGuard(Arc<AtomicBool>);

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
    pub(crate) fn try_start(&self) -> Option<RunningGuard> {
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
    let tr = transports(&config, crate::engine::Mode::Apply);
    tr.set_observer(metrics.observer());
    metrics.watch_transports(tr.clone());
    let mut engine = Engine::new(
        tr,
        config.daemon.max_concurrent_transfers,
        crate::engine::Mode::Apply,
    )
    .with_state(state.clone())
    .with_stop(stop.clone())
    .with_shard(shard_of(&config));
    if let Some(prev) = previous {
        // One blob tracker per process: runs of the old generation may
        // still be mounting, and two trackers could mount one blob into one
        // registry at once (the MANIFEST_BLOB_UNKNOWN race).
        engine = engine.with_blob_tracker(prev.engine.blob_tracker());
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

/// The signals the loop reacts to, installed before start-up work so that a
/// SIGTERM during it is not lost.
pub(super) struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |kind, what| signal(kind).map_err(|source| DaemonError::Signal { what, source });
        Ok(Signals {
            hup: sig(SignalKind::hangup(), "SIGHUP")?,
            term: sig(SignalKind::terminate(), "SIGTERM")?,
            int: sig(SignalKind::interrupt(), "SIGINT")?,
        })
    }
}

/// The loop's state: one per daemon.
pub(super) struct Scheduler {
    config_path: PathBuf,
    generation: Generation,
    slots: BTreeMap<String, Slot>,
    state: State,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Half the systemd watchdog period, when systemd asks for keep-alives.
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    next_prune: Instant,
    /// The event endpoints' pending passes (SPEC section 10), when enabled.
    events: Option<Arc<super::events::Hub>>,
    /// Beaten each time round the loop; `/healthz` reads it.
    heartbeat: Arc<super::health::Heartbeat>,
}

impl Scheduler {
    pub(super) fn new(
        config: Config,
        config_path: PathBuf,
        state: State,
        metrics: Arc<Metrics>,
        events: Option<Arc<super::events::Hub>>,
        heartbeat: Arc<super::health::Heartbeat>,
    ) -> Scheduler {
        let stop = CancellationToken::new();
        let generation = build_generation(config, &state, &metrics, &stop, None);
        let now = Instant::now();
        let mut slots = BTreeMap::new();
        for rule in &generation.config.rules {
            let bound = schedule::jitter_bound(&rule.schedule, SystemTime::now());
            slots.insert(
                rule.name.clone(),
                Slot::new(Arc::new(rule.clone()), now + schedule::jitter(bound)),
            );
        }
        Scheduler {
            config_path,
            generation,
            slots,
            state,
            metrics,
            stop,
            tasks: JoinSet::new(),
            watchdog: sd_notify::watchdog_enabled().map(|d| d / 2),
            next_watchdog: now,
            next_prune: now,
            events,
            heartbeat,
        }
    }

    pub(super) fn rules(&self) -> usize {
        self.slots.len()
    }

    /// Runs until SIGTERM or SIGINT.
    pub(super) async fn run(&mut self, signals: &mut Signals) {
        loop {
            let now = Instant::now();
            self.housekeeping(now);
            self.fire_due(now);
            self.dispatch_events();
            let wake = self.next_wake(now);
            let events = self.events.as_ref();
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "a rule run panicked");
                    }
                }
                _ = async {
                    match events {
                        Some(h) => h.woken().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = signals.hup.recv() => self.reload(),
                _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); return; }
                _ = signals.int.recv() => { tracing::info!("SIGINT: stopping"); return; }
            }
        }
    }

    /// Watchdog keep-alive and, hourly, run history older than
    /// `RUN_HISTORY` dropped (each rule keeps its first run, last run and
    /// last success, which lag depends on).
    fn housekeeping(&mut self, now: Instant) {
        self.heartbeat.beat();
        if let Some(every) = self.watchdog
            && now >= self.next_watchdog
        {
            notify(&[sd_notify::NotifyState::Watchdog]);
            self.next_watchdog = now + every;
        }
        if now >= self.next_prune {
            let before = crate::state::now_unix() - super::RUN_HISTORY.as_secs() as i64;
            match self.state.prune_runs(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old run records pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old run records"),
            }
            self.next_prune = now + Duration::from_secs(3600);
        }
    }

    /// Passes asked for by events whose rule is idle.
    fn dispatch_events(&mut self) {
        let Some(hub) = &self.events else { return };
        hub.dispatch(
            &self.slots,
            super::events::Launch {
                tasks: &mut self.tasks,
                engine: &self.generation.engine,
                state: &self.state,
                metrics: &self.metrics,
            },
        );
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self
            .slots
            .values()
            .filter_map(|s| s.next)
            .min()
            .unwrap_or(now + Duration::from_secs(60))
            .min(now + super::health::BEAT_EVERY);
        if let Some(t) = self.events.as_ref().and_then(|h| h.next_due(now)) {
            wake = wake.min(t);
        }
        match self.watchdog {
            Some(_) => wake.min(self.next_watchdog),
            None => wake,
        }
    }

    fn fire_due(&mut self, now: Instant) {
        for slot in self.slots.values_mut() {
            let Some(due) = slot.next else { continue };
            if due > now {
                continue;
            }
            match slot.try_start() {
                None => {
                    tracing::warn!(rule = %slot.rule.name, "previous run still going; this fire is skipped");
                    self.metrics.run_skipped(&slot.rule.name);
                }
                Some(guard) => {
                    let run = RunContext {
                        engine: self.generation.engine.clone(),
                        rule: slot.rule.clone(),
                        state: self.state.clone(),
                        metrics: self.metrics.clone(),
                        scope: Scope::Whole,
                    };
                    let span = tracing::info_span!("run", rule = %run.rule.name);
                    spawn_run(&mut self.tasks, run, guard, span);
                }
            }
            slot.schedule_next(due);
        }
    }

    /// SIGHUP: validate the file; keep everything when it is invalid, else
    /// add, change and remove rules (runs in progress finish with their old
    /// rule).
    fn reload(&mut self) {
        let path = &self.config_path;
        let mut new = match config::load(path) {
            Ok(c) => c,
            Err(e) => {
                for d in &e.diagnostics {
                    tracing::error!(path = %path.display(), "{d}");
                }
                tracing::error!(path = %path.display(), "reload refused: the configuration is invalid; the previous rules keep running");
                self.metrics.reload(false);
                return;
            }
        };
        log_warnings(&new);
        self.metrics.reload(true);
        init_registries(&new, &self.metrics);
        let old = &self.generation.config.daemon;
        if new.daemon.state_dir != old.state_dir
            || new.daemon.listen != old.listen
            || new.daemon.log_format != old.log_format
            || new.daemon.webhook_token != old.webhook_token
        {
            tracing::warn!(
                "daemon.state_dir, daemon.listen, daemon.log_format and daemon.webhook_token_file take effect at the next restart"
            );
        }
        let all_rules = new.rules.clone();
        restrict_to_shard(&mut new, shard_of(&self.generation.config));
        let (added, changed, removed) = self.apply_rules(&new);
        let next = build_generation(
            new,
            &self.state,
            &self.metrics,
            &self.stop,
            Some(&self.generation),
        );
        self.generation = next;
        if let Some(h) = &self.events {
            h.set_rules(&all_rules);
        }
        tracing::info!(
            added,
            changed,
            removed,
            rules = self.slots.len(),
            "configuration reloaded"
        );
    }

    /// The slots for the rules of `new`; (added, changed, removed).
    fn apply_rules(&mut self, new: &Config) -> (usize, usize, usize) {
        let now = Instant::now();
        // A rule new to this daemon is in step as of now at worst: its lag
        // starts here, not at the daemon's start (unless its history says more).
        let reloaded_at = unix_now();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        let metrics = &self.metrics;
        self.slots.retain(|name, _| {
            let keep = new.rule(name).is_some();
            if !keep {
                metrics.remove_rule(name);
                removed += 1;
            }
            keep
        });
        for rule in &new.rules {
            let arc = Arc::new(rule.clone());
            match self.slots.get_mut(&rule.name) {
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
                    restore_rule_metrics(&self.state, metrics, &rule.name, reloaded_at);
                    let bound = schedule::jitter_bound(&rule.schedule, SystemTime::now());
                    self.slots.insert(
                        rule.name.clone(),
                        Slot::new(arc, now + schedule::jitter(bound)),
                    );
                }
            }
        }
        (added, changed, removed)
    }

    /// No new work; runs get `SHUTDOWN_GRACE` to finish the chunk in flight
    /// (every checkpoint is already committed), then are abandoned.
    pub(super) async fn drain(&mut self) {
        self.stop.cancel();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let running = self.tasks.len();
        if running > 0 {
            tracing::info!(running, "waiting for runs to stop");
        }
        while !self.tasks.is_empty() {
            if tokio::time::timeout_at(deadline.into(), self.tasks.join_next())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = self.tasks.len(),
                    "runs did not stop in time; exiting (interrupted uploads restart or resume on the next run)"
                );
                self.tasks.abort_all();
                break;
            }
        }
    }
}

/// What one rule run needs.
pub(crate) struct RunContext {
    pub(crate) engine: Arc<Engine>,
    pub(crate) rule: Arc<Rule>,
    pub(crate) state: State,
    pub(crate) metrics: Arc<Metrics>,
    /// A narrowed run (an event pass) plans with retention like any run
    /// but deletes nothing and does not speak for the whole rule.
    pub(crate) scope: Scope,
}

/// Runs `run.rule` (its copies and retention planned together) inside
/// `span`, holding `guard` until it ends. Scheduled fires and event passes
/// both start their runs here.
pub(crate) fn spawn_run(
    tasks: &mut JoinSet<()>,
    run: RunContext,
    guard: RunningGuard,
    span: tracing::Span,
) {
    let handle = tokio::runtime::Handle::current();
    // The engine's future borrows across `buffer_unordered` closures, which
    // rustc cannot prove `Send` for every lifetime; driving it on a
    // blocking-pool thread needs no `Send` and keeps the scheduler loop free.
    tasks.spawn_blocking(move || {
        let _guard = guard;
        let RunContext {
            engine,
            rule,
            state,
            metrics,
            scope,
        } = run;
        handle.block_on(
            async move {
                // Every pass plans with the rule's retention (the same
                // transports, its journal in the state database); only a
                // whole run sends the deletions.
                run_rule(&engine, Some(&state), Some(&metrics), &rule, scope).await;
            }
            .instrument(span),
        );
    });
}

fn schedule_text(s: &config::Schedule) -> String {
    match s {
        config::Schedule::Cron { text, .. } => text.clone(),
        config::Schedule::Every(d) => format!("@every {d:?}"),
    }
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
