//! Podman's own REST API (libpod, `/v4.0.0/libpod/...`) over its unix socket or `tcp://`.
//!
//! Why libpod and not Podman's Docker-compatible endpoints: only libpod says which container
//! is a pod's infra container (a sandbox, never tracked), carries the health status of every
//! check, and keeps Podman's own action words (`died`, not the renamed `die`). Podman also
//! persists its events (file or journald), so a replay after a gap reaches much further back
//! than Docker's 256 in-memory events.
//!
//! Three Podman facts shape this file (seen on Podman 4.3):
//! - `since` is exclusive: we ask from one nanosecond earlier, so the watch loop gets the
//!   inclusive replay it expects (the cursor's own event comes back: an overlap, no gap).
//! - `until` on a past time answers nothing (the log reader is stopped before it reads), so
//!   a bounded replay reads the log to its end without following it (`stream=false`) and
//!   drops what is newer than `until` itself.
//! - the file log rotates at 1 MB and a stream opened with `since` ends there: the live
//!   stream reopens itself from its last event, so a rotation is not a lost connection.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};
use parking_lot::Mutex;
use tracing::{debug, warn};

mod http;
mod wire;

use super::{inspect_all, ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::snapshot::ContainerSnapshot;
use crate::event::{EventKind, RuntimeKind, SourceEvent};
use crate::time::UnixNanos;
use http::{encode, HttpError, Lines, Target};
use wire::*;

/// The libpod API prefix; Podman 4 and 5 answer it (their minimum libpod API is 4.0.0).
const API: &str = "/v4.0.0/libpod";
/// Times in a row the live stream may end without delivering anything before the source
/// reports it as ended (a rotation delivers at least the events before it).
const MAX_EMPTY_REOPENS: u32 = 3;

/// Which containers are pod infra containers, learned from list, inspect and events.
#[derive(Debug, Default)]
struct InfraCache {
    known: HashMap<String, bool>,
}

pub struct PodmanSource {
    endpoint: String,
    filter: ContainerFilter,
    target: Result<Target, String>,
    infra: Arc<Mutex<InfraCache>>,
}

impl PodmanSource {
    /// `endpoint` is `unix:///path`, a bare path, or `tcp://host:port`.
    pub fn new(endpoint: &str, filter: ContainerFilter) -> PodmanSource {
        PodmanSource {
            endpoint: endpoint.to_string(),
            filter,
            target: Target::parse(endpoint),
            infra: Arc::default(),
        }
    }

    fn target(&self) -> Result<&Target, SourceError> {
        self.target.as_ref().map_err(|e| SourceError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: e.clone(),
        })
    }

    fn error(&self, operation: &'static str, e: HttpError) -> SourceError {
        classify(&self.endpoint, operation, e)
    }

    /// The libpod `filters` query value: `{"label": [...]}` plus `extra`.
    fn filters(&self, extra: &[(&str, &str)]) -> String {
        let mut f: HashMap<&str, Vec<String>> = HashMap::new();
        if !self.filter.labels.is_empty() {
            f.insert("label", self.filter.labels.clone());
        }
        for (k, v) in extra {
            f.entry(k).or_default().push(v.to_string());
        }
        encode(&serde_json::to_string(&f).unwrap_or_else(|_| "{}".into()))
    }
}

/// Connection failures are `Unreachable` (back off and retry); answers Podman gave are `Api`.
fn classify(endpoint: &str, operation: &'static str, e: HttpError) -> SourceError {
    if e.is_transport() {
        SourceError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: format!("{operation}: {e}"),
        }
    } else {
        SourceError::Api {
            endpoint: endpoint.to_string(),
            operation,
            reason: e.to_string(),
        }
    }
}

/// Everything an event stream needs, cloned into it.
#[derive(Clone)]
struct StreamCtx {
    endpoint: String,
    target: Target,
    infra: Arc<Mutex<InfraCache>>,
    filter: ContainerFilter,
}

impl StreamCtx {
    /// Whether `container_id` (a member of `pod_id`) is its pod's infra container. Asked
    /// once per container, by inspect; when the container is already gone (a replay of old
    /// events), Podman's default infra name decides. The reading task waits for this one
    /// local request: unlike Docker, Podman serves events from its log and drops nothing for
    /// a reader that pauses.
    async fn is_infra(&self, container_id: &str, pod_id: &str, name: &str) -> bool {
        if let Some(&known) = self.infra.lock().known.get(container_id) {
            return known;
        }
        let path = format!("{API}/containers/{}/json", encode(container_id));
        let infra = match self.target.get_json::<Inspect>(&path).await {
            Ok(i) => i.is_infra,
            Err(e) => {
                if !e.is_not_found() {
                    debug!(container_id, error = %e, "cannot inspect a pod member; judging by its name");
                }
                looks_like_infra(name, pod_id)
            }
        };
        self.infra
            .lock()
            .known
            .insert(container_id.to_string(), infra);
        infra
    }

