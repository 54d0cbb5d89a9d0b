//! `regkeeper plan [RULE...]`: the same inventory and run plan as `sync`,
//! carried out by the Estimate executor: HEADs only, on read-only
//! transports, with the state database opened read-only (its journal and
//! first-seen times are read as data; nothing is written).

use regkeeper::engine::{Engine, Mode, Pass, RunResult};

use super::output::{document, print_plan};
use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

pub(crate) async fn run(g: &Globals, names: &[String], json: bool) -> Result<u8, CliError> {
    let (config, rules) = g.load_rules(names)?;
    let shard = g.shard(&config)?;
    super::init_logging(config.daemon.log_format, true);
    // An estimate: transports that refuse a write before it is sent, the
    // state read-only.
    let transports = super::transports(&config, Mode::Estimate);
    let state = super::open_state_read_only(&config)?;
    let mut engine = Engine::new(
        transports,
        config.daemon.max_concurrent_transfers,
        Mode::Estimate,
    )
    .with_clock(g.now)
    .with_shard(shard);
    if let Some(s) = state {
        engine = engine.with_state(s);
    }
    let mut reports = Vec::new();
    for rule in &rules {
        reports.push(engine.run_rule(rule, Pass::Whole).await);
    }
    let mut doc = document(true, &reports);
    doc.shard = (!shard.is_whole()).then_some(shard);
    if json {
        let text = serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        if let Some(s) = regkeeper::shard::summary(shard, &config.rules) {
            println!("{s}");
        }
        print_plan(&doc);
    }
    let failed = reports.iter().any(|r| r.result != RunResult::Success);
    Ok(if failed { EXIT_PARTIAL } else { EXIT_OK })
}
