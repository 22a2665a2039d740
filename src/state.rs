//! The agent's state as one object with verbs: the tracker, the runtime connection's
//! readiness and the counters of what happened to events and the store.
//!
//! [`State`] is the writer. Its methods are the only way anything changes, and each one
//! that changes what the store keeps raises the change signal itself, so the flusher never
//! misses a change because a caller forgot to. [`StateReader`] is the read-only handle the
//! HTTP server and `/metrics` get; [`HistoryClearer`] is the one write the API may do
//! (`DELETE /api/v1/events`, only with an admin token). Live and replayed events go through
//! the same [`State::ingest`], so both are counted the same way (see `docs/design.md`,
//! "Replay and reconciliation").

use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::debug;

use crate::event::snapshot::ContainerSnapshot;
use crate::event::{Lookup, RuntimeKind, SourceEvent};
use crate::history::HistoryLimits;
use crate::labels::cut_label_value;
use crate::runtime::RuntimeInfo;
use crate::self_metrics::{register_counters, NodeLabels};
use crate::time::UnixNanos;
use crate::tracker::persist::{Delta, Saved};
use crate::tracker::reconcile::ReconcileReport;
use crate::tracker::{Applied, Tracker};

/// Whether the runtime's initial sync is done and its stream connected (`/readyz`).
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
}

/// The counters the state's verbs raise (`lifecycle_agent_*_total`).
#[derive(Debug, Default)]
struct StateCounters {
    events_processed: Counter,
    events_duplicate: Counter,
    stream_reconnects: Counter,
    events_possibly_missed: Counter,
    store_writes: Counter,
    store_errors: Counter,
    store_recoveries: Counter,
}

impl StateCounters {
    fn register(&self, r: &mut Registry, labels: NodeLabels) {
        let c = |name, help, counter: &Counter| (name, help, counter.clone());
        register_counters(
            r,
            labels,
            vec![
                c("lifecycle_agent_events_processed", "Runtime events recorded.", &self.events_processed),
                c("lifecycle_agent_events_duplicate", "Replayed events dropped because they were already processed.", &self.events_duplicate),
                c("lifecycle_agent_stream_reconnects", "Times the runtime connection was lost and retried.", &self.stream_reconnects),
                c("lifecycle_agent_events_possibly_missed", "Replays that could not reach back to the last processed event (the runtime no longer held it); the gap was reconciled from list + inspect.", &self.events_possibly_missed),
                c("lifecycle_agent_store_writes", "Group commits written to the state store.", &self.store_writes),
                c("lifecycle_agent_store_errors", "Failed state store writes (retried with the next commit).", &self.store_errors),
                c("lifecycle_agent_store_recoveries", "Unusable state files moved aside and rebuilt from the runtime.", &self.store_recoveries),
            ],
        );
    }
}

#[derive(Debug)]
struct Inner {
    tracker: RwLock<Tracker>,
    readiness: Mutex<Readiness>,
    counters: StateCounters,
    /// Raised after a change the store keeps, so the flusher sleeps while nothing changes.
    changed: Notify,
}

/// What one [`State::ingest`] did, for the replay's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events recorded in the history.
    pub recorded: u64,
    /// Events dropped as already processed: a replay that has any reached back far enough.
    pub duplicates: u64,
}

/// The writer: the runtime watcher, the store's flusher and housekeeping hold one.
#[derive(Debug, Clone)]
pub struct State(Arc<Inner>);

/// The read-only handle of the HTTP server and `/metrics`.
#[derive(Debug, Clone)]
pub struct StateReader(Arc<Inner>);

/// The one write the API may do: clear the history (`DELETE /api/v1/events`).
#[derive(Debug, Clone)]
pub struct HistoryClearer(Arc<Inner>);

