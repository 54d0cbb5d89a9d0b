//! An HTTP-level fault proxy in front of one registry (plain HTTP), on its
//! own thread and runtime. Unlike the TCP proxy (proxy.rs) it understands
//! requests, so faults can aim at one kind of request:
//!
//! - every n-th request answered with a status (429, 503) and `Retry-After`;
//! - every k-th blob GET's body cut (connection aborted) after N bytes, or
//!   stalled there (no byte moves until the client gives up);
//! - every k-th upload (PATCH, PUT with a body) cut after N request bytes,
//!   without forwarding it (the registry's session stays as it was);
//! - a token-bucket limiter of R requests/s (beyond it: 429, Retry-After: 1);
//! - a Docker Hub style budget of manifest GETs (`RateLimit-Remaining: N;w=S`
//!   on every manifest response, 429 once it is spent; HEADs are free).
//!
//! Every request is recorded with its arrival time, status and Retry-After.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every n-th request (counting all of them) gets `status`.
#[derive(Clone, Debug)]
pub struct StatusFault {
    pub every: u64,
    pub status: u16,
    pub retry_after: Option<u64>,
}

/// Every k-th request of a kind is cut (or stalled) after `after` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    pub every: u64,
    pub after: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub status: Option<StatusFault>,
    pub cut_blob_gets: Option<Cut>,
    pub stall_blob_gets: Option<Cut>,
    pub cut_uploads: Option<Cut>,
    /// Every k-th upload stops being read after N bytes (the server hangs).
    pub stall_uploads: Option<Cut>,
    /// Requests per second (burst of one second's worth).
    pub limit_rps: Option<f64>,
    /// (manifest GETs left, window seconds announced).
    pub manifest_budget: Option<(u64, u64)>,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Record {
    /// Arrival, since the proxy started.
    pub at: Duration,
    pub method: String,
    pub path: String,
    /// 0: the proxy cut the connection.
    pub status: u16,
    pub retry_after: Option<u64>,
    /// The request's `Range` header.
    pub range: Option<String>,
}

struct Counters {
    requests: u64,
    blob_gets: u64,
    uploads: u64,
    tokens: f64,
    refilled: Instant,
}

struct State {
    upstream: String,
    me: Mutex<String>,
    faults: Mutex<Faults>,
    counters: Mutex<Counters>,
    records: Mutex<Vec<Record>>,
    started: Instant,
    client: reqwest::Client,
}

