//! The scrape-time collector (README "Metrics"). It reads one snapshot of the tracker per
//! scrape and encodes it; nothing here does I/O or waits, and a removed identity simply is
//! not in the next snapshot, so its series disappear.
//!
//! Pod metadata is joined here, at scrape time, from the pod index's current snapshot: a pod
//! that arrives after its containers labels their series from the next scrape on, and a
//! deleted pod's labels leave with it. The labels are borrowed from the snapshot; besides the
//! snapshot, a scrape allocates one base label vector per identity, and rows are encoded as
//! they are produced (the HTTP side streams the output in chunks).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::event::EventKind;
use crate::kube::pods::PodIndex;
use crate::kube::KubeState;
use crate::labels::cut_label_value;
use crate::process::ProcessStats;
use crate::state::StateReader;
use crate::time::UnixNanos;
use crate::tracker::view::{IdentityView, NodeCounts};

#[derive(Debug)]
pub struct LifecycleCollector {
    state: StateReader,
    kube: Arc<KubeState>,
}

/// Registers what `/metrics` computes at scrape time: the series of every identity, the
/// node's counts, the agent's build, connection, history and process figures. The counters
/// of the state, of the HTTP server and the Kubernetes side's health are registered by their
/// owners.
pub fn register(r: &mut Registry, state: StateReader, kube: Arc<KubeState>) {
    r.register_collector(Box::new(LifecycleCollector { state, kube }));
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

/// The labels of every series of an identity: `node`, `runtime`, `namespace`, `pod`, `uid`
/// (the pod's uid, empty outside Kubernetes: a pod re-created under its name is a new series,
/// as in kube-state-metrics; `docs/design.md`, "One series per label set"), `container`,
/// then the allowlisted `annotation_*` / `label_*` of its pod when known.
fn base_labels<'a>(
    node: &'a str,
    runtime: &'a str,
    v: &'a IdentityView,
    pods: Option<&'a PodIndex>,
) -> Labels<'a> {
    let meta = pods
        .filter(|_| !v.pod_uid.is_empty())
        .and_then(|p| p.for_identity(&v.pod_uid, &v.namespace, &v.pod));
    let mut l = Vec::with_capacity(6 + meta.map_or(0, |m| m.metric_label_count()));
    l.extend_from_slice(&[
        ("node", cut_label_value(node)),
        ("runtime", runtime),
        ("namespace", cut_label_value(&v.namespace)),
        ("pod", cut_label_value(&v.pod)),
        ("uid", cut_label_value(&v.pod_uid)),
        ("container", cut_label_value(&v.container)),
    ]);
    if let Some(m) = meta {
        l.extend(m.metric_labels());
    }
    l
}

/// Leaves out every identity whose label set another identity of the scrape also has, but
/// the one started most recently: one scrape must never carry a series twice (Prometheus
/// would keep an arbitrary one). With `uid` in the labels, two identities collide only in
/// corner cases: two plain containers whose names meet during a rename, or values equal
/// once cut at 1 KiB. Returns which identities to encode and how many were left out.
fn unique_label_sets(views: &[IdentityView], base: &[Labels]) -> (Vec<bool>, u64) {
    let mut keep = vec![true; views.len()];
    let mut first: HashMap<&[(&str, &str)], usize> = HashMap::with_capacity(views.len());
    let mut dropped = 0;
    for (i, b) in base.iter().enumerate() {
        match first.entry(b.as_slice()) {
            Entry::Vacant(e) => {
                e.insert(i);
            }
            Entry::Occupied(mut e) => {
                dropped += 1;
                let j = *e.get();
                let newer =
                    |v: &IdentityView| (v.last_start_nanos, v.running, v.container_id.clone());
                if newer(&views[i]) > newer(&views[j]) {
                    keep[j] = false;
                    e.insert(i);
                } else {
                    keep[i] = false;
                }
            }
        }
    }
    (keep, dropped)
}

fn with<'a>(base: &Labels<'a>, extra: &[(&'a str, &'a str)]) -> Labels<'a> {
    let mut l = Vec::with_capacity(base.len() + extra.len());
    l.extend_from_slice(base);
    l.extend_from_slice(extra);
    l
}

