//! The bounded, searchable event history (`--max-history`, `--history-retention`,
//! `GET`/`DELETE /api/v1/events`; README "HTTP API"). Its query language and the search
//! itself are in `query.rs`.
//!
//! Events are kept in arrival order with a sequence number. The in-memory ring is the query
//! engine; persistence (the durable-state work) appends the same records to disk and loads
//! them back into this ring on start, so nothing here depends on where the events live.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{EventKind, Health, RuntimeKind};
use crate::time::{Nanos, UnixNanos};

pub mod query;

/// Shared text: the history holds 100 000 events of a few hundred containers, so each
/// container's strings are stored once and shared ([`Interner`]).
pub type Text = Arc<str>;

/// Who an event is about. Every event of a container between two renames shares one, so an
/// event in the history is one pointer here instead of six strings (100 000 events take ~6 MiB).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    pub container_id: Text,
    pub name: Text,
    pub image: Text,
    /// Empty outside Kubernetes.
    pub namespace: Text,
    pub pod: Text,
    /// The Kubernetes container name, or the runtime name outside Kubernetes.
    pub container: Text,
}

/// An [`EventSubject`]'s fields, borrowed, to compare and intern without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectRef<'a> {
    pub container_id: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
}

impl EventSubject {
    pub fn fields(&self) -> SubjectRef<'_> {
        SubjectRef {
            container_id: &self.container_id,
            name: &self.name,
            image: &self.image,
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
        }
    }
}

/// One observed (or replayed) lifecycle event, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub seq: u64,
    pub time_nanos: UnixNanos,
    pub kind: EventKind,
    pub runtime: RuntimeKind,
    pub health: Option<Health>,
    pub exit_code: Option<i64>,
    pub action: Text,
    pub subject: Arc<EventSubject>,
}

/// The API's JSON form of a [`HistoryEvent`]: flat, one field per subject string.
#[derive(Serialize, Deserialize)]
struct EventJson<S> {
    seq: u64,
    #[serde(default, skip_deserializing)]
    time: String,
    time_unix_nano: UnixNanos,
    #[serde(rename = "type")]
    kind: EventKind,
    action: S,
    runtime: RuntimeKind,
    container_id: S,
    name: S,
    image: S,
    namespace: S,
    pod: S,
    container: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
}

impl Serialize for HistoryEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let subject = &self.subject;
        EventJson::<&str> {
            seq: self.seq,
            time: self.time_nanos.to_rfc3339(),
            time_unix_nano: self.time_nanos,
            kind: self.kind,
            action: &self.action,
            runtime: self.runtime,
            container_id: &subject.container_id,
            name: &subject.name,
            image: &subject.image,
            namespace: &subject.namespace,
            pod: &subject.pod,
            container: &subject.container,
            exit_code: self.exit_code,
            health: self.health,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HistoryEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = EventJson::<Text>::deserialize(d)?;
        Ok(HistoryEvent {
            seq: j.seq,
            time_nanos: j.time_unix_nano,
            kind: j.kind,
            runtime: j.runtime,
            health: j.health,
            exit_code: j.exit_code,
            action: j.action,
            subject: Arc::new(EventSubject {
                container_id: j.container_id,
                name: j.name,
                image: j.image,
                namespace: j.namespace,
                pod: j.pod,
                container: j.container,
            }),
        })
    }
}

/// Bounds on what the history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events: usize,
    /// Events older than this are dropped; `None` keeps them until `max_events`.
    pub retention: Option<Nanos>,
}

#[derive(Debug)]
pub struct History {
    /// Ascending by `seq` (pushes increase it; removals keep the order).
    events: VecDeque<HistoryEvent>,
    limits: HistoryLimits,
    next_seq: u64,
    journal: Option<HistoryDelta>,
    /// Sequence numbers of each container's events, so a `container` query reads that
    /// container's events instead of scanning the whole history.
    by_container: HashMap<Text, Postings>,
    interner: Interner,
}

