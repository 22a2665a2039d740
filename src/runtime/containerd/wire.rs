//! containerd's wire formats, as pure functions: its event topics and payloads, the CRI
//! plugin's record of a container, the order in which a container's events are passed on,
//! and where CRI's list lags containerd's own task record.

use std::collections::HashMap;

use containerd_client::events::{
    ContainerCreate, ContainerDelete, TaskExit, TaskOom, TaskPaused, TaskResumed, TaskStart,
};
use containerd_client::types::v1::{Process, Status as TaskStatus};
use k8s_cri::v1::{ContainerState, ContainerStatus};
use prost::Message;

use crate::event::{EventKind, RuntimeEvent};
use crate::runtime::snapshot::{ContainerSnapshot, SnapshotState};
use crate::time::UnixNanos;

/// The time a protobuf timestamp says (saturating outside the representable range).
pub fn timestamp_nanos(t: &prost_types::Timestamp) -> UnixNanos {
    UnixNanos::from_nanos(
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos)),
    )
}

/// One event of containerd's stream as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub kind: EventKind,
    pub container_id: String,
    pub exit_code: Option<i64>,
    /// The event's own time where it has one (an exit's `exited_at`).
    pub time_nanos: Option<UnixNanos>,
}

/// Decodes the lifecycle events among containerd's topics; `None` for the rest (task
/// create/delete, exec processes, snapshots, images, ...). Only the exit of a container's
/// init process ends it: an exec'd process exits with its own id.
pub fn decode(topic: &str, payload: &[u8]) -> Option<Decoded> {
    let plain = |kind: EventKind, container_id: String| Decoded {
        kind,
        container_id,
        exit_code: None,
        time_nanos: None,
    };
    match topic {
        "/containers/create" => ContainerCreate::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Created, e.id)),
        "/containers/delete" => ContainerDelete::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Destroyed, e.id)),
        "/tasks/start" => TaskStart::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Started, e.container_id)),
        "/tasks/oom" => TaskOom::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Oom, e.container_id)),
        "/tasks/paused" => TaskPaused::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Paused, e.container_id)),
        "/tasks/resumed" => TaskResumed::decode(payload)
            .ok()
            .map(|e| plain(EventKind::Unpaused, e.container_id)),
        "/tasks/exit" => {
            let e = TaskExit::decode(payload).ok()?;
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            Some(Decoded {
                kind: EventKind::Died,
                exit_code: Some(i64::from(e.exit_status)),
                time_nanos: e.exited_at.as_ref().map(timestamp_nanos),
                container_id: e.container_id,
            })
        }
        _ => None,
    }
}

/// The extension in which containerd's CRI plugin keeps its own record of a container
/// (JSON): the kubelet's `ContainerConfig`, with the attempt, and the image reference.
/// Present from `/containers/create` on, before CRI itself answers for the container.
pub const CRI_METADATA_EXTENSION: &str = "io.cri-containerd.container.metadata";

/// What the CRI plugin's record of a container says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriMetadata {
    pub name: String,
    pub attempt: u64,
    pub image: String,
    pub image_ref: String,
}

/// Reads the CRI plugin's record (`{"Version":"v1","Metadata":{"Config":{"metadata":
/// {"name":...,"attempt":...},"image":{"image":...}},"ImageRef":...}}`); `None` if it is
/// missing or of another shape.
pub fn cri_metadata(value: &[u8]) -> Option<CriMetadata> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let m = v.get("Metadata")?;
    let config = m.get("Config")?;
    let meta = config.get("metadata")?;
    let text =
        |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).unwrap_or_default().to_string();
    Some(CriMetadata {
        name: text(meta.get("name")),
        // Go omits a zero attempt.
        attempt: meta.get("attempt").and_then(|a| a.as_u64()).unwrap_or(0),
        image: text(config.get("image").and_then(|i| i.get("image"))),
        image_ref: text(m.get("ImageRef")),
    })
}

/// Puts a container's start before what its task says next. containerd publishes
/// `/tasks/start` from its task service once the shim's start call returns, but the shim's
/// own events (`/tasks/oom`, `/tasks/exit`) are forwarded on another path and can overtake
/// it: a container OOM-killed at once arrives as oom, start, exit. Events of a container
/// created on this stream and not started yet wait for its start (or its removal).
#[derive(Debug, Default)]
pub struct StartOrder {
    waiting: HashMap<(String, String), Vec<RuntimeEvent>>,
}

