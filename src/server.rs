//! The HTTP server's connection handling: an accept loop over hyper with the limits that keep
//! an open, unauthenticated port from hurting the node (README "Security and limits").
//!
//! - **Timeouts.** A request head must arrive whole within [`Limits::header_timeout`] of the
//!   connection opening or of the previous response ending: a client that sends nothing, half
//!   a request line or one byte every few seconds, and an idle keep-alive connection, are all
//!   closed then. A client that stops reading its answer is dropped once a write has been
//!   blocked for [`Limits::write_stall`], and any connection without progress either way for
//!   [`Limits::idle`] is dropped too; dropping it frees the answer it held.
//! - **A cap on open connections**, derived from the process's file-descriptor limit so the
//!   agent's own calls to the runtime socket and the store always find a descriptor. At the
//!   cap, a new connection takes the place of the one that made no progress for longest
//!   (idle, or not reading), so a flood of idle connections cannot keep the kubelet's probes
//!   out; when every connection is busy, a small reserve answers only `/healthz` and
//!   `/readyz`, and beyond that a connection is closed as soon as it is accepted.
//! - **Failing `accept`** (the descriptor limit reached anyway) backs off instead of spinning.
//!
//! Refusals and accept failures are counted (`lifecycle_agent_http_*`) and logged when they
//! start and when they end, not per connection.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, info, warn};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::self_metrics::{self, register_counters, NodeLabels};

/// Connection limits and timeouts of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served normally at once.
    pub max_connections: usize,
    /// Connections beyond that which still answer the probes (and 503 for anything else).
    pub probe_reserve: usize,
    /// Time to receive a whole request head, counted from the connection's start or the end
    /// of the previous response (so it is the keep-alive idle timeout as well).
    pub header_timeout: Duration,
    /// Time a write may stay blocked (the client reads nothing) before the connection is
    /// dropped.
    pub write_stall: Duration,
    /// Time without any progress in either direction before the connection is dropped.
    pub idle: Duration,
}

/// Connections the server accepts at most, whatever the descriptor limit.
const MAX_CONNECTIONS: usize = 512;
/// Connections above the cap that still answer `/healthz` and `/readyz`.
const PROBE_RESERVE: usize = 32;

impl Limits {
    /// Limits for a process allowed `max_fds` open descriptors (`None`: unknown). At most a
    /// quarter of them serve HTTP, so a full server never takes the descriptors the runtime
    /// connection, the store and the Kubernetes client need.
    pub fn for_fd_limit(max_fds: Option<u64>) -> Limits {
        let quarter = max_fds
            .map(|n| usize::try_from(n / 4).unwrap_or(usize::MAX))
            .unwrap_or(MAX_CONNECTIONS);
        let max_connections = quarter.clamp(16, MAX_CONNECTIONS);
        Limits {
            max_connections,
            probe_reserve: (max_connections / 8).clamp(4, PROBE_RESERVE),
            // Longer than Prometheus's usual 30 s scrape interval, so its keep-alive
            // connection is reused rather than raced; short of a minute.
            header_timeout: Duration::from_secs(45),
            write_stall: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// The server's own counters (`lifecycle_agent_http_*`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because the cap and the probe reserve were full.
    pub refused: Counter,
    /// Connections without progress closed to make room for a new one over the cap.
    pub evicted: Counter,
    /// Failed `accept` calls (the descriptor limit reached, most often).
    pub accept_errors: Counter,
    /// Connections closed for a timeout (a head too slow, a client not reading, idle).
    pub timed_out: Counter,
    /// Large JSON answers refused (503) because the memory set aside for answers was in use.
    pub answers_rejected: Counter,
}

impl HttpStats {
    /// Registers the server's series: `lifecycle_agent_http_connections`,
    /// `lifecycle_agent_http_connections_closed_total{reason}`, and the counters of failed
    /// accepts and refused answers.
    pub fn register(self: &Arc<Self>, r: &mut Registry, labels: NodeLabels) {
        register_counters(
            r,
            labels.clone(),
            vec![
                ("lifecycle_agent_http_accept_errors", "Failed accepts of HTTP connections (the file-descriptor limit reached, most often).", self.accept_errors.clone()),
                ("lifecycle_agent_http_answers_rejected", "Large JSON answers refused with 503 because the memory set aside for answers in flight was in use.", self.answers_rejected.clone()),
            ],
        );
        r.register_collector(Box::new(ConnectionSeries {
            stats: self.clone(),
            labels,
        }));
    }
}

/// The series of open and closed connections, read at scrape time.
struct ConnectionSeries {
    stats: Arc<HttpStats>,
    labels: NodeLabels,
}

impl std::fmt::Debug for ConnectionSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSeries").finish_non_exhaustive()
    }
}

