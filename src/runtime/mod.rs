//! Runtime event sources: the interface every runtime implements ([`Source`]), the mapping
//! of runtime action words onto the event types of `docs/design.md` ("Events"), and beside
//! it the sources themselves (`docker.rs`, `podman.rs`), the one that wraps whichever
//! answered (`any.rs`), discovery (`discovery.rs`) and the reconnect/replay loop (`watch.rs`).
//! This file depends on none of them, so they can all depend on it.

pub mod any;
pub mod containerd;
pub mod cri;
pub mod discovery;
pub mod docker;
pub mod podman;
pub mod watch;

/// The snapshot types live with the normalized events; sources name them here too.
pub use crate::event::snapshot;

use std::future::Future;

use futures_util::stream::BoxStream;

use crate::event::snapshot::ContainerSnapshot;
use crate::event::{EventKind, Health, RuntimeKind, SourceEvent};
use crate::time::UnixNanos;

/// What a runtime said about itself on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub runtime: RuntimeKind,
    pub version: String,
    pub api_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint}: {operation} failed: {reason}")]
    Api {
        endpoint: String,
        operation: &'static str,
        reason: String,
    },
    #[error("{endpoint}: the event stream ended")]
    StreamEnded { endpoint: String },
    #[error("{endpoint}: no answer to the liveness check within {seconds}s")]
    Unresponsive { endpoint: String, seconds: u64 },
}

/// Label filters (`--container-filter KEY[=VALUE]`): a container is tracked only when it
/// carries every one of them. They are passed to the runtime's list and event filters to
/// save work, and checked again by the sources ([`ContainerFilter::matches`]) because the
/// runtimes do not agree on what several filters mean: libpod's event filter ORs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    pub labels: Vec<String>,
}

impl ContainerFilter {
    /// Accepts `KEY` or `KEY=VALUE`, as `docker ps --filter label=...` does.
    pub fn parse(items: &[String]) -> Result<ContainerFilter, String> {
        let mut labels = Vec::with_capacity(items.len());
        for item in items {
            let key = item.split('=').next().unwrap_or_default().trim();
            if key.is_empty() {
                return Err(format!(
                    "{item:?} has no label key (expected KEY or KEY=VALUE)"
                ));
            }
            labels.push(item.trim().to_string());
        }
        Ok(ContainerFilter { labels })
    }

    /// Whether a container with these labels (or event attributes, which carry them) passes
    /// every filter: `KEY` needs the label, `KEY=VALUE` needs that value.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.labels.iter().all(|f| match f.split_once('=') {
            Some((key, value)) => get(key.trim()) == Some(value),
            None => get(f).is_some(),
        })
    }
}