pub struct HttpFaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl HttpFaultProxy {
    /// A proxy on 127.0.0.1 (ephemeral port) in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> HttpFaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            me: Mutex::new(format!("http://{addr}")),
            faults: Mutex::new(Faults::default()),
            counters: Mutex::new(Counters {
                requests: 0,
                blob_gets: 0,
                uploads: 0,
                tokens: 0.0,
                refilled: Instant::now(),
            }),
            records: Mutex::new(Vec::new()),
            started: Instant::now(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
        });
        let shutdown = CancellationToken::new();
        let (st, sd) = (state.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("http-fault-proxy".into())
            .spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime")
                    .block_on(accept_loop(listener, st, sd));
            })
            .expect("spawn proxy thread");
        HttpFaultProxy {
            addr,
            state,
            shutdown,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The `[registries."127.0.0.1:PORT"]` section regkeeper needs, plus `extra` lines.
    pub fn registry_toml(&self, extra: &str) -> String {
        format!(
            "[registries.\"{}\"]\nplain_http = true\n{extra}\n",
            self.host()
        )
    }

    /// Replaces the faults (counters restart; the limiter starts full).
    pub fn set_faults(&self, f: Faults) {
        let mut c = self.state.counters.lock().unwrap();
        c.requests = 0;
        c.blob_gets = 0;
        c.uploads = 0;
        c.tokens = f.limit_rps.unwrap_or(0.0).ceil();
        c.refilled = Instant::now();
        *self.state.faults.lock().unwrap() = f;
    }

    pub fn records(&self) -> Vec<Record> {
        self.state.records.lock().unwrap().clone()
    }

    pub fn clear_records(&self) {
        self.state.records.lock().unwrap().clear();
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests that arrived inside a window a 429/503 announced with
/// `Retry-After`, more than `grace` after it was sent (requests already on
/// their way when it was sent are not the client's fault).
pub fn inside_announced_windows(records: &[Record], grace: Duration) -> Vec<Record> {
    let windows: Vec<(Duration, Duration)> = records
        .iter()
        .filter_map(|r| {
            let s = r.retry_after?;
            Some((r.at + grace, r.at + Duration::from_secs(s)))
        })
        .collect();
    records
        .iter()
        .filter(|r| windows.iter().any(|(from, to)| r.at > *from && r.at < *to))
        .cloned()
        .collect()
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<State>, stop: CancellationToken) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((tcp, _)) = conn else { continue };
        let st = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

fn is_blob_get(method: &str, path: &str) -> bool {
    method == "GET" && path.contains("/blobs/sha256:")
}

fn is_manifest(path: &str) -> bool {
    path.contains("/manifests/")
}

/// What the fault settings decide for one request before it is forwarded.
enum Decision {
    Answer(u16, Option<u64>),
    /// The manifest budget is spent: 429 with `RateLimit-Remaining: 0;w=S`.
    Spent(u64),
    CutUpload(u64, bool),
    Forward {
        body_cut: Option<Cut>,
        stall: bool,
        budget: Option<(u64, u64)>,
    },
}

fn decide(state: &State, method: &str, path: &str, has_body: bool) -> Decision {
    let f = state.faults.lock().unwrap().clone();
    let mut c = state.counters.lock().unwrap();
    c.requests += 1;
    if let Some(rps) = f.limit_rps {
        let now = Instant::now();
        let cap = rps.ceil();
        c.tokens = (c.tokens + (now - c.refilled).as_secs_f64() * rps).min(cap);
        c.refilled = now;
        if c.tokens < 1.0 {
            return Decision::Answer(429, Some(1));
        }
        c.tokens -= 1.0;
    }
    if let Some(s) = &f.status {
        if c.requests % s.every == 0 {
            return Decision::Answer(s.status, s.retry_after);
        }
    }
    let upload = has_body && matches!(method, "PATCH" | "PUT") && path.contains("/blobs/uploads/");
    if upload {
        c.uploads += 1;
        if let Some(cut) = f.cut_uploads.filter(|k| c.uploads % k.every == 0) {
            return Decision::CutUpload(cut.after, false);
        }
        if let Some(cut) = f.stall_uploads.filter(|k| c.uploads % k.every == 0) {
            return Decision::CutUpload(cut.after, true);
        }
    }
    // cut or stall blob bodies: decided once the length is known
    let (body_cut, stall) = match (
        is_blob_get(method, path),
        f.cut_blob_gets,
        f.stall_blob_gets,
    ) {
        (false, _, _) => (None, false),
        (true, Some(k), _) => (Some(k), false),
        (true, None, Some(k)) => (Some(k), true),
        (true, None, None) => (None, false),
    };
    let mut budget = None;
    if is_manifest(path) {
        drop(c);
        let mut faults = state.faults.lock().unwrap();
        if let Some((left, window)) = faults.manifest_budget.as_mut() {
            if method == "GET" {
                if *left == 0 {
                    return Decision::Spent(*window);
                }
                *left -= 1;
            }
            budget = Some((*left, *window));
        }
    }
    Decision::Forward {
        body_cut,
        stall,
        budget,
    }
}

/// What a record says about the request itself.
struct Seen {
    at: Duration,
    method: String,
    path: String,
    range: Option<String>,
}

fn record(state: &State, seen: &Seen, status: u16, ra: Option<u64>) {
    state.records.lock().unwrap().push(Record {
        at: seen.at,
        method: seen.method.clone(),
        path: seen.path.clone(),
        status,
        retry_after: ra,
        range: seen.range.clone(),
    });
}

async fn handle(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, BoxError> {
    let seen = Seen {
        at: state.started.elapsed(),
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        range: req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let (method, path) = (seen.method.clone(), seen.path.clone());
    let has_body = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || req.headers().contains_key("transfer-encoding");
    match decide(&state, &method, &path, has_body) {
        Decision::Answer(status, ra) => {
            record(&state, &seen, status, ra);
            let mut b = Response::builder().status(status);
            if let Some(s) = ra {
                b = b.header("retry-after", s.to_string());
            }
            Ok(b.body(Body::from(
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"fault proxy"}]}"#,
            ))?)
        }
        Decision::Spent(window) => {
            record(&state, &seen, 429, None);
            Ok(Response::builder()
                .status(429)
                .header("ratelimit-remaining", format!("0;w={window}"))
                .body(Body::from(
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}"#,
                ))?)
        }
        Decision::CutUpload(after, stall) => {
            record(&state, &seen, 0, None);
            let mut body = Body::new(req.into_body()).into_data_stream();
            let mut seen = 0u64;
            while seen < after {
                match body.next().await {
                    Some(Ok(b)) => seen += b.len() as u64,
                    _ => break,
                }
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Err("fault proxy: upload cut".into())
        }
        Decision::Forward {
            body_cut,
            stall,
            budget,
        } => {
            let resp = forward(&state, req).await?;
            let status = resp.status().as_u16();
            record(&state, &seen, status, None);
            Ok(respond(&state, resp, body_cut, stall, budget)?)
        }
    }
}

async fn forward(
    state: &State,
    req: Request<hyper::body::Incoming>,
) -> Result<reqwest::Response, BoxError> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{pq}", state.upstream);
    let mut rb = state.client.request(req.method().clone(), url);
    for (k, v) in req.headers() {
        if !matches!(k.as_str(), "host" | "connection" | "transfer-encoding") {
            rb = rb.header(k, v);
        }
    }
    let stream = Body::new(req.into_body()).into_data_stream();
    rb = rb.body(reqwest::Body::wrap_stream(stream));
    Ok(rb.send().await?)
}

