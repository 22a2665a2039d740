//! A small HTTP client for the `stats` and `events` subcommands, which talk to a running
//! agent's JSON API.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Seconds a CLI request may take before it gives up.
const REQUEST_TIMEOUT_SECS: u64 = 10;
/// The CLI refuses bodies larger than this; the API caps its answers far below it.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url} is not a valid http:// URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the agent at {url}: {reason} (is `lifecycle-agent run` listening there? use --url)")]
    Unreachable { url: String, reason: String },
    #[error("the agent at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the agent at {url} sent something that is not the expected JSON: {reason}")]
    BadBody { url: String, reason: String },
}

/// GETs `url` and parses its JSON body.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, ClientError> {
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientError::BadUrl {
                url: url.into(),
                reason: e.to_string(),
            })?;
    if uri.scheme_str() != Some("http") {
        return Err(ClientError::BadUrl {
            url: url.into(),
            reason: "only http:// is supported (port-forward or use a proxy for TLS)".into(),
        });
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let unreachable = |reason: String| ClientError::Unreachable {
        url: url.into(),
        reason,
    };
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(REQUEST_TIMEOUT_SECS),
        client.get(uri),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT_SECS}s")))?
    .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(ClientError::Status {
            url: url.into(),
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::BadBody {
        url: url.into(),
        reason: e.to_string(),
    })
}
