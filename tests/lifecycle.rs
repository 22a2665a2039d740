//! The lifecycle matrix against real, private runtimes: one test body per behaviour, run
//! against a private dockerd, a private Podman service and a private containerd alike
//! (`::docker`, `::podman`, `::containerd` tests of the same module, and `::cri`: the
//! generic CRI path, `--runtime crio`, on the same containerd), since all must give the same
//! normalized results. The bodies speak runtime-neutral verbs (`common::matrix`): Docker and
//! Podman do them through their CLI, containerd over CRI as a kubelet does (a restart is the
//! kubelet's replacement: attempt n+1 of the same container in the same pod). Every test runs
//! its own agent that tracks only the containers labelled for that test, so tests share one
//! daemon per runtime safely.
//!
//! What a runtime does not have stays in a narrower group, each with its reason. On
//! containerd (README "containerd and CRI-O") a restart is no event of its own and a kill is
//! only an exit, and a relist once a second can miss an attempt that came and went, so the
//! bodies assert what each runtime promises there (`Node` says which). containerd-only
//! behaviour (agent and containerd restarts during attempts, other containerd namespaces) is
//! in `tests/containerd.rs`.

mod common;

use std::time::Duration;

use common::matrix::{Case, Node};
use common::{http, types_of, wait_for, Agent, LOOP};
use serde_json::Value;

/// Runs each body on the runtimes in brackets: `NAME::docker`, `NAME::podman`,
/// `NAME::containerd`. A runtime whose daemon cannot start here is skipped loudly (a
/// failure in CI).
macro_rules! matrix {
    ($arms:tt $($body:ident),* $(,)?) => {$(
        matrix!(@one $body $arms);
    )*};
    (@one $body:ident [$($arm:ident),*]) => {
        mod $body {
            $(
                #[test]
                fn $arm() {
                    if let Some(node) = super::Node::$arm() {
                        super::$body(&super::Case::new(node, stringify!($body)));
                    }
                }
            )*
        }
    };
}

// Everything a kubelet node has too, on containerd both through its events and through the
// generic CRI path (`::cri`: `--runtime crio`, a relist every second on containerd 1.6).
matrix!([docker, podman, containerd, cri]
    restart_counts_exactly_one,
    a_crash_loop_counts_each_restart_and_node_total_survives_removal,
    kubelet_style_replacement_is_one_restart_of_the_same_identity,
    events_api_filters_and_names_bad_parameters,
    containers_and_stats_endpoints,
    clearing_the_history_needs_the_admin_token,
    metrics_follow_the_exposition_formats,
    a_container_created_after_ready_gets_its_image_id,
    a_pod_recreated_under_its_name_is_a_second_series_never_a_duplicate,
    a_filter_of_two_labels_tracks_only_containers_with_both,
);

// CRI has no paused state: only containerd's own events tell a pause.
matrix!([docker, podman, containerd]
    pause_counts_none_and_a_stop_is_completed,
);

// A CRI container once exited is never started again (the kubelet makes the next attempt),
// and CRI has no rename.
matrix!([docker, podman]
    a_stopped_container_started_again_counts_one,
    a_rename_renames_the_series_without_an_event,
);

// Podman reports no OOM event (its OOM kill is in `tests/podman.rs`).
matrix!([docker, containerd, cri]
    oom_kill_counts_once_with_exit_code_137,
);

// Docker's own: a restart policy's back-off (containerd has no restart policy: the kubelet
// replaces containers), health checks on the daemon's timer (Podman's run on each check, in
// `tests/podman.rs`; containerd has none), label values no pod name could carry.
matrix!([docker]
    an_agent_met_while_docker_backs_off_counts_that_restart_once,
    failing_health_check_is_unhealthy_and_in_the_history,
    hostile_label_values_survive_a_scrape_unchanged_or_cut,
);

fn c(name: &str) -> Vec<(&str, &str)> {
    vec![("container", name)]
}

fn history(agent: &Agent, query: &str) -> Vec<Value> {
    agent.events(query)
}

