//! The generic CRI path (`--runtime crio`) against an in-process CRI runtime speaking the
//! real gRPC protocol (`common::fake_cri`; CRI-O itself cannot be installed here), with
//! `GetContainerEvents` (`::events`) and without it (`::relist`, the agent relists every
//! second). The same path against a real containerd is `tests/containerd.rs`'s `::crio`.

mod common;

use common::fake_cri::FakeCri;
use common::{metric, types_of, Agent};

const NS: &str = "shop";

/// Runs one body with and without CRI container events.
macro_rules! with_and_without_events {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn events() {
                super::$body(true);
            }

            #[test]
            fn relist() {
                super::$body(false);
            }
        }
    )*};
}

with_and_without_events!(
    a_crash_loop_counts_each_attempt,
    an_oom_kill_counts_once_with_exit_code_137,
    an_agent_started_late_counts_from_the_attempt_ordinal,
    the_count_equals_the_attempt_after_a_kill_9,
    a_removed_container_leaves_its_series,
);

fn agent(cri: &FakeCri, state: Option<&std::path::Path>) -> Agent {
    let agent = Agent::builder("crio", &cri.socket);
    match state {
        Some(dir) => agent.state_dir(dir),
        None => agent.ephemeral(),
    }
    .start()
}

fn series<'a>(pod: &'a str, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("namespace", NS), ("pod", pod), ("container", container)]
}

/// Starts a barrier container and waits until the agent shows it: every change before it
/// has been applied, so counts read afterwards are settled.
fn barrier(agent: &Agent, cri: &FakeCri, pod: &str, name: &str) {
    cri.run(NS, pod, name, 0);
    agent.wait_metric("container_running", &series(pod, name), 1.0);
}

fn a_crash_loop_counts_each_attempt(with_events: bool) {
    let cri = FakeCri::start(with_events);
    let agent = agent(&cri, None);
    let app = series("web-1", "app");
    let a0 = cri.run(NS, "web-1", "app", 0);
    cri.exit(&a0, 3, false);
    agent.wait_metric("container_last_exit_code", &app, 3.0);
    let a1 = cri.run(NS, "web-1", "app", 1);
    cri.exit(&a1, 4, false);
    agent.wait_metric("container_last_exit_code", &app, 4.0);
    let a2 = cri.run(NS, "web-1", "app", 2);
    agent.wait_metric("container_running", &app, 1.0);
    barrier(&agent, &cri, "web-1", "barrier");

    let m = agent.metrics();
    assert_eq!(
        metric(&m, "container_restarts_total", &app),
        Some(2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "container_last_exit_code", &app), Some(4.0));
    let mut reason = app.clone();
    reason.push(("reason", "Error"));
    assert_eq!(
        metric(&m, "container_last_terminated_reason", &reason),
        Some(1.0)
    );
    let mut info = app.clone();
    info.push(("container_id", a2.as_str()));
    info.push(("image_id", "sha256:0123456789abcdef"));
    assert_eq!(metric(&m, "container_info", &info), Some(1.0), "{m}");
    assert!(m.contains("runtime=\"crio\""), "{m}");
    assert_eq!(
        metric(&m, "lifecycle_agent_restarts_inferred_total", &[]),
        Some(0.0)
    );
    let ev = agent.events("pod=web-1&container=app&type=started");
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev.iter().all(|e| e["runtime"] == "crio"), "{ev:?}");
    agent.assert_no_duplicate_events();
}

fn an_oom_kill_counts_once_with_exit_code_137(with_events: bool) {
    let cri = FakeCri::start(with_events);
    let agent = agent(&cri, None);
    let hog = series("hog-1", "hog");
    let id = cri.run(NS, "hog-1", "hog", 0);
    agent.wait_metric("container_running", &hog, 1.0);
    cri.exit(&id, 137, true);
    agent.wait_metric("container_last_exit_code", &hog, 137.0);
    let mut reason = hog.clone();
    reason.push(("reason", "OOMKilled"));
    agent.wait_metric("container_last_terminated_reason", &reason, 1.0);
    barrier(&agent, &cri, "hog-1", "barrier");
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "container_oom_kills_total", &hog),
        Some(1.0),
        "{m}"
    );
    assert_eq!(agent.events("container=hog&type=oom").len(), 1);
}

fn an_agent_started_late_counts_from_the_attempt_ordinal(with_events: bool) {
    let cri = FakeCri::start(with_events);
    let old = cri.run(NS, "late-1", "app", 3);
    cri.exit(&old, 1, false);
    cri.run(NS, "late-1", "app", 4);
    let agent = agent(&cri, None);
    let app = series("late-1", "app");
    agent.wait_metric("container_running", &app, 1.0);
    barrier(&agent, &cri, "late-1", "barrier");
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "container_restarts_total", &app),
        Some(4.0),
        "{m}"
    );
    assert!(agent.events("container=app&type=started").is_empty());
}

fn the_count_equals_the_attempt_after_a_kill_9(with_events: bool) {
    let cri = FakeCri::start(with_events);
    let state = tempfile::tempdir().expect("state dir");
    let app = series("kill-1", "app");
    let first = agent(&cri, Some(state.path()));
    let a0 = cri.run(NS, "kill-1", "app", 0);
    cri.exit(&a0, 1, false);
    first.wait_metric("container_last_exit_code", &app, 1.0);
    barrier(&first, &cri, "kill-1", "b0");
    first.kill9();

    let a1 = cri.run(NS, "kill-1", "app", 1);
    cri.exit(&a1, 2, false);
    let second = agent(&cri, Some(state.path()));
    second.wait_metric("container_restarts_total", &app, 1.0);
    let a2 = cri.run(NS, "kill-1", "app", 2);
    cri.exit(&a2, 3, false);
    second.wait_metric("container_last_exit_code", &app, 3.0);
    barrier(&second, &cri, "kill-1", "b1");
    let m = second.metrics();
    assert_eq!(
        metric(&m, "container_restarts_total", &app),
        Some(2.0),
        "{m}"
    );
    // Attempt 2 was seen; attempt 1 only inferred. (Attempt 0's start may be among the last
    // 100 ms of changes a kill -9 loses, and containerd and CRI-O replay nothing.)
    let started = second.events("container=app&type=started");
    let ids: Vec<&str> = started
        .iter()
        .filter_map(|e| e["container_id"].as_str())
        .collect();
    assert!(ids.contains(&a2.as_str()), "{started:?}");
    assert!(!ids.contains(&a1.as_str()), "{started:?}");
    second.assert_no_duplicate_events();
}

fn a_removed_container_leaves_its_series(with_events: bool) {
    let cri = FakeCri::start(with_events);
    let agent = agent(&cri, None);
    let app = series("rm-1", "app");
    let id = cri.run(NS, "rm-1", "app", 0);
    agent.wait_metric("container_running", &app, 1.0);
    cri.exit(&id, 0, false);
    let mut reason = app.clone();
    reason.push(("reason", "Completed"));
    agent.wait_metric("container_last_terminated_reason", &reason, 1.0);
    cri.remove(&id);
    common::wait_for(
        "the removed container's series to go",
        std::time::Duration::from_secs(30),
        || {
            metric(&agent.metrics(), "container_running", &app)
                .is_none()
                .then_some(())
        },
    );
    let ev = agent.events("container=app");
    assert_eq!(
        types_of(&ev),
        vec!["created", "started", "died", "destroyed"],
        "{ev:?}"
    );
}
