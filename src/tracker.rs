//! Per-identity lifecycle state: where a Docker `die` or a Podman `died` becomes an exit, and
//! where a start becomes a restart (SPEC section 5).
//!
//! Restarts are counted on *starts*, never on the runtimes' `restart` action: Docker emits
//! `start` then `restart`, Podman `restart` then `start`, and a restart policy may emit no
//! `restart` at all. A start counts when the identity had started before and the container
//! was not already running in our state. Events older than what a reconciliation already
//! reflected (`as_of`) change no state, so a live event, its replay and a list + inspect of
//! the same moment count once.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::event::{short_id, EventKind, Health, Identity, Rename, RuntimeEvent, RuntimeKind};
use crate::history::{History, HistoryDelta, HistoryEvent, HistoryLimits, SubjectRef};
use crate::runtime::snapshot::{ContainerSnapshot, SnapshotState};
use crate::time::NANOS_PER_SEC;

/// How many recent event keys are remembered to drop replayed duplicates. Docker replays at
/// most 256 events; Podman's replay is bounded by the cursor, so this covers both edges.
const DEDUP_CAPACITY: usize = 8192;
/// Containers waiting for a look-up before new ones are left to the next reconciliation:
/// the watch loop drains the queue after every batch, so only a runtime creating containers
/// far faster than it answers inspects ever fills it.
pub const LOOKUP_QUEUE_CAPACITY: usize = 16_384;
const DAY_NANOS: i64 = 86_400 * NANOS_PER_SEC;
const HOUR_NANOS: i64 = 3600 * NANOS_PER_SEC;
/// Restarts inferred at once that enter the 1 h / 24 h statistics (each is one entry there).
const MAX_INFERRED_TIMES: u64 = 1_000;

/// Why the last session of an identity ended (`container_last_terminated_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    OomKilled,
    Error,
    Completed,
    Killed,
}

impl TerminationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::OomKilled => "oom_killed",
            TerminationReason::Error => "error",
            TerminationReason::Completed => "completed",
            TerminationReason::Killed => "killed",
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
    started_at: Option<i64>,
    finished_at: Option<i64>,
    created_at: i64,
    /// The newest runtime time this state reflects; older events only enter the history.
    as_of: i64,
    runtime_restart_count: u64,
    killed_in_session: bool,
    oom_in_session: bool,
    exited: bool,
}

/// Counters and state of one identity (SPEC section 5). Persisted as is by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityState {
    pub identity: Identity,
    /// Container ids of this identity still present in the runtime, oldest first.
    containers: Vec<String>,
    ever_started: bool,
    pub restarts: u64,
    pub oom_kills: u64,
    /// Uptime of sessions that have ended, in nanoseconds.
    closed_uptime: i64,
    pub last_exit_code: Option<i64>,
    pub last_reason: Option<TerminationReason>,
    pub health: Option<Health>,
    pub events: [u64; EventKind::ALL.len()],
    /// Highest kubelet attempt ordinal seen, to infer restarts that happened unseen.
    max_attempt: Option<u64>,
}

/// A read-only view of one identity for metrics and the API, computed at `now`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
    pub container_ids: Vec<String>,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: &'static str,
    pub running: bool,
    pub paused: bool,
    pub uptime_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_since_start_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start_time: Option<String>,
    #[serde(skip)]
    pub last_start_nanos: Option<i64>,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_exit_code: Option<i64>,
    pub last_terminated_reason: Option<TerminationReason>,
    pub health: Option<Health>,
    #[serde(skip)]
    pub events: [u64; EventKind::ALL.len()],
}

/// Node-wide counts (`containers_*`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NodeCounts {
    pub tracked: u64,
    pub running: u64,
    pub paused: u64,
    pub stopped: u64,
    pub restarts_total: u64,
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

/// A container met first through an event, to inspect for what no event carries (its image
/// ID). `name` is the name the tracker knew when it asked: an inspect that answers after a
/// rename event must not put the old name back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub container_id: String,
    pub name: String,
}

/// What a reconciliation changed, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub inferred_restarts: u64,
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

