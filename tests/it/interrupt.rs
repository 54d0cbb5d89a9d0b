//! `sync` stopped by a signal (issue 20): SIGINT/SIGTERM finish the chunk in
//! flight, print the summary and exit 130/143; a second signal exits at
//! once; a layout target keeps no temporary file; the next run continues
//! the upload instead of sending the blob again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::blobs::assert_complete;
use crate::support::*;
use crate::sync::{header, oci_digest, regkeeper};

const BIG: u64 = 12 * 1024 * 1024;

/// `regkeeper sync` on `config` in the background, output captured.
fn spawn_sync(dir: &Path, config: &str) -> Child {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(regkeeper_bin())
        .args(["sync", "-c"])
        .arg(&path)
        .env("REGKEEPER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start regkeeper sync")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Waits for `cond`, polling; panics with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the child to exit within `limit` (else kills it and panics);
/// returns its output and how long the wait took.
fn exit_within(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            eprintln!(
                "sync -> {:?}\n--- stdout\n{}--- stderr\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("sync did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One image with a big layer at `src` (`up/app:v1`).
fn push_big(src: &Registry, seed: &str) -> (Image, Descriptor) {
    let mut corpus = Corpus::new();
    let spec = ImageSpec::new(&[layer(&format!("{seed}-small"), 50_000), layer(seed, BIG)]);
    let img = corpus.image("app", &spec);
    corpus.push(src, "app", "up/app", "v1");
    let big = img.blobs().into_iter().max_by_key(|b| b.size).unwrap();
    (img, big)
}

/// Temporary files (our `.…tmp-…` pattern) anywhere in `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            } else if name.starts_with('.') && name.contains("tmp-") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn sigint_mid_blob_checkpoints_prints_the_summary_exits_130_and_the_next_run_continues() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let proxy = FaultProxy::to_registry(&dst);
    let (img, big) = push_big(&src, "interrupt-int");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\nchunk_size = \"1MiB\"\n\n[[rule]]\nname = \"app\"\nsource = \"{}/up/app\"\ntargets = [\"{}/mirror/app\"]\n",
        header(dir.path(), &[&src]),
        proxy.host(),
        src.host(),
        proxy.host()
    );
    // 3 MB/s: a 1 MiB chunk every third of a second, the big layer ~4 s.
    proxy.throttle(Some(3_000_000));
    let mark = dst.mark();
    let child = spawn_sync(dir.path(), &config);
    let patches = || dst.count_since(mark, |r| r.method == "PATCH" && r.status == 202);
    wait_until("two chunks acknowledged", Duration::from_secs(60), || {
        patches() >= 2
    });
    signal(&child, "INT");
    let (out, took) = exit_within(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "SIGINT exits 130");
    eprintln!("exit {:?} after the signal", took);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rule app: ") && stdout.contains("failed"),
        "the summary is printed: {stdout}"
    );
    assert!(!dst.has_blob(&big.digest), "stopped before the big layer");
    let status = stdout_of(&regkeeper(dir.path(), &config, &["status"]));
    assert!(
        status.contains("interrupted") && !status.contains("running"),
        "status: {status}"
    );

    // The chunk in flight was finished and checkpointed: the next run
    // continues the session and sends less than the layer.
    proxy.throttle(None);
    let up = proxy.bytes_up();
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    let sent = proxy.bytes_up() - up;
    assert!(
        sent < BIG - 1024 * 1024,
        "the second run sent {sent} bytes for a {BIG}-byte layer"
    );
    assert_complete(&dst, "mirror/app", "v1", &img.digest);
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A layout target fed by a slow source.
fn layout_setup(seed: &str) -> (Registry, FaultProxy, Image, tempfile::TempDir, String) {
    let src = Registry::start_plain();
    let proxy = FaultProxy::to_registry(&src);
    let (img, _) = push_big(&src, seed);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\n\n[[rule]]\nname = \"app\"\nsource = \"{}/up/app\"\ntargets = [\"oci:{}\"]\n",
        header(dir.path(), &[]),
        proxy.host(),
        proxy.host(),
        dir.path().join("layout").display()
    );
    (src, proxy, img, dir, config)
}

#[test]
fn sigterm_into_a_layout_exits_143_without_temp_files_and_a_killed_runs_are_swept() {
    let (_src, proxy, img, dir, config) = layout_setup("interrupt-term");
    let layout = dir.path().join("layout");
    proxy.throttle(Some(2_000_000));
    let child = spawn_sync(dir.path(), &config);
    wait_until("a blob being written", Duration::from_secs(60), || {
        !temp_files(&layout).is_empty()
    });
    signal(&child, "TERM");
    let (out, _) = exit_within(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(143), "SIGTERM exits 143");
    assert!(stdout_of(&out).contains("rule app: "), "the summary");
    assert_eq!(temp_files(&layout), Vec::<PathBuf>::new());
    assert_eq!(oci_digest(&layout, "v1"), None, "stopped before the tag");

    // SIGKILL leaves the temporary file; the next run removes it.
    let mut child = spawn_sync(dir.path(), &config);
    wait_until("a blob being written", Duration::from_secs(60), || {
        !temp_files(&layout).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!temp_files(&layout).is_empty(), "SIGKILL left one behind");
    proxy.throttle(None);
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(temp_files(&layout), Vec::<PathBuf>::new());
    assert_eq!(
        oci_digest(&layout, "v1").as_deref(),
        Some(img.digest.as_str())
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let proxy = FaultProxy::to_registry(&dst);
    push_big(&src, "interrupt-twice");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\nchunk_size = \"4MiB\"\n\n[[rule]]\nname = \"app\"\nsource = \"{}/up/app\"\ntargets = [\"{}/mirror/app\"]\n",
        header(dir.path(), &[&src]),
        proxy.host(),
        src.host(),
        proxy.host()
    );
    // A 4 MiB chunk at 200 kB/s takes 20 s: the first signal waits for it.
    proxy.throttle(Some(200_000));
    let mark = dst.mark();
    let mut child = spawn_sync(dir.path(), &config);
    wait_until("a chunk on its way", Duration::from_secs(60), || {
        dst.count_since(mark, |r| r.method == "POST" && r.status == 202) >= 1
            && proxy.bytes_up() > 300_000
    });
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIGINT lets the chunk in flight go on"
    );
    signal(&child, "INT");
    let (out, took) = exit_within(child, Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(130));
    assert!(took < Duration::from_secs(5));
}
