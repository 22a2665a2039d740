//! A small HTTP/1 client for Podman's API on a unix socket or `tcp://`, and the line
//! splitter of its streamed event bodies.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

/// Time for one request's headers and (non-streaming) body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A list or inspect answer larger than this is refused rather than buffered.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// An event line longer than this is skipped: real ones are a few hundred bytes, label-heavy
/// ones a few KiB.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where the API listens.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// What can go wrong talking HTTP to Podman; turned into a [`SourceError`] at the edge.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("no answer within {0}s")]
    Timeout(u64),
    #[error("unexpected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, HttpError::Status { status: 404, .. })
    }
}

impl Target {
    pub(super) fn parse(endpoint: &str) -> Result<Target, String> {
        if let Some(addr) = endpoint
            .strip_prefix("tcp://")
            .or_else(|| endpoint.strip_prefix("http://"))
        {
            return Ok(Target::Tcp(addr.trim_end_matches('/').to_string()));
        }
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if path.is_empty() {
            return Err("empty socket path".into());
        }
        Ok(Target::Unix(PathBuf::from(path)))
    }

    /// Sends one GET on a fresh connection; the connection lives as long as the body.
    pub(super) async fn get(&self, path_and_query: &str) -> Result<Response<Incoming>, HttpError> {
        let req = Request::get(path_and_query)
            .header(hyper::header::HOST, "podman")
            .body(Empty::<Bytes>::new())?;
        match self {
            Target::Unix(p) => {
                let io = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(HttpError::Connect)?;
                send_over(io, req).await
            }
            Target::Tcp(addr) => {
                let io = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(HttpError::Connect)?;
                send_over(io, req).await
            }
        }
    }

    /// GETs and checks the status; error bodies carry Podman's `message`.
    pub(super) async fn get_ok(
        &self,
        path_and_query: &str,
    ) -> Result<Response<Incoming>, HttpError> {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.get(path_and_query))
            .await
            .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT.as_secs()))??;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(HttpError::Status {
            status: status.as_u16(),
            message,
        })
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, HttpError> {
        let resp = self.get_ok(path_and_query).await?;
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), MAX_BODY_BYTES).collect(),
        )
        .await
        .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT.as_secs()))?
        .map_err(|_| HttpError::TooLarge(MAX_BODY_BYTES))?
        .to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }
}

pub(super) async fn send_over<T>(
    io: T,
    req: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, HttpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "podman API connection closed");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// Splits a streaming body into lines without waiting for more than the next chunk.
pub(super) struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    done: bool,
}

impl Lines {
    pub(super) fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            skipping: false,
            done: false,
        }
    }

    /// The next complete line, `None` at the end of the body.
    pub(super) async fn next(&mut self) -> Option<Result<Vec<u8>, HttpError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Some(Ok(line));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                warn!(
                    bytes = self.buf.len(),
                    "skipping an over-long line in Podman's event stream"
                );
                self.buf.clear();
                self.skipping = true;
            }
            if self.done {
                if self.buf.is_empty() || self.skipping {
                    return None;
                }
                return Some(Ok(std::mem::take(&mut self.buf)));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => self.done = true,
            }
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
