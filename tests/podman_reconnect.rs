//! The agent against a Podman service that crashes and comes back. Podman keeps working on
//! the node meanwhile (the CLI needs no service) and logs its events to the same file, so
//! unlike Docker nothing done during the outage is lost: it all comes back by replay.

mod common;

use std::time::Duration;

use common::{wait_for, Agent, Ctr, PodmanService, Runtime, IMAGE, LOOP};

#[test]
fn survives_a_service_crash_and_counts_actions_while_down_once() {
    let Some(pm) = PodmanService::start_private() else {
        return;
    };
    let agent = Agent::on(&*pm).start();
    let a = pm.run("crash-a", &[], LOOP);
    agent.wait_metric("container_running", &[("container", &a.name)], 1.0);
    agent.wait_metric("lifecycle_agent_runtime_connected", &[], 1.0);

    pm.kill();
    wait_for("/readyz to turn 503", Duration::from_secs(30), || {
        (agent.get("/readyz").0 == 503).then_some(())
    });
    agent.wait_metric("lifecycle_agent_runtime_connected", &[], 0.0);

    // While the service is down: restart `a`, run `b`, stop and start it.
    pm.local_ok(&["restart", "-t", "5", &a.name]);
    let b = Ctr::adopt(&*pm, &common::unique("crash-b"));
    pm.local_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &b.name,
        IMAGE,
        "/bin/sh",
        "-c",
        LOOP,
    ]);
    pm.local_ok(&["stop", "-t", "5", &b.name]);
    pm.local_ok(&["start", &b.name]);

    pm.launch();
    // Right away, while the agent is still backing off: one more restart of `b`.
    pm.cli_ok(&["restart", "-t", "5", &b.name]);

    wait_for("/readyz to turn 200 again", Duration::from_secs(60), || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    agent.wait_metric("container_restarts_total", &[("container", &a.name)], 1.0);
    agent.wait_metric("container_restarts_total", &[("container", &b.name)], 2.0);
    agent.wait_metric("container_running", &[("container", &a.name)], 1.0);
    agent.wait_metric("container_running", &[("container", &b.name)], 1.0);
    agent.wait_metric("containers_restarts_total", &[], 3.0);
    agent.barrier(&*pm, &[]);
    agent.assert_metric("container_restarts_total", &[("container", &a.name)], 1.0);
    agent.assert_metric("container_restarts_total", &[("container", &b.name)], 2.0);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    let m = agent.metrics();
    assert!(
        common::metric(&m, "lifecycle_agent_stream_reconnects_total", &[]).unwrap_or(0.0) >= 1.0
    );
    // Podman's log held everything since the last event processed: no gap. (A restart
    // racing the reconnect's list + inspect may be counted from inspect before its event
    // arrives; it is still counted once, and its event still reaches the history.)
    assert_eq!(
        common::metric(&m, "lifecycle_agent_events_possibly_missed_total", &[]),
        Some(0.0),
        "log: {}",
        agent.log.display()
    );
    // A restart counted from inspect during the reconnect has its event still on the way
    // (Podman's service tails its log file): wait for it rather than racing it.
    let started = |name: &str| {
        agent.json(&format!("/api/v1/events?container={name}&type=started"))["events"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for(
        "b's three starts in the history",
        Duration::from_secs(20),
        || (started(&b.name) == 3).then_some(()),
    );
    wait_for(
        "a's two starts in the history",
        Duration::from_secs(20),
        || (started(&a.name) == 2).then_some(()),
    );
    // And the counts stay: a second barrier, the same counts.
    agent.barrier(&*pm, &[]);
    agent.assert_metric("containers_restarts_total", &[], 3.0);
    assert_eq!((started(&a.name), started(&b.name)), (2, 3));
    agent.assert_no_duplicate_events();
    // The outage's own events are in the history: replayed, not inferred.
    drop(a);
    drop(b);
    assert!(agent.stop().success(), "SIGTERM is a clean exit");
}
