//! Promises of the README that no other suite holds the agent to, each against a real
//! private dockerd: the API's 409 for an ambiguous name, the self-metrics by name and value,
//! a `tcp://` runtime socket, `--log-format json`, the `events` command's time window and
//! limit, and `--max-history` end to end.

mod common;

use std::time::Duration;

use common::{metric, unique, wait_for, Agent, DockerDaemon, Runtime, LOOP};
use serde_json::Value;

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// A label only this test's containers carry; the agent is filtered on it.
fn label(name: &str) -> String {
    format!("lat.test={}", unique(name))
}

fn c(name: &str) -> Vec<(&str, &str)> {
    vec![("container", name)]
}

#[test]
fn a_name_shared_by_two_pods_containers_is_409_and_an_id_is_not() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let l = label("ambiguous");
    let agent = Agent::on(&*d).filter(&l).start();
    let pod = |name: &str| {
        d.container("k8s")
            .label(&l)
            .pod("shop", &unique(name), &unique("uid"), "web", 0)
            .run(LOOP)
    };
    let (a, b) = (pod("a"), pod("b"));
    agent.wait_metric("containers_running", &[], 2.0);
    // `web` is the container name of both pods' identity.
    let (status, body) = agent.get("/api/v1/containers/web");
    assert_eq!(status, 409, "{body}");
    let err: Value = serde_json::from_str(&body).expect("an error object");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("matches 2 containers")),
        "{body}"
    );
    // Each container's own name or full id picks one.
    for ctr in [&a, &b] {
        let id = d.cli_ok(&["inspect", "-f", "{{.Id}}", &ctr.name]);
        let one = agent.json(&format!("/api/v1/containers/{id}"));
        assert_eq!(one["container_id"], id.as_str());
        assert_eq!(
            agent.json(&format!("/api/v1/containers/{}", ctr.name))["container_id"],
            id.as_str()
        );
    }
}

#[test]
fn self_metrics_count_by_name_and_value() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let l = label("selfmetrics");
    let state = std::env::temp_dir().join(unique("state"));
    let agent = Agent::on(&*d).state_dir(&state).filter(&l).start();
    let ephemeral = Agent::on(&*d).ephemeral().filter(&l).start();
    let ctr = d.run("self", &["--label", &l], LOOP);
    d.cli_ok(&["restart", "-t", "5", &ctr.name]);
    for a in [&agent, &ephemeral] {
        a.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
        a.barrier(&*d, &["--label", &l]);
    }
    let gauge = |a: &Agent, name: &str| metric(&a.metrics(), name, &[]);
    for a in [&agent, &ephemeral] {
        let held = a.events("limit=10000").len() as f64;
        assert!(
            held >= 7.0,
            "create, start, restart's events, barrier: {held}"
        );
        assert_eq!(gauge(a, "lifecycle_agent_history_events"), Some(held));
        // Every event this agent recorded is in its history, and none was a duplicate.
        assert_eq!(
            gauge(a, "lifecycle_agent_events_processed_total"),
            Some(held)
        );
        assert_eq!(
            gauge(a, "lifecycle_agent_events_duplicate_total"),
            Some(0.0)
        );
        assert_eq!(gauge(a, "lifecycle_agent_store_errors_total"), Some(0.0));
        assert_eq!(
            gauge(a, "lifecycle_agent_scrapes_rejected_total"),
            Some(0.0)
        );
    }
    // Ephemeral: nothing written. Durable: group commits (100 ms apart), at least one.
    assert_eq!(
        gauge(&ephemeral, "lifecycle_agent_store_writes_total"),
        Some(0.0)
    );
    wait_for("a store write", Duration::from_secs(10), || {
        (gauge(&agent, "lifecycle_agent_store_writes_total")? >= 1.0).then_some(())
    });
    let newest = agent.events("limit=1")[0]["time_unix_nano"]
        .as_i64()
        .expect("an event time");
    assert!(agent.stop().success());

    // Started again on its state: the replay from the saved cursor includes that last event
    // itself (Docker's `since` is inclusive), which is dropped as a duplicate, once. (The
    // live stream opens 2 s back; once the newest event is older, it brings none again.)
    wait_for(
        "the newest event to be 3 s old",
        Duration::from_secs(20),
        || (now_nanos() - newest > 3_000_000_000).then_some(()),
    );
    let again = Agent::on(&*d).state_dir(&state).filter(&l).start();
    again.barrier(&*d, &["--label", &l]);
    assert_eq!(
        gauge(&again, "lifecycle_agent_events_duplicate_total"),
        Some(1.0),
        "log: {}",
        again.log.display()
    );
    assert_eq!(
        gauge(&again, "lifecycle_agent_store_errors_total"),
        Some(0.0)
    );
    again.assert_metric("container_restarts_total", &c(&ctr.name), 1.0);
    let held = again.events("limit=10000").len() as f64;
    assert_eq!(gauge(&again, "lifecycle_agent_history_events"), Some(held));
    drop(again);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_tcp_runtime_socket_works_end_to_end() {
    let Some(d) = DockerDaemon::start_private_tcp() else {
        return;
    };
    let port = d.tcp_port.expect("a tcp port");
    let url = format!("tcp://127.0.0.1:{port}");
    wait_for("dockerd on tcp", Duration::from_secs(60), || {
        (common::get(port, "/_ping").0 == 200).then_some(())
    });
    let agent = Agent::builder("docker", &url).start();
    let ctr = d.run("tcp", &[], LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    d.cli_ok(&["restart", "-t", "5", &ctr.name]);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
    agent.barrier(&*d, &[]);
    agent.assert_metric("container_restarts_total", &c(&ctr.name), 1.0);
    agent.assert_metric("lifecycle_agent_runtime_connected", &[], 1.0);
    let ev = agent.events(&format!("container={}&type=started", ctr.name));
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev.iter().all(|e| e["runtime"] == "docker"), "{ev:?}");
    // `check` names the URL as the socket it would use.
    let out = std::process::Command::new(common::agent_bin())
        .args(["check", "--runtime", "docker", "--socket", &url])
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("would use: docker") && l.contains(&url)),
        "{text}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_level_message_and_target() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let l = label("jsonlog");
    let agent = Agent::on(&*d)
        .filter(&l)
        .args(&["--log-format", "json"])
        .start();
    let ctr = d.run("jsonlog", &["--label", &l], LOOP);
    d.cli_ok(&["restart", "-t", "5", &ctr.name]);
    agent.wait_metric("container_restarts_total", &c(&ctr.name), 1.0);
    agent.barrier(&*d, &["--label", &l]);
    drop(ctr);
    let (status, text) = agent.stop_with_log();
    assert!(status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // Start, runtime selected, events at debug level, shutdown.
    assert!(lines.len() >= 5, "{text}");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nin:\n{text}"));
        for key in ["level", "message", "target"] {
            assert!(
                v[key].as_str().is_some_and(|s| !s.is_empty()),
                "no {key} in {line}"
            );
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("\"stopped\"")),
        "the shutdown is logged: {text}"
    );
}

