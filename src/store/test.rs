use super::*;
use crate::event::{RuntimeEvent, RuntimeKind};
use crate::fixtures::EventBuilder;
use crate::time::UnixNanos;
use crate::tracker::Tracker;

const S: i64 = 1_000_000_000;

/// Times here are written as bare nanoseconds (`5 * S`), made typed where they enter the
/// tracker.
fn at(t: i64) -> UnixNanos {
    UnixNanos::from_nanos(t)
}

fn tracker(max: usize) -> Tracker {
    let mut t = crate::fixtures::tracker("n", max);
    t.enable_journal();
    t
}

fn ev(t: i64, id: &str, kind: EventKind) -> RuntimeEvent {
    let e = EventBuilder::new(kind, id)
        .at(at(t))
        .action(kind.as_str())
        .name(id);
    match kind {
        EventKind::Died => e.exit_code(1).build(),
        _ => e.build(),
    }
}

fn churn(t: &mut Tracker, id: &str, from: i64, restarts: i64) {
    t.apply(&ev(from, id, EventKind::Created), at(from));
    t.apply(&ev(from + 1, id, EventKind::Started), at(from));
    for i in 0..restarts {
        let t0 = from + (i + 1) * S;
        t.apply(&ev(t0, id, EventKind::Died), at(t0));
        t.apply(&ev(t0 + 1, id, EventKind::Started), at(t0));
    }
}

fn flush(t: &mut Tracker, store: &Store) {
    if let Some(d) = t.take_delta() {
        store.write(&d).unwrap();
    }
}

fn reopen(dir: &Path, max: usize) -> (Store, Tracker, Option<String>) {
    let opened = Store::open(dir, max).unwrap();
    let mut t = tracker(max);
    if let Some(saved) = opened.saved {
        t.restore(saved);
    }
    (opened.store, t, opened.recovered)
}

#[test]
fn state_and_history_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut t, recovered) = reopen(dir.path(), 100);
    assert!(recovered.is_none());
    churn(&mut t, "a", S, 3);
    churn(&mut t, "b", 100 * S, 1);
    flush(&mut t, &store);
    let before = (
        t.identities(at(200 * S)),
        t.history().iter().cloned().collect::<Vec<_>>(),
        t.meta(),
    );
    drop(store);

    let (store, mut t2, recovered) = reopen(dir.path(), 100);
    assert!(recovered.is_none());
    let mut a = before.0.clone();
    let mut b = t2.identities(at(200 * S));
    a.sort_by(|x, y| x.container.cmp(&y.container));
    b.sort_by(|x, y| x.container.cmp(&y.container));
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        serde_json::to_value(&b).unwrap()
    );
    assert_eq!(t2.history().iter().cloned().collect::<Vec<_>>(), before.1);
    let of_a: Vec<_> = t2
        .history()
        .iter()
        .filter(|e| &*e.subject.container_id == "a")
        .collect();
    assert!(of_a.len() > 1);
    assert!(
        of_a.iter()
            .all(|e| std::sync::Arc::ptr_eq(&e.subject, &of_a[0].subject)),
        "loaded events of one container share one subject"
    );
    assert_eq!(t2.meta(), before.2);
    // The cursor's own event comes back in an inclusive replay: a duplicate, not a recount;
    // so does any older event a stream delivers again.
    let last = ev(100 * S + S + 1, "b", EventKind::Started);
    assert_eq!(
        t2.apply(&last, at(300 * S)),
        crate::tracker::Applied::Duplicate
    );
    for old in [
        ev(S, "a", EventKind::Created),
        ev(2 * S, "a", EventKind::Died),
    ] {
        assert_eq!(
            t2.apply(&old, at(300 * S)),
            crate::tracker::Applied::Duplicate
        );
    }
    // New events continue the sequence and the counters.
    t2.apply(&ev(150 * S, "a", EventKind::Died), at(150 * S));
    t2.apply(&ev(151 * S, "a", EventKind::Started), at(151 * S));
    flush(&mut t2, &store);
    let r: u64 = t2.identities(at(200 * S)).iter().map(|v| v.restarts).sum();
    assert_eq!(r, 5);
    let seqs: Vec<u64> = t2.history().iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn removed_containers_and_evicted_events_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut t, _) = reopen(dir.path(), 5);
    churn(&mut t, "a", S, 3);
    t.apply(&ev(50 * S, "a", EventKind::Destroyed), at(50 * S));
    t.history_mut().clear_before(at(50 * S));
    flush(&mut t, &store);
    drop(store);
    let (_, t2, _) = reopen(dir.path(), 5);
    assert!(t2.identities(at(60 * S)).is_empty());
    assert_eq!(t2.node_counts().restarts_total, 3);
    let kinds: Vec<_> = t2.history().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Destroyed]);
}

#[test]
fn a_lowered_max_history_applies_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut t, _) = reopen(dir.path(), 100);
    churn(&mut t, "a", S, 10);
    flush(&mut t, &store);
    drop(store);
    let (_, t2, _) = reopen(dir.path(), 4);
    assert_eq!(t2.history().len(), 4);
    assert_eq!(t2.history().iter().last().map(|e| e.seq), Some(22));
}

#[test]
fn garbage_and_truncated_files_are_moved_aside() {
    for damage in ["garbage", "truncate"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let (store, mut t, _) = reopen(dir.path(), 100);
            churn(&mut t, "a", S, 2);
            flush(&mut t, &store);
        }
        match damage {
            "garbage" => std::fs::write(&path, b"this is not a database at all, sorry").unwrap(),
            _ => {
                let len = std::fs::metadata(&path).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(len / 3).unwrap();
            }
        }
        let (store, t, recovered) = reopen(dir.path(), 100);
        let msg = recovered.unwrap_or_else(|| panic!("{damage}: not reported"));
        assert!(msg.contains("moved it to"), "{msg}");
        assert!(t.identities(UnixNanos::default()).is_empty());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".bad-"))
            .collect();
        assert_eq!(kept.len(), 1, "{damage}: the old file is kept aside");
        // The fresh store works.
        let mut t = tracker(100);
        churn(&mut t, "b", S, 1);
        flush(&mut t, &store);
    }
}

#[test]
fn another_format_version_is_rebuilt_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, mut t, _) = reopen(dir.path(), 100);
        churn(&mut t, "a", S, 2);
        flush(&mut t, &store);
        let db = store.db.lock();
        let tx = db.as_ref().unwrap().begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(KEY_VERSION, 0u32.to_le_bytes().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let (_, t, recovered) = reopen(dir.path(), 100);
    assert!(recovered.unwrap().contains("format version 0"));
    assert!(t.identities(UnixNanos::default()).is_empty());
}

#[test]
fn a_store_in_use_is_an_error_not_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), 10).unwrap();
    match Store::open(dir.path(), 10) {
        Err(StoreError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
}

#[test]
fn the_runtime_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut t, _) = reopen(dir.path(), 100);
    assert_eq!(
        t.runtime(),
        RuntimeKind::Docker,
        "what a fresh tracker starts with"
    );
    t.set_runtime(RuntimeKind::Podman);
    churn(&mut t, "a", S, 1);
    flush(&mut t, &store);
    drop(store);
    let (_, t, recovered) = reopen(dir.path(), 100);
    assert!(recovered.is_none());
    assert_eq!(
        t.runtime(),
        RuntimeKind::Podman,
        "restored records are labelled with their runtime before it answers"
    );
}