/// Deduplicates the history's strings. Entries nobody else holds any more are dropped once
/// the set has doubled since the last sweep, so container churn cannot grow it without bound.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Text>,
    swept_at: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Text {
        if let Some(t) = self.set.get(s) {
            return t.clone();
        }
        if self.set.len() >= 2 * self.swept_at + 1024 {
            self.set.retain(|t| Arc::strong_count(t) > 1);
            self.swept_at = self.set.len();
        }
        let t: Text = Arc::from(s);
        self.set.insert(t.clone());
        t
    }

    /// The shared copy of `s`, if any event may hold it.
    pub fn get(&self, s: &str) -> Option<&Text> {
        self.set.get(s)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// A new subject of shared strings.
    pub fn subject(&mut self, s: SubjectRef<'_>) -> Arc<EventSubject> {
        Arc::new(EventSubject {
            container_id: self.intern(s.container_id),
            name: self.intern(s.name),
            image: self.intern(s.image),
            namespace: self.intern(s.namespace),
            pod: self.intern(s.pod),
            container: self.intern(s.container),
        })
    }

    /// Whether `t` is the shared copy itself (not merely equal to it).
    pub fn contains(&self, t: &Text) -> bool {
        self.set
            .get(&**t)
            .is_some_and(|known| Arc::ptr_eq(known, t))
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Shares strings and subjects between events read from elsewhere (the state store), so
/// loading 100 000 events allocates per container, not per event.
#[derive(Debug, Default)]
pub struct SubjectInterner {
    texts: Interner,
    subjects: HashMap<Text, Arc<EventSubject>>,
}

impl SubjectInterner {
    pub fn text(&mut self, s: &str) -> Text {
        self.texts.intern(s)
    }

    pub fn subject(&mut self, s: SubjectRef<'_>) -> Arc<EventSubject> {
        if let Some(known) = self.subjects.get(s.container_id) {
            if known.fields() == s {
                return known.clone();
            }
        }
        let subject = self.texts.subject(s);
        self.subjects
            .insert(subject.container_id.clone(), subject.clone());
        subject
    }
}

/// One container's events in the history, and the subject of its newest event (which the
/// next event of the container shares when nothing about it changed).
#[derive(Debug)]
struct Postings {
    subject: Arc<EventSubject>,
    seqs: VecDeque<u64>,
    /// Names (runtime name, or the `container` of a plain container) of its earlier events'
    /// subjects, from before a rename: a query by a former name finds its events through the
    /// postings as a scan does (renames are rare; this is almost always empty).
    former_names: Vec<Text>,
}

impl Postings {
    /// Whether a `container` query for `c` may select events of this container: by its
    /// current or a former name, or an id prefix. Each event is then matched on its own.
    fn may_match(&self, id: &str, c: &str) -> bool {
        &*self.subject.name == c
            || &*self.subject.container == c
            || id.starts_with(c)
            || self.former_names.iter().any(|n| &**n == c)
    }

    /// Takes `next` as the current subject, keeping the names it replaces.
    fn set_subject(&mut self, next: &Arc<EventSubject>) {
        let old = std::mem::replace(&mut self.subject, next.clone());
        for n in [&old.name, &old.container] {
            if **n != *next.name && **n != *next.container && !self.former_names.contains(n) {
                self.former_names.push(n.clone());
            }
        }
    }
}

/// Above this share of the history, a `container` query scans instead of using postings.
const INDEX_SHARE: usize = 8;

/// History changes since the last flush: new events, then removals (a store applies them in
/// that order, so an event added and evicted within one batch ends up absent).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistoryDelta {
    pub events: Vec<HistoryEvent>,
    /// Events cleared by time (`clear_before`, retention), by sequence number.
    pub removed: Vec<u64>,
    /// Every event with a sequence number up to this one was evicted by the size bound.
    pub evicted_through: u64,
}

impl HistoryDelta {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.removed.is_empty() && self.evicted_through == 0
    }

    /// Folds a newer delta into this one. What the size bound has evicted since is dropped,
    /// so a delta retried across a long store outage holds at most the history's bound.
    pub fn merge(&mut self, newer: HistoryDelta) {
        self.events.extend(newer.events);
        self.removed.extend(newer.removed);
        self.evicted_through = self.evicted_through.max(newer.evicted_through);
        let through = self.evicted_through;
        self.events.retain(|e| e.seq > through);
        self.removed.retain(|seq| *seq > through);
    }
}

impl History {
    pub fn new(limits: HistoryLimits) -> History {
        History {
            events: VecDeque::with_capacity(limits.max_events.min(1024)),
            limits,
            next_seq: 1,
            journal: None,
            by_container: HashMap::new(),
            interner: Interner::default(),
        }
    }

    /// The shared copy of `s` (see [`Text`]).
    pub fn intern(&mut self, s: &str) -> Text {
        self.interner.intern(s)
    }

