//! `regkeeper run` as a subprocess against real registries: schedules,
//! metrics, reload, signals, checkpoints after SIGTERM/SIGKILL, wiped targets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Writes `body` under a daemon section into `dir/config.toml` and starts it.
fn start(dir: &Path, body: &str) -> Daemon {
    let port = free_port();
    let config = dir.join("config.toml");
    std::fs::write(&config, daemon_config(dir, port, body)).unwrap();
    Daemon::spawn(&config, port, &[])
}

fn daemon_config(dir: &Path, port: u16, body: &str) -> String {
    format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmax_concurrent_transfers = 4\n\n{body}",
        dir.join("state").display().to_string()
    )
}

fn small(corpus: &mut Corpus, name: &str) -> Image {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("daemon-base", 4000), layer(name, 2000)]).label("name", name),
    )
}

fn rule(name: &str, src: &Registry, dst: &Registry, schedule: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"{schedule}\"\n",
        src.host(),
        dst.host()
    )
}

fn registries(regs: &[&Registry]) -> String {
    regs.iter().map(|r| r.regkeeper_registry_toml()).collect()
}

#[test]
fn schedule_fires_copies_new_tags_and_status_reports() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let v1 = small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "*/2 * * * * *")
        ),
    );
    assert_eq!(d.get("/healthz").unwrap().status, 200);
    // The first run happens at start-up.
    wait_for("v1 at the target", Duration::from_secs(20), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(v1.digest.as_str())
    });
    // A new source tag is copied by a later scheduled run.
    let v2 = small(&mut corpus, "v2");
    corpus.push(&src, "v2", "it/app", "v2");
    wait_for("v2 at the target", Duration::from_secs(20), || {
        dst.try_digest_of("mirror/app", "v2").as_deref() == Some(v2.digest.as_str())
    });
    wait_for("a complete run after v2", Duration::from_secs(10), || {
        d.metric("regkeeper_rule_runs_total{result=\"success\",rule=\"app\"}")
            .unwrap_or(0.0)
            >= 3.0
    });
    let m = d.metrics();
    for name in [
        "regkeeper_rule_sync_lag_seconds{rule=\"app\"}",
        "regkeeper_rule_last_success_timestamp_seconds{rule=\"app\"}",
        "regkeeper_rule_last_run_timestamp_seconds{rule=\"app\"}",
        "regkeeper_rule_tags_pending{rule=\"app\"} 0",
        "regkeeper_rule_run_duration_seconds_count{rule=\"app\"}",
        "regkeeper_bytes_copied_total{rule=\"app\"}",
        "regkeeper_blobs_total{action=\"copied\",rule=\"app\"}",
        "regkeeper_manifests_pushed_total{rule=\"app\"}",
        "regkeeper_registry_requests_total{code=\"200\",method=\"GET\"",
        "regkeeper_registry_request_duration_seconds_bucket",
        "regkeeper_build_info{version=",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    // Later no-op runs spare the target HEAD (state hint): only tag lists
    // reach the target.
    let mark = dst.mark();
    let runs = d
        .metric("regkeeper_rule_runs_total{result=\"success\",rule=\"app\"}")
        .unwrap();
    wait_for("two more runs", Duration::from_secs(10), || {
        d.metric("regkeeper_rule_runs_total{result=\"success\",rule=\"app\"}")
            .unwrap()
            >= runs + 2.0
    });
    eprintln!("peak RSS after the runs: {} KiB", d.peak_rss_kib());
    let heads = dst.count_since(mark, |r| r.method == "HEAD");
    assert_eq!(heads, 0, "{:#?}", dst.requests_since(mark));

    // status reads the state database while the daemon runs.
    let out = Command::new(regkeeper_bin())
        .args(["status", "--json", "-c"])
        .arg(d.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["rules"][0];
    assert_eq!(r["rule"], "app");
    assert_eq!(r["last_run"]["result"], "success", "{v:#}");
    assert_eq!(r["tags_pending"], 0);
    assert!(r["lag_seconds"].as_i64().unwrap() < 30);
    let text = Command::new(regkeeper_bin())
        .args(["status", "-c"])
        .arg(d.config())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("rule app:"));
}

