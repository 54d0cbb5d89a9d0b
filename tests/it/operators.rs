//! What an operator sees on day two: failed runs in the logs (daemon and
//! `sync`), with their cause, class and repository.

use std::time::Duration;

use crate::support::*;
use crate::sync::{header, regkeeper};

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
