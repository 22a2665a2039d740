//! What metrics and the API read of the tracker: per-identity views at a moment, node
//! counts, and the 1 h / 24 h restart statistics.

use serde::Serialize;

use super::{ContainerState, IdentityState, TerminationReason, Tracker, DAY};
use crate::event::{short_id, EventKind, Health, Identity};
use crate::time::{Nanos, UnixNanos};

const HOUR: Nanos = Nanos::from_secs(3600);

/// A read-only view of one identity for metrics and the API, computed at `now`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
    pub container_ids: Vec<String>,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: &'static str,
    pub running: bool,
    pub paused: bool,
    pub uptime_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_since_start_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start_time: Option<String>,
    #[serde(skip)]
    pub last_start_nanos: Option<UnixNanos>,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_exit_code: Option<i64>,
    pub last_terminated_reason: Option<TerminationReason>,
    pub health: Option<Health>,
    #[serde(skip)]
    pub events: [u64; EventKind::ALL.len()],
}

/// Node-wide counts (`containers_*`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NodeCounts {
    pub tracked: u64,
    pub running: u64,
    pub paused: u64,
    pub stopped: u64,
    pub restarts_total: u64,
    /// Containers labelled as pod sandboxes, which no other series shows.
    pub sandboxes: u64,
}

impl Tracker {
    /// Identities tracked.
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// Per-identity views at `now`, for metrics and the API.
    pub fn identities(&self, now: UnixNanos) -> Vec<IdentityView> {
        self.identities
            .values()
            .map(|id| self.view(id, now))
            .collect()
    }

    fn view(&self, id: &IdentityState, now: UnixNanos) -> IdentityView {
        let mut uptime = id.closed_uptime;
        let mut running = false;
        let mut paused = false;
        let mut last_start: Option<UnixNanos> = None;
        let mut latest: Option<(&String, &ContainerState)> = None;
        for cid in &id.containers {
            let Some(c) = self.containers.get(cid) else {
                continue;
            };
            if c.running {
                running = true;
                paused |= c.paused;
                if let Some(s) = c.started_at {
                    uptime += (now - s).max(Nanos::ZERO);
                }
            }
            last_start = last_start.max(c.started_at);
            let newer =
                latest.is_none_or(|(_, l)| (c.running, c.created_at) >= (l.running, l.created_at));
            if newer {
                latest = Some((cid, c));
            }
        }
        let (cid, name, image, image_id, exited) = match latest {
            Some((cid, c)) => (
                cid.clone(),
                c.name.clone(),
                c.image.clone(),
                c.image_id.clone(),
                c.exited,
            ),
            None => Default::default(),
        };
        let (namespace, pod, pod_uid, container) = match &id.identity {
            Identity::Pod(p) => (
                p.namespace.clone(),
                p.pod.clone(),
                p.uid.clone(),
                p.container.clone(),
            ),
            Identity::Container(_) => (String::new(), String::new(), String::new(), name.clone()),
        };
        let state = if paused {
            "paused"
        } else if running {
            "running"
        } else if exited {
            "exited"
        } else {
            "created"
        };
        IdentityView {
            namespace,
            pod,
            pod_uid,
            container,
            container_id: cid,
            container_ids: id.containers.clone(),
            name,
            image,
            image_id,
            state,
            running,
            paused,
            uptime_seconds: uptime.as_secs_f64(),
            time_since_start_seconds: last_start
                .filter(|_| running)
                .map(|s| (now - s).max(Nanos::ZERO).as_secs_f64()),
            last_start_time: last_start.map(UnixNanos::to_rfc3339),
            last_start_nanos: last_start,
            restarts: id.restarts,
            oom_kills: id.oom_kills,
            last_exit_code: id.last_exit_code,
            last_terminated_reason: id.last_reason,
            health: id.health,
            events: id.events,
        }
    }

    /// Finds an identity by container id prefix, runtime name or Kubernetes container name.
    pub fn find(&self, key: &str, now: UnixNanos) -> Vec<IdentityView> {
        if key.is_empty() {
            return Vec::new();
        }
        let by_name: Vec<_> = self
            .identities
            .values()
            .filter(|id| {
                id.containers.iter().any(|cid| {
                    self.containers.get(cid).is_some_and(|c| c.name == key)
                        || short_id(cid) == key
                        || cid == key
                })
            })
            .map(|id| self.view(id, now))
            .collect();
        if !by_name.is_empty() {
            return by_name;
        }
        self.identities
            .values()
            .filter(|id| {
                id.containers.iter().any(|cid| cid.starts_with(key))
                    || matches!(&id.identity, Identity::Pod(p) if p.container == key)
            })
            .map(|id| self.view(id, now))
            .collect()
    }

    pub fn node_counts(&self) -> NodeCounts {
        let mut n = NodeCounts {
            restarts_total: self.node_restarts,
            sandboxes: self.sandboxes.len() as u64,
            ..Default::default()
        };
        for c in self.containers.values() {
            n.tracked += 1;
            if c.running {
                n.running += 1;
                n.paused += u64::from(c.paused);
            } else {
                n.stopped += 1;
            }
        }
        n
    }

    /// Restarts seen on the node within `window` before `now`.
    pub fn restarts_within(&self, window: Nanos, now: UnixNanos) -> u64 {
        self.restart_times
            .iter()
            .filter(|&&t| t >= now - window)
            .count() as u64
    }

    pub fn restarts_last_hour(&self, now: UnixNanos) -> u64 {
        self.restarts_within(HOUR, now)
    }

    pub fn restarts_last_day(&self, now: UnixNanos) -> u64 {
        self.restarts_within(DAY, now)
    }
}
