//! Event-driven sync (SPEC section 10) against real registries: distribution
//! sends its notifications to the daemon, and a push at the source is
//! mirrored within seconds; bad requests are refused; Harbor payloads and the
//! trigger URL start the right rule; a burst of events is one or two syncs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "webhook-test-token-7f3a";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Starts `regkeeper run` on `port` (chosen before: the source registry's
/// notification endpoint points at it), with the webhook token when given.
fn start(dir: &Path, port: u16, token: Option<&str>, body: &str) -> Daemon {
    let mut daemon = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n",
        dir.join("state").display().to_string()
    );
    if let Some(t) = token {
        let file = dir.join("webhook.token");
        std::fs::write(&file, format!("{t}\n")).unwrap();
        daemon += &format!("webhook_token_file = {:?}\n", file.display().to_string());
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("{daemon}\n{body}")).unwrap();
    Daemon::spawn(&config, port, &[])
}

fn rule(name: &str, src: &Registry, repo: &str, dst: &Registry, target: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{}/{repo}\"\ntargets = [\"{}/{target}\"]\nschedule = \"@every 1h\"\n",
        src.host(),
        dst.host()
    )
}

fn registries(regs: &[&Registry]) -> String {
    regs.iter().map(|r| r.regkeeper_registry_toml()).collect()
}

/// A small image of its own (one shared layer, one unique layer).
fn small(corpus: &mut Corpus, name: &str) -> Image {
    corpus.image(
        name,
        &ImageSpec::new(&[layer("events-base", 3000), layer(name, 1500)]).label("name", name),
    )
}

/// The digest `repo:tag` has at `reg`, by a HEAD (cheap enough to poll).
fn head_digest(reg: &Registry, repo: &str, tag: &str) -> Option<String> {
    let r = reg
        .request(
            "HEAD",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", ACCEPT)],
            None,
        )
        .ok()?;
    (r.status == 200)
        .then(|| r.header("Docker-Content-Digest").map(str::to_string))
        .flatten()
}

fn envelope(repo: &str, tag: &str, host: &str) -> Vec<u8> {
    serde_json::json!({"events": [{
        "id": "e1", "action": "push",
        "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "repository": repo, "tag": tag, "digest": "sha256:00"},
        "request": {"host": host, "method": "PUT"}
    }]})
    .to_string()
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn registry_notifications_mirror_each_push_within_seconds() {
    let port = free_port();
    let src = Registry::builder()
        .notify(
            &format!("http://127.0.0.1:{port}/v1/events/distribution"),
            TOKEN,
        )
        .start();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    small(&mut corpus, "t0");
    corpus.push(&src, "t0", "it/app", "t0");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        port,
        Some(TOKEN),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, "it/app", &dst, "mirror/app")
        ),
    );
    d.wait_runs("app", 1.0);
    let pushes: usize = std::env::var("REGKEEPER_EVENT_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut lags = Vec::new();
    let mut images = Vec::new();
    for i in 1..=pushes {
        let tag = format!("t{i}");
        let img = small(&mut corpus, &tag);
        corpus.push(&src, &tag, "it/app", &tag);
        let pushed = Instant::now();
        wait_for(
            &format!("{tag} at the target"),
            Duration::from_secs(15),
            || head_digest(&dst, "mirror/app", &tag).as_deref() == Some(img.digest.as_str()),
        );
        lags.push(pushed.elapsed());
        images.push((tag, img));
    }
    lags.sort();
    eprintln!(
        "push -> visible over {pushes} pushes: p50 {:?}, p90 {:?}, max {:?}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        lags[lags.len() - 1]
    );
    assert!(lags[lags.len() - 1] < Duration::from_secs(15));
    // The independent judge agrees on every digest.
    for (tag, img) in &images {
        assert_eq!(dst.digest_of("mirror/app", tag), img.digest);
    }
    assert!(
        d.value("regkeeper_events_total{kind=\"distribution\",result=\"matched\"}")
            >= pushes as f64
    );
    // Blob pushes and the daemon's own pulls were ignored, not synced.
    assert!(d.value("regkeeper_events_total{kind=\"distribution\",result=\"ignored\"}") > 0.0);
}

