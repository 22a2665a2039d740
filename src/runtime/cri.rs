//! The Kubernetes CRI API (`runtime.v1.RuntimeService`), as the kubelet speaks it: what the
//! kubelet knows about each container (labels, the attempt ordinal, state, exit code, reason,
//! start and finish times), and the generic CRI source behind `--runtime crio`.
//!
//! The generic source follows the kubelet's own PLEG (see README "containerd and CRI-O"):
//! `GetContainerEvents` where the runtime implements it (CRI-O, containerd 1.7+), else a relist
//! of `ListContainers` every second, diffed against the previous list (the kubelet's generic
//! PLEG). Either way the list + status reconciliation after every (re)connect is what makes
//! the counts exact: the attempt ordinal of each container says how many restarts came before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerEventResponse, ContainerEventType, ContainerState, ContainerStatus,
    ContainerStatusRequest, GetEventsRequest, ListContainersRequest, VersionRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;
use tracing::{debug, info};

use super::snapshot::{ContainerSnapshot, SnapshotState};
use super::{ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::{ContainerLabels, EventKind, RuntimeEvent, RuntimeKind, SourceEvent, Subject};
use crate::time::UnixNanos;

/// How often the generic source lists containers when the runtime has no event stream: the
/// kubelet's generic PLEG relists every second too.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(1);
/// How long connecting to a CRI socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The CRI reason of a container the kernel OOM-killed (containerd and CRI-O agree).
pub const REASON_OOM_KILLED: &str = "OOMKilled";

/// The path of a `unix://` endpoint; CRI runtimes serve gRPC on unix sockets only.
pub fn unix_path(endpoint: &str) -> Result<PathBuf, SourceError> {
    match endpoint.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(SourceError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: "CRI and containerd sockets are unix sockets (unix://PATH)".into(),
        }),
    }
}

/// Opens a gRPC connection (HTTP/2) on a unix socket.
pub async fn connect_channel(endpoint: &str) -> Result<Channel, SourceError> {
    let path = unix_path(endpoint)?;
    let unreachable = |reason: String| SourceError::Unreachable {
        endpoint: endpoint.to_string(),
        reason,
    };
    if !path.exists() {
        return Err(unreachable(format!("no socket at {}", path.display())));
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&path)).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(unreachable(super::error_chain(&e))),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// A failed call: a connection that is gone is `Unreachable` (reconnect), the rest `Api`.
pub fn call_error(endpoint: &str, operation: &'static str, s: &tonic::Status) -> SourceError {
    let reason = format!("{:?}: {}", s.code(), s.message());
    if s.code() == Code::Unavailable {
        SourceError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        }
    } else {
        SourceError::Api {
            endpoint: endpoint.to_string(),
            operation,
            reason,
        }
    }
}

/// Which runtime a CRI `Version` answer names (`containerd`, `cri-o`).
pub fn runtime_of(runtime_name: &str) -> RuntimeKind {
    if runtime_name.eq_ignore_ascii_case("containerd") {
        RuntimeKind::Containerd
    } else {
        RuntimeKind::Crio
    }
}

/// Asks a CRI socket what it is.
pub async fn version(endpoint: &str, channel: Channel) -> Result<RuntimeInfo, SourceError> {
    let mut cri = RuntimeServiceClient::new(channel);
    let v = cri
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .map_err(|s| call_error(endpoint, "CRI Version", &s))?
        .into_inner();
    Ok(RuntimeInfo {
        runtime: runtime_of(&v.runtime_name),
        version: v.runtime_version,
        api_version: v.runtime_api_version,
    })
}

/// Whether a container's labels pass `--container-filter` (every `KEY` or `KEY=VALUE`).
pub fn filter_matches(filter: &ContainerFilter, labels: &HashMap<String, String>) -> bool {
    filter.matches(|k| labels.get(k).map(String::as_str))
}

/// The kubelet's labels and the attempt ordinal of a CRI container. The attempt is what
/// `kubectl` shows as RESTARTS; the tracker's kubelet-ordinal rule counts from it.
pub fn labels_of(st: &ContainerStatus) -> ContainerLabels {
    let mut labels = ContainerLabels::from_lookup(|k| st.labels.get(k).map(String::as_str));
    labels.k8s_restart_count = Some(st.metadata.as_ref().map_or(0, |m| u64::from(m.attempt)));
    labels
}

