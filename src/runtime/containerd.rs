//! containerd (`--runtime containerd`): real time from containerd's own event stream (the
//! events service `Subscribe`), and what the kubelet knows from the CRI API on the same socket
//! (see README "containerd and CRI-O").
//!
//! containerd's events carry a container id and nothing else: no labels, no attempt. Each
//! container is therefore looked up once, when its first event arrives (containerd's
//! container record for its kind and labels, CRI's status for the attempt ordinal), and
//! remembered; a snapshot fills the same memory. Pod sandboxes (`io.cri-containerd.kind=
//! sandbox`) are remembered as "not tracked" and never become events.
//!
//! containerd keeps no event log: there is no replay. The subscription is made first, then
//! the list + status reconciliation counts what happened before it from the attempt ordinals
//! (the tracker's kubelet-ordinal rule), so only restarts observed as events enter the history.
//!
//! Namespaces: the CRI plugin's containers live in `k8s.io` and are listed through CRI. Any
//! other namespace given with `--containerd-namespaces` (Docker's `moby`, nerdctl's `default`)
//! is listed through containerd's containers and tasks services: no attempt ordinals, no
//! exit codes of containers whose task is gone, and their creation time stands for their start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    GetContainerRequest, ListContainersRequest, ListTasksRequest, PublishRequest, SubscribeRequest,
};
use containerd_client::types::v1::{Process, Status as TaskStatus};
use containerd_client::types::Envelope;
use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{debug, info, warn};

mod wire;

use wire::{cri_lags, exited_since, timestamp_nanos};
pub use wire::{cri_metadata, decode, CriMetadata, Decoded, StartOrder, CRI_METADATA_EXTENSION};

use super::cri;
use super::snapshot::{ContainerSnapshot, SnapshotState};
use super::{ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::{ContainerLabels, EventKind, RuntimeEvent, RuntimeKind, SourceEvent, Subject};
use crate::time::UnixNanos;

/// The namespace of the CRI plugin's containers (the kubelet's).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The label containerd's CRI plugin puts on every container record: `sandbox` or `container`.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
/// How long a snapshot waits for the session's subscription to be on its way.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The topic of the agent's own marker events (see [`Marker`]).
pub const SYNC_TOPIC: &str = "/lifecycle-agent/sync";
/// How often a marker is published until the subscription delivers one.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// gRPC metadata key that selects a containerd namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// What an event of one container is about, or `None`: a sandbox, or filtered out.
type Known = Option<Arc<Subject>>;

pub struct ContainerdSource {
    endpoint: String,
    filter: ContainerFilter,
    namespaces: Vec<String>,
    channel: Option<Channel>,
    /// Whether the CRI plugin answered on connect (`k8s.io` is then listed through CRI).
    cri: bool,
    /// Per (namespace, container id): what its events are about.
    known: Arc<Mutex<HashMap<(String, String), Known>>>,
    /// Set by the current session's subscriber once its subscription is proven in place.
    subscribed: Mutex<Option<watch::Receiver<bool>>>,
}

impl ContainerdSource {
    pub fn new(endpoint: &str, filter: ContainerFilter, namespaces: Vec<String>) -> Self {
        ContainerdSource {
            endpoint: endpoint.to_string(),
            filter,
            namespaces,
            channel: None,
            cri: false,
            known: Arc::default(),
            subscribed: Mutex::new(None),
        }
    }

    fn channel(&self) -> Result<Channel, SourceError> {
        self.channel
            .clone()
            .ok_or_else(|| SourceError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: "not connected".into(),
            })
    }

    fn lookup(&self) -> Result<Lookup, SourceError> {
        Ok(Lookup {
            channel: self.channel()?,
            endpoint: self.endpoint.clone(),
            filter: self.filter.clone(),
        })
    }

    /// Waits until the session's subscription is in place, so what the list says
    /// and what the stream says leave no gap between them.
    async fn wait_subscribed(&self) -> Result<(), SourceError> {
        let rx = self.subscribed.lock().take();
        let Some(mut rx) = rx else {
            return Ok(());
        };
        let waited = tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx.wait_for(|s| *s)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            // The subscriber ended: its error is in the stream, which ends the session.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(SourceError::Unresponsive {
                endpoint: self.endpoint.clone(),
                seconds: SUBSCRIBE_TIMEOUT.as_secs(),
            }),
        }
    }
}

fn in_namespace<T>(msg: T, namespace: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = namespace.parse() {
        req.metadata_mut().insert(NAMESPACE_HEADER, v);
    }
    req
}

