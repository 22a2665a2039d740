//! The normalized lifecycle event: what every runtime's own vocabulary is mapped onto
//! before the tracker and the history see it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::UnixNanos;

pub mod snapshot;

/// Lifecycle event types (`docs/design.md`, "Events"). The order is the order of the per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Restarted,
    Died,
    Killed,
    Paused,
    Unpaused,
    Destroyed,
    Oom,
    HealthStatus,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Created,
        EventKind::Started,
        EventKind::Stopped,
        EventKind::Restarted,
        EventKind::Died,
        EventKind::Killed,
        EventKind::Paused,
        EventKind::Unpaused,
        EventKind::Destroyed,
        EventKind::Oom,
        EventKind::HealthStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Started => "started",
            EventKind::Stopped => "stopped",
            EventKind::Restarted => "restarted",
            EventKind::Died => "died",
            EventKind::Killed => "killed",
            EventKind::Paused => "paused",
            EventKind::Unpaused => "unpaused",
            EventKind::Destroyed => "destroyed",
            EventKind::Oom => "oom",
            EventKind::HealthStatus => "health_status",
        }
    }

    /// Position in [`EventKind::ALL`], used to index fixed-size per-kind counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?} (expected one of: created, started, stopped, restarted, died, killed, paused, unpaused, destroyed, oom, health_status)")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_string()))
    }
}

/// Health check status as the runtimes report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// Parses the runtimes' words; `none` and empty mean "no health check".
    pub fn parse(s: &str) -> Option<Health> {
        match s.trim() {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        }
    }
}

/// Which daemon the events come from. Podman behind a Docker-compatible socket is still `podman`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    #[default]
    Docker,
    Podman,
    Containerd,
    /// CRI-O, or any runtime followed through the generic CRI path.
    Crio,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Podman => "podman",
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Crio => "crio",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels the kubelet (through cri-dockerd or CRI-O) puts on every pod container.
pub mod k8s_labels {
    pub const NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD: &str = "io.kubernetes.pod.name";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER: &str = "io.kubernetes.container.name";
    pub const RESTART_COUNT: &str = "annotation.io.kubernetes.container.restartCount";
    /// cri-dockerd marks the pod sandbox ("pause") container with this label.
    pub const DOCKER_TYPE: &str = "io.kubernetes.docker.type";
}

/// The highest kubelet restart ordinal believed. A container in CrashLoopBackOff restarts
/// at most every 5 minutes: 100 000 attempts take about a year. Anything above is a label
/// someone set, and ignored.
pub const MAX_KUBELET_ORDINAL: u64 = 100_000;

/// The Kubernetes pod container a runtime container belongs to, read from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
}

/// What the runtime tells about a container in an event or an inspect: enough to place it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerLabels {
    pub pod: Option<PodRef>,
    /// The kubelet's restart ordinal of this container (its attempt number).
    pub k8s_restart_count: Option<u64>,
    /// A pod sandbox, which is not tracked (`docs/design.md`, "Identity").
    pub sandbox: bool,
}

impl ContainerLabels {
    /// Reads the Kubernetes labels from any label lookup (event attributes or container labels).
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> ContainerLabels {
        let field = |k: &str| get(k).map(str::to_string).filter(|v| !v.is_empty());
        let pod = match (
            field(k8s_labels::NAMESPACE),
            field(k8s_labels::POD),
            field(k8s_labels::POD_UID),
            field(k8s_labels::CONTAINER),
        ) {
            (Some(namespace), Some(pod), Some(uid), Some(container)) => Some(PodRef {
                namespace,
                pod,
                uid,
                container,
            }),
            _ => None,
        };
        let sandbox = get(k8s_labels::DOCKER_TYPE) == Some("podsandbox")
            || pod.as_ref().is_some_and(|p| p.container == "POD");
        // Any `docker run -l` can set this label: it counts only beside the kubelet's pod
        // labels and within what a kubelet can reach (README "Security and limits").
        let k8s_restart_count = get(k8s_labels::RESTART_COUNT)
            .filter(|_| pod.is_some())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n <= MAX_KUBELET_ORDINAL);
        ContainerLabels {
            pod,
            k8s_restart_count,
            sandbox,
        }
    }
}

