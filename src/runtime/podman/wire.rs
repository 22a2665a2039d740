//! libpod's wire format: the JSON of its event lines, version, list and inspect answers,
//! and their translation into normalized events and snapshots.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::event::snapshot::{ContainerSnapshot, SnapshotState};
use crate::event::{ContainerLabels, EventKind, Health, Rename, RuntimeEvent, Subject};
use crate::runtime::{map_action, RENAME_ACTION};
use crate::time::{Nanos, UnixNanos};

/// One line of libpod's event stream (the Docker-shaped JSON Podman 4 answers).
#[derive(Debug, Deserialize)]
pub(super) struct PodmanEvent {
    #[serde(rename = "Type", default)]
    pub(super) typ: String,
    #[serde(rename = "Action", default)]
    pub(super) action: String,
    #[serde(rename = "Actor", default)]
    pub(super) actor: Actor,
    #[serde(rename = "timeNano", default)]
    pub(super) time_nano: Option<i64>,
    #[serde(default)]
    pub(super) time: Option<i64>,
    /// Podman puts a health check's result here, on every check.
    #[serde(rename = "HealthStatus", default)]
    pub(super) health_status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Actor {
    #[serde(rename = "ID", default)]
    pub(super) id: String,
    #[serde(rename = "Attributes", default)]
    pub(super) attributes: Option<HashMap<String, String>>,
}

/// Parses one event line. Podman 4.3's log reader can emit the start of a line and then the
/// whole line again on the same line (a write it caught half-way): the last complete object
/// in the line is the event.
pub(super) fn parse_line(line: &[u8]) -> Option<PodmanEvent> {
    let text = std::str::from_utf8(line).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(ev) = serde_json::from_str(text) {
        return Some(ev);
    }
    text.match_indices("{\"")
        .skip(1)
        .find_map(|(i, _)| serde_json::from_str(&text[i..]).ok())
}

/// A libpod rename, whose `name` attribute is the new name (libpod stamps the event after it
/// renamed the container). `None` for anything else.
pub(super) fn to_rename(ev: &PodmanEvent) -> Option<Rename> {
    if ev.typ != "container" || ev.action != RENAME_ACTION || ev.actor.id.is_empty() {
        return None;
    }
    let name = ev
        .actor
        .attributes
        .as_ref()
        .and_then(|a| a.get("name"))
        .cloned()
        .unwrap_or_default();
    Some(Rename {
        time_nanos: event_time(ev)?,
        container_id: ev.actor.id.clone(),
        name,
    })
}

pub(super) fn event_time(ev: &PodmanEvent) -> Option<UnixNanos> {
    ev.time_nano
        .filter(|&t| t > 0)
        .map(UnixNanos::from_nanos)
        .or_else(|| ev.time.map(UnixNanos::from_secs))
}

/// A libpod event as a runtime event, before the pod-infra check. Non-container events and
/// actions without a lifecycle meaning are `None`.
pub(super) fn to_runtime_event(ev: PodmanEvent) -> Option<RuntimeEvent> {
    if ev.typ != "container" {
        return None;
    }
    let (kind, mut health) = map_action(&ev.action)?;
    if ev.actor.id.is_empty() {
        return None;
    }
    let time_nanos = event_time(&ev)?;
    let attrs = ev.actor.attributes.unwrap_or_default();
    let get = |k: &str| attrs.get(k).map(String::as_str);
    if kind == EventKind::HealthStatus && health.is_none() {
        health = ev
            .health_status
            .as_deref()
            .or_else(|| get("health_status"))
            .and_then(Health::parse);
    }
    // Podman stamps `containerExitCode` on every event (usually "0"); only a death has one.
    let exit_code = if kind == EventKind::Died {
        get("containerExitCode")
            .or_else(|| get("exitCode"))
            .and_then(|c| c.parse().ok())
    } else {
        None
    };
    Some(RuntimeEvent {
        time_nanos,
        kind,
        exit_code,
        health,
        subject: Arc::new(Subject {
            name: get("name").unwrap_or_default().to_string(),
            image: get("image").unwrap_or_default().to_string(),
            labels: ContainerLabels::from_lookup(get),
            container_id: ev.actor.id,
        }),
        action: ev.action,
    })
}

/// The pod an event's container belongs to, if any (`podId` attribute).
pub(super) fn pod_of(ev: &PodmanEvent) -> Option<String> {
    ev.actor
        .attributes
        .as_ref()
        .and_then(|a| a.get("podId"))
        .filter(|p| !p.is_empty())
        .cloned()
}

/// Podman names a pod's infra container `<first 12 of the pod id>-infra` unless told
/// otherwise; the fallback when the container is gone and inspect cannot say.
pub(super) fn looks_like_infra(name: &str, pod_id: &str) -> bool {
    name.strip_suffix("-infra")
        .is_some_and(|p| !p.is_empty() && pod_id.starts_with(p))
}

/// The same judgement without the pod id: `<12 hex digits>-infra`.
pub(super) fn looks_like_default_infra(name: &str) -> bool {
    name.strip_suffix("-infra").is_some_and(|p| {
        p.len() == 12
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct VersionAnswer {
    #[serde(rename = "Version", default)]
    pub(super) version: String,
    #[serde(rename = "Components", default)]
    pub(super) components: Option<Vec<Component>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Component {
    #[serde(rename = "Name", default)]
    pub(super) name: String,
    #[serde(rename = "Details", default)]
    pub(super) details: Option<HashMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListItem {
    #[serde(rename = "Id")]
    pub(super) id: String,
    #[serde(rename = "IsInfra", default)]
    pub(super) is_infra: bool,
    #[serde(rename = "Labels", default)]
    pub(super) labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Inspect {
    #[serde(rename = "Id")]
    pub(super) id: String,
    #[serde(rename = "Name")]
    pub(super) name: String,
    #[serde(rename = "Created")]
    pub(super) created: Option<String>,
    #[serde(rename = "Image")]
    pub(super) image_id: String,
    #[serde(rename = "ImageName")]
    pub(super) image_name: String,
    #[serde(rename = "RestartCount")]
    pub(super) restart_count: Option<i64>,
    #[serde(rename = "IsInfra")]
    pub(super) is_infra: bool,
    #[serde(rename = "State")]
    pub(super) state: InspectState,
    #[serde(rename = "Config")]
    pub(super) config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InspectState {
    #[serde(rename = "Status")]
    pub(super) status: String,
    #[serde(rename = "ExitCode")]
    pub(super) exit_code: Option<i64>,
    #[serde(rename = "OOMKilled")]
    pub(super) oom_killed: bool,
    #[serde(rename = "StartedAt")]
    pub(super) started_at: Option<String>,
    #[serde(rename = "FinishedAt")]
    pub(super) finished_at: Option<String>,
    /// `Health` in Podman 4, `Healthcheck` in Podman 3.
    #[serde(rename = "Health", alias = "Healthcheck")]
    pub(super) health: Option<InspectHealth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InspectHealth {
    #[serde(rename = "Status")]
    pub(super) status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InspectConfig {
    #[serde(rename = "Labels")]
    pub(super) labels: Option<HashMap<String, String>>,
}

pub(super) fn to_snapshot(i: Inspect) -> ContainerSnapshot {
    let labels = i.config.labels.unwrap_or_default();
    let mut l = ContainerLabels::from_lookup(|k| labels.get(k).map(String::as_str));
    l.sandbox |= i.is_infra;
    ContainerSnapshot {
        name: i.name.trim_start_matches('/').to_string(),
        image: i.image_name,
        image_id: i.image_id,
        labels: l,
        state: SnapshotState::parse(&i.state.status),
        started_at: i
            .state
            .started_at
            .as_deref()
            .and_then(UnixNanos::parse_rfc3339),
        finished_at: i
            .state
            .finished_at
            .as_deref()
            .and_then(UnixNanos::parse_rfc3339),
        created_at: i.created.as_deref().and_then(UnixNanos::parse_rfc3339),
        exit_code: i.state.exit_code,
        // Podman 4 never sets it (it sees no OOM kill); kept for runtimes that do.
        oom_killed: i.state.oom_killed,
        health: i.state.health.and_then(|h| Health::parse(&h.status)),
        restart_count: i.restart_count.unwrap_or(0).max(0) as u64,
        id: i.id,
    }
}

/// `since` for Podman: RFC 3339 with nanoseconds, one nanosecond early (Podman's `since` is
/// exclusive; the watch loop's replays are inclusive).
pub fn format_podman_since(t: UnixNanos) -> String {
    t.saturating_sub(Nanos::from_nanos(1)).to_rfc3339()
}