    /// The subject with these fields: the container's current one when they match (the
    /// common case: one lookup and a few comparisons), else a new one of shared strings.
    pub fn subject(&mut self, s: SubjectRef<'_>) -> Arc<EventSubject> {
        if let Some(p) = self.by_container.get(s.container_id) {
            if p.subject.fields() == s {
                return p.subject.clone();
            }
        }
        self.interner.subject(s)
    }

    /// Makes an event from elsewhere (a store, a test) share strings and subject.
    fn share(&mut self, e: &mut HistoryEvent) {
        let current = self.by_container.get(&*e.subject.container_id);
        if !current.is_some_and(|p| Arc::ptr_eq(&p.subject, &e.subject)) {
            e.subject = self.subject(e.subject.fields());
        }
        if !self.interner.contains(&e.action) {
            e.action = self.interner.intern(&e.action);
        }
    }

    fn index(&mut self, e: &HistoryEvent) {
        match self.by_container.get_mut(&*e.subject.container_id) {
            Some(p) => {
                p.seqs.push_back(e.seq);
                if !Arc::ptr_eq(&p.subject, &e.subject) {
                    p.set_subject(&e.subject);
                }
            }
            None => {
                self.by_container.insert(
                    e.subject.container_id.clone(),
                    Postings {
                        subject: e.subject.clone(),
                        seqs: VecDeque::from([e.seq]),
                        former_names: Vec::new(),
                    },
                );
            }
        }
    }

    /// Forgets the oldest event of a container (evictions are always its oldest).
    fn unindex_oldest(&mut self, e: &HistoryEvent) {
        let id = &*e.subject.container_id;
        if let Some(p) = self.by_container.get_mut(id) {
            if p.seqs.front() == Some(&e.seq) {
                p.seqs.pop_front();
            } else {
                p.seqs.retain(|s| *s != e.seq);
            }
            if p.seqs.is_empty() {
                self.by_container.remove(id);
            }
        }
    }

    fn reindex(&mut self) {
        self.by_container.clear();
        let events = std::mem::take(&mut self.events);
        for e in &events {
            self.index(e);
        }
        self.events = events;
    }

    pub fn enable_journal(&mut self) {
        self.journal = Some(HistoryDelta::default());
    }