impl Collector for ConnectionSeries {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let owned = (self.labels)();
        let labels = self_metrics::borrowed(&owned);
        let mut family = enc.encode_descriptor(
            "lifecycle_agent_http_connections",
            "HTTP connections open now.",
            None,
            MetricType::Gauge,
        )?;
        let open = self.stats.open.load(Ordering::Relaxed);
        ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
        let mut family = enc.encode_descriptor(
            "lifecycle_agent_http_connections_closed",
            "HTTP connections the agent closed, by `reason`: `limit` (refused at the connection cap), `evicted` (idle or not reading, closed for a new one at the cap), `timeout` (request head too slow, idle keep-alive, or a client not reading).",
            None,
            MetricType::Counter,
        )?;
        for (reason, c) in [
            ("limit", &self.stats.refused),
            ("evicted", &self.stats.evicted),
            ("timeout", &self.stats.timed_out),
        ] {
            let mut with_reason = labels.clone();
            with_reason.push(("reason", reason));
            ConstCounter::new(c.get()).encode(family.encode_family(&with_reason)?)?;
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `stop`, then lets open connections finish their current
/// request (the caller bounds how long: `api::drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stats: Arc<HttpStats>,
    limits: Limits,
    stop: CancellationToken,
) {
    let normal = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(limits.probe_reserve));
    let open = Arc::new(OpenConnections::default());
    let mut conns = JoinSet::new();
    let mut over_cap = false;
    let mut accept_failing = false;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    info!(
        max_connections = limits.max_connections,
        probe_reserve = limits.probe_reserve,
        "HTTP connection limits"
    );
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                stats.accept_errors.inc();
                if !accept_failing {
                    warn!(error = %e, open = stats.open.load(Ordering::Relaxed), "accepting HTTP connections fails (the file-descriptor limit?); backing off");
                    accept_failing = true;
                }
                // EMFILE leaves the listener readable: without a pause this loop would spin.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if accept_failing {
            info!(
                failures = stats.accept_errors.get(),
                "accepting HTTP connections again"
            );
            accept_failing = false;
            backoff = ACCEPT_BACKOFF_MIN;
        }
        let mut permit = normal.clone().try_acquire_owned().ok();
        if permit.is_none() && open.evict_stalest(Instant::now(), EVICTABLE_AFTER) {
            stats.evicted.inc();
            permit = tokio::time::timeout(EVICTION_WAIT, normal.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let (permit, probes_only) = match permit {
            Some(p) => {
                if over_cap && normal.available_permits() > limits.max_connections / 10 {
                    info!(
                        refused = stats.refused.get(),
                        evicted = stats.evicted.get(),
                        "HTTP connections well below the limit again"
                    );
                    over_cap = false;
                }
                (p, false)
            }
            None => {
                if !over_cap {
                    warn!(
                        max_connections = limits.max_connections,
                        "HTTP connection limit reached, every connection busy: new ones answer only /healthz and /readyz, or are closed"
                    );
                    over_cap = true;
                }
                match reserve.clone().try_acquire_owned() {
                    Ok(p) => (p, true),
                    Err(_) => {
                        stats.refused.inc();
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let conn = Connection {
            app: app.clone(),
            stats: stats.clone(),
            limits,
            stop: stop.clone(),
            probes_only,
            open: open.clone(),
        };
        conns.spawn(conn.run(stream, permit));
    }
    // Graceful: every connection finishes the request it is on and closes.
    while conns.join_next().await.is_some() {}
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Over the cap, a connection without progress for this long is closed for a new one.
/// A probe (or any client) sends its request within milliseconds of connecting and is
/// read or written to continuously until its answer is sent, so only idle or stalled
/// connections qualify.
const EVICTABLE_AFTER: Duration = Duration::from_millis(250);
/// How long a new connection waits for an evicted one to let go of its place.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// The connections served normally, to find the one to evict when the cap is reached.
#[derive(Default)]
struct OpenConnections {
    next_id: AtomicU64,
    conns: parking_lot::Mutex<std::collections::HashMap<u64, Arc<Activity>>>,
}

impl OpenConnections {
    fn insert(&self, a: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().insert(id, a);
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// Tells the connection that made no progress for longest (at least `min`) to close.
    fn evict_stalest(&self, now: Instant, min: Duration) -> bool {
        let conns = self.conns.lock();
        let victim = conns
            .values()
            .filter(|a| !a.evict.is_cancelled())
            .map(|a| (a.last_progress(), a))
            .filter(|(t, _)| now.saturating_duration_since(*t) >= min)
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, a)) => {
                a.evict.cancel();
                true
            }
            None => false,
        }
    }
}

struct Connection {
    app: Router,
    stats: Arc<HttpStats>,
    limits: Limits,
    stop: CancellationToken,
    probes_only: bool,
    open: Arc<OpenConnections>,
}

impl Connection {
    async fn run(self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let _permit = permit;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(&self.stats);
        let activity = Arc::new(Activity::new());
        let id = (!self.probes_only).then(|| self.open.insert(activity.clone()));
        let _registered = Registered(&self.open, id);
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = ProbeGate {
            app: self.app.clone(),
            probes_only: self.probes_only,
        };
        let header_timeout = if self.probes_only {
            PROBE_ONLY_HEADER_TIMEOUT.min(self.limits.header_timeout)
        } else {
            self.limits.header_timeout
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(!self.probes_only);
        let conn = builder.serve_connection(
            io,
            hyper::service::service_fn(move |req| {
                let mut s = service.clone();
                async move { s.call(req).await }
            }),
        );
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            // Re-armed whenever a write starts to block, so the stall deadline applies; no
            // wake-ups otherwise while a connection is idle.
            let deadline = activity.deadline(&self.limits);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        if e.is_timeout() {
                            self.stats.timed_out.inc();
                        }
                        debug!(error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if activity.expired(&self.limits, Instant::now()) {
                        self.stats.timed_out.inc();
                        debug!("HTTP connection dropped: no progress (a client that stopped reading, or idle)");
                        return;
                    }
                }
                _ = activity.blocked.notified() => {}
                _ = activity.evict.cancelled() => {
                    debug!("HTTP connection without progress closed for a new one");
                    return;
                }
                _ = self.stop.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

struct Registered<'a>(&'a OpenConnections, Option<u64>);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.1 {
            self.0.remove(id);
        }
    }
}

/// A connection over the cap waits this long at most for its request head.
const PROBE_ONLY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

struct OpenGuard<'a>(&'a HttpStats);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router, or for a connection over the cap only its probes (503 for the rest).
#[derive(Clone)]
struct ProbeGate {
    app: Router,
    probes_only: bool,
}

impl ProbeGate {
    async fn call(&mut self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        if self.probes_only && !matches!(req.uri().path(), "/healthz" | "/readyz") {
            let mut r = Response::new(Body::from(
                "{\"error\":\"too many open connections; retry later\"}",
            ));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return Ok(r);
        }
        self.app.call(req.map(Body::new)).await
    }
}

/// When a connection last made progress, and since when a write has been blocked, in
/// milliseconds since `base`.
struct Activity {
    base: Instant,
    progress_ms: AtomicU64,
    write_blocked_ms: AtomicU64,
    write_blocked: AtomicBool,
    /// Cancelled to close the connection for a new one over the cap.
    evict: CancellationToken,
    /// Raised when a write starts to block, to re-arm the connection's deadline.
    blocked: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            progress_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            evict: CancellationToken::new(),
            blocked: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn progressed(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.progressed();
        self.write_blocked.store(false, Ordering::Relaxed);
    }

    fn write_pending(&self) {
        if !self.write_blocked.swap(true, Ordering::Relaxed) {
            self.write_blocked_ms
                .store(self.now_ms(), Ordering::Relaxed);
            self.blocked.notify_one();
        }
    }

    fn last_progress(&self) -> Instant {
        self.base + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }

    /// The earliest time the connection could be found dead.
    fn deadline(&self, limits: &Limits) -> Instant {
        let idle = self.last_progress() + limits.idle;
        if self.write_blocked.load(Ordering::Relaxed) {
            let blocked = Duration::from_millis(self.write_blocked_ms.load(Ordering::Relaxed));
            idle.min(self.base + blocked + limits.write_stall)
        } else {
            idle
        }
    }

    fn expired(&self, limits: &Limits, now: Instant) -> bool {
        now >= self.deadline(limits)
    }
}

/// A socket that reports its progress to [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Watched {
    fn note(&self, r: &std::task::Poll<std::io::Result<usize>>) {
        match r {
            std::task::Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            std::task::Poll::Pending => self.activity.write_pending(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn limits_leave_most_descriptors_to_the_rest_of_the_agent() {
        let l = Limits::for_fd_limit(Some(1024));
        assert_eq!(l.max_connections, 256);
        assert_eq!(l.probe_reserve, 32);
        assert!(l.max_connections + l.probe_reserve < 1024 / 2);
        let l = Limits::for_fd_limit(Some(1 << 20));
        assert_eq!(l.max_connections, MAX_CONNECTIONS);
        let l = Limits::for_fd_limit(Some(20));
        assert_eq!((l.max_connections, l.probe_reserve), (16, 4));
        assert_eq!(Limits::for_fd_limit(None).max_connections, MAX_CONNECTIONS);
        assert!(l.header_timeout < Duration::from_secs(60));
    }

    #[test]
    fn over_the_cap_the_connection_stalled_longest_is_evicted() {
        let open = OpenConnections::default();
        let old = Arc::new(Activity::new());
        let fresh = Arc::new(Activity::new());
        let (a, b) = (open.insert(old.clone()), open.insert(fresh.clone()));
        fresh.progressed();
        let now = fresh.last_progress();
        // Nobody idle for a second yet.
        assert!(!open.evict_stalest(now, Duration::from_secs(1)));
        let later = now + Duration::from_secs(2);
        assert!(open.evict_stalest(later, Duration::from_secs(1)));
        assert!(old.evict.is_cancelled() && !fresh.evict.is_cancelled());
        // Already told to go: the next eviction takes another one.
        assert!(open.evict_stalest(later, Duration::from_secs(1)));
        assert!(fresh.evict.is_cancelled());
        assert!(!open.evict_stalest(later, Duration::from_secs(1)));
        open.remove(a);
        open.remove(b);
        assert!(open.conns.lock().is_empty());
    }

    #[test]
    fn a_blocked_write_expires_sooner_than_idleness() {
        let limits = Limits::for_fd_limit(None);
        let a = Activity::new();
        a.progressed();
        let start = a.base;
        assert!(!a.expired(&limits, start + Duration::from_secs(30)));
        assert!(a.expired(&limits, start + limits.idle + Duration::from_millis(10)));
        a.write_pending();
        assert!(a.expired(
            &limits,
            start + limits.write_stall + Duration::from_millis(10)
        ));
        a.wrote();
        assert!(!a.expired(&limits, start + limits.write_stall));
    }
}
