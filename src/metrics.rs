//! The scrape-time collector (SPEC section 6). It reads one snapshot of the tracker per
//! scrape and encodes it; nothing here does I/O or waits, and a removed identity simply is
//! not in the next snapshot, so its series disappear.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::agent::Shared;
use crate::event::EventKind;
use crate::time::{now_nanos, NANOS_PER_SEC};
use crate::tracker::{IdentityView, NodeCounts};

/// Label values longer than this are cut (on a character boundary): one hostile container
/// name must not bloat every scrape.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Cuts a label value to [`MAX_LABEL_VALUE_BYTES`]; escaping is the encoder's job.
pub fn cut_label_value(v: &str) -> &str {
    if v.len() <= MAX_LABEL_VALUE_BYTES {
        return v;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

/// Turns an arbitrary key (an annotation name) into a valid label name: `[a-zA-Z0-9_]`,
/// not starting with a digit.
pub fn sanitize_label_key(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

#[derive(Debug)]
pub struct LifecycleCollector {
    shared: Arc<Shared>,
}

/// The registry behind `/metrics`.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(LifecycleCollector { shared }));
    r
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

fn base_labels<'a>(node: &'a str, runtime: &'a str, v: &'a IdentityView) -> Labels<'a> {
    vec![
        ("node", cut_label_value(node)),
        ("runtime", runtime),
        ("namespace", cut_label_value(&v.namespace)),
        ("pod", cut_label_value(&v.pod)),
        ("container", cut_label_value(&v.container)),
    ]
}

fn with<'a>(base: &Labels<'a>, extra: &[(&'a str, &'a str)]) -> Labels<'a> {
    let mut l = Vec::with_capacity(base.len() + extra.len());
    l.extend_from_slice(base);
    l.extend_from_slice(extra);
    l
}

/// Encodes one family from `(labels, value)` rows; a family with no rows is left out.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric_type: MetricType,
    rows: Vec<(Labels<'_>, M)>,
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<'a>(l: Labels<'a>, v: f64) -> (Labels<'a>, ConstGauge<f64>) {
    (l, ConstGauge::new(v))
}

fn counter<'a>(l: Labels<'a>, v: u64) -> (Labels<'a>, ConstCounter<u64>) {
    (l, ConstCounter::new(v))
}

impl Collector for LifecycleCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = now_nanos();
        let (node, runtime, views, counts, history_len) = {
            let t = self.shared.tracker.read();
            (
                t.node().to_string(),
                t.runtime().as_str(),
                t.identities(now),
                t.node_counts(),
                t.history().len(),
            )
        };
        let base: Vec<Labels> = views
            .iter()
            .map(|v| base_labels(&node, runtime, v))
            .collect();
        encode_identities(&mut enc, &views, &base)?;
        let node_labels: Labels = vec![("node", cut_label_value(&node)), ("runtime", runtime)];
        encode_node(&mut enc, &node_labels, &counts)?;
        self.encode_self(&mut enc, &node_labels, history_len)
    }
}

fn encode_identities(
    enc: &mut DescriptorEncoder,
    views: &[IdentityView],
    base: &[Labels],
) -> Result<(), std::fmt::Error> {
    let each =
        |f: &dyn Fn(&IdentityView, &Labels) -> Option<f64>| -> Vec<(Labels, ConstGauge<f64>)> {
            views
                .iter()
                .zip(base)
                .filter_map(|(v, b)| f(v, b).map(|x| gauge(b.clone(), x)))
                .collect()
        };
    let b2f = |b: bool| if b { 1.0 } else { 0.0 };
    family(
        enc,
        "container_running",
        "1 while the container runs (paused counts as running), else 0.",
        None,
        MetricType::Gauge,
        each(&|v, _| Some(b2f(v.running))),
    )?;
    family(
        enc,
        "container_paused",
        "1 while the container is paused, else 0.",
        None,
        MetricType::Gauge,
        each(&|v, _| Some(b2f(v.paused))),
    )?;
    family(
        enc,
        "container_uptime",
        "Time the identity has been running, all sessions known to the agent (paused included).",
        Some(Unit::Seconds),
        MetricType::Counter,
        views
            .iter()
            .zip(base)
            .map(|(v, b)| (b.clone(), ConstCounter::new(v.uptime_seconds)))
            .collect(),
    )?;
    family(
        enc,
        "container_time_since_start",
        "Time since the last start; only while running.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        each(&|v, _| v.time_since_start_seconds),
    )?;
    family(
        enc,
        "container_last_start_time",
        "Unix time of the last start.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        each(&|v, _| v.last_start_nanos.map(|t| t as f64 / NANOS_PER_SEC as f64)),
    )?;
    family(enc, "container_restarts", "Restarts of the identity (a start after an earlier start), including restarts inferred from the runtime.", None, MetricType::Counter,
        views.iter().zip(base).map(|(v, b)| counter(b.clone(), v.restarts)).collect())?;
    family(
        enc,
        "container_last_exit_code",
        "Exit code of the last exit.",
        None,
        MetricType::Gauge,
        each(&|v, _| v.last_exit_code.map(|c| c as f64)),
    )?;
    family(
        enc,
        "container_last_terminated_reason",
        "Why the last session ended (reason label); always 1.",
        None,
        MetricType::Gauge,
        views
            .iter()
            .zip(base)
            .filter_map(|(v, b)| {
                v.last_terminated_reason
                    .map(|r| gauge(with(b, &[("reason", r.as_str())]), 1.0))
            })
            .collect(),
    )?;
    family(
        enc,
        "container_oom_kills",
        "OOM kills of the identity.",
        None,
        MetricType::Counter,
        views
            .iter()
            .zip(base)
            .map(|(v, b)| counter(b.clone(), v.oom_kills))
            .collect(),
    )?;
    family(
        enc,
        "container_health_status",
        "Health check status (status label); always 1; absent without a health check.",
        None,
        MetricType::Gauge,
        views
            .iter()
            .zip(base)
            .filter_map(|(v, b)| {
                v.health
                    .map(|h| gauge(with(b, &[("status", h.as_str())]), 1.0))
            })
            .collect(),
    )?;
    let mut events = Vec::new();
    for (v, b) in views.iter().zip(base) {
        for kind in EventKind::ALL {
            let n = v.events[kind.index()];
            if n > 0 {
                events.push(counter(with(b, &[("event", kind.as_str())]), n));
            }
        }
    }
    family(
        enc,
        "container_events",
        "Lifecycle events observed, by event type; only types seen.",
        None,
        MetricType::Counter,
        events,
    )?;
    family(
        enc,
        "container_info",
        "Runtime details of the identity's current container; always 1.",
        None,
        MetricType::Gauge,
        views
            .iter()
            .zip(base)
            .map(|(v, b)| {
                gauge(
                    with(
                        b,
                        &[
                            ("container_id", cut_label_value(&v.container_id)),
                            ("name", cut_label_value(&v.name)),
                            ("image", cut_label_value(&v.image)),
                            ("image_id", cut_label_value(&v.image_id)),
                        ],
                    ),
                    1.0,
                )
            })
            .collect(),
    )?;
    Ok(())
}

