//! Failures keep their class to the report: against real registries, a
//! wrong password is `authentication`, a source repository that does not
//! exist `not_found`, a read-only target `target_refused`, a source that
//! answers 429 with a long Retry-After `rate_limited`; in `sync --json`, in
//! the daemon's `regkeeper_rule_errors_total{rule,class}`, in its log and in
//! `status --json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::support::daemon::sample;
use crate::support::*;
use crate::sync::{header, regkeeper, regkeeper_with, stdout};

/// A registry section for `reg` (htpasswd) with a password it refuses.
fn wrong_password(dir: &Path, reg: &Registry) -> String {
    let (user, _) = reg.credentials().expect("an htpasswd registry");
    let pw = dir.join("wrong-password");
    std::fs::write(&pw, "not-the-password\n").unwrap();
    format!(
        "[registries.\"{}\"]\nplain_http = true\nusername = \"{user}\"\npassword_file = {:?}\n",
        reg.host(),
        pw.display().to_string()
    )
}

/// Restarts `reg` in distribution's read-only mode: reads work, every
/// write answers 405.
fn make_read_only(reg: &mut Registry) {
    reg.stop();
    let path = reg.config_path();
    let cfg = std::fs::read_to_string(&path).unwrap();
    let anchor = "  maintenance:\n";
    assert!(cfg.contains(anchor), "registry config changed:\n{cfg}");
    let cfg = cfg.replacen(
        anchor,
        "  maintenance:\n    readonly:\n      enabled: true\n",
        1,
    );
    std::fs::write(&path, cfg).unwrap();
    reg.start();
}

fn rule(name: &str, source: String, target: String, schedule: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = [\"{target}\"]\nschedule = \"{schedule}\"\n"
    )
}

/// Per rule, the classes of the failures `sync --json` lists.
fn classes(json: &str) -> BTreeMap<String, BTreeSet<String>> {
    let doc: serde_json::Value = serde_json::from_str(json).expect("sync --json output");
    let mut out = BTreeMap::new();
    for r in doc["rules"].as_array().expect("rules") {
        let name = r["rule"].as_str().unwrap().to_string();
        let set: BTreeSet<String> = r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["class"]
                    .as_str()
                    .unwrap_or_else(|| panic!("an error without a class: {e}"))
                    .to_string()
            })
            .collect();
        out.insert(name, set);
    }
    out
}

#[test]
fn sync_json_failures_carry_their_class() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let locked = Registry::builder().auth(Auth::htpasswd()).start();
    let mut ro = Registry::start_plain();
    make_read_only(&mut ro);
    let throttled = HttpFaultProxy::start(&src.url());
    throttled.set_faults(Faults {
        status: Some(StatusFault {
            every: 1,
            status: 429,
            retry_after: Some(3600),
        }),
        ..Default::default()
    });
    let mut corpus = Corpus::new();
    corpus.image("app", &ImageSpec::new(&[layer("errorclass", 2000)]));
    corpus.push(&src, "app", "it/app", "1.0");

    let dir = tempfile::tempdir().unwrap();
    let mut config = header(dir.path(), &[&src, &dst, &ro]);
    config += &wrong_password(dir.path(), &locked);
    config += &throttled.registry_toml("");
    let (s, d) = (src.host(), dst.host());
    config += &rule(
        "auth",
        format!("{}/it/app", locked.host()),
        format!("{d}/auth/app"),
        "@every 1h",
    );
    config += &rule(
        "missing",
        format!("{s}/it/nope"),
        format!("{d}/missing/app"),
        "@every 1h",
    );
    config += &rule(
        "refused",
        format!("{s}/it/app"),
        format!("{}/it/app", ro.host()),
        "@every 1h",
    );
    config += &rule(
        "limited",
        format!("{}/it/app", throttled.host()),
        format!("{d}/limited/app"),
        "@every 1h",
    );
    let started = std::time::Instant::now();
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    assert_ne!(out.status.code(), Some(0), "every rule fails");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a long Retry-After is not waited out: {:?}",
        started.elapsed()
    );
    let got = classes(&stdout(&out));
    for (rule, class) in [
        ("auth", "authentication"),
        ("missing", "not_found"),
        ("refused", "target_refused"),
        ("limited", "rate_limited"),
    ] {
        let set = got
            .get(rule)
            .unwrap_or_else(|| panic!("rule {rule} missing"));
        assert!(
            set.contains(class),
            "rule {rule}: expected a {class} failure, got {set:?}"
        );
    }
    // The target refused the writes: nothing of the image arrived.
    assert!(ro.try_digest_of("it/app", "1.0").is_none());
}