impl StartOrder {
    /// The events to forward now, in order.
    pub fn pass(&mut self, namespace: &str, ev: RuntimeEvent) -> Vec<RuntimeEvent> {
        let key = (namespace.to_string(), ev.subject.container_id.clone());
        match ev.kind {
            EventKind::Created => {
                self.waiting.insert(key, Vec::new());
                vec![ev]
            }
            EventKind::Started | EventKind::Destroyed => {
                let mut out = vec![ev];
                if let Some(held) = self.waiting.remove(&key) {
                    if out[0].kind == EventKind::Destroyed {
                        out.splice(0..0, held);
                    } else {
                        out.extend(held);
                    }
                }
                out
            }
            _ => match self.waiting.get_mut(&key) {
                Some(held) => {
                    held.push(ev);
                    Vec::new()
                }
                None => vec![ev],
            },
        }
    }
}

/// Whether CRI calls a container running whose task is no longer running (stopped, or
/// already deleted): the CRI plugin learns of an exit from containerd's `/tasks/exit`
/// (deletes the task, then records the exit), after containerd published it, so a
/// subscription made in between sees neither the event nor, in CRI's list, the exit
/// (docs/design.md "Replay and reconciliation").
pub fn cri_lags(st: &ContainerStatus, task: Option<&Process>) -> bool {
    let running = st.state == ContainerState::ContainerRunning as i32;
    let task_runs = task.is_some_and(|t| {
        matches!(
            TaskStatus::try_from(t.status),
            Ok(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing)
        )
    });
    running && !task_runs
}

/// A container CRI still calls running after [`CRI_LAG_WAIT`] whose task has stopped:
/// containerd's own task record has the exit, its status and time. Whether the kernel
/// OOM-killed it only CRI would say; the exit code (137) stays.
pub fn exited_since(snap: &mut ContainerSnapshot, task: Option<&Process>) {
    let Some(task) = task else { return };
    let running = matches!(snap.state, SnapshotState::Running | SnapshotState::Paused);
    if !running || TaskStatus::try_from(task.status) != Ok(TaskStatus::Stopped) {
        return;
    }
    let Some(exited_at) = task.exited_at.as_ref().map(timestamp_nanos) else {
        return;
    };
    snap.state = SnapshotState::Exited;
    snap.finished_at = Some(exited_at.max(snap.started_at.unwrap_or(exited_at)));
    snap.exit_code = Some(i64::from(task.exit_status));
}

#[cfg(test)]
mod test {
    use std::sync::Arc;

    use super::*;
    use crate::event::Subject;

