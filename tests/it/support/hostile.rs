//! A hostile registry: a small HTTP/1.1 server on 127.0.0.1, on its own
//! thread and runtime, that speaks just enough of the distribution API to be
//! a source and lies, stalls or trickles wherever a test tells it to.
//!
//! It is written on raw TCP (not hyper) so that it can do what a well-behaved
//! server library never does: send its response head one byte at a time,
//! trickle a body, answer nothing, or close mid-way. By default a request is
//! forwarded to a real registry (`upstream`), so the legitimate parts of an
//! image (manifests, blobs) come from real distribution; a test's handler
//! decides, per request, to answer something else instead.
//!
//! Every request is recorded with its arrival time, raw request target and
//! headers (so a test can see exactly which paths a client was led to, and
//! which credentials it sent where).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request as the hostile registry saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Arrival, since the server started.
    pub at: Duration,
    pub method: String,
    /// The request target exactly as sent (path and query, still encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to send as is.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Canned {
    pub fn new(status: u16) -> Canned {
        Canned {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(status: u16, value: &serde_json::Value) -> Canned {
        Canned::new(status)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(value).unwrap())
    }

    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Canned {
        self.body = body.into();
        self
    }
}

/// What to do with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Ask the upstream registry and pass its answer on (404 without one).
    Forward,
    /// Ask the upstream registry for this target (path and query) instead.
    ForwardTo(String),
    Respond(Canned),
    /// The response head one byte every `Duration`, then the body at once.
    TrickleHead(Canned, Duration),
    /// The head at once, then the body `usize` bytes every `Duration`.
    TrickleBody(Canned, usize, Duration),
    /// The head (with this `Content-Length`) and `usize` bytes of the body,
    /// then silence until the client gives up.
    StallBody(Canned, usize),
    /// Read the request, then answer nothing until the client gives up.
    Stall,
    /// Close the connection without an answer.
    Close,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct State {
    upstream: Option<String>,
    handler: Mutex<Handler>,
    records: Mutex<Vec<Seen>>,
    started: Instant,
    open: AtomicUsize,
    client: reqwest::Client,
}

