//! Per-identity lifecycle state: where a Docker `die` or a Podman `died` becomes an exit, and
//! where a start becomes a restart (`docs/design.md`, "Restart semantics").
//!
//! Restarts are counted on *starts*, never on the runtimes' `restart` action: Docker emits
//! `start` then `restart`, Podman `restart` then `start`, and a restart policy may emit no
//! `restart` at all. A start counts when the identity had started before and the container
//! was not already running in our state. Events older than what a reconciliation already
//! reflected (`as_of`) change no state, so a live event, its replay and a list + inspect of
//! the same moment count once.
//!
//! This file holds the state and the event rules; beside it `reconcile.rs` (list + inspect
//! and look-ups), `persist.rs` (what the store keeps) and `view.rs` (what metrics and the
//! API read). Every restart is counted through [`Tracker::add_restarts`], every session
//! ends through [`Tracker::close_session`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Health, Identity, Lookup, Rename, RuntimeEvent, RuntimeKind};
use crate::history::{History, HistoryEvent, HistoryLimits, SubjectRef};
use crate::time::{Nanos, UnixNanos};

pub mod persist;
pub mod reconcile;
pub mod view;

/// How many recent event keys are remembered to drop replayed duplicates. Docker replays at
/// most 256 events; Podman's replay is bounded by the cursor, so this covers both edges.
const DEDUP_CAPACITY: usize = 8192;
/// Containers waiting for a look-up before new ones are left to the next reconciliation:
/// the watch loop takes from the queue beside every batch, so only a runtime creating
/// containers far faster than it answers inspects ever fills it.
const LOOKUP_QUEUE_CAPACITY: usize = 16_384;
const DAY: Nanos = Nanos::from_secs(86_400);
/// Restarts inferred at once that enter the 1 h / 24 h statistics (each is one entry there).
/// Sandbox containers remembered at most (their ids only), whatever a runtime reports.
const MAX_SANDBOXES_COUNTED: usize = 100_000;
const MAX_INFERRED_TIMES: u64 = 1_000;

/// Why the last session of an identity ended (`container_last_terminated_reason`). The words
/// are the Kubernetes ones kube-state-metrics exports (`kube_pod_container_status_last_terminated_reason`),
/// so queries and alert rules carry over; `Killed` (stopped by a signal, no OOM) is ours, as
/// Kubernetes has no word for it (README "Metrics"). The store keeps the variant's index,
/// never the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerminationReason {
    #[serde(rename = "OOMKilled")]
    OomKilled,
    Error,
    Completed,
    Killed,
}

impl TerminationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::OomKilled => "OOMKilled",
            TerminationReason::Error => "Error",
            TerminationReason::Completed => "Completed",
            TerminationReason::Killed => "Killed",
        }
    }

    fn classify(exit_code: Option<i64>, oom: bool, killed: bool) -> TerminationReason {
        if oom {
            TerminationReason::OomKilled
        } else if exit_code == Some(0) {
            TerminationReason::Completed
        } else if killed {
            TerminationReason::Killed
        } else {
            TerminationReason::Error
        }
    }
}

/// One runtime container, as far as the tracker needs it. Persisted as is by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    identity: Identity,
    name: String,
    image: String,
    image_id: String,
    running: bool,
    paused: bool,
    started_at: Option<UnixNanos>,
    finished_at: Option<UnixNanos>,
    created_at: UnixNanos,
    /// The newest runtime time this state reflects; older events only enter the history.
    as_of: UnixNanos,
    runtime_restart_count: u64,
    killed_in_session: bool,
    oom_in_session: bool,
    exited: bool,
}

/// Counters and state of one identity (`docs/design.md`, "Identity"). Persisted as is by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityState {
    pub identity: Identity,
    /// Container ids of this identity still present in the runtime, oldest first.
    containers: Vec<String>,
    ever_started: bool,
    pub restarts: u64,
    pub oom_kills: u64,
    /// Uptime of sessions that have ended.
    closed_uptime: Nanos,
    pub last_exit_code: Option<i64>,
    pub last_reason: Option<TerminationReason>,
    pub health: Option<Health>,
    pub events: [u64; EventKind::ALL.len()],
    /// Highest kubelet attempt ordinal seen, to infer restarts that happened unseen.
    max_attempt: Option<u64>,
}

/// What happened to one runtime event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Recorded in the history and applied to the state.
    Recorded,
    /// Seen before (a replay overlapping what was already processed).
    Duplicate,
    /// Not tracked: a pod sandbox.
    Ignored,
    /// A repeat of the current health status (Podman reports every check).
    Unchanged,
}

