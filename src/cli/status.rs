//! `regkeeper status [RULE...]`: per rule, the last run, lag and pending work, read
//! from the state database (safe while the daemon runs).

use super::{CliError, EXIT_OK, Globals};

pub(crate) fn run(g: &Globals, names: &[String], json: bool) -> Result<u8, CliError> {
    let mut config = super::load_config_with(&g.config_path(), regkeeper::config::Secrets::None)?;
    // Only the named rules; an unknown name is exit 2, naming it.
    config.rules = super::select_rules(&config, names)?;
    let shard = g.shard(&config)?;
    let summary = regkeeper::shard::summary(shard, &config.rules);
    config.rules.retain(|r| shard.runs_rule(r));
    let state = super::open_state(&config)?;
    let rules = regkeeper::daemon::status::collect(&config, &state)
        .map_err(|e| CliError::State(e.to_string()))?;
    if json {
        let mut doc = serde_json::json!({ "rules": rules });
        if !shard.is_whole() {
            doc["shard"] = serde_json::json!(shard);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?
        );
    } else {
        if let Some(s) = summary {
            println!("{s}");
        }
        print!("{}", regkeeper::daemon::status::render_text(&rules));
    }
    Ok(EXIT_OK)
}