/// The name a CRI container is known by: its metadata name (the pod spec's container name).
fn name_of(st: &ContainerStatus) -> String {
    st.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| st.id.clone())
}

fn image_of(st: &ContainerStatus) -> String {
    st.image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| st.image_ref.clone())
}

pub fn subject_of(st: &ContainerStatus) -> Subject {
    Subject {
        container_id: st.id.clone(),
        name: name_of(st),
        image: image_of(st),
        labels: labels_of(st),
    }
}

/// CRI times are Unix nanoseconds, 0 when not yet.
fn nanos(t: i64) -> Option<UnixNanos> {
    (t > 0).then_some(UnixNanos::from_nanos(t))
}

pub fn snapshot_state(state: i32) -> SnapshotState {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerRunning) => SnapshotState::Running,
        Ok(ContainerState::ContainerExited) => SnapshotState::Exited,
        Ok(ContainerState::ContainerUnknown) => SnapshotState::Dead,
        Ok(ContainerState::ContainerCreated) | Err(_) => SnapshotState::Created,
    }
}

/// What the kubelet would see of one container.
pub fn snapshot_of(st: &ContainerStatus) -> ContainerSnapshot {
    let state = snapshot_state(st.state);
    let finished_at = nanos(st.finished_at);
    ContainerSnapshot {
        id: st.id.clone(),
        name: name_of(st),
        image: image_of(st),
        image_id: st.image_ref.clone(),
        labels: labels_of(st),
        state,
        started_at: nanos(st.started_at),
        finished_at,
        created_at: nanos(st.created_at),
        exit_code: finished_at.map(|_| i64::from(st.exit_code)),
        oom_killed: st.reason == REASON_OOM_KILLED,
        health: None,
        restart_count: 0,
    }
}

/// One container's status; `None` if it is gone.
pub async fn status(
    cri: &mut RuntimeServiceClient<Channel>,
    endpoint: &str,
    id: &str,
) -> Result<Option<ContainerStatus>, SourceError> {
    match cri
        .container_status(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().status),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(call_error(endpoint, "CRI ContainerStatus", &s)),
    }
}

/// Every container the CRI runtime holds (sandboxes are not containers in CRI), with its
/// status, as far as `filter` selects them. A container removed between the list and its
/// status is left out.
pub async fn list_statuses(
    cri: &mut RuntimeServiceClient<Channel>,
    endpoint: &str,
    filter: &ContainerFilter,
) -> Result<Vec<ContainerStatus>, SourceError> {
    let list = cri
        .list_containers(ListContainersRequest { filter: None })
        .await
        .map_err(|s| call_error(endpoint, "CRI ListContainers", &s))?
        .into_inner()
        .containers;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        if !filter_matches(filter, &c.labels) {
            continue;
        }
        if let Some(st) = status(cri, endpoint, &c.id).await? {
            out.push(st);
        }
    }
    Ok(out)
}

/// The generic CRI source (`--runtime crio`).
pub struct CriSource {
    endpoint: String,
    filter: ContainerFilter,
    channel: Option<Channel>,
    runtime: RuntimeKind,
    /// The session's list, handed to the relist as the state its first diff starts from:
    /// a change between the two lists can then not fall between them.
    baseline: Arc<Mutex<Option<Listed>>>,
}

/// What one list said, per container id.
type Listed = HashMap<String, (Seen, Arc<Subject>)>;

impl CriSource {
    pub fn new(endpoint: &str, filter: ContainerFilter) -> CriSource {
        CriSource {
            endpoint: endpoint.to_string(),
            filter,
            channel: None,
            runtime: RuntimeKind::Crio,
            baseline: Arc::default(),
        }
    }

    fn client(&self) -> Result<RuntimeServiceClient<Channel>, SourceError> {
        self.channel
            .clone()
            .map(RuntimeServiceClient::new)
            .ok_or_else(|| SourceError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: "not connected".into(),
            })
    }
}

