//! What only Podman does, against private Podman services: health checks reported on every
//! check, pods and their infra containers, an event log that rotates, and `check` naming
//! Docker and Podman side by side. The lifecycle matrix both runtimes share is in
//! `lifecycle.rs`; a crashing service is in `podman_reconnect.rs`.

mod common;

use std::time::Duration;

use common::{wait_for, Agent, DockerDaemon, PodmanService, Runtime, LOOP};
use serde_json::Value;

fn c(name: &str) -> Vec<(&str, &str)> {
    vec![("container", name)]
}

fn history(agent: &Agent, query: &str) -> Vec<Value> {
    agent.events(query)
}

fn label(name: &str) -> String {
    format!("lat.test={}", common::unique(name))
}

#[test]
fn health_checks_count_status_changes_not_checks() {
    let Some(pm) = PodmanService::shared() else {
        return;
    };
    let l = label("health");
    let agent = Agent::start_on("podman", &pm.socket(), &["--container-filter", &l]);
    // Podman runs health checks from systemd timers, which these machines lack: the test
    // runs each check itself, as the timer would (`podman healthcheck run`).
    let ctr = pm.run(
        "health",
        &[
            "--label",
            &l,
            "--health-cmd",
            "test -e /ok",
            "--health-interval",
            "1h",
            "--health-retries",
            "2",
        ],
        LOOP,
    );
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    let mut checks = 0;
    for _ in 0..4 {
        let o = pm.cli(&["healthcheck", "run", &ctr.name]);
        assert!(!o.status.success(), "the check fails until /ok exists");
        checks += 1;
    }
    agent.wait_metric(
        "container_health_status",
        &[("container", &ctr.name), ("status", "unhealthy")],
        1.0,
    );
    pm.cli_ok(&["exec", &ctr.name, "touch", "/ok"]);
    for _ in 0..3 {
        pm.cli_ok(&["healthcheck", "run", &ctr.name]);
        checks += 1;
    }
    agent.wait_metric(
        "container_health_status",
        &[("container", &ctr.name), ("status", "healthy")],
        1.0,
    );
    // Podman emitted one health_status event per check; the agent keeps the changes.
    let ev = history(
        &agent,
        &format!("container={}&type=health_status", ctr.name),
    );
    let statuses: Vec<_> = ev
        .iter()
        .rev()
        .map(|e| e["health"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(statuses, ["starting", "unhealthy", "healthy"], "{ev:?}");
    assert!(checks > statuses.len());
    assert_eq!(
        common::metric(
            &agent.metrics(),
            "container_events_total",
            &[("container", &ctr.name), ("event", "health_status")]
        ),
        Some(3.0)
    );
    // The exec of the checks and of `touch` are not lifecycle events either.
    let all = history(&agent, &format!("container={}", ctr.name));
    let types: Vec<_> = all.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types.len(),
        5,
        "create, start and three health changes: {types:?}"
    );
}

#[test]
fn an_oom_kill_is_exit_137_without_an_oom_event() {
    let Some(pm) = PodmanService::shared() else {
        return;
    };
    let l = label("oom");
    let agent = Agent::start_on("podman", &pm.socket(), &["--container-filter", &l]);
    let ctr = pm.run(
        "oom",
        &["--label", &l, "--memory", "16m", "--memory-swap", "16m"],
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    agent.wait_metric("container_last_exit_code", &c(&ctr.name), 137.0);
    // What the README promises: Podman tells nothing of the OOM kill.
    agent.wait_metric(
        "container_last_terminated_reason",
        &[("container", &ctr.name), ("reason", "Error")],
        1.0,
    );
    agent.wait_metric("container_oom_kills_total", &c(&ctr.name), 0.0);
    assert_eq!(
        pm.cli_ok(&["inspect", "-f", "{{.State.OOMKilled}}", &ctr.name]),
        "false"
    );
    assert!(history(&agent, &format!("container={}&type=oom", ctr.name)).is_empty());
}

#[test]
fn pod_infra_containers_are_not_tracked_and_members_are() {
    let Some(pm) = PodmanService::start_private() else {
        return;
    };
    // No label filter: the infra container must be left out by the agent itself.
    let agent = Agent::start_on("podman", &pm.socket(), &[]);
    let pod = common::unique("pod");
    pm.pod_create(&pod, &[]);
    let member = common::unique("member");
    pm.cli_ok(&[
        "run",
        "-d",
        "--pod",
        &pod,
        "--name",
        &member,
        common::IMAGE,
        "/bin/sh",
        "-c",
        LOOP,
    ]);
    agent.wait_metric("container_running", &c(&member), 1.0);
    let infra_id = pm.cli_ok(&["pod", "inspect", "-f", "{{.InfraContainerID}}", &pod]);
    let infra_name = pm.cli_ok(&["inspect", "-f", "{{.Name}}", &infra_id]);
    assert_eq!(
        pm.cli_ok(&["inspect", "-f", "{{.State.Status}}", &infra_name]),
        "running"
    );
    agent.wait_metric("containers_tracked", &[], 1.0);
    agent.wait_metric("containers_running", &[], 1.0);

    // A pod restart restarts its members (one restart each) and its infra (not tracked).
    pm.cli_ok(&["pod", "restart", &pod]);
    agent.wait_metric("container_restarts_total", &c(&member), 1.0);
    agent.wait_metric("containers_restarts_total", &[], 1.0);
    pm.cli_ok(&["pod", "stop", "-t", "5", &pod]);
    agent.wait_metric("container_running", &c(&member), 0.0);

    // Adopted from list + inspect too: a second agent sees the same single container.
    let late = Agent::start_on("podman", &pm.socket(), &[]);
    late.wait_metric("containers_tracked", &[], 1.0);
    late.wait_metric("container_restarts_total", &c(&member), 0.0);
    let m = late.metrics();
    assert!(
        common::metric(&m, "container_running", &c(&infra_name)).is_none(),
        "{m}"
    );

    let infra_events = history(&agent, &format!("container={infra_id}"));
    assert!(infra_events.is_empty(), "{infra_events:?}");
    assert!(common::metric(&agent.metrics(), "container_running", &c(&infra_name)).is_none());
    for e in history(&agent, "limit=10000") {
        assert_ne!(e["container_id"], infra_id.as_str(), "infra event {e}");
    }
    pm.cli_ok(&["pod", "rm", "-f", "-t", "0", &pod]);
    agent.wait_metric("containers_tracked", &[], 0.0);
}

#[test]
fn a_rotating_event_log_is_not_a_lost_connection() {
    // A small log so that it rotates within the test (Podman's default is 1 MB).
    let Some(pm) = PodmanService::start_private_with(r#"events_logfile_max_size = "16k""#) else {
        return;
    };
    let agent = Agent::start_on("podman", &pm.socket(), &[]);
    let ctr = pm.run("rotate", &[], LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    let log = pm.event_log();
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    // Pause/unpause until the log has rotated at least twice (it shrinks each time).
    let mut rotations = 0;
    let mut last = size();
    let mut pairs = 0u64;
    wait_for(
        "the event log to rotate twice",
        Duration::from_secs(120),
        || {
            pm.cli_ok(&["pause", &ctr.name]);
            pm.cli_ok(&["unpause", &ctr.name]);
            pairs += 1;
            let now = size();
            if now < last {
                rotations += 1;
            }
            last = now;
            (rotations >= 2).then_some(())
        },
    );
    pm.cli_ok(&["restart", "-t", "5", &ctr.name]);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
    let n = pairs as f64;
    agent.wait_metric(
        "container_events_total",
        &[("container", &ctr.name), ("event", "paused")],
        n,
    );
    agent.wait_metric(
        "container_events_total",
        &[("container", &ctr.name), ("event", "unpaused")],
        n,
    );
    let m = agent.metrics();
    assert_eq!(
        common::metric(&m, "lifecycle_agent_stream_reconnects_total", &[]),
        Some(0.0),
        "a rotation must not look like a lost connection (log: {})",
        agent.log.display()
    );
    assert_eq!(
        common::metric(&m, "lifecycle_agent_events_possibly_missed_total", &[]),
        Some(0.0)
    );
}

#[test]
fn check_lists_docker_and_podman_with_versions_and_says_which_it_would_use() {
    let (Some(docker), Some(pm)) = (DockerDaemon::shared(), PodmanService::shared()) else {
        return;
    };
    let check = |args: &[&str], docker_host: &str| {
        let out = std::process::Command::new(common::agent_bin())
            .arg("check")
            .args(args)
            .env("DOCKER_HOST", docker_host)
            .env("CONTAINER_HOST", pm.url())
            .env("XDG_RUNTIME_DIR", "/nonexistent-xdg")
            .output()
            .expect("run check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let docker_version = docker.cli_ok(&["version", "-f", "{{.Server.Version}}"]);
    let (code, text) = check(&[], &docker.host());
    assert_eq!(code, Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("ok")
            && l.contains("docker")
            && l.contains(&docker_version)
            && l.contains(&docker.host())),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ok")
            && l.contains("podman")
            && l.contains("4.")
            && l.contains(&pm.url())),
        "{text}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("would use: docker") && last.contains(&docker.host()),
        "{text}"
    );

    let (code, text) = check(&["--runtime", "podman"], &docker.host());
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("docker"), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("would use: podman") && l.contains(&pm.url())),
        "{text}"
    );

    // auto without a Docker: Podman it is.
    let (code, text) = check(&[], "unix:///nonexistent/docker.sock");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("fail  docker"), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("would use: podman")),
        "{text}"
    );
}

#[test]
fn auto_runs_the_podman_source_on_a_podman_socket() {
    let Some(pm) = PodmanService::shared() else {
        return;
    };
    let l = label("auto");
    let agent = Agent::start_on("auto", &pm.socket(), &["--container-filter", &l]);
    let ctr = pm.run("auto", &["--label", &l], "exit 7");
    agent.wait_metric("container_last_exit_code", &c(&ctr.name), 7.0);
    let ev = history(&agent, &format!("container={}", ctr.name));
    // libpod's own words: `died`, not the compatibility layer's `die`.
    assert!(
        ev.iter()
            .any(|e| e["action"] == "died" && e["runtime"] == "podman"),
        "{ev:?}"
    );
    assert!(agent.metrics().contains(r#"runtime="podman""#));
}