/// The `events` command's `--json` answer.
fn events_cli(agent: &Agent, args: &[&str]) -> Value {
    let out = std::process::Command::new(common::agent_bin())
        .arg("events")
        .args(args)
        .args(["--json", "--url", &agent.url()])
        .output()
        .expect("run events");
    assert!(
        out.status.success(),
        "events {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("events --json")
}

fn types(v: &Value) -> Vec<&str> {
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect()
}

#[test]
fn the_events_command_honours_since_until_and_limit() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let l = label("eventscli");
    let agent = Agent::on(&*d).filter(&l).start();
    let ctr = d.run("eventscli", &["--label", &l], "exit 3");
    agent.wait_metric("container_last_exit_code", &c(&ctr.name), 3.0);
    agent.barrier(&*d, &["--label", &l]);
    let mine = ["--container", ctr.name.as_str()];

    // Newest first, all three, nothing left out.
    let all = events_cli(&agent, &mine);
    assert_eq!(types(&all), ["died", "started", "created"], "{all}");
    assert_eq!(all["truncated"], false, "{all}");
    // --limit keeps the newest and says more match.
    let one = events_cli(&agent, &[mine[0], mine[1], "--limit", "1"]);
    assert_eq!(types(&one), ["died"], "{one}");
    assert_eq!(one["truncated"], true, "{one}");
    // --since and --until at the start's own time bracket exactly it (both inclusive).
    let start = all["events"][1]["time"]
        .as_str()
        .expect("a time")
        .to_string();
    let at = events_cli(
        &agent,
        &[mine[0], mine[1], "--since", &start, "--until", &start],
    );
    assert_eq!(types(&at), ["started"], "{at}");
    let from = events_cli(&agent, &[mine[0], mine[1], "--since", &start]);
    assert_eq!(types(&from), ["died", "started"], "{from}");
    let to = events_cli(&agent, &[mine[0], mine[1], "--until", &start]);
    assert_eq!(types(&to), ["started", "created"], "{to}");
    // Durations count back from now.
    assert_eq!(
        types(&events_cli(&agent, &[mine[0], mine[1], "--since", "1h"])).len(),
        3
    );
    assert!(types(&events_cli(&agent, &[mine[0], mine[1], "--until", "1h"])).is_empty());
    // The text form: a header, one line per event, and the note when more match.
    let out = std::process::Command::new(common::agent_bin())
        .args([
            "events",
            mine[0],
            mine[1],
            "--limit",
            "2",
            "--url",
            &agent.url(),
        ])
        .output()
        .expect("run events");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("TIME"), "{text}");
    assert!(
        lines[1].contains("died") && lines[2].contains("started"),
        "{text}"
    );
    assert!(lines[3].contains("raise --limit"), "{text}");
}

#[test]
fn max_history_keeps_the_newest_events_and_the_metric_agrees() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let l = label("maxhist");
    let agent = Agent::on(&*d)
        .filter(&l)
        .args(&["--max-history", "5"])
        .start();
    // created, started, then a stop's kill, died, stopped: already more than 5.
    let ctr = d.run("maxhist", &["--label", &l], LOOP);
    agent.wait_metric("container_running", &c(&ctr.name), 1.0);
    d.cli_ok(&["stop", "-t", "5", &ctr.name]);
    agent.wait_metric("container_running", &c(&ctr.name), 0.0);
    let sentinel = agent.barrier(&*d, &["--label", &l]);
    let held = agent.events("limit=10000");
    assert_eq!(held.len(), 5, "{held:?}");
    agent.assert_metric("lifecycle_agent_history_events", &[], 5.0);
    // The newest stayed: the barrier's own two events are the last; the container's first
    // events (created, started) left.
    let names: Vec<&str> = held.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(
        &names[..2],
        [sentinel.as_str(), sentinel.as_str()],
        "{held:?}"
    );
    let kinds: Vec<&str> = held.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(&kinds[..2], ["destroyed", "created"], "{held:?}");
    let mine: Vec<&Value> = held
        .iter()
        .filter(|e| e["name"] == ctr.name.as_str())
        .collect();
    assert_eq!(mine.len(), 3, "{held:?}");
    assert!(
        mine.iter()
            .all(|e| e["type"] != "created" && e["type"] != "started"),
        "the oldest events should have left: {held:?}"
    );
    // Restarts are not history: the counters still know everything.
    agent.assert_metric(
        "container_events_total",
        &[("container", &ctr.name), ("event", "started")],
        1.0,
    );
}
