//! One blob knowledge per target registry (issue 11): rules, prefixes and
//! repositories that share layers mount from each other instead of reading
//! the source again; fresh target repositories get no blob HEADs; a killed
//! run leaves nothing that the next run skips wrongly.

use std::collections::HashSet;
use std::path::Path;

use crate::support::skopeo::{Side, registry_flags, try_skopeo};
use crate::support::*;
use crate::sync::{header, regkeeper};

/// A mount of `digest` answered 201 (the registry linked it from elsewhere).
fn mounted(r: &LoggedRequest, digest: &str) -> bool {
    r.is("POST", PathKind::UploadStart)
        && query(r).contains(&format!("mount={digest}"))
        && r.status == 201
}

/// The logged path with the digest's `:` as sent (percent-encoded) decoded.
fn query(r: &LoggedRequest) -> String {
    r.path.replace("%3A", ":").replace("%3a", ":")
}

/// A blob upload that the registry committed (the session's closing PUT).
fn uploaded(r: &LoggedRequest, digest: &str) -> bool {
    r.is("PUT", PathKind::UploadSession) && query(r).contains(digest) && r.status == 201
}

/// Pulls `repo:tag` whole with skopeo (every blob read back and verified by
/// digest): the target holds a complete image, not only a manifest.
pub(crate) fn assert_complete(reg: &Registry, repo: &str, tag: &str, digest: &str) {
    assert_eq!(skopeo_digest(reg, repo, tag), digest, "{repo}:{tag}");
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["copy".to_string()];
    args.extend(registry_flags(reg, Side::Src, true));
    args.push(format!("docker://{}/{repo}:{tag}", reg.host()));
    args.push(format!("dir:{}", out.path().display()));
    if let Err(e) = try_skopeo(reg, &args) {
        panic!("{repo}:{tag} is not complete at the target: {e}");
    }
}

/// Images named like upstream ones, all on one base layer, each with a
/// layer of its own: `up/<name>:v1` at `src`.
struct Family {
    base: String,
    images: Vec<(String, Image)>,
}

fn push_family(src: &Registry, names: &[&str], prefix: &str) -> Family {
    let mut corpus = Corpus::new();
    let base = layer("blobs-family-base", 400_000);
    let mut images = Vec::new();
    for name in names {
        let spec = ImageSpec::new(&[base.clone(), layer(&format!("blobs-{name}"), 60_000)])
            .label("name", name);
        let img = corpus.image(name, &spec);
        corpus.push(src, name, &format!("{prefix}/{name}"), "v1");
        images.push((name.to_string(), img));
    }
    let mut shared: Vec<String> = images[0].1.blobs().into_iter().map(|b| b.digest).collect();
    shared.retain(|d| {
        images
            .iter()
            .all(|(_, i)| i.blobs().iter().any(|b| &b.digest == d))
    });
    assert_eq!(shared.len(), 1, "one shared base layer");
    let base = shared.remove(0);
    Family { base, images }
}

fn rule_per_image(dir: &Path, src: &Registry, dst: &Registry, fam: &Family) -> String {
    let mut config = header(dir, &[src, dst]);
    for (name, _) in &fam.images {
        config += &format!(
            "[[rule]]\nname = \"{name}\"\nsource = \"{}/up/{name}\"\ntargets = [\"{}/mirror/{name}\"]\n",
            src.host(),
            dst.host()
        );
    }
    config
}

#[test]
fn rules_sharing_a_base_layer_mount_it_from_each_other() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let fam = push_family(&src, &["alpine", "nginx", "redis"], "up");
    let dir = tempfile::tempdir().unwrap();
    let config = rule_per_image(dir.path(), &src, &dst, &fam);

    let (s0, d0) = (src.mark(), dst.mark());
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    for (name, img) in &fam.images {
        assert_complete(&dst, &format!("mirror/{name}"), "v1", &img.digest);
    }
    let base_reads = src.count_since(s0, |r| {
        r.is("GET", PathKind::Blob) && r.reference() == Some(fam.base.as_str())
    });
    assert_eq!(
        base_reads, 1,
        "the shared layer is read from the source once"
    );
    let unique: HashSet<String> = fam
        .images
        .iter()
        .flat_map(|(_, i)| i.blobs().into_iter().map(|b| b.digest))
        .collect();
    let reads = src.count_since(s0, |r| r.is("GET", PathKind::Blob));
    assert_eq!(
        reads,
        unique.len(),
        "every blob read once, all rules together"
    );
    let mounts = dst.count_since(d0, |r| mounted(r, &fam.base));
    assert_eq!(mounts, 2, "the second and third rule mount the base layer");
    let uploads = dst.count_since(d0, |r| uploaded(r, &fam.base));
    assert_eq!(uploads, 1, "the base layer is uploaded once");
}

#[test]
fn a_wildcard_source_into_two_prefixes_of_one_registry_reads_each_blob_once() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let fam = push_family(&src, &["alpha", "beta"], "team");
    let dir = tempfile::tempdir().unwrap();
    // Two rules, as a user adds a second mirror prefix next to the first.
    let mut config = header(dir.path(), &[&src, &dst]);
    for prefix in ["one", "two"] {
        config += &format!(
            "[[rule]]\nname = \"{prefix}\"\nsource = \"{}/team/*\"\ntargets = [\"{}/{prefix}/*\"]\n",
            src.host(),
            dst.host()
        );
    }
    let (s0, d0) = (src.mark(), dst.mark());
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let mut unique = HashSet::new();
    for (name, img) in &fam.images {
        for prefix in ["one", "two"] {
            assert_complete(&dst, &format!("{prefix}/{name}"), "v1", &img.digest);
        }
        unique.extend(img.blobs().into_iter().map(|b| b.digest));
    }
    let reads = src.count_since(s0, |r| r.is("GET", PathKind::Blob));
    assert_eq!(reads, unique.len(), "each blob read once for both prefixes");
    for d in &unique {
        let n = dst.count_since(d0, |r| uploaded(r, d));
        assert_eq!(n, 1, "{d} uploaded once into the registry");
    }
    let mounts = dst.count_since(d0, |r| {
        r.is("POST", PathKind::UploadStart) && r.path.contains("mount=") && r.status == 201
    });
    // 2 prefixes x 2 repositories x 3 blobs, less the 5 unique blobs uploaded.
    assert_eq!(mounts, 4 * 3 - unique.len(), "the rest is mounted");
}
