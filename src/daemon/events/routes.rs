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
use super::{Hub, Kind, Outcome};

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
    let matched = hub.submit(kind, parsed);
    json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "matched": matched, "ignored": ignored }),
    )
}

async fn distribution(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    receive(&hub, Kind::Distribution, headers, body, parse::distribution).await
}

async fn harbor(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    receive(&hub, Kind::Harbor, headers, body, parse::harbor).await
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
    if hub.trigger(&rule) {
        json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "matched": [{ "rule": rule, "repository": null }], "ignored": 0 }),
        )
    } else {
        text(StatusCode::NOT_FOUND, "no rule with that name")
    }
}