/// What the event stream needs to place a container: the clients and the filter.
#[derive(Clone)]
struct Lookup {
    channel: Channel,
    endpoint: String,
    filter: ContainerFilter,
}

/// How long a list waits for CRI to catch up with an exit containerd has already published.
const CRI_LAG_WAIT: Duration = Duration::from_secs(2);

/// Whether a container is a pod sandbox, by containerd's record of it.
fn is_sandbox(labels: &HashMap<String, String>) -> bool {
    labels.get(KIND_LABEL).is_some_and(|k| k == "sandbox")
}

impl Lookup {
    /// What a container's events are about: `Some(None)` for a sandbox or a container the
    /// filter leaves out, `None` when containerd no longer has it.
    async fn subject(&self, namespace: &str, id: &str) -> Result<Option<Known>, SourceError> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let record = match containers
            .get(in_namespace(
                GetContainerRequest { id: id.into() },
                namespace,
            ))
            .await
        {
            Ok(r) => r.into_inner().container,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => {
                return Err(cri::call_error(
                    &self.endpoint,
                    "containerd Containers.Get",
                    &s,
                ))
            }
        };
        let Some(record) = record else {
            return Ok(None);
        };
        if is_sandbox(&record.labels) || !cri::filter_matches(&self.filter, &record.labels) {
            return Ok(Some(None));
        }
        Ok(Some(Some(Arc::new(subject_of_record(&record)))))
    }
}

/// A container as containerd records it: for a CRI container, the name, image and attempt
/// of the CRI plugin's record; for any other, its id and image.
fn subject_of_record(record: &containerd_client::services::v1::Container) -> Subject {
    let mut labels = ContainerLabels::from_lookup(|k| record.labels.get(k).map(String::as_str));
    let meta = record
        .extensions
        .get(CRI_METADATA_EXTENSION)
        .and_then(|any| cri_metadata(&any.value));
    match meta {
        Some(m) => {
            labels.k8s_restart_count = Some(m.attempt);
            Subject {
                container_id: record.id.clone(),
                name: if m.name.is_empty() {
                    record.id.clone()
                } else {
                    m.name
                },
                image: if m.image.is_empty() {
                    record.image.clone()
                } else {
                    m.image
                },
                labels,
            }
        }
        None => Subject {
            container_id: record.id.clone(),
            name: record.id.clone(),
            image: record.image.clone(),
            labels,
        },
    }
}

/// The proof that a subscription is in place. containerd neither answers a subscription
/// before its first event nor says when it is registered, and events published before that
/// are not delivered to it: the list that follows must not start earlier. So the agent
/// publishes a marker event of its own (topic [`SYNC_TOPIC`], a payload only this session
/// knows) until the stream brings one back. Events are not stored by containerd: a marker
/// reaches only the subscribers of the moment and changes nothing.
struct Marker {
    namespace: String,
    nonce: Vec<u8>,
    /// Publishing failed (a socket proxy may refuse it): the session goes on without proof.
    refused: std::sync::atomic::AtomicBool,
}