    #[test]
    fn lifecycle_topics_decode_and_exec_exits_do_not_end_a_container() {
        let start = TaskStart {
            container_id: "c1".into(),
            pid: 42,
        };
        assert_eq!(
            decode("/tasks/start", &start.encode_to_vec()).map(|d| d.kind),
            Some(EventKind::Started)
        );
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 137,
            exited_at: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 5,
            }),
        };
        assert_eq!(
            decode("/tasks/exit", &exit.encode_to_vec()),
            Some(Decoded {
                kind: EventKind::Died,
                container_id: "c1".into(),
                exit_code: Some(137),
                time_nanos: Some(UnixNanos::from_nanos(2_000_000_005)),
            })
        );
        let exec_exit = TaskExit {
            id: "exec-1".into(),
            ..exit
        };
        assert_eq!(decode("/tasks/exit", &exec_exit.encode_to_vec()), None);
        let oom = TaskOom {
            container_id: "c1".into(),
        };
        assert_eq!(
            decode("/tasks/oom", &oom.encode_to_vec()).map(|d| d.kind),
            Some(EventKind::Oom)
        );
        assert_eq!(decode("/tasks/delete", &[]), None);
        assert_eq!(decode("/snapshot/prepare", &[]), None);
    }

    #[test]
    fn the_cri_plugins_record_gives_the_attempt() {
        let json = br#"{"Version":"v1","Metadata":{"ID":"c1","Config":{"metadata":{"name":"app","attempt":2},"image":{"image":"busybox:1"}},"ImageRef":"sha256:ab"}}"#;
        assert_eq!(
            cri_metadata(json),
            Some(CriMetadata {
                name: "app".into(),
                attempt: 2,
                image: "busybox:1".into(),
                image_ref: "sha256:ab".into(),
            })
        );
        let first = br#"{"Version":"v1","Metadata":{"Config":{"metadata":{"name":"app"}}}}"#;
        assert_eq!(
            cri_metadata(first).map(|m| m.attempt),
            Some(0),
            "Go omits attempt 0"
        );
        assert_eq!(cri_metadata(b"{}"), None);
    }

    fn event(kind: EventKind) -> RuntimeEvent {
        RuntimeEvent {
            time_nanos: UnixNanos::from_nanos(1),
            kind,
            action: kind.as_str().into(),
            subject: Arc::new(Subject {
                container_id: "c1".into(),
                ..Subject::default()
            }),
            exit_code: None,
            health: None,
        }
    }

    #[test]
    fn an_oom_and_an_exit_that_overtake_the_start_wait_for_it() {
        let mut order = StartOrder::default();
        let kinds = |evs: Vec<RuntimeEvent>| evs.iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(order.pass("k8s.io", event(EventKind::Created))),
            vec![EventKind::Created]
        );
        assert!(order.pass("k8s.io", event(EventKind::Oom)).is_empty());
        assert_eq!(
            kinds(order.pass("k8s.io", event(EventKind::Started))),
            vec![EventKind::Started, EventKind::Oom]
        );
        assert_eq!(
            kinds(order.pass("k8s.io", event(EventKind::Died))),
            vec![EventKind::Died]
        );
        // A container known from a list passes straight through.
        assert_eq!(
            kinds(order.pass("moby", event(EventKind::Oom))),
            vec![EventKind::Oom]
        );
        // Created, never started, removed: what it held goes before the removal.
        order.pass("x", event(EventKind::Created));
        order.pass("x", event(EventKind::Died));
        assert_eq!(
            kinds(order.pass("x", event(EventKind::Destroyed))),
            vec![EventKind::Died, EventKind::Destroyed]
        );
    }

    #[test]
    fn a_stopped_task_is_an_exit_whatever_cri_still_says() {
        use crate::fixtures::SnapshotBuilder;
        let running = || {
            SnapshotBuilder::new("c1", SnapshotState::Running)
                .started(Some(UnixNanos::from_nanos(2_000_000_000)))
                .build()
        };
        let task = |status: TaskStatus| Process {
            id: "c1".into(),
            status: status as i32,
            exit_status: 4,
            exited_at: Some(prost_types::Timestamp {
                seconds: 3,
                nanos: 0,
            }),
            ..Process::default()
        };
        let mut snap = running();
        exited_since(&mut snap, Some(&task(TaskStatus::Stopped)));
        assert_eq!(snap.state, SnapshotState::Exited);
        assert_eq!(snap.finished_at, Some(UnixNanos::from_nanos(3_000_000_000)));
        assert_eq!(snap.exit_code, Some(4));
        for (task, what) in [
            (Some(task(TaskStatus::Running)), "a running task"),
            (None, "no task"),
        ] {
            let mut snap = running();
            exited_since(&mut snap, task.as_ref());
            assert_eq!(snap, running(), "{what}");
        }

        // CRI lags when it calls running a container whose task is stopped or deleted.
        let cri = |state: ContainerState| ContainerStatus {
            id: "c1".into(),
            state: state as i32,
            ..ContainerStatus::default()
        };
        let stopped = task(TaskStatus::Stopped);
        let runs = task(TaskStatus::Running);
        assert!(cri_lags(&cri(ContainerState::ContainerRunning), None));
        assert!(cri_lags(
            &cri(ContainerState::ContainerRunning),
            Some(&stopped)
        ));
        assert!(!cri_lags(
            &cri(ContainerState::ContainerRunning),
            Some(&runs)
        ));
        assert!(!cri_lags(&cri(ContainerState::ContainerExited), None));
    }
}
