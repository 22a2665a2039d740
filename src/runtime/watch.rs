//! The reconnect/replay loop: subscribe, replay what was missed, reconcile, then follow the
//! live stream until it breaks; then back off and do it again.
//!
//! Order matters. The live stream is opened first (from `t0`, which Docker serves from its
//! ring and Podman from its event log, so nothing falls between subscribing and listing),
//! then the bounded replay from the cursor to `t0` is applied, then list + inspect reconciles
//! what no replay covers. Sources make `since` inclusive whatever their runtime does, so a
//! replay that reaches the cursor brings its event back: an overlap, proof of no gap. The
//! reading task only forwards into an unbounded channel: Docker drops events for a subscriber
//! that stops reading, so it must never wait on the tracker.
//!
//! Live and replayed events take the same path into the state ([`State::ingest`]).
//!
//! Events carry no image ID, so a container first met through an event is inspected once,
//! beside the live stream ([`Lookups`]): never by the reading task, never under the tracker's
//! lock. The queue of look-ups is the tracker's; a look-up lost with its session is covered
//! by the next reconciliation.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Source, SourceError};
use crate::event::snapshot::ContainerSnapshot;
use crate::event::{Lookup, SourceEvent, SubjectCache};
use crate::state::{Ingested, State};
use crate::time::{Nanos, UnixNanos};

const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that lasted this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Events ingested under one lock of the tracker.
const BATCH: usize = 512;
/// The live stream starts this far before the replay ends. An event is stamped before it is
/// published (Podman's CLI stamps, then appends to the log file), so one stamped just before
/// `t0` can appear after the replay has read past it; the overlap catches it, and the tracker's
/// duplicate check drops what both delivered.
const LIVE_OVERLAP: Nanos = Nanos::from_secs(2);
/// Look-ups (inspects) in flight at once. Each is one local request, and containers are
/// created far more rarely than their events arrive, so a few keep up without crowding the
/// daemon.
const LOOKUP_CONCURRENCY: usize = 4;

type Item = Result<Option<SourceEvent>, SourceError>;

/// Follows one runtime until `shutdown`, reconnecting with backoff.
pub async fn run<S: Source>(mut source: S, state: State, shutdown: CancellationToken) {
    let mut delay = BACKOFF_START;
    loop {
        let began = Instant::now();
        let result = tokio::select! {
            r = session(&mut source, &state) => r,
            _ = shutdown.cancelled() => return,
        };
        let err = match result {
            Ok(never) => match never {},
            Err(e) => e,
        };
        state.stream_lost(err.to_string());
        if began.elapsed() >= HEALTHY_SESSION {
            delay = BACKOFF_START;
        }
        warn!(endpoint = %source.endpoint(), error = %err, retry_in_ms = delay.as_millis() as u64, "runtime connection lost");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// Forwards the live stream; never waits on anything but the daemon. Equal subjects of a
/// container's events are shared first, so a backlog queued behind a busy tracker costs about
/// 100 bytes an event instead of the ~500 of its own strings.
async fn forward(
    mut stream: BoxStream<'static, Item>,
    tx: mpsc::UnboundedSender<Item>,
    endpoint: String,
) {
    let mut subjects = SubjectCache::default();
    while let Some(mut item) = stream.next().await {
        if let Ok(Some(SourceEvent::Lifecycle(ev))) = &mut item {
            subjects.share(ev);
        }
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
    let _ = tx.send(Err(SourceError::StreamEnded { endpoint }));
}

/// Aborts the reading task when a session ends, so a dead session never keeps a stream open.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connected session. Returns only with the error that ended it.
async fn session<S: Source>(source: &mut S, state: &State) -> Result<Infallible, SourceError> {
    state.connecting(source.endpoint());
    let info = source.connect().await?;
    info!(endpoint = %source.endpoint(), runtime = %info.runtime, version = %info.version, api_version = %info.api_version, "connected to runtime");
    state.connected(&info);

    let t0 = UnixNanos::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let _reader = AbortOnDrop(tokio::spawn(forward(
        source.events(Some(t0 - LIVE_OVERLAP), None),
        tx,
        source.endpoint().to_string(),
    )));

    match state.cursor() {
        Some(cursor) if source.replays() => replay(source, state, cursor, t0).await?,
        Some(_) => info!("the runtime keeps no event log: what happened meanwhile is counted by the reconciliation"),
        None => {}
    }
    let snapshot = source.snapshot().await?;
    let report = state.reconcile(&snapshot);
    info!(
        containers = snapshot.len(),
        added = report.added,
        removed = report.removed,
        inferred_restarts = report.inferred_restarts,
        "reconciled with the runtime"
    );
    state.synced();
    follow(source, state, rx).await
}

/// Follows the live stream of a connected session, looking up the containers its events
/// create beside it. Returns only with the error that ended the session.
async fn follow<S: Source>(
    source: &S,
    state: &State,
    mut rx: mpsc::UnboundedReceiver<Item>,
) -> Result<Infallible, SourceError> {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut batch = Vec::with_capacity(BATCH);
    let mut lookups = Lookups::new(source);
    loop {
        lookups.launch(state);
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return Err(SourceError::StreamEnded { endpoint: source.endpoint().to_string() });
                }
                ingest_batch(state, &mut batch).1?;
            }
            Some((asked, result)) = lookups.inflight.next(), if !lookups.inflight.is_empty() => {
                Lookups::<S>::finish(state, &asked, result);
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, source.ping()).await {
                    Ok(Ok(())) => debug!("runtime answered the liveness check"),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(SourceError::Unresponsive {
                        endpoint: source.endpoint().to_string(),
                        seconds: PING_TIMEOUT.as_secs(),
                    }),
                }
            }
        }
    }
}