impl State {
    /// A state for `node` with no container known yet. `runtime` labels series until a
    /// socket answers (or a saved state says otherwise).
    pub fn new(node: String, runtime: RuntimeKind, limits: HistoryLimits) -> State {
        State(Arc::new(Inner {
            tracker: RwLock::new(Tracker::new(node, runtime, limits)),
            readiness: Mutex::new(Readiness {
                ready: false,
                reason: "starting".into(),
            }),
            counters: StateCounters::default(),
            changed: Notify::new(),
        }))
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.0.clone())
    }

    pub fn history_clearer(&self) -> HistoryClearer {
        HistoryClearer(self.0.clone())
    }

    /// Rebuilds what a store saved (if anything) and starts recording changes for
    /// [`State::take_delta`]. Call before any event is ingested.
    pub fn attach_store(&self, saved: Option<Saved>) {
        let mut t = self.0.tracker.write();
        if let Some(saved) = saved {
            t.restore(saved);
        }
        t.enable_journal();
    }

    /// An unusable state file was moved aside and the state starts afresh.
    pub fn store_recovered(&self) {
        self.0.counters.store_recoveries.inc();
    }

    /// No runtime answers on any candidate socket (yet).
    pub fn unreachable(&self, reason: String) {
        self.not_ready(reason);
    }

    /// A session to the runtime at `endpoint` begins.
    pub fn connecting(&self, endpoint: &str) {
        self.not_ready(format!("connecting to {endpoint}"));
    }

    /// The runtime answered: its kind labels series from now on.
    pub fn connected(&self, info: &RuntimeInfo) {
        self.0.tracker.write().set_runtime(info.runtime);
    }

    /// Replay and reconciliation are done and the live stream is followed (`/readyz` 200).
    pub fn synced(&self) {
        *self.0.readiness.lock() = Readiness {
            ready: true,
            reason: String::new(),
        };
    }

    /// The session ended with `reason`; the watcher reconnects.
    pub fn stream_lost(&self, reason: String) {
        self.not_ready(reason);
        self.0.counters.stream_reconnects.inc();
    }

    /// A replay could not reach back to the last processed event.
    pub fn possibly_missed(&self) {
        self.0.counters.events_possibly_missed.inc();
    }

    fn not_ready(&self, reason: String) {
        *self.0.readiness.lock() = Readiness {
            ready: false,
            reason,
        };
    }

    /// Time of the newest event processed: where a replay resumes.
    pub fn cursor(&self) -> Option<UnixNanos> {
        self.0.tracker.read().cursor()
    }

    /// Applies events, live or replayed, under one lock of the tracker, and counts them.
    pub fn ingest(&self, events: impl IntoIterator<Item = SourceEvent>) -> Ingested {
        let now = UnixNanos::now();
        let mut done = Ingested::default();
        {
            let mut tracker = self.0.tracker.write();
            for ev in events {
                match ev {
                    SourceEvent::Lifecycle(ev) => {
                        let applied = tracker.apply(&ev, now);
                        // One line per event for lag measurements (bench/); off unless asked for.
                        debug!(target: "lifecycle_agent::events", time_nanos = ev.time_nanos.as_nanos(), container_id = %ev.container_id(), action = %ev.action, ?applied, "event applied");
                        match applied {
                            Applied::Recorded => {
                                self.0.counters.events_processed.inc();
                                done.recorded += 1;
                            }
                            Applied::Duplicate => {
                                self.0.counters.events_duplicate.inc();
                                done.duplicates += 1;
                            }
                            Applied::Ignored | Applied::Unchanged => {}
                        }
                    }
                    SourceEvent::Renamed(r) => {
                        let renamed = tracker.rename(&r);
                        debug!(container_id = %r.container_id, name = %r.name, renamed, "rename applied");
                    }
                }
            }
        }
        self.0.changed.notify_one();
        done
    }

    /// Brings the state in line with a complete list + inspect of the runtime.
    pub fn reconcile(&self, snapshot: &[ContainerSnapshot]) -> ReconcileReport {
        let report = self
            .0
            .tracker
            .write()
            .reconcile(snapshot, true, UnixNanos::now());
        self.0.changed.notify_one();
        report
    }

    /// The next container to look up for its image ID (see [`Tracker::next_lookup`]).
    pub fn next_lookup(&self) -> Option<Lookup> {
        self.0.tracker.write().next_lookup()
    }

    /// Applies a look-up's answer; returns whether anything changed.
    pub fn enrich(&self, asked: &Lookup, snapshot: &ContainerSnapshot) -> bool {
        let changed = self.0.tracker.write().enrich(asked, snapshot);
        if changed {
            self.0.changed.notify_one();
        }
        changed
    }

    /// Drops history events older than the retention window; returns how many.
    pub fn apply_retention(&self, now: UnixNanos) -> usize {
        let dropped = self.0.tracker.write().history_mut().apply_retention(now);
        if dropped > 0 {
            self.0.changed.notify_one();
        }
        dropped
    }

    /// Waits until something the store keeps changed since the last wait.
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }

    /// Everything changed since the last call, for one group commit.
    pub fn take_delta(&self) -> Option<Delta> {
        self.0.tracker.write().take_delta()
    }

    /// A group commit was written.
    pub fn store_written(&self) {
        self.0.counters.store_writes.inc();
    }

    /// A group commit failed (it is retried with the next one).
    pub fn store_failed(&self) {
        self.0.counters.store_errors.inc();
    }
}

