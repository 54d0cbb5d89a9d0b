//! SIGINT and SIGTERM for the one-shot commands (`sync`, `copy`, `prune`),
//! the way the daemon stops: the first signal cancels the command's stop
//! token, so nothing new starts and a chunked upload finishes and
//! checkpoints the chunk in flight; the command then prints its summary and
//! exits 130 (SIGINT) or 143 (SIGTERM). A second signal, or work still
//! going `GRACE` after the first, exits at once with the same code. Every
//! way out removes this process's temporary files from the layouts the
//! command writes (a normal end leaves none anyway).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use regkeeper::config::Rule;
use regkeeper::reference::Location;
use regkeeper::transport::layout::{Owner, list_repositories, sweep_temp_files};

use super::CliError;

/// How long the work gets after the first signal (within the 10 s promised).
const GRACE: Duration = regkeeper::daemon::SHUTDOWN_GRACE;

/// The exit code of a process ended by signal `n` (the shell convention).
const fn code_of(signal: u8) -> u8 {
    128 + signal
}
pub(crate) const EXIT_SIGINT: u8 = code_of(2);
pub(crate) const EXIT_SIGTERM: u8 = code_of(15);

/// The installed handler of one command.
pub(crate) struct Interrupt {
    stop: CancellationToken,
    /// 0 until the first signal, then its exit code.
    code: Arc<AtomicU8>,
    layouts: Arc<Vec<LayoutRoot>>,
}

/// A layout a command writes, or a prefix of layouts (`oci:DIR/*`).
#[derive(Debug, Clone)]
pub(crate) struct LayoutRoot {
    pub path: PathBuf,
    pub prefix: bool,
}

impl Interrupt {
    /// Installs the handler. `layouts`: the layouts the command may write
    /// (each is swept on the way out after a signal).
    pub(crate) fn install(layouts: Vec<LayoutRoot>) -> Result<Interrupt, CliError> {
        let cannot = |e: std::io::Error| {
            CliError::Failed(anyhow::anyhow!("cannot install the signal handlers: {e}"))
        };
        let mut int = signal(SignalKind::interrupt()).map_err(cannot)?;
        let mut term = signal(SignalKind::terminate()).map_err(cannot)?;
        let this = Interrupt {
            stop: CancellationToken::new(),
            code: Arc::new(AtomicU8::new(0)),
            layouts: Arc::new(layouts),
        };
        let (stop, code, layouts) = (this.stop.clone(), this.code.clone(), this.layouts.clone());
        tokio::spawn(async move {
            let (name, first) = tokio::select! {
                _ = int.recv() => ("SIGINT", EXIT_SIGINT),
                _ = term.recv() => ("SIGTERM", EXIT_SIGTERM),
            };
            code.store(first, Ordering::SeqCst);
            stop.cancel();
            tracing::warn!(signal = name, "interrupted: starting nothing new");
            eprintln!(
                "{name}: finishing the chunks in flight, then stopping (send it again to stop at once)"
            );
            let why = tokio::select! {
                _ = int.recv() => "a second signal",
                _ = term.recv() => "a second signal",
                _ = tokio::time::sleep(GRACE) => "the work did not stop in time",
            };
            eprintln!(
                "{name}: stopping at once ({why}); interrupted uploads continue on the next run"
            );
            sweep(&layouts, Owner::ThisProcess).await;
            std::process::exit(first.into());
        });
        Ok(this)
    }

    /// The token the command's engine or pruner stops on.
    pub(crate) fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The command's exit code: 130/143 after a signal (temporary files
    /// swept), else `code`.
    pub(crate) async fn finish(&self, code: u8) -> u8 {
        match self.code.load(Ordering::SeqCst) {
            0 => code,
            signalled => {
                sweep(&self.layouts, Owner::ThisProcess).await;
                signalled
            }
        }
    }

    /// Removes what killed processes left in the layouts (at the start of a
    /// run that writes them).
    pub(crate) async fn sweep_dead(&self) {
        sweep(&self.layouts, Owner::Dead).await;
    }
}

/// The layouts `rules` write: each `oci:` target and target prefix.
pub(crate) fn layouts_of(rules: &[Rule]) -> Vec<LayoutRoot> {
    rules
        .iter()
        .flat_map(|r| &r.targets)
        .filter_map(|spec| match &spec.location {
            Location::Layout { path } => Some(LayoutRoot {
                path: path.clone(),
                prefix: spec.wildcard,
            }),
            Location::Registry { .. } => None,
        })
        .collect()
}

/// Removes `owner`'s temporary files from every layout in `roots` (every
/// layout under a prefix, as listed now).
async fn sweep(roots: &[LayoutRoot], owner: Owner) {
    let mut layouts = Vec::new();
    for root in roots {
        if !root.prefix {
            layouts.push(root.path.clone());
            continue;
        }
        match list_repositories(&root.path).await {
            Ok(found) => layouts.extend(found.iter().map(|rel| root.path.join(rel))),
            Err(e) => tracing::warn!(prefix = %root.path.display(), error = %e,
                "cannot list the layouts under a target prefix to remove temporary files"),
        }
    }
    for layout in layouts {
        match sweep_temp_files(&layout, owner) {
            Ok(0) => {}
            Ok(n) => tracing::info!(layout = %layout.display(), removed = n,
                "removed temporary files of an interrupted write"),
            Err(e) => tracing::warn!(layout = %layout.display(), error = %e,
                "cannot remove temporary files; remove the .tmp-* files there by hand"),
        }
    }
}

/// Splits per-rule outcomes into the reports of the rules that ran and the
/// names of those a signal kept from starting.
pub(crate) fn split_started<R>(outcomes: Vec<Result<R, String>>) -> (Vec<R>, Vec<String>) {
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for o in outcomes {
        match o {
            Ok(r) => ran.push(r),
            Err(name) => skipped.push(name),
        }
    }
    (ran, skipped)
}
