//! `regkeeper sync [RULE...]`: run rules once now; the Apply executor.

use futures_util::StreamExt;
use regkeeper::engine::{Engine, RunResult};

use super::output::{document, print_retention, print_sync_summary};
use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

/// Rules of one `sync` in progress at once (each bounded further by the
/// global transfer limit).
const RULES_AT_ONCE: usize = 4;

pub(crate) async fn run(g: &Globals, names: &[String], json: bool) -> Result<u8, CliError> {
    let (config, rules) = g.load_rules(names)?;
    let shard = g.shard(&config)?;
    super::init_logging(config.daemon.log_format, g.on_terminal);
    let _lock = super::lock_state(&config)?;
    let state = super::open_state(&config)?;
    let transports = super::transports(&config, false);
    let pruner = rules
        .iter()
        .any(|r| r.retention.is_some())
        .then(|| super::pruner(&transports, Some(&state), false, g.now()).with_shard(shard));
    let mut engine = Engine::new(transports, config.daemon.max_concurrent_transfers, false)
        .with_state(state.clone())
        .with_clock(g.now)
        .with_shard(shard);
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
    let reports: Vec<_> = futures_util::stream::iter(&rules)
        .map(|rule| regkeeper::daemon::run_rule(&engine, Some(&state), None, rule, pruner.as_ref()))
        .buffered(RULES_AT_ONCE)
        .collect()
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let doc = serde_json::to_string_pretty(&document(false, &reports))
            .map_err(anyhow::Error::from)?;
        println!("{doc}");
    } else {
        for report in &reports {
            print_sync_summary(report);
            if let Some(r) = &report.retention {
                print_retention(&report.rule, r);
            }
        }
    }
    let failed = reports.iter().any(|r| r.result != RunResult::Success);
    Ok(if failed { EXIT_PARTIAL } else { EXIT_OK })
}