impl StateReader {
    /// The tracker, read-locked: keep the guard short (no I/O, no awaits under it).
    pub fn tracker(&self) -> RwLockReadGuard<'_, Tracker> {
        self.0.tracker.read()
    }

    pub fn readiness(&self) -> Readiness {
        self.0.readiness.lock().clone()
    }

    /// Whether the runtime's stream is connected and synced.
    pub fn is_connected(&self) -> bool {
        self.0.readiness.lock().ready
    }

    /// The `node` and `runtime` labels of node-wide series, read at each scrape.
    pub fn node_labels(&self) -> NodeLabels {
        let inner = self.0.clone();
        Arc::new(move || {
            let t = inner.tracker.read();
            [
                ("node", cut_label_value(t.node()).to_string()),
                ("runtime", t.runtime().as_str().to_string()),
            ]
        })
    }

    /// Registers the counters the state's verbs raise.
    pub fn register(&self, r: &mut Registry) {
        self.0.counters.register(r, self.node_labels());
    }

    #[cfg(test)]
    fn counters(&self) -> &StateCounters {
        &self.0.counters
    }
}

impl HistoryClearer {
    /// Clears history events older than `before`; returns how many.
    pub fn clear_history(&self, before: UnixNanos) -> usize {
        let cleared = self.0.tracker.write().history_mut().clear_before(before);
        self.0.changed.notify_one();
        cleared
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::event::EventKind;
    use crate::fixtures::EventBuilder;

    fn state() -> State {
        State::new(
            "node-1".into(),
            RuntimeKind::Docker,
            HistoryLimits {
                max_events: 100,
                retention: None,
            },
        )
    }

    fn start(t: i64, id: &str) -> SourceEvent {
        EventBuilder::new(EventKind::Started, id)
            .at(UnixNanos::from_nanos(t))
            .name(id)
            .source()
    }

    #[tokio::test]
    async fn ingest_counts_and_signals_once_for_live_and_replayed_events_alike() {
        let s = state();
        let r = s.reader();
        let first = s.ingest([start(1, "a"), start(2, "b")]);
        assert_eq!(
            first,
            Ingested {
                recorded: 2,
                duplicates: 0
            }
        );
        // The same events again, as a replay that overlaps delivers them.
        let again = s.ingest([start(2, "b"), start(3, "c")]);
        assert_eq!(
            again,
            Ingested {
                recorded: 1,
                duplicates: 1
            }
        );
        assert_eq!(r.counters().events_processed.get(), 3);
        assert_eq!(r.counters().events_duplicate.get(), 1);
        // The signal was raised: this wait returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), s.changed())
            .await
            .expect("ingest raised the change signal");
    }

    #[test]
    fn readiness_follows_the_connection_verbs() {
        let s = state();
        let r = s.reader();
        assert!(!r.is_connected());
        s.connecting("unix:///x.sock");
        assert_eq!(r.readiness().reason, "connecting to unix:///x.sock");
        s.synced();
        assert!(r.is_connected());
        s.stream_lost("gone".into());
        assert!(!r.is_connected());
        assert_eq!(r.counters().stream_reconnects.get(), 1);
    }

    #[tokio::test]
    async fn clearing_the_history_signals_the_store() {
        let s = state();
        s.ingest([start(1, "a")]);
        s.changed().await;
        assert_eq!(
            s.history_clearer().clear_history(UnixNanos::from_nanos(10)),
            1
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), s.changed())
            .await
            .expect("clearing raised the change signal");
    }
}
