//! Event passes make the rule's own plan (against real registries): a push
//! event's repository pass copies exactly what a full run would copy there
//! (never what the rule's retention deletes) and deletes nothing; and a
//! narrowed pass never speaks for the whole rule (its lag).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "event-passes-token-4c1d";
const RETAIN_ONE: &str =
    "[rule.retention]\nmatch = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\norder_by = \"semver\"\n";

/// `regkeeper run` on a config of `body`, with the webhook token.
fn start(dir: &Path, body: &str) -> Daemon {
    let port = free_port();
    let token = dir.join("webhook.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nwebhook_token_file = {:?}\n\n{body}",
            dir.join("state").display().to_string(),
            token.display().to_string()
        ),
    )
    .unwrap();
    Daemon::spawn(&config, port, &[])
}

fn rule(name: &str, source: String, target: String, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = [\"{target}\"]\nschedule = \"@every 1h\"\n{extra}"
    )
}

/// A small image of its own.
fn image(corpus: &mut Corpus, name: &str) -> Image {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("passes-base", 2000), layer(name, 1000)]).label("name", name),
    )
}

/// A distribution push envelope for `repo:tag` at `host`.
fn push_event(repo: &str, tag: &str, host: &str) -> Vec<u8> {
    serde_json::json!({"events": [{
        "id": format!("{repo}-{tag}"), "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "repository": repo, "tag": tag, "digest": "sha256:00"},
        "request": {"host": host, "method": "PUT"}
    }]})
    .to_string()
    .into_bytes()
}

fn tags(reg: &Registry, repo: &str) -> BTreeSet<String> {
    reg.list_tags(repo).into_iter().collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every run of `rule` that ended, whatever its result.
fn ended(d: &Daemon, rule: &str) -> f64 {
    ["success", "partial", "failed"]
        .iter()
        .map(|r| {
            d.value(&format!(
                "regkeeper_rule_runs_total{{result=\"{r}\",rule=\"{rule}\"}}"
            ))
        })
        .sum()
}

fn wait_ended(d: &Daemon, rule: &str, n: f64) {
    wait_for(
        &format!("{n} runs of {rule} ended"),
        Duration::from_secs(60),
        || ended(d, rule) >= n,
    );
}

/// Keep-last-1 rules, one on a single repository and one on a `/*` prefix:
/// the first run leaves only the newest release at each target; a push of a
/// newer one and its event copy that one (the full plan's only copy) and
/// bring back nothing retention deletes, delete nothing; the next normal
/// run (the trigger) deletes the superseded release.
#[test]
fn an_event_pass_copies_what_the_full_plan_copies_and_deletes_nothing() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        image(&mut corpus, v);
    }
    for repo in ["it/app", "team/app"] {
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            corpus.push(&src, v, repo, v);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}{}",
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        rule(
            "one",
            format!("{}/it/app", src.host()),
            format!("{}/mirror/app", dst.host()),
            RETAIN_ONE
        ),
        rule(
            "team",
            format!("{}/team/*", src.host()),
            format!("{}/team/*", dst.host()),
            RETAIN_ONE
        ),
    );
    let d = start(dir.path(), &body);
    d.wait_runs("one", 1.0);
    d.wait_runs("team", 1.0);
    assert_eq!(tags(&dst, "mirror/app"), set(&["1.2.0"]));
    assert_eq!(tags(&dst, "team/app"), set(&["1.2.0"]));

    let mark = dst.mark();
    for repo in ["it/app", "team/app"] {
        corpus.push(&src, "1.3.0", repo, "1.3.0");
        let answer = d.post(
            "/v1/events/distribution",
            Some(TOKEN),
            &push_event(repo, "1.3.0", &src.host()),
        );
        assert_eq!(answer.status, 202);
    }
    d.wait_runs("one", 2.0);
    d.wait_runs("team", 2.0);
    // The plan for these repositories copies 1.3.0 only (1.0.0 and 1.1.0
    // are what retention deletes); the pass sends no DELETE, so 1.2.0,
    // which the plan deletes, is still there.
    assert_eq!(tags(&dst, "mirror/app"), set(&["1.2.0", "1.3.0"]));
    assert_eq!(tags(&dst, "team/app"), set(&["1.2.0", "1.3.0"]));
    let deletes = dst
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 0, "an event pass deletes nothing");

    // A normal run (the trigger) carries out the deletions.
    for name in ["one", "team"] {
        assert_eq!(
            d.post(&format!("/v1/rules/{name}/sync"), Some(TOKEN), b"")
                .status,
            202
        );
        d.wait_runs(name, 3.0);
    }
    assert_eq!(tags(&dst, "mirror/app"), set(&["1.3.0"]));
    assert_eq!(tags(&dst, "team/app"), set(&["1.3.0"]));
    for name in ["one", "team"] {
        let deleted = format!("regkeeper_retention_deleted_total{{rule=\"{name}\"}}");
        assert_eq!(d.value(&deleted), 1.0, "{name}: 1.2.0, by the normal run");
    }
}

/// The storage file of blob `digest` in `reg`.
fn blob_file(reg: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    reg.data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// A `/*` rule with one repository whose image cannot be read at the source
/// is never in step: an event pass that brings another repository in step
/// leaves the rule's lag growing, also across a restart.
#[test]
fn a_repository_pass_does_not_reset_the_rules_lag() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    image(&mut corpus, "good-1");
    image(&mut corpus, "good-2");
    let bad = image(&mut corpus, "bad-1");
    corpus.push(&src, "good-1", "team/good", "1");
    corpus.push(&src, "bad-1", "team/bad", "1");
    // The bad image's own layer is gone from the source's storage.
    std::fs::remove_file(blob_file(&src, &bad.layers[1].digest)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}",
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        rule(
            "team",
            format!("{}/team/*", src.host()),
            format!("{}/team/*", dst.host()),
            ""
        ),
    );
    let mut d = start(dir.path(), &body);
    wait_ended(&d, "team", 1.0);
    let first_ended = Instant::now();
    assert_eq!(d.runs("team"), 0.0, "the first run is not a success");
    assert_eq!(tags(&dst, "team/good"), set(&["1"]));

    // Time passes; then a push to the good repository and its event.
    std::thread::sleep(Duration::from_secs(3));
    corpus.push(&src, "good-2", "team/good", "2");
    let answer = d.post(
        "/v1/events/distribution",
        Some(TOKEN),
        &push_event("team/good", "2", &src.host()),
    );
    assert_eq!(answer.status, 202);
    wait_ended(&d, "team", 2.0);
    assert_eq!(tags(&dst, "team/good"), set(&["1", "2"]));
    assert_eq!(d.runs("team"), 1.0, "the repository pass succeeded");
    // The rule is still not in step: its lag counts from before the first
    // run, not from the pass.
    let lag = d.value("regkeeper_rule_sync_lag_seconds{rule=\"team\"}");
    let since = first_ended.elapsed().as_secs_f64();
    assert!(
        lag >= since - 1.0,
        "lag {lag} s, but no run put the whole rule in step for {since} s"
    );
    assert_eq!(
        d.value("regkeeper_rule_last_success_timestamp_seconds{rule=\"team\"}"),
        0.0
    );

    // The run history agrees: after a restart the lag still counts from
    // before the first run.
    d.restart();
    let lag = d.value("regkeeper_rule_sync_lag_seconds{rule=\"team\"}");
    let since = first_ended.elapsed().as_secs_f64();
    assert!(
        lag >= since - 1.0,
        "after a restart: lag {lag} s, not in step for {since} s"
    );
}
