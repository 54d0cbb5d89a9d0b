//! Host-wide limits of one registry: a request rate (governor), pauses the
//! registry asked for (`Retry-After` on 429/503; `RateLimit-Remaining` at or
//! below `ratelimit_min` pauses manifest GETs only, as Docker Hub does not
//! count HEADs), and an adaptive concurrency window (halved on a 429, one
//! more after each window's worth of successes, between 1 and
//! `max_concurrent`).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::sync::Notify;

use super::wire;

/// A pause longer than this is not waited out inside the run: the request
/// fails with a budget error, the image is retried by the next run.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);
/// A `RateLimit-Remaining` without a window pauses this long.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

pub(crate) struct Limits {
    rate: Option<DefaultDirectRateLimiter>,
    ratelimit_min: u64,
    /// Until when every request waits (Retry-After).
    paused: Mutex<Option<Instant>>,
    /// Until when manifest GETs wait (RateLimit-Remaining).
    manifests_paused: Mutex<Option<Instant>>,
    window: Window,
}

/// Why a request may not be sent now: the pause runs past [`MAX_WAIT`].
pub(crate) struct OverBudget {
    pub wait: Duration,
    pub manifests_only: bool,
}

impl Limits {
    pub(crate) fn new(max_concurrent: usize, rps: Option<f64>, ratelimit_min: u64) -> Limits {
        Limits {
            rate: rps.and_then(quota).map(RateLimiter::direct),
            ratelimit_min,
            paused: Mutex::new(None),
            manifests_paused: Mutex::new(None),
            window: Window::new(max_concurrent.max(1)),
        }
    }

    /// The current concurrency window (for the gauge).
    pub(crate) fn concurrency(&self) -> usize {
        self.window.state.lock().expect("window poisoned").limit
    }

    /// Waits for a slot in the window, the rate, and the end of any pause;
    /// the pause is checked last, right before the request leaves, so a
    /// pause announced while this one waited is honoured too.
    pub(crate) async fn admit(&self, manifest_get: bool) -> Result<Permit<'_>, OverBudget> {
        let permit = self.window.acquire().await;
        if let Some(r) = &self.rate {
            r.until_ready().await;
        }
        loop {
            let until = self.pause_end(manifest_get);
            let now = Instant::now();
            let Some((until, manifests_only)) = until.filter(|(u, _)| *u > now) else {
                return Ok(permit);
            };
            let wait = until - now;
            if wait > MAX_WAIT {
                return Err(OverBudget {
                    wait,
                    manifests_only,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn pause_end(&self, manifest_get: bool) -> Option<(Instant, bool)> {
        let all = *self.paused.lock().expect("pause poisoned");
        let manifests = if manifest_get {
            *self.manifests_paused.lock().expect("pause poisoned")
        } else {
            None
        };
        match (all, manifests) {
            (Some(a), Some(m)) if m > a => Some((m, true)),
            (Some(a), _) => Some((a, false)),
            (None, Some(m)) => Some((m, true)),
            (None, None) => None,
        }
    }

    /// Learns from a response: throttling, pauses, the remaining budget.
    pub(crate) fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let after = wire::retry_after(header("retry-after"));
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.window.shrink();
        } else if status.is_success() || status.is_redirection() || status == StatusCode::NOT_FOUND
        {
            self.window.grow();
        }
        if matches!(status.as_u16(), 429 | 503) {
            if let Some(d) = after {
                extend(&self.paused, Instant::now() + d);
                tracing::info!(
                    status = status.as_u16(),
                    seconds = d.as_secs(),
                    "registry asked to pause; every request to it waits"
                );
            }
        }
        if let Some((remaining, window)) = header("ratelimit-remaining").and_then(wire::rate_limit)
        {
            let mut m = self.manifests_paused.lock().expect("pause poisoned");
            if remaining <= self.ratelimit_min {
                let until = Instant::now() + window.unwrap_or(DEFAULT_WINDOW);
                if m.is_none_or(|t| t < until) {
                    tracing::info!(
                        remaining,
                        min = self.ratelimit_min,
                        "rate-limit budget low; pausing manifest GETs"
                    );
                    *m = Some(until);
                }
            } else {
                *m = None;
            }
        }
    }
}

fn extend(slot: &Mutex<Option<Instant>>, until: Instant) {
    let mut p = slot.lock().expect("pause poisoned");
    if p.is_none_or(|t| t < until) {
        *p = Some(until);
    }
}

fn quota(rps: f64) -> Option<Quota> {
    if !(rps.is_finite() && rps > 0.0) {
        return None;
    }
    // a burst of one second's worth, as a registry's own limiter allows
    let burst = NonZeroU32::new(rps.ceil().clamp(1.0, u32::MAX as f64) as u32)?;
    Quota::with_period(Duration::from_secs_f64(1.0 / rps)).map(|q| q.allow_burst(burst))
}

/// The adaptive concurrency window.
struct Window {
    max: usize,
    state: Mutex<WindowState>,
    freed: Notify,
}

struct WindowState {
    limit: usize,
    in_flight: usize,
    successes: usize,
}

/// A place in the window, held until the response head arrived.
pub(crate) struct Permit<'a>(&'a Window);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("window poisoned").in_flight -= 1;
        self.0.freed.notify_waiters();
    }
}