#[test]
fn bad_requests_are_refused_and_the_daemon_stays_ready() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        registries(&[&src, &dst]),
        rule("app", &src, "it/app", &dst, "mirror/app")
    );
    let d = start(dir.path(), free_port(), Some(TOKEN), &body);
    d.wait_runs("app", 1.0);
    for kind in ["distribution", "harbor", "trigger"] {
        for result in ["matched", "ignored", "rejected"] {
            let s = format!("regkeeper_events_total{{kind=\"{kind}\",result=\"{result}\"}}");
            assert!(d.has_series(&s), "{s} present from start-up");
        }
    }
    let path = "/v1/events/distribution";
    let good = envelope("it/app", "v1", &src.host());
    assert_eq!(d.post(path, None, &good).status, 401);
    assert_eq!(d.post(path, Some("wrong-token"), &good).status, 401);
    assert_eq!(d.post("/v1/rules/app/sync", None, b"").status, 401);
    assert_eq!(d.post(path, Some(TOKEN), b"{\"events\": [").status, 400);
    assert_eq!(d.post("/v1/events/harbor", Some(TOKEN), b"[]").status, 400);
    let big = vec![b' '; 1024 * 1024 + 1];
    assert_eq!(d.post(path, Some(TOKEN), &big).status, 413);
    let unknown = d.post(path, Some(TOKEN), &envelope("it/other", "v1", &src.host()));
    assert_eq!(unknown.status, 202);
    let answer: serde_json::Value = serde_json::from_slice(&unknown.body).unwrap();
    assert_eq!(answer["matched"], serde_json::json!([]));
    assert_eq!(d.post("/v1/rules/nope/sync", Some(TOKEN), b"").status, 404);
    assert_eq!(d.get("/readyz").unwrap().status, 200);
    let m = |k: &str, r: &str| {
        d.value(&format!(
            "regkeeper_events_total{{kind=\"{k}\",result=\"{r}\"}}"
        ))
    };
    assert_eq!(m("distribution", "rejected"), 4.0);
    assert_eq!(m("harbor", "rejected"), 1.0);
    assert_eq!(m("trigger", "rejected"), 1.0);
    assert_eq!(m("distribution", "ignored"), 1.0);
    assert_eq!(m("distribution", "matched"), 0.0);
    assert_eq!(d.runs("app"), 1.0, "nothing refused started a run");
    drop(d);

    // Without daemon.webhook_token_file the paths do not exist.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = start(dir2.path(), free_port(), None, &body);
    assert_eq!(plain.post(path, Some(TOKEN), &good).status, 404);
    assert_eq!(
        plain.post("/v1/rules/app/sync", Some(TOKEN), b"").status,
        404
    );
    assert!(!plain.has_series("regkeeper_events_total{kind=\"distribution\",result=\"matched\"}"));
}

#[test]
fn harbor_payload_and_trigger_start_the_right_rule() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/a", "v1");
    corpus.push(&src, "v1", "it/b", "v1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        free_port(),
        Some(TOKEN),
        &format!(
            "{}{}{}",
            registries(&[&src, &dst]),
            rule("a", &src, "it/a", &dst, "mirror/a"),
            rule("b", &src, "it/b", &dst, "mirror/b")
        ),
    );
    d.wait_runs("a", 1.0);
    d.wait_runs("b", 1.0);
    let success_before = d.value("regkeeper_rule_last_success_timestamp_seconds{rule=\"a\"}");

    // Harbor's documented PUSH_ARTIFACT shape.
    let h1 = small(&mut corpus, "h1");
    corpus.push(&src, "h1", "it/a", "h1");
    let hook = serde_json::json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1_700_000_000, "operator": "ci",
        "event_data": {
            "resources": [{"digest": h1.digest, "tag": "h1",
                           "resource_url": format!("{}/it/a:h1", src.host())}],
            "repository": {"date_created": 1_690_000_000, "name": "a", "namespace": "it",
                           "repo_full_name": "it/a", "repo_type": "private"}
        }
    });
    let r = d.post(
        "/v1/events/harbor",
        Some(TOKEN),
        hook.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202);
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["matched"][0]["rule"], "a");
    d.wait_runs("a", 2.0);
    assert_eq!(dst.digest_of("mirror/a", "h1"), h1.digest);
    assert_eq!(d.runs("b"), 1.0, "rule b did not run");
    assert!(
        d.value("regkeeper_rule_last_success_timestamp_seconds{rule=\"a\"}") >= success_before,
        "the event-driven run counts for lag"
    );

    // The trigger URL runs rule b, and only it.
    let t1 = small(&mut corpus, "t1");
    corpus.push(&src, "t1", "it/b", "t1");
    assert_eq!(d.post("/v1/rules/b/sync", Some(TOKEN), b"").status, 202);
    d.wait_runs("b", 2.0);
    assert_eq!(dst.digest_of("mirror/b", "t1"), t1.digest);
    assert_eq!(d.runs("a"), 2.0, "rule a did not run again");
    assert_eq!(
        d.value("regkeeper_events_total{kind=\"harbor\",result=\"matched\"}"),
        1.0
    );
    assert_eq!(
        d.value("regkeeper_events_total{kind=\"trigger\",result=\"matched\"}"),
        1.0
    );
    // `status` shows the event-driven runs.
    let out = Command::new(regkeeper_bin())
        .args(["status", "--json", "-c"])
        .arg(d.config())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let b = status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "b")
        .expect("rule b in status")
        .clone();
    assert_eq!(b["last_run"]["tags_copied"], 1, "{b}");
    assert_eq!(b["last_run"]["result"], "success", "{b}");
}

