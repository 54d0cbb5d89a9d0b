//! `regkeeper copy SRC DST`: one image (tag or digest), ad hoc.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use regkeeper::config::LogFormat;
use regkeeper::engine::{Engine, Mode};
use regkeeper::oci::{Digest, Platform};
use regkeeper::reference::{ImageRef, Location, Reference};
use regkeeper::transport::{Hints, RegistryOptions, Store, Transports};
use regkeeper::verify::VerifyPolicy;

use super::copy_verify::VerifyFlags;
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

/// skopeo-style flags saying how to reach each side without a config; they
/// override that side's host settings from the config when there is one.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AccessFlags {
    /// `false`: HTTPS without certificate verification if the source
    /// registry speaks TLS, else plain HTTP (as skopeo).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    src_tls_verify: bool,
    /// The same for the destination registry.
    #[arg(long = "dest-tls-verify", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    dest_tls_verify: bool,
    /// A directory whose `*.crt` file is the source registry's CA.
    #[arg(long, value_name = "DIR")]
    src_cert_dir: Option<PathBuf>,
    /// A directory whose `*.crt` file is the destination registry's CA.
    #[arg(long = "dest-cert-dir", value_name = "DIR")]
    dest_cert_dir: Option<PathBuf>,
    /// A docker config.json with the source registry's credentials.
    #[arg(long, value_name = "FILE")]
    src_authfile: Option<PathBuf>,
    /// A docker config.json with the destination registry's credentials.
    #[arg(long = "dest-authfile", value_name = "FILE")]
    dest_authfile: Option<PathBuf>,
}

/// One side's share of [`AccessFlags`].
struct Side<'a> {
    flag: &'static str,
    tls_verify: bool,
    cert_dir: Option<&'a Path>,
    authfile: Option<&'a Path>,
}

impl AccessFlags {
    fn sides(&self) -> [Side<'_>; 2] {
        [
            Side {
                flag: "src",
                tls_verify: self.src_tls_verify,
                cert_dir: self.src_cert_dir.as_deref(),
                authfile: self.src_authfile.as_deref(),
            },
            Side {
                flag: "dest",
                tls_verify: self.dest_tls_verify,
                cert_dir: self.dest_cert_dir.as_deref(),
                authfile: self.dest_authfile.as_deref(),
            },
        ]
    }
}

/// The one `*.crt` in `dir` (containers/image's convention for a registry's
/// CA); regkeeper takes a single `ca_file`, so several are refused rather
/// than some silently ignored.
fn ca_in_cert_dir(flag: &str, dir: &Path) -> Result<PathBuf, CliError> {
    let usage =
        |why: String| CliError::Usage(format!("error: --{flag}-cert-dir {}: {why}", dir.display()));
    let entries = std::fs::read_dir(dir).map_err(|e| usage(e.to_string()))?;
    let mut crts: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt") && p.is_file())
        .collect();
    crts.sort();
    match crts.len() {
        1 => Ok(crts.remove(0)),
        0 => Err(usage("holds no *.crt file".into())),
        _ => Err(usage(format!(
            "holds {} *.crt files; put the CA(s) in one",
            crts.len()
        ))),
    }
}

/// Applies one side's flags to the options of that side's registry host
/// (an `oci:` side has no host; its flags are refused as meaningless).
async fn apply_side(
    options: &mut HashMap<String, RegistryOptions>,
    location: &Location,
    side: &Side<'_>,
) -> Result<(), CliError> {
    let given = !side.tls_verify || side.cert_dir.is_some() || side.authfile.is_some();
    let host = match location {
        Location::Registry { host, .. } => host,
        Location::Layout { .. } if given => {
            return Err(CliError::Usage(format!(
                "error: --{}-* registry flags given for an oci: {} directory",
                side.flag,
                if side.flag == "src" {
                    "source"
                } else {
                    "destination"
                }
            )));
        }
        Location::Layout { .. } => return Ok(()),
    };
    let ca = side
        .cert_dir
        .map(|d| ca_in_cert_dir(side.flag, d))
        .transpose()?;
    if let Some(f) = side.authfile.filter(|f| !f.is_file()) {
        return Err(CliError::Usage(format!(
            "error: --{}-authfile {}: no such file",
            side.flag,
            f.display()
        )));
    }
    if !given {
        return Ok(());
    }
    let opts = options.entry(host.clone()).or_default();
    if !side.tls_verify {
        // skopeo's meaning: HTTPS unverified if the registry speaks it,
        // else plain HTTP.
        opts.insecure_skip_verify = true;
        opts.plain_http = !regkeeper::transport::remote::speaks_https(host).await;
        tracing::info!(
            registry = %host,
            scheme = if opts.plain_http { "http" } else { "https (unverified)" },
            "--{}-tls-verify=false",
            side.flag
        );
    }
    if ca.is_some() {
        opts.ca_file = ca;
    }
    if let Some(f) = side.authfile {
        opts.docker_config = Some(f.to_path_buf());
    }
    Ok(())
}