fn restart_counts_exactly_one(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.run("restart", LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 0.0);
    ctr.restart(5);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    // The restart's own events are all in the history, each once: Docker's and Podman's
    // `restarted`; on a kubelet node the new attempt's start.
    let reported = case.node.reports_restart_and_kill();
    wait_for("the restart's events", Duration::from_secs(10), || {
        let t = types_of(&history(&agent, &format!("container={}", ctr.name)));
        let started = t.iter().filter(|x| *x == "started").count();
        (started == 2 && (!reported || t.contains(&"restarted".to_string()))).then_some(())
    });
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 1.0);
    // And it stays there: a second barrier, the same count.
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 1.0);
    let ev = history(&agent, &format!("container={}", ctr.name));
    let t = types_of(&ev);
    assert_eq!(t.iter().filter(|x| *x == "started").count(), 2, "{t:?}");
    assert_eq!(t.iter().filter(|x| *x == "died").count(), 1, "{t:?}");
    assert_eq!(
        t.iter().filter(|x| *x == "restarted").count(),
        usize::from(reported),
        "{t:?}"
    );
    let m = agent.metrics();
    assert_eq!(
        common::metric(&m, "containers_restarts_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &m,
            "container_events_total",
            &[("container", &ctr.name), ("event", "started")]
        ),
        Some(2.0)
    );
}

fn pause_counts_none_and_a_stop_is_completed(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.run("pause", LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    ctr.pause();
    agent.wait_metric("container_paused", &c(&ctr.name), 1.0);
    agent.wait_metric("containers_paused", &[], 1.0);
    // Paused still counts as running.
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    ctr.unpause();
    agent.wait_metric("container_paused", &c(&ctr.name), 0.0);
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 0.0);
    agent.assert_metric("containers_paused", &[], 0.0);
    ctr.stop();
    agent.wait_metric("container_running", &c(&ctr.name), 0.0);
    agent.wait_metric(
        "container_last_terminated_reason",
        &[("container", &ctr.name), ("reason", "Completed")],
        1.0,
    );
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 0.0);
    assert_eq!(
        common::metric(
            &agent.metrics(),
            "container_time_since_start_seconds",
            &c(&ctr.name)
        ),
        None
    );
    let t = types_of(&history(&agent, &format!("container={}", ctr.name)));
    assert_eq!(
        t.iter()
            .filter(|x| *x == "paused" || *x == "unpaused")
            .collect::<Vec<_>>(),
        ["paused", "unpaused"],
        "{t:?}"
    );
}

fn a_stopped_container_started_again_counts_one(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.run("stopstart", LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    ctr.stop();
    agent.wait_metric("container_running", &c(&ctr.name), 0.0);
    ctr.start();
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 1.0);
    let m = agent.metrics();
    assert!(common::metric(&m, "container_time_since_start_seconds", &c(&ctr.name)).is_some());
    assert!(
        common::metric(&m, "container_uptime_seconds_total", &c(&ctr.name))
            .is_some_and(|u| u > 0.0)
    );
}

/// Docker's and Podman's `--restart on-failure:3`, the kubelet's crash loop on containerd.
fn a_crash_loop_counts_each_restart_and_node_total_survives_removal(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.crash_loop("loop", 3, "exit 3");
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 3.0);
    // The last failure is not restarted.
    ctr.wait_exited();
    agent.wait_metric("container_last_exit_code", &c(&ctr.name), 3.0);
    agent.wait_metric("container_running", &c(&ctr.name), 0.0);
    agent.wait_metric(
        "container_last_terminated_reason",
        &[("container", &ctr.name), ("reason", "Error")],
        1.0,
    );
    assert_eq!(ctr.runtime_restarts(), (3, "exited".to_string()));
    agent.wait_metric("containers_restarts_total", &[], 3.0);
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 3.0);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    let m = agent.metrics();
    // Every attempt was seen, its start counted when it happened. Only a relist (once a
    // second) can miss an attempt that came and went in between: the count is then the
    // attempt ordinal's, partly inferred and outside the 1 h statistics.
    let every = case.node.sees_every_container();
    if every {
        assert_eq!(
            common::metric(&m, "lifecycle_agent_restarts_inferred_total", &[]),
            Some(0.0),
            "every restart was seen as an event"
        );
        let t = types_of(&history(&agent, &format!("container={}", ctr.name)));
        assert_eq!(t.iter().filter(|x| *x == "started").count(), 4, "{t:?}");
        assert_eq!(t.iter().filter(|x| *x == "died").count(), 4, "{t:?}");
    }
    // The container's one series names its last attempt; nothing else (no pod sandbox) is one.
    let id = ctr.id();
    let infos = common::samples(&m, "container_info");
    assert_eq!(infos.len(), 1, "{m}");
    assert_eq!(label(&infos[0].0, "container_id"), id, "{m}");
    assert_eq!(label(&infos[0].0, "runtime"), case.node.runtime(), "{m}");
    let stats = agent.json("/api/v1/stats/restarts");
    assert_eq!(stats["total_restarts"], 3);
    if every {
        assert_eq!(stats["restarts_last_1h"], 3);
    }
    drop(ctr);
    wait_for(
        "the removed container's series to disappear",
        Duration::from_secs(20),
        || {
            common::samples(&agent.metrics(), "container_restarts_total")
                .is_empty()
                .then_some(())
        },
    );
    // The node keeps every restart it saw.
    agent.wait_metric("containers_restarts_total", &[], 3.0);
    agent.wait_metric("containers_tracked", &[], 0.0);
    case.settle(&agent);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    agent.assert_metric("containers_tracked", &[], 0.0);
    agent.assert_no_duplicate_events();
}