#[test]
fn lag_grows_while_source_is_down_and_drops_when_back() {
    let mut src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "@every 1s")
        ),
    );
    let lag = || {
        d.metric("regkeeper_rule_sync_lag_seconds{rule=\"app\"}")
            .unwrap()
    };
    wait_for("a first success", Duration::from_secs(20), || {
        d.metric("regkeeper_rule_runs_total{result=\"success\",rule=\"app\"}")
            .unwrap_or(0.0)
            >= 1.0
    });
    src.stop();
    // Runs fail; lag keeps growing.
    // A run against a source that refuses connections retries before it
    // fails, so under load the lag can pass 6 s before the first failure
    // is counted: wait for both.
    wait_for(
        "lag above 6 s and a failed run",
        Duration::from_secs(30),
        || {
            lag() > 6.0
                && d.metric("regkeeper_rule_runs_total{result=\"failed\",rule=\"app\"}")
                    .unwrap_or(0.0)
                    >= 1.0
        },
    );
    let before = lag();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lag() > before, "lag grows between scrapes");
    src.start();
    wait_for("lag back under 4 s", Duration::from_secs(30), || {
        lag() < 4.0
    });
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_rules_and_a_valid_one_applies() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let v1 = small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        registries(&[&src, &dst]),
        rule("app", &src, &dst, "@every 1s")
    );
    let d = start(dir.path(), &body);
    let daemon_started = Instant::now();
    wait_for("v1 copied", Duration::from_secs(20), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(v1.digest.as_str())
    });
    // Series of configured registries exist before any 429.
    let throttled = format!(
        "regkeeper_registry_throttled_total{{registry=\"{}\"}}",
        dst.host()
    );
    assert_eq!(d.metric(&throttled), Some(0.0), "{}", d.metrics());
    let failed_reloads = "regkeeper_config_reloads_total{result=\"failed\"}";
    assert_eq!(d.metric(failed_reloads), Some(0.0));
    // Broken: unknown key and a bad regex.
    std::fs::write(
        d.config(),
        daemon_config(
            dir.path(),
            d.port(),
            &format!("{body}tags.include = ['(']\nbogus = 1\n"),
        ),
    )
    .unwrap();
    d.signal("HUP");
    wait_for(
        "the reload refusal in the log",
        Duration::from_secs(30),
        || d.log_text().contains("reload refused"),
    );
    assert!(d.log_text().contains("bogus"), "{}", d.log_text());
    assert_eq!(
        d.metric(failed_reloads),
        Some(1.0),
        "a failed reload is counted"
    );
    // The old rule still runs.
    let v2 = small(&mut corpus, "v2");
    corpus.push(&src, "v2", "it/app", "v2");
    wait_for("v2 copied by the old rule", Duration::from_secs(20), || {
        dst.try_digest_of("mirror/app", "v2").as_deref() == Some(v2.digest.as_str())
    });
    // A valid config that replaces the rule by another one.
    // "late" never succeeds (no such source repository): its lag shows
    // where it counts from.
    let other = format!(
        "{}[[rule]]\nname = \"other\"\nsource = \"{}/it/app\"\ntargets = [\"{}/other/app\"]\nschedule = \"@every 1s\"\n\
         [[rule]]\nname = \"late\"\nsource = \"{}/it/missing\"\ntargets = [\"{}/late/app\"]\nschedule = \"@every 1h\"\n",
        registries(&[&src, &dst]),
        src.host(),
        dst.host(),
        src.host(),
        dst.host()
    );
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(d.config(), daemon_config(dir.path(), d.port(), &other)).unwrap();
    d.signal("HUP");
    wait_for("rule other runs", Duration::from_secs(20), || {
        dst.try_digest_of("other/app", "v2").as_deref() == Some(v2.digest.as_str())
    });
    wait_for(
        "rule app gone from metrics",
        Duration::from_secs(15),
        || !d.metrics().contains("rule=\"app\""),
    );
    let lag = d
        .metric("regkeeper_rule_sync_lag_seconds{rule=\"late\"}")
        .expect("lag of a rule added by SIGHUP");
    let alive = daemon_started.elapsed().as_secs_f64();
    assert!(
        lag + 2.0 < alive,
        "a rule added by SIGHUP counts its lag from the reload: lag {lag}, daemon up {alive}"
    );
}

#[test]
fn a_wiped_target_is_copied_again() {
    let src = Registry::start_plain();
    let mut dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let v1 = small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "@every 1s")
        ),
    );
    wait_for("v1 copied", Duration::from_secs(20), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(v1.digest.as_str())
    });
    dst.stop();
    for entry in std::fs::read_dir(dst.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    dst.start();
    assert!(dst.try_digest_of("mirror/app", "v1").is_none());
    wait_for("v1 copied again", Duration::from_secs(30), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(v1.digest.as_str())
    });
    drop(d);
}

