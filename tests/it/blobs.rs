//! One blob knowledge per target registry (issue 11): rules, prefixes and
//! repositories that share layers mount from each other instead of reading
//! the source again; fresh target repositories get no blob HEADs; a killed
//! run leaves nothing that the next run skips wrongly.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

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

/// One rule per image (as real configurations are), each ending in `extra`.
fn rule_per_image(dir: &Path, src: &Registry, dst: &Registry, fam: &Family, extra: &str) -> String {
    let mut config = header(dir, &[src, dst]);
    for (name, _) in &fam.images {
        config += &format!(
            "[[rule]]\nname = \"{name}\"\nsource = \"{}/up/{name}\"\ntargets = [\"{}/mirror/{name}\"]\n{extra}",
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
    let config = rule_per_image(dir.path(), &src, &dst, &fam, "");

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

/// A HEAD of a blob (not a manifest) at the target.
fn blob_head(r: &LoggedRequest) -> bool {
    r.is("HEAD", PathKind::Blob)
}

#[test]
fn fresh_target_repositories_get_no_blob_heads_and_existing_ones_do() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let fam = push_family(&src, &["alpine", "nginx", "redis"], "up");
    let dir = tempfile::tempdir().unwrap();
    let config = rule_per_image(dir.path(), &src, &dst, &fam, "");

    let d0 = dst.mark();
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let heads = dst.count_since(d0, blob_head);
    assert_eq!(
        heads, 0,
        "no repository existed: nothing for a HEAD to find"
    );
    let requests = dst.requests_since(d0).len();
    eprintln!(
        "BLOBS fresh copy: {requests} target requests for {} images ({:.1} per image)",
        fam.images.len(),
        requests as f64 / fam.images.len() as f64
    );
    for (name, img) in &fam.images {
        assert_complete(&dst, &format!("mirror/{name}"), "v1", &img.digest);
    }

    // A new tag in a repository that exists now: its blobs are asked for
    // (the base is there and must not be sent again).
    let mut corpus = Corpus::new();
    let base = layer("blobs-family-base", 400_000);
    let v2 = corpus.image(
        "v2",
        &ImageSpec::new(&[base, layer("blobs-alpine-v2", 30_000)]).label("v", "2"),
    );
    corpus.push(&src, "v2", "up/alpine", "v2");
    let d1 = dst.mark();
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    assert_complete(&dst, "mirror/alpine", "v2", &v2.digest);
    let found = dst.count_since(d1, |r| blob_head(r) && r.status == 200);
    assert!(found >= 1, "the base layer's HEAD found it");
    assert_eq!(dst.count_since(d1, |r| uploaded(r, &fam.base)), 0);
}

#[test]
fn a_run_killed_in_a_new_repository_is_followed_by_one_that_heads_there() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let proxy = FaultProxy::to_registry(&dst);
    let mut corpus = Corpus::new();
    let small: Vec<LayerSpec> = (0..3)
        .map(|i| layer(&format!("blobs-kill-{i}"), 100_000))
        .collect();
    let mut layers = small.clone();
    layers.push(layer("blobs-kill-big", 24 * 1024 * 1024));
    let img = corpus.image("app", &ImageSpec::new(&layers));
    corpus.push(&src, "app", "up/app", "v1");
    let big = img.blobs().into_iter().max_by_key(|b| b.size).unwrap();
    let early: Vec<String> = img
        .blobs()
        .into_iter()
        .filter(|b| b.digest != big.digest)
        .map(|b| b.digest)
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\n\n[[rule]]\nname = \"app\"\nsource = \"{}/up/app\"\ntargets = [\"{}/mirror/app\"]\n",
        header(dir.path(), &[&src]),
        proxy.host(),
        src.host(),
        proxy.host()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    // 4 MB/s: the big layer takes about 6 s, the small ones a moment.
    proxy.throttle(Some(4_000_000));
    let mut child = std::process::Command::new(regkeeper_bin())
        .args(["sync", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start regkeeper sync");
    let t = std::time::Instant::now();
    while !early.iter().all(|d| dst.has_blob(d)) {
        assert!(t.elapsed().as_secs() < 30, "small blobs never arrived");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL, mid-way through the big layer
    child.wait().unwrap();
    assert!(
        dst.try_digest_of("mirror/app", "v1").is_none(),
        "killed before the tag"
    );
    assert!(!dst.has_blob(&big.digest), "killed before the big layer");

    // The tag list still answers 404, but the state knows the run touched
    // the repository: the next run asks before it uploads.
    proxy.throttle(None);
    let d0 = dst.mark();
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    assert_complete(&dst, "mirror/app", "v1", &img.digest);
    for d in &early {
        assert_eq!(dst.count_since(d0, |r| uploaded(r, d)), 0, "{d} sent again");
    }
    assert_eq!(dst.count_since(d0, |r| uploaded(r, &big.digest)), 1);
    let found = dst.count_since(d0, |r| blob_head(r) && r.status == 200);
    assert_eq!(found, early.len(), "HEADs found what the killed run left");

    // Tagged now: the record is cleared, and a wiped repository is empty
    // again, so a third run into a new repository sends no HEADs.
    let config2 = config.replace("mirror/app", "mirror/again");
    let d1 = dst.mark();
    let out = regkeeper(dir.path(), &config2, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    assert_complete(&dst, "mirror/again", "v1", &img.digest);
    assert_eq!(dst.count_since(d1, blob_head), 0);
}

/// `regkeeper run` on `config` (its `listen = ""` given a port) in `dir`.
fn start_daemon(dir: &Path, config: &str) -> Daemon {
    let port = free_port();
    let config = config.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Daemon::spawn_logging(&path, port, &[], "info")
}

#[test]
fn daemon_rules_running_at_once_read_a_shared_blob_once_and_a_wiped_target_is_copied_again() {
    let src = Registry::start_plain();
    let mut dst = Registry::start_plain();
    let fam = push_family(&src, &["alpine", "nginx", "redis"], "up");
    let dir = tempfile::tempdir().unwrap();
    let config = rule_per_image(dir.path(), &src, &dst, &fam, "schedule = \"@every 1s\"\n");
    let all_there = |dst: &Registry| {
        fam.images.iter().all(|(name, img)| {
            dst.try_digest_of(&format!("mirror/{name}"), "v1")
                .as_deref()
                == Some(img.digest.as_str())
        })
    };
    let (s0, d0) = (src.mark(), dst.mark());
    let daemon = start_daemon(dir.path(), &config);
    wait_for("every rule copied", Duration::from_secs(30), || {
        all_there(&dst)
    });
    let base_reads = src.count_since(s0, |r| {
        r.is("GET", PathKind::Blob) && r.reference() == Some(fam.base.as_str())
    });
    assert_eq!(base_reads, 1, "three rules, one source read of the base");
    assert_eq!(dst.count_since(d0, |r| uploaded(r, &fam.base)), 1);
    assert_eq!(dst.count_since(d0, |r| mounted(r, &fam.base)), 2);

    // Wiped while the daemon (and its tracker) lives on: the next runs
    // find no tags, mount nothing from where the base used to be, and copy
    // everything again.
    // Marked before the wipe: a run may start (and read the base) between
    // the restart and a later mark.
    let s1 = src.mark();
    dst.stop();
    std::fs::remove_dir_all(dst.data_dir()).unwrap();
    std::fs::create_dir_all(dst.data_dir()).unwrap();
    dst.start();
    wait_for("every rule copied again", Duration::from_secs(30), || {
        all_there(&dst)
    });
    drop(daemon);
    for (name, img) in &fam.images {
        assert_complete(&dst, &format!("mirror/{name}"), "v1", &img.digest);
    }
    let base_reads = src.count_since(s1, |r| {
        r.is("GET", PathKind::Blob) && r.reference() == Some(fam.base.as_str())
    });
    assert!(base_reads >= 1, "the base was read again: {base_reads}");
}

/// Figures for issue 11 (not a timed test): target requests per image,
/// 404 blob HEADs, mounts and source bytes read per unique byte, for one
/// rule per repository and for one `/*` rule. `REGKEEPER_MEASURE_BIN`
/// measures another build (e.g. the one before this change).
#[test]
#[ignore]
fn measurement_requests_per_image() {
    let bin = std::env::var("REGKEEPER_MEASURE_BIN").unwrap_or_else(|_| regkeeper_bin().into());
    let src = Registry::start_plain();
    let mut corpus = Corpus::new();
    let base = layer("blobs-measure-base", 300_000);
    let (repos, tags) = (8, 3);
    let mut unique: std::collections::HashMap<String, u64> = Default::default();
    for r in 0..repos {
        let mid = layer(&format!("blobs-measure-{r}"), 100_000);
        for t in 0..tags {
            let name = format!("r{r}t{t}");
            let spec = ImageSpec::new(&[base.clone(), mid.clone(), layer(&name, 20_000)])
                .label("n", &name);
            let img = corpus.image(&name, &spec);
            unique.extend(img.blobs().into_iter().map(|b| (b.digest, b.size)));
            corpus.push(&src, &name, &format!("m/r{r}"), &format!("t{t}"));
        }
    }
    let unique_bytes: u64 = unique.values().sum();
    let images = repos * tags;
    for wildcard in [false, true] {
        let dst = Registry::start_plain();
        let dir = tempfile::tempdir().unwrap();
        let mut config = header(dir.path(), &[&src, &dst]);
        if wildcard {
            config += &format!(
                "[[rule]]\nname = \"all\"\nsource = \"{}/m/*\"\ntargets = [\"{}/x/*\"]\n",
                src.host(),
                dst.host()
            );
        } else {
            for r in 0..repos {
                config += &format!(
                    "[[rule]]\nname = \"r{r}\"\nsource = \"{}/m/r{r}\"\ntargets = [\"{}/x/r{r}\"]\n",
                    src.host(),
                    dst.host()
                );
            }
        }
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let (s0, d0) = (src.mark(), dst.mark());
        let t = std::time::Instant::now();
        let ok = std::process::Command::new(&bin)
            .args(["sync", "-c"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        let wall = t.elapsed();
        assert!(ok, "sync failed");
        let reqs = dst.requests_since(d0);
        let heads404 = reqs
            .iter()
            .filter(|r| blob_head(r) && r.status == 404)
            .count();
        let mounts = reqs
            .iter()
            .filter(|r| {
                r.is("POST", PathKind::UploadStart) && r.path.contains("mount=") && r.status == 201
            })
            .count();
        let read: u64 = src
            .requests_since(s0)
            .iter()
            .filter(|r| r.is("GET", PathKind::Blob))
            .map(|r| r.bytes)
            .sum();
        eprintln!(
            "MEASURE {}: {images} images, {} target requests ({:.2}/image), {heads404} blob HEADs 404, {mounts} mounts, source read {read} B / unique {unique_bytes} B = {:.2}, {:.2} s",
            if wildcard {
                "one /* rule"
            } else {
                "rule per repository"
            },
            reqs.len(),
            reqs.len() as f64 / images as f64,
            read as f64 / unique_bytes as f64,
            wall.as_secs_f64()
        );
    }
}
