//! The bounded, searchable event history (seed: event history, `clear_history`,
//! `max_history_size`).
//!
//! Events are kept in arrival order with a sequence number. The in-memory ring is the query
//! engine; persistence (the durable-state work) appends the same records to disk and loads
//! them back into this ring on start, so nothing here depends on where the events live.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize, Serializer};

use crate::event::{EventKind, Health, RuntimeKind};
use crate::time::{format_rfc3339, parse_time_or_ago, TimeError};

/// Hard ceiling of `limit` in a query: no request may make the agent copy more.
pub const MAX_QUERY_LIMIT: usize = 10_000;
pub const DEFAULT_QUERY_LIMIT: usize = 100;

/// One observed (or replayed) lifecycle event, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryEvent {
    pub seq: u64,
    #[serde(rename = "time_unix_nano")]
    pub time_nanos: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub action: String,
    pub runtime: RuntimeKind,
    pub container_id: String,
    pub name: String,
    pub image: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub exit_code: Option<i64>,
    pub health: Option<Health>,
}

impl Serialize for HistoryEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            seq: u64,
            time: String,
            time_unix_nano: i64,
            #[serde(rename = "type")]
            kind: EventKind,
            action: &'a str,
            runtime: RuntimeKind,
            container_id: &'a str,
            name: &'a str,
            image: &'a str,
            namespace: &'a str,
            pod: &'a str,
            container: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            exit_code: Option<i64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            health: Option<Health>,
        }
        Json {
            seq: self.seq,
            time: format_rfc3339(self.time_nanos),
            time_unix_nano: self.time_nanos,
            kind: self.kind,
            action: &self.action,
            runtime: self.runtime,
            container_id: &self.container_id,
            name: &self.name,
            image: &self.image,
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
            exit_code: self.exit_code,
            health: self.health,
        }
        .serialize(s)
    }
}

/// A parsed, validated search over the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Runtime name, container id prefix, or Kubernetes container name.
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Bit set over [`EventKind::index`]; `None` is every type.
    pub types: Option<u16>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: usize,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            container: None,
            namespace: None,
            pod: None,
            types: None,
            since: None,
            until: None,
            limit: DEFAULT_QUERY_LIMIT,
        }
    }
}

/// The query parameters as they arrive, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventQuery {
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    #[serde(rename = "type")]
    pub types: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
}

/// A query parameter that cannot be used, named so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: {reason}")]
pub struct QueryError {
    pub param: &'static str,
    pub reason: String,
}

impl QueryError {
    fn new(param: &'static str, reason: impl ToString) -> Self {
        QueryError {
            param,
            reason: reason.to_string(),
        }
    }
}

fn non_empty(param: &'static str, v: Option<String>) -> Result<Option<String>, QueryError> {
    match v {
        Some(s) if s.trim().is_empty() => Err(QueryError::new(param, "must not be empty")),
        other => Ok(other),
    }
}

/// Parses a comma list of event types into the bit set of [`EventQuery::types`].
pub fn parse_types(s: &str) -> Result<u16, QueryError> {
    let mut mask = 0u16;
    for part in s.split(',').map(str::trim) {
        let kind: EventKind = part.parse().map_err(|e| QueryError::new("type", e))?;
        mask |= 1 << kind.index();
    }
    Ok(mask)
}

fn parse_time(param: &'static str, v: Option<&str>, now: i64) -> Result<Option<i64>, QueryError> {
    v.map(|s| parse_time_or_ago(s, now).map_err(|e: TimeError| QueryError::new(param, e)))
        .transpose()
}

impl EventQuery {
    /// Validates raw parameters; `now` anchors durations meaning "ago".
    pub fn parse(raw: RawEventQuery, now: i64) -> Result<EventQuery, QueryError> {
        let limit = match raw.limit.as_deref() {
            None => DEFAULT_QUERY_LIMIT,
            Some(s) => {
                let n: usize = s
                    .trim()
                    .parse()
                    .map_err(|_| QueryError::new("limit", format!("{s:?} is not a number")))?;
                if n == 0 || n > MAX_QUERY_LIMIT {
                    return Err(QueryError::new(
                        "limit",
                        format!("{n} is out of range 1..={MAX_QUERY_LIMIT}"),
                    ));
                }
                n
            }
        };
        let types = raw.types.as_deref().map(parse_types).transpose()?;
        let since = parse_time("since", raw.since.as_deref(), now)?;
        let until = parse_time("until", raw.until.as_deref(), now)?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(QueryError::new("since", "is after `until`"));
            }
        }
        Ok(EventQuery {
            container: non_empty("container", raw.container)?,
            namespace: non_empty("namespace", raw.namespace)?,
            pod: non_empty("pod", raw.pod)?,
            types,
            since,
            until,
            limit,
        })
    }

    pub fn matches(&self, e: &HistoryEvent) -> bool {
        if let Some(mask) = self.types {
            if mask & (1 << e.kind.index()) == 0 {
                return false;
            }
        }
        if self.since.is_some_and(|s| e.time_nanos < s)
            || self.until.is_some_and(|u| e.time_nanos > u)
        {
            return false;
        }
        if self.namespace.as_ref().is_some_and(|n| *n != e.namespace)
            || self.pod.as_ref().is_some_and(|p| *p != e.pod)
        {
            return false;
        }
        match &self.container {
            None => true,
            Some(c) => *c == e.name || *c == e.container || e.container_id.starts_with(c.as_str()),
        }
    }
}

