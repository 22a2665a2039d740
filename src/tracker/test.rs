use super::view::IdentityView;
use super::*;
use crate::event::snapshot::{ContainerSnapshot, SnapshotState};
use crate::event::ContainerLabels;
use crate::fixtures::{self, EventBuilder, SnapshotBuilder};

const S: i64 = crate::time::NANOS_PER_SEC;

/// Times here are written as bare nanoseconds (`5 * S`), made typed where they enter the
/// tracker.
fn at(t: i64) -> UnixNanos {
    UnixNanos::from_nanos(t)
}

fn tracker() -> Tracker {
    crate::fixtures::tracker("node-1", 1000)
}

fn ev(t: i64, id: &str, action: &str, kind: EventKind) -> RuntimeEvent {
    EventBuilder::new(kind, id).at(at(t)).action(action).build()
}

fn die(t: i64, id: &str, code: i64) -> RuntimeEvent {
    EventBuilder::new(EventKind::Died, id)
        .at(at(t))
        .exit_code(code)
        .build()
}

fn pod_labels(attempt: Option<u64>) -> ContainerLabels {
    fixtures::pod_labels("shop", "web-1", "uid-1", "nginx", attempt)
}

/// The event as the kubelet's container with attempt ordinal `attempt` of one pod.
fn in_pod(mut e: RuntimeEvent, attempt: u64) -> RuntimeEvent {
    e.subject_mut().labels = pod_labels(Some(attempt));
    e
}

fn snapshot(
    id: &str,
    state: SnapshotState,
    started: Option<i64>,
    finished: Option<i64>,
) -> SnapshotBuilder {
    SnapshotBuilder::new(id, state)
        .started(started.map(at))
        .finished(finished.map(at))
}

fn snap(
    id: &str,
    state: SnapshotState,
    started: Option<i64>,
    finished: Option<i64>,
) -> ContainerSnapshot {
    snapshot(id, state, started, finished).build()
}

fn apply_all(t: &mut Tracker, events: &[RuntimeEvent]) {
    for e in events {
        t.apply(e, e.time_nanos);
    }
}

fn only(t: &Tracker, now: i64) -> IdentityView {
    let v = t.identities(at(now));
    assert_eq!(v.len(), 1, "{v:?}");
    v.into_iter().next().unwrap()
}

fn run(t: &mut Tracker, id: &str) {
    apply_all(
        t,
        &[
            ev(S, id, "create", EventKind::Created),
            ev(2 * S, id, "start", EventKind::Started),
        ],
    );
}

#[test]
fn docker_restart_counts_once() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            ev(10 * S, "a", "kill", EventKind::Killed),
            ev(10 * S + 1, "a", "kill", EventKind::Killed),
            die(10 * S + 2, "a", 143),
            ev(10 * S + 3, "a", "stop", EventKind::Stopped),
            ev(10 * S + 4, "a", "start", EventKind::Started),
            ev(10 * S + 5, "a", "restart", EventKind::Restarted),
        ],
    );
    let v = only(&t, 11 * S);
    assert_eq!(v.restarts, 1);
    assert_eq!(v.last_exit_code, Some(143));
    assert_eq!(v.last_terminated_reason, Some(TerminationReason::Killed));
    assert_eq!(t.node_counts().restarts_total, 1);
}

#[test]
fn podman_restart_with_restart_first_counts_once() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            ev(10 * S, "a", "restart", EventKind::Restarted),
            ev(10 * S + 1, "a", "stop", EventKind::Stopped),
            die(10 * S + 2, "a", 0),
            ev(10 * S + 4, "a", "start", EventKind::Started),
        ],
    );
    assert_eq!(only(&t, 11 * S).restarts, 1);
}

#[test]
fn stop_start_counts_one_and_pause_counts_none() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            ev(3 * S, "a", "pause", EventKind::Paused),
            ev(4 * S, "a", "unpause", EventKind::Unpaused),
        ],
    );
    assert_eq!(only(&t, 5 * S).restarts, 0);
    apply_all(
        &mut t,
        &[
            die(6 * S, "a", 0),
            ev(7 * S, "a", "start", EventKind::Started),
        ],
    );
    let v = only(&t, 8 * S);
    assert_eq!(v.restarts, 1);
    assert_eq!(v.last_terminated_reason, Some(TerminationReason::Completed));
}

