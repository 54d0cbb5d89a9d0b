//! Prometheus metrics (SPEC section 7). Label values are bounded: rule
//! names and registry hosts come from the config, methods and codes from
//! HTTP, actions and results from fixed lists; never a tag, digest or
//! repository.
//!
//! Sync lag is not a stored number: the daemon keeps, per rule, the start
//! of the last run that left every target in step (its *basis*), and the
//! gauge is set to `now - basis` at each scrape, so it grows between runs
//! and while runs fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::engine::RuleReport;
use crate::transport::ErrorClass;
use crate::transport::Transports;
use crate::transport::remote::RequestEvent;

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

pub struct Metrics {
    registry: Registry,
    lag: GaugeVec,
    last_success: GaugeVec,
    last_run: GaugeVec,
    tags_pending: IntGaugeVec,
    tags_selected: IntGaugeVec,
    runs: IntCounterVec,
    runs_skipped: IntCounterVec,
    errors: IntCounterVec,
    run_duration: HistogramVec,
    bytes: IntCounterVec,
    blobs: IntCounterVec,
    manifests: IntCounterVec,
    referrers: IntCounterVec,
    refused: IntCounterVec,
    retention_deleted: IntCounterVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    throttled: IntCounterVec,
    rate_limit_remaining: IntGaugeVec,
    reloads: IntCounterVec,
    concurrency: IntGaugeVec,
    /// Per rule: unix time (seconds, fractional) the lag is measured from.
    lag_basis: Mutex<HashMap<String, f64>>,
    /// The transports whose `RateLimit-Remaining` is read at scrape time.
    transports: Mutex<Option<Arc<Transports>>>,
}

use crate::clock::{lag_seconds, now_unix_f64 as now};