/// Docker raises RestartCount when it schedules a policy restart, then waits (100 ms,
/// doubling) before the start. An agent that first meets the container in that wait must
/// count the restart once: Docker's count after the start, not one more.
fn an_agent_met_while_docker_backs_off_counts_that_restart_once(case: &Case) {
    let dir = std::env::temp_dir().join(common::unique("backoff"));
    std::fs::create_dir_all(&dir).expect("volume dir");
    let volume = format!("{}:/data", dir.display());
    // Fails six times, then stays up; the sixth wait is 3.2 s.
    let script = format!(
        "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; \
         if [ $n -ge 6 ]; then {LOOP}; fi; exit 1"
    );
    let ctr = case
        .container("backoff")
        .opts(&["--restart", "always", "-v", &volume])
        .run(&script);
    let state = || ctr.cli(&["inspect", "-f", "{{.State.Restarting}} {{.RestartCount}}"]);
    wait_for(
        "Docker to schedule the sixth restart",
        Duration::from_secs(30),
        || (state() == "true 6").then_some(()),
    );
    let agent = case.agent(&[]);
    assert_eq!(
        state(),
        "true 6",
        "the agent synced while Docker was still waiting to restart"
    );
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    assert_eq!(state(), "false 6");
    case.settle(&agent);
    assert_eq!(
        common::metric(&agent.metrics(), "container_restarts_total", &c(&ctr.name)),
        Some(6.0),
        "Docker's RestartCount, the start after the wait counted once"
    );
    drop(ctr);
    let _ = std::fs::remove_dir_all(&dir);
}

fn oom_kill_counts_once_with_exit_code_137(case: &Case) {
    let agent = case.agent(&[]);
    // Under load, containerd can miss the kernel's OOM notification: then neither Docker
    // nor CRI reports the OOM kill (no `oom` event, no OOMKilled), and no agent can know.
    // Such a run is repeated (at most 3 times); a kill the runtime did report must be counted.
    for attempt in 1..=3 {
        let ctr = case
            .container("oom")
            .memory(16 * 1024 * 1024)
            .run("dd if=/dev/zero of=/dev/null bs=64M count=1");
        agent.wait_metric("container_last_exit_code", &c(&ctr.name), 137.0);
        if !ctr.oom_reported() {
            eprintln!(
                "attempt {attempt}: {} did not report this OOM kill; running it again",
                case.node.kind()
            );
            continue;
        }
        agent.wait_metric("container_oom_kills_total", &c(&ctr.name), 1.0);
        agent.wait_metric(
            "container_last_terminated_reason",
            &[("container", &ctr.name), ("reason", "OOMKilled")],
            1.0,
        );
        case.settle(&agent);
        agent.assert_metric("container_oom_kills_total", &c(&ctr.name), 1.0);
        agent.assert_metric("container_last_exit_code", &c(&ctr.name), 137.0);
        let ev = history(&agent, &format!("container={}&type=oom", ctr.name));
        assert_eq!(ev.len(), 1, "{ev:?}");
        return;
    }
    panic!(
        "{} reported none of 3 OOM kills under a 16 MiB limit",
        case.node.kind()
    );
}