type LookupResult = (Lookup, Result<Option<ContainerSnapshot>, SourceError>);

/// Inspects of containers first met through events, for the image ID no event carries: at
/// most [`LOOKUP_CONCURRENCY`] at once, polled by the session loop beside the event stream.
/// The tracker is locked only to take from its queue and to apply, never across a request.
struct Lookups<'a, S> {
    source: &'a S,
    inflight: FuturesUnordered<BoxFuture<'a, LookupResult>>,
}

impl<'a, S: Source> Lookups<'a, S> {
    fn new(source: &'a S) -> Self {
        Lookups {
            source,
            inflight: FuturesUnordered::new(),
        }
    }

    /// Starts waiting look-ups up to the limit.
    fn launch(&mut self, state: &State) {
        while self.inflight.len() < LOOKUP_CONCURRENCY {
            let Some(asked) = state.next_lookup() else {
                return;
            };
            let source = self.source;
            self.inflight.push(Box::pin(async move {
                let result = source.inspect(&asked.container_id).await;
                (asked, result)
            }));
        }
    }

    /// Applies one answer. A failed look-up does not end the session: if the runtime is
    /// gone, the stream or the liveness check says so, and the reconciliation after the
    /// reconnect brings the image ID.
    fn finish(
        state: &State,
        asked: &Lookup,
        result: Result<Option<ContainerSnapshot>, SourceError>,
    ) {
        let id = &asked.container_id;
        match result {
            Ok(Some(snapshot)) => {
                state.enrich(asked, &snapshot);
                debug!(container_id = %id, image_id = %snapshot.image_id, "container looked up");
            }
            Ok(None) => debug!(container_id = %id, "container gone before its look-up"),
            Err(e) => {
                warn!(container_id = %id, error = %e, "cannot look up a container; its image ID waits for the next reconciliation")
            }
        }
    }
}

/// Ingests forwarded items; the first error ends the session (or the replay) after the
/// events before it are ingested.
fn ingest_batch(state: &State, batch: &mut Vec<Item>) -> (Ingested, Result<(), SourceError>) {
    let mut failure = None;
    let events: Vec<SourceEvent> = batch
        .drain(..)
        .map_while(|item| match item {
            Ok(ev) => Some(ev),
            Err(e) => {
                failure = Some(e);
                None
            }
        })
        .flatten()
        .collect();
    batch.clear();
    (state.ingest(events), failure.map_or(Ok(()), Err))
}

/// Ingests the runtime's events from `cursor` to `until`. If none of them was seen before,
/// the runtime no longer holds the cursor's event: events may have been lost in between.
async fn replay<S: Source>(
    source: &S,
    state: &State,
    cursor: UnixNanos,
    until: UnixNanos,
) -> Result<(), SourceError> {
    let mut stream = source.events(Some(cursor), Some(until)).ready_chunks(BATCH);
    let mut overlapped = false;
    let mut replayed = 0u64;
    while let Some(mut chunk) = stream.next().await {
        let (done, result) = ingest_batch(state, &mut chunk);
        overlapped |= done.duplicates > 0;
        replayed += done.recorded;
        result?;
    }
    if !overlapped {
        state.possibly_missed();
        warn!(cursor = %cursor.to_rfc3339(), "the runtime no longer holds the last event processed: events in between may be lost (reconciling from list + inspect)");
    }
    info!(
        replayed,
        overlapped, "replayed events missed while disconnected"
    );
    Ok(())
}
