//! The binary edge: argv, environment, terminal, exit codes. Everything else
//! lives in the library.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use regkeeper::config::{self, Config, LogFormat};
use regkeeper::engine::{Engine, RuleReport, RunResult};
use regkeeper::oci::Platform;
use regkeeper::plan::TargetAction;
use regkeeper::reference::{ImageRef, Reference};
use regkeeper::retention::{
    DeletionStatus, Pruner, ReadOnly, RetentionReport, RetentionState, Unix,
};
use regkeeper::state::State;
use regkeeper::transport::Transports;

/// Exit codes (SPEC section 1).
const EXIT_OK: u8 = 0;
const EXIT_PARTIAL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_STATE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "regkeeper",
    version,
    about = "Keeps container registries in step"
)]
struct Cli {
    /// Configuration file [default: $REGKEEPER_CONFIG, else /etc/regkeeper/config.toml]
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Evaluate retention as if the time were this (Unix seconds). For tests.
    #[arg(long = "now", global = true, hide = true)]
    now: Option<i64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run rules once now (all when none are named).
    Sync { rules: Vec<String> },
    /// Dry run: show what sync would copy (with byte counts) and what retention
    /// would delete (with reasons). Sends no write request.
    Plan {
        rules: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration offline.
    Check,
    /// Copy one image (tag or digest) ad hoc.
    Copy {
        src: String,
        dst: String,
        /// Keep only these platforms (os/arch[/variant]) of a multi-platform image.
        #[arg(long = "platform")]
        platforms: Vec<String>,
    },
    /// Daemon: schedules, metrics, reload (SIGHUP), orderly stop (SIGTERM).
    Run,
    /// Per-rule status from the state database: last run, result, lag, pending work.
    Status {
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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The one crypto provider for every TLS connection; an error only means
    // one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_PARTIAL);
        }
    };
    let daemon = matches!(cli.command, Command::Run);
    let result = runtime.block_on(run(cli));
    if daemon {
        // Runs still going after the shutdown grace period live on blocking
        // threads that dropping the runtime would wait for: exit now.
        let code = match &result {
            Ok(c) => *c,
            Err(e) => {
                eprintln!("error: {e:#}");
                EXIT_PARTIAL
            }
        };
        std::process::exit(code.into());
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_PARTIAL)
        }
    }
}

fn config_path(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone().unwrap_or_else(config::default_path)
}

/// Loads the config or prints every problem with file, line and column.
fn load_config(path: &Path) -> Result<Config, u8> {
    load_config_with(path, config::Secrets::All)
}

/// `load_config`, reading only the secrets `secrets` says; prints warnings.
fn load_config_with(path: &Path, secrets: config::Secrets) -> Result<Config, u8> {
    let config = config::load_with(path, secrets).map_err(|e| {
        eprintln!("{e}");
        EXIT_USAGE
    })?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(config)
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

fn transports(config: &Config, read_only: bool) -> Arc<Transports> {
    regkeeper::daemon::transports(config, read_only)
}

/// Opens the state database or says why not (exit code 3).
fn open_state(config: &Config) -> Result<State, u8> {
    State::open(&config.daemon.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_STATE
    })
}

/// Selects the named rules (all when none), or says which names are unknown.
/// Loads the config and selects the named rules (all when none).
fn load_rules(
    config_arg: &Option<PathBuf>,
    names: &[String],
) -> Result<(Config, Vec<regkeeper::config::Rule>), u8> {
    let config = load_config(&config_path(config_arg))?;
    let rules = select_rules(&config, names)?.into_iter().cloned().collect();
    Ok((config, rules))
}

fn select_rules<'a>(
    config: &'a Config,
    names: &[String],
) -> Result<Vec<&'a regkeeper::config::Rule>, u8> {
    if names.is_empty() {
        return Ok(config.rules.iter().collect());
    }
    let mut out = Vec::new();
    for name in names {
        match config.rules.iter().find(|r| &r.name == name) {
            Some(r) => out.push(r),
            None => {
                let known: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
                eprintln!(
                    "error: {}: no rule named {name:?} (rules: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
                return Err(EXIT_USAGE);
            }
        }
    }
    Ok(out)
}

