//! examples/prometheus-rules.yaml: promtool's unit tests of every alert, and
//! a real Prometheus that scrapes a real daemon and fires the lag alert when
//! the source registry goes away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn promtool_unit_tests_of_the_shipped_alerts_pass() {
    let out = Command::new("promtool")
        .args(["test", "rules", "prometheus-rules.test.yaml"])
        .current_dir(examples())
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// A `prometheus` server on 127.0.0.1 with its data in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `127.0.0.1:target` as job `regkeeper` and evaluates
    /// `rules` every second.
    fn start(dir: &Path, target: u16, rules: &Path) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: regkeeper\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
        let p = Prometheus { child, port, log };
        wait_for("prometheus ready", Duration::from_secs(60), || {
            p.get("/-/ready").is_some_and(|r| r.status == 200)
        });
        p
    }

    fn get(&self, path: &str) -> Option<HttpResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        http::request(None, "GET", &url, &[], None).ok()
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).expect("prometheus answers");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The state (`pending`, `firing`) of `alert` for `rule`, if active.
    fn alert_state(&self, alert: &str, rule: &str) -> Option<String> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == alert && a["labels"]["rule"] == rule)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
    }

    /// How many times the `regkeeper` rule group has been evaluated with a
    /// sample of the lag present (0 until the first scrape).
    fn lag_samples(&self, rule: &str) -> usize {
        let q = format!("count_over_time(regkeeper_rule_sync_lag_seconds{{rule=\"{rule}\"}}[1h])");
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(&q)));
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped rules with the lag alert's threshold and `for` shortened
/// (everything else as shipped), written into `dir`.
fn rules_with_short_lag(dir: &Path, threshold_secs: u32, for_: &str) -> PathBuf {
    let text = std::fs::read_to_string(examples().join("prometheus-rules.yaml")).unwrap();
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let rules = doc["groups"][0]["rules"].as_sequence_mut().unwrap();
    let lag = rules
        .iter_mut()
        .find(|r| r["alert"] == "RegkeeperSyncLagHigh")
        .expect("the lag alert is shipped");
    let expr = lag["expr"].as_str().unwrap().to_string();
    assert!(expr.contains("> 7200"), "lag threshold moved: {expr}");
    lag["expr"] = expr
        .replace("> 7200", &format!("> {threshold_secs}"))
        .into();
    lag["for"] = for_.into();
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    path
}

#[test]
fn prometheus_fires_the_lag_alert_when_the_source_goes_away() {
    let mut src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    corpus.image(
        "v1",
        &ImageSpec::new(&[layer("alerts-base", 3000)]).label("name", "v1"),
    );
    corpus.push(&src, "v1", "it/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n\n{}{}\
             [[rule]]\nname = \"app\"\nsource = \"{}/it/app\"\ntargets = [\"{}/mirror/app\"]\n\
             schedule = \"* * * * * *\"\n",
            dir.path().join("state").display().to_string(),
            src.regkeeper_registry_toml(),
            dst.regkeeper_registry_toml(),
            src.host(),
            dst.host()
        ),
    )
    .unwrap();
    let d = Daemon::spawn(&config, port, &[]);
    d.wait_runs("app", 1.0);

    // Runs every second keep the lag at a second or two; 15 s is far above
    // that even on a loaded machine.
    let rules = rules_with_short_lag(dir.path(), 15, "3s");
    let prom = Prometheus::start(dir.path(), port, &rules);
    wait_for("5 scrapes of the lag", Duration::from_secs(60), || {
        prom.lag_samples("app") >= 5
    });
    assert_eq!(
        prom.alert_state("RegkeeperSyncLagHigh", "app"),
        None,
        "the lag alert is active while the source is healthy:\n{}",
        d.metrics()
    );

    src.stop();
    wait_for("the lag alert firing", Duration::from_secs(120), || {
        prom.alert_state("RegkeeperSyncLagHigh", "app").as_deref() == Some("firing")
    });
    assert!(
        d.value("regkeeper_rule_runs_total{result=\"failed\",rule=\"app\"}") >= 1.0,
        "the rule's runs fail without the source:\n{}",
        d.log_text()
    );
    assert!(
        prom.log_text().contains("Server is ready"),
        "{}",
        prom.log_text()
    );
}