impl Metrics {
    pub fn new() -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let rule = &["rule"];
        let m = Metrics {
            lag: reg!(GaugeVec::new(
                Opts::new(
                    "regkeeper_rule_sync_lag_seconds",
                    "Seconds since the start of the last run that left every target in step with the source"
                ),
                rule
            )?),
            last_success: reg!(GaugeVec::new(
                Opts::new(
                    "regkeeper_rule_last_success_timestamp_seconds",
                    "Start of the last run that left every target in step (unix time)"
                ),
                rule
            )?),
            last_run: reg!(GaugeVec::new(
                Opts::new(
                    "regkeeper_rule_last_run_timestamp_seconds",
                    "Start of the last run (unix time)"
                ),
                rule
            )?),
            tags_pending: reg!(IntGaugeVec::new(
                Opts::new(
                    "regkeeper_rule_tags_pending",
                    "Tag differences between source and targets seen but not yet copied"
                ),
                rule
            )?),
            tags_selected: reg!(IntGaugeVec::new(
                Opts::new(
                    "regkeeper_rule_tags_selected",
                    "Source tags the rule's filters selected in its last run (0 of N: the filters match nothing)"
                ),
                rule
            )?),
            runs: reg!(IntCounterVec::new(
                Opts::new("regkeeper_rule_runs_total", "Rule runs by result"),
                &["rule", "result"]
            )?),
            runs_skipped: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_rule_runs_skipped_total",
                    "Scheduled fires skipped because the previous run of the rule was still going"
                ),
                rule
            )?),
            errors: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_rule_errors_total",
                    "Failures in rule runs by class (authentication, not_found, rate_limited, ...), each counted once per run"
                ),
                &["rule", "class"]
            )?),
            run_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "regkeeper_rule_run_duration_seconds",
                    "Duration of rule runs"
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0
                ]),
                rule
            )?),
            bytes: reg!(IntCounterVec::new(
                Opts::new("regkeeper_bytes_copied_total", "Blob bytes sent to targets"),
                rule
            )?),
            blobs: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_blobs_total",
                    "Blobs by what was done: copied, mounted, skipped (present), resumed"
                ),
                &["rule", "action"]
            )?),
            manifests: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_manifests_pushed_total",
                    "Manifests pushed to targets"
                ),
                rule
            )?),
            referrers: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_referrers_copied_total",
                    "Referrers (signatures, SBOMs, attestations) found by subject and pushed by digest to a target"
                ),
                rule
            )?),
            refused: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_rule_images_refused_total",
                    "Images not copied because their signatures did not verify ([rule.verify]), by reason; one per source image and run"
                ),
                &["rule", "reason"]
            )?),
            retention_deleted: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_retention_deleted_total",
                    "Manifests deleted by retention"
                ),
                rule
            )?),
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_registry_requests_total",
                    "Requests to registries by method and status code (0 = no response)"
                ),
                &["registry", "method", "code"]
            )?),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "regkeeper_registry_request_duration_seconds",
                    "Time to the response headers of registry requests"
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0
                ]),
                &["registry", "method"]
            )?),
            throttled: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_registry_throttled_total",
                    "429 Too Many Requests responses"
                ),
                &["registry"]
            )?),
            rate_limit_remaining: reg!(IntGaugeVec::new(
                Opts::new(
                    "regkeeper_registry_rate_limit_remaining",
                    "The last RateLimit-Remaining value the registry sent"
                ),
                &["registry"]
            )?),
            reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "regkeeper_config_reloads_total",
                    "SIGHUP reloads by result: success, or failed (invalid file; the old rules keep running)"
                ),
                &["result"]
            )?),
            concurrency: reg!(IntGaugeVec::new(
                Opts::new(
                    "regkeeper_registry_concurrency",
                    "The adaptive request window to the registry now"
                ),
                &["registry"]
            )?),
            registry,
            lag_basis: Mutex::new(HashMap::new()),
            transports: Mutex::new(None),
        };
        let build = IntGaugeVec::new(
            Opts::new("regkeeper_build_info", "Build information; always 1"),
            &["version"],
        )?;
        m.registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["success", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        Ok(Arc::new(m))
    }

    /// Registers another module's collector (the event counters of
    /// `daemon::events`), so one `/metrics` exposes it.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), MetricsError> {
        self.registry.register(c)?;
        Ok(())
    }

    /// `regkeeper_shard_info{shard, shards} 1`: which share this instance runs.
    pub fn shard_info(&self, shard: crate::shard::Shard) -> Result<(), MetricsError> {
        let g = IntGaugeVec::new(
            Opts::new("regkeeper_shard_info", "This instance's shard; always 1"),
            &["shard", "shards"],
        )?;
        self.registry.register(Box::new(g.clone()))?;
        let (k, n) = (shard.index.to_string(), shard.count.to_string());
        g.with_label_values(&[k.as_str(), n.as_str()]).set(1);
        Ok(())
    }

    /// The request observer to install on the transports.
    pub fn observer(self: &Arc<Self>) -> crate::transport::remote::Observer {
        let m = self.clone();
        Arc::new(move |e: &RequestEvent<'_>| m.observe_request(e))
    }

    /// Reads `RateLimit-Remaining` from these transports at scrape time.
    pub fn watch_transports(&self, t: Arc<Transports>) {
        *self.transports.lock().expect("metrics poisoned") = Some(t);
    }

    fn observe_request(&self, e: &RequestEvent<'_>) {
        let code = e.status.unwrap_or(0).to_string();
        self.requests
            .with_label_values(&[e.registry, e.method, &code])
            .inc();
        self.request_duration
            .with_label_values(&[e.registry, e.method])
            .observe(e.duration.as_secs_f64());
        if e.status == Some(429) {
            self.throttled.with_label_values(&[e.registry]).inc();
        }
    }

    /// Makes a rule known (all its series appear at 0) and sets where its
    /// lag counts from.
    pub fn init_rule(
        &self,
        rule: &str,
        lag_basis: f64,
        last_success: Option<f64>,
        last_run: Option<f64>,
        pending: i64,
    ) {
        self.lag_basis
            .lock()
            .expect("metrics poisoned")
            .insert(rule.to_string(), lag_basis);
        if let Some(t) = last_success {
            self.last_success.with_label_values(&[rule]).set(t);
        }
        if let Some(t) = last_run {
            self.last_run.with_label_values(&[rule]).set(t);
        }
        self.tags_pending.with_label_values(&[rule]).set(pending);
        for result in ["success", "partial", "failed"] {
            self.runs.with_label_values(&[rule, result]);
        }
        for action in ["copied", "mounted", "skipped", "resumed"] {
            self.blobs.with_label_values(&[rule, action]);
        }
        for class in ErrorClass::ALL {
            self.errors.with_label_values(&[rule, class.as_str()]);
        }
        for reason in crate::verify::Refusal::ALL {
            self.refused.with_label_values(&[rule, reason.as_str()]);
        }
        self.bytes.with_label_values(&[rule]);
        self.run_duration.with_label_values(&[rule]);
        self.manifests.with_label_values(&[rule]);
        self.referrers.with_label_values(&[rule]);
        self.retention_deleted.with_label_values(&[rule]);
        self.runs_skipped.with_label_values(&[rule]);
    }

    /// Makes a registry host known: its throttling counter exists at 0 from
    /// start-up, so dashboards show 0 rather than "No data" before a 429.
    pub fn init_registry(&self, host: &str) {
        self.throttled.with_label_values(&[host]);
    }

    /// Counts a SIGHUP reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failed" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Drops every series of a rule that was removed from the config.
    pub fn remove_rule(&self, rule: &str) {
        self.lag_basis
            .lock()
            .expect("metrics poisoned")
            .remove(rule);
        let _ = self.lag.remove_label_values(&[rule]);
        let _ = self.last_success.remove_label_values(&[rule]);
        let _ = self.last_run.remove_label_values(&[rule]);
        let _ = self.tags_pending.remove_label_values(&[rule]);
        let _ = self.tags_selected.remove_label_values(&[rule]);
        let _ = self.run_duration.remove_label_values(&[rule]);
        let _ = self.bytes.remove_label_values(&[rule]);
        let _ = self.manifests.remove_label_values(&[rule]);
        let _ = self.referrers.remove_label_values(&[rule]);
        let _ = self.retention_deleted.remove_label_values(&[rule]);
        let _ = self.runs_skipped.remove_label_values(&[rule]);
        for result in ["success", "partial", "failed"] {
            let _ = self.runs.remove_label_values(&[rule, result]);
        }
        for action in ["copied", "mounted", "skipped", "resumed"] {
            let _ = self.blobs.remove_label_values(&[rule, action]);
        }
        for class in ErrorClass::ALL {
            let _ = self.errors.remove_label_values(&[rule, class.as_str()]);
        }
        for reason in crate::verify::Refusal::ALL {
            let _ = self.refused.remove_label_values(&[rule, reason.as_str()]);
        }
    }

    pub fn run_started(&self, rule: &str, started: f64) {
        self.last_run.with_label_values(&[rule]).set(started);
    }

    pub fn run_skipped(&self, rule: &str) {
        self.runs_skipped.with_label_values(&[rule]).inc();
    }

    /// Accounts a finished run that started at `started` (unix seconds).
    /// Only a run of the `whole` rule sets what speaks for every repository
    /// (tags selected, last success, the lag basis): an event pass over one
    /// repository says nothing of the others.
    /// A run of a rule that is no longer configured (removed by a reload
    /// while it ran) is not accounted: its series are gone and stay gone.
    pub fn run_finished(&self, report: &RuleReport, started: f64, pending: i64, whole: bool) {
        let rule = report.rule.as_str();
        if !self
            .lag_basis
            .lock()
            .expect("metrics poisoned")
            .contains_key(rule)
        {
            return;
        }
        self.runs
            .with_label_values(&[rule, report.result.as_str()])
            .inc();
        self.run_duration
            .with_label_values(&[rule])
            .observe(report.duration_seconds);
        let t = &report.totals;
        self.bytes
            .with_label_values(&[rule])
            .inc_by(t.bytes_written);
        for (action, n) in [
            ("copied", t.blobs_copied),
            ("mounted", t.blobs_mounted),
            ("skipped", t.blobs_skipped),
            ("resumed", t.blobs_resumed),
        ] {
            self.blobs.with_label_values(&[rule, action]).inc_by(n);
        }
        self.manifests
            .with_label_values(&[rule])
            .inc_by(t.manifests_pushed);
        self.referrers
            .with_label_values(&[rule])
            .inc_by(report.referrers_copied as u64);
        self.tags_pending.with_label_values(&[rule]).set(pending);
        self.retention_deleted(rule, report.retention_deleted as u64);
        // One per source image, however many targets it was refused for.
        let refused: std::collections::BTreeSet<(&str, &str, &str)> = report
            .refusals()
            .map(|(i, reason, _)| (i.source.as_str(), i.tag.as_str(), reason.as_str()))
            .collect();
        for (_, _, reason) in refused {
            self.refused.with_label_values(&[rule, reason]).inc();
        }
        for failure in report.failures() {
            self.errors
                .with_label_values(&[rule, failure.class.as_str()])
                .inc();
        }
        if !whole {
            return;
        }
        self.tags_selected
            .with_label_values(&[rule])
            .set(report.tags_selected as i64);
        if report.result == crate::engine::RunResult::Success {
            self.last_success.with_label_values(&[rule]).set(started);
            self.lag_basis
                .lock()
                .expect("metrics poisoned")
                .insert(rule.to_string(), started);
        }
    }

    /// For the retention feature: manifests deleted by a rule.
    pub fn retention_deleted(&self, rule: &str, n: u64) {
        self.retention_deleted.with_label_values(&[rule]).inc_by(n);
    }

    /// The current lag of a rule, in seconds.
    pub fn lag_seconds(&self, rule: &str) -> Option<f64> {
        let basis = *self.lag_basis.lock().expect("metrics poisoned").get(rule)?;
        Some(lag_seconds(now(), basis))
    }

    /// The text exposition, with lag and rate-limit gauges brought up to date.
    pub fn render(&self) -> Result<String, MetricsError> {
        let t = now();
        for (rule, basis) in self.lag_basis.lock().expect("metrics poisoned").iter() {
            self.lag
                .with_label_values(&[rule.as_str()])
                .set(lag_seconds(t, *basis));
        }
        if let Some(tr) = self.transports.lock().expect("metrics poisoned").as_ref() {
            for (host, stats) in tr.registry_stats() {
                self.concurrency
                    .with_label_values(&[host.as_str()])
                    .set(stats.concurrency.min(i64::MAX as u64) as i64);
                if let Some(r) = stats.rate_limit_remaining {
                    self.rate_limit_remaining
                        .with_label_values(&[host.as_str()])
                        .set(r.min(i64::MAX as u64) as i64);
                }
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exposed() {
        let m = Metrics::new().unwrap();
        m.init_rule("r", now() - 30.0, Some(now() - 30.0), Some(now() - 10.0), 2);
        m.observe_request(&RequestEvent {
            registry: "127.0.0.1:5000",
            method: "GET",
            status: Some(429),
            duration: std::time::Duration::from_millis(3),
        });
        let text = m.render().unwrap();
        for name in [
            "regkeeper_rule_sync_lag_seconds{rule=\"r\"}",
            "regkeeper_rule_tags_pending{rule=\"r\"} 2",
            "regkeeper_rule_runs_total{result=\"success\",rule=\"r\"} 0",
            "regkeeper_bytes_copied_total{rule=\"r\"} 0",
            "regkeeper_blobs_total{action=\"resumed\",rule=\"r\"} 0",
            "regkeeper_manifests_pushed_total{rule=\"r\"} 0",
            "regkeeper_referrers_copied_total{rule=\"r\"} 0",
            "regkeeper_retention_deleted_total{rule=\"r\"} 0",
            "regkeeper_rule_errors_total{class=\"authentication\",rule=\"r\"} 0",
            "regkeeper_rule_errors_total{class=\"other\",rule=\"r\"} 0",
            "regkeeper_registry_requests_total{code=\"429\",method=\"GET\",registry=\"127.0.0.1:5000\"} 1",
            "regkeeper_registry_request_duration_seconds_bucket",
            "regkeeper_registry_throttled_total{registry=\"127.0.0.1:5000\"} 1",
            "regkeeper_build_info{version=",
            "regkeeper_config_reloads_total{result=\"failed\"} 0",
            "# TYPE regkeeper_rule_run_duration_seconds histogram",
            "# TYPE regkeeper_rule_last_success_timestamp_seconds gauge",
            "# TYPE regkeeper_rule_last_run_timestamp_seconds gauge",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        assert!(m.lag_seconds("r").unwrap() >= 30.0);
        m.init_registry("ghcr.io");
        m.reload(false);
        let text = m.render().unwrap();
        assert!(text.contains("regkeeper_registry_throttled_total{registry=\"ghcr.io\"} 0"));
        assert!(text.contains("regkeeper_config_reloads_total{result=\"failed\"} 1"));
        m.shard_info(crate::shard::Shard { index: 1, count: 3 })
            .unwrap();
        let text = m.render().unwrap();
        assert!(text.contains("regkeeper_shard_info{shard=\"1\",shards=\"3\"} 1"));
        m.remove_rule("r");
        // a run that was in flight when its rule was removed finishes later
        let late = RuleReport::new("r", false);
        m.run_finished(&late, now(), 0, true);
        assert!(
            !m.render().unwrap().contains("rule=\"r\""),
            "a removed rule's series came back"
        );
        assert!(!m.render().unwrap().contains("rule=\"r\""));
    }

    #[test]
    fn only_a_whole_run_puts_the_rule_in_step() {
        let m = Metrics::new().unwrap();
        let basis = now() - 600.0;
        m.init_rule("r", basis, None, None, 0);
        let mut pass = RuleReport::new("r", false);
        pass.tags_selected = 1;
        // A successful event pass over one repository: counted, but the
        // rule's lag still counts from the basis.
        m.run_finished(&pass, now(), 0, false);
        assert!(m.lag_seconds("r").unwrap() >= 600.0);
        let text = m.render().unwrap();
        assert!(text.contains("regkeeper_rule_runs_total{result=\"success\",rule=\"r\"} 1"));
        assert!(!text.contains("regkeeper_rule_last_success_timestamp_seconds{rule=\"r\"}"));
        assert!(!text.contains("regkeeper_rule_tags_selected{rule=\"r\"} 1"));
        // A whole run resets it.
        m.run_finished(&pass, now(), 0, true);
        assert!(m.lag_seconds("r").unwrap() < 60.0);
        assert!(
            m.render()
                .unwrap()
                .contains("regkeeper_rule_tags_selected{rule=\"r\"} 1")
        );
    }

    #[test]
    fn each_failure_of_a_run_counts_once_under_its_class() {
        use crate::engine::{Failure, RunError};
        use crate::transport::ErrorClass;
        let m = Metrics::new().unwrap();
        m.init_rule("r", now(), None, None, 0);
        let mut report = RuleReport::new("r", false);
        let auth = Failure::new(ErrorClass::Authentication, "401");
        report
            .errors
            .push(RunError::new("src", "listing tags", auth));
        let nf = Failure::new(ErrorClass::NotFound, "gone");
        report
            .errors
            .push(RunError::new("src/b", "listing tags", nf));
        m.run_finished(&report, now(), 0, true);
        let text = m.render().unwrap();
        for line in [
            "regkeeper_rule_errors_total{class=\"authentication\",rule=\"r\"} 1",
            "regkeeper_rule_errors_total{class=\"not_found\",rule=\"r\"} 1",
            "regkeeper_rule_errors_total{class=\"timeout\",rule=\"r\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