#[test]
fn restart_policy_counts_each_start_after_the_first() {
    let mut t = tracker();
    run(&mut t, "a");
    for i in 0..3 {
        let base = (10 + 10 * i) * S;
        apply_all(
            &mut t,
            &[
                die(base, "a", 3),
                ev(base + S, "a", "start", EventKind::Started),
            ],
        );
    }
    apply_all(&mut t, &[die(50 * S, "a", 3)]);
    let v = only(&t, 60 * S);
    assert_eq!(v.restarts, 3);
    assert_eq!(v.last_exit_code, Some(3));
    assert_eq!(v.last_terminated_reason, Some(TerminationReason::Error));
    assert_eq!(t.restarts_last_hour(at(60 * S)), 3);
}

#[test]
fn replayed_events_count_once() {
    let mut t = tracker();
    let events = [
        ev(S, "a", "create", EventKind::Created),
        ev(2 * S, "a", "start", EventKind::Started),
        die(3 * S, "a", 1),
        ev(4 * S, "a", "start", EventKind::Started),
    ];
    apply_all(&mut t, &events);
    for e in &events {
        assert_eq!(t.apply(e, at(5 * S)), Applied::Duplicate);
    }
    assert_eq!(only(&t, 5 * S).restarts, 1);
    assert_eq!(t.history().len(), 4);
    assert_eq!(t.cursor(), Some(at(4 * S)));
}

#[test]
fn snapshot_overlapping_live_events_counts_once() {
    let mut t = tracker();
    t.reconcile(
        &[snap("a", SnapshotState::Running, Some(2 * S), None)],
        true,
        at(3 * S),
    );
    // Unseen: died and started again; the snapshot shows the new session first.
    let r = t.reconcile(
        &[snap("a", SnapshotState::Running, Some(10 * S), Some(9 * S))],
        true,
        at(11 * S),
    );
    assert_eq!(r.inferred_restarts, 1);
    // The same transitions then arrive on the stream: no state change, no recount.
    apply_all(
        &mut t,
        &[
            die(9 * S + 1, "a", 0),
            ev(10 * S + 1, "a", "start", EventKind::Started),
        ],
    );
    let v = only(&t, 12 * S);
    assert_eq!(v.restarts, 1);
    assert!(v.running);
    // Uptime: 2s..9s closed, then 10s..12s running.
    assert!(
        (v.uptime_seconds - 9.0).abs() < 1e-6,
        "{}",
        v.uptime_seconds
    );
}

#[test]
fn first_sight_starts_from_the_runtime_lower_bound() {
    let mut t = tracker();
    let s = snapshot("a", SnapshotState::Running, Some(2 * S), None)
        .restart_count(4)
        .build();
    t.reconcile(&[s], true, at(3 * S));
    assert_eq!(only(&t, 3 * S).restarts, 4);
    let k = snapshot("k", SnapshotState::Running, Some(2 * S), None)
        .labels(pod_labels(Some(7)))
        .build();
    let mut t = tracker();
    t.reconcile(&[k], true, at(3 * S));
    assert_eq!(only(&t, 3 * S).restarts, 7);
    assert_eq!(t.node_counts().restarts_total, 7);
    assert!(t.history().is_empty(), "inferred restarts are not history");
}

#[test]
fn kubelet_replacement_is_one_restart_of_the_same_identity() {
    let mut t = tracker();
    apply_all(
        &mut t,
        &[
            in_pod(ev(S, "a", "create", EventKind::Created), 0),
            in_pod(ev(2 * S, "a", "start", EventKind::Started), 0),
            in_pod(die(3 * S, "a", 1), 0),
            in_pod(ev(4 * S, "b", "create", EventKind::Created), 1),
            in_pod(ev(5 * S, "b", "start", EventKind::Started), 1),
            in_pod(ev(6 * S, "a", "destroy", EventKind::Destroyed), 0),
        ],
    );
    let v = only(&t, 7 * S);
    assert_eq!(
        (v.namespace.as_str(), v.pod.as_str(), v.container.as_str()),
        ("shop", "web-1", "nginx")
    );
    assert_eq!(v.restarts, 1);
    assert_eq!(v.container_ids, vec!["b".to_string()]);
    // A jump of the kubelet ordinal from 1 to 4: attempts 2 and 3 happened unseen.
    apply_all(
        &mut t,
        &[
            in_pod(die(8 * S, "b", 1), 1),
            in_pod(ev(9 * S, "c", "create", EventKind::Created), 4),
            in_pod(ev(10 * S, "c", "start", EventKind::Started), 4),
        ],
    );
    assert_eq!(only(&t, 11 * S).restarts, 4);
    apply_all(
        &mut t,
        &[
            in_pod(ev(12 * S, "b", "destroy", EventKind::Destroyed), 1),
            in_pod(ev(13 * S, "c", "destroy", EventKind::Destroyed), 4),
        ],
    );
    assert!(t.identities(at(14 * S)).is_empty());
    assert_eq!(t.node_counts().restarts_total, 4);
}

