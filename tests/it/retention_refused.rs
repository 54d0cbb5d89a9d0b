//! Retention failures keep their class: a target that refuses DELETE
//! (distribution's default, `storage.delete.enabled` unset) is a
//! `target_refused` failure in `sync --json` and in
//! `regkeeper_rule_errors_total`, counted once per run, and nothing is
//! deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use crate::sync::{header, regkeeper, stdout};

/// Restarts `reg` with deletes disabled: DELETE answers 405 Unsupported.
fn disable_deletes(reg: &mut Registry) {
    reg.stop();
    let path = reg.config_path();
    let cfg = std::fs::read_to_string(&path).unwrap();
    let on = "  delete:\n    enabled: true\n";
    assert!(cfg.contains(on), "registry config changed:\n{cfg}");
    std::fs::write(
        &path,
        cfg.replacen(on, "  delete:\n    enabled: false\n", 1),
    )
    .unwrap();
    reg.start();
}

/// A cleanup-only rule that wants to delete all but the newest `v*` tag.
fn rule(target: &str) -> String {
    format!(
        "[[rule]]\nname = \"clean\"\ntargets = [\"{target}\"]\nschedule = \"@every 1s\"\n\n[rule.retention]\nmatch = ['^v\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\n"
    )
}

/// The (class, count) of the failures `sync --json` lists for rule `clean`.
fn classes(json: &str) -> BTreeMap<String, usize> {
    let doc: serde_json::Value = serde_json::from_str(json).expect("sync --json");
    let mut out = BTreeMap::new();
    for r in doc["rules"].as_array().expect("rules") {
        assert_eq!(r["rule"], "clean");
        for e in r["errors"].as_array().expect("errors") {
            let class = e["class"].as_str().expect("class").to_string();
            *out.entry(class).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn a_refused_delete_is_target_refused_in_json_and_metrics() {
    let mut dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    for v in ["v1.0.0", "v2.0.0", "v3.0.0"] {
        corpus.image(
            v,
            &ImageSpec::new(&[layer("refused-base", 1500)]).label("v", v),
        );
        corpus.push(&dst, v, "it/app", v);
    }
    disable_deletes(&mut dst);
    let target = format!("{}/it/app", dst.host());
    let dir = tempfile::tempdir().unwrap();
    let config = header(dir.path(), &[&dst]) + &rule(&target);

    let mark = dst.mark();
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "the run is not a success");
    let got = classes(&stdout(&out));
    // One failure: the first DELETE, refused; the rest of the repository is
    // not sent (an earlier deletion failed), which is no failure of its own.
    assert_eq!(
        got,
        BTreeMap::from([("target_refused".to_string(), 1)]),
        "{}",
        stdout(&out)
    );
    let deletes = dst
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 1, "one DELETE sent, the rest held back");
    let mut tags = dst.list_tags("it/app");
    tags.sort();
    assert_eq!(tags, ["v1.0.0", "v2.0.0", "v3.0.0"], "nothing deleted");

    // The daemon counts it under its class, and under no other.
    let port = free_port();
    let path = dir.path().join("daemon.toml");
    let text = config.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&path, text).unwrap();
    let d = Daemon::spawn(&path, port, &[]);
    let series =
        |class: &str| format!("regkeeper_rule_errors_total{{class=\"{class}\",rule=\"clean\"}}");
    wait_for(
        "a refused delete counted as target_refused",
        Duration::from_secs(60),
        || d.value(&series("target_refused")) >= 2.0,
    );
    assert_eq!(d.value(&series("other")), 0.0, "{}", d.metrics());
}

#[test]
fn a_target_that_cannot_be_read_keeps_its_class_in_the_refusal() {
    let mut dst = Registry::start_plain();
    let target = format!("{}/it/app", dst.host());
    dst.stop();
    let dir = tempfile::tempdir().unwrap();
    let config = header(dir.path(), &[&dst]) + &rule(&target);
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "the run is not a success");
    // The target is down: retention refuses to plan there, a failure of the
    // target (connection refused), not of an unknown kind.
    let got = classes(&stdout(&out));
    assert_eq!(
        got,
        BTreeMap::from([("target_refused".to_string(), 1)]),
        "{}",
        stdout(&out)
    );
}

/// A copy that fails holds back the retention of its repository (the plan
/// counted on it): that is one failure (the copy's), not two; the hold is
/// a warning, and nothing is deleted there this run.
#[test]
fn a_copy_failure_that_holds_back_retention_counts_once() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let mut digests = BTreeMap::new();
    for v in ["v1.0.0", "v2.0.0", "v3.0.0"] {
        let img = corpus.image(v, &ImageSpec::new(&[layer(&format!("held-{v}"), 1500)]));
        digests.insert(v, img);
        corpus.push(&src, v, "it/app", v);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[[rule]]\nname = \"clean\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\n\
         tags.include = ['^v[12]']\n\n[rule.retention]\nmatch = ['^v\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\n",
        header(dir.path(), &[&src, &dst]),
        src.host(),
        dst.host()
    );
    // First run: v1 and v2 arrive, retention keeps v2 and deletes v1.
    let out = regkeeper(dir.path(), &config, &["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(dst.try_digest_of("mirror/app", "v2.0.0").is_some());
    // v3 is selected now but its layer is corrupt at the source: its copy
    // fails, so retention (which planned to keep v3 and delete v2) must
    // delete nothing.
    src.corrupt_blob(&digests["v3.0.0"].layers[0].digest);
    let config = config.replace("tags.include = ['^v[12]']\n", "");
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout(&out);
    assert_eq!(
        classes(&json),
        BTreeMap::from([("verification".to_string(), 1)]),
        "one failure, the copy's: {json}"
    );
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let warnings = doc["rules"][0]["warnings"].to_string();
    assert!(
        warnings.contains("retention") && warnings.contains("nothing deleted this run"),
        "the hold is said as a warning: {warnings}"
    );
    assert!(
        dst.try_digest_of("mirror/app", "v2.0.0").is_some(),
        "v2 kept: retention held back"
    );
    assert!(dst.try_digest_of("mirror/app", "v3.0.0").is_none());
}