/// Encodes one family from `(labels, value)` rows; a family with no rows is left out. Rows
/// are produced one at a time, so a family of 10 000 series never exists as a whole.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<L>(l: L, v: f64) -> (L, ConstGauge<f64>) {
    (l, ConstGauge::new(v))
}

fn counter<L>(l: L, v: u64) -> (L, ConstCounter<u64>) {
    (l, ConstCounter::new(v))
}

/// An identity's base labels followed by a few of its own, without copying the base.
type RowLabels<'b, 'a> = (&'b [(&'a str, &'a str)], [(&'a str, &'a str); 1]);

impl Collector for LifecycleCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = UnixNanos::now();
        let (node, runtime, views, counts, own) = {
            let t = self.state.tracker();
            (
                t.node().to_string(),
                t.runtime().as_str(),
                t.identities(now),
                t.node_counts(),
                TrackerFigures {
                    history_len: t.history().len(),
                    inferred_restarts: t.inferred_restarts(),
                },
            )
        };
        // `None` without an allowlist: then there is nothing to join.
        let pods = self.kube.pods_for_metrics();
        let base: Vec<Labels> = views
            .iter()
            .map(|v| base_labels(&node, runtime, v, pods.as_deref()))
            .collect();
        let (keep, collisions) = unique_label_sets(&views, &base);
        let (views, base): (Vec<&IdentityView>, Vec<&Labels>) = views
            .iter()
            .zip(&base)
            .zip(keep)
            .filter_map(|(row, k)| k.then_some(row))
            .unzip();
        encode_identities(&mut enc, runtime, &views, &base)?;
        let node_labels: Labels = vec![("node", cut_label_value(&node)), ("runtime", runtime)];
        encode_node(&mut enc, &node_labels, &counts)?;
        family(
            &mut enc,
            "lifecycle_agent_series_collisions",
            "Identities left out of this scrape because a more recently started one has the same label set.",
            None,
            MetricType::Gauge,
            vec![gauge(node_labels.clone(), collisions as f64)],
        )?;
        self.encode_self(&mut enc, &node_labels, &own)
    }
}

/// The agent's own figures that live in the tracker.
struct TrackerFigures {
    history_len: usize,
    inferred_restarts: u64,
}

