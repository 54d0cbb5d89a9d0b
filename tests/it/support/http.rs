//! Minimal blocking HTTP helper (reqwest on a helper thread) for harness-internal probes
//! and simple test assertions.

use std::time::Duration;

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header value with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A reqwest client trusting only `ca_pem` (when given); plain HTTP otherwise.
pub fn client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    super::init_crypto();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let cert = reqwest::Certificate::from_pem(pem).expect("parse CA PEM");
        b = b.tls_certs_only([cert]);
    }
    b.build().expect("build reqwest client")
}

/// Sends one request and reads the whole response, blocking the calling thread.
pub fn request(
    ca_pem: Option<Vec<u8>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let url = url.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    super::block_on_thread(async move {
        let c = client(ca_pem.as_deref());
        let mut rb = c.request(method, &url);
        for (k, v) in &headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb.send().await.map_err(|e| format!("{url}: {e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    })
}
