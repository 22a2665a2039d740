//! Memory held by HTTP answers, bounded in total (README "Security and limits").
//!
//! - **JSON answers** (`/api/v1/events?limit=10000` is about 3 MB) are built whole, then
//!   charged to a shared [`AnswerBudget`] until their body has been handed to the connection;
//!   while the budget is spent, large answers get 503 with `Retry-After` instead of growing
//!   memory with every client that asks and never reads. The connection's write timeout
//!   (`server`) frees what a client that stopped reading holds.
//! - **`/metrics` scrapes** are encoded into a few 64 KiB chunks at a time ([`ChunkWriter`])
//!   and hold a permit while they stream ([`ScrapeSlots`]). A scrape whose
//!   client has not taken a chunk for [`STALL_PREEMPT`] gives its permit up to a new scrape,
//!   so clients that ask and never read cannot keep Prometheus out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

/// Bytes of JSON answers held at once, all clients together.
pub const ANSWER_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Answers up to this size are never refused: probes, stats, errors and small lists.
const SMALL_ANSWER_BYTES: usize = 64 * 1024;
/// Answers are encoded in chunks of this size.
const SLICE_BYTES: usize = 64 * 1024;

/// The memory set aside for JSON answers being sent.
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl Default for AnswerBudget {
    fn default() -> Self {
        AnswerBudget::new(ANSWER_BUDGET_BYTES)
    }
}

impl AnswerBudget {
    pub fn new(total: usize) -> AnswerBudget {
        AnswerBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Sets aside `estimate` bytes for an answer about to be built; `None` (counted in
    /// `rejected`; answer [`busy`]) when the budget cannot hold it now. Reserving before
    /// building means a flood of requests costs neither the memory nor the CPU of answers
    /// it cannot send.
    pub fn reserve(&self, estimate: usize, rejected: &Counter) -> Option<Reservation> {
        let charge = self.charge(estimate);
        if charge == 0 {
            return Some(Reservation {
                budget: self.clone(),
                permit: None,
            });
        }
        match self.bytes.clone().try_acquire_many_owned(charge) {
            Ok(permit) => Some(Reservation {
                budget: self.clone(),
                permit: Some(permit),
            }),
            Err(_) => {
                rejected.inc();
                None
            }
        }
    }

    /// `value` as a JSON answer with status 200, or 503 when the budget cannot hold it now.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> Response {
        Reservation {
            budget: self.clone(),
            permit: None,
        }
        .json(value)
    }

    /// What an answer of `bytes` is charged: nothing when small, at most the whole budget.
    fn charge(&self, bytes: usize) -> u32 {
        if bytes <= SMALL_ANSWER_BYTES {
            return 0;
        }
        u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX)
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// The answer when the budget is spent: 503, retry in a second.
pub fn busy() -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "error": "too many large answers are being sent at once; retry later or ask for less (limit)"
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// Budget set aside for one answer.
pub struct Reservation {
    budget: AnswerBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// `value` as a JSON answer with status 200, its charge fitted to its real size: an
    /// answer larger than reserved takes more if the budget has it (else it goes out
    /// anyway, over by the estimate's error), a smaller one gives the rest back.
    ///
    /// The body is encoded into separate 64 KiB chunks, each holding its share of the
    /// charge until the connection has written it: no large block to reallocate while it
    /// grows or to fragment the heap afterwards, and the charge follows what the agent
    /// still holds rather than what the kernel's socket buffer has taken.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Response {
        let mut out = Chunks::default();
        if let Err(e) = serde_json::to_writer(&mut out, value) {
            tracing::warn!(error = %e, "encoding a JSON answer failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": "encoding the answer failed" })),
            )
                .into_response();
        }
        let len = out.len;
        let json = [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )];
        let want = usize::try_from(self.budget.charge(len)).unwrap_or(usize::MAX);
        let mut permit = self.permit;
        let held = permit.as_ref().map_or(0, |p| p.num_permits());
        if want > held {
            let more = u32::try_from(want - held).unwrap_or(u32::MAX);
            match self.budget.bytes.clone().try_acquire_many_owned(more) {
                Ok(extra) => match &mut permit {
                    Some(p) => p.merge(extra),
                    None => permit = Some(extra),
                },
                // Nothing reserved and no room: a large answer nobody planned for.
                Err(_) if permit.is_none() => return busy(),
                Err(_) => {}
            }
        } else if want == 0 {
            permit = None;
        } else if let Some(p) = &mut permit {
            drop(p.split(held - want));
        }
        let mut chunks = Vec::with_capacity(out.done.len() + 1);
        let last = std::mem::take(&mut out.current);
        for data in out.done.into_iter().chain(std::iter::once(last)) {
            if data.is_empty() {
                continue;
            }
            let share = permit.as_mut().and_then(|p| {
                let n = data.len().min(p.num_permits());
                p.split(n)
            });
            chunks.push(Ok::<_, std::convert::Infallible>(Bytes::from_owner(
                ChargedChunk {
                    data,
                    _share: share,
                },
            )));
        }
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let mut r = (json, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        r
    }
}

