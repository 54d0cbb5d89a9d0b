//! The commands (SPEC section 1), one file each. A command returns its exit
//! code (0 all succeeded, 1 some rule failed or was partial) or a
//! [`CliError`] that carries its own (2 usage or config, 3 state database).

mod check;
mod copy;
mod copy_verify;
mod daemon;
mod generate;
mod output;
mod plan;
mod progress;
mod prune;
mod signals;
mod status;
mod sync;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use regkeeper::config::{self, Config, LogFormat, Rule};
use regkeeper::engine::Mode;
use regkeeper::shard::Shard;
use regkeeper::state::State;
use regkeeper::transport::Transports;

/// Exit codes (SPEC section 1).
pub const EXIT_OK: u8 = 0;
pub const EXIT_PARTIAL: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_STATE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "regkeeper",
    version,
    about = "Keeps container registries in step"
)]
pub struct Cli {
    /// Configuration file [default: $REGKEEPER_CONFIG, else /etc/regkeeper/config.toml]
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Run as if the time were this (Unix seconds): retention's clock and
    /// first-seen times. For tests.
    #[arg(long = "now", global = true, hide = true)]
    now: Option<i64>,
    /// Run only shard K of N (0-based, e.g. 1/3) or "auto" [default: $REGKEEPER_SHARD, else daemon.shard]
    #[arg(long = "shard", global = true, value_name = "K/N")]
    shard: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run rules once now (all when none are named).
    Sync {
        rules: Vec<String>,
        /// Print JSON (one document: copies, deletions, errors; sync adds totals) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: show what sync would copy (with byte counts) and what retention
    /// would delete (with reasons). Sends no write request.
    Plan {
        rules: Vec<String>,
        /// Print JSON (one document: copies, deletions, errors; sync adds totals) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration offline.
    Check {
        /// Do not read secret files (password_file, webhook_token_file):
        /// check a config whose secrets exist only where it runs (a
        /// Kubernetes Secret, systemd credentials). Their paths are still
        /// checked for form.
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Copy one image (tag or digest) ad hoc.
    Copy {
        src: String,
        dst: String,
        /// Keep only these platforms (os/arch[/variant]) of a multi-platform image.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        #[command(flatten)]
        verify: Box<copy_verify::VerifyFlags>,
        #[command(flatten)]
        access: copy::AccessFlags,
    },
    /// Daemon: schedules, metrics, reload (SIGHUP), orderly stop (SIGTERM).
    Run {
        /// Where the other shards listen, for events another shard owns:
        /// a URL with {shard} for the shard number, e.g.
        /// http://regkeeper-{shard}.regkeeper:9469
        #[arg(long, env = "REGKEEPER_PEER_URL", value_name = "URL")]
        peer_url: Option<String>,
    },
    /// Per-rule status from the state database: last run, result, lag, pending work.
    Status {
        /// Only these rules (all when none are named).
        rules: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Retention only: apply the rules' [rule.retention] to their targets.
    Prune {
        rules: Vec<String>,
        /// Show what would be deleted, and why; send no write request.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Man pages and shell completions, for packagers.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: generate::Generate,
    },
}

/// Why a command stopped before (or instead of) doing its work.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or an invalid config: the message says everything (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The state database cannot be opened or migrated (exit 3).
    #[error("error: {0}")]
    State(String),
    /// Anything else that ends the command (exit 1).
    #[error("error: {0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::State(_) => EXIT_STATE,
            CliError::Failed(_) => EXIT_PARTIAL,
        }
    }
}

impl Cli {
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run { .. })
    }
}

/// What every command may need from the command line.
pub(crate) struct Globals {
    pub config: Option<PathBuf>,
    pub now: Option<i64>,
    pub on_terminal: bool,
    /// `--shard`.
    pub shard: Option<String>,
}

