//! `regkeeper copy SRC DST`: one image (tag or digest), ad hoc.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use regkeeper::config::LogFormat;
use regkeeper::engine::Engine;
use regkeeper::oci::Platform;
use regkeeper::reference::{ImageRef, Reference};
use regkeeper::transport::Transports;

use super::{CliError, EXIT_OK, EXIT_PARTIAL, Globals};

fn parse_refs(src: &str, dst: &str) -> Result<(ImageRef, ImageRef), CliError> {
    let parse =
        |what: &str, s: &str| ImageRef::parse(s).with_context(|| format!("{what} reference"));
    match (parse("source", src), parse("destination", dst)) {
        (Ok(s), Ok(d)) => Ok((s, d)),
        (Err(e), _) | (_, Err(e)) => Err(CliError::Usage(format!("error: {e:#}"))),
    }
}

fn parse_platforms(platforms: &[String]) -> Result<Vec<Platform>, CliError> {
    platforms
        .iter()
        .map(|p| {
            Platform::parse(p).ok_or_else(|| {
                CliError::Usage(format!(
                    "error: --platform {p:?}: expected os/arch[/variant], e.g. linux/amd64"
                ))
            })
        })
        .collect()
}

/// Registry settings come from the config when there is one; without a
/// config file (an explicit -c must exist) defaults apply.
fn optional_config(g: &Globals) -> Result<Option<regkeeper::config::Config>, CliError> {
    let path = g.config_path();
    let wanted =
        g.config.is_some() || std::env::var_os("REGKEEPER_CONFIG").is_some() || path.exists();
    wanted.then(|| super::load_config(&path)).transpose()
}

pub(crate) async fn run(
    g: &Globals,
    src: &str,
    dst: &str,
    platforms: &[String],
) -> Result<u8, CliError> {
    let (src, dst) = parse_refs(src, dst)?;
    let wanted = parse_platforms(platforms)?;
    let config = optional_config(g)?;
    let format = config
        .as_ref()
        .map_or(LogFormat::Text, |c| c.daemon.log_format);
    super::init_logging(format, g.on_terminal);
    let (transports, limit) = match &config {
        Some(c) => (
            super::transports(c, false),
            c.daemon.max_concurrent_transfers,
        ),
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
    let source = transports
        .open(&src.location)
        .map_err(anyhow::Error::from)?;
    let target = transports
        .open(&dst.location)
        .map_err(anyhow::Error::from)?;
    let mut engine = Engine::new(transports, limit, false);
    let bar = super::progress::start(&mut engine, g.on_terminal);
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
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: copying {src} to {dst}: {e}");
            return Ok(EXIT_PARTIAL);
        }
    };
    if let Some(Reference::Digest(want)) = &dst.reference {
        if *want != digest {
            eprintln!("error: copied {digest}, but the destination names {want}");
            return Ok(EXIT_PARTIAL);
        }
    }
    let t = engine.stats().totals();
    println!(
        "copied {src} -> {}{} ({digest}): {} blob(s) copied, {} mounted, {} already present, {}",
        dst.location,
        tag.map(|t| format!(":{t}")).unwrap_or_default(),
        t.blobs_copied,
        t.blobs_mounted,
        t.blobs_skipped,
        super::output::human(t.bytes_written)
    );
    Ok(EXIT_OK)
}