/// An answer being encoded, in chunks of [`SLICE_BYTES`].
#[derive(Default)]
struct Chunks {
    done: Vec<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.current.capacity() == 0 {
            self.current.reserve_exact(SLICE_BYTES);
        }
        let room = SLICE_BYTES.saturating_sub(self.current.len());
        let n = buf.len().min(room);
        self.current.extend_from_slice(&buf[..n]);
        self.len += n;
        if self.current.len() >= SLICE_BYTES {
            self.done.push(std::mem::take(&mut self.current));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One chunk of an answer with its share of the budget, released when the connection
/// drops the chunk (written, or the client gone).
struct ChargedChunk {
    data: Vec<u8>,
    _share: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for ChargedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Size of one `/metrics` body chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks encoded ahead of a slow scraper.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// A scraper that reads nothing for this long is given up on (Prometheus times out sooner).
pub const CHUNK_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub type Chunk = Result<Bytes, std::io::Error>;

/// A `fmt::Write` that sends what is written in chunks to the response body; a write fails
/// (ending the encoding) once the scraper has gone or stalled.
pub struct ChunkWriter {
    buf: String,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
    /// The scraper read nothing for [`CHUNK_SEND_TIMEOUT`].
    pub stalled: bool,
    /// Where a new scrape sees that this one waits for its client, and stops it.
    slot: Arc<ScrapeSlot>,
}

impl ChunkWriter {
    pub fn new(
        tx: tokio::sync::mpsc::Sender<Chunk>,
        runtime: tokio::runtime::Handle,
        slot: Arc<ScrapeSlot>,
    ) -> Self {
        ChunkWriter {
            buf: String::with_capacity(CHUNK_BYTES + 4096),
            tx,
            runtime,
            stalled: false,
            slot,
        }
    }

    pub fn flush(&mut self) -> std::fmt::Result {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK_BYTES + 4096));
        self.slot.waiting();
        let cancel = self.slot.cancel.clone();
        let sent = self.runtime.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(CHUNK_SEND_TIMEOUT, self.tx.send(Ok(Bytes::from(chunk)))) => Some(r),
                _ = cancel.cancelled() => None,
            }
        });
        self.slot.taken();
        match sent {
            None => Err(std::fmt::Error),
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(_))) => Err(std::fmt::Error),
            Some(Err(_)) => {
                self.stalled = true;
                Err(std::fmt::Error)
            }
        }
    }
}

impl std::fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// A scrape whose client has taken no chunk for this long gives its permit up to a new one.
pub const STALL_PREEMPT: Duration = Duration::from_secs(1);
/// How long a new scrape waits for a preempted one to let go.
const PREEMPT_WAIT: Duration = Duration::from_secs(2);

/// The `/metrics` scrapes being sent, each with its permit.
#[derive(Debug)]
pub struct ScrapeSlots {
    permits: Arc<Semaphore>,
    active: Mutex<Vec<Arc<ScrapeSlot>>>,
    stall_preempt: Duration,
}

/// One scrape in flight: since when its client has not taken a chunk, and how to stop it.
#[derive(Debug)]
pub struct ScrapeSlot {
    base: Instant,
    /// Milliseconds since `base` at which the current chunk started waiting; 0: not waiting.
    waiting_since_ms: AtomicU64,
    pub cancel: CancellationToken,
}

impl ScrapeSlot {
    fn new() -> ScrapeSlot {
        ScrapeSlot {
            base: Instant::now(),
            waiting_since_ms: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        }
    }

    /// The encoder is about to wait for the client to take a chunk.
    pub fn waiting(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.waiting_since_ms.store(ms, Ordering::Relaxed);
    }

    /// The client took the chunk.
    pub fn taken(&self) {
        self.waiting_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the client has kept the current chunk waiting.
    fn stalled_for(&self, now: Instant) -> Option<Duration> {
        match self.waiting_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.base + Duration::from_millis(ms))),
        }
    }
}

