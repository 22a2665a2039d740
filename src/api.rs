//! The HTTP surface (README "HTTP API"): `/metrics`, probes and the JSON API, on one port.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;

use prometheus_client::metrics::counter::Counter;

use crate::answers::{
    AnswerBudget, ChunkWriter, ScrapeSlots, CHUNKS_IN_FLIGHT, CHUNK_SEND_TIMEOUT,
};
use crate::history::query::{EventQuery, RawEventQuery};
use crate::history::HistoryEvent;
use crate::kube::pods::{ApiFields, PodIndex};
use crate::kube::KubeState;
use crate::self_metrics::register_counters;
use crate::server::HttpStats;
use crate::state::{HistoryClearer, StateReader};
use crate::time::{parse_time_or_ago, UnixNanos};
use crate::tracker::view::IdentityView;
use crate::{metrics, stats};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the HTTP server serves: the state, read-only, and the pods of the node.
pub struct App {
    pub state: StateReader,
    pub kube: Arc<KubeState>,
    /// Enables `DELETE /api/v1/events` (`--admin-token-file`).
    pub admin: Option<Admin>,
    /// The HTTP server's counters, which answers refused for memory count in too.
    pub http: Arc<HttpStats>,
    /// The state store, for `lifecycle_agent_store_up`; `None` with `--ephemeral`.
    pub store: Option<Arc<crate::store::Store>>,
}

/// The bearer token of `DELETE /api/v1/events` and the one write it may do.
pub struct Admin {
    pub token: String,
    pub history: HistoryClearer,
}

#[derive(Clone)]
struct AppState {
    state: StateReader,
    kube: Arc<KubeState>,
    admin: Option<Arc<Admin>>,
    registry: Arc<Registry>,
    /// One permit per `/metrics` response being encoded.
    scrapes: Arc<ScrapeSlots>,
    /// `lifecycle_agent_scrapes_rejected_total`.
    scrapes_rejected: Counter,
    /// Memory for large JSON answers being sent.
    budget: AnswerBudget,
    /// Large answers being built at once.
    builders: Arc<tokio::sync::Semaphore>,
    http: Arc<HttpStats>,
}

/// Large answers built at once, each on a blocking thread: the async workers stay free for
/// the probes and `/metrics` however many clients ask for the whole history.
const MAX_CONCURRENT_BUILDS: usize = 2;

impl AppState {
    /// Runs `build` on a blocking thread once one of [`MAX_CONCURRENT_BUILDS`] is free.
    async fn build(&self, build: impl FnOnce() -> Response + Send + 'static) -> Response {
        let Ok(_turn) = self.builders.clone().acquire_owned().await else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        match tokio::task::spawn_blocking(build).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "building an answer failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "building the answer failed",
                )
            }
        }
    }
}

/// `/metrics` responses encoded at once. Each holds a snapshot of every identity (about 5 MB
/// at 10 000 containers) until its scraper has read it; an HA pair of Prometheus servers and
/// a few people with curl stay far below this, and a flood of scrapers cannot grow memory.
pub const MAX_CONCURRENT_SCRAPES: usize = 8;

pub fn router(app: App) -> Router {
    let scrapes_rejected = Counter::default();
    let mut registry = registry(&app.state, &app.kube, &scrapes_rejected);
    app.http.register(&mut registry, app.state.node_labels());
    if let Some(store) = &app.store {
        store.register(&mut registry, app.state.node_labels());
    }
    let registry = Arc::new(registry);
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/containers", get(containers))
        .route("/api/v1/containers/{key}", get(container))
        .route("/api/v1/events", get(events).delete(clear_events))
        .route("/api/v1/stats/restarts", get(restart_stats))
        .route("/api/v1/stats/uptime", get(uptime_stats))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(AppState {
            state: app.state,
            kube: app.kube,
            admin: app.admin.map(Arc::new),
            registry,
            scrapes: ScrapeSlots::new(MAX_CONCURRENT_SCRAPES),
            scrapes_rejected,
            budget: AnswerBudget::default(),
            builders: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_BUILDS)),
            http: app.http,
        })
}

