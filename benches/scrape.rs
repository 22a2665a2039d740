//! `/metrics` encoding at 100, 1 000 and 10 000 tracked pod containers with two allowlisted
//! pod annotations each, and history queries over 100 000 stored events.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lifecycle_agent::agent::new_state;
use lifecycle_agent::api;
use lifecycle_agent::config::{Config, RunArgs};
use lifecycle_agent::event::{
    ContainerLabels, EventKind, PodRef, RuntimeEvent, SourceEvent, Subject,
};
use lifecycle_agent::history::query::{parse_types, EventQuery};
use lifecycle_agent::kube::pods::{PodIndex, PodMeta};
use lifecycle_agent::kube::KubeState;
use lifecycle_agent::state::{State, StateReader};
use lifecycle_agent::time::{Nanos, UnixNanos};

const T0: UnixNanos = UnixNanos::from_nanos(1_700_000_000_000_000_000);
const STEP: Nanos = Nanos::from_nanos(1_000);

fn shared(max_history: usize) -> (State, Arc<KubeState>, Config) {
    let config = Config::resolve(RunArgs {
        ephemeral: Some(true),
        max_history: Some(max_history),
        node_name: Some("node-1".into()),
        pod_annotations_allowlist: Some(vec!["team".into(), "example.com/owner".into()]),
        ..Default::default()
    })
    .expect("config");
    let kube = Arc::new(KubeState::new(&config.pod_metadata));
    (new_state(&config), kube, config)
}

/// The pods of `n` containers, each with the two allowlisted annotations and one that is not.
fn pods(kube: &KubeState, config: &Config, n: usize) {
    let mut idx = PodIndex::default();
    for i in 0..n {
        let annotations: BTreeMap<String, String> = [
            ("team".to_string(), format!("team-{}", i % 50)),
            (
                "example.com/owner".to_string(),
                format!("owner-{}@example.com", i % 200),
            ),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "{}".repeat(100),
            ),
        ]
        .into();
        if let Some(p) = PodMeta::from_metadata(
            Some(&format!("team-{}", i % 50)),
            Some(&format!("shop-{i}-7d9f8b6c5d-x2x4z")),
            Some(&format!("uid-{i}")),
            Some(&annotations),
            None,
            &config.pod_metadata,
        ) {
            idx.upsert(p);
        }
    }
    kube.replace_pods(idx);
}

fn pod_event(i: usize, t: UnixNanos, kind: EventKind) -> RuntimeEvent {
    RuntimeEvent {
        time_nanos: t,
        kind,
        action: kind.as_str().to_string(),
        subject: Arc::new(Subject {
            container_id: format!("{i:064x}"),
            name: format!("k8s_web_shop-{i}_default_uid-{i}_0"),
            image: "registry.example.com/shop/web:1.2.3".into(),
            labels: ContainerLabels {
                pod: Some(PodRef {
                    namespace: format!("team-{}", i % 50),
                    pod: format!("shop-{i}-7d9f8b6c5d-x2x4z"),
                    uid: format!("uid-{i}"),
                    container: "web".into(),
                }),
                k8s_restart_count: Some(0),
                sandbox: false,
            },
        }),
        exit_code: (kind == EventKind::Died).then_some(1),
        health: None,
    }
}

/// `n` running pod containers, each restarted once (so every family has a series).
fn populated(n: usize, history: usize) -> (StateReader, Arc<KubeState>) {
    let (s, kube, config) = shared(history.max(1));
    pods(&kube, &config, n);
    let reader = s.reader();
    let mut at = T0;
    for i in 0..n {
        s.ingest(
            [
                EventKind::Created,
                EventKind::Started,
                EventKind::Died,
                EventKind::Started,
            ]
            .map(|kind| {
                at += STEP;
                SourceEvent::Lifecycle(pod_event(i, at, kind))
            }),
        );
    }
    // Fill the history to `history` events with pause/unpause churn.
    let mut i = 0;
    while reader.tracker().history().len() < history {
        let missing = history - reader.tracker().history().len();
        s.ingest((0..missing).map(|_| {
            at += STEP;
            let kind = if (i / n.max(1)) % 2 == 0 {
                EventKind::Paused
            } else {
                EventKind::Unpaused
            };
            let ev = pod_event(i % n.max(1), at, kind);
            i += 1;
            SourceEvent::Lifecycle(ev)
        }));
    }
    (reader, kube)
}

/// What `/metrics` encodes into: a 64 KiB chunk handed to the response body when full (here
/// dropped), never the whole body.
#[derive(Default)]
struct Chunks {
    buf: String,
    total: usize,
}

impl std::fmt::Write for Chunks {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= 64 * 1024 {
            self.total += self.buf.len();
            self.buf.clear();
        }
        Ok(())
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics_encode");
    g.sample_size(20);
    // The last case is 1 000 containers again with a full history: encoding must not depend
    // on it.
    for (n, history) in [(100usize, 0), (1_000, 0), (10_000, 0), (1_000, 100_000)] {
        let (s, kube) = populated(n, history);
        let registry = api::registry(&s, &kube, &Default::default());
        let mut probe = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut probe, &registry)
            .expect("encode");
        assert!(
            probe.contains("annotation_example_com_owner=\"owner-"),
            "the join is benchmarked"
        );
        let id = match history {
            0 => BenchmarkId::from_parameter(n),
            h => BenchmarkId::new(format!("{n}_with_history"), h),
        };
        g.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let mut out = Chunks::default();
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
                    .expect("encode");
                out.total
            })
        });
    }
    g.finish();
}

fn query(c: &mut Criterion) {
    let (s, _) = populated(1_000, 100_000);
    let t = s.tracker();
    assert_eq!(t.history().len(), 100_000);
    let newest = t
        .history()
        .iter()
        .last()
        .map(|e| e.time_nanos)
        .unwrap_or(T0);
    let mut g = c.benchmark_group("history_query_100k");
    let cases = [
        (
            "by_container",
            EventQuery {
                container: Some("k8s_web_shop-17_default_uid-17_0".into()),
                ..Default::default()
            },
        ),
        (
            "by_type",
            EventQuery {
                types: Some(parse_types("died").expect("type")),
                ..Default::default()
            },
        ),
        (
            "by_time_window",
            EventQuery {
                since: Some(newest - Nanos::from_millis(50)),
                until: Some(newest - Nanos::from_millis(40)),
                ..Default::default()
            },
        ),
        (
            "by_namespace_and_type",
            EventQuery {
                namespace: Some("team-7".into()),
                types: Some(parse_types("paused").expect("type")),
                ..Default::default()
            },
        ),
    ];
    for (name, q) in cases {
        g.bench_function(name, |b| b.iter(|| t.history().query(&q)));
    }
    g.finish();
}

criterion_group!(benches, encode, query);
criterion_main!(benches);