pub struct HostileRegistry {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl HostileRegistry {
    /// A hostile registry on 127.0.0.1 (ephemeral port) in front of
    /// `upstream` (`http://host:port`, or none), answering with `handler`.
    pub fn start(
        upstream: Option<&str>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> HostileRegistry {
        super::init_crypto();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind hostile");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("hostile addr");
        let state = Arc::new(State {
            upstream: upstream.map(|u| u.trim_end_matches('/').to_string()),
            handler: Mutex::new(Arc::new(handler)),
            records: Mutex::new(Vec::new()),
            started: Instant::now(),
            open: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("hostile client"),
        });
        let shutdown = CancellationToken::new();
        let (st, sd) = (state.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("hostile-registry".into())
            .spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("hostile runtime")
                    .block_on(accept_loop(listener, st, sd));
            })
            .expect("spawn hostile thread");
        HostileRegistry {
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

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[registries."127.0.0.1:PORT"]` section regkeeper needs, plus `extra` lines.
    pub fn registry_toml(&self, extra: &str) -> String {
        format!(
            "[registries.\"{}\"]\nplain_http = true\n{extra}\n",
            self.host()
        )
    }

    pub fn set_handler(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.state.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn records(&self) -> Vec<Seen> {
        self.state.records.lock().unwrap().clone()
    }

    /// Requests that `pred` picks.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.state
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|s| pred(s))
            .count()
    }

    pub fn clear_records(&self) {
        self.state.records.lock().unwrap().clear();
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, state: Arc<State>, stop: CancellationToken) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let (conn, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let (st, sd) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            st.open.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = sd.cancelled() => {}
                _ = serve(conn, &st) => {}
            }
            st.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Serves the requests of one connection in turn (keep-alive).
async fn serve(mut conn: TcpStream, state: &State) {
    let mut buf = Vec::new();
    loop {
        let Some((seen, body_len)) = read_head(&mut conn, &mut buf, state).await else {
            return;
        };
        if !discard_body(&mut conn, &mut buf, body_len).await {
            return;
        }
        state.records.lock().unwrap().push(seen.clone());
        let handler = state.handler.lock().unwrap().clone();
        let reply = handler(&seen);
        let head_only = seen.method == "HEAD";
        let keep = match reply {
            Reply::Forward | Reply::ForwardTo(_) => {
                let target = match reply {
                    Reply::ForwardTo(t) => t,
                    _ => seen.target.clone(),
                };
                let canned = forward(state, &seen, &target).await;
                write_all(&mut conn, &head(&canned), &canned.body, head_only).await
            }
            Reply::Respond(c) => write_all(&mut conn, &head(&c), &c.body, head_only).await,
            Reply::TrickleHead(c, every) => {
                for b in head(&c) {
                    if conn.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
                head_only || conn.write_all(&c.body).await.is_ok()
            }
            Reply::TrickleBody(c, n, every) => {
                if conn.write_all(&head(&c)).await.is_err() {
                    return;
                }
                for piece in c.body.chunks(n.max(1)) {
                    tokio::time::sleep(every).await;
                    if conn.write_all(piece).await.is_err() {
                        return;
                    }
                }
                true
            }
            Reply::StallBody(c, n) => {
                let _ = conn.write_all(&head(&c)).await;
                let _ = conn.write_all(&c.body[..n.min(c.body.len())]).await;
                wait_for_close(&mut conn).await;
                return;
            }
            Reply::Stall => {
                wait_for_close(&mut conn).await;
                return;
            }
            Reply::Close => return,
        };
        if !keep {
            return;
        }
    }
}

/// Reads one request head; `None` when the connection ends first.
async fn read_head(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    state: &State,
) -> Option<(Seen, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_string();
            let target = first.next()?.to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let seen = Seen {
                at: state.started.elapsed(),
                method,
                target,
                headers,
            };
            let len = seen
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return Some((seen, len));
        }
        if buf.len() > 1024 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn discard_body(conn: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    let mut left = len;
    let have = left.min(buf.len());
    buf.drain(..have);
    left -= have;
    let mut chunk = [0u8; 8192];
    while left > 0 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    true
}

async fn wait_for_close(conn: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Head and body; whether the connection may serve another request.
async fn write_all(conn: &mut TcpStream, head: &[u8], body: &[u8], head_only: bool) -> bool {
    if conn.write_all(head).await.is_err() {
        return false;
    }
    head_only || conn.write_all(body).await.is_ok()
}

/// The response head: status line, headers, and `Content-Length` unless the
/// canned response names its own.
fn head(c: &Canned) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(c.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", c.status);
    let mut has_len = false;
    for (k, v) in &c.headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        out.push_str(&format!("Content-Length: {}\r\n", c.body.len()));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The upstream registry's answer to the same request (GET and HEAD only).
async fn forward(state: &State, seen: &Seen, target: &str) -> Canned {
    let Some(up) = &state.upstream else {
        return Canned::json(
            404,
            &serde_json::json!({"errors":[{"code":"NAME_UNKNOWN","message":"no upstream"}]}),
        );
    };
    let method = reqwest::Method::from_bytes(seen.method.as_bytes()).unwrap();
    let mut rb = state.client.request(method, format!("{up}{target}"));
    for (k, v) in &seen.headers {
        if ["accept", "range", "authorization"].contains(&k.to_ascii_lowercase().as_str()) {
            rb = rb.header(k, v);
        }
    }
    let Ok(resp) = rb.send().await else {
        return Canned::new(502);
    };
    let mut c = Canned::new(resp.status().as_u16());
    for (k, v) in resp.headers() {
        let k = k.as_str();
        if ["transfer-encoding", "connection", "keep-alive"].contains(&k) {
            continue;
        }
        c.headers
            .push((k.to_string(), v.to_str().unwrap_or("").to_string()));
    }
    c.body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    c
}