#[test]
fn oom_counts_once_with_its_reason() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            ev(3 * S, "a", "oom", EventKind::Oom),
            die(3 * S + 1, "a", 137),
        ],
    );
    let v = only(&t, 4 * S);
    assert_eq!(v.oom_kills, 1);
    assert_eq!(v.last_exit_code, Some(137));
    assert_eq!(v.last_terminated_reason, Some(TerminationReason::OomKilled));
    // A reconciliation showing the same OOM does not count it again.
    let s = snapshot("a", SnapshotState::Exited, Some(2 * S), Some(3 * S + 1))
        .oom_killed()
        .exit_code(137)
        .build();
    t.reconcile(&[s], true, at(5 * S));
    assert_eq!(only(&t, 5 * S).oom_kills, 1);
}

#[test]
fn repeated_health_reports_are_not_events() {
    let mut t = tracker();
    run(&mut t, "a");
    let health = |t, h| {
        EventBuilder::new(EventKind::HealthStatus, "a")
            .at(at(t))
            .health(h)
            .build()
    };
    assert_eq!(
        t.apply(&health(3 * S, Health::Healthy), at(3 * S)),
        Applied::Recorded
    );
    assert_eq!(
        t.apply(&health(4 * S, Health::Healthy), at(4 * S)),
        Applied::Unchanged
    );
    assert_eq!(
        t.apply(&health(5 * S, Health::Unhealthy), at(5 * S)),
        Applied::Recorded
    );
    let v = only(&t, 6 * S);
    assert_eq!(v.health, Some(Health::Unhealthy));
    assert_eq!(v.events[EventKind::HealthStatus.index()], 2);
}

#[test]
fn uptime_spans_sessions_and_time_since_start_only_while_running() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(&mut t, &[die(12 * S, "a", 0)]);
    let v = only(&t, 15 * S);
    assert!((v.uptime_seconds - 10.0).abs() < 1e-6);
    assert_eq!(v.time_since_start_seconds, None);
    apply_all(&mut t, &[ev(20 * S, "a", "start", EventKind::Started)]);
    let v = only(&t, 25 * S);
    assert!((v.uptime_seconds - 15.0).abs() < 1e-6);
    assert_eq!(v.time_since_start_seconds, Some(5.0));
}

#[test]
fn removed_containers_are_forgotten_but_node_restarts_remain() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            die(3 * S, "a", 0),
            ev(4 * S, "a", "start", EventKind::Started),
        ],
    );
    let r = t.reconcile(&[], true, at(5 * S));
    assert_eq!(r.removed, 1);
    assert!(t.identities(at(5 * S)).is_empty());
    let n = t.node_counts();
    assert_eq!((n.tracked, n.restarts_total), (0, 1));
}

#[test]
fn sandboxes_are_not_tracked() {
    let mut t = tracker();
    let mut e = ev(S, "p", "start", EventKind::Started);
    e.subject_mut().labels.sandbox = true;
    assert_eq!(t.apply(&e, at(S)), Applied::Ignored);
    assert!(t.identities(at(S)).is_empty());
    // Hidden from every series, but counted.
    assert_eq!(t.node_counts().sandboxes, 1);
    assert_eq!(t.node_counts().tracked, 0);
    let mut gone = ev(2 * S, "p", "destroy", EventKind::Destroyed);
    gone.subject_mut().labels.sandbox = true;
    t.apply(&gone, at(2 * S));
    assert_eq!(t.node_counts().sandboxes, 0);
    // A reconciliation counts what the runtime lists.
    let mut s = snap("q", SnapshotState::Running, Some(S), None);
    s.labels.sandbox = true;
    t.reconcile(
        &[s, snap("a", SnapshotState::Running, Some(S), None)],
        true,
        at(3 * S),
    );
    assert_eq!(t.node_counts().sandboxes, 1);
    assert_eq!(t.node_counts().tracked, 1);
}

