//! The Docker Engine API through bollard. Also answers for Podman's Docker-compatible socket,
//! which reports itself as Podman in `/version`.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{
    ContainerInspectResponse, EventMessage, EventMessageTypeEnum, HealthStatusEnum,
};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    error_chain, inspect_all, map_action, ContainerFilter, RuntimeInfo, Source, SourceError,
    RENAME_ACTION,
};
use crate::event::snapshot::{ContainerSnapshot, SnapshotState};
use crate::event::{
    ContainerLabels, Health, Rename, RuntimeEvent, RuntimeKind, SourceEvent, Subject,
};
use crate::time::UnixNanos;

/// Seconds bollard waits for response headers (not for the event stream's body).
const REQUEST_TIMEOUT_SECS: u64 = 30;

pub struct DockerSource {
    endpoint: String,
    filter: ContainerFilter,
    client: Option<Docker>,
}

impl DockerSource {
    /// `endpoint` is `unix:///path`, a bare path, or `tcp://host:port`.
    pub fn new(endpoint: &str, filter: ContainerFilter) -> DockerSource {
        DockerSource {
            endpoint: endpoint.to_string(),
            filter,
            client: None,
        }
    }

    fn unreachable(&self, e: impl ToString) -> SourceError {
        SourceError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        }
    }

    fn api(&self, operation: &'static str, e: impl ToString) -> SourceError {
        SourceError::Api {
            endpoint: self.endpoint.clone(),
            operation,
            reason: e.to_string(),
        }
    }

    fn client(&self) -> Result<&Docker, SourceError> {
        self.client
            .as_ref()
            .ok_or_else(|| self.unreachable("not connected"))
    }

    fn open(&self) -> Result<Docker, SourceError> {
        let e = &self.endpoint;
        let v = bollard::API_DEFAULT_VERSION;
        let r = if let Some(addr) = e.strip_prefix("tcp://") {
            Docker::connect_with_http(&format!("http://{addr}"), REQUEST_TIMEOUT_SECS, v)
        } else if e.starts_with("http://") {
            Docker::connect_with_http(e, REQUEST_TIMEOUT_SECS, v)
        } else {
            let path = e.strip_prefix("unix://").unwrap_or(e);
            if !std::path::Path::new(path).exists() {
                return Err(self.unreachable(format!("no socket at {path}")));
            }
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, v)
        };
        r.map_err(|err| self.unreachable(error_chain(&err)))
    }

    fn label_filters(&self) -> HashMap<String, Vec<String>> {
        let mut f = HashMap::new();
        if !self.filter.labels.is_empty() {
            f.insert("label".to_string(), self.filter.labels.clone());
        }
        f
    }
}

/// Names the runtime from `/version`: Podman's compatibility layer lists a "Podman Engine".
fn runtime_of(v: &bollard::models::SystemVersion) -> RuntimeKind {
    let podman = v
        .components
        .iter()
        .flatten()
        .any(|c| c.name.to_ascii_lowercase().contains("podman"));
    if podman {
        RuntimeKind::Podman
    } else {
        RuntimeKind::Docker
    }
}

impl Source for DockerSource {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        let client = self.open()?;
        let client = client
            .negotiate_version()
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        let v = client
            .version()
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        let info = RuntimeInfo {
            runtime: runtime_of(&v),
            version: v.version.clone().unwrap_or_default(),
            api_version: client.client_version().to_string(),
        };
        self.client = Some(client);
        Ok(info)
    }

    fn events(
        &self,
        since: Option<UnixNanos>,
        until: Option<UnixNanos>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>> {
        let client = match self.client() {
            Ok(c) => c.clone(),
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let mut filters = self.label_filters();
        filters.insert("type".into(), vec!["container".into()]);
        let opts = EventsOptions {
            since: since.map(UnixNanos::to_docker_since),
            until: until.map(UnixNanos::to_docker_since),
            filters: Some(filters),
        };
        let endpoint = self.endpoint.clone();
        let filter = self.filter.clone();
        client
            .events(Some(opts))
            .map(move |item| match item {
                Ok(msg) => Ok(selected(&filter, &msg)
                    .then(|| to_source_event(msg))
                    .flatten()),
                Err(e) => Err(SourceError::Api {
                    endpoint: endpoint.clone(),
                    operation: "events",
                    reason: e.to_string(),
                }),
            })
            .boxed()
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        let client = self.client()?.clone();
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.label_filters()),
            ..Default::default()
        };
        let list = client
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.api("list containers", e))?;
        let ids: Vec<String> = list
            .into_iter()
            .filter(|c| {
                let labels = c.labels.as_ref();
                self.filter
                    .matches(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
            })
            .filter_map(|c| c.id)
            .collect();
        inspect_all(ids, |id| async move { self.inspect(&id).await }).await
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        match self.client()?.inspect_container(container_id, None).await {
            Ok(i) => Ok(Some(to_snapshot(i, container_id))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.api("inspect container", e)),
        }
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.client()?
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| self.unreachable(error_chain(&e)))
    }
}

/// Whether an event's container passes `--container-filter` (its attributes carry the
/// container's labels).
fn selected(filter: &ContainerFilter, msg: &EventMessage) -> bool {
    let attrs = msg.actor.as_ref().and_then(|a| a.attributes.as_ref());
    filter.matches(|k| attrs.and_then(|a| a.get(k)).map(String::as_str))
}

