//! Memory held by HTTP answers, bounded in total (README "Security and limits").
//!
//! - **JSON answers** (`/api/v1/events?limit=10000` is about 3 MB) are built whole, then
//!   charged to a shared [`AnswerBudget`] until their body has been handed to the connection;
//!   while the budget is spent, large answers get 503 with `Retry-After` instead of growing
//!   memory with every client that asks and never reads. The connection's write timeout
//!   (`server`) frees what a client that stopped reading holds.
//! - **`/metrics` scrapes** hold a permit while they stream ([`ScrapeSlots`]). A scrape whose
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

use crate::agent::Counter;

/// Bytes of JSON answers held at once, all clients together.
pub const ANSWER_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// Answers up to this size are never refused: probes, stats, errors and small lists.
const SMALL_ANSWER_BYTES: usize = 64 * 1024;
/// A body is handed to the connection in slices of this size.
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

    /// `value` as a JSON answer with status 200, or 503 when the budget cannot hold it now
    /// (counted in `rejected`).
    pub fn json<T: serde::Serialize>(&self, value: &T, rejected: &Counter) -> Response {
        let body = match serde_json::to_vec(value) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "encoding a JSON answer failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(serde_json::json!({ "error": "encoding the answer failed" })),
                )
                    .into_response();
            }
        };
        let json = [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )];
        if body.len() <= SMALL_ANSWER_BYTES {
            return (json, body).into_response();
        }
        // An answer larger than the whole budget takes all of it.
        let charge = u32::try_from(body.len().min(self.total)).unwrap_or(u32::MAX);
        let Ok(permit) = self.bytes.clone().try_acquire_many_owned(charge) else {
            rejected.inc();
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": "too many large answers are being sent at once; retry later or ask for less (limit)"
                })),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        };
        let len = body.len();
        let body = Body::from_stream(Charged {
            rest: Bytes::from(body),
            permit: Some(permit),
        });
        let mut r = (json, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        r
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A body in slices that holds its share of the budget until its last slice is taken (or
/// the connection drops it).
struct Charged {
    rest: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl futures_util::Stream for Charged {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.rest.is_empty() {
            self.permit = None;
            return std::task::Poll::Ready(None);
        }
        let n = self.rest.len().min(SLICE_BYTES);
        let slice = self.rest.split_to(n);
        if self.rest.is_empty() {
            // The slices share one allocation, freed when the connection has written them.
            self.rest = Bytes::new();
        }
        std::task::Poll::Ready(Some(Ok(slice)))
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
        let first = budget.json(&big, &rejected);
        assert_eq!(first.status(), StatusCode::OK);
        assert!(budget.available() < 100_000);
        let second = budget.json(&big, &rejected);
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rejected.get(), 1);
        // Small answers pass whatever the budget.
        assert_eq!(budget.json(&"ok", &rejected).status(), StatusCode::OK);
        let body = first.into_body().collect().await.expect("body").to_bytes();
        let back: Vec<String> = serde_json::from_slice(&body).expect("json");
        assert_eq!(back, big);
        assert_eq!(budget.available(), 300_000);
        // An answer larger than the whole budget is sent when the budget is free.
        let huge = vec!["y".repeat(1000); 400];
        assert_eq!(budget.json(&huge, &rejected).status(), StatusCode::OK);
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