#[test]
fn restart_policy_restarts_seen_only_by_reconciliation_use_restart_count() {
    let mut t = tracker();
    t.reconcile(
        &[snap("a", SnapshotState::Running, Some(2 * S), None)],
        true,
        at(3 * S),
    );
    let s = snapshot("a", SnapshotState::Running, Some(20 * S), Some(19 * S))
        .restart_count(3)
        .build();
    let r = t.reconcile(&[s], true, at(21 * S));
    assert_eq!(r.inferred_restarts, 3);
    assert_eq!(only(&t, 21 * S).restarts, 3);
}

#[test]
fn an_oom_event_after_its_die_still_names_the_reason() {
    let mut t = tracker();
    run(&mut t, "a");
    apply_all(
        &mut t,
        &[
            die(3 * S, "a", 137),
            ev(3 * S + 1, "a", "oom", EventKind::Oom),
        ],
    );
    let v = only(&t, 4 * S);
    assert_eq!(v.oom_kills, 1);
    assert_eq!(v.last_terminated_reason, Some(TerminationReason::OomKilled));
}

#[test]
fn a_container_docker_is_restarting_counts_its_pending_restart_once() {
    // Docker raises RestartCount before the back-off, then emits `start` when it restarts.
    let mut t = tracker();
    let s = snapshot("a", SnapshotState::Restarting, Some(2 * S), Some(3 * S))
        .restart_count(3)
        .build();
    t.reconcile(&[s], true, at(4 * S));
    assert_eq!(
        only(&t, 4 * S).restarts,
        2,
        "the restart Docker scheduled counts when it starts, as for a known container"
    );
    apply_all(&mut t, &[ev(5 * S, "a", "start", EventKind::Started)]);
    assert_eq!(only(&t, 6 * S).restarts, 3, "RestartCount after the start");
    apply_all(
        &mut t,
        &[
            die(7 * S, "a", 1),
            ev(8 * S, "a", "start", EventKind::Started),
        ],
    );
    assert_eq!(only(&t, 9 * S).restarts, 4);
    assert_eq!(t.node_counts().restarts_total, 4);
}

#[test]
fn a_kubelet_container_not_started_yet_counts_its_ordinal_once_in_any_order() {
    // Attempt 2 is created, attempt 1 has exited: kubectl says 2 restarts, in either order.
    let created = |labels| {
        snapshot("b", SnapshotState::Created, None, None)
            .labels(labels)
            .build()
    };
    let exited = |labels| {
        snapshot("a", SnapshotState::Exited, Some(S), Some(2 * S))
            .labels(labels)
            .build()
    };
    for order in [[0, 1], [1, 0]] {
        let both = [created(pod_labels(Some(2))), exited(pod_labels(Some(1)))];
        let snaps: Vec<_> = order.iter().map(|&i| both[i].clone()).collect();
        let mut t = tracker();
        t.reconcile(&snaps, true, at(3 * S));
        assert_eq!(
            only(&t, 3 * S).restarts,
            1,
            "the start of attempt 2 counts when seen; order {order:?}"
        );
        let start = EventBuilder::new(EventKind::Started, "b")
            .at(at(4 * S))
            .labels(pod_labels(Some(2)))
            .build();
        t.apply(&start, at(4 * S));
        assert_eq!(only(&t, 5 * S).restarts, 2, "order {order:?}");
        assert_eq!(t.node_counts().restarts_total, 2, "order {order:?}");
    }
}

#[test]
fn first_sight_through_an_event_counts_the_ordinal_once() {
    // Met at its start: the ordinal includes that start.
    let mut t = tracker();
    apply_all(
        &mut t,
        &[in_pod(ev(S, "a", "start", EventKind::Started), 3)],
    );
    assert_eq!(only(&t, 2 * S).restarts, 3);
    // Met at its create: the ordinal is the lower bound there too.
    let mut t = tracker();
    apply_all(
        &mut t,
        &[
            in_pod(ev(S, "a", "create", EventKind::Created), 3),
            in_pod(ev(2 * S, "a", "start", EventKind::Started), 3),
        ],
    );
    assert_eq!(only(&t, 3 * S).restarts, 3);
    assert_eq!(t.inferred_restarts(), 2, "the start itself was seen");
    // Met at the death of attempt 0: the next attempt's start is a restart.
    let mut t = tracker();
    apply_all(
        &mut t,
        &[
            in_pod(die(S, "a", 1), 0),
            in_pod(ev(2 * S, "b", "create", EventKind::Created), 1),
            in_pod(ev(3 * S, "b", "start", EventKind::Started), 1),
        ],
    );
    assert_eq!(only(&t, 4 * S).restarts, 1);
    assert_eq!(t.restarts_last_hour(at(4 * S)), 1);
}

