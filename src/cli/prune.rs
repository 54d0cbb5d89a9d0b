//! `regkeeper prune [RULE...] [--dry-run]`: retention only.

use regkeeper::engine::RuleReport;

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
    let _lock = match dry_run {
        true => None,
        false => Some(super::lock_state(&config)?),
    };
    let state = if dry_run {
        super::open_state_read_only(&config)?
    } else {
        Some(super::open_state(&config)?)
    };
    // A dry run's transports refuse every write before it is sent.
    let transports = super::transports(&config, dry_run);
    let pruner = super::pruner(&transports, state.as_ref(), dry_run, g.now()).with_shard(shard);
    let mut code = EXIT_OK;
    let mut reports = Vec::new();
    for rule in &rules {
        if let Some(r) = pruner.prune_rule(rule).await {
            if !r.ok() {
                code = EXIT_PARTIAL;
            }
            reports.push((rule.name.clone(), r));
        }
    }
    if json {
        // the document of `plan` and `sync` (no copies): one deletion shape
        let reports: Vec<RuleReport> = reports
            .into_iter()
            .map(|(name, r)| RuleReport::from_retention(&name, r))
            .collect();
        let mut doc = super::output::document(dry_run, &reports);
        doc.shard = (!shard.is_whole()).then_some(shard);
        let text = serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        for (name, r) in &reports {
            print_retention(name, r);
        }
    }
    Ok(code)
}
