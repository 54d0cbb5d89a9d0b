//! The request layer against a scripted in-process server on an ephemeral
//! 127.0.0.1 port: retries, 429 handling, bearer tokens, pagination.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::*;

#[derive(Default)]
struct Counters {
    tags: AtomicUsize,
    tokens: AtomicUsize,
    flaky: AtomicUsize,
}

async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr.to_string()
}

fn plain() -> RegistryOptions {
    RegistryOptions {
        plain_http: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn retries_5xx_and_429_and_counts_them() {
    let c = Arc::new(Counters::default());
    let app = axum::Router::new()
        .route(
            "/v2/a/tags/list",
            get(|State(c): State<Arc<Counters>>| async move {
                match c.flaky.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
                    1 => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1"), ("ratelimit-remaining", "0;w=60")],
                        "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow down\"}]}",
                    )
                        .into_response(),
                    _ => (
                        [("ratelimit-remaining", "99;w=60")],
                        "{\"name\":\"a\",\"tags\":null}",
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/v2/b/tags/list",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3600")], "") }),
        )
        .with_state(c.clone());
    let host = serve(app).await;
    let reg = Arc::new(Registry::new(&host, &plain(), false).unwrap());
    let started = Instant::now();
    let tags = RemoteRepo::new(reg.clone(), "a").list_tags().await.unwrap();
    assert!(tags.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let st = reg.stats();
    assert_eq!(st.throttled, 1);
    assert_eq!(st.retries, 2);
    assert_eq!(st.rate_limit_remaining, Some(99));
    assert_eq!(st.requests[&("GET".to_string(), 503)], 1);
    // a long Retry-After is not waited for: the error goes up, marked transient
    let err = RemoteRepo::new(reg.clone(), "b")
        .list_tags()
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("429"), "{err}");
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_renewed_on_401() {
    let c = Arc::new(Counters::default());
    let token_route = get(
        |State(c): State<Arc<Counters>>, headers: HeaderMap, RawQuery(q): RawQuery| async move {
            let n = c.tokens.fetch_add(1, Ordering::SeqCst);
            let q = q.unwrap_or_default();
            assert!(q.contains("service=svc"), "{q}");
            assert!(q.contains("scope=repository%3Aa%3Apull"), "{q}");
            assert_eq!(headers["authorization"], "Basic dTpw");
            format!("{{\"access_token\":\"tok{n}\",\"expires_in\":300}}")
        },
    );
    let tags_route = get(
        |State(c): State<Arc<Counters>>, headers: HeaderMap, RawQuery(q): RawQuery| async move {
            let host = headers["host"].to_str().unwrap().to_string();
            let challenge = format!(
                "Bearer realm=\"http://{host}/token\",service=\"svc\",scope=\"repository:a:pull\""
            );
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            let n = c.tags.fetch_add(1, Ordering::SeqCst);
            // the second request with tok0 is refused as if it had been revoked
            let ok = matches!(auth.as_deref(), Some("Bearer tok0")) && n < 3
                || auth.as_deref() == Some("Bearer tok1");
            if !ok {
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", challenge)
                    .body(axum::body::Body::from(""))
                    .unwrap();
            }
            if q.as_deref() == Some("last=x") {
                return "{\"tags\":[\"y\"]}".into_response();
            }
            Response::builder()
                .header("link", "</v2/a/tags/list?last=x>; rel=\"next\"")
                .body(axum::body::Body::from("{\"tags\":[\"x\"]}"))
                .unwrap()
        },
    );
    let app = axum::Router::new()
        .route("/token", token_route)
        .route("/v2/a/tags/list", tags_route)
        .with_state(c.clone());
    let host = serve(app).await;
    let opts = RegistryOptions {
        username: Some("u".into()),
        password: Some(Secret::new("p")),
        ..plain()
    };
    let reg = Arc::new(Registry::new(&host, &opts, false).unwrap());
    let repo = RemoteRepo::new(reg.clone(), "a");
    // 401 probe, token, page 1, page 2
    assert_eq!(repo.list_tags().await.unwrap(), ["x", "y"]);
    assert_eq!(c.tokens.load(Ordering::SeqCst), 1);
    assert_eq!(c.tags.load(Ordering::SeqCst), 3);
    // cached token refused -> one fresh token, one retry
    assert_eq!(repo.list_tags().await.unwrap(), ["x", "y"]);
    assert_eq!(c.tokens.load(Ordering::SeqCst), 2);
    assert_eq!(reg.stats().requests[&("GET".to_string(), 401)], 2);
}

#[tokio::test]
async fn concurrency_and_rate_are_limited() {
    #[derive(Default)]
    struct Load {
        now: AtomicUsize,
        max: AtomicUsize,
    }
    let load = Arc::new(Load::default());
    let app = axum::Router::new()
        .route(
            "/v2/a/blobs/{d}",
            get(|State(l): State<Arc<Load>>| async move {
                let n = l.now.fetch_add(1, Ordering::SeqCst) + 1;
                l.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                l.now.fetch_sub(1, Ordering::SeqCst);
                "x"
            }),
        )
        .with_state(load.clone());
    let host = serve(app).await;
    let opts = RegistryOptions {
        max_concurrent: 2,
        requests_per_second: Some(20.0),
        ..plain()
    };
    let reg = Arc::new(Registry::new(&host, &opts, false).unwrap());
    let repo = RemoteRepo::new(reg.clone(), "a");
    let d = Digest::of(b"x");
    let started = Instant::now();
    let all = futures_util::future::join_all((0..30).map(|_| repo.blob_exists(&d))).await;
    assert!(all.into_iter().all(|r| r.unwrap()));
    assert!(load.max.load(Ordering::SeqCst) <= 2);
    // 20 in the first-second burst, then 10 more at 20/s
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}