#[test]
fn the_daemon_counts_failures_by_class_and_status_shows_it() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let locked = Registry::builder().auth(Auth::htpasswd()).start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n",
        dir.path().join("state").display().to_string()
    );
    config += &src.regkeeper_registry_toml();
    config += &dst.regkeeper_registry_toml();
    config += &wrong_password(dir.path(), &locked);
    let d_host = dst.host();
    config += &rule(
        "missing",
        format!("{}/it/nope", src.host()),
        format!("{d_host}/missing/app"),
        "@every 1s",
    );
    config += &rule(
        "auth",
        format!("{}/it/app", locked.host()),
        format!("{d_host}/auth/app"),
        "@every 1s",
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    let d = Daemon::spawn(&path, port, &[]);

    // Every class exists from start-up, at 0 until a failure of it.
    assert!(d.has_series("regkeeper_rule_errors_total{class=\"timeout\",rule=\"missing\"}"));
    let series = |rule: &str, class: &str| {
        format!("regkeeper_rule_errors_total{{class=\"{class}\",rule=\"{rule}\"}}")
    };
    wait_for(
        "failures of both rules counted",
        Duration::from_secs(30),
        || {
            d.value(&series("missing", "not_found")) >= 1.0
                && d.value(&series("auth", "authentication")) >= 1.0
        },
    );
    // One failure per run: the counter follows the failed runs.
    let failed_runs = |rule: &str| {
        d.value(&format!(
            "regkeeper_rule_runs_total{{result=\"failed\",rule=\"{rule}\"}}"
        ))
    };
    let text = d.metrics();
    let runs = sample(
        &text,
        "regkeeper_rule_runs_total{result=\"failed\",rule=\"missing\"}",
    )
    .unwrap();
    let errs = sample(&text, &series("missing", "not_found")).unwrap();
    // (a scrape may fall between the two counters of one run)
    assert!(
        errs == runs || errs == runs - 1.0,
        "one not_found per failed run of missing: {errs} for {runs} runs"
    );
    assert!(failed_runs("auth") >= 1.0);
    for other in ["authentication", "target_refused", "source_unreadable"] {
        assert_eq!(d.value(&series("missing", other)), 0.0, "{other}");
    }
    assert_eq!(d.value(&series("auth", "not_found")), 0.0);

    let log = d.log_text();
    assert!(
        log.contains("class=\"not_found\"") || log.contains("class=not_found"),
        "the log names the class:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );

    let out = regkeeper_with(&path, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let class_of = |rule: &str| {
        doc["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .map(|r| r["last_error_class"].clone())
    };
    assert_eq!(class_of("missing"), Some("not_found".into()));
    assert_eq!(class_of("auth"), Some("authentication".into()));
}

/// A DELETE the target refuses keeps its class to the report: the rule's
/// failures in `prune --json` and the deletion in the text report say
/// `target_refused`, the class of the registry's answer.
#[test]
fn a_refused_deletion_carries_its_class() {
    let mut reg = Registry::start_plain();
    let mut corpus = Corpus::new();
    for tag in ["1.0.0", "2.0.0"] {
        corpus.image(
            tag,
            &ImageSpec::new(&[layer("errorclass-prune", 1024)]).label("v", tag),
        );
        corpus.push(&reg, tag, "it/app", tag);
    }
    make_read_only(&mut reg);
    let dir = tempfile::tempdir().unwrap();
    let mut config = header(dir.path(), &[&reg]);
    config += &format!(
        "[[rule]]\nname = \"clean\"\ntargets = [\"{}/it/app\"]\n[rule.retention]\nmatch = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\norder_by = \"semver\"\n",
        reg.host()
    );
    let out = regkeeper(dir.path(), &config, &["prune", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("prune --json");
    let errors = doc["rules"][0]["errors"]
        .as_array()
        .expect("errors")
        .clone();
    let refused: Vec<_> = errors
        .iter()
        .filter(|e| {
            e["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("deleting"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{errors:?}");
    assert_eq!(refused[0]["class"], "target_refused", "{errors:?}");
    // The text report names the class of the failed deletion itself.
    let out = regkeeper(dir.path(), &config, &["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAILED to delete [target_refused]"),
        "{}",
        stdout(&out)
    );
    // Still there: the registry refused.
    assert!(reg.try_digest_of("it/app", "1.0.0").is_some());
}
