//! What an operator sees on day two: failed runs in the logs (daemon and
//! `sync`), with their cause, class and repository.

use std::time::Duration;

use crate::copy_cli::copy_without_config;
use crate::support::*;
use crate::sync::{header, regkeeper, stdout};

/// The one line a failed run logs, from `log`: ERROR, the rule, the class,
/// the repository and the cause (the source is down: connection refused).
fn failure_line<'a>(log: &'a str, src_repo: &str) -> Option<&'a str> {
    log.lines().find(|l| {
        l.contains("ERROR")
            && l.contains("rule app failed")
            && l.contains("source_unreadable")
            && l.contains(src_repo)
            && l.contains("connection refused")
    })
}

#[test]
fn a_failed_run_logs_an_error_with_cause_class_and_repository() {
    let mut src = Registry::start_plain();
    let dst = Registry::start_plain();
    let src_repo = format!("{}/it/app", src.host());
    src.stop();
    let dir = tempfile::tempdir().unwrap();
    let rule = format!(
        "[[rule]]\nname = \"app\"\nsource = \"{src_repo}\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 1s\"\n",
        dst.host()
    );

    // `sync`: on stderr, once.
    let out = regkeeper(
        dir.path(),
        &format!("{}{rule}", header(dir.path(), &[&src, &dst])),
        &["sync"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        failure_line(&stderr, &src_repo).is_some(),
        "sync logs the failure at ERROR:\n{stderr}"
    );
    let n = stderr
        .lines()
        .filter(|l| l.contains("rule app failed"))
        .count();
    assert_eq!(n, 1, "once per run:\n{stderr}");

    // The daemon, at its default level.
    let port = free_port();
    let config = dir.path().join("daemon.toml");
    let mut text = header(dir.path(), &[&src, &dst])
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    text += &rule;
    std::fs::write(&config, text).unwrap();
    let d = Daemon::spawn_logging(&config, port, &[], "info");
    wait_for(
        "an ERROR line for the failed run",
        Duration::from_secs(60),
        || failure_line(&d.log_text(), &src_repo).is_some(),
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn copy_refuses_foreign_transports_before_any_request_and_hints_name_its_flags() {
    let plain = Registry::start_plain();
    let tls = Registry::builder().tls(true).start();
    let mut corpus = Corpus::new();
    corpus.image("one", &ImageSpec::new(&[layer("op-one", 3000)]));
    corpus.push(&plain, "one", "op/app", "v1");
    let home = tempfile::tempdir().unwrap();
    let dst = format!("{}/op/copy:v1", plain.host());

    // Transports of other tools: exit 2, what is supported, no request.
    let mark = plain.mark();
    for foreign in [
        "dir:/tmp/op-x",
        "docker-archive:/tmp/op.tar",
        "containers-storage:localhost/app:v1",
        "docker-daemon:app:v1",
        "oci-archive:/tmp/op.tar",
        "whatever:some/path",
    ] {
        let out = copy_without_config(home.path(), &[foreign, &dst]);
        assert_eq!(out.status.code(), Some(2), "{foreign}");
        let err = stderr(&out);
        assert!(err.contains("does not support"), "{foreign}: {err}");
        assert!(
            err.contains("oci:DIR") && err.contains("host/repo"),
            "{err}"
        );
        let out = copy_without_config(
            home.path(),
            &[&format!("{}/op/app:v1", plain.host()), foreign],
        );
        assert_eq!(out.status.code(), Some(2), "{foreign} as destination");
    }
    assert_eq!(plain.requests_since(mark).len(), 0, "no request was sent");

    // HTTPS to a plain HTTP registry: the hint names the flag.
    let src = format!("{}/op/app:v1", plain.host());
    let out = copy_without_config(home.path(), &[&src, &dst]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("--src-tls-verify=false"), "{err}");
    assert!(
        !err.contains("plain_http") && !err.contains("[registries"),
        "{err}"
    );

    // With the flag over plain HTTP: it copies, and no TLS warning.
    let out = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &src,
            &dst,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !stderr(&out).contains("verification is off"),
        "{}",
        stderr(&out)
    );

    // An unverified HTTPS registry is warned about.
    let out = copy_without_config(
        home.path(),
        &[
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &src,
            &format!("{}/op/copy:v1", tls.host()),
        ],
    );
    assert!(
        stderr(&out).contains("verification is off"),
        "{}",
        stderr(&out)
    );
}

fn image(corpus: &mut Corpus, name: &str, created: &str) {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("op-base", 3000), layer(name, 1500)]).created(created),
    );
}