impl Source for CriSource {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn replays(&self) -> bool {
        false
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        let channel = connect_channel(&self.endpoint).await?;
        let info = version(&self.endpoint, channel.clone()).await?;
        self.runtime = info.runtime;
        self.channel = Some(channel);
        Ok(info)
    }

    fn events(
        &self,
        _since: Option<UnixNanos>,
        _until: Option<UnixNanos>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>> {
        let cri = match self.client() {
            Ok(c) => c,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        *self.baseline.lock() = None;
        tokio::spawn(cri_events(
            cri,
            self.endpoint.clone(),
            self.filter.clone(),
            self.baseline.clone(),
            tx,
        ));
        stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        })
        .boxed()
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        let mut cri = self.client()?;
        let statuses = list_statuses(&mut cri, &self.endpoint, &self.filter).await?;
        let snapshots: Vec<_> = statuses.iter().map(snapshot_of).collect();
        *self.baseline.lock() = Some(
            statuses
                .iter()
                .zip(&snapshots)
                .map(|(st, s)| (s.id.clone(), (Seen::of(s), Arc::new(subject_of(st)))))
                .collect(),
        );
        Ok(snapshots)
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        let mut cri = self.client()?;
        Ok(status(&mut cri, &self.endpoint, container_id)
            .await?
            .filter(|st| filter_matches(&self.filter, &st.labels))
            .map(|st| snapshot_of(&st)))
    }

    async fn ping(&self) -> Result<(), SourceError> {
        let channel = self
            .channel
            .clone()
            .ok_or_else(|| SourceError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: "not connected".into(),
            })?;
        version(&self.endpoint, channel).await.map(|_| ())
    }
}

type Tx = mpsc::UnboundedSender<Result<Option<SourceEvent>, SourceError>>;

/// Events from `GetContainerEvents`, or from relisting when the runtime does not implement
/// it. Ends (with the error) when the runtime goes away or the receiver is dropped.
async fn cri_events(
    mut cri: RuntimeServiceClient<Channel>,
    endpoint: String,
    filter: ContainerFilter,
    baseline: Arc<Mutex<Option<Listed>>>,
    tx: Tx,
) {
    match cri.get_container_events(GetEventsRequest {}).await {
        Ok(stream) => {
            info!(endpoint = %endpoint, "following the runtime's CRI container events");
            let mut stream = stream.into_inner();
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    // The session ended: let go of the stream.
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(Some(ev)) => {
                        for item in map_cri_event(&ev, &filter) {
                            if tx.send(Ok(Some(item))).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err(SourceError::StreamEnded { endpoint }));
                        return;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(call_error(&endpoint, "CRI GetContainerEvents", &s)));
                        return;
                    }
                }
            }
        }
        Err(s) if s.code() == Code::Unimplemented => {
            info!(endpoint = %endpoint, interval_ms = RELIST_INTERVAL.as_millis() as u64, "the runtime has no CRI container events; relisting instead");
            relist(cri, endpoint, filter, baseline, tx).await;
        }
        Err(s) => {
            let _ = tx.send(Err(call_error(&endpoint, "CRI GetContainerEvents", &s)));
        }
    }
}