impl Globals {
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(config::default_path)
    }

    /// Loads the config, or says every problem with file, line and column.
    fn load_config(&self) -> Result<Config, CliError> {
        load_config(&self.config_path())
    }

    /// Loads the config and selects the named rules (all when none) that
    /// this instance's shard runs.
    fn load_rules(&self, names: &[String]) -> Result<(Config, Vec<Rule>), CliError> {
        let config = self.load_config()?;
        let shard = self.shard(&config)?;
        let mut rules = select_rules(&config, names)?;
        rules.retain(|rule| {
            let runs = shard.runs_rule(rule);
            if !runs && !names.is_empty() {
                eprintln!(
                    "rule {}: owned by another shard than {shard}; skipped",
                    rule.name
                );
            }
            runs
        });
        Ok((config, rules))
    }

    /// The shard: `--shard`, else `$REGKEEPER_SHARD`, else `daemon.shard`,
    /// else the whole; `auto` reads the hostname and `$REGKEEPER_SHARDS`.
    fn shard(&self, config: &Config) -> Result<Shard, CliError> {
        let env = |name: &str| std::env::var(name).ok();
        let hostname = env("HOSTNAME").filter(|h| !h.is_empty()).or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        });
        let (env_shard, shards) = (
            env(regkeeper::shard::SHARD_ENV),
            env(regkeeper::shard::SHARDS_ENV),
        );
        regkeeper::shard::ShardSources {
            flag: self.shard.as_deref(),
            env: env_shard.as_deref(),
            config: config.daemon.shard,
            hostname: hostname.as_deref(),
            shards: shards.as_deref(),
        }
        .resolve()
        .map_err(|e| CliError::Usage(format!("error: {e}")))
    }
}

pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let g = Globals {
        config: cli.config,
        now: cli.now,
        on_terminal: std::io::stderr().is_terminal(),
        shard: cli.shard,
    };
    match cli.command {
        Command::Check { skip_secrets } => check::run(&g, skip_secrets),
        Command::Sync { rules, json } => sync::run(&g, &rules, json).await,
        Command::Plan { rules, json } => plan::run(&g, &rules, json).await,
        Command::Copy {
            src,
            dst,
            platforms,
            verify,
            access,
        } => copy::run(&g, &src, &dst, &platforms, &verify, &access).await,
        Command::Run { peer_url } => daemon::run(&g, peer_url.as_deref()).await,
        Command::Status { rules, json } => status::run(&g, &rules, json),
        Command::Prune {
            rules,
            dry_run,
            json,
        } => prune::run(&g, &rules, dry_run, json).await,
        Command::Generate { what } => generate::run(&what),
    }
}

fn load_config(path: &Path) -> Result<Config, CliError> {
    load_config_with(path, config::Secrets::All)
}

/// `load_config`, reading only the secrets `secrets` says (`check` and
/// `status` run in a shell without the service's); prints the warnings.
fn load_config_with(path: &Path, secrets: config::Secrets) -> Result<Config, CliError> {
    let config = config::load_with(path, secrets).map_err(|e| CliError::Usage(e.to_string()))?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(config)
}

fn select_rules(config: &Config, names: &[String]) -> Result<Vec<Rule>, CliError> {
    if names.is_empty() {
        return Ok(config.rules.clone());
    }
    let mut out = Vec::new();
    for name in names {
        match config.rules.iter().find(|r| &r.name == name) {
            Some(r) => out.push(r.clone()),
            None => {
                let known: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
                return Err(CliError::Usage(format!(
                    "error: {}: no rule named {name:?} (rules: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    Ok(out)
}

fn init_logging(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_env("REGKEEPER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn transports(config: &Config, mode: Mode) -> Arc<Transports> {
    regkeeper::daemon::transports(config, mode)
}

/// Takes the exclusive lock on `state_dir` (`run`, `sync`, `prune`), held
/// until the guard drops; another holder is exit code 3, naming its PID.
fn lock_state(config: &Config) -> Result<regkeeper::state::StateLock, CliError> {
    regkeeper::state::StateLock::acquire(&config.daemon.state_dir)
        .map_err(|e| CliError::State(e.to_string()))
}

/// Opens the state database (exit code 3 when it cannot be).
fn open_state(config: &Config) -> Result<State, CliError> {
    State::open(&config.daemon.state_dir).map_err(|e| CliError::State(e.to_string()))
}

/// Opens the state database read-only, for plans and dry runs: they read the
/// journal and first-seen times as data and write nothing. `None` when there
/// is no database yet.
fn open_state_read_only(config: &Config) -> Result<Option<State>, CliError> {
    State::open_read_only(&config.daemon.state_dir).map_err(|e| CliError::State(e.to_string()))
}