/// What an event tells about its container besides what happened. It is the same for nearly
/// every event of one container, so the reading task shares one copy between them
/// ([`SubjectCache`]): events queued during a flood then cost a pointer, not eight strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub container_id: String,
    pub name: String,
    pub image: String,
    pub labels: ContainerLabels,
}

/// A lifecycle event in the runtime-neutral form the tracker consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// As the runtime stamped the event.
    pub time_nanos: UnixNanos,
    pub kind: EventKind,
    /// The runtime's own word for it (`die`, `died`, `health_status: healthy`, ...).
    pub action: String,
    pub subject: Arc<Subject>,
    pub exit_code: Option<i64>,
    pub health: Option<Health>,
}

impl RuntimeEvent {
    pub fn container_id(&self) -> &str {
        &self.subject.container_id
    }

    pub fn labels(&self) -> &ContainerLabels {
        &self.subject.labels
    }

    /// The subject, to change: a copy of its own if another event shares it.
    pub fn subject_mut(&mut self) -> &mut Subject {
        Arc::make_mut(&mut self.subject)
    }
}

/// A container's new name (`docker rename`, `podman rename`). Not a lifecycle event
/// (`docs/design.md`, "Events"): it changes the tracker's state, never the history or the event counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// As the runtime stamped the event.
    pub time_nanos: UnixNanos,
    pub container_id: String,
    /// The new name; empty if the runtime did not say.
    pub name: String,
}

/// What a runtime's event stream says that the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Lifecycle(RuntimeEvent),
    Renamed(Rename),
}

impl SourceEvent {
    pub fn time_nanos(&self) -> UnixNanos {
        match self {
            SourceEvent::Lifecycle(ev) => ev.time_nanos,
            SourceEvent::Renamed(r) => r.time_nanos,
        }
    }

    pub fn container_id(&self) -> &str {
        match self {
            SourceEvent::Lifecycle(ev) => ev.container_id(),
            SourceEvent::Renamed(r) => &r.container_id,
        }
    }
}

/// Containers whose subject a [`SubjectCache`] remembers before it starts afresh: far above
/// any node's container count, so the bound only matters against a runtime gone wrong.
const SUBJECT_CACHE_CAPACITY: usize = 65_536;

/// The last subject seen per container, so equal subjects of consecutive events are one
/// allocation. Forgets a container on its `destroy`.
#[derive(Debug, Default)]
pub struct SubjectCache {
    by_id: HashMap<String, Arc<Subject>>,
}

impl SubjectCache {
    /// Replaces the event's subject by the remembered one when they are equal.
    pub fn share(&mut self, ev: &mut RuntimeEvent) {
        let id = ev.subject.container_id.as_str();
        if ev.kind == EventKind::Destroyed {
            self.by_id.remove(id);
            return;
        }
        match self.by_id.get_mut(id) {
            Some(known) if **known == *ev.subject => ev.subject = known.clone(),
            Some(known) => *known = ev.subject.clone(),
            None => {
                if self.by_id.len() >= SUBJECT_CACHE_CAPACITY {
                    self.by_id.clear();
                }
                self.by_id.insert(id.to_string(), ev.subject.clone());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Identity of what restarts are counted for (`docs/design.md`, "Identity").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Identity {
    Pod(PodRef),
    Container(String),
}

impl Identity {
    pub fn of(container_id: &str, labels: &ContainerLabels) -> Identity {
        match &labels.pod {
            Some(p) => Identity::Pod(p.clone()),
            None => Identity::Container(container_id.to_string()),
        }
    }
}

/// A container met first through an event, to inspect for what no event carries (its image
/// ID). `name` is the name the tracker knew when it asked: an inspect that answers after a
/// rename event must not put the old name back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub container_id: String,
    pub name: String,
}

/// Shortens a container id to the 12 characters users know from `docker ps`.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(EventKind::ALL[k.index()], k);
        }
        assert!("exploded".parse::<EventKind>().is_err());
    }