/// The registry behind `/metrics`: the scrape-time collector, the Kubernetes side's health,
/// the state's counters and the HTTP server's own (`scrapes_rejected`).
pub fn registry(
    state: &StateReader,
    kube: &Arc<KubeState>,
    scrapes_rejected: &Counter,
) -> Registry {
    let mut r = Registry::default();
    metrics::register(&mut r, state.clone(), kube.clone());
    kube.register(&mut r, state.node_labels());
    state.register(&mut r);
    register_counters(
        &mut r,
        state.node_labels(),
        vec![(
            "lifecycle_agent_scrapes_rejected",
            "/metrics requests answered 503 because the concurrent scrape limit was reached.",
            scrapes_rejected.clone(),
        )],
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": cut_message(msg.to_string()) })),
    )
        .into_response()
}

/// Error messages quote what the client sent; a 60 KB parameter is not echoed back whole.
const MAX_ERROR_CHARS: usize = 300;

fn cut_message(mut msg: String) -> String {
    if let Some((at, _)) = msg.char_indices().nth(MAX_ERROR_CHARS) {
        msg.truncate(at);
        msg.push_str("... (cut)");
    }
    msg
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme's name is
/// case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format for
/// everything else (curl, promtool).
///
/// The body is streamed: the encoder runs on a blocking thread and hands over chunks of
/// [`CHUNK_BYTES`], so a scrape of 10 000 containers (an 18 MB body) holds a few chunks instead
/// of the whole body, and a 50 ms encode never stalls the async workers that ingest events.
/// An encoding failure aborts the response mid-stream, which the scraper sees as a failed
/// scrape rather than a truncated success.
async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        PROMETHEUS_TEXT
    };
    let Some(grant) = s.scrapes.acquire().await else {
        s.scrapes_rejected.inc();
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_CONCURRENT_SCRAPES} /metrics responses are already being sent; retry later"
            ),
        );
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let registry = s.registry.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter::new(tx.clone(), runtime.clone(), grant.slot.clone());
        // A panic must not end the body as if it were complete.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if openmetrics {
                prometheus_client::encoding::text::encode(&mut out, &registry)?;
            } else {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
            }
            out.flush()
        }));
        match encoded {
            Ok(Ok(())) => {}
            _ if tx.is_closed() => {}
            Ok(Err(_)) if grant.slot.cancel.is_cancelled() => {
                tracing::debug!(
                    "a /metrics scrape whose client read nothing was stopped for a new one"
                );
            }
            Ok(Err(_)) if out.stalled => {
                tracing::warn!(
                    seconds = CHUNK_SEND_TIMEOUT.as_secs(),
                    "a /metrics scraper read nothing for too long; the scrape is aborted"
                );
            }
            _ => {
                tracing::warn!("encoding the metrics failed; the scrape is aborted");
                let failed = std::io::Error::other("encoding the metrics failed");
                let _ = runtime.block_on(tokio::time::timeout(
                    CHUNK_SEND_TIMEOUT,
                    tx.send(Err(failed)),
                ));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Waits for the server task (already told to shut down gracefully) for at most `grace`, then
/// drops the connections still open. Returns whether any were cut off.
pub async fn drain(mut server: tokio::task::JoinHandle<()>, grace: std::time::Duration) -> bool {
    if tokio::time::timeout(grace, &mut server).await.is_ok() {
        return false;
    }
    tracing::warn!(
        seconds = grace.as_secs(),
        "HTTP requests still in flight at shutdown are cut off"
    );
    server.abort();
    let _ = server.await;
    true
}

async fn readyz(State(s): State<AppState>) -> Response {
    let r = s.state.readiness();
    if r.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": r.reason })),
        )
            .into_response()
    }
}