#[test]
fn attempts_skipped_unseen_count_as_recent_inferred_restarts() {
    let mut t = tracker();
    apply_all(
        &mut t,
        &[
            in_pod(ev(S, "a", "create", EventKind::Created), 0),
            in_pod(ev(2 * S, "a", "start", EventKind::Started), 0),
            in_pod(die(3 * S, "a", 1), 0),
            // Attempts 1 and 2 came and went while nothing was seen; attempt 3 starts.
            in_pod(ev(10 * S, "d", "create", EventKind::Created), 3),
            in_pod(ev(11 * S, "d", "start", EventKind::Started), 3),
        ],
    );
    assert_eq!(only(&t, 12 * S).restarts, 3);
    assert_eq!(t.inferred_restarts(), 2);
    assert_eq!(
        t.restarts_last_hour(at(12 * S)),
        3,
        "the unseen restarts are recent"
    );
    assert_eq!(t.node_counts().restarts_total, 3);
}

/// Every look-up waiting, in order.
fn lookups(t: &mut Tracker) -> Vec<Lookup> {
    std::iter::from_fn(|| t.next_lookup()).collect()
}

fn rename(t: i64, id: &str, name: &str) -> Rename {
    Rename {
        time_nanos: at(t),
        container_id: id.into(),
        name: name.into(),
    }
}

#[test]
fn a_container_met_through_an_event_is_looked_up_once_and_takes_its_image_id() {
    let mut t = tracker();
    run(&mut t, "a");
    let asked = lookups(&mut t);
    assert_eq!(
        asked,
        vec![Lookup {
            container_id: "a".into(),
            name: "name-a".into(),
        }]
    );
    assert!(lookups(&mut t).is_empty(), "asked for once");
    assert_eq!(only(&t, 3 * S).image_id, "");
    let answer = snap("a", SnapshotState::Running, Some(2 * S), None);
    assert!(t.needs_lookup("a"));
    assert!(t.enrich(&asked[0], &answer));
    assert!(!t.needs_lookup("a"));
    assert!(
        !t.enrich(&asked[0], &answer),
        "a second answer changes nothing"
    );
    let v = only(&t, 3 * S);
    assert_eq!(
        (v.image_id.as_str(), v.name.as_str()),
        ("sha256:1", "name-a")
    );
    // Later events of a known container ask for nothing.
    apply_all(&mut t, &[die(4 * S, "a", 0)]);
    assert!(lookups(&mut t).is_empty());
}

#[test]
fn containers_from_a_snapshot_or_already_gone_are_not_looked_up() {
    let mut t = tracker();
    t.reconcile(
        &[snap("a", SnapshotState::Running, Some(S), None)],
        true,
        at(2 * S),
    );
    apply_all(&mut t, &[die(3 * S, "a", 0)]);
    run(&mut t, "b");
    apply_all(&mut t, &[ev(4 * S, "b", "destroy", EventKind::Destroyed)]);
    assert!(lookups(&mut t).is_empty());
    assert!(!t.needs_lookup("b"));
    let asked = Lookup {
        container_id: "b".into(),
        name: "name-b".into(),
    };
    let answer = snap("b", SnapshotState::Exited, Some(S), Some(2 * S));
    assert!(!t.enrich(&asked, &answer), "a gone container is skipped");
}

