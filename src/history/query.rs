//! The query language of `GET /api/v1/events` (README "HTTP API"): parameters parsed and
//! validated into an [`EventQuery`], and the search over the history, through the
//! per-container index when it beats a scan.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{EventSubject, History, HistoryEvent, Text, INDEX_SHARE};
use crate::event::EventKind;
use crate::time::{parse_time_or_ago, TimeError, UnixNanos};

/// Hard ceiling of `limit` in a query: no request may make the agent copy more.
pub const MAX_QUERY_LIMIT: usize = 10_000;
pub const DEFAULT_QUERY_LIMIT: usize = 100;

/// A parsed, validated search over the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Runtime name, container id prefix, or Kubernetes container name.
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Bit set over [`EventKind::index`]; `None` is every type.
    pub types: Option<u16>,
    pub since: Option<UnixNanos>,
    pub until: Option<UnixNanos>,
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

fn parse_time(
    param: &'static str,
    v: Option<&str>,
    now: UnixNanos,
) -> Result<Option<UnixNanos>, QueryError> {
    v.map(|s| parse_time_or_ago(s, now).map_err(|e: TimeError| QueryError::new(param, e)))
        .transpose()
}

impl EventQuery {
    /// Validates raw parameters; `now` anchors durations meaning "ago".
    pub fn parse(raw: RawEventQuery, now: UnixNanos) -> Result<EventQuery, QueryError> {
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
}

/// The per-event tests of an [`EventQuery`], as a `Copy` value the scan keeps in registers.
/// Namespace and pod are the history's own shared copies of the strings asked for (every
/// event's subject strings come from [`History`]'s interner), so an event is tested by a
/// pointer compare instead of a string compare, and a namespace or pod no event has answers
/// at once. Measured with benches/scrape.rs, `history_query_100k`.
#[derive(Clone, Copy)]
struct Filter<'h> {
    types: Option<u16>,
    since: Option<UnixNanos>,
    until: Option<UnixNanos>,
    namespace: Option<&'h Text>,
    pod: Option<&'h Text>,
    container: Option<&'h str>,
}

impl<'h> Filter<'h> {
    /// `None` when a namespace or pod is asked that no event in `h` has.
    fn of(q: &'h EventQuery, h: &'h History) -> Option<Self> {
        let shared = |s: &Option<String>| match s {
            None => Some(None),
            Some(s) => h.interner.get(s).map(Some),
        };
        Some(Filter {
            types: q.types,
            since: q.since,
            until: q.until,
            namespace: shared(&q.namespace)?,
            pod: shared(&q.pod)?,
            container: q.container.as_deref(),
        })
    }

    /// Forced inline into the scan: left to the compiler once the query code moved to this
    /// file, it became a call per event (45 % more instructions for the time-window query).
    #[inline(always)]
    fn matches(self, e: &HistoryEvent) -> bool {
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
        self.matches_subject(&e.subject)
    }

    #[inline(always)]
    fn matches_subject(self, s: &EventSubject) -> bool {
        if self
            .namespace
            .is_some_and(|n| !Arc::ptr_eq(n, &s.namespace))
            || self.pod.is_some_and(|p| !Arc::ptr_eq(p, &s.pod))
        {
            return false;
        }
        match self.container {
            None => true,
            Some(c) => c == &*s.name || c == &*s.container || s.container_id.starts_with(c),
        }
    }
}

/// The answer to a query: newest first, and whether more events matched than were returned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryResult {
    pub events: Vec<HistoryEvent>,
    pub truncated: bool,
}

impl History {
    pub fn query(&self, q: &EventQuery) -> QueryResult {
        match q.container.as_deref().and_then(|c| self.candidates(c)) {
            Some(seqs) => self.collect(seqs.into_iter().filter_map(|s| self.get(s)), q),
            None => self.scan(q),
        }
    }

    /// The sequence numbers (newest first) of the containers a `container` filter selects,
    /// or `None` when they are too many for the postings to beat a scan.
    pub(super) fn candidates(&self, c: &str) -> Option<Vec<u64>> {
        let mut total = 0;
        let mut lists = Vec::new();
        for (id, p) in &self.by_container {
            if p.may_match(id, c) {
                total += p.seqs.len();
                lists.push(&p.seqs);
            }
        }
        if total * INDEX_SHARE > self.events.len() {
            return None;
        }
        let mut seqs: Vec<u64> = lists.into_iter().flatten().copied().collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        Some(seqs)
    }

    fn get(&self, seq: u64) -> Option<&HistoryEvent> {
        let i = self.events.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.events.get(i)
    }

