//! What a runtime's list + inspect says about one container: the ground truth the tracker
//! reconciles against after every (re)connect.

use crate::event::{ContainerLabels, Health};
use crate::time::UnixNanos;

/// Runtime state words normalized across Docker and Podman.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

impl SnapshotState {
    pub fn parse(s: &str) -> SnapshotState {
        match s {
            // Podman's "stopping": the stop signal is sent, the process still runs.
            "running" | "stopping" => SnapshotState::Running,
            "paused" => SnapshotState::Paused,
            "restarting" => SnapshotState::Restarting,
            "exited" | "stopped" => SnapshotState::Exited,
            "dead" | "removing" => SnapshotState::Dead,
            // Podman's "configured" and "initialized" are not yet started.
            _ => SnapshotState::Created,
        }
    }

    /// Paused counts as running (`docs/design.md`, "Restart semantics").
    pub fn is_running(self) -> bool {
        matches!(self, SnapshotState::Running | SnapshotState::Paused)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSnapshot {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub labels: ContainerLabels,
    pub state: SnapshotState,
    /// The last start; `None` if it never started.
    pub started_at: Option<UnixNanos>,
    /// The last exit; `None` if it never exited.
    pub finished_at: Option<UnixNanos>,
    pub created_at: Option<UnixNanos>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub health: Option<Health>,
    /// Docker's `RestartCount`: restarts by the restart policy since the last manual start.
    pub restart_count: u64,
}
