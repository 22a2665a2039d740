//! HTTP to Podman's API on a unix socket or `tcp://`: hyper-util's pooled client (over
//! `hyperlocal`'s connector for a socket), the line splitting of streamed event bodies
//! (`tokio_util`'s `LinesCodec`) and the encoding of query values (`percent-encoding`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};
use tracing::warn;

/// Time for one request's headers and (non-streaming) body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A list or inspect answer larger than this is refused rather than buffered.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// An event line longer than this is skipped: real ones are a few hundred bytes, label-heavy
/// ones a few KiB.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where the API listens, with a client whose connections are kept for the next request
/// (an inspect per new container reuses one instead of connecting each time). The clients
/// are boxed: they are large, and a source is moved around whole.
#[derive(Clone)]
pub(super) enum Target {
    Unix {
        path: PathBuf,
        client: Box<Client<UnixConnector, Empty<Bytes>>>,
    },
    Tcp {
        authority: String,
        client: Box<Client<HttpConnector, Empty<Bytes>>>,
    },
}

/// What can go wrong talking HTTP to Podman; turned into a [`SourceError`] at the edge.
///
/// [`SourceError`]: crate::runtime::SourceError
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Client(String),
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

    /// Whether the request never reached Podman (or its answer never came): the runtime
    /// is unreachable, not refusing.
    pub(super) fn is_transport(&self) -> bool {
        matches!(
            self,
            HttpError::Connect(_)
                | HttpError::Client(_)
                | HttpError::Hyper(_)
                | HttpError::Timeout(_)
        )
    }
}

impl From<hyper_util::client::legacy::Error> for HttpError {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        // The client's own message ("client error (Connect)") keeps the reason a user can
        // act on ("No such file or directory", "Connection refused") in its sources.
        let text = crate::runtime::error_chain(&e);
        if e.is_connect() {
            HttpError::Connect(text)
        } else {
            HttpError::Client(text)
        }
    }
}

impl Target {
    pub(super) fn parse(endpoint: &str) -> Result<Target, String> {
        if let Some(addr) = endpoint
            .strip_prefix("tcp://")
            .or_else(|| endpoint.strip_prefix("http://"))
        {
            return Ok(Target::Tcp {
                authority: addr.trim_end_matches('/').to_string(),
                client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
            });
        }
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if path.is_empty() {
            return Err("empty socket path".into());
        }
        Ok(Target::Unix {
            path: PathBuf::from(path),
            client: Box::new(Client::builder(TokioExecutor::new()).build(UnixConnector)),
        })
    }

    /// The socket's path, for a unix endpoint.
    pub(super) fn socket_path(&self) -> Option<&Path> {
        match self {
            Target::Unix { path, .. } => Some(path),
            Target::Tcp { .. } => None,
        }
    }

    /// Sends one GET; a streamed body keeps its connection until it ends.
    pub(super) async fn get(&self, path_and_query: &str) -> Result<Response<Incoming>, HttpError> {
        let uri: Uri = match self {
            Target::Unix { path, .. } => hyperlocal::Uri::new(path, path_and_query).into(),
            Target::Tcp { authority, .. } => format!("http://{authority}{path_and_query}")
                .parse()
                .map_err(hyper::http::Error::from)?,
        };
        let req = Request::get(uri)
            .header(hyper::header::HOST, "podman")
            .body(Empty::<Bytes>::new())?;
        Ok(match self {
            Target::Unix { client, .. } => client.request(req).await?,
            Target::Tcp { client, .. } => client.request(req).await?,
        })
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

/// The lines of a streaming body, as each chunk arrives. An over-long line (or one that is
/// not UTF-8) is skipped with a warning, not the end of the stream.
pub(super) struct Lines {
    body: Incoming,
    buf: BytesMut,
    codec: LinesCodec,
    done: bool,
}

impl Lines {
    pub(super) fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: BytesMut::new(),
            codec: LinesCodec::new_with_max_length(MAX_LINE_BYTES),
            done: false,
        }
    }

    /// The next complete line, `None` at the end of the body.
    pub(super) async fn next(&mut self) -> Option<Result<Vec<u8>, HttpError>> {
        loop {
            let decoded = if self.done {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match decoded {
                Ok(Some(line)) => return Some(Ok(line.into_bytes())),
                Ok(None) if self.done => return None,
                Ok(None) => {}
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    warn!(
                        max_bytes = MAX_LINE_BYTES,
                        "skipping an over-long line in Podman's event stream"
                    );
                    continue;
                }
                Err(LinesCodecError::Io(e)) => {
                    warn!(error = %e, "skipping a line of Podman's event stream that is not UTF-8");
                    continue;
                }
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

/// RFC 3986 unreserved characters stay as they are; everything else is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}
