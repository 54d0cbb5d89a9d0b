//! Starting due passes from the scheduler loop. A pass claims its rule's
//! slot like a scheduled fire, so a rule never overlaps itself; a pass that
//! cannot start yet stays pending and starts when the rule's run ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::Hub;
use super::matcher::{self, Pass};
use crate::daemon::scheduler::{RunContext, Slot, spawn_run};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::state::State;

/// What a pass needs from the scheduler.
pub(crate) struct Launch<'a> {
    pub tasks: &'a mut JoinSet<()>,
    pub engine: &'a Arc<Engine>,
    pub state: &'a State,
    pub metrics: &'a Arc<Metrics>,
}

impl Hub {
    /// Starts every due pass whose rule is idle. Keys of rules that no
    /// longer exist (removed by a reload) are dropped.
    pub(crate) fn dispatch(&self, slots: &BTreeMap<String, Slot>, launch: Launch<'_>) {
        let now = Instant::now();
        let taken = self
            .pending
            .lock()
            .expect("pending passes poisoned")
            .take_due(now, |key| match slots.get(&key.rule) {
                // A removed rule: take the key with no guard, to drop it.
                None => Some(None),
                Some(slot) => slot.try_start().map(|g| Some((g, slot.rule.clone()))),
            });
        for (key, claimed) in taken {
            let Some((guard, rule)) = claimed else {
                tracing::debug!(rule = %key.rule, "event for a removed rule dropped");
                continue;
            };
            let pass = key.pass;
            let narrowed = matcher::restrict(&rule, &pass);
            let repository = match &pass {
                Pass::Repo(_) => narrowed.source.as_ref().map(|s| s.to_string()),
                _ => None,
            };
            let span = tracing::info_span!("event_pass", rule = %rule.name, ?pass, repository);
            tracing::info!(parent: &span, "event pass starting");
            // Every pass plans with the rule's retention (nothing it would
            // delete is copied); only a normal run deletes (`Pass::scope`).
            let run = RunContext {
                engine: launch.engine.clone(),
                rule: Arc::new(narrowed),
                state: launch.state.clone(),
                metrics: launch.metrics.clone(),
                scope: pass.scope(),
            };
            spawn_run(launch.tasks, run, guard, span);
        }
    }
}