#[test]
fn sync_json_totals_status_per_rule_in_words_and_one_path_per_deletion() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    for tag in ["1.0.0", "1.1.0"] {
        image(&mut corpus, tag, "2025-01-01T00:00:00Z");
        corpus.push(&src, tag, "op/app", tag);
    }
    // An old tag only the target has: retention deletes it.
    image(&mut corpus, "0.9.0", "2024-01-01T00:00:00Z");
    corpus.push(&dst, "0.9.0", "op/app", "0.9.0");
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}/op/app", dst.host());
    let config = format!(
        "{}[[rule]]\nname = \"app\"\nsource = \"{}/op/app\"\ntargets = [\"{target}\"]\n\
         [rule.retention]\nmatch = ['^\\d']\nkeep_last = 2\n\n\
         [[rule]]\nname = \"other\"\nsource = \"{}/op/app\"\ntargets = [\"{}/op/other\"]\ntags.include = ['^none$']\n",
        header(dir.path(), &[&src, &dst]),
        src.host(),
        src.host(),
        dst.host()
    );

    let out = regkeeper(dir.path(), &config, &["sync", "app", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &doc["totals"];
    assert_eq!(t["tags_copied"], 2, "{t}");
    assert_eq!(t["tags_in_sync"], 0, "{t}");
    assert_eq!(t["failed"], 0, "{t}");
    assert_eq!(t["errors"], 0, "{t}");
    assert!(t["seconds"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["bytes"].as_u64().unwrap() > 1000, "{t}");
    // The layers of both images, the base once; the configs.
    let moved = t["blobs_copied"].as_u64().unwrap() + t["blobs_mounted"].as_u64().unwrap();
    assert!(moved >= 3, "{t}");
    assert_eq!(
        doc["rules"][0]["deletions"][0]["tags"],
        serde_json::json!(["0.9.0"])
    );

    // Again: everything in sync; the text says "1 repository".
    let out = regkeeper(dir.path(), &config, &["sync", "app", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["totals"]["tags_in_sync"], 2, "{}", doc["totals"]);
    assert_eq!(doc["totals"]["tags_copied"], 0);
    let out = regkeeper(dir.path(), &config, &["sync", "app"]);
    let text = stdout(&out);
    assert!(text.contains("1 repository,"), "{text}");
    assert!(!text.contains("(s)"), "{text}");

    // status: only the rule named, ages and sizes in words, each deleted
    // repository once.
    let out = regkeeper(dir.path(), &config, &["status", "app"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("rule app:") && !text.contains("rule other:"),
        "{text}"
    );
    // an age, not a Unix time ("just now" within the same second)
    let last_run = text.lines().find(|l| l.contains("last run:")).expect(&text);
    assert!(
        last_run.contains("second ago")
            || last_run.contains("seconds ago")
            || last_run.contains("just now"),
        "{last_run}"
    );
    assert!(
        !text
            .lines()
            .filter(|l| !l.contains("sha256:"))
            .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
            .any(|n| n.len() >= 9),
        "no raw Unix time or byte count: {text}"
    );
    assert!(text.contains("failed, 0 B"), "sizes in units: {text}");
    assert!(!text.contains(" bytes"), "{text}");
    let deleted = text.lines().find(|l| l.contains("deleted:")).expect(&text);
    assert_eq!(deleted.matches(&target).count(), 1, "{deleted}");
    assert_eq!(deleted.matches(&dst.host()).count(), 1, "{deleted}");

    let out = regkeeper(dir.path(), &config, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"nope\""), "{}", stderr(&out));
}

/// The one line a partial run logs: WARN, the rule, result partial, the
/// counts (one tag copied, one failed), and the first cause with its class
/// and tag.
fn partial_line(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("rule app partly failed"))
        .collect()
}

fn assert_partial_line(log: &str) {
    let lines = partial_line(log);
    assert_eq!(lines.len(), 1, "once per run:\n{log}");
    let l = lines[0];
    for want in [
        "WARN",
        "partial",
        "copied=1",
        "failed=1",
        "verification",
        "it/app:v2",
    ] {
        assert!(
            l.contains(want),
            "{want:?} missing from the WARN line:\n{l}"
        );
    }
    assert!(!log.contains("ERROR"), "a partial run is no ERROR:\n{log}");
}

#[test]
fn a_partial_run_logs_one_warning_with_counts_and_first_cause() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    corpus.image("v1", &ImageSpec::new(&[layer("partial-one", 2000)]));
    let bad = corpus.image("v2", &ImageSpec::new(&[layer("partial-two", 2000)]));
    corpus.push(&src, "v1", "it/app", "v1");
    corpus.push(&src, "v2", "it/app", "v2");
    // v2's layer no longer matches its digest at the source: v2 fails, v1 arrives.
    src.corrupt_blob(&bad.layers[0].digest);
    let dir = tempfile::tempdir().unwrap();
    let rule = format!(
        "[[rule]]\nname = \"app\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 1h\"\n",
        src.host(),
        dst.host()
    );
    let out = regkeeper(
        dir.path(),
        &format!("{}{rule}", header(dir.path(), &[&src, &dst])),
        &["sync"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("rule app: partial"),
        "{}",
        stdout(&out)
    );
    assert_partial_line(&stderr(&out));
    assert!(dst.try_digest_of("mirror/app", "v1").is_some());
    assert!(dst.try_digest_of("mirror/app", "v2").is_none());
}

/// `/healthz` is liveness: it says whether the scheduler loop makes
/// progress, not whether the registries answer. A rule whose source is down
/// fails its runs (counted, with the cause in `/metrics`) while `/healthz`
/// stays 200, so a liveness probe never restarts a healthy daemon over a
/// remote outage (a restart cannot bring a source back); once the source
/// is back the next run succeeds.
#[test]
fn healthz_stays_live_while_a_source_is_down_and_runs_fail() {
    let mut src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    corpus.image("one", &ImageSpec::new(&[layer("health-one", 1500)]));
    corpus.push(&src, "one", "it/app", "v1");
    src.stop();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    let mut text = header(dir.path(), &[&src, &dst])
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    text += &format!(
        "[[rule]]\nname = \"app\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 1s\"\n",
        src.host(),
        dst.host()
    );
    std::fs::write(&config, text).unwrap();
    let d = Daemon::spawn(&config, port, &[]);
    let runs = |result: &str| {
        d.value(&format!(
            "regkeeper_rule_runs_total{{result=\"{result}\",rule=\"app\"}}"
        ))
    };
    let unreadable = "regkeeper_rule_errors_total{class=\"source_unreadable\",rule=\"app\"}";
    wait_for("two failed runs", Duration::from_secs(60), || {
        runs("failed") >= 2.0
    });
    assert!(d.value(unreadable) >= 2.0, "{}", d.metrics());
    let h = d.get("/healthz").expect("/healthz answers");
    assert_eq!(h.status, 200, "liveness while runs fail: {}", h.text());

    src.start();
    wait_for("a successful run", Duration::from_secs(60), || {
        runs("success") >= 1.0
    });
    assert!(dst.try_digest_of("mirror/app", "v1").is_some());
    assert_eq!(d.get("/healthz").expect("/healthz answers").status, 200);
}
