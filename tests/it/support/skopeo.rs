//! skopeo invocations against harness registries, independent of regkeeper.
//!
//! Every call runs with `--insecure-policy` (no dependency on `/etc/containers/policy.json`)
//! and `REGISTRY_AUTH_FILE` pointing at a nonexistent file in the registry's temp dir (so
//! host credentials never leak in). Plain-HTTP registries get `--tls-verify=false`; TLS
//! registries get a cert dir holding only the CA, so verification is real.
//!
//! As root, skopeo keeps a blob-info cache in /var/lib/containers/cache that is shared by
//! all runs; it only makes skopeo try cross-repository mounts it may not need, which is
//! harmless but adds requests to *skopeo's* share of an access log.

use std::process::{Command, Output};

use super::corpus::sha256_digest;
use super::registry::Registry;

/// Which side of a command the registry flags are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `--src-...` (copy, sync)
    Src,
    /// `--dest-...` (copy, sync)
    Dest,
    /// `--...` (inspect, list-tags, delete)
    Only,
}

/// skopeo flags to reach `reg`: TLS verification/cert dir, and its credentials when
/// `with_creds` (else `--no-creds`).
pub fn registry_flags(reg: &Registry, side: Side, with_creds: bool) -> Vec<String> {
    let p = match side {
        Side::Src => "--src-",
        Side::Dest => "--dest-",
        Side::Only => "--",
    };
    let mut v = Vec::new();
    match reg.cert_dir() {
        Some(dir) => v.push(format!("{p}cert-dir={}", dir.display())),
        None => v.push(format!("{p}tls-verify=false")),
    }
    match reg.credentials() {
        Some((u, pw)) if with_creds => v.push(format!("{p}creds={u}:{pw}")),
        _ => v.push(format!("{p}no-creds")),
    }
    v
}

/// Runs `skopeo --insecure-policy ARGS` with an isolated auth file; returns the output.
pub fn skopeo_output(reg: &Registry, args: &[String]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", reg.root_dir().join("no-auth.json"))
        .output()
        .expect("run skopeo")
}

/// Like [`skopeo_output`] but `Err(stderr)` on failure, `Ok(stdout)` on success.
pub fn try_skopeo(reg: &Registry, args: &[String]) -> Result<Vec<u8>, String> {
    let out = skopeo_output(reg, args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run(reg: &Registry, args: &[String]) -> Vec<u8> {
    try_skopeo(reg, args).unwrap_or_else(|e| panic!("{e}"))
}

fn docker_ref(reg: &Registry, repo_ref: &str) -> String {
    format!("docker://{}/{repo_ref}", reg.host())
}

/// `repo:tag` or `repo@digest` from a repo and a tag-or-digest.
fn join_ref(repo: &str, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    }
}

/// `skopeo copy --all --preserve-digests SRC docker://HOST/REPO:TAG` with credentials.
pub fn try_skopeo_copy_to(
    reg: &Registry,
    src: &str,
    repo: &str,
    tag: &str,
    with_creds: bool,
) -> Result<(), String> {
    let mut args: Vec<String> = ["copy", "--quiet", "--all", "--preserve-digests"]
        .map(String::from)
        .to_vec();
    args.extend(registry_flags(reg, Side::Dest, with_creds));
    args.push(src.to_string());
    args.push(docker_ref(reg, &join_ref(repo, tag)));
    try_skopeo(reg, &args).map(|_| ())
}

/// Pushes `src` (any skopeo transport reference, e.g. `oci:DIR:NAME`) to `reg` as
/// `repo:tag`, with the registry's credentials. Panics on failure.
pub fn skopeo_copy_to(reg: &Registry, src: &str, repo: &str, tag: &str) {
    try_skopeo_copy_to(reg, src, repo, tag, true).unwrap_or_else(|e| panic!("{e}"));
}

/// `skopeo copy --all --preserve-digests` from one harness registry to another.
/// `src_ref`/`dst_ref` are `repo:tag` or `repo@digest`.
pub fn skopeo_copy(src: &Registry, src_ref: &str, dst: &Registry, dst_ref: &str) {
    let mut args: Vec<String> = ["copy", "--quiet", "--all", "--preserve-digests"]
        .map(String::from)
        .to_vec();
    args.extend(registry_flags(src, Side::Src, true));
    args.extend(registry_flags(dst, Side::Dest, true));
    args.push(docker_ref(src, src_ref));
    args.push(docker_ref(dst, dst_ref));
    run(dst, &args);
}

/// `skopeo inspect --raw` of `repo` at a tag or digest, with credentials.
pub fn try_skopeo_inspect_raw(
    reg: &Registry,
    repo: &str,
    reference: &str,
    with_creds: bool,
) -> Result<Vec<u8>, String> {
    let mut args = vec!["inspect".to_string(), "--raw".to_string()];
    args.extend(registry_flags(reg, Side::Only, with_creds));
    args.push(docker_ref(reg, &join_ref(repo, reference)));
    try_skopeo(reg, &args)
}

/// Raw manifest bytes of `repo` at a tag or digest (panics on failure).
pub fn skopeo_inspect_raw(reg: &Registry, repo: &str, reference: &str) -> Vec<u8> {
    try_skopeo_inspect_raw(reg, repo, reference, true).unwrap_or_else(|e| panic!("{e}"))
}

/// `sha256:...` of the raw manifest of `repo` at a tag or digest.
pub fn skopeo_digest(reg: &Registry, repo: &str, reference: &str) -> String {
    sha256_digest(&skopeo_inspect_raw(reg, repo, reference))
}

/// Manifest digest, or `None` if the tag/digest does not exist (any skopeo failure
/// mentioning "manifest unknown" / 404 counts as absent; others panic).
pub fn skopeo_try_digest(reg: &Registry, repo: &str, reference: &str) -> Option<String> {
    match try_skopeo_inspect_raw(reg, repo, reference, true) {
        Ok(raw) => Some(sha256_digest(&raw)),
        Err(e)
            if e.contains("manifest unknown") || e.contains("404") || e.contains("not found") =>
        {
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Tags of `repo`, sorted (empty when the repository has none).
pub fn skopeo_list_tags(reg: &Registry, repo: &str) -> Vec<String> {
    let mut args = vec!["list-tags".to_string()];
    args.extend(registry_flags(reg, Side::Only, true));
    args.push(docker_ref(reg, repo));
    let out = run(reg, &args);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("list-tags JSON");
    let mut tags: Vec<String> = v["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

impl Registry {
    /// See [`skopeo_inspect_raw`].
    pub fn inspect_raw(&self, repo: &str, reference: &str) -> Vec<u8> {
        skopeo_inspect_raw(self, repo, reference)
    }

    /// See [`skopeo_digest`].
    pub fn digest_of(&self, repo: &str, reference: &str) -> String {
        skopeo_digest(self, repo, reference)
    }

    /// See [`skopeo_try_digest`].
    pub fn try_digest_of(&self, repo: &str, reference: &str) -> Option<String> {
        skopeo_try_digest(self, repo, reference)
    }

    /// See [`skopeo_list_tags`].
    pub fn list_tags(&self, repo: &str) -> Vec<String> {
        skopeo_list_tags(self, repo)
    }
}
