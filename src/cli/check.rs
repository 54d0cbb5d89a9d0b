//! `regkeeper check`: validate the configuration offline.

use regkeeper::config::Secrets;

use super::{CliError, EXIT_OK, Globals};

pub(crate) fn run(g: &Globals, skip_secrets: bool) -> Result<u8, CliError> {
    let path = g.config_path();
    let secrets = match skip_secrets {
        true => Secrets::None,
        false => Secrets::FilesOnly,
    };
    let config = super::load_config_with(&path, secrets)?;
    let note = match skip_secrets {
        true => " (secret files not read)",
        false => "",
    };
    println!(
        "{}: valid, {} rule(s){note}",
        path.display(),
        config.rules.len()
    );
    Ok(EXIT_OK)
}
