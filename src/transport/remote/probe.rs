//! Which scheme a registry speaks, for `copy --*-tls-verify=false`: like
//! skopeo, HTTPS without certificate verification when the registry speaks
//! TLS at all, else plain HTTP. The config never probes: there
//! `plain_http` and `insecure_skip_verify` are explicit.

use std::time::Duration;

use crate::reference::api_host;

/// How long the TLS probe may take before the registry is taken to speak
/// plain HTTP (a TLS handshake with a plain HTTP server fails at once).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// True when `host` answers an HTTPS request (any status: 401 and 404 say
/// it speaks HTTPS as well as 200 does), certificates unverified.
pub async fn speaks_https(host: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(client) = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return false;
    };
    let url = format!("https://{}/v2/", api_host(host));
    match client.get(&url).send().await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(registry = host, error = %e, "no HTTPS; using plain HTTP");
            false
        }
    }
}