impl Marker {
    fn new(namespace: &str) -> Marker {
        Marker {
            namespace: namespace.to_string(),
            nonce: format!("{}-{}", std::process::id(), UnixNanos::now().as_nanos()).into_bytes(),
            refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn is(&self, envelope: &Envelope) -> bool {
        envelope
            .event
            .as_ref()
            .is_some_and(|e| e.value == self.nonce)
    }

    /// Publishes one marker; false (and `subscribed` set) if containerd refuses it.
    async fn publish(&self, lookup: &Lookup, subscribed: &watch::Sender<bool>) -> bool {
        use std::sync::atomic::Ordering;
        if self.refused.load(Ordering::Relaxed) {
            return false;
        }
        let req = PublishRequest {
            topic: SYNC_TOPIC.into(),
            event: Some(prost_types::Any {
                type_url: "lifecycle-agent/sync".into(),
                value: self.nonce.clone(),
            }),
        };
        match EventsClient::new(lookup.channel.clone())
            .publish(in_namespace(req, &self.namespace))
            .await
        {
            Ok(_) => true,
            Err(s) => {
                warn!(endpoint = %lookup.endpoint, code = ?s.code(), error = %s.message(), "containerd refused the agent's marker event: listing without proof that the subscription is in place");
                self.refused.store(true, Ordering::Relaxed);
                let _ = subscribed.send(true);
                false
            }
        }
    }
}

type Tx = mpsc::UnboundedSender<Result<Option<SourceEvent>, SourceError>>;

/// Reads containerd's event stream of the watched namespaces, places each event's container
/// and forwards lifecycle events. Ends with the error that ended the stream.
async fn subscriber(
    lookup: Lookup,
    namespaces: Vec<String>,
    known: Arc<Mutex<HashMap<(String, String), Known>>>,
    subscribed: watch::Sender<bool>,
    tx: Tx,
) {
    let endpoint = lookup.endpoint.clone();
    let mut events = EventsClient::new(lookup.channel.clone());
    let mut filters: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("namespace=={ns},topic~=\"^/(tasks|containers)/\""))
        .collect();
    filters.push(format!("topic==\"{SYNC_TOPIC}\""));
    let marker = Marker::new(namespaces.first().map_or(CRI_NAMESPACE, String::as_str));
    let call = events.subscribe(SubscribeRequest { filters });
    tokio::pin!(call);
    let deadline = tokio::time::sleep(SUBSCRIBE_TIMEOUT);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    // containerd answers a subscription only with its first event: markers are published
    // until one comes back, which proves the subscription is in place.
    let mut stream = loop {
        tokio::select! {
            r = &mut call => match r {
                Ok(s) => break s.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(cri::call_error(&endpoint, "containerd Subscribe", &s)));
                    return;
                }
            },
            _ = tick.tick() => {
                if !marker.publish(&lookup, &subscribed).await {
                    // Marked subscribed anyway: the stream is still followed.
                    break match call.await {
                        Ok(s) => s.into_inner(),
                        Err(s) => {
                            let _ = tx.send(Err(cri::call_error(&endpoint, "containerd Subscribe", &s)));
                            return;
                        }
                    };
                }
            }
            _ = &mut deadline => {
                let _ = tx.send(Err(SourceError::Unresponsive { endpoint, seconds: SUBSCRIBE_TIMEOUT.as_secs() }));
                return;
            }
        }
    };
    debug!(endpoint = %endpoint, ?namespaces, "subscribed to containerd events");
    let mut order = StartOrder::default();
    loop {
        let next = if *subscribed.borrow() {
            tokio::select! {
                m = stream.message() => m,
                // The session ended: let go of the subscription.
                _ = tx.closed() => return,
            }
        } else {
            tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    marker.publish(&lookup, &subscribed).await;
                    continue;
                }
                _ = &mut deadline => {
                    let _ = tx.send(Err(SourceError::Unresponsive { endpoint, seconds: SUBSCRIBE_TIMEOUT.as_secs() }));
                    return;
                }
            }
        };
        let envelope = match next {
            Ok(Some(e)) => e,
            Ok(None) => {
                let _ = tx.send(Err(SourceError::StreamEnded { endpoint }));
                return;
            }
            Err(s) => {
                let _ = tx.send(Err(cri::call_error(&endpoint, "containerd Subscribe", &s)));
                return;
            }
        };
        if envelope.topic == SYNC_TOPIC {
            if marker.is(&envelope) && !*subscribed.borrow() {
                debug!(endpoint = %endpoint, "containerd subscription confirmed");
                let _ = subscribed.send(true);
            }
            continue;
        }
        let ev = match lifecycle(&lookup, &known, &envelope).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                if tx.send(Ok(None)).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for ev in order.pass(&envelope.namespace, ev) {
            if tx.send(Ok(Some(SourceEvent::Lifecycle(ev)))).is_err() {
                return;
            }
        }
    }
}

/// One envelope as a lifecycle event of a tracked container, or `None`.
async fn lifecycle(
    lookup: &Lookup,
    known: &Mutex<HashMap<(String, String), Known>>,
    envelope: &Envelope,
) -> Result<Option<RuntimeEvent>, SourceError> {
    let Some(any) = &envelope.event else {
        return Ok(None);
    };
    let Some(d) = decode(&envelope.topic, &any.value) else {
        return Ok(None);
    };
    let key = (envelope.namespace.clone(), d.container_id.clone());
    let cached = known.lock().get(&key).cloned();
    let subject = match cached {
        Some(k) => k,
        None => match lookup.subject(&envelope.namespace, &d.container_id).await? {
            Some(k) => {
                known.lock().insert(key.clone(), k.clone());
                k
            }
            // Gone before we asked, and never listed or placed by this source: not one the
            // tracker can know (a list fills `known` with every container it shows), and
            // perhaps one the filter leaves out.
            None => {
                debug!(container_id = %d.container_id, topic = %envelope.topic, "event of a container already gone");
                return Ok(None);
            }
        },
    };
    if d.kind == EventKind::Destroyed {
        known.lock().remove(&key);
    }
    let Some(subject) = subject else {
        return Ok(None);
    };
    let time_nanos = d
        .time_nanos
        .or_else(|| envelope.timestamp.as_ref().map(timestamp_nanos))
        .unwrap_or_else(UnixNanos::now);
    Ok(Some(RuntimeEvent {
        time_nanos,
        kind: d.kind,
        action: envelope.topic.clone(),
        subject,
        exit_code: d.exit_code,
        health: None,
    }))
}

