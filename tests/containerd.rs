//! What only containerd does, against a real, private containerd 1.6 driven over CRI as a
//! kubelet drives it (`common::containerd`): the count across an agent stopped (SIGTERM) or
//! killed (-9) and a containerd restart during attempts, an agent met late counting from the
//! attempt ordinal, containers of other containerd namespaces, and `check`. The lifecycle
//! matrix containerd shares with Docker and Podman (restarts, crash loops, OOM kills, pause,
//! kubelet replacement, the API) is `tests/lifecycle.rs`'s `::containerd`. Every test works in
//! a Kubernetes namespace of its own and runs an agent that tracks only that namespace
//! (`--container-filter`), so the tests share one containerd safely; the tests that restart
//! containerd have their own.
//!
//! Each body runs twice: `::containerd` (containerd's event stream + CRI) and `::crio` (the
//! generic CRI path, `--runtime crio`, which on containerd 1.6 relists every second since
//! `GetContainerEvents` is not implemented there).

mod common;

use std::time::Duration;

use common::containerd::{Containerd, Pod};
use common::{metric, types_of, wait_for, Agent, LOOP};

/// A Kubernetes namespace for one test, and the filter that keeps the agent on it.
struct Case {
    /// The agent's `--runtime`: `containerd` or `crio`.
    kind: &'static str,
    ns: String,
    filter: String,
}

impl Case {
    fn new(name: &str, kind: &'static str) -> Case {
        let ns = common::unique(name);
        Case {
            kind,
            filter: format!("io.kubernetes.pod.namespace={ns}"),
            ns,
        }
    }

    fn agent(&self, ctd: &Containerd, extra: &[&str]) -> Agent {
        Agent::builder(self.kind, ctd.socket())
            .filter(&self.filter)
            .args(extra)
            .start()
    }

    fn pod<'a>(&self, ctd: &'a Containerd, prefix: &str) -> Pod<'a> {
        ctd.pod(prefix, &self.ns)
    }
}

/// Runs one body on both paths: `NAME::containerd` and `NAME::crio`.
macro_rules! both_paths {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn containerd() {
                super::$body("containerd");
            }

            #[test]
            fn crio() {
                super::$body("crio");
            }
        }
    )*};
}

both_paths!(
    an_agent_started_late_counts_from_the_attempt_ordinal,
    removed_containers_and_pods_leave_their_series,
    the_count_equals_the_attempt_across_sigterm_kill_9_and_a_containerd_restart,
);

fn series<'a>(pod: &'a Pod, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("namespace", pod.namespace.as_str()),
        ("pod", pod.name.as_str()),
        ("container", container),
    ]
}

/// Starts a barrier container in `pod` and waits until the agent shows it running: every
/// event before it has been applied, so counts read afterwards are settled.
fn barrier(agent: &Agent, ctd: &Containerd, pod: &Pod, name: &str) -> String {
    let id = pod.run(name, 0, LOOP, None);
    agent.wait_metric("container_running", &series(pod, name), 1.0);
    ctd.stop(&id, 0);
    id
}

fn an_agent_started_late_counts_from_the_attempt_ordinal(kind: &'static str) {
    let Some(ctd) = Containerd::shared() else {
        return;
    };
    let case = Case::new("late", kind);
    let pod = case.pod(&ctd, "late");
    let app = series(&pod, "app");
    // Attempt 4 running, attempt 3 exited and kept, as the kubelet keeps the last one.
    let old = pod.run("app", 3, "exit 1", None);
    ctd.wait_exited(&old);
    pod.run("app", 4, LOOP, None);
    let agent = case.agent(&ctd, &[]);
    agent.wait_metric("container_running", &app, 1.0);
    barrier(&agent, &ctd, &pod, "barrier");
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "container_restarts_total", &app),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "lifecycle_agent_restarts_inferred_total", &[]),
        Some(4.0)
    );
    assert!(
        agent
            .events(&format!("pod={}&container=app&type=started", pod.name))
            .is_empty(),
        "inferred restarts are not in the history"
    );
}