fn encode_node(
    enc: &mut DescriptorEncoder,
    l: &Labels,
    c: &NodeCounts,
) -> Result<(), std::fmt::Error> {
    let g = |v: u64| vec![gauge(l.clone(), v as f64)];
    family(
        enc,
        "containers_tracked",
        "Containers the runtime holds on the node (all states).",
        None,
        MetricType::Gauge,
        g(c.tracked),
    )?;
    family(
        enc,
        "containers_running",
        "Running containers on the node, paused included.",
        None,
        MetricType::Gauge,
        g(c.running),
    )?;
    family(
        enc,
        "containers_paused",
        "Paused containers on the node.",
        None,
        MetricType::Gauge,
        g(c.paused),
    )?;
    family(
        enc,
        "containers_stopped",
        "Created, exited or dead containers on the node.",
        None,
        MetricType::Gauge,
        g(c.stopped),
    )?;
    family(
        enc,
        "containers_restarts",
        "Every restart seen on the node, including containers since removed.",
        None,
        MetricType::Counter,
        vec![counter(l.clone(), c.restarts_total)],
    )
}

impl LifecycleCollector {
    fn encode_self(
        &self,
        enc: &mut DescriptorEncoder,
        l: &Labels,
        history_len: usize,
    ) -> Result<(), std::fmt::Error> {
        let c = &self.shared.counters;
        let version = env!("CARGO_PKG_VERSION");
        family(
            enc,
            "lifecycle_agent_build_info",
            "Build of the running agent; always 1.",
            None,
            MetricType::Gauge,
            vec![gauge(with(l, &[("version", version)]), 1.0)],
        )?;
        let connected = if self.shared.is_connected() { 1.0 } else { 0.0 };
        family(
            enc,
            "lifecycle_agent_runtime_connected",
            "1 while the runtime's event stream is connected and synced.",
            None,
            MetricType::Gauge,
            vec![gauge(l.clone(), connected)],
        )?;
        let counters = [
            ("lifecycle_agent_events_processed", "Runtime events recorded.", c.events_processed.get()),
            ("lifecycle_agent_events_duplicate", "Replayed events dropped because they were already processed.", c.events_duplicate.get()),
            ("lifecycle_agent_stream_reconnects", "Times the runtime connection was lost and retried.", c.stream_reconnects.get()),
            ("lifecycle_agent_events_possibly_missed", "Replays that could not reach back to the last processed event (the runtime no longer held it); the gap was reconciled from list + inspect.", c.events_possibly_missed.get()),
            ("lifecycle_agent_restarts_inferred", "Restarts counted from the runtime's state rather than from an observed event.", c.inferred_restarts.get()),
            ("lifecycle_agent_store_writes", "Group commits written to the state store.", c.store_writes.get()),
            ("lifecycle_agent_store_errors", "Failed state store writes (retried with the next commit).", c.store_errors.get()),
            ("lifecycle_agent_store_recoveries", "Unusable state files moved aside and rebuilt from the runtime.", c.store_recoveries.get()),
        ];
        for (name, help, v) in counters {
            family(
                enc,
                name,
                help,
                None,
                MetricType::Counter,
                vec![counter(l.clone(), v)],
            )?;
        }
        family(
            enc,
            "lifecycle_agent_history_events",
            "Events held in the history.",
            None,
            MetricType::Gauge,
            vec![gauge(l.clone(), history_len as f64)],
        )
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn label_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = cut_label_value(&long);
        assert!(cut.len() <= MAX_LABEL_VALUE_BYTES);
        assert_eq!(cut.len(), 1024);
        assert_eq!(cut_label_value("short"), "short");
    }

    #[test]
    fn label_keys_are_sanitized() {
        assert_eq!(sanitize_label_key("example.com/owner"), "example_com_owner");
        assert_eq!(sanitize_label_key("9lives"), "_9lives");
    }
}