fn respond(
    state: &State,
    resp: reqwest::Response,
    body_cut: Option<Cut>,
    stall: bool,
    budget: Option<(u64, u64)>,
) -> Result<Response<Body>, BoxError> {
    let mut b = Response::builder().status(StatusCode::from_u16(resp.status().as_u16())?);
    let me = state.me.lock().unwrap().clone();
    for (k, v) in resp.headers() {
        if matches!(k.as_str(), "connection" | "transfer-encoding") {
            continue;
        }
        if k.as_str() == "location" {
            // distribution builds absolute Locations from the Host it saw
            let loc = v.to_str().unwrap_or("").replace(&state.upstream, &me);
            b = b.header(k, loc);
            continue;
        }
        b = b.header(k, v);
    }
    if let Some((left, window)) = budget {
        b = b.header("ratelimit-remaining", format!("{left};w={window}"));
    }
    // only bodies longer than the cut point count: the k-th of those is cut
    let long = resp.status().is_success()
        && body_cut.is_some_and(|k| resp.content_length().is_some_and(|n| n > k.after));
    let body_cut = body_cut.filter(|k| {
        long && {
            let mut c = state.counters.lock().unwrap();
            c.blob_gets += 1;
            c.blob_gets % k.every == 0
        }
    });
    let sent = Arc::new(Mutex::new(0u64));
    let body = resp
        .bytes_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> =
        match body_cut {
            None => body.boxed(),
            Some(cut) => body
                .then(move |item| {
                    let sent = sent.clone();
                    async move {
                        let b = item?;
                        let keep = {
                            let mut sent = sent.lock().unwrap();
                            if *sent + b.len() as u64 <= cut.after {
                                *sent += b.len() as u64;
                                return Ok(b);
                            }
                            let keep = (cut.after - *sent) as usize;
                            *sent = cut.after;
                            keep
                        };
                        if keep > 0 {
                            return Ok(b.slice(..keep));
                        }
                        if stall {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Err(std::io::Error::other("fault proxy: body cut"))
                    }
                })
                .boxed(),
        };
    Ok(b.body(Body::from_stream(body))?)
}
