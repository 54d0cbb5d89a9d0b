//! `regkeeper sync [RULE...]`: run rules once now; the Apply executor.

use regkeeper::engine::{Engine, RunResult};

use super::output::{document, print_retention, print_sync_summary};
use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

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
    let mut reports = Vec::new();
    for rule in &rules {
        if let Some(b) = &bar {
            b.set_prefix(format!("rule {}:", rule.name));
        }
        let report =
            regkeeper::daemon::run_rule(&engine, Some(&state), None, rule, pruner.as_ref()).await;
        reports.push(report);
    }
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