/// A scrape's right to stream; dropping it frees the permit and the slot.
pub struct ScrapeGrant {
    pub slot: Arc<ScrapeSlot>,
    _permit: OwnedSemaphorePermit,
    slots: Arc<ScrapeSlots>,
}

impl Drop for ScrapeGrant {
    fn drop(&mut self) {
        self.slots
            .active
            .lock()
            .retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

impl ScrapeSlots {
    pub fn new(max: usize) -> Arc<ScrapeSlots> {
        ScrapeSlots::with_stall(max, STALL_PREEMPT)
    }

    fn with_stall(max: usize, stall_preempt: Duration) -> Arc<ScrapeSlots> {
        Arc::new(ScrapeSlots {
            permits: Arc::new(Semaphore::new(max)),
            active: Mutex::new(Vec::new()),
            stall_preempt,
        })
    }

    /// A permit to stream a scrape: a free one, else the one of the scrape stalled longest
    /// (at least [`STALL_PREEMPT`]), which is stopped. `None` when every scrape is reading.
    pub async fn acquire(self: &Arc<Self>) -> Option<ScrapeGrant> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let now = Instant::now();
                let victim = self
                    .active
                    .lock()
                    .iter()
                    .filter_map(|s| Some((s.stalled_for(now)?, s.clone())))
                    .filter(|(d, _)| *d >= self.stall_preempt)
                    .max_by_key(|(d, _)| *d)
                    .map(|(_, s)| s);
                let victim = victim?;
                tracing::debug!(
                    "a /metrics client that reads nothing gives its place up to a new scrape"
                );
                victim.cancel.cancel();
                tokio::time::timeout(PREEMPT_WAIT, self.permits.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let slot = Arc::new(ScrapeSlot::new());
        self.active.lock().push(slot.clone());
        Some(ScrapeGrant {
            slot,
            _permit: permit,
            slots: self.clone(),
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn large_answers_share_a_budget_and_free_it_when_sent() {
        let budget = AnswerBudget::new(300_000);
        let rejected = Counter::default();
        let big = vec!["x".repeat(1000); 200]; // about 200 KB of JSON
        let first = budget.json(&big);
        assert_eq!(first.status(), StatusCode::OK);
        assert!(budget.available() < 100_000);
        let second = budget.json(&big);
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Reserved before building: refused without building, and counted.
        assert!(budget.reserve(200_000, &rejected).is_none());
        assert_eq!(rejected.get(), 1);
        // Small answers pass whatever the budget.
        assert_eq!(budget.json(&"ok").status(), StatusCode::OK);
        let body = first.into_body().collect().await.expect("body").to_bytes();
        let back: Vec<String> = serde_json::from_slice(&body).expect("json");
        assert_eq!(back, big);
        assert_eq!(budget.available(), 300_000);
        // An answer larger than the whole budget is sent when the budget is free.
        let huge = vec!["y".repeat(1000); 400];
        assert_eq!(budget.json(&huge).status(), StatusCode::OK);
        // A reservation too small for its answer takes the rest; one too large gives back.
        let r = budget.reserve(100_000, &rejected).expect("room");
        assert_eq!(budget.available(), 200_000);
        let fitted = r.json(&big);
        let len: usize = fitted
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("length");
        assert!(len > 100_000);
        assert_eq!(budget.available(), 300_000 - len);
        drop(fitted);
        assert_eq!(budget.available(), 300_000);
        let r = budget.reserve(250_000, &rejected).expect("room");
        let fitted = r.json(&big);
        assert_eq!(
            budget.available(),
            300_000 - len,
            "the surplus is given back"
        );
        drop(fitted);
    }

    #[tokio::test]
    async fn a_stalled_scrape_gives_its_permit_up() {
        // Stalled, but not for long enough: it keeps its place.
        let patient = ScrapeSlots::new(1);
        let first = patient.acquire().await.expect("free permit");
        first.slot.waiting();
        assert!(patient.acquire().await.is_none());
        assert!(!first.slot.cancel.is_cancelled());

        let slots = ScrapeSlots::with_stall(1, Duration::ZERO);
        let first = slots.acquire().await.expect("free permit");
        // The first client is reading: a second scrape finds no place.
        assert!(slots.acquire().await.is_none());
        assert!(!first.slot.cancel.is_cancelled());
        first.slot.waiting();
        let cancel = first.slot.cancel.clone();
        let second = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.is_some() }
        });
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("the stalled scrape is told to stop");
        drop(first);
        assert!(second.await.expect("join"));
    }
}
