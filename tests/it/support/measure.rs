//! Runs a process and measures it as the issue tracker's figures need: wall
//! time, peak resident memory (`VmHWM` from /proc, sampled until it exits)
//! and its output, with a deadline after which it is killed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Measured {
    /// `None`: killed at the deadline.
    pub code: Option<i32>,
    pub wall: Duration,
    /// Peak resident set size in KiB (0 if it could not be read).
    pub peak_rss_kib: u64,
    pub stdout: String,
    pub stderr: String,
}

impl Measured {
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` to completion or until `deadline` (then SIGKILL), sampling its
/// peak memory every 20 ms.
pub fn run_measured(cmd: &mut Command, deadline: Duration) -> Measured {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn measured process");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let code = loop {
        if let Some(hwm) = vm_hwm(&status_path) {
            peak = peak.max(hwm);
        }
        match child.try_wait().expect("wait measured process") {
            Some(st) => break st.code(),
            None if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Measured {
        code,
        wall: started.elapsed(),
        peak_rss_kib: peak,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn vm_hwm(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
