//! `sync` killed with SIGKILL in the middle of a chunked upload (issue 20):
//! the next run asks the registry where the session stands (GET, `Range`)
//! and continues from there, re-reading the source from that offset, so it
//! sends less than the blob; only a session the registry no longer knows
//! (distribution after a cut PATCH) starts over. Every run ends with the
//! image intact at the target, checked over raw HTTP or with skopeo.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use regkeeper::state::{State, UploadCheckpoint};
use serde_json::Value;

use crate::blobs::assert_complete;
use crate::support::ferro::{Ferro, get, manifest_bytes};
use crate::support::http;
use crate::support::*;
use crate::sync::{header, regkeeper};

const CHUNK: u64 = 1024 * 1024;
const BIG: u64 = 6 * CHUNK;
/// Requests other than the big layer's chunks (HEADs, the session GET, the
/// final PUT, the manifest, the small blobs): far below one chunk.
const OVERHEAD: u64 = 64 * 1024;

/// A source with one image (a small layer, a 6 MiB one) and a proxy in
/// front of the target that counts and throttles what regkeeper sends.
struct Setup {
    _src: Registry,
    corpus: Corpus,
    img: Image,
    big: Descriptor,
    proxy: FaultProxy,
    dir: tempfile::TempDir,
    config: String,
}

fn setup(target: &str, seed: &str) -> Setup {
    let src = Registry::start_plain();
    let proxy = FaultProxy::start(target);
    let mut corpus = Corpus::new();
    let spec = ImageSpec::new(&[layer(&format!("{seed}-small"), 2_000), layer(seed, BIG)]);
    let img = corpus.image("app", &spec);
    corpus.push(&src, "app", "up/app", "v1");
    let big = img.blobs().into_iter().max_by_key(|b| b.size).unwrap();
    assert_eq!(big.size, BIG);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\nchunk_size = \"1MiB\"\n\n[[rule]]\nname = \"app\"\nsource = \"{}/up/app\"\ntargets = [\"{}/mirror/app\"]\n",
        header(dir.path(), &[&src]),
        proxy.host(),
        src.host(),
        proxy.host()
    );
    Setup {
        _src: src,
        corpus,
        img,
        big,
        proxy,
        dir,
        config,
    }
}

fn checkpoints(dir: &Path) -> Vec<UploadCheckpoint> {
    let db = dir.join("state/regkeeper.db");
    if !db.exists() {
        return Vec::new();
    }
    State::open_file(&db).unwrap().uploads().unwrap()
}