fn removed_containers_and_pods_leave_their_series(kind: &'static str) {
    let Some(ctd) = Containerd::shared() else {
        return;
    };
    let case = Case::new("remove", kind);
    let agent = case.agent(&ctd, &[]);
    let pod = case.pod(&ctd, "remove");
    let app = series(&pod, "app");
    let id = pod.run("app", 0, LOOP, None);
    agent.wait_metric("container_running", &app, 1.0);
    ctd.stop(&id, 0);
    agent.wait_metric("container_last_exit_code", &app, 137.0);
    ctd.remove(&id);
    wait_for(
        "the removed container's series to go",
        Duration::from_secs(30),
        || {
            metric(&agent.metrics(), "container_running", &app)
                .is_none()
                .then_some(())
        },
    );
    let ev = agent.events(&format!("pod={}&container=app", pod.name));
    assert_eq!(
        types_of(&ev),
        vec!["created", "started", "died", "destroyed"],
        "{ev:?}"
    );
}

/// An agent on a state dir of the test's, ready.
fn agent_on_state(case: &Case, ctd: &Containerd, state: &std::path::Path) -> Agent {
    Agent::builder(case.kind, ctd.socket())
        .state_dir(state)
        .filter(&case.filter)
        .start()
}

/// Runs attempt `attempt` of `app` to its (failed) end.
fn failed_attempt(ctd: &Containerd, pod: &Pod, attempt: u32) {
    let id = pod.run("app", attempt, &format!("exit {}", attempt + 1), None);
    ctd.wait_exited(&id);
}

/// Settles (a barrier container seen running), then insists on `want` restarts.
fn settled_restarts(agent: &Agent, ctd: &Containerd, pod: &Pod, barrier_name: &str, want: f64) {
    let app = series(pod, "app");
    agent.wait_metric("container_restarts_total", &app, want);
    barrier(agent, ctd, pod, barrier_name);
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "container_restarts_total", &app),
        Some(want),
        "after settling ({barrier_name}): {m}"
    );
    assert_eq!(metric(&m, "containers_restarts_total", &[]), Some(want));
}

fn the_count_equals_the_attempt_across_sigterm_kill_9_and_a_containerd_restart(kind: &'static str) {
    let Some(ctd) = Containerd::start_private() else {
        return;
    };
    let case = Case::new("restarts", kind);
    let pod = case.pod(&ctd, "restarts");
    let app = series(&pod, "app");
    let state = tempfile::tempdir().expect("state dir");

    let agent = agent_on_state(&case, &ctd, state.path());
    failed_attempt(&ctd, &pod, 0);
    agent.wait_metric("container_last_exit_code", &app, 1.0);
    settled_restarts(&agent, &ctd, &pod, "b0", 0.0);

    // Stopped cleanly (SIGTERM) while attempt 1 happens.
    assert!(agent.stop().success());
    failed_attempt(&ctd, &pod, 1);
    let agent = agent_on_state(&case, &ctd, state.path());
    agent.wait_metric("container_last_exit_code", &app, 2.0);
    settled_restarts(&agent, &ctd, &pod, "b1", 1.0);

    // Killed (-9) while attempt 2 happens.
    agent.kill9();
    failed_attempt(&ctd, &pod, 2);
    let agent = agent_on_state(&case, &ctd, state.path());
    agent.wait_metric("container_last_exit_code", &app, 3.0);
    settled_restarts(&agent, &ctd, &pod, "b2", 2.0);
    assert!(
        agent
            .events(&format!("pod={}&container=app&type=started", pod.name))
            .len()
            == 1,
        "only the start that was seen is in the history"
    );

    // containerd crashes and comes back while attempt 3 happens; the agent stays up.
    ctd.restart();
    failed_attempt(&ctd, &pod, 3);
    agent.wait_metric("container_last_exit_code", &app, 4.0);
    settled_restarts(&agent, &ctd, &pod, "b3", 3.0);
    let m = agent.metrics();
    // containerd's event stream breaks with it; a relist may fall between its death and its
    // return (it is back within a second), which is no lost connection.
    if kind == "containerd" {
        assert!(
            metric(&m, "lifecycle_agent_stream_reconnects_total", &[]).unwrap_or(0.0) >= 1.0,
            "{m}"
        );
    }
    assert_eq!(
        metric(&m, "lifecycle_agent_runtime_connected", &[]),
        Some(1.0)
    );
    agent.assert_no_duplicate_events();
}