    pub fn take_delta(&mut self) -> HistoryDelta {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Loads saved events (oldest first) keeping their sequence numbers, then applies the
    /// size bound, so a lowered `--max-history` takes effect on start.
    pub fn restore(&mut self, mut events: Vec<HistoryEvent>, next_seq: u64) {
        self.by_container.clear();
        for e in &mut events {
            self.share(e);
            self.index(e);
        }
        let last = events.last().map_or(0, |e| e.seq);
        self.next_seq = next_seq.max(last + 1).max(1);
        self.events = events.into();
        self.evict_to(self.limits.max_events.max(1));
    }

    fn evict_to(&mut self, keep: usize) {
        while self.events.len() > keep {
            if let Some(old) = self.events.pop_front() {
                if let Some(j) = &mut self.journal {
                    j.evicted_through = j.evicted_through.max(old.seq);
                }
                self.unindex_oldest(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends an event, assigning its sequence number, and applies the size bound.
    pub fn push(&mut self, mut event: HistoryEvent) -> &HistoryEvent {
        self.share(&mut event);
        self.push_shared(event)
    }

    /// [`History::push`] for an event already made of this history's shared parts: its
    /// subject from [`History::subject`], its action from [`History::intern`]. The tracker's
    /// ingest path, which would otherwise look both up twice per event.
    pub(crate) fn push_shared(&mut self, mut event: HistoryEvent) -> &HistoryEvent {
        event.seq = self.next_seq;
        self.next_seq += 1;
        self.evict_to(self.limits.max_events.max(1) - 1);
        if let Some(j) = &mut self.journal {
            j.events.push(event.clone());
        }
        self.index(&event);
        // Grow by doubling but never past the bound: a full history of 100 000 events then
        // holds exactly that many slots instead of the next power of two.
        let max = self.limits.max_events.max(1);
        if self.events.len() == self.events.capacity() && self.events.capacity() < max {
            let more = self.events.capacity().max(16).min(max - self.events.len());
            self.events.reserve_exact(more);
        }
        self.events.push_back(event);
        &self.events[self.events.len() - 1]
    }

    /// Drops events older than the retention window; returns how many were dropped.
    pub fn apply_retention(&mut self, now: UnixNanos) -> usize {
        match self.limits.retention {
            Some(r) => self.clear_before(now.saturating_sub(r)),
            None => 0,
        }
    }

    /// Seed `clear_history(before)`: removes every event older than `before`.
    ///
    /// Events arrive nearly in time order but replays and reconciliation can interleave, so
    /// this scans rather than assuming the ring is sorted.
    pub fn clear_before(&mut self, before: UnixNanos) -> usize {
        let n = self.events.len();
        match &mut self.journal {
            Some(j) => self.events.retain(|e| {
                let keep = e.time_nanos >= before;
                if !keep {
                    j.removed.push(e.seq);
                }
                keep
            }),
            None => self.events.retain(|e| e.time_nanos >= before),
        }
        let removed = n - self.events.len();
        if removed > 0 {
            self.reindex();
        }
        removed
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HistoryEvent> {
        self.events.iter()
    }
}

#[cfg(test)]
mod test {
    use super::query::{parse_types, EventQuery};
    use super::*;
    use crate::time::NANOS_PER_SEC;

    fn at(t: i64) -> UnixNanos {
        UnixNanos::from_nanos(t)
    }

    pub(super) fn ev(t: i64, kind: EventKind, name: &str, ns: &str) -> HistoryEvent {
        HistoryEvent {
            seq: 0,
            time_nanos: at(t),
            kind,
            action: kind.as_str().into(),
            runtime: RuntimeKind::Docker,
            subject: Arc::new(EventSubject {
                container_id: format!("{name}-0123456789abcdef").into(),
                name: name.into(),
                image: "busybox".into(),
                namespace: ns.into(),
                pod: if ns.is_empty() {
                    "".into()
                } else {
                    format!("{name}-pod").into()
                },
                container: name.into(),
            }),
            exit_code: None,
            health: None,
        }
    }

    pub(super) fn history(max: usize) -> History {
        History::new(HistoryLimits {
            max_events: max,
            retention: Some(Nanos::from_secs(60)),
        })
    }

    #[test]
    fn bound_drops_the_oldest() {
        let mut h = history(3);
        for t in 0..5 {
            h.push(ev(t, EventKind::Started, "a", ""));
        }
        let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }

    #[test]
    fn queries_filter_and_truncate_newest_first() {
        let mut h = history(100);
        for t in 0..10 {
            let kind = if t % 2 == 0 {
                EventKind::Started
            } else {
                EventKind::Died
            };
            h.push(ev(t, kind, if t < 5 { "a" } else { "b" }, "shop"));
        }
        let q = EventQuery {
            container: Some("b".into()),
            types: Some(parse_types("died").unwrap()),
            limit: 2,
            ..Default::default()
        };
        let r = h.query(&q);
        assert_eq!(
            r.events.iter().map(|e| e.time_nanos).collect::<Vec<_>>(),
            vec![at(9), at(7)]
        );
        assert!(r.truncated);
        let q = EventQuery {
            container: Some("a-0123".into()),
            since: Some(at(3)),
            until: Some(at(4)),
            ..Default::default()
        };
        assert_eq!(h.query(&q).events.len(), 2);
        let q = EventQuery {
            namespace: Some("other".into()),
            ..Default::default()
        };
        assert!(h.query(&q).events.is_empty());
    }

    #[test]
    fn container_queries_through_the_index_equal_a_scan() {
        let mut h = history(500);
        for t in 0..2000 {
            let name = format!("c{}", t % 37);
            h.push(ev(
                t,
                EventKind::ALL[(t % 11) as usize],
                &name,
                if t % 2 == 0 { "shop" } else { "" },
            ));
            if t == 1500 {
                h.clear_before(at(1200));
            }
        }
        for c in ["c3", "c30", "c3-0123", "c", "nothing"] {
            for limit in [1, 5, 100, 10_000] {
                let q = EventQuery {
                    container: Some(c.into()),
                    limit,
                    ..Default::default()
                };
                let indexed = h.query(&q);
                let scanned = h.scan(&q);
                assert_eq!(indexed.events, scanned.events, "{c} {limit}");
                assert_eq!(indexed.truncated, scanned.truncated, "{c} {limit}");
            }
        }
        let mut total: usize = h.by_container.values().map(|p| p.seqs.len()).sum();
        assert_eq!(total, h.len());
        h.restore(h.events.iter().cloned().collect(), 0);
        total = h.by_container.values().map(|p| p.seqs.len()).sum();
        assert_eq!(total, h.len());
    }

    #[test]
    fn clear_and_retention_remove_old_events() {
        let mut h = history(100);
        for t in 0..10 {
            h.push(ev(t * NANOS_PER_SEC, EventKind::Started, "a", ""));
        }
        assert_eq!(h.clear_before(at(3 * NANOS_PER_SEC)), 3);
        assert_eq!(h.apply_retention(at(68 * NANOS_PER_SEC)), 5);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn events_serialize_with_rfc3339_times() {
        let mut e = ev(1_500_000_000, EventKind::Died, "a", "");
        e.exit_code = Some(3);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:01.500000000Z");
        assert_eq!(v["type"], "died");
        assert_eq!(v["exit_code"], 3);
        assert!(v.get("health").is_none());
    }

    #[test]
    fn events_of_a_container_share_one_subject_until_it_changes() {
        let mut h = history(100);
        h.push(ev(1, EventKind::Started, "a", "shop"));
        h.push(ev(2, EventKind::Died, "a", "shop"));
        let mut renamed = ev(3, EventKind::Started, "a", "shop");
        Arc::make_mut(&mut renamed.subject).name = "a-renamed".into();
        h.push(renamed);
        let e: Vec<&HistoryEvent> = h.iter().collect();
        assert!(Arc::ptr_eq(&e[0].subject, &e[1].subject));
        assert!(!Arc::ptr_eq(&e[1].subject, &e[2].subject));
        assert_eq!(&*e[2].subject.name, "a-renamed");
        assert!(
            Arc::ptr_eq(&e[1].subject.image, &e[2].subject.image),
            "unchanged strings stay shared"
        );
        let q = |c: &str| EventQuery {
            container: Some(c.into()),
            ..EventQuery::default()
        };
        assert_eq!(h.query(&q("a-renamed")).events.len(), 1);
        assert_eq!(h.query(&q("a")).events.len(), 3, "by id prefix and name");
    }

    #[test]
    fn a_former_name_finds_the_same_events_through_the_index_and_a_scan() {
        let mut h = history(1000);
        // Other containers' events, so that one container's are few enough for the index.
        for t in 0..100 {
            h.push(ev(t, EventKind::Started, &format!("other{}", t % 10), ""));
        }
        let named = |t, kind, name: &str| {
            let mut e = ev(t, kind, "web", "");
            let s = Arc::make_mut(&mut e.subject);
            s.name = name.into();
            s.container = name.into();
            e
        };
        h.push(named(100, EventKind::Started, "web-old"));
        h.push(named(101, EventKind::Died, "web-old"));
        h.push(named(102, EventKind::Started, "web-new"));
        h.push(named(103, EventKind::Died, "web-newer"));
        for (name, want) in [("web-old", 2), ("web-new", 1), ("web-newer", 1), ("web", 4)] {
            let q = EventQuery {
                container: Some(name.into()),
                ..EventQuery::default()
            };
            assert!(h.candidates(name).is_some(), "{name}: the index answers");
            let indexed = h.query(&q).events;
            let scanned = h.scan(&q).events;
            let seqs = |v: &[HistoryEvent]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
            assert_eq!(seqs(&indexed), seqs(&scanned), "{name}");
            assert_eq!(indexed.len(), want, "{name}");
        }
    }

    #[test]
    fn events_round_trip_through_their_json() {
        let mut h = history(10);
        let mut e = ev(5, EventKind::Died, "web", "shop");
        e.exit_code = Some(137);
        h.push(e);
        let stored = h.iter().next().cloned().expect("an event");
        let json = serde_json::to_value(&stored).expect("json");
        assert_eq!(json["namespace"], "shop");
        assert_eq!(json["pod"], "web-pod");
        assert_eq!(json["type"], "died");
        assert!(json["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let back: HistoryEvent = serde_json::from_value(json).expect("parse");
        assert_eq!(back, stored);
    }

    #[test]
    fn a_retried_delta_keeps_no_more_than_the_bound() {
        let mut h = history(10);
        h.enable_journal();
        let mut pending = HistoryDelta::default();
        for round in 0..50 {
            for t in 0..10 {
                h.push(ev(round * 10 + t, EventKind::Started, "a", ""));
            }
            pending.merge(h.take_delta());
        }
        assert_eq!(
            pending.events.len(),
            10,
            "only what the history still holds"
        );
        let seqs: Vec<u64> = pending.events.iter().map(|e| e.seq).collect();
        let held: Vec<u64> = h.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, held);
        assert_eq!(pending.evicted_through, 490);
    }

    #[test]
    fn a_stored_event_stays_small() {
        // 100 000 events of history are budgeted at 64 bytes each plus shared subjects.
        assert!(std::mem::size_of::<HistoryEvent>() <= 64);
    }
}
