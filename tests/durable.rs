//! Durable state against a real dockerd: counters continue across agent restarts and crashes,
//! missed events are replayed once, and an unusable state file never stops the agent.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{unique, wait_for, Agent, DockerDaemon, Runtime, LOOP};
use serde_json::Value;

/// `docker events` for one label, recorded to a file: what the runtime really did.
struct Recorder {
    child: Child,
    file: PathBuf,
}

impl Recorder {
    fn start(d: &DockerDaemon, label: &str) -> Recorder {
        let file = std::env::temp_dir().join(unique("events"));
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("docker")
            .args([
                "-H",
                &d.host(),
                "events",
                "--filter",
                &format!("label={label}"),
                "--filter",
                "type=container",
                "--format",
                "{{json .}}",
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Recorder { child, file };
        // Proves the subscription is live before the test acts. A marker made before the
        // client subscribed is never reported, so another is made until one is (bounded).
        for _ in 0..10 {
            let marker = d.create("marker", &["--label", label], "true");
            let seen = common::wait_for_result(Duration::from_secs(2), || {
                r.events()
                    .iter()
                    .any(|e| e["Actor"]["Attributes"]["name"] == marker.name.as_str())
            });
            if seen {
                return r;
            }
        }
        panic!("docker events recorded none of 10 markers within 20 s");
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `start` actions per container name.
    fn starts(&self) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for e in self.events().iter().filter(|e| e["Action"] == "start") {
            let name = e["Actor"]["Attributes"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *m.entry(name).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(unique("state"))
}

fn history(agent: &Agent, query: &str) -> Vec<Value> {
    agent.events(&format!("limit=10000&{query}"))
}

/// Waits until every container's restart counter equals what docker did (starts - 1), then,
/// after a barrier on `label`, checks each count and history again: exactly, not "at least".
fn assert_counts_match(
    agent: &Agent,
    d: &DockerDaemon,
    label: &str,
    rec: &Recorder,
    names: &[String],
) {
    let starts = rec.starts();
    for n in names {
        let want = starts.get(n).copied().unwrap_or(0).saturating_sub(1) as f64;
        agent.wait_metric("container_restarts_total", &[("container", n)], want);
        // A start counted from inspect may have its event still on the way: wait for it.
        let want = starts.get(n).copied().unwrap_or(0) as usize;
        wait_for(
            &format!("{n}: {want} started events in the history, as docker saw"),
            Duration::from_secs(20),
            || (history(agent, &format!("container={n}&type=started")).len() == want).then_some(()),
        );
    }
    agent.barrier(d, &["--label", label]);
    for n in names {
        let want = starts.get(n).copied().unwrap_or(0);
        agent.assert_metric(
            "container_restarts_total",
            &[("container", n)],
            want.saturating_sub(1) as f64,
        );
        let got = history(agent, &format!("container={n}&type=started")).len();
        assert_eq!(got, want as usize, "{n}: started events after the barrier");
    }
}

fn label() -> String {
    format!("lat.durable={}", unique("d"))
}

#[test]
fn restarts_while_the_agent_is_down_continue_the_counter_with_original_times() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let c = d.run("durable", &["--label", &label], LOOP);
    let sel = [("container", c.name.as_str())];
    d.docker_ok(&["restart", "-t", "5", &c.name]);
    agent.wait_metric("container_restarts_total", &sel, 1.0);
    assert!(agent.stop().success());

    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = chrono_now();
        d.docker_ok(&["restart", "-t", "5", &c.name]);
        windows.push((before, chrono_now()));
    }
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    agent.wait_metric("container_restarts_total", &sel, 4.0);
    agent.wait_metric("containers_restarts_total", &[], 4.0);
    agent.barrier(&*d, &["--label", &label]);
    agent.assert_metric("container_restarts_total", &sel, 4.0);
    agent.assert_metric("containers_restarts_total", &[], 4.0);
    let restarted = history(&agent, &format!("container={}&type=restarted", c.name));
    assert_eq!(restarted.len(), 4, "{restarted:?}");
    // Newest first: the last three are the ones done while the agent was down, at their own times.
    for (e, (from, to)) in restarted.iter().take(3).rev().zip(&windows) {
        let t = e["time_unix_nano"].as_i64().unwrap();
        assert!(
            *from <= t && t <= *to,
            "event time {t} outside its action's window {from}..{to}"
        );
    }
    assert_eq!(
        common::metric(
            &agent.metrics(),
            "lifecycle_agent_events_possibly_missed_total",
            &[]
        ),
        Some(0.0)
    );
    assert_eq!(
        common::metric(
            &agent.metrics(),
            "lifecycle_agent_restarts_inferred_total",
            &[]
        ),
        Some(0.0)
    );
    agent.assert_no_duplicate_events();
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn history_retention_drops_what_aged_out_while_stopped_and_keeps_what_is_new() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let c = d.run("retained", &["--label", &label], LOOP);
    let mine = format!("container={}", c.name);
    wait_for(
        "the create and start in the history",
        Duration::from_secs(20),
        || (history(&agent, &mine).len() == 2).then_some(()),
    );
    let newest = history(&agent, &mine)[0]["time_unix_nano"]
        .as_i64()
        .expect("event time");
    assert!(agent.stop().success());
    // The events age past the retention the next start is given.
    wait_for("the events to be 3 s old", Duration::from_secs(20), || {
        (chrono_now() - newest > 3_000_000_000).then_some(())
    });
    let agent = Agent::on(&*d)
        .state_dir(&state)
        .filter(&label)
        .args(&["--history-retention", "3s"])
        .start();
    wait_for(
        "the aged events to leave the history",
        Duration::from_secs(20),
        || history(&agent, &mine).is_empty().then_some(()),
    );
    d.docker_ok(&["restart", "-t", "5", &c.name]);
    wait_for(
        "the new restart in the history",
        Duration::from_secs(20),
        || (history(&agent, &format!("{mine}&type=restarted")).len() == 1).then_some(()),
    );
    agent.wait_metric("container_restarts_total", &[("container", &c.name)], 1.0);
    agent.barrier(&*d, &["--label", &label]);
    agent.assert_metric("container_restarts_total", &[("container", &c.name)], 1.0);
    assert_eq!(history(&agent, &format!("{mine}&type=restarted")).len(), 1);
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One lifecycle action on a container, cycling restart, pause, unpause, stop, start.
fn act(d: &DockerDaemon, name: &str, step: usize) {
    let args: Vec<&str> = match step % 5 {
        0 => vec!["restart", "-t", "5", name],
        1 => vec!["pause", name],
        2 => vec!["unpause", name],
        3 => vec!["stop", "-t", "5", name],
        _ => vec!["start", name],
    };
    d.docker_ok(&args);
}

#[test]
fn kill_9_in_the_middle_of_a_burst_loses_and_doubles_nothing() {
    // Its own daemon: replays depend on what is in Docker's 256-event buffer.
    let Some(d) = DockerDaemon::start_private() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let rec = Recorder::start(&d, &label);
    let mut agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let ctrs: Vec<_> = (0..4)
        .map(|_| d.run("burst", &["--label", &label], LOOP))
        .collect();
    let names: Vec<String> = ctrs.iter().map(|c| c.name.clone()).collect();
    for i in 0..200 {
        if i == 100 {
            agent.kill9();
            agent = Agent::on(&*d).state_dir(&state).filter(&label).spawn();
        }
        act(&d, &names[i % 4], i / 4);
    }
    agent.wait_ready();
    assert_counts_match(&agent, &d, &label, &rec, &names);
    let starts: u64 = rec
        .starts()
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(_, v)| v - 1)
        .sum();
    agent.wait_metric("containers_restarts_total", &[], starts as f64);
    agent.barrier(&*d, &["--label", &label]);
    agent.assert_metric("containers_restarts_total", &[], starts as f64);
    agent.assert_no_duplicate_events();
    drop(ctrs);
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn twenty_agent_restarts_under_a_steady_stream_leave_no_duplicates() {
    // Its own daemon: replays depend on what is in Docker's 256-event buffer.
    let Some(d) = DockerDaemon::start_private() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let rec = Recorder::start(&d, &label);
    // The agent sees the container from its creation, so every start is in the history.
    let first = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let c = d.run("steady", &["--label", &label], LOOP);
    let name = c.name.clone();
    first.wait_metric("container_running", &[("container", name.as_str())], 1.0);
    assert!(first.stop().success());
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let d = d.clone();
        let stop = stop.clone();
        let name = name.clone();
        std::thread::spawn(move || {
            for step in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                act(&d, &name, step);
            }
        })
    };
    for _ in 0..20 {
        let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
        assert!(agent.stop().success());
    }
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    assert_counts_match(&agent, &d, &label, &rec, std::slice::from_ref(&name));
    agent.assert_no_duplicate_events();
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_gap_longer_than_dockers_buffer_is_reported() {
    // Its own daemon: replays depend on what is in Docker's 256-event buffer.
    let Some(d) = DockerDaemon::start_private() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let c = d.run("gap", &["--label", &label], LOOP);
    agent.wait_metric("container_running", &[("container", c.name.as_str())], 1.0);
    assert!(agent.stop().success());
    // Docker keeps its last 256 events (all containers on the daemon): 300 here.
    for i in 0..300 {
        d.docker_ok(&[if i % 2 == 0 { "pause" } else { "unpause" }, &c.name]);
    }
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    agent.wait_metric("lifecycle_agent_events_possibly_missed_total", &[], 1.0);
    agent.wait_metric("container_running", &[("container", c.name.as_str())], 1.0);
    agent.wait_metric("container_paused", &[("container", c.name.as_str())], 0.0);
    agent.barrier(&*d, &["--label", &label]);
    agent.assert_metric("lifecycle_agent_events_possibly_missed_total", &[], 1.0);
    drop(c);
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_container_first_met_in_a_partial_replay_starts_from_restart_count() {
    // Its own daemon: replays depend on what is in Docker's 256-event buffer.
    let Some(d) = DockerDaemon::start_private() else {
        return;
    };
    let label = label();
    let state = state_dir();
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    let first = d.run("before", &["--label", &label], LOOP);
    agent.wait_metric(
        "container_running",
        &[("container", first.name.as_str())],
        1.0,
    );
    assert!(agent.stop().success());
    // While the agent is stopped: a container that fails 3 times (its restart policy
    // restarts it), then runs until told to fail once more.
    let script = "n=$(cat /n 2>/dev/null || echo 0); echo $((n+1)) > /n; \
        [ \"$n\" -lt 3 ] && exit 1; trap 'exit 0' TERM; \
        while [ ! -f /fail ]; do sleep 0.1; done; rm /fail; exit 1";
    let c = d.run(
        "policy",
        &["--label", &label, "--restart", "on-failure"],
        script,
    );
    // Docker counts a restart when it schedules it, and calls a container in its back-off
    // running: wait for the start itself.
    let restart_count = |d: &DockerDaemon| {
        let f = "{{.RestartCount}} {{.State.Running}} {{.State.Restarting}}";
        d.docker_ok(&["inspect", "-f", f, &c.name])
            .trim()
            .to_string()
    };
    wait_for("3 policy restarts", Duration::from_secs(30), || {
        (restart_count(&d) == "3 true false").then_some(())
    });
    // Docker keeps its last 256 events (all containers): 300 push out the beginning.
    for i in 0..300 {
        d.docker_ok(&[if i % 2 == 0 { "pause" } else { "unpause" }, &first.name]);
    }
    // Its 4th restart is in what Docker still holds: the agent meets it there first.
    d.docker_ok(&["exec", &c.name, "touch", "/fail"]);
    wait_for("the 4th policy restart", Duration::from_secs(30), || {
        (restart_count(&d) == "4 true false").then_some(())
    });
    let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
    agent.wait_metric("lifecycle_agent_events_possibly_missed_total", &[], 1.0);
    let id = [("container", c.name.as_str())];
    agent.wait_metric("container_running", &id, 1.0);
    agent.wait_metric("container_restarts_total", &id, 4.0);
    // The replayed restart is in the history, the lost ones are not.
    let started = agent.events(&format!("container={}&type=started", c.name));
    assert_eq!(started.len(), 1, "{started:?}");
    drop((c, first));
    drop(agent);
    let _ = std::fs::remove_dir_all(state);
}

fn corrupt(dir: &Path, how: &str) {
    let f = dir.join("state.redb");
    match how {
        "garbage" => std::fs::write(&f, vec![0xA5u8; 4096]).unwrap(),
        _ => {
            let len = std::fs::metadata(&f).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
    }
}

#[test]
fn a_truncated_or_garbage_state_file_is_moved_aside_and_reported() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    for how in ["garbage", "truncate"] {
        let label = label();
        let state = state_dir();
        let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
        let c = d.run("corrupt", &["--label", &label], LOOP);
        agent.wait_metric("container_running", &[("container", c.name.as_str())], 1.0);
        assert!(agent.stop().success());
        corrupt(&state, how);
        let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
        agent.wait_metric("lifecycle_agent_store_recoveries_total", &[], 1.0);
        agent.wait_metric("container_running", &[("container", c.name.as_str())], 1.0);
        agent.barrier(&*d, &["--label", &label]);
        agent.assert_metric("lifecycle_agent_store_recoveries_total", &[], 1.0);
        let kept = std::fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".bad-"))
            .count();
        assert_eq!(kept, 1, "{how}: the unusable file is kept aside");
        assert!(
            agent.log_text().contains("state file unusable"),
            "{how}: logged"
        );
        // The rebuilt store works: a restart is persisted and survives the next start.
        d.docker_ok(&["restart", "-t", "5", &c.name]);
        agent.wait_metric(
            "container_restarts_total",
            &[("container", c.name.as_str())],
            1.0,
        );
        assert!(agent.stop().success());
        let agent = Agent::on(&*d).state_dir(&state).filter(&label).start();
        agent.wait_metric(
            "container_restarts_total",
            &[("container", c.name.as_str())],
            1.0,
        );
        agent.wait_metric("lifecycle_agent_store_recoveries_total", &[], 0.0);
        agent.barrier(&*d, &["--label", &label]);
        agent.assert_metric(
            "container_restarts_total",
            &[("container", c.name.as_str())],
            1.0,
        );
        drop(c);
        drop(agent);
        let _ = std::fs::remove_dir_all(state);
    }
}

#[test]
fn a_second_agent_on_the_same_state_dir_refuses_clearly() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    let state = state_dir();
    let first = Agent::on(&*d).state_dir(&state).start();
    let (status, log) = Agent::on(&*d)
        .state_dir(&state)
        .run_to_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("in use by another process"), "{log}");
    drop(first);
    let _ = std::fs::remove_dir_all(state);
}