/// A byte progress bar on a terminal; nothing otherwise (logs say enough).
/// On a terminal, a progress line: bytes read (with rate), images pushed,
/// blobs copied and mounted. Nothing otherwise (logs say enough).
fn progress(engine: &mut Engine, show: bool) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}), {msg} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let b = bar.clone();
    engine.on_bytes(Arc::new(move |n| b.inc(n)));
    let stats = engine.stats().clone();
    let b = bar.clone();
    tokio::spawn(async move {
        while !b.is_finished() {
            let t = stats.totals();
            b.set_message(format!(
                "{} image(s), {} blob(s) copied, {} mounted, {} present",
                t.images_copied, t.blobs_copied, t.blobs_mounted, t.blobs_skipped
            ));
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    Some(bar)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let on_terminal = std::io::stderr().is_terminal();
    match cli.command {
        Command::Check => {
            let path = config_path(&cli.config);
            let config = match load_config_with(&path, config::Secrets::FilesOnly) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!("{}: valid, {} rule(s)", path.display(), config.rules.len());
            Ok(EXIT_OK)
        }
        Command::Sync { rules } => {
            let (config, selected) = match load_rules(&cli.config, &rules) {
                Ok(loaded) => loaded,
                Err(code) => return Ok(code),
            };
            init_logging(config.daemon.log_format, on_terminal);
            let state = match open_state(&config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let transports = transports(&config, false);
            let pruner = selected.iter().any(|r| r.retention.is_some()).then(|| {
                Pruner::new(
                    transports.clone(),
                    Arc::new(state.clone()),
                    false,
                    now(cli.now),
                )
            });
            let mut engine = Engine::new(transports, config.daemon.max_concurrent_transfers, false)
                .with_state(state.clone());
            let bar = progress(&mut engine, on_terminal);
            let mut code = EXIT_OK;
            let mut reports = Vec::new();
            for rule in &selected {
                if let Some(b) = &bar {
                    b.set_prefix(format!("rule {}:", rule.name));
                }
                let report =
                    regkeeper::daemon::run_rule(&engine, Some(&state), None, rule, pruner.as_ref())
                        .await;
                if report.result != RunResult::Success {
                    code = EXIT_PARTIAL;
                }
                reports.push(report);
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            for report in &reports {
                print_sync_summary(report);
                if let Some(r) = &report.retention {
                    print_retention(&report.rule, r);
                }
            }
            Ok(code)
        }
        Command::Plan { rules, json } => {
            let (config, selected) = match load_rules(&cli.config, &rules) {
                Ok(loaded) => loaded,
                Err(code) => return Ok(code),
            };
            init_logging(config.daemon.log_format, true);
            // Read-only transports: a write request is refused before it is sent.
            let transports = transports(&config, true);
            let pruner = if selected.iter().any(|r| r.retention.is_some()) {
                match retention_state(&config, false) {
                    Ok(state) => Some(Pruner::new(transports.clone(), state, true, now(cli.now))),
                    Err(code) => return Ok(code),
                }
            } else {
                None
            };
            let engine = Engine::new(transports, config.daemon.max_concurrent_transfers, true);
            let mut reports = Vec::new();
            let mut code = EXIT_OK;
            for rule in &selected {
                let report = engine.run_rule(rule, pruner.as_ref()).await;
                if report.result != RunResult::Success {
                    code = EXIT_PARTIAL;
                }
                reports.push(report);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "rules": reports }))?
                );
            } else {
                for report in &reports {
                    print_plan(report);
                    if let Some(r) = &report.retention {
                        print_retention(&report.rule, r);
                    }
                }
            }
            Ok(code)
        }
        Command::Copy {
            src,
            dst,
            platforms,
        } => copy_command(&cli.config, &src, &dst, &platforms, on_terminal).await,
        Command::Run => {
            let path = config_path(&cli.config);
            let config = match load_config(&path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(config.daemon.log_format, false);
            match regkeeper::daemon::run(config, path).await {
                Ok(()) => Ok(EXIT_OK),
                Err(e @ regkeeper::daemon::DaemonError::State(_)) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    Ok(EXIT_STATE)
                }
                // The address is in the config: fixing it is a config change.
                Err(e @ regkeeper::daemon::DaemonError::Listen { .. }) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    Ok(EXIT_USAGE)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    Ok(EXIT_PARTIAL)
                }
            }
        }
        Command::Status { json } => {
            let config = match load_config_with(&config_path(&cli.config), config::Secrets::None) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let state = match open_state(&config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let rules = match regkeeper::daemon::status::collect(&config, &state) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(EXIT_STATE);
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "rules": rules }))?
                );
            } else {
                print!("{}", regkeeper::daemon::status::render_text(&rules));
            }
            Ok(EXIT_OK)
        }
        Command::Prune {
            rules,
            dry_run,
            json,
        } => prune_command(&cli.config, cli.now, &rules, dry_run, json).await,
    }
}

