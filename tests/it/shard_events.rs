//! Kubernetes' Service hands a webhook to any pod: two daemons on
//! 127.0.0.1 as shards 0 and 1 of 2, each with `--peer-url` pointing at
//! the other. An event posted to the shard that does not own the rule is
//! forwarded once to the owner, which copies; a forwarded request is never
//! forwarded again.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "shard-events-token";

/// Two free ports `B0` and `B1` (decimal), so one pattern
/// `http://127.0.0.1:B{shard}` names both.
fn port_pair() -> (u16, u16) {
    for _ in 0..200 {
        let base = free_port() / 10;
        if !(200..=6000).contains(&base) {
            continue;
        }
        let (a, b) = (base * 10, base * 10 + 1);
        let free = |p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(a) && free(b) {
            return (a, b);
        }
    }
    panic!("no two adjacent free ports");
}

fn write_config(dir: &Path, port: u16, rules: &str) -> std::path::PathBuf {
    let token = dir.join("webhook.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nwebhook_token_file = {:?}\n\n{rules}",
            dir.join("state").display().to_string(),
            token.display().to_string()
        ),
    )
    .unwrap();
    config
}

fn envelope(repo: &str, tag: &str) -> Vec<u8> {
    serde_json::json!({"events": [{
        "id": "e1", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "repository": repo, "tag": tag, "digest": "sha256:00"},
        "request": {"method": "PUT"}
    }]})
    .to_string()
    .into_bytes()
}

fn events(d: &Daemon, kind: &str, result: &str) -> f64 {
    d.value(&format!(
        "regkeeper_events_total{{kind=\"{kind}\",result=\"{result}\"}}"
    ))
}

#[test]
fn an_event_posted_to_the_other_shard_is_forwarded_once_and_the_owner_copies() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let images: Vec<Image> = ["v0", "v1"]
        .iter()
        .map(|tag| {
            corpus.image(
                tag,
                &ImageSpec::new(&[layer("shard-ev", 2000), layer(tag, 1000)]).label("t", tag),
            )
        })
        .collect();
    corpus.push(&src, "v0", "it/app", "v0");
    // A rule name that shard 1 of 2 owns.
    let rule = (0..)
        .map(|i| format!("app{i}"))
        .find(|n| regkeeper::shard::owner(n.as_bytes(), 2) == 1)
        .unwrap();
    let rules = format!(
        "{}{}[[rule]]\nname = \"{rule}\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 1h\"\n",
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        src.host(),
        dst.host()
    );
    let (p0, p1) = port_pair();
    let pattern = format!("http://127.0.0.1:{}{{shard}}", p0 / 10);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start = |k: usize, port: u16| {
        let config = write_config(dirs[k].path(), port, &rules);
        let shard = format!("{k}/2");
        Daemon::spawn(&config, port, &["--shard", &shard, "--peer-url", &pattern])
    };
    let d0 = start(0, p0);
    let d1 = start(1, p1);
    // The owner ran the rule at start-up; the other shard does not run it.
    d1.wait_runs(&rule, 1.0);
    assert!(dst.try_digest_of("mirror/app", "v0").is_some());
    assert!(!d0.has_series(&format!(
        "regkeeper_rule_runs_total{{result=\"success\",rule=\"{rule}\"}}"
    )));

    corpus.push(&src, "v1", "it/app", "v1");
    let r = d0.post(
        "/v1/events/distribution",
        Some(TOKEN),
        &envelope("it/app", "v1"),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["matched"][0]["rule"], rule.as_str(), "{body}");
    assert_eq!(body["matched"][0]["forwarded_to"], 1, "{body}");
    let want = images[1].digest.clone();
    wait_for("v1 copied by the owner", Duration::from_secs(30), || {
        dst.try_digest_of("mirror/app", "v1").as_deref() == Some(want.as_str())
    });
    assert_eq!(events(&d0, "distribution", "forwarded"), 1.0);
    assert_eq!(events(&d0, "distribution", "matched"), 0.0);
    assert_eq!(events(&d1, "distribution", "matched"), 1.0, "received once");
    assert_eq!(events(&d1, "distribution", "forwarded"), 0.0);

    // A request that was forwarded already is not forwarded again, even
    // when it reached the wrong shard.
    let auth = format!("Bearer {TOKEN}");
    let r = http::request(
        None,
        "POST",
        &d0.url("/v1/events/distribution"),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("X-Regkeeper-Forwarded", "1"),
        ],
        Some(envelope("it/app", "v1")),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.text().contains("\"matched\":[]"), "{}", r.text());
    assert_eq!(events(&d0, "distribution", "forwarded"), 1.0);
    assert_eq!(events(&d1, "distribution", "matched"), 1.0, "no second hop");

    // The trigger URL reaches the owner too.
    let runs = d1.runs(&rule);
    let r = d0.post(&format!("/v1/rules/{rule}/sync"), Some(TOKEN), b"");
    assert_eq!(r.status, 202, "{}", r.text());
    d1.wait_runs(&rule, runs + 1.0);
    assert_eq!(events(&d1, "trigger", "matched"), 1.0);
    assert!(d0.log_text().contains("event forwarded to its owner"));
}

#[test]
fn a_peer_that_is_down_makes_the_sender_retry() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let rule = (0..)
        .map(|i| format!("app{i}"))
        .find(|n| regkeeper::shard::owner(n.as_bytes(), 2) == 1)
        .unwrap();
    let rules = format!(
        "{}{}[[rule]]\nname = \"{rule}\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\nschedule = \"@every 1h\"\n",
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        src.host(),
        dst.host()
    );
    let (p0, _p1) = port_pair();
    let pattern = format!("http://127.0.0.1:{}{{shard}}", p0 / 10);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), p0, &rules);
    let d0 = Daemon::spawn(&config, p0, &["--shard", "0/2", "--peer-url", &pattern]);
    let r = d0.post(
        "/v1/events/distribution",
        Some(TOKEN),
        &envelope("it/app", "v1"),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("shard 1"), "{}", r.text());
}
