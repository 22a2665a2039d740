//! Event ingestion: normalized events into the tracker and history, in memory and with the
//! durable store on (every event committed to disk through group commits).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;

use lifecycle_agent::event::{ContainerLabels, EventKind, RuntimeEvent, RuntimeKind, Subject};
use lifecycle_agent::history::HistoryLimits;
use lifecycle_agent::store::Store;
use lifecycle_agent::time::UnixNanos;
use lifecycle_agent::tracker::Tracker;

const CONTAINERS: usize = 1_000;
const EVENTS: usize = 100_000;
/// Events per group commit in the durable run (the agent commits every 100 ms; at 200 000
/// events/s that is 20 000 events, so this is the harder case).
const COMMIT_EVERY: usize = 4_096;

/// A realistic mix: each container cycles start, die, kill, start ... with exit codes.
fn events() -> Vec<RuntimeEvent> {
    let kinds = [
        EventKind::Started,
        EventKind::Killed,
        EventKind::Died,
        EventKind::Stopped,
    ];
    // One shared subject per container, as the reading task's cache hands them over.
    let subjects: Vec<Arc<Subject>> = (0..CONTAINERS)
        .map(|c| {
            Arc::new(Subject {
                container_id: format!("{c:064x}"),
                name: format!("web-{c}"),
                image: "registry.example.com/shop/web:1.2.3".into(),
                labels: ContainerLabels::default(),
            })
        })
        .collect();
    (0..EVENTS)
        .map(|i| {
            let c = i % CONTAINERS;
            let kind = kinds[(i / CONTAINERS) % kinds.len()];
            RuntimeEvent {
                time_nanos: UnixNanos::from_nanos(1_700_000_000_000_000_000 + i as i64 * 1_000),
                kind,
                action: kind.as_str().to_string(),
                subject: subjects[c].clone(),
                exit_code: (kind == EventKind::Died).then_some(137),
                health: None,
            }
        })
        .collect()
}

fn tracker() -> Tracker {
    Tracker::new(
        "node-1".into(),
        RuntimeKind::Docker,
        HistoryLimits {
            max_events: EVENTS,
            retention: None,
        },
    )
}

fn ingest(c: &mut Criterion) {
    let evs = events();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.bench_function("memory", |b| {
        b.iter_batched(
            tracker,
            |mut t| {
                for e in &evs {
                    t.apply(e, e.time_nanos);
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("durable", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Store::open(dir.path(), EVENTS).expect("store").store;
                let mut t = tracker();
                t.enable_journal();
                (dir, store, t)
            },
            |(dir, store, mut t)| {
                for chunk in evs.chunks(COMMIT_EVERY) {
                    for e in chunk {
                        t.apply(e, e.time_nanos);
                    }
                    if let Some(d) = t.take_delta() {
                        store.write(&d).expect("write");
                    }
                }
                (dir, store, t)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