impl Window {
    fn new(max: usize) -> Window {
        Window {
            max,
            state: Mutex::new(WindowState {
                limit: max,
                in_flight: 0,
                successes: 0,
            }),
            freed: Notify::new(),
        }
    }

    async fn acquire(&self) -> Permit<'_> {
        loop {
            // registered before the check, so a release in between is not missed
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state.lock().expect("window poisoned");
                if st.in_flight < st.limit {
                    st.in_flight += 1;
                    return Permit(self);
                }
            }
            freed.await;
        }
    }

    fn shrink(&self) {
        let mut st = self.state.lock().expect("window poisoned");
        st.limit = (st.limit / 2).max(1);
        st.successes = 0;
    }

    fn grow(&self) {
        let mut st = self.state.lock().expect("window poisoned");
        st.successes += 1;
        if st.successes >= st.limit && st.limit < self.max {
            st.limit += 1;
            st.successes = 0;
            drop(st);
            self.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn window_halves_on_429_and_grows_back() {
        let l = Limits::new(8, None, 0);
        l.observe(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        assert_eq!(l.concurrency(), 4);
        l.observe(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        l.observe(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        l.observe(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        assert_eq!(l.concurrency(), 1);
        l.observe(StatusCode::OK, &HeaderMap::new());
        assert_eq!(l.concurrency(), 2);
        for _ in 0..100 {
            l.observe(StatusCode::OK, &HeaderMap::new());
        }
        assert_eq!(l.concurrency(), 8);
    }

    #[tokio::test]
    async fn retry_after_pauses_everything_and_budget_only_manifest_gets() {
        let l = Limits::new(2, None, 5);
        l.observe(
            StatusCode::OK,
            &headers(&[("ratelimit-remaining", "5;w=3600")]),
        );
        assert!(l.admit(false).await.is_ok(), "HEADs go on");
        let over = l.admit(true).await.err().expect("manifest GETs wait");
        assert!(over.manifests_only && over.wait > MAX_WAIT);
        l.observe(
            StatusCode::OK,
            &headers(&[("ratelimit-remaining", "50;w=3600")]),
        );
        assert!(
            l.admit(true).await.is_ok(),
            "a refilled budget lifts the pause"
        );

        l.observe(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "1")]),
        );
        let t = Instant::now();
        drop(l.admit(false).await.ok().unwrap());
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn window_blocks_beyond_its_limit() {
        let l = Limits::new(1, None, 0);
        let p = l.admit(false).await.ok().unwrap();
        let second = tokio::time::timeout(Duration::from_millis(50), l.admit(false)).await;
        assert!(second.is_err(), "a second request waits for the first");
        drop(p);
        assert!(l.admit(false).await.is_ok());
    }
}
