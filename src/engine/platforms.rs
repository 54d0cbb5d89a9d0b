//! The rule's `platforms` and a single-platform image: its platform is in
//! its config (`os`, `architecture`, `variant`), read when a copy is
//! considered. An image of another platform is skipped with a warning
//! (never an error: the rule asked for other platforms).

use futures_util::StreamExt;

use super::report::Failure;
use crate::oci::{Digest, Manifest, Platform, RawManifest, Verified};
use crate::transport::{ErrorClass, Store};

/// How a skip is told apart from a failure (see [`is_skip`]).
const SKIP: &str = "skipped: the image is ";
/// The largest config read to learn a platform.
const MAX_CONFIG: u64 = 1024 * 1024;

/// Config media types that carry a platform (artifacts' configs do not).
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// `Err` (a skip, see [`is_skip`]) when `raw` is an image whose config
/// names a platform none of `platforms` matches; `Ok` otherwise (an index,
/// an artifact, a config without a platform, or one that cannot be read:
/// the copy decides then).
pub(crate) async fn check(
    source: &Store,
    raw: &RawManifest,
    platforms: &[Platform],
) -> Result<(), Failure> {
    if platforms.is_empty() {
        return Ok(());
    }
    let Ok((_, Manifest::Image { config, .. })) = Manifest::parse(&raw.media_type, &raw.bytes)
    else {
        return Ok(());
    };
    if !IMAGE_CONFIGS.contains(&config.media_type.as_str()) || config.size > MAX_CONFIG {
        return Ok(());
    }
    let Some(p) = platform_of(source, &config.digest, config.size).await else {
        return Ok(());
    };
    if platforms.iter().any(|w| p.matches(w)) {
        return Ok(());
    }
    let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
    Err(Failure::new(
        ErrorClass::Other,
        format!(
            "{SKIP}{p}, not one of the rule's platforms ({})",
            wanted.join(", ")
        ),
    ))
}

/// Whether `f` is a platform skip rather than a failure.
pub(crate) fn is_skip(f: &Failure) -> bool {
    f.message.starts_with(SKIP)
}

async fn platform_of(source: &Store, digest: &Digest, size: u64) -> Option<Platform> {
    let stream = source.get_blob(digest, size).await.ok()?;
    let mut verified = Verified::new(stream, digest.clone(), Some(size));
    let mut bytes = Vec::new();
    while let Some(chunk) = verified.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(Platform {
        os: v.get("os")?.as_str()?.to_string(),
        architecture: v.get("architecture")?.as_str()?.to_string(),
        variant: v
            .get("variant")
            .and_then(|x| x.as_str())
            .map(str::to_string),
    })
}

/// A tag of another platform than the rule's: a warning, not a failure.
pub(crate) fn skip(repo: &mut super::inventory::RepoInventory, tag: &str, f: &Failure) {
    let at = repo.source.location().to_string();
    tracing::warn!(at, tag, reason = %f.message, "tag skipped");
    repo.warnings.push(format!("{at}: tag {tag} {}", f.message));
}