fn failing_health_check_is_unhealthy_and_in_the_history(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case
        .container("health")
        .opts(&[
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "--health-timeout",
            "5s",
        ])
        .run(LOOP);
    agent.wait_metric(
        "container_health_status",
        &[("container", &ctr.name), ("status", "unhealthy")],
        1.0,
    );
    case.settle(&agent);
    let ev = history(
        &agent,
        &format!("container={}&type=health_status", ctr.name),
    );
    assert!(
        ev.iter().any(|e| e["health"] == "unhealthy"),
        "no unhealthy transition in {ev:?}"
    );
    // Docker reports transitions only: a steady unhealthy state is one event, not one per check.
    let count = common::metric(
        &agent.metrics(),
        "container_events_total",
        &[("container", &ctr.name), ("event", "health_status")],
    );
    assert_eq!(count, Some(ev.len() as f64));
}

fn kubelet_style_replacement_is_one_restart_of_the_same_identity(case: &Case) {
    let agent = case.agent(&[]);
    let pod = case.pod("shop", &common::unique("pod"), &common::unique("uid"));
    let id = [
        ("namespace", "shop"),
        ("pod", pod.name.as_str()),
        ("container", "web"),
    ];
    let first = pod.container("web", 0).run("exit 1");
    first.wait_exited();
    agent.wait_metric("container_running", &id, 0.0);
    agent.wait_metric("container_restarts_total", &id, 0.0);
    let second = pod.container("web", 1).run(LOOP);
    agent.wait_metric("container_running", &id, 1.0);
    agent.wait_metric("container_restarts_total", &id, 1.0);
    // The kubelet removes the old container later: still one identity, one restart.
    drop(first);
    agent.wait_metric("containers_tracked", &[], 1.0);
    agent.wait_metric("container_restarts_total", &id, 1.0);
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &id, 1.0);
    agent.assert_metric("containers_tracked", &[], 1.0);
    // The running attempt's series keeps the failed one's exit and reason.
    agent.assert_metric("container_running", &id, 1.0);
    agent.assert_metric("container_last_exit_code", &id, 1.0);
    let mut reason = id.to_vec();
    reason.push(("reason", "Error"));
    agent.assert_metric("container_last_terminated_reason", &reason, 1.0);
    assert_eq!(
        common::samples(&agent.metrics(), "container_restarts_total").len(),
        1
    );
    let ev = history(
        &agent,
        &format!("pod={}&namespace=shop&type=started", pod.name),
    );
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev
        .iter()
        .all(|e| e["container"] == "web" && e["pod"] == pod.name.as_str()));
    drop(second);
    wait_for(
        "the pod identity to be forgotten",
        Duration::from_secs(20),
        || {
            common::samples(&agent.metrics(), "container_restarts_total")
                .is_empty()
                .then_some(())
        },
    );
    agent.wait_metric("containers_restarts_total", &[], 1.0);
    case.settle(&agent);
    agent.assert_metric("containers_restarts_total", &[], 1.0);
}

/// Fails when one scrape carries a metric name with the same label set twice.
fn assert_no_duplicate_series(text: &str) {
    let mut seen = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        assert!(
            seen.insert(series),
            "a series twice in one scrape: {series}"
        );
    }
}

fn a_pod_recreated_under_its_name_is_a_second_series_never_a_duplicate(case: &Case) {
    let agent = case.agent(&[]);
    let pod_name = common::unique("sts");
    let pod_name = pod_name.as_str();
    let (uid1, uid2) = (common::unique("uid"), common::unique("uid"));
    // The old pod's container died and the kubelet has not collected it yet; the pod is
    // deleted and re-created under its name (a StatefulSet pod), with a new uid.
    let old_pod = case.pod("shop", pod_name, &uid1);
    let old = old_pod.container("web", 0).run("exit 1");
    let old_id = [
        ("pod", pod_name),
        ("container", "web"),
        ("uid", uid1.as_str()),
    ];
    let new_id = [
        ("pod", pod_name),
        ("container", "web"),
        ("uid", uid2.as_str()),
    ];
    agent.wait_metric("container_running", &old_id, 0.0);
    let new_pod = case.pod("shop", pod_name, &uid2);
    let new = new_pod.container("web", 0).run(LOOP);
    agent.wait_metric("container_running", &new_id, 1.0);
    agent.wait_metric(
        "container_events_total",
        &[("event", "started"), ("uid", &uid2)],
        1.0,
    );
    let text = agent.metrics();
    assert_no_duplicate_series(&text);
    // Two series per family, one per pod, neither fed by the other.
    let restarts = common::samples(&text, "container_restarts_total");
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert_eq!(
        common::metric(&text, "container_restarts_total", &old_id),
        Some(0.0)
    );
    assert_eq!(
        common::metric(&text, "container_restarts_total", &new_id),
        Some(0.0)
    );
    assert_eq!(
        common::metric(&text, "container_last_exit_code", &old_id),
        Some(1.0)
    );
    assert_eq!(
        common::metric(&text, "container_last_exit_code", &new_id),
        None
    );
    assert_eq!(
        common::metric(&text, "lifecycle_agent_series_collisions", &[]),
        Some(0.0)
    );
    // The id as the pod status and kube-state-metrics' kube_pod_container_info write it.
    let want = format!("{}://{}", case.node.runtime(), new.id());
    assert_eq!(
        common::metric(
            &text,
            "container_info",
            &[("uid", &uid2), ("kube_container_id", &want)]
        ),
        Some(1.0),
        "{text}"
    );
    common::promtool_check(&text);
    drop((old, new));
}

