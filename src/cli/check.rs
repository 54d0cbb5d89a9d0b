//! `regkeeper check`: validate the configuration offline.

use super::{CliError, EXIT_OK, Globals};

pub(crate) fn run(g: &Globals) -> Result<u8, CliError> {
    let path = g.config_path();
    let config = super::load_config_with(&path, regkeeper::config::Secrets::FilesOnly)?;
    println!("{}: valid, {} rule(s)", path.display(), config.rules.len());
    Ok(EXIT_OK)
}
