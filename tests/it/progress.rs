//! The progress line `sync` draws on a real terminal (a pseudo-terminal
//! from util-linux `script`): live counts, and a percentage of the rule's
//! run plan with an ETA.

use std::process::Command;

use crate::support::*;
use crate::sync::{header, seed_two_repos};

#[test]
fn sync_on_a_terminal_shows_percent_of_the_plan_and_an_eta() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let seeded = seed_two_repos(&src, "pg");
    let dir = tempfile::tempdir().unwrap();
    // A slow source (2 requests/s, as an operator under a rate limit sets
    // it) keeps the run going for several redraws of the line.
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\nrequests_per_second = 2\n\
         [[rule]]\nname = \"mirror\"\nsource = \"{}/pg/*\"\ntargets = [\"{}/m/*\"]\n",
        header(dir.path(), &[&dst]),
        src.host(),
        src.host(),
        dst.host()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    let cmd = format!("{} sync -c {}", regkeeper_bin(), path.display());
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &cmd, "/dev/null"])
        .env("REGKEEPER_LOG", "warn")
        .env("COLUMNS", "200")
        .output()
        .expect("run `script` (util-linux, installed by scripts/test.sh)");
    let screen = String::from_utf8_lossy(&out.stdout);
    eprintln!("--- terminal\n{screen}");
    assert!(out.status.success(), "sync failed: {:?}", out.status);

    // What the line showed along the way (it redraws in place).
    let frames: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|f| f.contains("rule mirror:"))
        .collect();
    assert!(
        frames.len() >= 3,
        "the line was drawn {} times",
        frames.len()
    );
    let pcts: Vec<u64> = frames
        .iter()
        .filter_map(|f| {
            let (head, _) = f.split_once("% ")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert!(!pcts.is_empty(), "no percentage in {frames:?}");
    assert!(
        pcts.windows(2).all(|w| w[0] <= w[1]) && *pcts.last().unwrap() <= 100,
        "percentages go backwards or past 100: {pcts:?}"
    );
    assert!(
        frames.iter().any(|f| f.contains("ETA")),
        "no ETA once copies were done: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.contains("image(s)")),
        "no counts: {frames:?}"
    );
    for (repo, tag, digest) in &seeded.tags {
        assert_eq!(
            dst.try_digest_of(&format!("m/{repo}"), tag).as_deref(),
            Some(digest.as_str()),
            "{repo}:{tag} at the target"
        );
    }
}

/// One big image from a slow source: the percentage moves while its blob
/// is read (by bytes), not only when the image is done.
#[test]
fn sync_progress_moves_within_one_big_image() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = crate::support::Corpus::new();
    corpus.image("big", &ImageSpec::new(&[layer("progress-big", 3 << 20)]));
    corpus.push(&src, "big", "pb/app", "v1");
    // 1 MiB/s: about 3 s for the layer, a dozen redraws.
    let proxy = FaultProxy::to_registry(&src);
    proxy.throttle(Some(1 << 20));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[registries.\"{}\"]\nplain_http = true\n\
         [[rule]]\nname = \"big\"\nsource = \"{}/pb/app\"\ntargets = [\"{}/pb/app\"]\n",
        header(dir.path(), &[&dst]),
        proxy.host(),
        proxy.host(),
        dst.host()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    let cmd = format!("{} sync -c {}", regkeeper_bin(), path.display());
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &cmd, "/dev/null"])
        .env("REGKEEPER_LOG", "warn")
        .env("COLUMNS", "200")
        .output()
        .expect("run `script` (util-linux, installed by scripts/test.sh)");
    let screen = String::from_utf8_lossy(&out.stdout);
    eprintln!("--- terminal\n{screen}");
    assert!(out.status.success(), "sync failed: {:?}", out.status);
    // Frames drawn while the one image was still being copied.
    let during: Vec<u64> = screen
        .split(['\r', '\n'])
        .filter(|f| f.contains("rule big:") && f.contains(" 0 image(s)"))
        .filter_map(|f| {
            let (head, _) = f.split_once("% ")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert!(
        during.iter().any(|p| (1..100).contains(p)),
        "no percentage between 0 and 100 during the image: {during:?}"
    );
    assert!(dst.try_digest_of("pb/app", "v1").is_some());
}