/// Translates one Docker event; non-container and unmapped actions become `None`. A rename's
/// `name` attribute is the new name (`oldName` the old one).
pub fn to_source_event(msg: EventMessage) -> Option<SourceEvent> {
    if msg.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = msg.action?;
    let actor = msg.actor?;
    let container_id = actor.id.filter(|id| !id.is_empty())?;
    let attrs = actor.attributes.unwrap_or_default();
    let get = |k: &str| attrs.get(k).map(String::as_str);
    let time_nanos = msg
        .time_nano
        .map(UnixNanos::from_nanos)
        .or_else(|| msg.time.map(UnixNanos::from_secs))?;
    if action == RENAME_ACTION {
        return Some(SourceEvent::Renamed(Rename {
            time_nanos,
            name: get("name").unwrap_or_default().to_string(),
            container_id,
        }));
    }
    let (kind, mut health) = map_action(&action)?;
    if health.is_none() {
        health = get("health_status").and_then(Health::parse);
    }
    Some(SourceEvent::Lifecycle(RuntimeEvent {
        time_nanos,
        kind,
        exit_code: get("exitCode").and_then(|c| c.parse().ok()),
        health,
        subject: Arc::new(Subject {
            name: get("name").unwrap_or_default().to_string(),
            image: get("image").unwrap_or_default().to_string(),
            labels: ContainerLabels::from_lookup(get),
            container_id,
        }),
        action,
    }))
}

fn to_snapshot(i: ContainerInspectResponse, id: &str) -> ContainerSnapshot {
    let state = i.state.unwrap_or_default();
    let config = i.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let status = state
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "created".to_string());
    let health = state.health.and_then(|h| h.status).and_then(|s| match s {
        HealthStatusEnum::STARTING => Some(Health::Starting),
        HealthStatusEnum::HEALTHY => Some(Health::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
        _ => None,
    });
    ContainerSnapshot {
        id: i.id.unwrap_or_else(|| id.to_string()),
        name: i
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        image_id: i.image.unwrap_or_default(),
        labels: ContainerLabels::from_lookup(|k| labels.get(k).map(String::as_str)),
        state: SnapshotState::parse(&status),
        started_at: state
            .started_at
            .as_deref()
            .and_then(UnixNanos::parse_rfc3339),
        finished_at: state
            .finished_at
            .as_deref()
            .and_then(UnixNanos::parse_rfc3339),
        created_at: i
            .created
            .map(|c| c.to_string())
            .as_deref()
            .and_then(UnixNanos::parse_rfc3339),
        exit_code: state.exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        health,
        restart_count: i.restart_count.unwrap_or(0).max(0) as u64,
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use bollard::models::EventActor;

    fn lifecycle(msg: EventMessage) -> Option<RuntimeEvent> {
        match to_source_event(msg)? {
            SourceEvent::Lifecycle(ev) => Some(ev),
            SourceEvent::Renamed(r) => panic!("expected a lifecycle event, got {r:?}"),
        }
    }

    fn msg(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("f83aee481422".into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            scope: None,
            time: Some(1_795_666_363),
            time_nano: Some(1_795_666_363_974_644_679),
        }
    }

    #[test]
    fn die_carries_its_exit_code_and_labels() {
        let e = lifecycle(msg(
            "die",
            &[
                ("exitCode", "3"),
                ("name", "web"),
                ("image", "busybox"),
                ("io.kubernetes.pod.namespace", "shop"),
            ],
        ))
        .unwrap();
        assert_eq!(e.kind, crate::event::EventKind::Died);
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.subject.name, "web");
        assert_eq!(e.time_nanos.as_nanos(), 1_795_666_363_974_644_679);
        assert!(e.labels().pod.is_none(), "partial pod labels are not a pod");
    }

    #[test]
    fn odd_events_are_dropped_not_fatal() {
        let mut m = msg("start", &[]);
        m.actor.as_mut().unwrap().id = None;
        assert!(lifecycle(m).is_none());
        let mut m = msg("connect", &[]);
        m.typ = Some(EventMessageTypeEnum::NETWORK);
        assert!(lifecycle(m).is_none());
        assert!(lifecycle(msg("exec_create: sh", &[])).is_none());
        let mut m = msg("start", &[]);
        m.time_nano = None;
        assert_eq!(
            lifecycle(m).unwrap().time_nanos,
            UnixNanos::from_secs(1_795_666_363)
        );
    }

    #[test]
    fn health_comes_from_the_action_or_the_attributes() {
        let e = lifecycle(msg("health_status: unhealthy", &[])).unwrap();
        assert_eq!(e.health, Some(Health::Unhealthy));
        let e = lifecycle(msg("health_status", &[("health_status", "healthy")])).unwrap();
        assert_eq!(e.health, Some(Health::Healthy));
    }

    #[test]
    fn a_rename_carries_the_new_name_and_is_no_lifecycle_event() {
        let e = to_source_event(msg("rename", &[("name", "web-2"), ("oldName", "/web")]));
        assert_eq!(
            e,
            Some(SourceEvent::Renamed(Rename {
                time_nanos: UnixNanos::from_nanos(1_795_666_363_974_644_679),
                container_id: "f83aee481422".into(),
                name: "web-2".into(),
            }))
        );
    }
}