fn a_filter_of_two_labels_tracks_only_containers_with_both(case: &Case) {
    // libpod's event filter ORs two labels: the agent must check them itself (and on
    // containerd it is the only one that does).
    let other = format!("lat.other={}", common::unique("both"));
    let filter = format!("{},{other}", case.label);
    let agent = case.node.agent().filter(&filter).start();
    let only_a = case.run("only-a", LOOP);
    let only_b = case.unlabelled("only-b").label(&other).run(LOOP);
    only_a.restart(0);
    only_b.restart(0);
    // The barrier: events arrive in order, so once this container's restart is counted,
    // every event of the two before it has been seen (and must have been dropped).
    let both = case.container("both").label(&other).run(LOOP);
    both.restart(0);
    agent.wait_metric("container_restarts_total", &c(&both.name), 1.0);
    let names = |agent: &Agent| -> Vec<String> {
        common::samples(&agent.metrics(), "container_info")
            .into_iter()
            .filter_map(|(l, _)| l.into_iter().find(|(k, _)| k == "name").map(|(_, v)| v))
            .collect()
    };
    assert_eq!(names(&agent), [both.name.as_str()]);
    // Docker and Podman restart the one container; a kubelet keeps the dead attempt too.
    let tracked = both.containers() as f64;
    assert_eq!(
        common::metric(&agent.metrics(), "containers_tracked", &[]),
        Some(tracked)
    );
    let seen: Vec<String> = history(&agent, "limit=1000")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|n| *n == both.name),
        "{seen:?}"
    );
    // An agent that meets the three through list + inspect selects the same one.
    let listed = case.node.agent().filter(&filter).start();
    listed.wait_metric("containers_tracked", &[], tracked);
    assert_eq!(names(&listed), [both.name.as_str()]);
    drop((only_a, only_b, both));
}

