//! One `regkeeper run` helper for every test that needs the daemon: start it
//! on a config the test wrote (its `listen` port given), wait until it is
//! ready, talk to its HTTP endpoints, scrape a metric, signal it, restart it,
//! and kill it on drop. Waits poll a condition; none sleeps a fixed time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{HttpResponse, http, regkeeper_bin, tail_file};

/// A running `regkeeper run`, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    log_filter: String,
}

impl Daemon {
    /// Starts `regkeeper run -c CONFIG ARGS` (its `daemon.listen` must be
    /// `127.0.0.1:PORT`), logging to `daemon.log` beside the config, and
    /// waits until `/readyz` answers 200.
    pub fn spawn(config: &Path, port: u16, args: &[&str]) -> Daemon {
        Daemon::spawn_logging(config, port, args, "info,regkeeper=debug")
    }

    /// As `spawn`, with `REGKEEPER_LOG` set to `filter`.
    pub fn spawn_logging(config: &Path, port: u16, args: &[&str], filter: &str) -> Daemon {
        let mut d = Daemon {
            child: None,
            port,
            config: config.to_path_buf(),
            log: config.with_file_name("daemon.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_filter: filter.to_string(),
        };
        d.restart();
        d
    }

    /// Starts the process again (after `wait_exit`, `kill9` or a crash) on
    /// the same config, appending to the same log, and waits until ready.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(regkeeper_bin())
            .args(["run", "-c"])
            .arg(&self.config)
            .args(&self.args)
            .env("REGKEEPER_LOG", &self.log_filter)
            .env_remove("REGKEEPER_SHARD")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start regkeeper run");
        self.child = Some(child);
        let t = Instant::now();
        while self.get("/readyz").map(|r| r.status) != Some(200) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daemon not ready:\n{}",
                tail_file(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return t.elapsed();
            }
            assert!(t.elapsed() < limit, "daemon did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(5));
    }

    /// Kills the process if it runs (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path`; `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<HttpResponse> {
        http::request(None, "GET", &self.url(path), &[], None).ok()
    }

    /// `POST path` with a JSON body and, when given, a bearer token.
    pub fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        http::request(None, "POST", &self.url(path), &headers, Some(body.to_vec()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_text()))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("metrics").text()
    }

    /// The value of one sample line (`name{labels}`), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    /// A counter's value, 0 while it has no sample yet.
    pub fn value(&self, series: &str) -> f64 {
        self.metric(series).unwrap_or(0.0)
    }

    pub fn has_series(&self, series: &str) -> bool {
        self.metric(series).is_some()
    }

    /// Successful runs of `rule` so far.
    pub fn runs(&self, rule: &str) -> f64 {
        self.metric(&format!(
            "regkeeper_rule_runs_total{{result=\"success\",rule=\"{rule}\"}}"
        ))
        .unwrap_or(0.0)
    }

    /// Waits until `rule` has at least `n` successful runs.
    pub fn wait_runs(&self, rule: &str, n: f64) {
        wait_for(
            &format!("{n} successful runs of {rule}"),
            Duration::from_secs(30),
            || self.runs(rule) >= n,
        );
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of the sample `series` (`name{labels}` exactly) in a scrape.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `cond` every 20 ms until it holds; fails the test naming `what`
/// after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