    /// Translates one line, asking Podman whether a pod member is the pod's infra. A rename
    /// needs no such answer: the tracker holds no state for an infra container to rename.
    async fn translate(&self, line: Vec<u8>) -> Option<SourceEvent> {
        let Some(raw) = parse_line(&line) else {
            warn!(
                line = %String::from_utf8_lossy(&line[..line.len().min(200)]),
                "skipping an unparsable line in Podman's event stream"
            );
            return None;
        };
        // libpod's event filter ORs the values of one key: check every label here.
        let attrs = raw.actor.attributes.as_ref();
        if !self
            .filter
            .matches(|k| attrs.and_then(|a| a.get(k)).map(String::as_str))
        {
            return None;
        }
        if let Some(r) = to_rename(&raw) {
            return Some(SourceEvent::Renamed(r));
        }
        let pod = pod_of(&raw);
        let mut ev = to_runtime_event(raw)?;
        // Only some actions carry `podId` (a `died` written by the cleanup process does not),
        // so what was learned about a container holds for all its events.
        let id = ev.container_id();
        let known = self.infra.lock().known.get(id).copied();
        let sandbox = match (known, pod) {
            (Some(infra), _) => infra,
            (None, Some(pod)) => self.is_infra(id, &pod, &ev.subject.name).await,
            (None, None) => looks_like_default_infra(&ev.subject.name),
        };
        if ev.labels().sandbox != sandbox {
            ev.subject_mut().labels.sandbox = sandbox;
        }
        if ev.kind == EventKind::Destroyed {
            self.infra.lock().known.remove(ev.container_id());
        }
        Some(SourceEvent::Lifecycle(ev))
    }
}

type Item = Result<Option<SourceEvent>, SourceError>;

/// The state of one event stream between items.
struct EventStream {
    ctx: StreamCtx,
    filters: String,
    /// Replay (`Some(until)`) or live (`None`).
    until: Option<UnixNanos>,
    /// Where the next (re)open starts, inclusive.
    since: Option<UnixNanos>,
    lines: Option<Lines>,
    delivered_since_open: bool,
    empty_reopens: u32,
    finished: bool,
}

impl EventStream {
    fn query(&self) -> String {
        let mut q = format!(
            "{API}/events?stream={}&filters={}",
            self.until.is_none(),
            self.filters
        );
        if let Some(s) = self.since {
            q.push_str("&since=");
            q.push_str(&encode(&format_podman_since(s)));
        }
        q
    }

    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if self.finished {
                return None;
            }
            let lines = match self.lines.as_mut() {
                Some(l) => l,
                None => {
                    let q = self.query();
                    match self.ctx.target.get_ok(&q).await {
                        Ok(resp) => {
                            self.delivered_since_open = false;
                            self.lines.insert(Lines::new(resp.into_body()))
                        }
                        Err(e) => {
                            self.finished = true;
                            return Some(Err(classify(&self.ctx.endpoint, "events", e)));
                        }
                    }
                }
            };
            match lines.next().await {
                Some(Ok(line)) => {
                    self.delivered_since_open = true;
                    let Some(ev) = self.ctx.translate(line).await else {
                        return Some(Ok(None));
                    };
                    let t = ev.time_nanos();
                    if self.until.is_some_and(|u| t > u) {
                        // The live stream brings it; a replay stops at `until`.
                        return Some(Ok(None));
                    }
                    self.since = Some(self.since.map_or(t, |s| s.max(t)));
                    return Some(Ok(Some(ev)));
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(classify(&self.ctx.endpoint, "events", e)));
                }
                None => {
                    self.lines = None;
                    if self.until.is_some() {
                        self.finished = true;
                        return None;
                    }
                    // A live stream that ends cleanly met a log rotation (or a service on
                    // its way down): reopen from the last event; duplicates are dropped
                    // downstream, a dead service fails the reopen.
                    self.empty_reopens = if self.delivered_since_open {
                        0
                    } else {
                        self.empty_reopens + 1
                    };
                    if self.empty_reopens >= MAX_EMPTY_REOPENS {
                        self.finished = true;
                        return Some(Err(SourceError::StreamEnded {
                            endpoint: self.ctx.endpoint.clone(),
                        }));
                    }
                    debug!(since = ?self.since.map(UnixNanos::to_rfc3339), "Podman's event stream ended (log rotation?); reopening");
                }
            }
        }
    }
}