    /// Every event, newest first, through the filter: the path of queries the index cannot
    /// narrow. The ring buffer's two halves are walked as plain slices so the whole loop stays
    /// in one function with the filter in registers; through the ring buffer's iterator (a
    /// `for` loop, `filter` or `try_for_each`) the loop was a separate function reading the
    /// filter from memory at every event (benches/scrape.rs, `history_query_100k`).
    pub(super) fn scan(&self, q: &EventQuery) -> QueryResult {
        let Some(filter) = Filter::of(q, self) else {
            return QueryResult::default();
        };
        let mut found = Found::new(q.limit, self.events.len());
        let (older, newer) = self.events.as_slices();
        'halves: for half in [newer, older] {
            for e in half.iter().rev() {
                if filter.matches(e) && !found.offer(e) {
                    break 'halves;
                }
            }
        }
        found.into_result()
    }

    /// The events of the index's candidates (newest first) that pass the filter.
    fn collect<'a>(
        &self,
        it: impl Iterator<Item = &'a HistoryEvent>,
        q: &EventQuery,
    ) -> QueryResult {
        let Some(filter) = Filter::of(q, self) else {
            return QueryResult::default();
        };
        let mut found = Found::new(q.limit, self.events.len());
        for e in it {
            if filter.matches(e) && !found.offer(e) {
                break;
            }
        }
        found.into_result()
    }
}

/// The matches of a query so far, up to its limit.
struct Found {
    events: Vec<HistoryEvent>,
    limit: usize,
    truncated: bool,
}

impl Found {
    fn new(limit: usize, history_len: usize) -> Self {
        Found {
            events: Vec::with_capacity(limit.min(history_len).min(1024)),
            limit,
            truncated: false,
        }
    }

    /// Keeps a match; false once one more than the limit matched (the answer is truncated).
    #[inline(always)]
    fn offer(&mut self, e: &HistoryEvent) -> bool {
        if self.events.len() == self.limit {
            self.truncated = true;
            return false;
        }
        self.events.push(e.clone());
        true
    }

    fn into_result(self) -> QueryResult {
        QueryResult {
            events: self.events,
            truncated: self.truncated,
        }
    }
}

#[cfg(test)]
mod test {
    use super::super::test::{ev, history};
    use super::*;
    use crate::time::Nanos;

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

    /// Namespace and pod are matched by the interner's shared copy (`Filter`): the answers
    /// must equal a plain string filter while containers churn through the interner's
    /// sweeps, and after a restore from unshared events.
    #[test]
    fn namespace_and_pod_queries_equal_a_string_filter() {
        let mut h = history(300);
        let check = |h: &History| {
            for ns in ["ns-0", "ns-3", "ns-6", "ns-7", ""] {
                for pod in [None, Some("c5-pod"), Some("c1000-pod")] {
                    let q = EventQuery {
                        namespace: Some(ns.into()),
                        pod: pod.map(Into::into),
                        types: Some(parse_types("started,died").expect("types")),
                        limit: 50,
                        ..Default::default()
                    };
                    let want: Vec<u64> = h
                        .iter()
                        .rev()
                        .filter(|e| {
                            *e.subject.namespace == *ns
                                && pod.is_none_or(|p| *e.subject.pod == *p)
                                && matches!(e.kind, EventKind::Started | EventKind::Died)
                        })
                        .map(|e| e.seq)
                        .collect();
                    let got = h.query(&q);
                    let seqs: Vec<u64> = got.events.iter().map(|e| e.seq).collect();
                    assert_eq!(seqs, want.iter().copied().take(50).collect::<Vec<_>>());
                    assert_eq!(got.truncated, want.len() > 50, "{ns} {pod:?}");
                }
            }
        };
        for t in 0..4000 {
            let name = format!("c{}", t % 700);
            h.push(ev(
                t,
                EventKind::ALL[(t % 11) as usize],
                &name,
                &format!("ns-{}", t % 7),
            ));
            if t % 500 == 0 {
                check(&h);
            }
        }
        check(&h);
        let unshared: Vec<HistoryEvent> = h
            .iter()
            .map(|e| HistoryEvent {
                subject: Arc::new(EventSubject::clone(&e.subject)),
                ..e.clone()
            })
            .map(|mut e| {
                let s = Arc::make_mut(&mut e.subject);
                s.namespace = Arc::from(&*s.namespace);
                s.pod = Arc::from(&*s.pod);
                e
            })
            .collect();
        let mut restored = history(300);
        restored.restore(unshared, 0);
        check(&restored);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let now = UnixNanos::from_secs(1_000_000);
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
        assert_eq!(ok.since, Some(now - Nanos::from_secs(3600)));
        assert_eq!(ok.types, Some((1 << 1) | (1 << 4)));
    }
}