/// An identity with its pod's allowlisted metadata (`pod_annotations`, `pod_labels`) when
/// the pod is known, joined as the metrics join it.
#[derive(Serialize)]
struct ContainerJson<'a> {
    #[serde(flatten)]
    view: &'a IdentityView,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pod_metadata: Option<ApiFields<'a>>,
}

impl<'a> ContainerJson<'a> {
    fn new(view: &'a IdentityView, pods: &'a PodIndex) -> ContainerJson<'a> {
        let pod_metadata = (!view.pod_uid.is_empty())
            .then(|| pods.for_identity(&view.pod_uid, &view.namespace, &view.pod))
            .flatten()
            .map(|p| p.api_fields());
        ContainerJson { view, pod_metadata }
    }
}

/// An event with the metadata of the pod now known under its namespace and name (events
/// carry no pod uid); events of pods no longer on the node have none.
#[derive(Serialize)]
struct EventJson<'a> {
    #[serde(flatten)]
    event: &'a HistoryEvent,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pod_metadata: Option<ApiFields<'a>>,
}

/// Bytes of JSON per container, about, without pod metadata (see [`EVENT_JSON_ESTIMATE`]).
const CONTAINER_JSON_ESTIMATE: usize = 600;

async fn containers(State(s): State<AppState>) -> Response {
    let most = s.state.tracker().identity_count();
    let Some(reservation) = s
        .budget
        .reserve(most * CONTAINER_JSON_ESTIMATE, &s.http.answers_rejected)
    else {
        return crate::answers::busy();
    };
    let (state, kube) = (s.state.clone(), s.kube.clone());
    s.build(move || {
        let (node, runtime, mut list) = {
            let t = state.tracker();
            (
                t.node().to_string(),
                t.runtime(),
                t.identities(UnixNanos::now()),
            )
        };
        list.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
        });
        let pods = kube.pods();
        let list: Vec<ContainerJson> = list.iter().map(|v| ContainerJson::new(v, &pods)).collect();
        #[derive(Serialize)]
        struct Answer<'a> {
            node: String,
            runtime: crate::event::RuntimeKind,
            containers: Vec<ContainerJson<'a>>,
        }
        let answer = Answer {
            node,
            runtime,
            containers: list,
        };
        reservation.json(&answer)
    })
    .await
}

async fn container(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    let found = s.state.tracker().find(&key, UnixNanos::now());
    match found.len() {
        0 => error(
            StatusCode::NOT_FOUND,
            format!("no tracked container matches {key:?}"),
        ),
        1 => Json(ContainerJson::new(&found[0], &s.kube.pods())).into_response(),
        n => error(
            StatusCode::CONFLICT,
            format!("{key:?} matches {n} containers; give a longer id prefix"),
        ),
    }
}

/// Parses the query string strictly: unknown or repeated parameters are errors, not ignored.
fn parse_query<T: for<'de> Deserialize<'de>>(raw: Option<String>) -> Result<T, String> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| format!("bad query: {e}"))
}

/// Bytes of JSON per history event, about (a pod container's event is 300 to 400), to
/// reserve answer memory before building it.
const EVENT_JSON_ESTIMATE: usize = 320;