#[test]
fn a_rename_changes_the_name_but_not_the_history_or_the_counters() {
    let mut t = tracker();
    t.enable_journal();
    run(&mut t, "a");
    t.take_delta();
    let before = only(&t, 3 * S);
    let history = t.history().len();
    let cursor = t.cursor();
    assert!(t.rename(&rename(3 * S, "a", "web-2")));
    let v = only(&t, 3 * S);
    assert_eq!((v.name.as_str(), v.container.as_str()), ("web-2", "web-2"));
    assert_eq!((v.events, v.restarts), (before.events, before.restarts));
    assert_eq!((t.history().len(), t.cursor()), (history, cursor));
    let delta = t.take_delta().expect("the new name is persisted");
    let stored = delta.containers["a"].as_ref().map(|c| c.name.as_str());
    assert_eq!(stored, Some("web-2"));
    assert!(!t.rename(&rename(3 * S, "a", "web-2")), "applied twice");
    assert!(!t.rename(&rename(3 * S, "a", "")), "no name said");
    assert!(!t.rename(&rename(3 * S, "zz", "other")), "not tracked");
}

#[test]
fn a_look_up_answered_before_a_rename_does_not_bring_the_old_name_back() {
    let mut t = tracker();
    run(&mut t, "a");
    let asked = lookups(&mut t);
    t.rename(&rename(3 * S, "a", "web-2"));
    // The inspect ran before the rename: it still says the old name.
    let answer = snap("a", SnapshotState::Running, Some(2 * S), None);
    assert!(t.enrich(&asked[0], &answer));
    let v = only(&t, 3 * S);
    assert_eq!(
        (v.name.as_str(), v.image_id.as_str()),
        ("web-2", "sha256:1")
    );
    // One asked after the rename takes the name it finds.
    let asked = Lookup {
        container_id: "a".into(),
        name: "web-2".into(),
    };
    let mut answer = answer;
    answer.name = "web-3".into();
    assert!(t.enrich(&asked, &answer));
    assert_eq!(only(&t, 3 * S).name, "web-3");
}

#[test]
fn reconciliation_refreshes_the_image_id_and_name_of_known_containers() {
    let mut t = tracker();
    run(&mut t, "a");
    let s = snapshot("a", SnapshotState::Running, Some(2 * S), None)
        .name("renamed-unseen")
        .build();
    t.reconcile(&[s], true, at(3 * S));
    let v = only(&t, 3 * S);
    assert_eq!(
        (v.name.as_str(), v.image_id.as_str(), v.restarts),
        ("renamed-unseen", "sha256:1", 0)
    );
}

#[test]
fn termination_reasons_are_the_kubernetes_words_in_metrics_and_json() {
    let words = [
        (TerminationReason::OomKilled, "OOMKilled"),
        (TerminationReason::Error, "Error"),
        (TerminationReason::Completed, "Completed"),
        (TerminationReason::Killed, "Killed"),
    ];
    for (reason, word) in words {
        assert_eq!(reason.as_str(), word);
        assert_eq!(
            serde_json::to_value(reason).ok(),
            Some(serde_json::json!(word))
        );
    }
}

#[test]
fn first_sight_of_an_identity_does_not_depend_on_the_order_of_the_list() {
    // Three containers of one pod container: two exited attempts and the running one.
    let attempt = |id: &str, n: u64, state, started, finished: Option<i64>, code| {
        let mut s = snap(id, state, Some(started), finished);
        s.labels = pod_labels(Some(n));
        s.created_at = Some(at(started - 1));
        s.exit_code = finished.map(|_| code);
        s
    };
    let all = [
        attempt("a", 0, SnapshotState::Exited, S, Some(11 * S), 2),
        attempt("b", 1, SnapshotState::Exited, 12 * S, Some(15 * S), 1),
        attempt("c", 2, SnapshotState::Running, 20 * S, None, 0),
    ];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let snaps: Vec<_> = order.iter().map(|&i| all[i].clone()).collect();
        let mut t = tracker();
        t.reconcile(&snaps, true, at(30 * S));
        let v = only(&t, 30 * S);
        assert_eq!(v.restarts, 2, "order {order:?}");
        // 10 s + 3 s of the exited sessions, 10 s of the running one.
        assert_eq!(v.uptime_seconds, 23.0, "order {order:?}");
        assert_eq!(
            v.last_exit_code,
            Some(1),
            "the latest exit; order {order:?}"
        );
        assert_eq!(t.inferred_restarts(), 2, "order {order:?}");
        assert_eq!(
            t.restarts_last_day(at(30 * S)),
            0,
            "restarts of unknown time are not recent; order {order:?}"
        );
    }
}