impl Source for PodmanSource {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        let target = self.target()?.clone();
        if let Some(path) = target.socket_path() {
            if !path.exists() {
                return Err(SourceError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: format!("no socket at {}", path.display()),
                });
            }
        }
        let v: VersionAnswer =
            target
                .get_json(&format!("{API}/version"))
                .await
                .map_err(|e| match e {
                    HttpError::Status { status: 404, .. } => SourceError::Api {
                        endpoint: self.endpoint.clone(),
                        operation: "version",
                        reason: "no libpod API here (is this a Docker socket?)".into(),
                    },
                    e => self.error("version", e),
                })?;
        let engine = v
            .components
            .iter()
            .flatten()
            .find(|c| c.name.to_ascii_lowercase().contains("podman"));
        let Some(engine) = engine else {
            return Err(SourceError::Api {
                endpoint: self.endpoint.clone(),
                operation: "version",
                reason: "the answer names no Podman engine".into(),
            });
        };
        let api_version = engine
            .details
            .as_ref()
            .and_then(|d| d.get("APIVersion"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        Ok(RuntimeInfo {
            runtime: RuntimeKind::Podman,
            version: v.version,
            api_version,
        })
    }

    fn events(
        &self,
        since: Option<UnixNanos>,
        until: Option<UnixNanos>,
    ) -> BoxStream<'static, Item> {
        let target = match self.target() {
            Ok(t) => t.clone(),
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let state = EventStream {
            ctx: StreamCtx {
                endpoint: self.endpoint.clone(),
                target,
                infra: self.infra.clone(),
                filter: self.filter.clone(),
            },
            filters: self.filters(&[("type", "container")]),
            until,
            since,
            lines: None,
            delivered_since_open: false,
            empty_reopens: 0,
            finished: false,
        };
        stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
        .boxed()
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        let target = self.target()?.clone();
        let list: Vec<ListItem> = target
            .get_json(&format!(
                "{API}/containers/json?all=true&filters={}",
                self.filters(&[])
            ))
            .await
            .map_err(|e| self.error("list containers", e))?;
        {
            let mut cache = self.infra.lock();
            cache.known.clear();
            for c in &list {
                cache.known.insert(c.id.clone(), c.is_infra);
            }
        }
        let selected = list.into_iter().filter(|c| {
            !c.is_infra
                && self
                    .filter
                    .matches(|k| c.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str))
        });
        let ids = selected.map(|c| c.id);
        inspect_all(ids, |id| async move { self.inspect(&id).await }).await
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        let path = format!("{API}/containers/{}/json", encode(container_id));
        match self.target()?.get_json::<Inspect>(&path).await {
            Ok(i) => Ok(Some(to_snapshot(i))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.error("inspect container", e)),
        }
    }

    async fn ping(&self) -> Result<(), SourceError> {
        let target = self.target()?;
        let resp = target
            .get_ok(&format!("{API}/_ping"))
            .await
            .map_err(|e| self.error("ping", e))?;
        drop(resp);
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::event::snapshot::SnapshotState;
    use crate::event::{Health, Rename};

    const DIED: &str = r#"{"status":"died","id":"25e82be567f6","from":"localhost/lat-busybox:1","Type":"container","Action":"died","Actor":{"ID":"25e82be567f6","Attributes":{"a":"b","containerExitCode":"137","image":"localhost/lat-busybox:1","name":"t1","podId":""}},"scope":"local","time":1795667329,"timeNano":1795667329494075242}"#;

    fn line(action: &str, extra: &str) -> String {
        format!(
            r#"{{"status":"{action}","id":"abc","Type":"container","Action":"{action}","Actor":{{"ID":"abc","Attributes":{{"containerExitCode":"0","image":"img","name":"web","podId":""}}}},"time":1795667329,"timeNano":1795667329000000001{extra}}}"#
        )
    }

    #[test]
    fn died_carries_the_exit_code_and_others_do_not() {
        let e = to_runtime_event(parse_line(DIED.as_bytes()).unwrap()).unwrap();
        assert_eq!(e.kind, EventKind::Died);
        assert_eq!(e.exit_code, Some(137));
        assert_eq!(e.action, "died");
        assert_eq!(e.subject.name, "t1");
        assert_eq!(e.time_nanos.as_nanos(), 1_795_667_329_494_075_242);
        // Podman stamps containerExitCode "0" on every event: a start has no exit code.
        let s = to_runtime_event(parse_line(line("start", "").as_bytes()).unwrap()).unwrap();
        assert_eq!((s.kind, s.exit_code), (EventKind::Started, None));
    }

    #[test]
    fn podman_only_words_are_ignored_and_pods_are_not_containers() {
        for a in [
            "init",
            "cleanup",
            "sync",
            "exec_died",
            "mount",
            "checkpoint",
        ] {
            assert!(
                to_runtime_event(parse_line(line(a, "").as_bytes()).unwrap()).is_none(),
                "{a}"
            );
        }
        let pod = line("stop", "").replace(r#""Type":"container""#, r#""Type":"pod""#);
        assert!(to_runtime_event(parse_line(pod.as_bytes()).unwrap()).is_none());
        let image = line("pull", "").replace(r#""Type":"container""#, r#""Type":"image""#);
        assert!(to_runtime_event(parse_line(image.as_bytes()).unwrap()).is_none());
    }

    #[test]
    fn health_status_comes_from_the_top_level_field() {
        let l = line("health_status", r#","HealthStatus":"unhealthy""#);
        let e = to_runtime_event(parse_line(l.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            (e.kind, e.health),
            (EventKind::HealthStatus, Some(Health::Unhealthy))
        );
    }

    #[test]
    fn a_line_with_a_torn_write_before_it_still_parses() {
        let torn = format!("{}{}", &DIED[..120], DIED);
        let e = to_runtime_event(parse_line(torn.as_bytes()).unwrap()).unwrap();
        assert_eq!(e.exit_code, Some(137));
        assert!(parse_line(b"{\"status\":\"died\",\"id\"").is_none());
        assert!(parse_line(b"").is_none());
    }

    #[test]
    fn infra_names_follow_podmans_default() {
        let pod = "bcf91392c67557f9be80719b4952dc221ab4afcf4da84ddd5b769a390c2168c5";
        assert!(looks_like_infra("bcf91392c675-infra", pod));
        assert!(!looks_like_infra("web-infra", pod));
        assert!(!looks_like_infra("-infra", pod));
        assert!(!looks_like_infra("bcf91392c675", pod));
        assert!(looks_like_default_infra("bcf91392c675-infra"));
        assert!(!looks_like_default_infra("shop-infra"));
    }

    #[test]
    fn since_is_made_inclusive_and_queries_are_encoded() {
        assert_eq!(
            format_podman_since(UnixNanos::from_nanos(1_795_667_327_121_379_813)),
            "2026-11-26T04:28:47.121379812Z"
        );
        assert_eq!(encode("a=b c/{}"), "a%3Db%20c%2F%7B%7D");
        let filter = ContainerFilter::parse(&["x=y".into()]).unwrap();
        let src = PodmanSource::new("/run/p.sock", filter);
        let f = src.filters(&[("type", "container")]);
        assert!(f.contains(&encode(r#""label":["x=y"]"#)), "{f}");
        assert!(f.contains(&encode(r#""type":["container"]"#)), "{f}");
    }

    #[test]
    fn inspect_of_a_pod_infra_container_is_a_sandbox() {
        let json = r#"{"Id":"aeca97d7a3f9","Name":"bcf91392c675-infra","Created":"2026-11-26T04:28:56.257985799Z",
            "Image":"54a51b763f72","ImageName":"localhost/lat-busybox:1","RestartCount":0,"IsInfra":true,
            "State":{"Status":"running","ExitCode":0,"OOMKilled":false,"StartedAt":"2026-11-26T04:28:56.400583518Z",
            "FinishedAt":"0001-01-01T00:00:00Z","Health":{"Status":"","FailingStreak":0,"Log":null}},
            "Config":{"Labels":null}}"#;
        let s = to_snapshot(serde_json::from_str(json).unwrap());
        assert!(s.labels.sandbox);
        assert_eq!(s.state, SnapshotState::Running);
        assert_eq!(s.finished_at, None);
        assert_eq!(s.health, None);
        assert_eq!(s.name, "bcf91392c675-infra");
    }

    #[test]
    fn a_rename_carries_the_new_name_and_is_no_lifecycle_event() {
        let l = line("rename", "").replace(r#""name":"web""#, r#""name":"web-2""#);
        let raw = parse_line(l.as_bytes()).unwrap();
        assert_eq!(
            to_rename(&raw),
            Some(Rename {
                time_nanos: UnixNanos::from_nanos(1_795_667_329_000_000_001),
                container_id: "abc".into(),
                name: "web-2".into(),
            })
        );
        assert!(to_runtime_event(raw).is_none());
        let start = parse_line(line("start", "").as_bytes()).unwrap();
        assert!(to_rename(&start).is_none());
    }
}
