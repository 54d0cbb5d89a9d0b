//! Starting due passes from the scheduler loop. A pass claims its rule's
//! slot like a scheduled fire, so a rule never overlaps itself; a pass that
//! cannot start yet stays pending and starts when the rule's run ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::Hub;
use super::matcher::{self, Pass};
use crate::daemon::scheduler::Slot;
use crate::daemon::{run_rule, unix_now};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::state::State;

/// What a pass needs from the scheduler.
pub(crate) struct Launch<'a> {
    pub tasks: &'a mut JoinSet<()>,
    pub engine: &'a Arc<Engine>,
    pub state: &'a State,
    pub metrics: &'a Arc<Metrics>,
    /// Normal runs prune only this shard's repositories, like scheduled ones.
    pub shard: crate::shard::Shard,
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
            let engine = launch.engine.clone();
            let st = launch.state.clone();
            let m = launch.metrics.clone();
            let shard = launch.shard;
            let handle = tokio::runtime::Handle::current();
            // As for scheduled runs: the engine's future is driven on a
            // blocking-pool thread (it is not provably `Send`).
            launch.tasks.spawn_blocking(move || {
                let _guard = guard;
                handle.block_on(
                    async move {
                        // Only a normal run prunes; `restrict` cleared the
                        // retention of every other pass.
                        let pruner = narrowed.retention.as_ref().map(|_| {
                            crate::retention::Pruner::for_run(
                                engine.transports(),
                                Some(&st),
                                false,
                                unix_now() as i64,
                            )
                            .with_shard(shard)
                        });
                        tracing::info!("event pass starting");
                        run_rule(&engine, Some(&st), Some(&m), &narrowed, pruner.as_ref()).await;
                    }
                    .instrument(span),
                );
            });
        }
    }
}
