//! The reliability rounds of issue 15's probe, kept so its perfect score stays measured:
//! the agent killed with SIGKILL while a container restarts, and the Docker daemon itself
//! restarted, round after round; after each round the agent's count must equal what
//! Docker's own event stream (`docker events`) reports, exactly, never one more.
//!
//! About 80 s against a private dockerd (20 kill rounds, 5 daemon restarts).

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{unique, Agent, DockerDaemon, Runtime, LOOP};

const KILL_ROUNDS: usize = 20;
const DAEMON_ROUNDS: usize = 5;

/// Now as Docker's `--since` takes it: Unix seconds with nanoseconds.
fn unix_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Starts of `name` in Docker's own event stream between `since` and now (the daemon keeps
/// its last 256 events, since it last started).
fn docker_starts(daemon: &DockerDaemon, name: &str, since: &str) -> usize {
    let until = unix_now();
    let out = daemon.docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=start",
        "--format",
        "{{.Status}}",
    ]);
    out.lines().filter(|l| l.trim() == "start").count()
}

/// The agent's restart count of `name` once it reached `want`, then again after a later
/// barrier container is seen: a late double count would show there.
fn settled_restarts(agent: &Agent, daemon: &DockerDaemon, name: &str, want: f64) -> f64 {
    agent.wait_metric("container_restarts_total", &[("container", name)], want);
    let barrier = daemon.run("rel-barrier", &[], LOOP);
    agent.wait_metric("container_running", &[("container", &barrier.name)], 1.0);
    common::metric(
        &agent.metrics(),
        "container_restarts_total",
        &[("container", name)],
    )
    .unwrap_or(-1.0)
}

fn restart(daemon: &DockerDaemon, name: &str) {
    daemon.docker_ok(&["restart", "-t", "1", name]);
}

#[test]
fn kill_9_and_daemon_restart_rounds_count_exactly_what_docker_reports() {
    let Some(daemon) = DockerDaemon::start_private() else {
        return;
    };
    let state = std::env::temp_dir().join(unique("rel-state"));
    let ctr = daemon.run("rel", &[], LOOP);
    let mut agent = Agent::start_with_state(&daemon.socket(), &state, &[]);
    agent.wait_metric("container_running", &[("container", &ctr.name)], 1.0);
    let mut expected = 0usize;

    for round in 0..KILL_ROUNDS {
        let since = unix_now();
        // One restart seen live, SIGKILL, one restart while the agent is away.
        restart(&daemon, &ctr.name);
        agent.kill9();
        restart(&daemon, &ctr.name);
        agent = Agent::start_with_state(&daemon.socket(), &state, &[]);
        let starts = docker_starts(&daemon, &ctr.name, &since);
        assert_eq!(starts, 2, "round {round}: Docker reports two starts");
        expected += starts;
        let seen = settled_restarts(&agent, &daemon, &ctr.name, expected as f64);
        assert_eq!(seen, expected as f64, "kill -9 round {round}");
    }

    for round in 0..DAEMON_ROUNDS {
        // The daemon goes away (the container dies with it) and comes back with an empty
        // event buffer; the container is started again.
        daemon.kill();
        daemon.launch();
        let since = unix_now();
        daemon.docker_ok(&["start", &ctr.name]);
        let starts = docker_starts(&daemon, &ctr.name, &since);
        assert_eq!(starts, 1, "daemon round {round}: Docker reports one start");
        expected += starts;
        agent.wait_metric("lifecycle_agent_runtime_connected", &[], 1.0);
        let seen = settled_restarts(&agent, &daemon, &ctr.name, expected as f64);
        assert_eq!(seen, expected as f64, "daemon restart round {round}");
    }

    let m = agent.metrics();
    assert_eq!(
        common::metric(&m, "containers_restarts_total", &[]),
        Some(expected as f64),
        "the node's total"
    );
    agent.assert_no_duplicate_events();
    eprintln!(
        "{KILL_ROUNDS} kill -9 rounds and {DAEMON_ROUNDS} daemon restarts: {expected} restarts, all counted once"
    );
    drop(ctr);
    assert!(agent.stop().success());
    remove(&state);
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