impl Source for ContainerdSource {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn replays(&self) -> bool {
        false
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        let channel = cri::connect_channel(&self.endpoint).await?;
        let version = VersionClient::new(channel.clone())
            .version(())
            .await
            .map_err(|s| cri::call_error(&self.endpoint, "containerd Version", &s))?
            .into_inner();
        let api_version = match cri::version(&self.endpoint, channel.clone()).await {
            Ok(info) => {
                self.cri = true;
                format!("CRI {}", info.api_version)
            }
            Err(e) => {
                self.cri = false;
                if self.namespaces.iter().any(|n| n == CRI_NAMESPACE) {
                    warn!(endpoint = %self.endpoint, error = %e, "containerd's CRI plugin does not answer: k8s.io containers are followed without attempt ordinals");
                }
                "no CRI".into()
            }
        };
        self.channel = Some(channel);
        self.known.lock().clear();
        Ok(RuntimeInfo {
            runtime: RuntimeKind::Containerd,
            version: version.version,
            api_version,
        })
    }

    fn events(
        &self,
        _since: Option<UnixNanos>,
        _until: Option<UnixNanos>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>> {
        let lookup = match self.lookup() {
            Ok(l) => l,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let (ready_tx, ready_rx) = watch::channel(false);
        *self.subscribed.lock() = Some(ready_rx);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber(
            lookup,
            self.namespaces.clone(),
            self.known.clone(),
            ready_tx,
            tx,
        ));
        stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        })
        .boxed()
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        self.wait_subscribed().await?;
        let channel = self.channel()?;
        let mut out = Vec::new();
        let mut known = HashMap::new();
        for ns in &self.namespaces {
            if self.cri && ns == CRI_NAMESPACE {
                let mut client = RuntimeServiceClient::new(channel.clone());
                let statuses =
                    cri::list_statuses(&mut client, &self.endpoint, &self.filter).await?;
                // Read after CRI: a task CRI still calls running may have exited since.
                let tasks = self.tasks(ns).await?;
                for st in statuses {
                    let task = tasks.get(&st.id);
                    let st = if cri_lags(&st, task) {
                        self.settled_status(&mut client, st).await?
                    } else {
                        st
                    };
                    known.insert(
                        (ns.clone(), st.id.clone()),
                        Some(Arc::new(cri::subject_of(&st))),
                    );
                    let mut snap = cri::snapshot_of(&st);
                    exited_since(&mut snap, task);
                    out.push(snap);
                }
            } else {
                for s in self.native_snapshot(ns).await? {
                    known.insert(
                        (ns.clone(), s.id.clone()),
                        Some(Arc::new(Subject {
                            container_id: s.id.clone(),
                            name: s.name.clone(),
                            image: s.image.clone(),
                            labels: s.labels.clone(),
                        })),
                    );
                    out.push(s);
                }
            }
        }
        self.known.lock().extend(known);
        info!(containers = out.len(), namespaces = ?self.namespaces, "listed containerd containers");
        Ok(out)
    }

    /// What containerd's record says (name, image, image reference): containers met through
    /// an event are looked up right after their `/containers/create`, before CRI answers
    /// for them, so the CRI plugin's own record is read, not CRI.
    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        let channel = self.channel()?;
        for ns in &self.namespaces {
            let got = ContainersClient::new(channel.clone())
                .get(in_namespace(
                    GetContainerRequest {
                        id: container_id.into(),
                    },
                    ns,
                ))
                .await;
            let record = match got {
                Ok(r) => r.into_inner().container,
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => {
                    return Err(cri::call_error(
                        &self.endpoint,
                        "containerd Containers.Get",
                        &s,
                    ))
                }
            };
            let Some(record) = record else { continue };
            if is_sandbox(&record.labels) {
                return Ok(None);
            }
            let subject = subject_of_record(&record);
            let image_id = record
                .extensions
                .get(CRI_METADATA_EXTENSION)
                .and_then(|any| cri_metadata(&any.value))
                .map(|m| m.image_ref)
                .unwrap_or_default();
            let created = record.created_at.as_ref().map(timestamp_nanos);
            return Ok(Some(ContainerSnapshot {
                id: subject.container_id,
                name: subject.name,
                image: subject.image,
                image_id,
                labels: subject.labels,
                state: SnapshotState::Created,
                started_at: None,
                finished_at: None,
                created_at: created,
                exit_code: None,
                oom_killed: false,
                health: None,
                restart_count: 0,
            }));
        }
        Ok(None)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        VersionClient::new(self.channel()?)
            .version(())
            .await
            .map(|_| ())
            .map_err(|s| cri::call_error(&self.endpoint, "containerd Version", &s))
    }
}