/// A container of another containerd namespace (as Docker's live in `moby`), run with
/// `ctr`; killed and deleted when dropped.
struct Native<'a> {
    ctd: &'a Containerd,
    ns: String,
    id: String,
}

impl Drop for Native<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = std::process::Command::new("ctr")
                .arg("-a")
                .arg(self.ctd.socket())
                .args(["-n", &self.ns, "task", "kill", "-s", "KILL", &self.id])
                .output();
            let _ = std::process::Command::new("ctr")
                .arg("-a")
                .arg(self.ctd.socket())
                .args(["-n", &self.ns, "task", "delete", "-f", &self.id])
                .output();
            let _ = std::process::Command::new("ctr")
                .arg("-a")
                .arg(self.ctd.socket())
                .args(["-n", &self.ns, "containers", "delete", &self.id])
                .output();
        }));
    }
}

#[test]
fn other_namespaces_are_not_counted_unless_asked_for() {
    let Some(ctd) = Containerd::shared() else {
        return;
    };
    let ns = common::unique("ns").replace('-', "x");
    let label = format!("lat.test={ns}");
    ctd.import_into(&ns);
    let id = common::unique("native");
    ctd.ctr(
        &ns,
        &[
            "run",
            "-d",
            "--label",
            &label,
            common::containerd::CRI_IMAGE,
            &id,
            "/bin/sh",
            "-c",
            LOOP,
        ],
    );
    let native = Native {
        ctd: &ctd,
        ns: ns.clone(),
        id: id.clone(),
    };
    let default = Agent::builder("containerd", ctd.socket())
        .filter(&label)
        .start();
    let namespaces = format!("k8s.io,{ns}");
    let wide = Agent::builder("containerd", ctd.socket())
        .filter(&label)
        .args(&["--containerd-namespaces", &namespaces])
        .start();
    let this = [("container", id.as_str())];
    wide.wait_metric("container_running", &this, 1.0);
    ctd.ctr(&ns, &["task", "kill", "-s", "KILL", &id]);
    wide.wait_metric("container_last_exit_code", &this, 137.0);
    wide.wait_metric("container_running", &this, 0.0);
    let ev = wide.events(&format!("container={id}"));
    assert_eq!(types_of(&ev), vec!["died"], "{ev:?}");

    // The default agent listed after the container ran and followed its stream while it
    // died: it never counted it.
    let m = default.metrics();
    assert_eq!(metric(&m, "containers_tracked", &[]), Some(0.0), "{m}");
    assert!(metric(&m, "container_running", &this).is_none(), "{m}");
    assert!(default.events("limit=100").is_empty());
    drop(native);
}

/// `lifecycle-agent check` with these arguments: its exit status and output.
fn check(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::agent_bin())
        .arg("check")
        .args(args)
        .env("LIFECYCLE_KUBE", "off")
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn check_names_containerd_with_its_version_whatever_was_asked() {
    let Some(ctd) = Containerd::shared() else {
        return;
    };
    let sock = ctd.socket().display().to_string();
    let endpoint = format!("unix://{sock}");
    for runtime in ["containerd", "auto", "crio"] {
        let (ok, out) = check(&["--runtime", runtime, "--socket", &sock]);
        assert!(ok, "--runtime {runtime}: {out}");
        assert!(
            out.starts_with("ok    containerd 1.6"),
            "--runtime {runtime}: {out}"
        );
        assert!(out.contains(&format!("at {endpoint} [--socket]")), "{out}");
        assert!(
            out.contains("would use: containerd 1.6"),
            "--runtime {runtime}: {out}"
        );
    }
    let (ok, out) = check(&["--runtime", "docker", "--socket", &sock]);
    assert!(!ok, "a containerd socket is no Docker socket: {out}");
}
