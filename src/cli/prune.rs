//! `regkeeper prune [RULE...] [--dry-run]`: retention only.

use regkeeper::engine::{Engine, Mode, Pass};

use super::output::print_retention;
use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

pub(crate) async fn run(
    g: &Globals,
    names: &[String],
    dry_run: bool,
    json: bool,
) -> Result<u8, CliError> {
    let (config, selected) = g.load_rules(names)?;
    let shard = g.shard(&config)?;
    // Named rules must have a retention; unnamed: every rule that has one.
    let mut rules = Vec::new();
    for rule in selected {
        if rule.retention.is_some() {
            rules.push(rule);
        } else if !names.is_empty() {
            return Err(CliError::Usage(format!(
                "error: {}: rule {:?} has no [rule.retention]; nothing to prune",
                config.path.display(),
                rule.name
            )));
        }
    }
    super::init_logging(config.daemon.log_format, json);
    let interrupt = super::signals::Interrupt::install(Vec::new())?;
    let _lock = match dry_run {
        true => None,
        false => Some(super::lock_state(&config)?),
    };
    let mode = if dry_run { Mode::Estimate } else { Mode::Apply };
    let state = match mode {
        Mode::Estimate => super::open_state_read_only(&config)?,
        Mode::Apply => Some(super::open_state(&config)?),
    };
    // The rule's one plan (the same inventory as `sync`), of which a prune
    // carries out the deletions only.
    let transports = super::transports(&config, mode);
    let mut engine = Engine::new(transports, config.daemon.max_concurrent_transfers, mode)
        .with_clock(g.now)
        .with_shard(shard)
        .with_stop(interrupt.token());
    if let Some(s) = state {
        engine = engine.with_state(s);
    }
    let mut code = EXIT_OK;
    let mut reports = Vec::new();
    for rule in &rules {
        if interrupt.interrupted() {
            eprintln!(
                "rule {}: not started (interrupted); the next run does it",
                rule.name
            );
            continue;
        }
        let report = engine.run_rule(rule, Pass::NoCopies).await;
        let ok = report.retention.as_ref().is_some_and(|r| r.ok());
        if !ok || !report.errors.is_empty() {
            code = EXIT_PARTIAL;
        }
        reports.push(report);
    }
    if json {
        // the document of `plan` and `sync`, without copies
        let mut doc = super::output::document(dry_run, &reports);
        doc.shard = (!shard.is_whole()).then_some(shard);
        let text = serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        for report in &reports {
            if let Some(r) = &report.retention {
                print_retention(&report.rule, r);
            }
        }
    }
    Ok(interrupt.finish(code).await)
}
