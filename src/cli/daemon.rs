//! `regkeeper run`: the daemon (schedules, metrics, reload, orderly stop).

use super::{CliError, EXIT_OK, Globals};

pub(crate) async fn run(g: &Globals, peer_url: Option<&str>) -> Result<u8, CliError> {
    let path = g.config_path();
    let config = super::load_config(&path)?;
    super::init_logging(config.daemon.log_format, false);
    let shard = g.shard(&config)?;
    let peers = match peer_url.filter(|_| !shard.is_whole()) {
        Some(p) => Some(
            regkeeper::daemon::Peers::parse(p)
                .map_err(|e| CliError::Usage(format!("error: --peer-url: {e}")))?,
        ),
        None => None,
    };
    let _lock = super::lock_state(&config)?;
    match regkeeper::daemon::run(config, path, shard, peers).await {
        Ok(()) => Ok(EXIT_OK),
        Err(e @ regkeeper::daemon::DaemonError::State(_)) => {
            tracing::error!("{e}");
            Err(CliError::State(e.to_string()))
        }
        // The address is in the config: fixing it is a config change (exit 2).
        Err(e @ regkeeper::daemon::DaemonError::Listen { .. }) => {
            tracing::error!("{e}");
            Err(CliError::Usage(format!("error: {e}")))
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(CliError::Failed(e.into()))
        }
    }
}
