//! The daemon's listener under a slowloris: many unauthenticated connections
//! that send their request head a byte at a time, and idle keep-alive
//! connections. The daemon runs with 1,024 file descriptors (systemd's
//! default soft limit); `/healthz`, `/metrics` and the webhook endpoint must
//! still answer, and the server must close the slow and idle connections
//! itself.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::common::*;

/// `regkeeper run` with `ulimit -n 1024`, no rules, webhooks on; killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let port = free_port();
        let token = dir.join("webhook.token");
        std::fs::write(&token, "s3cret-webhook-token\n").unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nwebhook_token_file = {:?}\n",
                dir.join("state").display().to_string(),
                token.display().to_string()
            ),
        )
        .unwrap();
        let log = dir.join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 1024 && exec \"$0\" run -c \"$1\"")
            .arg(regkeeper_bin())
            .arg(&config)
            .env("REGKEEPER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start regkeeper run");
        let d = Daemon {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
        };
        let t = Instant::now();
        while d.probe("GET", "/readyz").map(|(s, _)| s) != Ok(200) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "not ready:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// One request on a new connection: (status, time to the answer), or
    /// why none came within 5 s.
    fn probe(&self, method: &str, path: &str) -> Result<(u16, Duration), String> {
        let t = Instant::now();
        let limit = Duration::from_secs(5);
        let mut s =
            TcpStream::connect_timeout(&self.addr, limit).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(limit)).unwrap();
        s.set_write_timeout(Some(limit)).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .map_err(|e| format!("no answer in {:?}: {e}", t.elapsed()))?;
        let text = String::from_utf8_lossy(&head);
        let status = text[9..12]
            .parse()
            .map_err(|_| format!("not HTTP: {text:?}"))?;
        Ok((status, t.elapsed()))
    }

    /// File descriptors the daemon holds now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server closed `s` (end of stream or reset), without blocking.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // an answer (e.g. 408): read on to its end
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A slowloris on its own thread: `n` connections sending a request head one
/// byte per connection per second, reopened when the server closes them.
struct Slowloris {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Slowloris {
    fn start(addr: SocketAddr, n: usize) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (st, op, cl) = (stop.clone(), opened.clone(), closed.clone());
        let thread = std::thread::spawn(move || {
            let open = |op: &AtomicUsize| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
                s.set_write_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").ok()?;
                op.fetch_add(1, Ordering::SeqCst);
                Some(s)
            };
            let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
            while !st.load(Ordering::SeqCst) {
                let tick = Instant::now();
                for slot in conns.iter_mut() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let dead = match slot.as_mut() {
                        Some(s) => closed_by_server(s) || s.write_all(b"X").is_err(),
                        None => true,
                    };
                    if dead {
                        if slot.is_some() {
                            cl.fetch_add(1, Ordering::SeqCst);
                        }
                        *slot = open(&op);
                    }
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
            }
        });
        Slowloris {
            stop,
            opened,
            closed,
            thread: Some(thread),
        }
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_slowloris_does_not_lock_out_healthz_metrics_or_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let attack = Slowloris::start(d.addr, 1_500);
    let t = Instant::now();
    while attack.opened.load(Ordering::SeqCst) < 1_100 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut peak_fds = 0;
    // Rounds over 15 s: past the point where the first slow connections
    // would have timed out, so eviction and the timeout both get their turn.
    for round in 0..6 {
        peak_fds = peak_fds.max(d.fds());
        for (method, path, want) in [
            ("GET", "/healthz", 200),
            ("GET", "/metrics", 200),
            ("POST", "/v1/events/distribution", 401),
        ] {
            match d.probe(method, path) {
                Ok((status, took)) if status == want => slowest = slowest.max(took),
                Ok((status, _)) => {
                    failures.push(format!("round {round}: {path} answered {status}"))
                }
                Err(e) => failures.push(format!("round {round}: {path}: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(2500));
    }
    let (opened, closed) = (
        attack.opened.load(Ordering::SeqCst),
        attack.closed.load(Ordering::SeqCst),
    );
    drop(attack);
    eprintln!(
        "UNTRUSTED listener slowloris (1,500 conns, ulimit -n 1024): {} failed probes of 18, slowest answer {:.2} s, \
         {opened} attacker connections opened, {closed} closed by the server, peak {peak_fds} fds, peak {:.1} MiB",
        failures.len(),
        slowest.as_secs_f64(),
        d.peak_rss_mib()
    );
    assert!(
        failures.is_empty(),
        "unanswered under attack: {failures:#?}\n{}",
        tail(&d)
    );
    assert!(closed > 0, "the server closed none of the slow connections");
    assert!(peak_fds < 1_000, "the daemon held {peak_fds} descriptors");
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // 20 connections trickling a request head, one idle after a complete
    // keep-alive request (its answer read in full).
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(d.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let mut idle = TcpStream::connect(d.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ok\n") {
        let mut buf = [0u8; 256];
        let n = idle
            .read(&mut buf)
            .expect("healthz answer on the keep-alive connection");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    let t = Instant::now();
    let mut slow_closed_at: Vec<Option<Duration>> = vec![None; slow.len()];
    let mut idle_closed_at = None;
    while t.elapsed() < Duration::from_secs(45)
        && (idle_closed_at.is_none() || slow_closed_at.iter().any(Option::is_none))
    {
        for (s, at) in slow.iter_mut().zip(slow_closed_at.iter_mut()) {
            if at.is_none() && (closed_by_server(s) || s.write_all(b"X").is_err()) {
                *at = Some(t.elapsed());
            }
        }
        if idle_closed_at.is_none() && closed_by_server(&mut idle) {
            idle_closed_at = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let slow_done = slow_closed_at.iter().flatten().count();
    let slowest = slow_closed_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    eprintln!(
        "UNTRUSTED listener timeouts: {slow_done}/20 slow-header connections closed (last after {:.1} s), \
         idle keep-alive closed after {:?}",
        slowest.as_secs_f64(),
        idle_closed_at.map(|d| format!("{:.1} s", d.as_secs_f64()))
    );
    assert_eq!(
        slow_done, 20,
        "slow-header connections still open after 45 s"
    );
    assert!(
        idle_closed_at.is_some(),
        "the idle keep-alive connection is still open after 45 s"
    );
    // And the daemon still serves.
    assert_eq!(d.probe("GET", "/healthz").map(|(s, _)| s), Ok(200));
}

fn tail(d: &Daemon) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