/// Runs `sync` throttled and SIGKILLs it once two chunks or more are
/// checkpointed and the next PATCH is part-way through; returns the
/// checkpoint it left.
fn kill_mid_patch(s: &Setup) -> UploadCheckpoint {
    let path = s.dir.path().join("config.toml");
    std::fs::write(&path, &s.config).unwrap();
    // 1 MB/s: a 1 MiB chunk takes about a second.
    s.proxy.throttle(Some(1_000_000));
    let mut child = Command::new(regkeeper_bin())
        .args(["sync", "-c"])
        .arg(&path)
        .env("REGKEEPER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start regkeeper sync");
    // Past the checkpoint by 300-700 kB: the PATCH of the next chunk is in
    // flight (not at its start, not at its end).
    wait_for(
        "two chunks checkpointed, the next in flight",
        Duration::from_secs(60),
        || {
            if s.proxy.bytes_up() < 2 * CHUNK {
                return false;
            }
            let Some(cp) = checkpoints(s.dir.path()).pop() else {
                return false;
            };
            let ahead = s.proxy.bytes_up().saturating_sub(cp.offset);
            cp.offset >= 2 * CHUNK && (300_000..700_000).contains(&ahead)
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The dead process's connections die with it: without this the proxy
    // would go on forwarding what the kernel had buffered, completing the
    // PATCH the kill was meant to cut.
    s.proxy.set_down(true);
    s.proxy.set_down(false);
    s.proxy.throttle(None);
    let mut cps = checkpoints(s.dir.path());
    assert_eq!(cps.len(), 1, "one checkpoint left: {cps:?}");
    let cp = cps.pop().unwrap();
    assert_eq!(cp.digest, s.big.digest);
    assert!(cp.offset >= 2 * CHUNK && cp.offset % CHUNK == 0, "{cp:?}");
    eprintln!(
        "SIGKILL with {} bytes sent, checkpoint at {}",
        s.proxy.bytes_up(),
        cp.offset
    );
    cp
}

/// Runs `sync` again; returns its output and the bytes it sent the target.
fn rerun(s: &Setup) -> (Output, u64) {
    let up = s.proxy.bytes_up();
    let out = regkeeper(s.dir.path(), &s.config, &["sync"]);
    assert_eq!(out.status.code(), Some(0), "the re-run succeeds");
    assert!(checkpoints(s.dir.path()).is_empty(), "checkpoint dropped");
    (out, s.proxy.bytes_up() - up)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The image at a ferro target, read over raw HTTP: the manifest under the
/// tag has the source's digest, and every blob it lists hashes to its digest.
fn assert_intact(base: &str, img: &Image) {
    let m = manifest_bytes(base, "mirror/app", "v1").expect("manifest at the target");
    assert_eq!(sha256_digest(&m), img.digest, "manifest digest");
    let v: Value = serde_json::from_slice(&m).unwrap();
    let mut descs = vec![v["config"].clone()];
    descs.extend(v["layers"].as_array().unwrap().iter().cloned());
    for d in descs {
        let digest = d["digest"].as_str().unwrap();
        let r = get(base, &format!("/v2/mirror/app/blobs/{digest}")).unwrap();
        assert_eq!(r.status, 200, "blob {digest}");
        assert_eq!(r.body.len() as u64, d["size"].as_u64().unwrap());
        assert_eq!(sha256_digest(&r.body), digest, "blob {digest} intact");
    }
}

/// Where the registry says the session stands: the end of its `Range`.
fn session_offset(url: &str) -> u64 {
    let r = http::request(None, "GET", url, &[], None).unwrap();
    assert!(matches!(r.status, 200 | 204), "GET session: {}", r.status);
    let range = r.header("range").expect("Range on the session");
    let end: u64 = range.rsplit('-').next().unwrap().parse().unwrap();
    end + 1
}

#[test]
fn sigkill_mid_patch_then_the_rerun_continues_from_the_checkpoint() {
    let ferro = Ferro::start();
    let s = setup(&ferro.host(), "resume-kill");
    let cp = kill_mid_patch(&s);
    // ferro keeps nothing of the cut PATCH: the session is at the checkpoint.
    assert_eq!(session_offset(&cp.session_url), cp.offset);

    let (out, sent) = rerun(&s);
    eprintln!(
        "re-run sent {sent} bytes for a {BIG}-byte layer (checkpoint {})",
        cp.offset
    );
    assert!(
        stderr(&out).contains("resuming upload from checkpoint"),
        "logs that it resumed"
    );
    assert!(
        sent < BIG - cp.offset + OVERHEAD,
        "the re-run sent {sent} bytes; {} were left after the checkpoint",
        BIG - cp.offset
    );
    assert_intact(&ferro.url(), &s.img);
}

#[test]
fn sigkill_then_the_registry_holds_more_than_the_checkpoint() {
    let ferro = Ferro::start();
    let s = setup(&ferro.host(), "resume-ahead");
    let cp = kill_mid_patch(&s);

    // Put the session ahead of the checkpoint: one more chunk of the right
    // bytes, sent to the session like a PATCH whose acknowledgement was
    // never checkpointed.
    let at = session_offset(&cp.session_url);
    let bytes = s.corpus.read_blob(&s.big.digest);
    let end = at + CHUNK;
    let patch = http::request(
        None,
        "PATCH",
        &cp.session_url,
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", &format!("{at}-{}", end - 1)),
        ],
        Some(bytes[at as usize..end as usize].to_vec()),
    )
    .unwrap();
    assert_eq!(patch.status, 202, "PATCH: {}", patch.text());
    assert_eq!(session_offset(&cp.session_url), end);
    assert!(end > cp.offset);

    let (out, sent) = rerun(&s);
    eprintln!(
        "re-run sent {sent} bytes; registry held {end}, checkpoint {}",
        cp.offset
    );
    assert!(
        stderr(&out).contains("continuing from the registry's offset"),
        "logs that the registry is ahead"
    );
    assert!(
        sent < BIG - end + OVERHEAD,
        "the re-run sent {sent} bytes; {} were left after the registry's offset",
        BIG - end
    );
    assert_intact(&ferro.url(), &s.img);
}

#[test]
fn sigkill_mid_patch_into_distribution_starts_the_blob_over_and_completes() {
    let dst = Registry::start_plain();
    let s = setup(&dst.host(), "resume-dist");
    let cp = kill_mid_patch(&s);
    // distribution kept part of the cut PATCH; the offset signed into the
    // session URL no longer matches, so the session is refused.
    let stale = http::request(None, "GET", &cp.session_url, &[], None).unwrap();
    assert_eq!(stale.status, 404, "stale session: {}", stale.text());

    let (out, sent) = rerun(&s);
    eprintln!(
        "re-run sent {sent} bytes (checkpoint {} no longer usable)",
        cp.offset
    );
    assert!(
        stderr(&out).contains("no longer accepts the checkpointed upload session"),
        "logs why it started over"
    );
    assert!(sent >= BIG, "the blob went again in full: {sent}");
    assert_complete(&dst, "mirror/app", "v1", &s.img.digest);
}
