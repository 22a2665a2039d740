//! Builders for the unit tests' events and snapshots: a test names what matters to it and
//! the builder fills the rest, so a new field of [`RuntimeEvent`] or [`ContainerSnapshot`]
//! is added here once, not in every test.

use std::sync::Arc;

use crate::event::snapshot::{ContainerSnapshot, SnapshotState};
use crate::event::{
    ContainerLabels, EventKind, Health, PodRef, RuntimeEvent, RuntimeKind, SourceEvent, Subject,
};
use crate::history::HistoryLimits;
use crate::time::UnixNanos;
use crate::tracker::view::IdentityView;
use crate::tracker::Tracker;

/// A Docker node's tracker keeping at most `max_events` events, without retention.
pub fn tracker(node: &str, max_events: usize) -> Tracker {
    Tracker::new(
        node.into(),
        RuntimeKind::Docker,
        HistoryLimits {
            max_events,
            retention: None,
        },
    )
}

/// A runtime event of container `id` (named `name-<id>`, image `busybox`), at time 0, with
/// Docker's action word for its kind.
pub struct EventBuilder(RuntimeEvent);

impl EventBuilder {
    pub fn new(kind: EventKind, id: &str) -> EventBuilder {
        EventBuilder(RuntimeEvent {
            time_nanos: UnixNanos::default(),
            kind,
            action: docker_word(kind).into(),
            subject: Arc::new(Subject {
                container_id: id.into(),
                name: format!("name-{id}"),
                image: "busybox".into(),
                labels: ContainerLabels::default(),
            }),
            exit_code: None,
            health: None,
        })
    }

    pub fn at(mut self, t: UnixNanos) -> Self {
        self.0.time_nanos = t;
        self
    }

    pub fn action(mut self, action: &str) -> Self {
        self.0.action = action.into();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.0.subject_mut().name = name.into();
        self
    }

    pub fn labels(mut self, labels: ContainerLabels) -> Self {
        self.0.subject_mut().labels = labels;
        self
    }

    pub fn exit_code(mut self, code: i64) -> Self {
        self.0.exit_code = Some(code);
        self
    }

    pub fn health(mut self, health: Health) -> Self {
        self.0.health = Some(health);
        self
    }

    pub fn build(self) -> RuntimeEvent {
        self.0
    }

    pub fn source(self) -> SourceEvent {
        SourceEvent::Lifecycle(self.0)
    }
}

/// The kubelet's labels of container `container` of pod `namespace/pod` (uid `uid`), attempt
/// ordinal `attempt`.
pub fn pod_labels(
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    attempt: Option<u64>,
) -> ContainerLabels {
    ContainerLabels {
        pod: Some(PodRef {
            namespace: namespace.into(),
            pod: pod.into(),
            uid: uid.into(),
            container: container.into(),
        }),
        k8s_restart_count: attempt,
        sandbox: false,
    }
}

fn docker_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Created => "create",
        EventKind::Started => "start",
        EventKind::Stopped => "stop",
        EventKind::Restarted => "restart",
        EventKind::Died => "die",
        EventKind::Killed => "kill",
        EventKind::Paused => "pause",
        EventKind::Unpaused => "unpause",
        EventKind::Destroyed => "destroy",
        EventKind::Oom => "oom",
        EventKind::HealthStatus => "health_status",
    }
}

/// What list + inspect says about container `id` (named `name-<id>`, image `busybox`,
/// image ID `sha256:1`, created at 0), in `state`, never started.
pub struct SnapshotBuilder(ContainerSnapshot);

impl SnapshotBuilder {
    pub fn new(id: &str, state: SnapshotState) -> SnapshotBuilder {
        SnapshotBuilder(ContainerSnapshot {
            id: id.into(),
            name: format!("name-{id}"),
            image: "busybox".into(),
            image_id: "sha256:1".into(),
            labels: ContainerLabels::default(),
            state,
            started_at: None,
            finished_at: None,
            created_at: Some(UnixNanos::default()),
            exit_code: None,
            oom_killed: false,
            health: None,
            restart_count: 0,
        })
    }

    pub fn started(mut self, t: Option<UnixNanos>) -> Self {
        self.0.started_at = t;
        self
    }

    /// Finished at `t`; with exit code 0 unless [`SnapshotBuilder::exit_code`] says otherwise.
    pub fn finished(mut self, t: Option<UnixNanos>) -> Self {
        self.0.finished_at = t;
        self.0.exit_code = t.map(|_| self.0.exit_code.unwrap_or(0));
        self
    }

    pub fn exit_code(mut self, code: i64) -> Self {
        self.0.exit_code = Some(code);
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.0.name = name.into();
        self
    }

    pub fn labels(mut self, labels: ContainerLabels) -> Self {
        self.0.labels = labels;
        self
    }

    pub fn restart_count(mut self, n: u64) -> Self {
        self.0.restart_count = n;
        self
    }

    pub fn oom_killed(mut self) -> Self {
        self.0.oom_killed = true;
        self
    }

    pub fn build(self) -> ContainerSnapshot {
        self.0
    }
}

/// A running identity's view as metrics read it: container `container` of pod
/// `namespace/pod` (uid `uid`), nothing else known.
pub fn identity_view(namespace: &str, pod: &str, uid: &str, container: &str) -> IdentityView {
    IdentityView {
        namespace: namespace.into(),
        pod: pod.into(),
        pod_uid: uid.into(),
        container: container.into(),
        container_id: String::new(),
        container_ids: Vec::new(),
        name: String::new(),
        image: String::new(),
        image_id: String::new(),
        state: "running",
        running: true,
        paused: false,
        uptime_seconds: 0.0,
        time_since_start_seconds: None,
        last_start_time: None,
        last_start_nanos: None,
        restarts: 0,
        oom_kills: 0,
        last_exit_code: None,
        last_terminated_reason: None,
        health: None,
        events: [0; EventKind::ALL.len()],
    }
}