impl ContainerdSource {
    /// CRI's status of a container once CRI has caught up with its exit ([`cri_lags`]), or
    /// as it is after [`CRI_LAG_WAIT`] (or when it is gone).
    async fn settled_status(
        &self,
        client: &mut RuntimeServiceClient<Channel>,
        st: k8s_cri::v1::ContainerStatus,
    ) -> Result<k8s_cri::v1::ContainerStatus, SourceError> {
        let running = k8s_cri::v1::ContainerState::ContainerRunning as i32;
        let deadline = tokio::time::Instant::now() + CRI_LAG_WAIT;
        let mut last = st;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match cri::status(client, &self.endpoint, &last.id).await? {
                Some(now) if now.state != running => {
                    debug!(container_id = %now.id, "CRI caught up with an exit containerd had published");
                    return Ok(now);
                }
                Some(now) => last = now,
                None => break,
            }
        }
        Ok(last)
    }

    /// Each container's task (its init process) in `namespace`, by container id.
    async fn tasks(&self, namespace: &str) -> Result<HashMap<String, Process>, SourceError> {
        let tasks = TasksClient::new(self.channel()?)
            .list(in_namespace(
                ListTasksRequest {
                    filter: String::new(),
                },
                namespace,
            ))
            .await
            .map_err(|s| cri::call_error(&self.endpoint, "containerd Tasks.List", &s))?
            .into_inner()
            .tasks;
        // Tasks.List gives each container's init process, named by `id` (containerd 1.6
        // leaves `container_id` empty there).
        Ok(tasks
            .into_iter()
            .map(|t| {
                let key = if t.container_id.is_empty() {
                    t.id.clone()
                } else {
                    t.container_id.clone()
                };
                (key, t)
            })
            .collect())
    }

    /// Containers of a namespace outside CRI, from containerd's own records and tasks.
    async fn native_snapshot(
        &self,
        namespace: &str,
    ) -> Result<Vec<ContainerSnapshot>, SourceError> {
        let channel = self.channel()?;
        let records = ContainersClient::new(channel.clone())
            .list(in_namespace(
                ListContainersRequest { filters: vec![] },
                namespace,
            ))
            .await
            .map_err(|s| cri::call_error(&self.endpoint, "containerd Containers.List", &s))?
            .into_inner()
            .containers;
        let tasks = self.tasks(namespace).await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            if is_sandbox(&r.labels) || !cri::filter_matches(&self.filter, &r.labels) {
                continue;
            }
            let created = r.created_at.as_ref().map(timestamp_nanos);
            let task = tasks.get(&r.id);
            let state = match task.map(|t| TaskStatus::try_from(t.status)) {
                Some(Ok(TaskStatus::Running)) => SnapshotState::Running,
                Some(Ok(TaskStatus::Paused | TaskStatus::Pausing)) => SnapshotState::Paused,
                Some(Ok(TaskStatus::Stopped)) => SnapshotState::Exited,
                _ => SnapshotState::Created,
            };
            let finished_at = task
                .filter(|_| state == SnapshotState::Exited)
                .and_then(|t| t.exited_at.as_ref().map(timestamp_nanos));
            let labels = ContainerLabels::from_lookup(|k| r.labels.get(k).map(String::as_str));
            out.push(ContainerSnapshot {
                id: r.id.clone(),
                name: r.id.clone(),
                image: r.image.clone(),
                image_id: String::new(),
                labels,
                state,
                started_at: created.filter(|_| state != SnapshotState::Created),
                finished_at,
                created_at: created,
                exit_code: task
                    .filter(|_| finished_at.is_some())
                    .map(|t| i64::from(t.exit_status)),
                oom_killed: false,
                health: None,
                restart_count: 0,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn sandboxes_are_known_by_their_kind_label() {
        let labels: HashMap<String, String> = [(KIND_LABEL.to_string(), "sandbox".to_string())]
            .into_iter()
            .collect();
        assert!(is_sandbox(&labels));
        assert!(!is_sandbox(&HashMap::new()));
    }
}