/// Restarts and whether the identity started before, for an identity met first through a
/// container with kubelet ordinal `attempt` (its attempt number, which counts its own start)
/// that `ran` already or not. A start still to come is counted when it is seen, so before it
/// the count is one less; whatever order a snapshot lists an identity's containers in, and
/// whether its start is seen live or inferred, the result after that start is the ordinal.
fn first_sight(attempt: Option<u64>, ran: bool) -> (u64, bool) {
    match attempt {
        Some(a) if ran => (a, true),
        Some(a) => (a.saturating_sub(1), a > 0),
        None => (0, ran),
    }
}

/// How a restart became known, which decides where else it is counted.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// A start seen (live or replayed) at this time: in the 1 h / 24 h statistics.
    Observed(UnixNanos),
    /// Inferred from the runtime's state at this time: in
    /// `lifecycle_agent_restarts_inferred_total` and (at most [`MAX_INFERRED_TIMES`] of
    /// them) in the 1 h / 24 h statistics.
    Inferred(UnixNanos),
    /// The lower bound of an identity met for the first time: inferred, but of unknown
    /// time, so not in the 1 h / 24 h statistics.
    FirstSight,
}

/// Remembers recently processed event keys (hashed) so a replay never counts twice.
#[derive(Debug, Default)]
struct RecentKeys {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl RecentKeys {
    /// Returns false if the key was already there.
    fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUP_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

fn key_hash(ev: &RuntimeEvent) -> u64 {
    let mut h = DefaultHasher::new();
    (
        ev.time_nanos,
        ev.subject.container_id.as_str(),
        ev.action.as_str(),
    )
        .hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub struct Tracker {
    node: String,
    runtime: RuntimeKind,
    containers: HashMap<String, ContainerState>,
    identities: HashMap<Identity, IdentityState>,
    node_restarts: u64,
    /// Times of restarts seen on the node in the last 24 h, for the 1h/24h statistics.
    restart_times: VecDeque<UnixNanos>,
    recent: RecentKeys,
    cursor: Option<UnixNanos>,
    /// Keys of the events at exactly `cursor`: a replay from the cursor (inclusive) repeats
    /// them, and after an agent restart only these can be duplicates.
    cursor_keys: Vec<u64>,
    /// The cursor a previous run saved: everything older was processed by it. Only the keys
    /// at the cursor itself survive a restart, so this is how older events that a stream
    /// delivers again (the live stream starts a little before the replay ends) are known.
    floor: Option<UnixNanos>,
    history: History,
    events_processed: u64,
    /// Restarts counted from the runtime's counters or the kubelet's ordinals, not from an
    /// observed start, since this process started (`lifecycle_agent_restarts_inferred_total`).
    inferred: u64,
    journal: Option<Journal>,
    /// Ids of containers whose state an event created without an image ID, oldest first.
    lookups: VecDeque<String>,
    /// Whether look-ups were dropped since the queue last had room (logged once).
    lookups_dropped: bool,
    /// Containers labelled as pod sandboxes: not tracked (README "Restarts, identity and
    /// uptime"), but counted, since any container can carry the label and so hide from
    /// every series. Rebuilt by every complete reconciliation, so not persisted.
    sandboxes: HashSet<String>,
}

/// Records changed since the last flush (only kept when a store is attached).
#[derive(Debug, Default)]
struct Journal {
    containers: HashSet<String>,
    identities: HashSet<Identity>,
}

impl Tracker {
    pub fn new(node: String, runtime: RuntimeKind, limits: HistoryLimits) -> Tracker {
        Tracker {
            node,
            runtime,
            containers: HashMap::new(),
            identities: HashMap::new(),
            node_restarts: 0,
            restart_times: VecDeque::new(),
            recent: RecentKeys::default(),
            cursor: None,
            cursor_keys: Vec::new(),
            floor: None,
            history: History::new(limits),
            events_processed: 0,
            inferred: 0,
            journal: None,
            lookups: VecDeque::new(),
            lookups_dropped: false,
            sandboxes: HashSet::new(),
        }
    }

    fn touch(&mut self, container_id: &str, identity: &Identity) {
        if let Some(j) = &mut self.journal {
            j.containers.insert(container_id.to_string());
            j.identities.insert(identity.clone());
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn runtime(&self) -> RuntimeKind {
        self.runtime
    }

    /// The runtime changed under the agent (auto-detection after a reconnect).
    pub fn set_runtime(&mut self, runtime: RuntimeKind) {
        self.runtime = runtime;
    }

    /// Time of the newest event processed: where a replay resumes.
    pub fn cursor(&self) -> Option<UnixNanos> {
        self.cursor
    }

    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    pub fn inferred_restarts(&self) -> u64 {
        self.inferred
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// Applies one runtime event.
    pub fn apply(&mut self, ev: &RuntimeEvent, now: UnixNanos) -> Applied {
        if ev.subject.labels.sandbox {
            if ev.kind == EventKind::Destroyed {
                self.sandboxes.remove(&ev.subject.container_id);
            } else if self.sandboxes.len() < MAX_SANDBOXES_COUNTED {
                self.sandboxes.insert(ev.subject.container_id.clone());
            }
            return Applied::Ignored;
        }
        if self.floor.is_some_and(|f| ev.time_nanos < f) {
            return Applied::Duplicate;
        }
        let key = key_hash(ev);
        if !self.recent.insert(key) {
            return Applied::Duplicate;
        }
        self.advance_cursor(ev.time_nanos, key);
        if self.journal.is_some() {
            let identity = self
                .containers
                .get(&ev.subject.container_id)
                .map(|c| c.identity.clone())
                .unwrap_or_else(|| Identity::of(&ev.subject.container_id, &ev.subject.labels));
            self.touch(&ev.subject.container_id, &identity);
        }
        if ev.kind == EventKind::Destroyed {
            self.record(ev);
            self.remove_container(&ev.subject.container_id);
            return Applied::Recorded;
        }
        self.ensure_container(ev);
        if ev.kind == EventKind::HealthStatus && !self.health_changed(ev) {
            return Applied::Unchanged;
        }
        self.transition(ev, now);
        self.record(ev);
        Applied::Recorded
    }

    fn advance_cursor(&mut self, t: UnixNanos, key: u64) {
        match self.cursor {
            Some(c) if c > t => {}
            Some(c) if c == t => self.cursor_keys.push(key),
            _ => {
                self.cursor = Some(t);
                self.cursor_keys.clear();
                self.cursor_keys.push(key);
            }
        }
    }

    fn health_changed(&mut self, ev: &RuntimeEvent) -> bool {
        let Some(c) = self.containers.get(&ev.subject.container_id) else {
            return false;
        };
        let Some(id) = self.identities.get_mut(&c.identity) else {
            return false;
        };
        if ev.health.is_none() || id.health == ev.health {
            return false;
        }
        id.health = ev.health;
        true
    }

    /// Creates state for a container first met through an event (one created before the
    /// agent's snapshot, or seen in a replay).
    fn ensure_container(&mut self, ev: &RuntimeEvent) {
        if self.containers.contains_key(&ev.subject.container_id) {
            return;
        }
        let identity = Identity::of(&ev.subject.container_id, &ev.subject.labels);
        let state = ContainerState {
            identity: identity.clone(),
            name: ev.subject.name.clone(),
            image: ev.subject.image.clone(),
            image_id: String::new(),
            running: false,
            paused: false,
            started_at: None,
            finished_at: None,
            created_at: ev.time_nanos,
            as_of: UnixNanos::MIN,
            runtime_restart_count: 0,
            killed_in_session: false,
            oom_in_session: false,
            exited: false,
        };
        self.containers
            .insert(ev.subject.container_id.clone(), state);
        if self.lookups.len() < LOOKUP_QUEUE_CAPACITY {
            self.lookups.push_back(ev.subject.container_id.clone());
            self.lookups_dropped = false;
        } else if !std::mem::replace(&mut self.lookups_dropped, true) {
            tracing::warn!(
                waiting = self.lookups.len(),
                "too many new containers to look up; their image IDs wait for the next reconciliation"
            );
        }
        let attempt = ev.subject.labels.k8s_restart_count;
        let fresh = !self.identities.contains_key(&identity);
        let id = self.identity_entry(&identity);
        id.containers.push(ev.subject.container_id.clone());
        if fresh {
            // First sight through a replayed or live event (`docs/design.md`, "Restart
            // semantics"): any event but a create or a start says the container ran before.
            let ran = !matches!(ev.kind, EventKind::Created | EventKind::Started);
            let (restarts, ever_started) = first_sight(attempt, ran);
            id.ever_started = ever_started;
            id.max_attempt = attempt;
            self.add_restarts(&identity, restarts, Counted::FirstSight);
        } else {
            self.note_attempt(&identity, attempt, false, ev.time_nanos);
        }
    }

    /// A new kubelet container with ordinal `attempt` for a known identity: attempts between
    /// the highest seen and this one started and died unseen, one restart each, recently
    /// (they count in the 1 h / 24 h statistics at `at`).
    fn note_attempt(
        &mut self,
        identity: &Identity,
        attempt: Option<u64>,
        started: bool,
        at: UnixNanos,
    ) -> u64 {
        let Some(id) = self.identities.get_mut(identity) else {
            return 0;
        };
        let (Some(a), Some(m)) = (attempt, id.max_attempt) else {
            if attempt.is_some() {
                id.max_attempt = attempt;
            }
            return 0;
        };
        if a <= m {
            return 0;
        }
        id.max_attempt = Some(a);
        let unseen = a - m - 1 + u64::from(started);
        if unseen > 0 {
            id.ever_started = true;
        }
        self.add_restarts(identity, unseen, Counted::Inferred(at));
        unseen
    }

    /// Counts `n` restarts of `identity`, and with them the node's total, the inferred
    /// count and the restart times of the 1 h / 24 h statistics, as `how` says.
    fn add_restarts(&mut self, identity: &Identity, n: u64, how: Counted) {
        if n == 0 {
            return;
        }
        let Some(id) = self.identities.get_mut(identity) else {
            return;
        };
        // Saturating: no count read from a runtime can wrap a counter back to small values.
        id.restarts = id.restarts.saturating_add(n);
        self.node_restarts = self.node_restarts.saturating_add(n);
        match how {
            Counted::Observed(at) => {
                for _ in 0..n {
                    self.push_restart_time(at);
                }
            }
            Counted::Inferred(at) => {
                self.inferred = self.inferred.saturating_add(n);
                for _ in 0..n.min(MAX_INFERRED_TIMES) {
                    self.push_restart_time(at);
                }
            }
            Counted::FirstSight => self.inferred = self.inferred.saturating_add(n),
        }
    }

    /// Ends a session of `identity`: its running time joins the closed uptime, and its exit
    /// is the last one.
    fn close_session(
        &mut self,
        identity: &Identity,
        uptime: Nanos,
        exit_code: Option<i64>,
        reason: TerminationReason,
    ) {
        if let Some(id) = self.identities.get_mut(identity) {
            id.closed_uptime += uptime.max(Nanos::ZERO);
            id.last_exit_code = exit_code;
            id.last_reason = Some(reason);
        }
    }

    fn identity_entry(&mut self, identity: &Identity) -> &mut IdentityState {
        self.identities
            .entry(identity.clone())
            .or_insert_with(|| IdentityState {
                identity: identity.clone(),
                containers: Vec::new(),
                ever_started: false,
                restarts: 0,
                oom_kills: 0,
                closed_uptime: Nanos::ZERO,
                last_exit_code: None,
                last_reason: None,
                health: None,
                events: [0; EventKind::ALL.len()],
                max_attempt: None,
            })
    }

    fn transition(&mut self, ev: &RuntimeEvent, now: UnixNanos) {
        let Some(c) = self.containers.get_mut(&ev.subject.container_id) else {
            return;
        };
        if ev.time_nanos < c.as_of {
            // Already reflected by a reconciliation that saw a later state.
            return;
        }
        match ev.kind {
            EventKind::Started => {
                if c.running {
                    return;
                }
                c.running = true;
                c.paused = false;
                c.exited = false;
                c.started_at = Some(ev.time_nanos);
                c.killed_in_session = false;
                c.oom_in_session = false;
                let identity = c.identity.clone();
                self.count_start(&identity, ev.time_nanos, now);
            }
            EventKind::Died => {
                let exit = ev.exit_code;
                if c.running {
                    c.running = false;
                    c.paused = false;
                    c.exited = true;
                    c.finished_at = Some(ev.time_nanos);
                    let session = ev.time_nanos - c.started_at.unwrap_or(ev.time_nanos);
                    let reason =
                        TerminationReason::classify(exit, c.oom_in_session, c.killed_in_session);
                    let identity = c.identity.clone();
                    self.close_session(&identity, session, exit, reason);
                }
            }
            EventKind::Killed => c.killed_in_session = true,
            EventKind::Oom => {
                if !c.oom_in_session {
                    c.oom_in_session = true;
                    // An `oom` delivered after its `die` still names why that session ended.
                    let late = !c.running && c.exited;
                    let identity = c.identity.clone();
                    if let Some(id) = self.identities.get_mut(&identity) {
                        id.oom_kills += 1;
                        if late {
                            id.last_reason = Some(TerminationReason::OomKilled);
                        }
                    }
                }
            }
            EventKind::Paused => c.paused = c.running,
            EventKind::Unpaused => c.paused = false,
            EventKind::Created
            | EventKind::Stopped
            | EventKind::Restarted
            | EventKind::Destroyed
            | EventKind::HealthStatus => {}
        }
    }

    /// A start of an identity: a restart unless it is the first one known.
    fn count_start(&mut self, identity: &Identity, at: UnixNanos, now: UnixNanos) {
        let Some(id) = self.identities.get_mut(identity) else {
            return;
        };
        let restart = id.ever_started;
        id.ever_started = true;
        if restart {
            self.add_restarts(identity, 1, Counted::Observed(at.min(now)));
        }
    }

    /// Keeps the last 24 h of restart times. Times arrive nearly in order (replays and
    /// inferences can be slightly older), so pruning from the front against the newest is enough.
    fn push_restart_time(&mut self, at: UnixNanos) {
        let newest = self.restart_times.back().map_or(at, |&b| b.max(at));
        self.restart_times.push_back(at);
        while self
            .restart_times
            .front()
            .is_some_and(|&t| t < newest - DAY)
        {
            self.restart_times.pop_front();
        }
    }

    fn record(&mut self, ev: &RuntimeEvent) {
        let counted = match self.containers.get(&ev.subject.container_id) {
            Some(c) => self.identities.get_mut(&c.identity),
            None => self
                .identities
                .get_mut(&Identity::of(&ev.subject.container_id, &ev.subject.labels)),
        };
        if let Some(id) = counted {
            id.events[ev.kind.index()] += 1;
        }
        let s = &ev.subject;
        let (namespace, pod, container) = match &s.labels.pod {
            Some(p) => (p.namespace.as_str(), p.pod.as_str(), p.container.as_str()),
            None => ("", "", s.name.as_str()),
        };
        self.events_processed += 1;
        let h = &mut self.history;
        let event = HistoryEvent {
            seq: 0,
            time_nanos: ev.time_nanos,
            kind: ev.kind,
            action: h.intern(&ev.action),
            runtime: self.runtime,
            subject: h.subject(SubjectRef {
                container_id: &s.container_id,
                name: &s.name,
                image: &s.image,
                namespace,
                pod,
                container,
            }),
            exit_code: ev.exit_code,
            health: ev.health,
        };
        h.push_shared(event);
    }

    /// The next container created through an event that still needs a look-up, with the
    /// name it has now: the one queue of look-ups. The caller inspects it without holding
    /// the tracker and calls [`Tracker::enrich`]. Ones already gone or given an image ID
    /// meanwhile (a reconciliation) are skipped.
    pub fn next_lookup(&mut self) -> Option<Lookup> {
        while let Some(id) = self.lookups.pop_front() {
            if self.needs_lookup(&id) {
                let name = self.containers.get(&id)?.name.clone();
                return Some(Lookup {
                    container_id: id,
                    name,
                });
            }
        }
        None
    }

    /// Whether a look-up of `container_id` would still tell something: it is tracked and its
    /// image ID unknown. Checked when a look-up leaves the queue, as a queue can wait.
    pub fn needs_lookup(&self, container_id: &str) -> bool {
        self.containers
            .get(container_id)
            .is_some_and(|c| c.image_id.is_empty())
    }

    /// A container got a new name. State only: a rename is not a lifecycle event
    /// (`docs/design.md`, "Events"), so it enters neither the history nor the event counters, and it moves no
    /// cursor (applying one twice changes nothing). Returns whether anything changed.
    pub fn rename(&mut self, r: &Rename) -> bool {
        if r.name.is_empty() {
            return false;
        }
        let Some(c) = self.containers.get_mut(&r.container_id) else {
            return false;
        };
        if c.name == r.name {
            return false;
        }
        c.name.clone_from(&r.name);
        let identity = c.identity.clone();
        self.touch(&r.container_id, &identity);
        true
    }

    /// Forgets a container; its identity goes with its last container (`docs/design.md`, "Identity").
    fn remove_container(&mut self, container_id: &str) -> bool {
        let Some(c) = self.containers.remove(container_id) else {
            return false;
        };
        self.touch(container_id, &c.identity);
        if let Some(id) = self.identities.get_mut(&c.identity) {
            id.containers.retain(|x| x != container_id);
            if id.containers.is_empty() {
                self.identities.remove(&c.identity);
            }
        }
        true
    }
}

#[cfg(test)]
mod test;
