//! The HTTP side: `POST /v1/events/distribution`, `POST /v1/events/harbor`,
//! `POST /v1/rules/<rule>/sync`. Every request needs the bearer token; a
//! bad request gets its status and changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use subtle::ConstantTimeEq;

use super::parse::{self, ParseError, Parsed};
use super::peers::{self, ForwardFailure};
use super::{Hub, Kind, Outcome, Triggered};

/// Bodies larger than this are refused (413).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

pub(super) fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/v1/events/distribution", post(distribution))
        .route("/v1/events/harbor", post(harbor))
        .route("/v1/rules/{rule}/sync", post(trigger))
        .with_state(hub)
}

fn text(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(hub: &Hub, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(given.ct_eq(hub.token.expose().as_bytes()))
}

fn unauthorized() -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Reads at most `MAX_BODY` bytes; `Err` is the response to send.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, Response> {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, "event body over 1 MiB");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| too_large())
}

async fn receive(
    hub: &Hub,
    kind: Kind,
    path: &str,
    headers: HeaderMap,
    body: Body,
    parse: fn(&[u8]) -> Result<Parsed, ParseError>,
) -> Response {
    if !authorized(hub, &headers) {
        hub.count(kind, Outcome::Rejected, 1);
        return unauthorized();
    }
    let bytes = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(r) => {
            hub.count(kind, Outcome::Rejected, 1);
            return r;
        }
    };
    let parsed = match parse(&bytes) {
        Ok(p) => p,
        Err(e) => {
            hub.count(kind, Outcome::Rejected, 1);
            tracing::warn!(kind = kind.as_str(), error = %e, "event refused");
            return text(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let ignored = parsed.ignored;
    let forwarded = peers::is_forwarded(&headers);
    let submitted = hub.submit(kind, parsed, forwarded);
    let shards: Vec<u32> = submitted.forward.iter().copied().collect();
    let failures = forward_all(hub, &shards, path, &headers, bytes).await;
    let body = serde_json::json!({ "matched": submitted.matched, "ignored": ignored });
    answer(body, &failures)
}

/// Sends the request on to each of `shards`; what did not go through.
async fn forward_all(
    hub: &Hub,
    shards: &[u32],
    path: &str,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Vec<ForwardFailure> {
    let Some(peers) = &hub.peers else {
        return Vec::new();
    };
    let sends = shards
        .iter()
        .map(|&k| peers.forward(hub.shard.index, k, path, headers, body.clone()));
    let failures: Vec<ForwardFailure> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    for f in &failures {
        tracing::warn!(shard = f.shard, error = %f.message, "cannot forward an event to the shard that owns it; the sender should retry");
    }
    failures
}

/// 202 with `body`, or 502 naming the shards a forward failed to (what this
/// shard owns is queued either way; a retried event is coalesced).
fn answer(body: serde_json::Value, failures: &[ForwardFailure]) -> Response {
    if failures.is_empty() {
        return json(StatusCode::ACCEPTED, body);
    }
    let detail: Vec<String> = failures
        .iter()
        .map(|f| format!("shard {}: {}", f.shard, f.message))
        .collect();
    text(
        StatusCode::BAD_GATEWAY,
        &format!(
            "event not delivered to the shard that owns it ({}); retry",
            detail.join("; ")
        ),
    )
}

async fn distribution(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    let path = "/v1/events/distribution";
    receive(
        &hub,
        Kind::Distribution,
        path,
        headers,
        body,
        parse::distribution,
    )
    .await
}

async fn harbor(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    receive(
        &hub,
        Kind::Harbor,
        "/v1/events/harbor",
        headers,
        body,
        parse::harbor,
    )
    .await
}

async fn trigger(
    State(hub): State<Arc<Hub>>,
    Path(rule): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&hub, &headers) {
        hub.count(Kind::Trigger, Outcome::Rejected, 1);
        return unauthorized();
    }
    let path = format!("/v1/rules/{rule}/sync");
    let forwarded = peers::is_forwarded(&headers);
    let (shards, forwarded_to) = match hub.trigger(&rule, forwarded) {
        Triggered::Unknown => return text(StatusCode::NOT_FOUND, "no rule with that name"),
        Triggered::Queued(others) => (others, None),
        Triggered::Elsewhere(owner) => (vec![owner], Some(owner)),
    };
    let empty = axum::body::Bytes::new();
    let failures = forward_all(&hub, &shards, &path, &headers, empty).await;
    let mut matched = serde_json::json!({ "rule": rule, "repository": null });
    if let Some(k) = forwarded_to {
        matched["forwarded_to"] = k.into();
    }
    answer(
        serde_json::json!({ "matched": [matched], "ignored": 0 }),
        &failures,
    )
}