/// The current time, or the one given with the hidden `--now`.
fn now(given: Option<i64>) -> Unix {
    given.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

/// Retention's state: written by real runs, only read by plans and dry runs.
/// Retention's view of the state database; read-only (writes dropped, no
/// journal) for `plan` and dry runs.
fn retention_state(config: &Config, write: bool) -> Result<Arc<dyn RetentionState>, u8> {
    let state: Arc<dyn RetentionState> = Arc::new(open_state(config)?);
    Ok(if write {
        state
    } else {
        Arc::new(ReadOnly(state))
    })
}

async fn prune_command(
    config_arg: &Option<PathBuf>,
    now_arg: Option<i64>,
    names: &[String],
    dry_run: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let (config, selected) = match load_rules(config_arg, names) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    // Named rules must have a retention; unnamed: every rule that has one.
    let mut rules = Vec::new();
    for rule in selected {
        if rule.retention.is_some() {
            rules.push(rule);
        } else if !names.is_empty() {
            eprintln!(
                "error: {}: rule {:?} has no [rule.retention]; nothing to prune",
                config.path.display(),
                rule.name
            );
            return Ok(EXIT_USAGE);
        }
    }
    init_logging(config.daemon.log_format, json);
    let state = match retention_state(&config, !dry_run) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // A dry run's transports refuse every write before it is sent.
    let pruner = Pruner::new(transports(&config, dry_run), state, dry_run, now(now_arg));
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
        let rules: Vec<serde_json::Value> = reports
            .iter()
            .map(|(name, r)| serde_json::json!({ "rule": name, "retention": r }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rules": rules }))?
        );
    } else {
        for (name, r) in &reports {
            print_retention(name, r);
        }
    }
    Ok(code)
}

async fn copy_command(
    config_arg: &Option<PathBuf>,
    src: &str,
    dst: &str,
    platforms: &[String],
    on_terminal: bool,
) -> anyhow::Result<u8> {
    let parse =
        |what: &str, s: &str| ImageRef::parse(s).with_context(|| format!("{what} reference"));
    let (src, dst) = match (parse("source", src), parse("destination", dst)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let mut wanted = Vec::new();
    for p in platforms {
        match Platform::parse(p) {
            Some(p) => wanted.push(p),
            None => {
                eprintln!("error: --platform {p:?}: expected os/arch[/variant], e.g. linux/amd64");
                return Ok(EXIT_USAGE);
            }
        }
    }
    // Registry settings come from the config when there is one; without a
    // config file (an explicit -c must exist) defaults apply.
    let path = config_path(config_arg);
    let config = if config_arg.is_some()
        || std::env::var_os("REGKEEPER_CONFIG").is_some()
        || path.exists()
    {
        match load_config(&path) {
            Ok(c) => Some(c),
            Err(code) => return Ok(code),
        }
    } else {
        None
    };
    let format = config
        .as_ref()
        .map(|c| c.daemon.log_format)
        .unwrap_or(LogFormat::Text);
    init_logging(format, on_terminal);
    let (transports, limit) = match &config {
        Some(c) => (transports(c, false), c.daemon.max_concurrent_transfers),
        None => (Arc::new(Transports::new(HashMap::new(), false)), 8),
    };
    let reference = src
        .reference
        .clone()
        .unwrap_or(Reference::Tag("latest".into()));
    // The destination tag: the one given, else the source's tag; a source
    // named by digest and a destination without a tag copies by digest.
    let tag = match (&dst.reference, &reference) {
        (Some(Reference::Tag(t)), _) => Some(t.clone()),
        (Some(Reference::Digest(_)), _) => None,
        (None, Reference::Tag(t)) => Some(t.clone()),
        (None, Reference::Digest(_)) => None,
    };
    let source = transports.open(&src.location)?;
    let target = transports.open(&dst.location)?;
    let mut engine = Engine::new(transports, limit, false);
    let bar = progress(&mut engine, on_terminal);
    let result = engine
        .copy_image(
            &source,
            reference.as_str(),
            &target,
            tag.as_deref(),
            &wanted,
        )
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match result {
        Ok(digest) => {
            if let Reference::Digest(want) = dst
                .reference
                .clone()
                .unwrap_or(Reference::Tag(String::new()))
            {
                if want != digest {
                    eprintln!("error: copied {digest}, but the destination names {want}");
                    return Ok(EXIT_PARTIAL);
                }
            }
            let t = engine.stats().totals();
            println!(
                "copied {src} -> {}{} ({digest}): {} blob(s) copied, {} mounted, {} already present, {} bytes",
                dst.location,
                tag.map(|t| format!(":{t}")).unwrap_or_default(),
                t.blobs_copied,
                t.blobs_mounted,
                t.blobs_skipped,
                t.bytes_written
            );
            Ok(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: copying {src} to {dst}: {e}");
            Ok(EXIT_PARTIAL)
        }
    }
}

fn print_sync_summary(r: &RuleReport) {
    println!(
        "rule {}: {} in {:.1}s: {} repositories, {} tag(s) copied, {} in sync, {} failed{}; {} blob(s) copied, {} mounted, {} present, {} manifest(s) pushed, {} bytes",
        r.rule,
        r.result.as_str(),
        r.duration_seconds,
        r.repositories,
        r.tags_copied,
        r.tags_in_sync,
        r.tags_failed,
        if r.tags_kept_immutable > 0 {
            format!(", {} kept (immutable)", r.tags_kept_immutable)
        } else {
            String::new()
        },
        r.totals.blobs_copied,
        r.totals.blobs_mounted,
        r.totals.blobs_skipped,
        r.totals.manifests_pushed,
        r.totals.bytes_written,
    );
    for image in r.images.iter().filter(|i| i.error.is_some()) {
        println!(
            "  FAILED {}:{} -> {}: {}",
            image.source,
            image.tag,
            image.target,
            image.error.as_deref().unwrap_or("")
        );
    }
    for e in &r.errors {
        println!("  FAILED {e}");
    }
}

fn print_plan(r: &RuleReport) {
    println!("rule {}:", r.rule);
    let mut copies = 0;
    for image in &r.images {
        let what = match &image.action {
            TargetAction::InSync | TargetAction::DeletedByRetention => continue,
            TargetAction::Create => "create".to_string(),
            TargetAction::Update { from } => format!("update from {}", from.short()),
            TargetAction::KeepImmutable { existing } => {
                format!("keep (immutable, target has {})", existing.short())
            }
        };
        copies += 1;
        let cost = image
            .cost
            .map(|c| {
                format!(
                    ", {} blob(s) / {} bytes to copy, {} to mount, {} present",
                    c.blobs_to_copy, c.bytes_to_copy, c.blobs_to_mount, c.blobs_present
                )
            })
            .unwrap_or_default();
        let err = image
            .error
            .as_deref()
            .map(|e| format!(" ERROR: {e}"))
            .unwrap_or_default();
        println!(
            "  {}:{} -> {}: {what} {}{cost}{err}",
            image.source,
            image.tag,
            image.target,
            image.digest.short()
        );
    }
    for e in &r.errors {
        println!("  ERROR {e}");
    }
    println!(
        "  {} to copy, {} in sync, {} bytes to copy{}",
        copies,
        r.tags_in_sync,
        r.pending_bytes(),
        if r.result == RunResult::Success {
            String::new()
        } else {
            format!(" ({})", r.result.as_str())
        }
    );
}

fn print_retention(rule: &str, r: &RetentionReport) {
    println!(
        "rule {rule}: retention{}",
        if r.dry_run { " (dry run)" } else { "" }
    );
    for repo in &r.repositories {
        println!("  {}:", repo.repository);
        for d in &repo.deletions {
            let tags = if d.deletion.tags.is_empty() {
                "untagged".to_string()
            } else {
                d.deletion.tags.join(", ")
            };
            let status = match &d.status {
                DeletionStatus::Planned => "would delete".to_string(),
                DeletionStatus::Deleted => "deleted".to_string(),
                DeletionStatus::Failed { error } => format!("FAILED to delete ({error})"),
                DeletionStatus::Skipped => "not deleted (an earlier deletion failed)".to_string(),
            };
            println!(
                "    {status} {} [{tags}]: {}",
                d.deletion.digest, d.reason_text
            );
        }
        let mut unmatched = 0;
        for k in &repo.kept {
            if k.reason == regkeeper::retention::KeepReason::NotMatched {
                unmatched += 1;
                continue;
            }
            match &k.tag {
                Some(t) => println!("    keep {t} ({}): {}", k.digest.short(), k.reason),
                None => println!("    keep untagged {}: {}", k.digest, k.reason),
            }
        }
        if unmatched > 0 {
            println!("    keep {unmatched} tag(s) not matched by retention.match");
        }
        if let Some(why) = &repo.refused {
            println!("    REFUSED: {why}");
        }
    }
    for e in &r.errors {
        println!("  ERROR {e}");
    }
    println!(
        "  {} deleted, {} planned, {} failed{}",
        r.deleted,
        r.planned,
        r.failed,
        if r.refused {
            ", refused (see above)"
        } else {
            ""
        }
    );
}