async fn events(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let raw: RawEventQuery = match parse_query(raw) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let q = match EventQuery::parse(raw, UnixNanos::now()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // Reserved for the most the query can return, before it runs: a flood of requests the
    // budget cannot answer costs neither memory nor the query's CPU.
    let most = q.limit.min(s.state.tracker().history().len());
    let Some(reservation) = s
        .budget
        .reserve(most * EVENT_JSON_ESTIMATE, &s.http.answers_rejected)
    else {
        return crate::answers::busy();
    };
    let (state, kube) = (s.state.clone(), s.kube.clone());
    s.build(move || {
        let result = state.tracker().history().query(&q);
        let pods = kube.pods();
        let events: Vec<EventJson> = result
            .events
            .iter()
            .map(|event| EventJson {
                event,
                pod_metadata: (!event.subject.pod.is_empty())
                    .then(|| pods.by_name(&event.subject.namespace, &event.subject.pod))
                    .flatten()
                    .map(|p| p.api_fields()),
            })
            .collect();
        #[derive(Serialize)]
        struct Answer<'a> {
            events: Vec<EventJson<'a>>,
            truncated: bool,
        }
        let answer = Answer {
            events,
            truncated: result.truncated,
        };
        reservation.json(&answer)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    before: Option<String>,
}

/// Compares without an early exit, so response time does not leak the token's prefix.
fn token_matches(given: &str, want: &str) -> bool {
    let (g, w) = (given.as_bytes(), want.as_bytes());
    let mut diff = g.len() ^ w.len();
    for (i, b) in w.iter().enumerate() {
        diff |= usize::from(g.get(i).copied().unwrap_or(0) ^ b);
    }
    diff == 0
}

async fn clear_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some(admin) = s.admin.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "clearing the history is disabled; start the agent with --admin-token-file",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if !given.is_some_and(|g| token_matches(g, &admin.token)) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let q: ClearQuery = match parse_query(raw) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(before) = q.before else {
        return error(
            StatusCode::BAD_REQUEST,
            "parameter `before`: required (RFC 3339 or a duration such as 7d)",
        );
    };
    let before = match parse_time_or_ago(&before, UnixNanos::now()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("parameter `before`: {e}")),
    };
    let cleared = admin.history.clear_history(before);
    tracing::info!(cleared, "history cleared on request");
    Json(json!({ "cleared": cleared })).into_response()
}

async fn restart_stats(State(s): State<AppState>) -> Response {
    Json(stats::restarts(&s.state.tracker(), UnixNanos::now())).into_response()
}