/// Takes a container's image ID, image and (if `with_name`) name from an inspect: the image
/// ID is known only there, and a name changes when the container is renamed. Empty answers
/// keep what is known. Returns whether anything changed.
fn refresh_details(c: &mut ContainerState, s: &ContainerSnapshot, with_name: bool) -> bool {
    let mut changed = false;
    let mut take = |field: &mut String, value: &str| {
        if !value.is_empty() && field != value {
            value.clone_into(field);
            changed = true;
        }
    };
    take(&mut c.image_id, &s.image_id);
    take(&mut c.image, &s.image);
    if with_name {
        take(&mut c.name, &s.name);
    }
    changed
}

#[derive(Debug)]
pub struct Tracker {
    node: String,
    runtime: RuntimeKind,
    containers: HashMap<String, ContainerState>,
    identities: HashMap<Identity, IdentityState>,
    node_restarts: u64,
    /// Times of restarts seen on the node in the last 24 h, for the 1h/24h statistics.
    restart_times: VecDeque<i64>,
    recent: RecentKeys,
    cursor: Option<i64>,
    /// Keys of the events at exactly `cursor`: a replay from the cursor (inclusive) repeats
    /// them, and after an agent restart only these can be duplicates.
    cursor_keys: Vec<u64>,
    /// The cursor a previous run saved: everything older was processed by it. Only the keys
    /// at the cursor itself survive a restart, so this is how older events that a stream
    /// delivers again (the live stream starts a little before the replay ends) are known.
    floor: Option<i64>,
    history: History,
    events_processed: u64,
    /// Restarts counted from the runtime's counters or the kubelet's ordinals, not from an
    /// observed start, since this process started (`lifecycle_agent_restarts_inferred_total`).
    inferred: u64,
    journal: Option<Journal>,
    /// Ids of containers whose state an event created without an image ID, oldest first.
    lookups: VecDeque<String>,
}

/// Records changed since the last flush (only kept when a store is attached).
#[derive(Debug, Default)]
struct Journal {
    containers: HashSet<String>,
    identities: HashSet<Identity>,
}

/// Node-level state persisted beside the records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerMeta {
    pub cursor: Option<i64>,
    pub cursor_keys: Vec<u64>,
    pub node_restarts: u64,
    pub restart_times: Vec<i64>,
    pub next_seq: u64,
}

/// One group commit for the store: records to write (`Some`) or delete (`None`), history
/// changes, and the node's meta state. Deltas merge, so a failed write is retried with the next.
#[derive(Debug, Default)]
pub struct Delta {
    pub containers: HashMap<String, Option<ContainerState>>,
    pub identities: HashMap<Identity, Option<IdentityState>>,
    pub history: HistoryDelta,
    pub meta: TrackerMeta,
    /// Which runtime the records are of, so a restart labels them right before it connects.
    pub runtime: RuntimeKind,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.identities.is_empty() && self.history.is_empty()
    }

    /// Folds a newer delta into this one.
    pub fn merge(&mut self, newer: Delta) {
        self.containers.extend(newer.containers);
        self.identities.extend(newer.identities);
        self.history.merge(newer.history);
        self.meta = newer.meta;
        self.runtime = newer.runtime;
    }

    pub fn events(&self) -> usize {
        self.history.events.len()
    }
}

