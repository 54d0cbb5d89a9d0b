//! `/metrics`, `/healthz`, `/readyz` on `daemon.listen` (served by
//! `listener.rs`, which bounds time and connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::health::Heartbeat;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    heartbeat: Arc<Heartbeat>,
}

/// Serves these routes and `extra` (the event endpoints) until `stop`.
pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    heartbeat: Arc<Heartbeat>,
    stop: CancellationToken,
    extra: Router,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/readyz", get(ready_handler))
        .with_state(Shared {
            metrics,
            ready,
            heartbeat,
        })
        .merge(extra);
    super::listener::serve(listener, app, super::listener::Bounds::DEFAULT, stop).await;
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    match s.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{e}\n"),
        ),
    }
}

/// 200 while the scheduler loop goes round, 503 once it is stuck.
async fn health_handler(State(s): State<Shared>) -> impl IntoResponse {
    match s.heartbeat.stalled(std::time::Instant::now()) {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn ready_handler(State(s): State<Shared>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: state database not open yet\n",
        )
    }
}
