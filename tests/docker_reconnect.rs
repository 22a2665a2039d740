//! The agent against a dockerd that crashes and comes back: it must reconnect by itself,
//! report not-ready meanwhile, and count what happened while it was away exactly once.

mod common;

use std::time::Duration;

use common::{wait_for, Agent, DockerDaemon, Runtime, LOOP};

#[test]
fn survives_a_daemon_crash_and_counts_actions_during_reconnect_once() {
    let Some(daemon) = DockerDaemon::start_private() else {
        return;
    };
    let agent = Agent::on(&*daemon).start();
    let a = daemon.run("crash-a", &[], LOOP);
    agent.wait_metric("container_running", &[("container", &a.name)], 1.0);
    agent.wait_metric("lifecycle_agent_runtime_connected", &[], 1.0);

    daemon.kill();
    wait_for("/readyz to turn 503", Duration::from_secs(30), || {
        (agent.get("/readyz").0 == 503).then_some(())
    });
    let (_, body) = agent.get("/readyz");
    assert!(body.contains("reason"), "{body}");
    agent.wait_metric("lifecycle_agent_runtime_connected", &[], 0.0);

    daemon.launch();
    // Right away, while the agent is still backing off: the daemon stopped `a` on its way
    // up (kill, die, stop); start it again, and create and restart `b` twice.
    let b = daemon.run("crash-b", &[], LOOP);
    daemon.docker_ok(&["restart", "-t", "5", &b.name]);
    daemon.docker_ok(&["restart", "-t", "5", &b.name]);
    let state = daemon.docker_ok(&["inspect", "-f", "{{.State.Running}}", &a.name]);
    if state == "true" {
        daemon.docker_ok(&["restart", "-t", "5", &a.name]);
    } else {
        daemon.docker_ok(&["start", &a.name]);
    }

    wait_for("/readyz to turn 200 again", Duration::from_secs(60), || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    agent.wait_metric("container_restarts_total", &[("container", &b.name)], 2.0);
    agent.wait_metric("container_restarts_total", &[("container", &a.name)], 1.0);
    agent.wait_metric("container_running", &[("container", &a.name)], 1.0);
    agent.wait_metric("containers_restarts_total", &[], 3.0);
    // After a barrier (the replay and reconcile are long done by then), the exact counts.
    agent.barrier(&*daemon, &[]);
    agent.assert_metric("container_restarts_total", &[("container", &b.name)], 2.0);
    agent.assert_metric("container_restarts_total", &[("container", &a.name)], 1.0);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    let m = agent.metrics();
    assert!(
        common::metric(&m, "lifecycle_agent_stream_reconnects_total", &[]).unwrap_or(0.0) >= 1.0
    );
    agent.assert_no_duplicate_events();
    // A start counted from inspect during the reconnect may have its event still on the way.
    wait_for(
        "b's three starts in the history",
        Duration::from_secs(20),
        || {
            let ev = agent.json(&format!("/api/v1/events?container={}&type=started", b.name));
            (ev["events"].as_array().map_or(0, Vec::len) == 3).then_some(())
        },
    );
    // And the counts stay: a second barrier, the same counts and no duplicate.
    agent.barrier(&*daemon, &[]);
    agent.assert_metric("container_restarts_total", &[("container", &b.name)], 2.0);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    agent.assert_no_duplicate_events();
    drop(a);
    drop(b);
    assert!(agent.stop().success(), "SIGTERM is a clean exit");
}