/// One container runtime API. Implementations only translate; the reconnect, replay and
/// reconciliation policy lives in [`watch`].
pub trait Source: Send + Sync + 'static {
    /// Where it connects, for messages.
    fn endpoint(&self) -> &str;

    /// Whether `events` can reach into the past (Docker's ring, Podman's log). Without it
    /// (containerd, CRI) a reconnect or a restart goes straight to the reconciliation, which
    /// counts what happened meanwhile from the runtime's state.
    fn replays(&self) -> bool {
        true
    }

    /// Connects (negotiating the API version) and says what answered.
    fn connect(&mut self) -> impl Future<Output = Result<RuntimeInfo, SourceError>> + Send;

    /// Container events from `since` (inclusive) to `until` (the stream ends there), or
    /// without end. Items the agent does not act on come as `None` so callers can tell a
    /// live stream from a silent one.
    fn events(
        &self,
        since: Option<UnixNanos>,
        until: Option<UnixNanos>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>>;

    /// Every container (all states) with what inspect says about it.
    fn snapshot(&self) -> impl Future<Output = Result<Vec<ContainerSnapshot>, SourceError>> + Send;

    /// What inspect says about one container; `None` if it is gone. Events carry no image
    /// ID, so containers first met through an event are looked up once with this.
    fn inspect(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<Option<ContainerSnapshot>, SourceError>> + Send;

    /// A cheap liveness check; idle event streams say nothing for hours.
    fn ping(&self) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// The action word of a container's rename, the same in Docker and Podman. Not a lifecycle
/// event: the runtimes translate it into [`crate::event::Rename`], not through [`map_action`].
pub const RENAME_ACTION: &str = "rename";

/// Maps a runtime's action word onto an event type. Docker and Podman (libpod and its Docker
/// compatibility layer) share most words; the ones that carry no lifecycle change (`init`,
/// `cleanup`, `exec_*`, `attach`, `rename`, ...) map to `None`.
pub fn map_action(action: &str) -> Option<(EventKind, Option<Health>)> {
    if let Some(rest) = action.strip_prefix("health_status") {
        let status = rest.trim_start_matches(':').trim();
        return Some((EventKind::HealthStatus, Health::parse(status)));
    }
    let kind = match action {
        "create" => EventKind::Created,
        "start" => EventKind::Started,
        "restart" => EventKind::Restarted,
        "stop" => EventKind::Stopped,
        "die" | "died" => EventKind::Died,
        "kill" => EventKind::Killed,
        "pause" => EventKind::Paused,
        "unpause" => EventKind::Unpaused,
        "destroy" | "remove" => EventKind::Destroyed,
        "oom" => EventKind::Oom,
        _ => return None,
    };
    Some((kind, None))
}

/// Inspects in flight at once while building a snapshot.
const INSPECT_CONCURRENCY: usize = 8;

/// Inspects every listed container, a few at a time, for a snapshot (Docker and Podman alike).
/// A container that is gone by the time it is inspected (`Ok(None)`) is left out: its removal
/// event tells the rest.
pub async fn inspect_all<I, F, Fut>(
    ids: I,
    inspect: F,
) -> Result<Vec<ContainerSnapshot>, SourceError>
where
    I: IntoIterator<Item = String>,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<ContainerSnapshot>, SourceError>>,
{
    use futures_util::{stream, StreamExt};
    let results: Vec<_> = stream::iter(ids)
        .map(inspect)
        .buffer_unordered(INSPECT_CONCURRENCY)
        .collect()
        .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        if let Some(s) = r? {
            out.push(s);
        }
    }
    Ok(out)
}

/// An error with its causes: bollard's connect errors say only "client error (Connect)" and
/// keep the reason a user can act on ("Permission denied", "Connection refused") in a source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn docker_and_podman_words_map_onto_one_vocabulary() {
        let cases = [
            ("create", Some(EventKind::Created)),
            ("start", Some(EventKind::Started)),
            ("restart", Some(EventKind::Restarted)),
            ("stop", Some(EventKind::Stopped)),
            ("die", Some(EventKind::Died)),
            ("died", Some(EventKind::Died)),
            ("kill", Some(EventKind::Killed)),
            ("pause", Some(EventKind::Paused)),
            ("unpause", Some(EventKind::Unpaused)),
            ("destroy", Some(EventKind::Destroyed)),
            ("remove", Some(EventKind::Destroyed)),
            ("oom", Some(EventKind::Oom)),
            ("init", None),
            ("cleanup", None),
            ("exec_start: sh -c true", None),
            ("attach", None),
            ("rename", None),
            ("", None),
        ];
        for (action, want) in cases {
            assert_eq!(map_action(action).map(|(k, _)| k), want, "{action:?}");
        }
        assert_eq!(
            map_action("health_status: unhealthy"),
            Some((EventKind::HealthStatus, Some(Health::Unhealthy)))
        );
        assert_eq!(
            map_action("health_status"),
            Some((EventKind::HealthStatus, None))
        );
    }

    #[test]
    fn error_chains_keep_the_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(13));
        let text = error_chain(&e);
        assert!(text.starts_with("client error (Connect): "), "{text}");
        assert!(text.contains("Permission denied"), "{text}");
    }

    #[test]
    fn container_filters_all_must_match() {
        let f = ContainerFilter::parse(&["a=1".into(), "b=2".into(), "c".into()]).unwrap();
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
        };
        assert!(f.matches(labels(&[("a", "1"), ("b", "2"), ("c", "")])));
        assert!(!f.matches(labels(&[("a", "1"), ("c", "x")])), "b missing");
        assert!(!f.matches(labels(&[("a", "1"), ("b", "3"), ("c", "x")])));
        assert!(!f.matches(labels(&[("a", "1"), ("b", "2")])), "c missing");
        assert!(ContainerFilter::default().matches(labels(&[])));
        let eq = ContainerFilter::parse(&["k=v=w".into()]).unwrap();
        assert!(eq.matches(labels(&[("k", "v=w")])));
    }

    #[test]
    fn container_filters_need_a_key() {
        assert!(ContainerFilter::parse(&["app=web".into(), "tier".into()]).is_ok());
        assert!(ContainerFilter::parse(&["=web".into()]).is_err());
    }
}
