//! A small TCP proxy for fault injection, on its own thread and runtime.
//!
//! Faults (all changeable while running):
//! - `throttle(Some(bps))`: each direction of each connection limited to `bps` bytes/s;
//! - `reset_after(n, times)`: a connection is reset (RST) once `n` bytes (both directions
//!   together) went through it, for the next `times` connections that get that far
//!   (`None` = every connection);
//! - `set_down(true)`: outage, every open connection is reset and new ones are reset on
//!   accept;
//! - `set_stalled(true)`: connections stay open but no byte moves (a hang).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::registry::Registry;

struct State {
    upstream: SocketAddr,
    rate: AtomicU64,
    reset_after: AtomicU64,
    /// Connections still to reset; negative = unlimited.
    reset_budget: AtomicI64,
    down: AtomicBool,
    stalled: AtomicBool,
    /// Cancelled (and replaced) when an outage starts: kills open connections.
    outage: Mutex<CancellationToken>,
    connections: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl State {
    /// Takes one unit of reset budget if any is left.
    fn take_reset(&self) -> bool {
        self.reset_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                0 => None,
                b if b < 0 => Some(b),
                b => Some(b - 1),
            })
            .is_ok()
    }
}

/// A running proxy. Stopped on drop (open connections are dropped).
pub struct FaultProxy {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 (ephemeral port) forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream must be IP:PORT");
        let state = Arc::new(State {
            upstream,
            rate: AtomicU64::new(0),
            reset_after: AtomicU64::new(0),
            reset_budget: AtomicI64::new(0),
            down: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            outage: Mutex::new(CancellationToken::new()),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let shutdown = CancellationToken::new();
        let (st, sd) = (state.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime")
                    .block_on(accept_loop(listener, st, sd));
            })
            .expect("spawn proxy thread");
        FaultProxy {
            addr,
            scheme: "http",
            state,
            shutdown,
            thread: Some(thread),
        }
    }

    /// A proxy in front of a harness registry (same scheme; the registry's TLS cert is
    /// valid for 127.0.0.1, so TLS through the proxy verifies).
    pub fn to_registry(reg: &Registry) -> FaultProxy {
        let mut p = FaultProxy::start(&reg.host());
        p.scheme = reg.scheme();
        p
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http(s)://127.0.0.1:PORT` (scheme of the registry it fronts).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Limit each direction of each connection to `bytes_per_sec` (`None`: unlimited).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.state
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Reset connections after `bytes` (both directions) went through them; only the
    /// next `times` connections reaching that point (`None`: all of them).
    pub fn reset_after(&self, bytes: u64, times: Option<u64>) {
        self.state.reset_after.store(bytes.max(1), Ordering::SeqCst);
        self.state
            .reset_budget
            .store(times.map(|t| t as i64).unwrap_or(-1), Ordering::SeqCst);
    }

    /// Outage on/off: on resets all open connections and every new one.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        if down {
            let mut tok = self.state.outage.lock().unwrap();
            tok.cancel();
            *tok = CancellationToken::new();
        }
    }

    /// Stall on/off: connections stay open but no data is forwarded.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Back to a transparent proxy.
    pub fn clear_faults(&self) {
        self.throttle(None);
        self.state.reset_after.store(0, Ordering::SeqCst);
        self.state.reset_budget.store(0, Ordering::SeqCst);
        self.set_down(false);
        self.set_stalled(false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections reset by a fault so far.
    pub fn resets(&self) -> u64 {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client -> upstream.
    pub fn bytes_up(&self) -> u64 {
        self.state.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded upstream -> client.
    pub fn bytes_down(&self) -> u64 {
        self.state.bytes_down.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let listener = TcpListener::from_std(listener).expect("proxy listener");
    loop {
        let (client, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        if state.down.load(Ordering::SeqCst) {
            state.resets.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let outage = state.outage.lock().unwrap().child_token();
        let conn_cancel = shutdown.child_token();
        tokio::spawn(handle(client, state.clone(), outage, conn_cancel));
    }
}

/// Per-connection shared state between the two pumps.
struct Conn {
    total: AtomicU64,
    reset: AtomicBool,
    cancel: CancellationToken,
}

async fn handle(
    mut client: TcpStream,
    state: Arc<State>,
    outage: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut upstream = match TcpStream::connect(state.upstream).await {
        Ok(u) => u,
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let conn = Conn {
        total: AtomicU64::new(0),
        reset: AtomicBool::new(false),
        cancel: CancellationToken::new(),
    };
    {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let both = async {
            tokio::join!(
                pump(cr, uw, &state, &conn, &state.bytes_up),
                pump(ur, cw, &state, &conn, &state.bytes_down)
            )
        };
        tokio::select! {
            _ = both => {}
            _ = outage.cancelled() => conn.reset.store(true, Ordering::SeqCst),
            _ = shutdown.cancelled() => {}
        }
    }
    if conn.reset.load(Ordering::SeqCst) {
        state.resets.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

async fn pump<R, W>(mut r: R, mut w: W, state: &State, conn: &Conn, counter: &AtomicU64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut window_rate = 0u64;
    let mut window_start = Instant::now();
    let mut window_sent = 0u64;
    loop {
        let rate = state.rate.load(Ordering::SeqCst);
        let max = if rate == 0 {
            buf.len()
        } else {
            ((rate / 50) as usize).clamp(1, buf.len())
        };
        let n = tokio::select! {
            r = r.read(&mut buf[..max]) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = conn.cancel.cancelled() => return,
        };
        // Stall: hold the data until released (or the connection is killed).
        while state.stalled.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = conn.cancel.cancelled() => return,
            }
        }
        let mut send = n;
        let mut reset_now = false;
        let limit = state.reset_after.load(Ordering::SeqCst);
        let before = conn.total.fetch_add(n as u64, Ordering::SeqCst);
        if limit > 0
            && before + n as u64 >= limit
            && !conn.reset.load(Ordering::SeqCst)
            && state.take_reset()
        {
            send = limit.saturating_sub(before) as usize;
            reset_now = true;
        }
        if send > 0 {
            if w.write_all(&buf[..send]).await.is_err() {
                break;
            }
            counter.fetch_add(send as u64, Ordering::SeqCst);
        }
        if reset_now {
            let _ = w.flush().await;
            conn.reset.store(true, Ordering::SeqCst);
            conn.cancel.cancel();
            return;
        }
        if rate > 0 {
            if rate != window_rate {
                window_rate = rate;
                window_start = Instant::now();
                window_sent = 0;
            }
            window_sent += send as u64;
            let due = window_start + Duration::from_secs_f64(window_sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep(due - now) => {}
                    _ = conn.cancel.cancelled() => return,
                }
            }
        }
    }
    // EOF or error on the read side: pass the half-close on.
    let _ = w.shutdown().await;
}