/// One CRI container event as lifecycle events. A stop says why in the container's status:
/// an OOM kill becomes `oom` then `died`, as Docker reports it.
pub fn map_cri_event(ev: &ContainerEventResponse, filter: &ContainerFilter) -> Vec<SourceEvent> {
    let status = ev
        .containers_statuses
        .iter()
        .find(|s| s.id == ev.container_id);
    if let Some(st) = status {
        if !filter_matches(filter, &st.labels) {
            return Vec::new();
        }
    }
    let subject = Arc::new(match status {
        Some(st) => subject_of(st),
        None => Subject {
            container_id: ev.container_id.clone(),
            ..Subject::default()
        },
    });
    let at = nanos(ev.created_at).unwrap_or_else(UnixNanos::now);
    let event = |kind: EventKind, action: &str, time_nanos: UnixNanos, exit_code: Option<i64>| {
        SourceEvent::Lifecycle(RuntimeEvent {
            time_nanos,
            kind,
            action: action.to_string(),
            subject: subject.clone(),
            exit_code,
            health: None,
        })
    };
    match ContainerEventType::try_from(ev.container_event_type) {
        Ok(ContainerEventType::ContainerCreatedEvent) => {
            vec![event(
                EventKind::Created,
                "CONTAINER_CREATED_EVENT",
                at,
                None,
            )]
        }
        Ok(ContainerEventType::ContainerStartedEvent) => {
            vec![event(
                EventKind::Started,
                "CONTAINER_STARTED_EVENT",
                at,
                None,
            )]
        }
        Ok(ContainerEventType::ContainerStoppedEvent) => {
            let mut out = Vec::with_capacity(2);
            let exit = status.map(|s| i64::from(s.exit_code));
            let at = status.and_then(|s| nanos(s.finished_at)).unwrap_or(at);
            if status.is_some_and(|s| s.reason == REASON_OOM_KILLED) {
                // Its own word: an event is known by time, container and action.
                out.push(event(
                    EventKind::Oom,
                    "CONTAINER_STOPPED_EVENT: OOMKilled",
                    at,
                    None,
                ));
            }
            out.push(event(EventKind::Died, "CONTAINER_STOPPED_EVENT", at, exit));
            out
        }
        Ok(ContainerEventType::ContainerDeletedEvent) => {
            vec![event(
                EventKind::Destroyed,
                "CONTAINER_DELETED_EVENT",
                at,
                None,
            )]
        }
        Err(_) => Vec::new(),
    }
}

/// What one relist remembers of a container, to tell what changed by the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub state: SnapshotState,
    pub started_at: Option<UnixNanos>,
    pub finished_at: Option<UnixNanos>,
}