/// One gauge row per identity for which `f` has a value.
fn each<'b, 'a>(
    views: &'b [&'b IdentityView],
    base: &'b [&'b Labels<'a>],
    f: impl Fn(&IdentityView) -> Option<f64> + 'b,
) -> impl Iterator<Item = (&'b [(&'a str, &'a str)], ConstGauge<f64>)> + 'b {
    views
        .iter()
        .zip(base)
        .filter_map(move |(v, b)| f(v).map(|x| gauge(b.as_slice(), x)))
}

/// The container id as Kubernetes writes it in a pod's status (`<runtime>://<id>`) and
/// kube-state-metrics exports it in `kube_pod_container_info{container_id}`, so the two join
/// on equal values (README "With kube-state-metrics"). CRI-O's prefix is `cri-o`.
fn kube_container_id(runtime: &str, id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    let scheme = match runtime {
        "crio" => "cri-o",
        other => other,
    };
    format!("{scheme}://{id}")
}

fn encode_identities(
    enc: &mut DescriptorEncoder,
    runtime: &str,
    views: &[&IdentityView],
    base: &[&Labels],
) -> Result<(), std::fmt::Error> {
    let b2f = |b: bool| if b { 1.0 } else { 0.0 };
    let rows = || views.iter().zip(base);
    family(
        enc,
        "container_running",
        "1 while the container runs (paused counts as running), else 0.",
        None,
        MetricType::Gauge,
        each(views, base, |v| Some(b2f(v.running))),
    )?;
    family(
        enc,
        "container_paused",
        "1 while the container is paused, else 0.",
        None,
        MetricType::Gauge,
        each(views, base, |v| Some(b2f(v.paused))),
    )?;
    family(
        enc,
        "container_uptime",
        "Time the identity has been running, all sessions known to the agent (paused included).",
        Some(Unit::Seconds),
        MetricType::Counter,
        rows().map(|(v, b)| (b.as_slice(), ConstCounter::new(v.uptime_seconds))),
    )?;
    family(
        enc,
        "container_time_since_start",
        "Time since the last start; only while running.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        each(views, base, |v| v.time_since_start_seconds),
    )?;
    family(
        enc,
        "container_last_start_time",
        "Unix time of the last start.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        each(views, base, |v| {
            v.last_start_nanos.map(UnixNanos::as_secs_f64)
        }),
    )?;
    family(enc, "container_restarts", "Restarts of the identity (a start after an earlier start), including restarts inferred from the runtime.", None, MetricType::Counter,
        rows().map(|(v, b)| counter(b.as_slice(), v.restarts)))?;
    family(
        enc,
        "container_last_exit_code",
        "Exit code of the last exit.",
        None,
        MetricType::Gauge,
        each(views, base, |v| v.last_exit_code.map(|c| c as f64)),
    )?;
    family(
        enc,
        "container_last_terminated_reason",
        "Why the last session ended (reason label); always 1.",
        None,
        MetricType::Gauge,
        rows().filter_map(|(v, b)| {
            v.last_terminated_reason.map(|r| {
                let l: RowLabels = (b.as_slice(), [("reason", r.as_str())]);
                gauge(l, 1.0)
            })
        }),
    )?;
    family(
        enc,
        "container_oom_kills",
        "OOM kills of the identity.",
        None,
        MetricType::Counter,
        rows().map(|(v, b)| counter(b.as_slice(), v.oom_kills)),
    )?;
    family(
        enc,
        "container_health_status",
        "Health check status (status label); always 1; absent without a health check.",
        None,
        MetricType::Gauge,
        rows().filter_map(|(v, b)| {
            v.health.map(|h| {
                let l: RowLabels = (b.as_slice(), [("status", h.as_str())]);
                gauge(l, 1.0)
            })
        }),
    )?;
    family(
        enc,
        "container_events",
        "Lifecycle events observed, by event type; only types seen.",
        None,
        MetricType::Counter,
        rows().flat_map(|(v, b)| {
            EventKind::ALL.iter().filter_map(move |kind| {
                let n = v.events[kind.index()];
                let l: RowLabels = (b.as_slice(), [("event", kind.as_str())]);
                (n > 0).then(|| counter(l, n))
            })
        }),
    )?;
    family(
        enc,
        "container_info",
        "Runtime details of the identity's current container; always 1.",
        None,
        MetricType::Gauge,
        rows().map(|(v, b)| {
            let info = [
                ("container_id", cut_label_value(&v.container_id)),
                ("name", cut_label_value(&v.name)),
                ("image", cut_label_value(&v.image)),
                ("image_id", cut_label_value(&v.image_id)),
            ];
            let kube_id = [(
                "kube_container_id",
                kube_container_id(runtime, &v.container_id),
            )];
            gauge(((b.as_slice(), info), kube_id), 1.0)
        }),
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
        "lifecycle_agent_sandbox_containers",
        "Containers labelled as pod sandboxes: not tracked and in no other series (a rising value next to no pods means containers hide behind the label).",
        None,
        MetricType::Gauge,
        g(c.sandboxes),
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
        own: &TrackerFigures,
    ) -> Result<(), std::fmt::Error> {
        let version = env!("CARGO_PKG_VERSION");
        family(
            enc,
            "lifecycle_agent_build_info",
            "Build of the running agent; always 1.",
            None,
            MetricType::Gauge,
            vec![gauge(with(l, &[("version", version)]), 1.0)],
        )?;
        let connected = if self.state.is_connected() { 1.0 } else { 0.0 };
        family(
            enc,
            "lifecycle_agent_runtime_connected",
            "1 while the runtime's event stream is connected and synced.",
            None,
            MetricType::Gauge,
            vec![gauge(l.clone(), connected)],
        )?;
        family(
            enc,
            "lifecycle_agent_restarts_inferred",
            "Restarts counted from the runtime's state rather than from an observed event.",
            None,
            MetricType::Counter,
            vec![counter(l.clone(), own.inferred_restarts)],
        )?;
        family(
            enc,
            "lifecycle_agent_history_events",
            "Events held in the history.",
            None,
            MetricType::Gauge,
            vec![gauge(l.clone(), own.history_len as f64)],
        )?;
        self.encode_process(enc)
    }

    /// `process_*`, unlabelled as every Prometheus client library exports them.
    fn encode_process(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = ProcessStats::read();
        let none: &[(&str, &str)] = &[];
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                p.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size.",
                Some(Unit::Bytes),
                p.virtual_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch.",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                None,
                p.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit).",
                None,
                p.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "OS threads of the process.",
                None,
                p.threads.map(|v| v as f64),
            ),
        ];
        for (name, help, unit, v) in gauges {
            family(
                enc,
                name,
                help,
                unit,
                MetricType::Gauge,
                v.map(|v| gauge(none, v)),
            )?;
        }
        family(
            enc,
            "process_cpu",
            "User and system CPU time spent.",
            Some(Unit::Seconds),
            MetricType::Counter,
            p.cpu_seconds.map(|v| (none, ConstCounter::new(v))),
        )
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pod_metadata_joins_identities_by_uid() {
        use crate::kube::pods::{Allowlist, Allowlists, PodMeta};
        let allow = Allowlists {
            annotations: Allowlist::All,
            labels: Allowlist::None,
        };
        let ann = [("team".to_string(), "shop".to_string())]
            .into_iter()
            .collect();
        let idx: PodIndex = [PodMeta::from_metadata(
            Some("shop"),
            Some("web-1"),
            Some("u1"),
            Some(&ann),
            None,
            &allow,
        )
        .unwrap()]
        .into_iter()
        .collect();
        let view = |uid: &str| test_view("shop", "web-1", uid, "web");
        let known = view("u1");
        let l = base_labels("n", "docker", &known, Some(&idx));
        assert_eq!(l.last(), Some(&("annotation_team", "shop")));
        assert_eq!(l.len(), 7);
        assert!(l.contains(&("uid", "u1")), "{l:?}");
        let other = view("u2");
        assert_eq!(base_labels("n", "docker", &other, Some(&idx)).len(), 6);
        assert_eq!(base_labels("n", "docker", &known, None).len(), 6);
    }

    #[test]
    fn a_label_set_is_encoded_once_for_the_most_recently_started_identity() {
        let view = |id: &str, started: Option<i64>| IdentityView {
            container_id: id.into(),
            last_start_nanos: started.map(UnixNanos::from_nanos),
            ..test_view("", "", "", "web")
        };
        // Two plain containers whose names meet (a rename in flight), and a third apart.
        let views = [
            view("new", Some(20)),
            view("old", Some(10)),
            view("never", None),
            IdentityView {
                container: "db".into(),
                ..view("db", Some(5))
            },
        ];
        let base: Vec<Labels> = views
            .iter()
            .map(|v| base_labels("n", "docker", v, None))
            .collect();
        let (keep, dropped) = unique_label_sets(&views, &base);
        assert_eq!(keep, [true, false, false, true]);
        assert_eq!(dropped, 2);
        // The order of the snapshot does not decide which one stays.
        let rev: Vec<IdentityView> = views.iter().rev().cloned().collect();
        let base: Vec<Labels> = rev
            .iter()
            .map(|v| base_labels("n", "docker", v, None))
            .collect();
        let (keep, dropped) = unique_label_sets(&rev, &base);
        assert_eq!(keep, [true, false, false, true]);
        assert_eq!(dropped, 2);
        // A pod re-created under its name differs by `uid`: both stay.
        let pods = [
            test_view("shop", "web-0", "u1", "web"),
            test_view("shop", "web-0", "u2", "web"),
        ];
        let base: Vec<Labels> = pods
            .iter()
            .map(|v| base_labels("n", "docker", v, None))
            .collect();
        assert_eq!(unique_label_sets(&pods, &base), (vec![true, true], 0));
    }

    #[test]
    fn kube_container_ids_take_the_pod_status_form() {
        assert_eq!(kube_container_id("docker", "f83a"), "docker://f83a");
        assert_eq!(kube_container_id("containerd", "f83a"), "containerd://f83a");
        assert_eq!(kube_container_id("crio", "f83a"), "cri-o://f83a");
        assert_eq!(kube_container_id("docker", ""), "");
    }

    fn test_view(namespace: &str, pod: &str, uid: &str, container: &str) -> IdentityView {
        crate::fixtures::identity_view(namespace, pod, uid, container)
    }
}