/// A large layer through a throttling proxy: SIGTERM mid-transfer (exit
/// within 10 s, the upload resumes where it stopped), then SIGKILL
/// mid-transfer (the next run completes it), every digest correct.
#[test]
fn sigterm_and_sigkill_mid_transfer_then_resume() {
    // REGKEEPER_BIG_MIB=1024 for the 1 GiB measurement of issue 3.
    let size_mib: u64 = std::env::var("REGKEEPER_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size: u64 = size_mib * 1024 * 1024;
    #[allow(non_snake_case)]
    let SIZE = size;
    const CHUNK: u64 = 8 * 1024 * 1024;
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let proxy = FaultProxy::to_registry(&dst);
    let mut corpus = Corpus::new();
    let big = corpus.image(
        "big",
        &ImageSpec::new(&[layer("daemon-big", SIZE), layer("daemon-small", 3000)]),
    );
    corpus.push(&src, "big", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[registries.\"{}\"]\nplain_http = true\nchunk_size = \"8MiB\"\n\n[[rule]]\nname = \"big\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 2s\"\n",
        src.regkeeper_registry_toml(),
        proxy.host(),
        src.host(),
        proxy.host()
    );
    // 32 MB/s: 256 MiB take about 8 s.
    proxy.throttle(Some(32_000_000));
    let mut d = start(dir.path(), &body);

    // SIGTERM a third of the way in.
    wait_for("a third sent", Duration::from_secs(60), || {
        proxy.bytes_up() > SIZE / 3
    });
    eprintln!("peak RSS before SIGTERM: {} KiB", d.peak_rss_kib());
    d.signal("TERM");
    let took = d.wait_exit(Duration::from_secs(10));
    let sent_before_term = proxy.bytes_up();
    eprintln!("SIGTERM: exit after {took:?}, {sent_before_term} bytes sent");
    let db = dir.path().join("state/regkeeper.db");
    let state = regkeeper::state::State::open_file(&db).unwrap();
    let cp = state.uploads().unwrap();
    assert_eq!(cp.len(), 1, "one checkpoint: {cp:?}");
    assert!(cp[0].offset > 0 && cp[0].offset % CHUNK == 0, "{cp:?}");
    let term_offset = cp[0].offset;

    // Restart: resumes from the checkpoint; SIGKILL two thirds of the way in.
    d.restart();
    wait_for("resumed in the log", Duration::from_secs(20), || {
        d.log_text().contains("resuming upload from checkpoint")
    });
    wait_for("two thirds sent", Duration::from_secs(60), || {
        proxy.bytes_up() > sent_before_term + SIZE / 3
    });
    let resent_after_term = {
        // Bytes of the layer sent again below the checkpoint offset: the
        // resumed session continues at `term_offset`, so only what was in
        // flight past it when SIGTERM came (nothing: the chunk finished).
        sent_before_term.saturating_sub(term_offset)
    };
    eprintln!("SIGTERM: bytes sent beyond the checkpoint (re-sent): {resent_after_term}");
    assert!(
        resent_after_term <= CHUNK + 1024 * 1024,
        "{resent_after_term}"
    );
    let sent_before_kill = proxy.bytes_up();
    eprintln!("peak RSS before SIGKILL: {} KiB", d.peak_rss_kib());
    d.kill9();
    let kill_cp = state.uploads().unwrap();
    eprintln!("SIGKILL at {sent_before_kill} bytes sent in total; checkpoint {kill_cp:?}");

    // Unthrottled restart: the next run completes the image.
    proxy.throttle(None);
    d.restart();
    wait_for("the image at the target", Duration::from_secs(120), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(big.digest.as_str())
    });
    for blob in big.blobs() {
        assert!(dst.has_blob(&blob.digest), "{} missing", blob.digest);
    }
    wait_for("checkpoints cleared", Duration::from_secs(10), || {
        state.uploads().unwrap().is_empty()
    });
    let total = proxy.bytes_up();
    let resent = total.saturating_sub(SIZE);
    eprintln!(
        "total sent {total} for a {SIZE}-byte layer: {resent} bytes re-sent over SIGTERM + SIGKILL"
    );
    // The SIGKILL lands in a PATCH; distribution then drops the session,
    // so that blob restarts: at most the one interrupted blob is sent again.
    assert!(
        total <= 2 * SIZE + 16 * 1024 * 1024,
        "{total} bytes sent: complete blobs were sent again"
    );
}

#[test]
fn sigterm_when_idle_exits_quickly_and_state_errors_exit_3() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(
        dir.path(),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "@hourly")
        ),
    );
    d.signal("TERM");
    let took = d.wait_exit(Duration::from_secs(10));
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A state_dir that is a file: exit code 3.
    let bad = dir.path().join("bad");
    std::fs::write(dir.path().join("state-file"), b"x").unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    let cfg = bad.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}",
            dir.path().join("state-file").display().to_string(),
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "@hourly")
        ),
    )
    .unwrap();
    for cmd in ["run", "status", "sync"] {
        let out = Command::new(regkeeper_bin())
            .args([cmd, "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Memory over many scheduled runs (issue 3 asks for an hour at a 1-minute
/// schedule: 60 runs; `@every 1s` for REGKEEPER_SOAK_SECS seconds does as
/// many runs in a minute). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn daemon_memory_over_many_runs() {
    let secs: u64 = std::env::var("REGKEEPER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    for i in 0..10 {
        let name = format!("v{i}");
        small(&mut corpus, &name);
        corpus.push(&src, &name, "it/app", &name);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, &dst, "@every 1s")
        ),
    );
    let t = Instant::now();
    let mut samples = Vec::new();
    while t.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let rss = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1).map(String::from))
            .unwrap();
        samples.push(rss);
        // A new tag now and then, so runs copy as well as compare.
        if samples.len() % 3 == 0 {
            let name = format!("n{}", samples.len());
            small(&mut corpus, &name);
            corpus.push(&src, &name, "it/app", &name);
        }
    }
    let runs = d
        .metric("regkeeper_rule_runs_total{result=\"success\",rule=\"app\"}")
        .unwrap();
    eprintln!(
        "{runs} runs in {secs} s; VmRSS every 10 s (KiB): {}; peak VmHWM {} KiB",
        samples.join(" "),
        d.peak_rss_kib()
    );
}

