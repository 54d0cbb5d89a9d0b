//! The accept loop of `daemon.listen`: bounded time per connection and a cap
//! on open connections that slow or idle clients cannot use to lock out
//! `/healthz`, `/metrics` or the webhooks.
//!
//! - Headers: a connection that has not sent a complete request head within
//!   `header_timeout` of being ready for one (just opened, or after its last
//!   response on keep-alive) is closed, however slowly bytes keep arriving
//!   (hyper's `header_read_timeout`). The same timer is the keep-alive idle
//!   timeout.
//! - Requests: from complete headers to the response, at most
//!   `request_timeout` (a slow body included); then 408 and the connection
//!   closes.
//! - Idle: a connection with no request in flight for `idle_timeout`
//!   (e.g. one that reads its response very slowly) is closed.
//! - Cap: at most `max_connections` open. At the cap, a new connection first
//!   evicts the connection that has waited longest without a request in
//!   flight (slow headers, idle keep-alive); a connection whose request is
//!   being handled is never evicted. Only when every connection is busy is
//!   the new one closed at once. An attacker's slow connections are thus
//!   always the first to go, and a probe that sends its request at once
//!   gets in and is answered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The listener's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub(crate) header_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Bounds {
    /// 256 connections stay far below systemd's default of 1,024 file
    /// descriptors, with room for the registry clients and the database.
    pub(crate) const DEFAULT: Bounds = Bounds {
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 256,
    };
}

/// One open connection, as the cap sees it.
struct Conn {
    in_flight: AtomicUsize,
    /// Milliseconds since `Conns::epoch` when it last had nothing in flight.
    idle_since: AtomicU64,
    evict: CancellationToken,
}

/// Every open connection.
struct Conns {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// When the cap was last reported (at most once a minute).
    warned: Mutex<Option<Instant>>,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, evicting one at the cap; `None` when
    /// every open connection is busy (the new one is refused).
    fn admit(&self, cap: usize) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open.lock().expect("connections poisoned");
        if open.len() >= cap {
            let victim = longest_idle(open.iter().map(|(id, c)| {
                (
                    *id,
                    c.in_flight.load(Ordering::SeqCst),
                    c.idle_since.load(Ordering::SeqCst),
                )
            }));
            self.report_cap(cap, victim.is_some());
            let gone = open.remove(&victim?)?;
            gone.evict.cancel();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            evict: CancellationToken::new(),
        });
        open.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("connections poisoned").remove(&id);
    }

    fn report_cap(&self, cap: usize, evicting: bool) {
        let mut warned = self.warned.lock().expect("warned poisoned");
        if warned.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(
            max_connections = cap,
            evicting,
            "the listener is at its connection cap: closing the connections idle longest \
             (slow or idle clients); if these are legitimate, fewer clients should keep \
             connections open"
        );
    }
}

/// The connection that has waited longest with nothing in flight, from
/// (id, requests in flight, idle since).
fn longest_idle(conns: impl Iterator<Item = (u64, usize, u64)>) -> Option<u64> {
    conns
        .filter(|(_, in_flight, _)| *in_flight == 0)
        .min_by_key(|(id, _, since)| (*since, *id))
        .map(|(id, _, _)| id)
}

/// Marks a request in flight on its connection until dropped.
struct Busy {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Busy {
    fn new(conn: Arc<Conn>, conns: Arc<Conns>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy { conn, conns }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.conns.now_ms(), Ordering::SeqCst);
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The router, with each request marked busy and given its deadline.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    request_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.conn.clone(), self.conns.clone());
        let limit = self.request_timeout;
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(%method, %path, limit = ?limit, "request not complete in time: 408");
                    Ok(timed_out(limit))
                }
            };
            drop(busy);
            out
        })
    }
}

fn timed_out(limit: Duration) -> Response<Body> {
    let mut r = Response::new(Body::from(format!(
        "request not complete within {}\n",
        humantime::format_duration(limit)
    )));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// Serves `app` on `listener` within `bounds` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let conns = Arc::new(Conns {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
        warned: Mutex::new(None),
    });
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to come back
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Some((id, conn)) = conns.admit(bounds.max_connections) {
            let svc = Tracked {
                inner: TowerToHyperService::new(app.clone()),
                conn: conn.clone(),
                conns: conns.clone(),
                request_timeout: bounds.request_timeout,
            };
            let (conns, stop) = (conns.clone(), stop.clone());
            tokio::spawn(async move {
                serve_conn(stream, svc, &conn, &conns, bounds, stop).await;
                conns.remove(id);
            });
        }
        // Let the new connection read its request before the next accept,
        // so a flood of new connections cannot evict it before it is busy.
        tokio::task::yield_now().await;
    }
}

async fn serve_conn(
    stream: TcpStream,
    svc: Tracked,
    conn: &Conn,
    conns: &Conns,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = conn.evict.cancelled() => tracing::debug!("connection evicted at the cap"),
        _ = idle_for(conn, conns, bounds.idle_timeout) => {
            tracing::debug!("connection closed: idle too long");
        }
        _ = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
        }
    }
}

/// Resolves once `conn` has had nothing in flight for `limit`.
async fn idle_for(conn: &Conn, conns: &Conns, limit: Duration) {
    loop {
        let waited = if conn.in_flight.load(Ordering::SeqCst) == 0 {
            let since = conn.idle_since.load(Ordering::SeqCst);
            Duration::from_millis(conns.now_ms().saturating_sub(since))
        } else {
            Duration::ZERO
        };
        if waited >= limit {
            return;
        }
        tokio::time::sleep(limit - waited).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_longest_idle_and_never_a_busy_one() {
        // (id, in flight, idle since)
        let conns = [(1, 0, 50), (2, 1, 0), (3, 0, 10), (4, 0, 10)];
        assert_eq!(longest_idle(conns.into_iter()), Some(3));
        assert_eq!(longest_idle([(7, 2, 0), (8, 1, 0)].into_iter()), None);
        assert_eq!(longest_idle(std::iter::empty()), None);
    }

    #[test]
    fn admit_evicts_at_the_cap_and_refuses_when_all_are_busy() {
        let conns = Conns {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            warned: Mutex::new(None),
        };
        let (a, ca) = conns.admit(2).unwrap();
        let (_b, cb) = conns.admit(2).unwrap();
        // the third evicts the first (idle longest, ties by age)
        let (_c, cc) = conns.admit(2).unwrap();
        assert!(ca.evict.is_cancelled());
        assert!(!conns.open.lock().unwrap().contains_key(&a));
        // both open ones busy: the next is refused and nothing is evicted
        cb.in_flight.store(1, Ordering::SeqCst);
        cc.in_flight.store(1, Ordering::SeqCst);
        assert!(conns.admit(2).is_none());
        assert!(!cb.evict.is_cancelled() && !cc.evict.is_cancelled());
    }
}