fn events_api_filters_and_names_bad_parameters(case: &Case) {
    let agent = case.agent(&[]);
    let a = case.run("api-a", "exit 0");
    let b = case.run("api-b", LOOP);
    agent.wait_metric("container_running", &c(&b.name), 1.0);
    agent.wait_metric("container_last_exit_code", &c(&a.name), 0.0);
    b.kill();
    agent.wait_metric("container_running", &c(&b.name), 0.0);
    agent.wait_metric(
        "container_last_terminated_reason",
        &[
            ("container", &b.name),
            ("reason", case.node.killed_reason()),
        ],
        1.0,
    );
    // Docker and Podman report the kill itself; containerd only the exit.
    let kills = usize::from(case.node.reports_restart_and_kill());
    // The sentinel adds its own `created` and `destroyed`: neither is counted below.
    case.settle(&agent);

    let by_a = history(&agent, &format!("container={}", a.name));
    let whole = agent.json(&format!("/api/v1/events?container={}", a.name));
    assert_eq!(whole["truncated"], false, "{whole}");
    assert_eq!(
        types_of(&by_a),
        vec!["created", "started", "died"],
        "{by_a:?}"
    );
    let by_id = history(
        &agent,
        &format!(
            "container={}",
            &by_a[0]["container_id"].as_str().unwrap()[..12]
        ),
    );
    assert_eq!(by_id.len(), 3);
    let typed = history(&agent, "type=killed,died");
    assert_eq!(typed.len(), 2 + kills, "{typed:?}");
    assert!(typed
        .iter()
        .all(|e| e["type"] == "killed" || e["type"] == "died"));
    let killed = history(&agent, &format!("container={}&type=killed", b.name));
    assert_eq!(killed.len(), kills, "{killed:?}");
    let died_b = history(&agent, &format!("container={}&type=died", b.name));
    assert_eq!(died_b[0]["exit_code"], 137);
    // Newest first, limit and truncation.
    let all = agent.json("/api/v1/events?limit=2");
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    assert_eq!(all["truncated"], true);
    let newest = all["events"][0]["time_unix_nano"].as_i64().unwrap();
    let older = all["events"][1]["time_unix_nano"].as_i64().unwrap();
    assert!(newest >= older);
    // since/until bracket one event by its exact time (the create: a relist stamps the exit
    // of a process that ends at once with its start, never before it).
    let t = &by_a[2]["time"];
    let t = t.as_str().unwrap().replace(':', "%3A");
    let one = history(&agent, &format!("since={t}&until={t}"));
    assert_eq!(types_of(&one), vec!["created"]);
    assert!(history(&agent, "since=1h").len() >= 6);
    assert!(history(&agent, "until=1h").is_empty());
    // Pod and namespace filters match nothing here (plain containers).
    assert!(history(&agent, "namespace=shop").is_empty());
    assert!(history(&agent, "pod=web").is_empty());

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=many", "limit"),
        ("type=started,exploded", "type"),
        ("since=yesterday", "since"),
        ("until=soon", "until"),
        ("since=1m&until=1h", "since"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = agent.get(&format!("/api/v1/events?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(param),
            "{query}: {body}"
        );
    }
}

/// The `container_info` labels of the series whose `container_id` is `id`.
fn info_labels(agent: &Agent, id: &str) -> Option<Vec<(String, String)>> {
    common::samples(&agent.metrics(), "container_info")
        .into_iter()
        .map(|(labels, _)| labels)
        .find(|labels| labels.iter().any(|(k, v)| k == "container_id" && v == id))
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// Events carry no image ID: the agent looks a container it first meets through an event
/// up, once, so `container_info` and the API name its image ID like the runtime's inspect.
fn a_container_created_after_ready_gets_its_image_id(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.run("imageid", LOOP);
    let id = ctr.id();
    let want = ctr.image_id();
    assert!(!want.is_empty(), "inspect names no image ID");
    let labels = wait_for(
        "container_info with an image ID",
        Duration::from_secs(30),
        || info_labels(&agent, &id).filter(|l| !label(l, "image_id").is_empty()),
    );
    assert_eq!(label(&labels, "image_id"), want);
    assert_eq!(label(&labels, "name"), ctr.name);
    let one = agent.json(&format!("/api/v1/containers/{}", ctr.name));
    assert_eq!(one["image_id"], want.as_str());
}

/// A rename changes the `name` label (and `container`, the runtime name of a container
/// outside Kubernetes), and is no lifecycle event: no history entry, no counter.
fn a_rename_renames_the_series_without_an_event(case: &Case) {
    let agent = case.agent(&[]);
    let mut ctr = case.run("rename", LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    let id = ctr.id();
    let by_id = format!("container={}", &id[..12]);
    let before = history(&agent, &by_id).len();
    let new_name = common::unique("renamed");
    let old_name = ctr.name.clone();
    // The container is removed under its new name when the test ends.
    ctr.rename(&new_name);
    let labels = wait_for(
        "container_info with the new name",
        Duration::from_secs(30),
        || info_labels(&agent, &id).filter(|l| label(l, "name") == new_name),
    );
    assert_eq!(label(&labels, "container"), new_name);
    agent.wait_metric("container_running", &c(&new_name), 1.0);
    case.settle(&agent);
    let m = agent.metrics();
    assert_eq!(common::metric(&m, "container_running", &c(&old_name)), None);
    assert_eq!(
        common::metric(&m, "container_restarts_total", &c(&new_name)),
        Some(0.0)
    );
    assert_eq!(
        agent.json(&format!("/api/v1/containers/{new_name}"))["container_id"],
        id.as_str()
    );
    // The next lifecycle event is recorded under the new name; the rename itself is not.
    ctr.stop();
    agent.wait_metric("container_running", &c(&new_name), 0.0);
    let ev = wait_for("the died event", Duration::from_secs(10), || {
        let ev = history(&agent, &by_id);
        types_of(&ev).contains(&"died".to_string()).then_some(ev)
    });
    assert!(
        ev.iter().all(|e| e["action"] != "rename"),
        "a rename in the history: {ev:?}"
    );
    assert!(ev.len() > before, "{ev:?}");
    let died = ev.iter().find(|e| e["type"] == "died");
    assert_eq!(
        died.map(|e| &e["name"]),
        Some(&Value::from(new_name.as_str()))
    );
}

fn containers_and_stats_endpoints(case: &Case) {
    let agent = case.agent(&[]);
    let a = case.run("stats-a", LOOP);
    let b = case.create("stats-b", LOOP);
    agent.wait_metric("container_running", &c(&a.name), 1.0);
    agent.wait_metric("containers_tracked", &[], 2.0);
    agent.wait_metric("containers_stopped", &[], 1.0);
    case.settle(&agent);
    agent.assert_metric("containers_tracked", &[], 2.0);
    let list = agent.json("/api/v1/containers");
    assert_eq!(list["containers"].as_array().unwrap().len(), 2);
    assert_eq!(list["node"], "test-node");
    let one = agent.json(&format!("/api/v1/containers/{}", a.name));
    assert_eq!(one["state"], "running");
    assert_eq!(one["restarts"], 0);
    let by_prefix = agent.json(&format!(
        "/api/v1/containers/{}",
        &one["container_id"].as_str().unwrap()[..10]
    ));
    assert_eq!(by_prefix["name"], a.name.as_str());
    assert_eq!(
        agent.json(&format!("/api/v1/containers/{}", b.name))["state"],
        "created"
    );
    assert_eq!(agent.get("/api/v1/containers/no-such-container").0, 404);

    a.restart(5);
    agent.wait_metric("container_restarts_total", &c(&a.name), 1.0);
    case.settle(&agent);
    agent.assert_metric("container_restarts_total", &c(&a.name), 1.0);
    let r = agent.json("/api/v1/stats/restarts");
    for key in [
        "total_containers",
        "total_restarts",
        "containers_with_restarts",
        "average_restarts_per_container",
        "restarts_last_1h",
        "restarts_last_24h",
        "top_restarting",
    ] {
        assert!(r.get(key).is_some(), "stats/restarts lacks {key}: {r}");
    }
    assert_eq!(
        (r["total_containers"].as_u64(), r["total_restarts"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(r["containers_with_restarts"], 1);
    assert_eq!(r["average_restarts_per_container"], 0.5);
    assert_eq!(r["top_restarting"][0]["container"], a.name.as_str());
    let u = agent.json("/api/v1/stats/uptime");
    for key in [
        "total_uptime_seconds",
        "running_containers",
        "average_uptime_seconds",
        "states",
    ] {
        assert!(u.get(key).is_some(), "stats/uptime lacks {key}: {u}");
    }
    assert_eq!(u["running_containers"], 1);
    assert!(u["total_uptime_seconds"].as_f64().unwrap() > 0.0);

    // The CLI reads the same numbers.
    let out = std::process::Command::new(common::agent_bin())
        .args(["stats", "--json", "--url", &agent.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["restarts"]["total_restarts"], 1);
    // Docker's and Podman's restart is one `restarted`; a kubelet's is the second start.
    let (kind, lines) = if case.node.reports_restart_and_kill() {
        ("restarted", 2)
    } else {
        ("started", 3)
    };
    let out = std::process::Command::new(common::agent_bin())
        .args([
            "events",
            "--container",
            &a.name,
            "--type",
            kind,
            "--url",
            &agent.url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().count() == lines && text.contains(kind),
        "{text}"
    );
}

fn clearing_the_history_needs_the_admin_token(case: &Case) {
    let plain = case.agent(&[]);
    let (status, body) = http(plain.port, "DELETE", "/api/v1/events?before=1h", &[]).unwrap();
    assert_eq!(status, 403, "{body}");

    let token = std::env::temp_dir().join(common::unique("token"));
    std::fs::write(&token, "correct-horse-battery\n").unwrap();
    let agent = case.agent(&["--admin-token-file", token.to_str().unwrap()]);
    let ctr = case.run("admin", "exit 0");
    agent.wait_metric("container_last_exit_code", &c(&ctr.name), 0.0);
    let (status, _) = http(agent.port, "DELETE", "/api/v1/events?before=0s", &[]).unwrap();
    assert_eq!(status, 401);
    let (status, _) = http(
        agent.port,
        "DELETE",
        "/api/v1/events?before=0s",
        &[("Authorization", "Bearer wrong-token")],
    )
    .unwrap();
    assert_eq!(status, 401);
    let auth = [("Authorization", "Bearer correct-horse-battery")];
    let (status, body) = http(agent.port, "DELETE", "/api/v1/events", &auth).unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("before"), "{body}");
    for bad in ["yesterday", "7x", "2024-13-01T00%3A00%3A00Z"] {
        let path = format!("/api/v1/events?before={bad}");
        let (status, body) = http(agent.port, "DELETE", &path, &auth).unwrap();
        assert_eq!(status, 400, "before={bad}: {body}");
        assert!(body.contains("before"), "before={bad}: {body}");
    }
    assert_eq!(history(&agent, &format!("container={}", ctr.name)).len(), 3);
    let (status, body) = http(agent.port, "DELETE", "/api/v1/events?before=1h", &auth).unwrap();
    assert_eq!((status, body.trim()), (200, r#"{"cleared":0}"#));
    // Everything before the barrier: the container's events, each once.
    let settled = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let sentinel = case.settle(&agent);
    let before = format!("/api/v1/events?before={}", settled.replace(':', "%3A"));
    let (status, body) = http(agent.port, "DELETE", &before, &auth).unwrap();
    assert_eq!(status, 200, "{body}");
    let cleared: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cleared["cleared"], 3, "create, start, die");
    let left = history(&agent, "");
    assert!(
        left.iter().all(|e| e["name"] == sentinel.as_str()),
        "{left:?}"
    );
    let (status, body) = http(agent.port, "DELETE", "/api/v1/events?before=0s", &auth).unwrap();
    assert_eq!(status, 200, "{body}");
    let cleared: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cleared["cleared"], left.len(), "{body}");
    assert!(history(&agent, "").is_empty());
    let _ = std::fs::remove_file(token);
}

fn metrics_follow_the_exposition_formats(case: &Case) {
    let agent = case.agent(&[]);
    let ctr = case.run("format", LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    let (status, body) = http(
        agent.port,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    assert!(body.contains("# TYPE container_restarts counter"));
    let text = agent.metrics();
    assert!(
        text.contains("# TYPE container_restarts_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    for name in [
        "lifecycle_agent_build_info",
        "lifecycle_agent_runtime_connected",
        "lifecycle_agent_events_processed_total",
        "lifecycle_agent_stream_reconnects_total",
        "lifecycle_agent_events_possibly_missed_total",
    ] {
        assert!(
            common::metric(&text, name, &[("node", "test-node")]).is_some(),
            "{name} missing"
        );
    }
    assert_eq!(
        common::metric(&text, "lifecycle_agent_runtime_connected", &[]),
        Some(1.0)
    );
    // What the agent itself costs, as every Prometheus client library reports it.
    let rss = common::metric(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
    assert!(
        rss > 1e6 && rss < 1e9,
        "process_resident_memory_bytes {rss}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(common::metric(&text, name, &[]).is_some(), "{name} missing");
    }
    common::promtool_check(&text);
}

fn hostile_label_values_survive_a_scrape_unchanged_or_cut(case: &Case) {
    let agent = case.agent(&[]);
    let nasty = "we\"ird\\pod\nname-é-😀";
    let long = "x".repeat(1500);
    let ns = format!("io.kubernetes.pod.namespace={nasty}");
    let pod = format!("io.kubernetes.pod.name={long}");
    let uid = format!("io.kubernetes.pod.uid={}", common::unique("uid"));
    let ctr = case
        .container("hostile")
        .label(&ns)
        .label(&pod)
        .label(&uid)
        .label("io.kubernetes.container.name=c")
        .run(LOOP);
    let cut = &long[..1024];
    agent.wait_metric(
        "container_running",
        &[("namespace", nasty), ("pod", cut), ("container", "c")],
        1.0,
    );
    // The API keeps the full values.
    let ev = history(&agent, "type=started");
    assert_eq!(ev[0]["namespace"], nasty);
    assert_eq!(ev[0]["pod"].as_str().map(str::len), Some(1500));
    common::promtool_check(&agent.metrics());
    drop(ctr);
}
