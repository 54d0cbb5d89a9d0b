//! Test support: real `docker-registry` instances (plain, htpasswd, token auth, TLS),
//! a token server, access-log request counting, deterministic OCI image corpora pushed
//! with skopeo, and a fault-injection TCP proxy.
//!
//! Everything here is synchronous and safe to call from `#[tokio::test]` bodies: the
//! helpers never start a nested runtime on the calling thread (background work runs on
//! threads of its own). Calls block the calling thread while they run.
#![allow(dead_code, unused_imports)]

pub mod accesslog;
pub mod corpus;
pub mod cosign;
pub mod daemon;
pub mod ferro;
pub mod hostile;
pub mod http;
pub mod httpfault;
pub mod layouts;
pub mod measure;
pub mod proxy;
pub mod registry;
pub mod skopeo;
pub mod tls;
pub mod token;
pub mod tsa;

pub use accesslog::{LoggedRequest, Mark, PathKind};
pub use corpus::{Corpus, Descriptor, Image, ImageSpec, Index, LayerSpec, layer, sha256_digest};
pub use daemon::{Daemon, wait_for};
pub use hostile::{Canned, HostileRegistry, Reply, Seen};
pub use http::HttpResponse;
pub use httpfault::{Cut, Faults, HttpFaultProxy, Record, StatusFault, inside_announced_windows};
pub use measure::{Measured, run_measured};
pub use proxy::FaultProxy;
pub use registry::{Auth, Registry, RegistryBuilder};
pub use skopeo::{
    Side, registry_flags, skopeo_copy, skopeo_copy_to, skopeo_digest, skopeo_inspect_raw,
    skopeo_list_tags, skopeo_try_digest, try_skopeo, try_skopeo_copy_to, try_skopeo_inspect_raw,
};
pub use tls::TlsFiles;
pub use token::{TokenRequest, TokenServer};

use std::future::Future;

/// Installs the ring rustls provider (reqwest is built with `rustls-no-provider`).
/// Idempotent; every helper that makes TLS clients calls it.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs a future to completion on a fresh current-thread runtime on a new thread.
/// Works whether or not the caller is itself inside a tokio runtime.
pub fn block_on_thread<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build helper runtime")
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released). Another process may
/// grab it before it is used; callers that can retry on conflict do so.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The last `n` lines of a text file (empty string if unreadable).
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Path of the regkeeper binary built for this test run, or the one
/// `REGKEEPER_TEST_BIN` names (to measure an older build with today's tests:
/// the "before" figures of a fix).
pub fn regkeeper_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("REGKEEPER_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_regkeeper").to_string())
    })
}