/// What new users hit: a `listen` address in use, an empty config file, and
/// `status`/`check` in a shell without the service's secrets.
#[test]
fn operator_mistakes_are_config_errors_and_status_needs_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "version = 1\n[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\
         [registries.\"127.0.0.1:1\"]\nusername = \"u\"\npassword_env = \"REGKEEPER_IT_UNSET_SECRET\"\n\
         [[rule]]\nname = \"r\"\nsource = \"127.0.0.1:1/a\"\ntargets = [\"oci:out\"]\n"
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &text).unwrap();
    let regkeeper = |args: &[&str], env: Option<(&str, &str)>| {
        let mut c = Command::new(regkeeper_bin());
        c.args(args)
            .arg("-c")
            .arg(&cfg)
            .env_remove("REGKEEPER_IT_UNSET_SECRET");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = regkeeper(&["run"], Some(("REGKEEPER_IT_UNSET_SECRET", "pw")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "listen in use: {err}");
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
    drop(taken);

    // Relative state_dir: next to the config, whatever the working directory.
    let out = regkeeper(&["status"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "status without the secret: {err}"
    );
    assert!(dir.path().join("state/regkeeper.db").is_file());
    let out = regkeeper(&["check"], None);
    assert_eq!(out.status.code(), Some(0), "check without the secret");
    let out = regkeeper(&["sync"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "sync needs it: {err}");
    assert!(
        err.contains("REGKEEPER_IT_UNSET_SECRET is not set"),
        "{err}"
    );

    std::fs::write(&cfg, "\n").unwrap();
    let out = regkeeper(&["check"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "an empty file: {err}");
    assert!(err.contains("is empty"), "{err}");
}

/// A target that cannot be read has every selected tag pending (the state
/// has no row for them, so counting rows alone said 0).
#[test]
fn tags_of_an_unreachable_target_are_pending() {
    let src = Registry::start_plain();
    let mut corpus = Corpus::new();
    for tag in ["v1", "v2"] {
        small(&mut corpus, tag);
        corpus.push(&src, tag, "it/app", tag);
    }
    // Nothing listens there.
    let down = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!(
            "{}[registries.\"{down}\"]\nplain_http = true\n[[rule]]\nname = \"app\"\nsource = \"{}/it/app\"\ntargets = [\"{down}/mirror/app\", \"oci:{}\"]\nschedule = \"@hourly\"\n",
            registries(&[&src]),
            src.host(),
            dir.path().join("layout").display()
        ),
    );
    wait_for("a failed run", Duration::from_secs(20), || {
        d.metric("regkeeper_rule_runs_total{result=\"failed\",rule=\"app\"}")
            .unwrap_or(0.0)
            + d.metric("regkeeper_rule_runs_total{result=\"partial\",rule=\"app\"}")
                .unwrap_or(0.0)
            >= 1.0
    });
    // The layout target got both tags; the unreachable one has both pending.
    assert_eq!(
        d.metric("regkeeper_rule_tags_pending{rule=\"app\"}"),
        Some(2.0),
        "{}",
        d.log_text()
    );
}