    #[test]
    fn pod_labels_make_a_pod_identity() {
        let l = labels(&[
            (k8s_labels::NAMESPACE, "shop"),
            (k8s_labels::POD, "web-1"),
            (k8s_labels::POD_UID, "u-1"),
            (k8s_labels::CONTAINER, "nginx"),
            (k8s_labels::RESTART_COUNT, "4"),
        ]);
        let c = ContainerLabels::from_lookup(|k| l.get(k).map(String::as_str));
        assert_eq!(c.k8s_restart_count, Some(4));
        assert!(!c.sandbox);
        match Identity::of("abc", &c) {
            Identity::Pod(p) => {
                assert_eq!(
                    (p.namespace.as_str(), p.container.as_str()),
                    ("shop", "nginx")
                )
            }
            other => panic!("expected a pod identity, got {other:?}"),
        }
    }

    #[test]
    fn the_kubelet_ordinal_counts_only_on_pod_containers_and_within_bounds() {
        let pod = |count: &str| {
            labels(&[
                (k8s_labels::NAMESPACE, "shop"),
                (k8s_labels::POD, "web-1"),
                (k8s_labels::POD_UID, "u-1"),
                (k8s_labels::CONTAINER, "nginx"),
                (k8s_labels::RESTART_COUNT, count),
            ])
        };
        let read = |l: &HashMap<String, String>| {
            ContainerLabels::from_lookup(|k| l.get(k).map(String::as_str)).k8s_restart_count
        };
        assert_eq!(read(&pod("100000")), Some(MAX_KUBELET_ORDINAL));
        assert_eq!(read(&pod("100001")), None);
        assert_eq!(read(&pod("18446744073709551615")), None);
        assert_eq!(read(&pod("18446744073709551616")), None);
        assert_eq!(read(&pod("-1")), None);
        let plain = labels(&[(k8s_labels::RESTART_COUNT, "3")]);
        assert_eq!(read(&plain), None, "no pod labels, no ordinal");
    }

    #[test]
    fn partial_pod_labels_fall_back_to_the_container() {
        let l = labels(&[(k8s_labels::NAMESPACE, "shop"), (k8s_labels::POD, "web-1")]);
        let c = ContainerLabels::from_lookup(|k| l.get(k).map(String::as_str));
        assert_eq!(Identity::of("abc", &c), Identity::Container("abc".into()));
    }

    #[test]
    fn sandboxes_are_recognized() {
        let l = labels(&[(k8s_labels::DOCKER_TYPE, "podsandbox")]);
        assert!(ContainerLabels::from_lookup(|k| l.get(k).map(String::as_str)).sandbox);
    }

    #[test]
    fn equal_subjects_are_shared_until_they_change_or_the_container_goes() {
        let event = |kind: EventKind, name: &str| {
            crate::fixtures::EventBuilder::new(kind, "abc")
                .at(UnixNanos::from_nanos(1))
                .action(kind.as_str())
                .name(name)
                .build()
        };
        let mut cache = SubjectCache::default();
        let mut first = event(EventKind::Started, "web");
        let mut second = event(EventKind::Died, "web");
        cache.share(&mut first);
        cache.share(&mut second);
        assert!(Arc::ptr_eq(&first.subject, &second.subject));
        let mut renamed = event(EventKind::Started, "web-2");
        cache.share(&mut renamed);
        assert_eq!(renamed.subject.name, "web-2", "a changed subject is kept");
        let mut again = event(EventKind::Died, "web-2");
        cache.share(&mut again);
        assert!(Arc::ptr_eq(&renamed.subject, &again.subject));
        cache.share(&mut event(EventKind::Destroyed, "web-2"));
        assert!(cache.is_empty(), "a destroyed container is forgotten");
    }

    #[test]
    fn health_words_parse() {
        assert_eq!(Health::parse(" healthy"), Some(Health::Healthy));
        assert_eq!(Health::parse("none"), None);
    }
}