async fn uptime_stats(State(s): State<AppState>) -> Response {
    Json(stats::uptime(&s.state.tracker(), UnixNanos::now())).into_response()
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::event::{EventKind, RuntimeKind};
    use crate::fixtures::EventBuilder;
    use crate::history::HistoryLimits;
    use crate::state::State;
    use axum::body::Bytes;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent state with `n` started containers, served on a loopback port.
    async fn serve(n: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = state(n);
        let stats = app.http.clone();
        tokio::spawn(crate::server::serve(
            listener,
            router(app),
            stats,
            crate::server::Limits::for_fd_limit(None),
            tokio_util::sync::CancellationToken::new(),
        ));
        addr
    }

    /// An agent state with `n` started containers.
    fn state(n: usize) -> App {
        let state = State::new(
            "node-1".into(),
            RuntimeKind::Docker,
            HistoryLimits {
                max_events: 10_000,
                retention: None,
            },
        );
        state.ingest((0..n).map(|i| {
            EventBuilder::new(EventKind::Started, &format!("{i:064x}"))
                .at(UnixNanos::from_nanos(1_000 + i as i64))
                .name(&format!("web-{i}"))
                .source()
        }));
        App {
            state: state.reader(),
            kube: Arc::new(KubeState::default()),
            admin: None,
            http: Arc::default(),
            store: None,
        }
    }

    async fn scrape(addr: std::net::SocketAddr) -> (http::response::Parts, String) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let req = http::Request::get(format!("http://{addr}/metrics"))
            .header(
                header::ACCEPT,
                "application/openmetrics-text; version=1.0.0",
            )
            .body(http_body_util::Empty::new())
            .expect("request");
        let res = tokio::time::timeout(Duration::from_secs(30), async {
            let res = client.request(req).await.expect("response");
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            (parts, String::from_utf8(bytes.to_vec()).expect("utf-8"))
        })
        .await;
        res.expect("the scrape finishes in time")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_stream_whole_in_chunks() {
        let n = 3_000;
        let addr = serve(n).await;
        let (parts, body) = scrape(addr).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(
            parts.headers.get(header::CONTENT_LENGTH).is_none(),
            "a streamed body has no length up front"
        );
        assert!(
            body.len() > 4 * crate::answers::CHUNK_BYTES,
            "{} bytes",
            body.len()
        );
        assert!(body.ends_with("# EOF\n"), "the body is complete");
        let running = body
            .lines()
            .filter(|l| l.starts_with("container_running{"))
            .count();
        assert_eq!(running, n, "every identity once, none cut at a chunk edge");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scraper_that_leaves_mid_body_does_not_wedge_the_next() {
        let addr = serve(3_000).await;
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut first = [0u8; 1024];
            let n = s.read(&mut first).await.expect("read");
            assert!(first[..n].starts_with(b"HTTP/1.1 200"));
            drop(s);
        }
        let (parts, body) = scrape(addr).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_scraper_is_cut_off_at_shutdown() {
        // A body far larger than the socket buffers, so the response cannot finish unread.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = tokio_util::sync::CancellationToken::new();
        let graceful = stop.clone();
        let app = state(20_000);
        let stats = app.http.clone();
        let server = tokio::spawn(crate::server::serve(
            listener,
            router(app),
            stats,
            crate::server::Limits::for_fd_limit(None),
            graceful,
        ));
        let (mut stalled, status) = stalled_scrape(addr).await;
        assert_eq!(status, "HTTP/1.1 200");
        stop.cancel();
        let began = std::time::Instant::now();
        assert!(
            drain(server, Duration::from_secs(1)).await,
            "the unread response was still in flight"
        );
        assert!(began.elapsed() < Duration::from_secs(10));
        // The connection is gone: reading drains what the kernel held, then ends.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stalled.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stalled connection was closed");
    }

    /// Sends a `/metrics` request and reads the status line, leaving the body unread behind a
    /// 4 KiB receive buffer.
    async fn stalled_scrape(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer size");
        let mut s = socket.connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 64];
        let n = s.read(&mut head).await.expect("read");
        let status = String::from_utf8_lossy(&head[..n.min(12)]).to_string();
        (s, status)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapers_that_read_nothing_give_their_place_to_a_new_scrape() {
        // Bodies far larger than the socket buffers: unread, each waits for its client.
        let addr = serve(20_000).await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONCURRENT_SCRAPES {
            let (s, status) = stalled_scrape(addr).await;
            assert_eq!(status, "HTTP/1.1 200");
            held.push(s);
        }
        // Once one of them has kept a chunk waiting for a second, a new scrape takes its place
        // (before that, it may get 503: every permit is busy).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (parts, body) = scrape(addr).await;
            if parts.status == StatusCode::OK {
                assert!(body.ends_with("# EOF\n"), "the new scrape is complete");
                break;
            }
            assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                std::time::Instant::now() < deadline,
                "a stalled scrape gave its place up ({attempts} attempts)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // One of the stalled scrapes was stopped: its body ends before `# EOF`.
        let mut cut = 0;
        for mut s in held {
            let mut body = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read == Ok(true) && !body.ends_with(b"# EOF\n0\r\n\r\n") {
                cut += 1;
            }
        }
        assert!(cut >= 1, "a stalled scrape was stopped");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER  s3cret "), Some("s3cret"));
        assert_eq!(bearer_token("Basic czNjcmV0"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn long_error_messages_are_cut() {
        let long = format!("parameter `container`: {:?}", "x".repeat(61_000));
        let cut = cut_message(long);
        assert!(cut.chars().count() < MAX_ERROR_CHARS + 20, "{}", cut.len());
        assert!(cut.ends_with("(cut)"));
        assert_eq!(cut_message("short".into()), "short");
        // A multi-byte character at the edge is not split.
        let wide = "é".repeat(MAX_ERROR_CHARS + 5);
        assert!(cut_message(wide).starts_with('é'));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cretX", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