#[test]
fn a_container_first_met_in_a_partial_replay_gets_restart_count_as_its_lower_bound() {
    // The replay lost the container's create and its first restarts: it is met at a `die`,
    // then restarted by its policy; Docker's RestartCount says 4 restarts in all.
    let mut t = tracker();
    apply_all(
        &mut t,
        &[
            die(10 * S, "a", 1),
            ev(11 * S, "a", "start", EventKind::Started),
        ],
    );
    assert_eq!(only(&t, 12 * S).restarts, 1);
    let mut s = snap("a", SnapshotState::Running, Some(11 * S), Some(10 * S));
    s.restart_count = 4;
    let r = t.reconcile(&[s.clone()], true, at(12 * S));
    assert_eq!(r.inferred_restarts, 3);
    assert_eq!(only(&t, 12 * S).restarts, 4);
    assert_eq!(
        t.restarts_last_day(at(12 * S)),
        1,
        "only the observed one has a time"
    );
    // Later reconciliations of the same state add nothing.
    t.reconcile(&[s], true, at(13 * S));
    assert_eq!(only(&t, 13 * S).restarts, 4);
    assert_eq!(t.node_counts().restarts_total, 4);
}

#[test]
fn restarts_seen_live_are_not_counted_again_by_restart_count() {
    let mut t = tracker();
    run(&mut t, "a");
    for i in 0..3 {
        let at = (10 + 2 * i) * S;
        apply_all(
            &mut t,
            &[
                die(at, "a", 1),
                ev(at + S, "a", "start", EventKind::Started),
            ],
        );
    }
    assert_eq!(only(&t, 20 * S).restarts, 3);
    let mut s = snap("a", SnapshotState::Running, Some(15 * S), Some(14 * S));
    s.restart_count = 3;
    t.reconcile(&[s], true, at(20 * S));
    assert_eq!(only(&t, 20 * S).restarts, 3);
    // Caught in Docker's back-off: RestartCount already counts the start to come.
    apply_all(&mut t, &[die(21 * S, "a", 1)]);
    let mut s = snap("a", SnapshotState::Restarting, Some(15 * S), Some(21 * S));
    s.restart_count = 4;
    t.reconcile(&[s], true, at(22 * S));
    assert_eq!(only(&t, 22 * S).restarts, 3);
    apply_all(&mut t, &[ev(23 * S, "a", "start", EventKind::Started)]);
    assert_eq!(only(&t, 24 * S).restarts, 4);
}

#[test]
fn a_container_first_met_at_its_death_and_reconciled_in_docker_back_off_counts_once() {
    // Met at the `die` of its 4th run; Docker already counts the restart it schedules.
    let mut t = tracker();
    apply_all(&mut t, &[die(10 * S, "a", 1)]);
    let mut s = snap("a", SnapshotState::Restarting, Some(9 * S), Some(10 * S));
    s.restart_count = 4;
    t.reconcile(&[s], true, at(11 * S));
    assert_eq!(
        only(&t, 11 * S).restarts,
        3,
        "the scheduled start counts when seen"
    );
    apply_all(&mut t, &[ev(12 * S, "a", "start", EventKind::Started)]);
    assert_eq!(only(&t, 13 * S).restarts, 4);
    assert_eq!(t.node_counts().restarts_total, 4);
}

#[test]
fn a_cri_containers_start_stamped_later_by_cri_is_the_same_start() {
    let mut t = tracker();
    t.set_runtime(RuntimeKind::Containerd);
    // containerd's /tasks/start at 2 s, CRI's started_at a little later.
    apply_all(
        &mut t,
        &[
            in_pod(ev(S, "a0", "/containers/create", EventKind::Created), 0),
            in_pod(ev(2 * S, "a0", "/tasks/start", EventKind::Started), 0),
            in_pod(die(3 * S, "a0", 1), 0),
        ],
    );
    let mut s = snap("a0", SnapshotState::Exited, Some(2 * S + 5), Some(3 * S));
    s.labels = pod_labels(Some(0));
    t.reconcile(&[s.clone()], true, at(4 * S));
    assert_eq!(only(&t, 4 * S).restarts, 0);
    // Attempt 1 ran while the agent was away: one restart, inferred.
    let mut s1 = snap("a1", SnapshotState::Exited, Some(5 * S), Some(6 * S));
    s1.labels = pod_labels(Some(1));
    let report = t.reconcile(&[s, s1], true, at(7 * S));
    assert_eq!(report.inferred_restarts, 1);
    assert_eq!(only(&t, 7 * S).restarts, 1);
}