impl Seen {
    pub fn of(s: &ContainerSnapshot) -> Seen {
        Seen {
            state: s.state,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

/// The lifecycle events between two relists of one container (the kubelet's generic PLEG
/// diff): a create, a start and an exit are stamped with the times the status gives, so an
/// event the reconciliation already reflected is recognised by the tracker as older news.
pub fn relist_events(before: Option<Seen>, now: &ContainerSnapshot) -> Vec<RuntimeEvent> {
    let subject = Arc::new(Subject {
        container_id: now.id.clone(),
        name: now.name.clone(),
        image: now.image.clone(),
        labels: now.labels.clone(),
    });
    let event = |kind: EventKind, time_nanos: UnixNanos, exit_code: Option<i64>| RuntimeEvent {
        time_nanos,
        kind,
        action: format!("relist: {kind}"),
        subject: subject.clone(),
        exit_code,
        health: None,
    };
    let mut out = Vec::new();
    if before.is_none() {
        out.push(event(
            EventKind::Created,
            now.created_at.unwrap_or_else(UnixNanos::now),
            None,
        ));
    }
    let old_start = before.and_then(|b| b.started_at);
    if let Some(t) = now.started_at.filter(|&t| Some(t) != old_start) {
        out.push(event(EventKind::Started, t, None));
    }
    let old_finish = before.and_then(|b| b.finished_at);
    if let Some(t) = now.finished_at.filter(|&t| Some(t) != old_finish) {
        // Never before its start in the history (see `relist`).
        let t = t.max(now.started_at.unwrap_or(t));
        if now.state != SnapshotState::Running {
            if now.oom_killed {
                out.push(event(EventKind::Oom, t, None));
            }
            out.push(event(EventKind::Died, t, now.exit_code));
        }
    }
    out
}

/// The changes of one relist, one list per container, as one sequence: the containers in
/// the order they first changed (so an attempt that came and went before the next one is
/// applied before it, and the kubelet-ordinal rule never sees attempt n+1 before attempt n,
/// docs/design.md "Restarts"), each container's events in their causal order, which CRI's
/// times are not (containerd stamps a start after the start call returns, and a process
/// that exits at once has finished before that). The list order is the runtime's, no order.
pub fn in_causal_order(mut changed: Vec<Vec<RuntimeEvent>>) -> Vec<RuntimeEvent> {
    // Stable: containers that changed at the same instant keep the list's order.
    changed.sort_by_key(|events| events.iter().map(|e| e.time_nanos).min());
    changed.into_iter().flatten().collect()
}

/// Relists every [`RELIST_INTERVAL`] and sends what changed since the previous list, the
/// first time since the session's own list (its reconciliation covers what that showed).
async fn relist(
    mut cri: RuntimeServiceClient<Channel>,
    endpoint: String,
    filter: ContainerFilter,
    baseline: Arc<Mutex<Option<Listed>>>,
    tx: Tx,
) {
    let mut known: Option<Listed> = None;
    let mut tick = tokio::time::interval(RELIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let Some(before) = known.take().or_else(|| baseline.lock().take()) else {
            // The session has not listed yet.
            continue;
        };
        // Only containers new or in another state are asked for their status: with the list
        // alone an idle node of 1 000 containers costs one call a second, not 1 001.
        let list = match cri
            .list_containers(ListContainersRequest { filter: None })
            .await
        {
            Ok(r) => r.into_inner().containers,
            Err(s) => {
                let _ = tx.send(Err(call_error(&endpoint, "CRI ListContainers", &s)));
                return;
            }
        };
        let mut next = HashMap::with_capacity(list.len());
        let mut changed = Vec::new();
        for c in list {
            if !filter_matches(&filter, &c.labels) {
                continue;
            }
            let was = before.get(&c.id);
            if let Some((seen, subject)) = was {
                if seen.state == snapshot_state(c.state) {
                    next.insert(c.id, (*seen, subject.clone()));
                    continue;
                }
            }
            let st = match status(&mut cri, &endpoint, &c.id).await {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let snap = snapshot_of(&st);
            let was = was.map(|(s, _)| *s);
            if was != Some(Seen::of(&snap)) {
                changed.push(relist_events(was, &snap));
            }
            next.insert(
                snap.id.clone(),
                (Seen::of(&snap), Arc::new(subject_of(&st))),
            );
        }
        let mut items = in_causal_order(changed);
        let now = UnixNanos::now();
        for (id, (_, subject)) in &before {
            if !next.contains_key(id) {
                items.push(RuntimeEvent {
                    time_nanos: now,
                    kind: EventKind::Destroyed,
                    action: "relist: destroyed".into(),
                    subject: subject.clone(),
                    exit_code: None,
                    health: None,
                });
            }
        }
        debug!(containers = next.len(), changes = items.len(), "relisted");
        for ev in items {
            if tx.send(Ok(Some(SourceEvent::Lifecycle(ev)))).is_err() {
                return;
            }
        }
        known = Some(next);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use k8s_cri::v1::ContainerMetadata;

    fn status(id: &str, attempt: u32, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            id: id.into(),
            metadata: Some(ContainerMetadata {
                name: "web".into(),
                attempt,
            }),
            state: state as i32,
            created_at: 10,
            started_at: if state == ContainerState::ContainerCreated {
                0
            } else {
                20
            },
            finished_at: if state == ContainerState::ContainerExited {
                30
            } else {
                0
            },
            exit_code: 137,
            reason: if state == ContainerState::ContainerExited {
                REASON_OOM_KILLED.into()
            } else {
                String::new()
            },
            labels: [
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.pod.name", "web-1"),
                ("io.kubernetes.pod.uid", "u1"),
                ("io.kubernetes.container.name", "web"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn the_attempt_is_the_kubelet_ordinal() {
        let s = snapshot_of(&status("c1", 3, ContainerState::ContainerRunning));
        assert_eq!(s.labels.k8s_restart_count, Some(3));
        assert_eq!(s.labels.pod.as_ref().map(|p| p.pod.as_str()), Some("web-1"));
        assert_eq!(
            (s.state, s.started_at, s.finished_at),
            (
                SnapshotState::Running,
                Some(UnixNanos::from_nanos(20)),
                None
            )
        );
        assert_eq!(s.exit_code, None, "no exit code before an exit");
        let s = snapshot_of(&status("c1", 3, ContainerState::ContainerExited));
        assert_eq!((s.exit_code, s.oom_killed), (Some(137), true));
    }

    #[test]
    fn relists_turn_state_changes_into_events_stamped_by_the_status() {
        let created = snapshot_of(&status("c1", 0, ContainerState::ContainerCreated));
        let kinds = |evs: Vec<RuntimeEvent>| -> Vec<(EventKind, i64)> {
            evs.iter()
                .map(|e| (e.kind, e.time_nanos.as_nanos()))
                .collect()
        };
        assert_eq!(
            kinds(relist_events(None, &created)),
            vec![(EventKind::Created, 10)]
        );
        let running = snapshot_of(&status("c1", 0, ContainerState::ContainerRunning));
        assert_eq!(
            kinds(relist_events(Some(Seen::of(&created)), &running)),
            vec![(EventKind::Started, 20)]
        );
        let exited = snapshot_of(&status("c1", 0, ContainerState::ContainerExited));
        let evs = relist_events(Some(Seen::of(&running)), &exited);
        assert_eq!(evs[1].exit_code, Some(137));
        assert_eq!(
            kinds(evs),
            vec![(EventKind::Oom, 30), (EventKind::Died, 30)]
        );
        assert!(relist_events(Some(Seen::of(&exited)), &exited).is_empty());
        assert_eq!(
            kinds(relist_events(None, &exited)),
            vec![
                (EventKind::Created, 10),
                (EventKind::Started, 20),
                (EventKind::Oom, 30),
                (EventKind::Died, 30)
            ],
            "a container born and dead between two relists"
        );
    }

    #[test]
    fn a_relist_applies_attempts_in_the_order_they_came() {
        // Attempts 2 and 3 both came and went between two relists; the list names the newer
        // first. Attempt 3 is stamped as containerd does a process that exits at once: its
        // exit before its start.
        let mut a2 = status("a2", 2, ContainerState::ContainerExited);
        let mut a3 = status("a3", 3, ContainerState::ContainerExited);
        (a2.created_at, a2.started_at, a2.finished_at) = (100, 110, 120);
        (a3.created_at, a3.started_at, a3.finished_at) = (200, 215, 210);
        let listed = vec![
            relist_events(None, &snapshot_of(&a3)),
            relist_events(None, &snapshot_of(&a2)),
        ];
        let order: Vec<(String, EventKind)> = in_causal_order(listed)
            .iter()
            .map(|e| (e.subject.container_id.clone(), e.kind))
            .collect();
        let want = |id: &str, kinds: [EventKind; 4]| kinds.map(|k| (id.to_string(), k));
        let each = [
            EventKind::Created,
            EventKind::Started,
            EventKind::Oom,
            EventKind::Died,
        ];
        assert_eq!(order, [want("a2", each), want("a3", each)].concat());
    }

    #[test]
    fn stop_events_carry_the_exit_and_the_oom() {
        let ev = ContainerEventResponse {
            container_id: "c1".into(),
            container_event_type: ContainerEventType::ContainerStoppedEvent as i32,
            created_at: 40,
            pod_sandbox_status: None,
            containers_statuses: vec![status("c1", 2, ContainerState::ContainerExited)],
        };
        let out = map_cri_event(&ev, &ContainerFilter::default());
        let kinds: Vec<_> = out
            .iter()
            .map(|e| match e {
                SourceEvent::Lifecycle(ev) => (ev.kind, ev.time_nanos.as_nanos(), ev.exit_code),
                SourceEvent::Renamed(_) => panic!("no renames in CRI"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![(EventKind::Oom, 30, None), (EventKind::Died, 30, Some(137))]
        );
        let filtered = ContainerFilter::parse(&["team=other".into()]).expect("filter");
        assert!(map_cri_event(&ev, &filtered).is_empty());
    }

    #[test]
    fn filters_need_every_label() {
        let labels: HashMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        let f = |items: &[&str]| {
            ContainerFilter::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("filter")
        };
        assert!(filter_matches(&f(&[]), &labels));
        assert!(filter_matches(&f(&["a", "a=1"]), &labels));
        assert!(!filter_matches(&f(&["a=2"]), &labels));
        assert!(!filter_matches(&f(&["a", "b"]), &labels));
    }
}