/// What the store loaded, to rebuild a tracker after a restart.
#[derive(Debug, Default)]
pub struct Saved {
    pub containers: Vec<(String, ContainerState)>,
    pub identities: Vec<IdentityState>,
    /// Oldest first.
    pub events: Vec<HistoryEvent>,
    pub meta: TrackerMeta,
    /// `None` from a store written before the runtime was saved.
    pub runtime: Option<RuntimeKind>,
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
        }
    }

    /// Starts recording changes for [`Tracker::take_delta`].
    pub fn enable_journal(&mut self) {
        self.journal = Some(Journal::default());
        self.history.enable_journal();
    }

    fn touch(&mut self, container_id: &str, identity: &Identity) {
        if let Some(j) = &mut self.journal {
            j.containers.insert(container_id.to_string());
            j.identities.insert(identity.clone());
        }
    }

    pub fn meta(&self) -> TrackerMeta {
        TrackerMeta {
            cursor: self.cursor,
            cursor_keys: self.cursor_keys.clone(),
            node_restarts: self.node_restarts,
            restart_times: self.restart_times.iter().copied().collect(),
            next_seq: self.history.next_seq(),
        }
    }

    /// Everything changed since the last call, or `None` without a journal or changes.
    pub fn take_delta(&mut self) -> Option<Delta> {
        let j = std::mem::take(self.journal.as_mut()?);
        let history = self.history.take_delta();
        if j.containers.is_empty() && j.identities.is_empty() && history.is_empty() {
            return None;
        }
        let containers = j
            .containers
            .into_iter()
            .map(|id| {
                let rec = self.containers.get(&id).cloned();
                (id, rec)
            })
            .collect();
        let identities = j
            .identities
            .into_iter()
            .map(|id| {
                let rec = self.identities.get(&id).cloned();
                (id, rec)
            })
            .collect();
        Some(Delta {
            containers,
            identities,
            history,
            meta: self.meta(),
            runtime: self.runtime,
        })
    }

    /// Rebuilds the state a store saved. Call before any event is applied.
    pub fn restore(&mut self, saved: Saved) {
        if let Some(r) = saved.runtime {
            self.runtime = r;
        }
        self.containers = saved.containers.into_iter().collect();
        self.identities = saved
            .identities
            .into_iter()
            .map(|i| (i.identity.clone(), i))
            .collect();
        self.node_restarts = saved.meta.node_restarts;
        self.restart_times = saved.meta.restart_times.into_iter().collect();
        self.cursor = saved.meta.cursor;
        self.floor = saved.meta.cursor;
        for k in &saved.meta.cursor_keys {
            self.recent.insert(*k);
        }
        self.cursor_keys = saved.meta.cursor_keys;
        self.history.restore(saved.events, saved.meta.next_seq);
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
    pub fn cursor(&self) -> Option<i64> {
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
    pub fn apply(&mut self, ev: &RuntimeEvent, now: i64) -> Applied {
        if ev.subject.labels.sandbox {
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

    fn advance_cursor(&mut self, t: i64, key: u64) {
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
            as_of: i64::MIN,
            runtime_restart_count: 0,
            killed_in_session: false,
            oom_in_session: false,
            exited: false,
        };
        self.containers
            .insert(ev.subject.container_id.clone(), state);
        if self.lookups.len() < LOOKUP_QUEUE_CAPACITY {
            self.lookups.push_back(ev.subject.container_id.clone());
        }
        let attempt = ev.subject.labels.k8s_restart_count;
        let fresh = !self.identities.contains_key(&identity);
        let id = self.identity_entry(&identity);
        id.containers.push(ev.subject.container_id.clone());
        if fresh {
            // First sight through a replayed or live event (SPEC section 5): any event but a
            // create or a start says the container ran before.
            let ran = !matches!(ev.kind, EventKind::Created | EventKind::Started);
            let (restarts, ever_started) = first_sight(attempt, ran);
            id.restarts = restarts;
            id.ever_started = ever_started;
            id.max_attempt = attempt;
            let inferred = id.restarts;
            self.node_restarts += inferred;
            self.inferred += inferred;
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
        at: i64,
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
        id.restarts += unseen;
        if unseen > 0 {
            id.ever_started = true;
        }
        self.node_restarts += unseen;
        self.inferred += unseen;
        for _ in 0..unseen.min(MAX_INFERRED_TIMES) {
            self.push_restart_time(at);
        }
        unseen
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
                closed_uptime: 0,
                last_exit_code: None,
                last_reason: None,
                health: None,
                events: [0; EventKind::ALL.len()],
                max_attempt: None,
            })
    }

    fn transition(&mut self, ev: &RuntimeEvent, now: i64) {
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
                    if let Some(id) = self.identities.get_mut(&identity) {
                        id.closed_uptime += session.max(0);
                        id.last_exit_code = exit;
                        id.last_reason = Some(reason);
                    }
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
    fn count_start(&mut self, identity: &Identity, at: i64, now: i64) {
        let Some(id) = self.identities.get_mut(identity) else {
            return;
        };
        let restart = id.ever_started;
        id.ever_started = true;
        if restart {
            id.restarts += 1;
            self.node_restarts += 1;
            self.push_restart_time(at.min(now));
        }
    }

    /// Keeps the last 24 h of restart times. Times arrive nearly in order (replays and
    /// inferences can be slightly older), so pruning from the front against the newest is enough.
    fn push_restart_time(&mut self, at: i64) {
        let newest = self.restart_times.back().map_or(at, |&b| b.max(at));
        self.restart_times.push_back(at);
        while self
            .restart_times
            .front()
            .is_some_and(|&t| t < newest - DAY_NANOS)
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

    /// Containers created through events since the last call, with the name each has now, to
    /// look up without holding the tracker (the caller inspects them and calls
    /// [`Tracker::enrich`]). Ones already gone or given an image ID meanwhile are left out.
    pub fn take_lookups(&mut self) -> Vec<Lookup> {
        let ids = std::mem::take(&mut self.lookups);
        ids.into_iter()
            .filter_map(|id| {
                let name = self.containers.get(&id)?.name.clone();
                self.needs_lookup(&id).then_some(Lookup {
                    container_id: id,
                    name,
                })
            })
            .collect()
    }

    /// Whether a look-up of `container_id` would still tell something: it is tracked and its
    /// image ID unknown. Checked again just before inspecting, as a queue can wait.
    pub fn needs_lookup(&self, container_id: &str) -> bool {
        self.containers
            .get(container_id)
            .is_some_and(|c| c.image_id.is_empty())
    }

    /// Applies what an inspect of one container says about it that events do not: image ID,
    /// image and name. The name only if no rename was applied since the look-up was asked
    /// for, as the inspect may have answered before it. Returns whether anything changed.
    pub fn enrich(&mut self, asked: &Lookup, s: &ContainerSnapshot) -> bool {
        let Some(c) = self.containers.get_mut(&asked.container_id) else {
            return false;
        };
        let name_current = c.name == asked.name;
        let changed = refresh_details(c, s, name_current);
        if changed {
            let identity = c.identity.clone();
            self.touch(&asked.container_id, &identity);
        }
        changed
    }

    /// A container got a new name. State only: a rename is not a lifecycle event (SPEC
    /// section 4), so it enters neither the history nor the event counters, and it moves no
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

    /// Forgets a container; its identity goes with its last container (SPEC section 5).
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

    /// Brings the state in line with a list + inspect of the runtime. `complete` means the
    /// snapshot lists every container, so missing ones were removed unseen.
    pub fn reconcile(
        &mut self,
        snaps: &[ContainerSnapshot],
        complete: bool,
        now: i64,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let mut present = HashSet::with_capacity(snaps.len());
        for s in snaps.iter().filter(|s| !s.labels.sandbox) {
            present.insert(s.id.as_str());
            let identity = self
                .containers
                .get(&s.id)
                .map(|c| c.identity.clone())
                .unwrap_or_else(|| Identity::of(&s.id, &s.labels));
            self.touch(&s.id, &identity);
            if self.containers.contains_key(&s.id) {
                report.inferred_restarts += self.reconcile_known(s, now);
            } else {
                report.inferred_restarts += self.adopt(s, now);
                report.added += 1;
            }
        }
        if complete {
            let gone: Vec<String> = self
                .containers
                .keys()
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect();
            for id in gone {
                if self.remove_container(&id) {
                    report.removed += 1;
                }
            }
        }
        report
    }

    /// A container met first in a snapshot. Returns restarts inferred.
    fn adopt(&mut self, s: &ContainerSnapshot, now: i64) -> u64 {
        let identity = Identity::of(&s.id, &s.labels);
        let running = s.state.is_running();
        let state = ContainerState {
            identity: identity.clone(),
            name: s.name.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            running,
            paused: s.state == SnapshotState::Paused,
            started_at: s.started_at,
            finished_at: s.finished_at,
            created_at: s.created_at.unwrap_or(now),
            as_of: [s.started_at, s.finished_at, s.created_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(i64::MIN),
            runtime_restart_count: s.restart_count,
            killed_in_session: false,
            oom_in_session: s.oom_killed && !running,
            exited: s.finished_at.is_some() && !running,
        };
        self.containers.insert(s.id.clone(), state);
        let started = s.started_at.is_some();
        let fresh = !self.identities.contains_key(&identity);
        let inferred = if fresh {
            let id = self.identity_entry(&identity);
            // The best lower bound the runtime gives (SPEC section 5).
            let (restarts, ever_started) = match s.labels.k8s_restart_count {
                Some(attempt) => first_sight(Some(attempt), started),
                // Docker raises RestartCount when it schedules a restart: the start that
                // follows the back-off is counted when it is seen, as for a known container.
                None if s.state == SnapshotState::Restarting => {
                    (s.restart_count.saturating_sub(1), true)
                }
                None => (s.restart_count, started),
            };
            id.restarts = restarts;
            id.ever_started = ever_started;
            id.max_attempt = s.labels.k8s_restart_count;
            id.restarts
        } else if s.labels.k8s_restart_count.is_some() {
            self.note_attempt(&identity, s.labels.k8s_restart_count, started, now)
        } else if started {
            // Same pod labels without the kubelet's ordinal: one unseen start.
            let id = self.identity_entry(&identity);
            let n = u64::from(id.ever_started);
            id.restarts += n;
            id.ever_started = true;
            self.node_restarts += n;
            self.inferred += n;
            if n > 0 {
                self.push_restart_time(now);
            }
            n
        } else {
            0
        };
        if fresh {
            self.node_restarts += inferred;
            self.inferred += inferred;
        }
        let id = self.identity_entry(&identity);
        id.containers.push(s.id.clone());
        if s.health.is_some() {
            id.health = s.health;
        }
        if s.finished_at.is_some() && !running {
            id.last_exit_code = s.exit_code;
            id.last_reason = Some(TerminationReason::classify(
                s.exit_code,
                s.oom_killed,
                false,
            ));
            if fresh {
                // Its last session's length is known exactly; earlier ones are not.
                if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
                    id.closed_uptime += (b - a).max(0);
                }
            }
        }
        inferred
    }

    /// A container the tracker knows: apply what happened unseen. Returns restarts inferred.
    fn reconcile_known(&mut self, s: &ContainerSnapshot, now: i64) -> u64 {
        let Some(c) = self.containers.get_mut(&s.id) else {
            return 0;
        };
        let identity = c.identity.clone();
        refresh_details(c, s, true);
        let mut ended: Option<(i64, i64)> = None;
        let mut unseen_starts = 0u64;
        let newer_start = match (s.started_at, c.started_at) {
            (Some(new), Some(old)) => new > old,
            (Some(_), None) => true,
            _ => false,
        };
        if newer_start {
            // The session we knew (if it was still running) ended unseen before this start.
            if c.running {
                let end = s
                    .finished_at
                    .filter(|&f| Some(f) > c.started_at)
                    .or(s.started_at)
                    .unwrap_or(now);
                ended = Some((c.started_at.unwrap_or(end), end));
            }
            let policy = s.restart_count.saturating_sub(c.runtime_restart_count);
            unseen_starts = policy.max(1);
            c.started_at = s.started_at;
            c.running = s.state.is_running();
            c.killed_in_session = false;
            c.oom_in_session = false;
            if !c.running {
                if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
                    if b >= a {
                        ended = Some(ended.map_or((a, b), |(x, y)| (x, y + (b - a))));
                    }
                }
            }
        } else if c.running && !s.state.is_running() {
            let end = s.finished_at.unwrap_or(now);
            ended = Some((c.started_at.unwrap_or(end), end));
            c.running = false;
        }
        c.paused = s.state == SnapshotState::Paused;
        c.runtime_restart_count = s.restart_count;
        c.exited = !c.running && s.finished_at.is_some();
        if !c.running {
            c.finished_at = s.finished_at.or(c.finished_at);
        }
        let newest = [s.started_at, s.finished_at].into_iter().flatten().max();
        if let Some(t) = newest {
            c.as_of = c.as_of.max(t);
        }
        let oom_unseen = s.oom_killed && !c.running && !c.oom_in_session && ended.is_some();
        if oom_unseen {
            c.oom_in_session = true;
        }
        let killed = c.killed_in_session;
        let Some(id) = self.identities.get_mut(&identity) else {
            return 0;
        };
        if let Some(h) = s.health {
            id.health = Some(h);
        }
        if let Some((a, b)) = ended {
            id.closed_uptime += (b - a).max(0);
            id.last_exit_code = s.exit_code;
            id.last_reason = Some(TerminationReason::classify(
                s.exit_code,
                s.oom_killed,
                killed,
            ));
        }
        if oom_unseen {
            id.oom_kills += 1;
        }
        let inferred = if id.ever_started {
            unseen_starts
        } else {
            unseen_starts.saturating_sub(1)
        };
        if unseen_starts > 0 {
            id.ever_started = true;
        }
        id.restarts += inferred;
        self.node_restarts += inferred;
        self.inferred += inferred;
        for _ in 0..inferred.min(MAX_INFERRED_TIMES) {
            self.push_restart_time(now);
        }
        inferred
    }

    /// Identities tracked.
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// Per-identity views at `now`, for metrics and the API.
    pub fn identities(&self, now: i64) -> Vec<IdentityView> {
        self.identities
            .values()
            .map(|id| self.view(id, now))
            .collect()
    }

    fn view(&self, id: &IdentityState, now: i64) -> IdentityView {
        let mut uptime = id.closed_uptime;
        let mut running = false;
        let mut paused = false;
        let mut last_start: Option<i64> = None;
        let mut latest: Option<(&String, &ContainerState)> = None;
        for cid in &id.containers {
            let Some(c) = self.containers.get(cid) else {
                continue;
            };
            if c.running {
                running = true;
                paused |= c.paused;
                if let Some(s) = c.started_at {
                    uptime += (now - s).max(0);
                }
            }
            last_start = last_start.max(c.started_at);
            let newer =
                latest.is_none_or(|(_, l)| (c.running, c.created_at) >= (l.running, l.created_at));
            if newer {
                latest = Some((cid, c));
            }
        }
        let (cid, name, image, image_id, exited) = match latest {
            Some((cid, c)) => (
                cid.clone(),
                c.name.clone(),
                c.image.clone(),
                c.image_id.clone(),
                c.exited,
            ),
            None => Default::default(),
        };
        let (namespace, pod, pod_uid, container) = match &id.identity {
            Identity::Pod(p) => (
                p.namespace.clone(),
                p.pod.clone(),
                p.uid.clone(),
                p.container.clone(),
            ),
            Identity::Container(_) => (String::new(), String::new(), String::new(), name.clone()),
        };
        let state = if paused {
            "paused"
        } else if running {
            "running"
        } else if exited {
            "exited"
        } else {
            "created"
        };
        IdentityView {
            namespace,
            pod,
            pod_uid,
            container,
            container_id: cid,
            container_ids: id.containers.clone(),
            name,
            image,
            image_id,
            state,
            running,
            paused,
            uptime_seconds: uptime as f64 / NANOS_PER_SEC as f64,
            time_since_start_seconds: last_start
                .filter(|_| running)
                .map(|s| (now - s).max(0) as f64 / NANOS_PER_SEC as f64),
            last_start_time: last_start.map(crate::time::format_rfc3339),
            last_start_nanos: last_start,
            restarts: id.restarts,
            oom_kills: id.oom_kills,
            last_exit_code: id.last_exit_code,
            last_terminated_reason: id.last_reason,
            health: id.health,
            events: id.events,
        }
    }

    /// Finds an identity by container id prefix, runtime name or Kubernetes container name.
    pub fn find(&self, key: &str, now: i64) -> Vec<IdentityView> {
        if key.is_empty() {
            return Vec::new();
        }
        let by_name: Vec<_> = self
            .identities
            .values()
            .filter(|id| {
                id.containers.iter().any(|cid| {
                    self.containers.get(cid).is_some_and(|c| c.name == key)
                        || short_id(cid) == key
                        || cid == key
                })
            })
            .map(|id| self.view(id, now))
            .collect();
        if !by_name.is_empty() {
            return by_name;
        }
        self.identities
            .values()
            .filter(|id| {
                id.containers.iter().any(|cid| cid.starts_with(key))
                    || matches!(&id.identity, Identity::Pod(p) if p.container == key)
            })
            .map(|id| self.view(id, now))
            .collect()
    }

    pub fn node_counts(&self) -> NodeCounts {
        let mut n = NodeCounts {
            restarts_total: self.node_restarts,
            ..Default::default()
        };
        for c in self.containers.values() {
            n.tracked += 1;
            if c.running {
                n.running += 1;
                n.paused += u64::from(c.paused);
            } else {
                n.stopped += 1;
            }
        }
        n
    }

    /// Restarts seen on the node within `window` nanoseconds before `now`.
    pub fn restarts_within(&self, window: i64, now: i64) -> u64 {
        self.restart_times
            .iter()
            .filter(|&&t| t >= now - window)
            .count() as u64
    }

    pub fn restarts_last_hour(&self, now: i64) -> u64 {
        self.restarts_within(HOUR_NANOS, now)
    }

    pub fn restarts_last_day(&self, now: i64) -> u64 {
        self.restarts_within(DAY_NANOS, now)
    }
}

#[cfg(test)]
mod test;