/// The answer to a query: newest first, and whether more events matched than were returned.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub events: Vec<HistoryEvent>,
    pub truncated: bool,
}

/// Bounds on what the history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events: usize,
    /// Events older than this (nanoseconds) are dropped; `None` keeps them until `max_events`.
    pub retention: Option<i64>,
}

#[derive(Debug)]
pub struct History {
    events: VecDeque<HistoryEvent>,
    limits: HistoryLimits,
    next_seq: u64,
    journal: Option<HistoryDelta>,
}

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

    pub fn merge(&mut self, newer: HistoryDelta) {
        self.events.extend(newer.events);
        self.removed.extend(newer.removed);
        self.evicted_through = self.evicted_through.max(newer.evicted_through);
    }
}

impl History {
    pub fn new(limits: HistoryLimits) -> History {
        History {
            events: VecDeque::with_capacity(limits.max_events.min(1024)),
            limits,
            next_seq: 1,
            journal: None,
        }
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
    pub fn restore(&mut self, events: Vec<HistoryEvent>, next_seq: u64) {
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
        event.seq = self.next_seq;
        self.next_seq += 1;
        self.evict_to(self.limits.max_events.max(1) - 1);
        if let Some(j) = &mut self.journal {
            j.events.push(event.clone());
        }
        self.events.push_back(event);
        &self.events[self.events.len() - 1]
    }

    /// Drops events older than the retention window; returns how many were dropped.
    pub fn apply_retention(&mut self, now: i64) -> usize {
        match self.limits.retention {
            Some(r) => self.clear_before(now.saturating_sub(r)),
            None => 0,
        }
    }

    /// Seed `clear_history(before)`: removes every event older than `before`.
    ///
    /// Events arrive nearly in time order but replays and reconciliation can interleave, so
    /// this scans rather than assuming the ring is sorted.
    pub fn clear_before(&mut self, before: i64) -> usize {
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
        n - self.events.len()
    }

    pub fn query(&self, q: &EventQuery) -> QueryResult {
        let mut events = Vec::with_capacity(q.limit.min(self.events.len()).min(1024));
        let mut truncated = false;
        for e in self.events.iter().rev().filter(|e| q.matches(e)) {
            if events.len() == q.limit {
                truncated = true;
                break;
            }
            events.push(e.clone());
        }
        QueryResult { events, truncated }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HistoryEvent> {
        self.events.iter()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::time::NANOS_PER_SEC;

    fn ev(t: i64, kind: EventKind, name: &str, ns: &str) -> HistoryEvent {
        HistoryEvent {
            seq: 0,
            time_nanos: t,
            kind,
            action: kind.as_str().to_string(),
            runtime: RuntimeKind::Docker,
            container_id: format!("{name}-0123456789abcdef"),
            name: name.to_string(),
            image: "busybox".into(),
            namespace: ns.to_string(),
            pod: if ns.is_empty() {
                String::new()
            } else {
                format!("{name}-pod")
            },
            container: name.to_string(),
            exit_code: None,
            health: None,
        }
    }

    fn history(max: usize) -> History {
        History::new(HistoryLimits {
            max_events: max,
            retention: Some(60 * NANOS_PER_SEC),
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
            vec![9, 7]
        );
        assert!(r.truncated);
        let q = EventQuery {
            container: Some("a-0123".into()),
            since: Some(3),
            until: Some(4),
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
    fn clear_and_retention_remove_old_events() {
        let mut h = history(100);
        for t in 0..10 {
            h.push(ev(t * NANOS_PER_SEC, EventKind::Started, "a", ""));
        }
        assert_eq!(h.clear_before(3 * NANOS_PER_SEC), 3);
        assert_eq!(h.apply_retention(68 * NANOS_PER_SEC), 5);
        assert_eq!(h.len(), 2);
    }

    fn raw(pairs: &[(&str, &str)]) -> RawEventQuery {
        let mut r = RawEventQuery::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "container" => r.container = v,
                "namespace" => r.namespace = v,
                "pod" => r.pod = v,
                "type" => r.types = v,
                "since" => r.since = v,
                "until" => r.until = v,
                "limit" => r.limit = v,
                _ => unreachable!(),
            }
        }
        r
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let now = 1_000_000 * NANOS_PER_SEC;
        let cases = [
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "10001")], "limit"),
            (vec![("limit", "ten")], "limit"),
            (vec![("type", "started,exploded")], "type"),
            (vec![("since", "yesterday")], "since"),
            (vec![("until", "5 minutes")], "until"),
            (vec![("since", "1m"), ("until", "1h")], "since"),
            (vec![("container", " ")], "container"),
        ];
        for (pairs, param) in cases {
            let err = EventQuery::parse(raw(&pairs), now).unwrap_err();
            assert_eq!(err.param, param, "{pairs:?}");
        }
        let ok = EventQuery::parse(
            raw(&[("type", "started, died"), ("since", "1h"), ("limit", "5")]),
            now,
        )
        .unwrap();
        assert_eq!(ok.limit, 5);
        assert_eq!(ok.since, Some(now - 3600 * NANOS_PER_SEC));
        assert_eq!(ok.types, Some((1 << 1) | (1 << 4)));
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
}
