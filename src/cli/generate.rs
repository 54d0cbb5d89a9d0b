//! `regkeeper generate`: hidden; writes the man pages and shell completion
//! scripts from the clap definitions, for packaging (`packaging/build-deb.sh`).
//! A subcommand rather than a build script keeps the build free of generated
//! files: the packager runs the binary it ships.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use super::{Cli, CliError, EXIT_OK};

#[derive(Subcommand)]
pub(crate) enum Generate {
    /// Man pages: regkeeper.1 and one per command (regkeeper-sync.1, ...).
    Man {
        /// Directory to write them to (created when missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL, under the file name that shell's
    /// generator chooses (regkeeper.bash, _regkeeper, regkeeper.fish, ...).
    Completions {
        shell: Shell,
        /// Directory to write it to (created when missing).
        dir: PathBuf,
    },
}

pub(crate) fn run(what: &Generate) -> Result<u8, CliError> {
    let cmd = Cli::command();
    let (dir, written) = match what {
        Generate::Man { dir } => {
            create(dir)?;
            let written = clap_mangen::generate_to(cmd, dir).map(|()| dir.clone());
            (dir, written)
        }
        Generate::Completions { shell, dir } => {
            create(dir)?;
            let mut cmd = cmd;
            let written = clap_complete::generate_to(*shell, &mut cmd, "regkeeper", dir);
            (dir, written)
        }
    };
    match written {
        Ok(path) => {
            println!("{}", path.display());
            Ok(EXIT_OK)
        }
        Err(e) => Err(write_error(dir, &e)),
    }
}

fn create(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, &e))
}

fn write_error(dir: &Path, e: &std::io::Error) -> CliError {
    CliError::Usage(format!(
        "error: cannot write to {}: {e}; give a directory you can write to",
        dir.display()
    ))
}
