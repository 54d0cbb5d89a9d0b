//! `regkeeper sync [RULE...]`: run rules once now; the Apply executor.

use std::future::Future;

use futures_util::StreamExt;
use regkeeper::engine::{Engine, Mode, RunResult};

use super::output::{document, print_retention, print_sync_summary, totals};
use super::signals::{self, Interrupt};
use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

/// Rules of one `sync` in progress at once (each bounded further by the
/// global transfer limit).
const RULES_AT_ONCE: usize = 4;

pub(crate) async fn run(g: &Globals, names: &[String], json: bool) -> Result<u8, CliError> {
    let (config, rules) = g.load_rules(names)?;
    let shard = g.shard(&config)?;
    super::init_logging(config.daemon.log_format, g.on_terminal);
    let interrupt = Interrupt::install(signals::layouts_of(&rules))?;
    let _lock = super::lock_state(&config)?;
    interrupt.sweep_dead().await;
    let started = std::time::Instant::now();
    let state = super::open_state(&config)?;
    let transports = super::transports(&config, Mode::Apply);
    let mut engine = Engine::new(
        transports,
        config.daemon.max_concurrent_transfers,
        Mode::Apply,
    )
    .with_state(state.clone())
    .with_clock(g.now)
    .with_shard(shard)
    .with_stop(interrupt.token());
    let bar = super::progress::start(&mut engine, g.on_terminal && !json);
    if let Some(b) = &bar {
        b.set_prefix(match rules.as_slice() {
            [one] => format!("rule {}:", one.name),
            all => format!("{} rules:", all.len()),
        });
    }
    // Rules run at once, as in the daemon: they share the engine's blob
    // tracker (a blob one rule copies, another mounts) and its transfer
    // limit; reports stay in config order.
    // After a signal, rules not yet started stay so.
    let outcomes = in_order_at_once(&rules, RULES_AT_ONCE, |rule| {
        let (engine, state, interrupt) = (&engine, &state, &interrupt);
        async move {
            if interrupt.interrupted() {
                return Err(rule.name.clone());
            }
            Ok(regkeeper::daemon::run_rule(
                engine,
                Some(state),
                None,
                rule,
                regkeeper::daemon::Scope::Whole,
            )
            .await)
        }
    })
    .await;
    let (reports, not_started) = signals::split_started(outcomes);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let mut doc = document(false, &reports);
        doc.totals = Some(totals(&reports, started.elapsed()));
        let doc = serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?;
        println!("{doc}");
    } else {
        for report in &reports {
            print_sync_summary(report);
            if let Some(r) = &report.retention {
                print_retention(&report.rule, r);
            }
        }
    }
    for name in &not_started {
        eprintln!("rule {name}: not started (interrupted); the next run does it");
    }
    let failed = reports.iter().any(|r| r.result != RunResult::Success);
    Ok(interrupt
        .finish(if failed { EXIT_PARTIAL } else { EXIT_OK })
        .await)
}

/// Runs `f` on every item, `n` at once, and returns the results in the
/// items' order. The next item starts as soon as any running one ends: a
/// long rule does not hold back the rules after it (an ordered stream such
/// as `buffered` starts nothing new while its first is unfinished, so one
/// big rule left three slots idle).
async fn in_order_at_once<T, R, Fut>(
    items: impl IntoIterator<Item = T>,
    n: usize,
    mut f: impl FnMut(T) -> Fut,
) -> Vec<R>
where
    Fut: Future<Output = R>,
{
    let mut done: Vec<(usize, R)> = futures_util::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let run = f(item);
            async move { (i, run.await) }
        })
        .buffer_unordered(n.max(1))
        .collect()
        .await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::in_order_at_once;

    /// The first item waits until the fifth has started: with 4 at once,
    /// that only ends if a finished item's slot goes to the next one while
    /// the first is still running.
    #[tokio::test]
    async fn a_long_first_item_does_not_hold_back_the_rest_and_order_is_kept() {
        let fifth_started = Arc::new(Notify::new());
        let run = in_order_at_once(0..6, 4, |i| {
            let fifth_started = fifth_started.clone();
            async move {
                match i {
                    0 => fifth_started.notified().await,
                    4 => fifth_started.notify_one(),
                    _ => {}
                }
                i * 10
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the fifth item never started while the first was running");
        assert_eq!(got, vec![0, 10, 20, 30, 40, 50]);
    }
}