/// Sends `n` copies of one event at once.
fn burst(d: &Daemon, n: usize, body: Vec<u8>) -> Vec<u16> {
    let url = d.url("/v1/events/distribution");
    block_on_thread(async move {
        let c = http::client(None);
        use futures_util::StreamExt;
        // 100 connections at a time: within any file-descriptor limit.
        futures_util::stream::iter(0..n)
            .map(|_| {
                c.post(&url)
                    .header("Authorization", format!("Bearer {TOKEN}"))
                    .body(body.clone())
                    .send()
            })
            .buffer_unordered(100)
            .map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0))
            .collect()
            .await
    })
}

#[test]
fn a_burst_of_200_events_is_one_or_two_syncs() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    small(&mut corpus, "v1");
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        free_port(),
        Some(TOKEN),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("app", &src, "it/app", &dst, "mirror/app")
        ),
    );
    d.wait_runs("app", 1.0);
    let v2 = small(&mut corpus, "v2");
    corpus.push(&src, "v2", "it/app", "v2");
    let mark = src.mark();
    let codes = burst(&d, 200, envelope("it/app", "v2", &src.host()));
    assert!(codes.iter().all(|c| *c == 202), "{codes:?}");
    d.wait_runs("app", 2.0);
    // Longer than the coalescing window and a second pass.
    std::thread::sleep(Duration::from_secs(2));
    let syncs = d.runs("app") - 1.0;
    let listings = src.count_since(mark, |r| r.kind == PathKind::TagsList);
    eprintln!("200 events -> {syncs} syncs, {listings} tag listings at the source");
    assert!((1.0..=2.0).contains(&syncs), "{syncs} syncs");
    assert!((1..=2).contains(&listings), "{listings} tag listings");
    assert_eq!(dst.digest_of("mirror/app", "v2"), v2.digest);
    assert_eq!(
        d.value("regkeeper_events_total{kind=\"distribution\",result=\"matched\"}"),
        200.0
    );

    // A flood: 1,000 events as fast as they can be sent; the daemon's
    // memory does not grow with the event count.
    let (runs, rss) = (d.runs("app"), d.peak_rss_kib());
    let started = Instant::now();
    let codes = burst(&d, 1000, envelope("it/app", "v2", &src.host()));
    let sent_in = started.elapsed();
    assert!(codes.iter().all(|c| *c == 202));
    d.wait_runs("app", runs + 1.0);
    std::thread::sleep(Duration::from_secs(2));
    let more = d.runs("app") - runs;
    let grown = d.peak_rss_kib().saturating_sub(rss);
    eprintln!("1000 events in {sent_in:?} -> {more} syncs; peak RSS +{grown} KiB (from {rss} KiB)");
    // At most one pass per coalescing window while events keep coming, and
    // one more after: bounded by time, not by the number of events.
    let bound = (sent_in.as_secs_f64() / 0.5).ceil() + 2.0;
    assert!(more >= 1.0 && more <= bound, "{more} syncs (bound {bound})");
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
}

#[test]
fn an_event_syncs_one_repository_of_a_prefix_rule() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    for t in ["v1", "v2", "v3"] {
        small(&mut corpus, t);
    }
    for r in 0..4 {
        for t in ["v1", "v2", "v3"] {
            corpus.push(&src, t, &format!("team/r{r}"), t);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        free_port(),
        Some(TOKEN),
        &format!(
            "{}{}",
            registries(&[&src, &dst]),
            rule("team", &src, "team/*", &dst, "mirror/*")
        ),
    );
    d.wait_runs("team", 1.0);
    let new = small(&mut corpus, "v4");
    corpus.push(&src, "v4", "team/r2", "v4");
    let (ms, md) = (src.mark(), dst.mark());
    let r = d.post(
        "/v1/events/distribution",
        Some(TOKEN),
        &envelope("team/r2", "v4", &src.host()),
    );
    assert_eq!(r.status, 202);
    d.wait_runs("team", 2.0);
    let event_src = src.requests_since(ms);
    let event_cost = event_src.len() + dst.requests_since(md).len();
    assert!(
        event_src
            .iter()
            .all(|r| r.repo.as_deref().is_none_or(|x| x == "team/r2")),
        "the event pass read only team/r2: {event_src:?}"
    );
    assert!(!event_src.iter().any(|r| r.kind == PathKind::Catalog));
    // The same work (one new tag in one repository) by a full-rule run.
    small(&mut corpus, "v5");
    corpus.push(&src, "v5", "team/r2", "v5");
    let (ms, md) = (src.mark(), dst.mark());
    assert_eq!(d.post("/v1/rules/team/sync", Some(TOKEN), b"").status, 202);
    d.wait_runs("team", 3.0);
    let full_cost = src.requests_since(ms).len() + dst.requests_since(md).len();
    eprintln!(
        "requests: event-driven pass of one tag {event_cost}, full-rule run copying one tag {full_cost} (4 repositories, 3-5 tags each)"
    );
    assert!(event_cost < full_cost);
    assert_eq!(dst.digest_of("mirror/r2", "v4"), new.digest);
}
