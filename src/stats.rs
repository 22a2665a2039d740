//! Node-level statistics (`/api/v1/stats/restarts`, `/api/v1/stats/uptime`; README "HTTP
//! API"), computed from the tracker's identity views. Their keys are part of the API.

use serde::{Deserialize, Serialize};

use crate::time::UnixNanos;
use crate::tracker::view::IdentityView;
use crate::tracker::Tracker;

/// How many of the most restarting identities `stats/restarts` lists.
pub const TOP_RESTARTING: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restarter {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub container_id: String,
    pub restarts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartStats {
    pub node: String,
    pub runtime: String,
    pub total_containers: usize,
    pub total_restarts: u64,
    pub containers_with_restarts: usize,
    pub average_restarts_per_container: f64,
    /// Every restart seen on the node, containers since removed included.
    pub node_restarts_total: u64,
    pub restarts_last_1h: u64,
    pub restarts_last_24h: u64,
    pub top_restarting: Vec<Restarter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UptimeStats {
    pub node: String,
    pub runtime: String,
    pub total_containers: usize,
    pub total_uptime_seconds: f64,
    pub running_containers: usize,
    pub paused_containers: usize,
    pub stopped_containers: usize,
    pub average_uptime_seconds: f64,
    pub states: std::collections::BTreeMap<String, usize>,
}

pub fn restarts(t: &Tracker, now: UnixNanos) -> RestartStats {
    let views = t.identities(now);
    restarts_of(
        t.node(),
        t.runtime().as_str(),
        &views,
        t.node_counts().restarts_total,
        t.restarts_last_hour(now),
        t.restarts_last_day(now),
    )
}

fn restarts_of(
    node: &str,
    runtime: &str,
    views: &[IdentityView],
    node_total: u64,
    last_1h: u64,
    last_24h: u64,
) -> RestartStats {
    let total_restarts: u64 = views.iter().map(|v| v.restarts).sum();
    let mut top: Vec<Restarter> = views
        .iter()
        .filter(|v| v.restarts > 0)
        .map(|v| Restarter {
            namespace: v.namespace.clone(),
            pod: v.pod.clone(),
            container: v.container.clone(),
            container_id: v.container_id.clone(),
            restarts: v.restarts,
        })
        .collect();
    let with_restarts = top.len();
    top.sort_by(|a, b| {
        b.restarts
            .cmp(&a.restarts)
            .then_with(|| a.container.cmp(&b.container))
    });
    top.truncate(TOP_RESTARTING);
    RestartStats {
        node: node.to_string(),
        runtime: runtime.to_string(),
        total_containers: views.len(),
        total_restarts,
        containers_with_restarts: with_restarts,
        average_restarts_per_container: if views.is_empty() {
            0.0
        } else {
            total_restarts as f64 / views.len() as f64
        },
        node_restarts_total: node_total,
        restarts_last_1h: last_1h,
        restarts_last_24h: last_24h,
        top_restarting: top,
    }
}

pub fn uptime(t: &Tracker, now: UnixNanos) -> UptimeStats {
    let views = t.identities(now);
    let mut states = std::collections::BTreeMap::new();
    for v in &views {
        *states.entry(v.state.to_string()).or_insert(0) += 1;
    }
    let total: f64 = views.iter().map(|v| v.uptime_seconds).sum();
    let running = views.iter().filter(|v| v.running).count();
    let paused = views.iter().filter(|v| v.paused).count();
    UptimeStats {
        node: t.node().to_string(),
        runtime: t.runtime().as_str().to_string(),
        total_containers: views.len(),
        total_uptime_seconds: total,
        running_containers: running,
        paused_containers: paused,
        stopped_containers: views.len() - running,
        average_uptime_seconds: if views.is_empty() {
            0.0
        } else {
            total / views.len() as f64
        },
        states,
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::event::{EventKind, RuntimeEvent};
    use crate::fixtures::EventBuilder;
    use crate::time::NANOS_PER_SEC as S;

    fn ev(t: i64, id: &str, kind: EventKind) -> RuntimeEvent {
        EventBuilder::new(kind, id)
            .at(UnixNanos::from_nanos(t))
            .action(kind.as_str())
            .name(id)
            .exit_code(1)
            .build()
    }

    #[test]
    fn api_keys_and_values() {
        let mut t = crate::fixtures::tracker("n", 100);
        for (i, id) in ["a", "b"].iter().enumerate() {
            let o = i as i64 * 100 * S;
            for e in [
                ev(o + S, id, EventKind::Created),
                ev(o + 2 * S, id, EventKind::Started),
            ] {
                t.apply(&e, e.time_nanos);
            }
        }
        for e in [
            ev(10 * S, "a", EventKind::Died),
            ev(11 * S, "a", EventKind::Started),
            ev(12 * S, "a", EventKind::Died),
            ev(13 * S, "a", EventKind::Started),
        ] {
            t.apply(&e, e.time_nanos);
        }
        let now = UnixNanos::from_nanos(200 * S);
        let r = restarts(&t, now);
        assert_eq!(
            (
                r.total_containers,
                r.total_restarts,
                r.containers_with_restarts
            ),
            (2, 2, 1)
        );
        assert_eq!(r.average_restarts_per_container, 1.0);
        assert_eq!(r.restarts_last_1h, 2);
        assert_eq!(r.top_restarting[0].container, "a");
        let u = uptime(&t, now);
        assert_eq!(u.running_containers, 2);
        // a: 2..10 and 11..12 closed (9s), 13..200 open; b: 102..200.
        assert!(
            (u.total_uptime_seconds - (9.0 + 187.0 + 98.0)).abs() < 1e-6,
            "{}",
            u.total_uptime_seconds
        );
        let json = serde_json::to_value(&u).unwrap();
        for key in ["total_uptime_seconds", "running_containers"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