/// Registry settings come from the config when there is one; without a
/// config file (an explicit -c must exist) defaults apply.
fn optional_config(g: &Globals) -> Result<Option<regkeeper::config::Config>, CliError> {
    let path = g.config_path();
    let wanted =
        g.config.is_some() || std::env::var_os("REGKEEPER_CONFIG").is_some() || path.exists();
    wanted.then(|| super::load_config(&path)).transpose()
}

/// The transports for this copy: the config's registries (if any), with
/// the command line's per-side flags on top.
async fn build_transports(
    config: Option<&regkeeper::config::Config>,
    src: &ImageRef,
    dst: &ImageRef,
    access: &AccessFlags,
) -> Result<Arc<Transports>, CliError> {
    let mut options: HashMap<String, RegistryOptions> = config
        .map(|c| c.registries.clone().into_iter().collect())
        .unwrap_or_default();
    let [s, d] = access.sides();
    apply_side(&mut options, &src.location, &s).await?;
    apply_side(&mut options, &dst.location, &d).await?;
    // Hints name this command's flags, not config keys.
    for (location, side) in [(&src.location, s.flag), (&dst.location, d.flag)] {
        if let Location::Registry { host, .. } = location {
            let opts = options.entry(host.clone()).or_default();
            match &mut opts.hints {
                Hints::Flags(sides) => sides.push(side),
                hints => *hints = Hints::Flags(vec![side]),
            }
        }
    }
    Ok(Arc::new(Transports::new(options, Mode::Apply.read_only())))
}

/// A missing `oci:` source directory is named as such, not left to a
/// confusing "manifest unknown" later on.
fn check_layout_source(src: &ImageRef) -> Result<(), CliError> {
    match &src.location {
        Location::Layout { path } if !path.is_dir() => Err(CliError::Usage(format!(
            "error: source {src}: directory {} does not exist",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The copy itself: verified first when a policy was given.
async fn copy_one(
    engine: &Engine,
    (source, reference): (&Store, &str),
    (target, tag): (&Store, Option<&str>),
    wanted: &[Platform],
    policy: Option<&VerifyPolicy>,
) -> anyhow::Result<Digest> {
    Ok(match policy {
        None => {
            engine
                .copy_image(source, reference, target, tag, wanted)
                .await?
        }
        Some(p) => {
            engine
                .copy_verified(source, reference, target, tag, wanted, p)
                .await?
        }
    })
}

pub(crate) async fn run(
    g: &Globals,
    src: &str,
    dst: &str,
    platforms: &[String],
    verify: &VerifyFlags,
    access: &AccessFlags,
) -> Result<u8, CliError> {
    let (src, dst) = parse_refs(src, dst)?;
    let wanted = parse_platforms(platforms)?;
    let policy = verify.policy()?;
    check_layout_source(&src)?;
    let config = optional_config(g)?;
    let format = config
        .as_ref()
        .map_or(LogFormat::Text, |c| c.daemon.log_format);
    super::init_logging(format, g.on_terminal);
    let transports = build_transports(config.as_ref(), &src, &dst, access).await?;
    let limit = config
        .as_ref()
        .map_or(8, |c| c.daemon.max_concurrent_transfers);
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
    let layout = match &dst.location {
        Location::Layout { path } => vec![super::signals::LayoutRoot {
            path: path.clone(),
            prefix: false,
        }],
        Location::Registry { .. } => Vec::new(),
    };
    let interrupt = super::signals::Interrupt::install(layout)?;
    interrupt.sweep_dead().await;
    let mut engine = Engine::new(transports, limit, Mode::Apply).with_stop(interrupt.token());
    let bar = super::progress::start(&mut engine, g.on_terminal);
    let result = copy_one(
        &engine,
        (&source, reference.as_str()),
        (&target, tag.as_deref()),
        &wanted,
        policy.as_ref(),
    )
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: copying {src} to {dst}: {e}");
            return Ok(interrupt.finish(EXIT_PARTIAL).await);
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
