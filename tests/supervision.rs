//! The agent supervises its tasks: one that panics makes the process exit non-zero within a
//! second, naming the task (`docs/design.md`, "Supervision"). The real binary, with the
//! test-only fault hook `LIFECYCLE_FAULT`, against a private dockerd (the runtime task) and
//! the fake API server (the kube task).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fake_kube::FakeKube;
use common::{agent_bin, unique, DockerDaemon, Runtime};

/// How long the agent may take from the panic to its exit.
const EXIT_WITHIN: Duration = Duration::from_secs(1);

/// A socket nobody listens on: the runtime task keeps retrying discovery, as on a node
/// whose runtime is not up yet.
const NO_RUNTIME: &str = "/nonexistent/lifecycle-agent-test.sock";

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Run {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(["--listen", "127.0.0.1:0", "--node-name", "test-node"])
            .args(["--log-format", "json", "--log-level", "info"])
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .env_remove("LIFECYCLE_FAULT")
            .env("LIFECYCLE_KUBE", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Run {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle`; returns when it was read.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return Instant::now();
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for the process to exit; returns its status and when it was seen.
    fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Instant)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return Some((status, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn rest_of_log(&mut self) -> String {
        // The reader thread ends with the process; what it read is all there is.
        self.log.extend(self.lines.try_iter());
        self.log.join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an agent whose `task` panics, and checks it exits 1 within [`EXIT_WITHIN`] of the
/// panic, saying which task ended and why.
fn exits_when_it_panics(task: &str, args: &[&str], env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.push(("LIFECYCLE_FAULT", task));
    let mut run = Run::spawn(args, &env);
    let panicked = run.wait_line("this task panics on purpose", Duration::from_secs(60));
    let Some((status, exited)) = run.wait_exit(Duration::from_secs(10)) else {
        panic!(
            "the agent still runs 10 s after its {task} task panicked; log:\n{}",
            run.rest_of_log()
        );
    };
    let log = run.rest_of_log();
    let took = exited.duration_since(panicked);
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        took < EXIT_WITHIN,
        "exited {took:?} after the panic; log:\n{log}"
    );
    assert!(
        log.contains(&format!("the {task} task ended unexpectedly: it panicked")),
        "the reason is given; log:\n{log}"
    );
}

#[test]
fn a_panicking_runtime_task_ends_the_agent() {
    let Some(docker) = DockerDaemon::shared() else {
        return;
    };
    let socket = docker.socket();
    let socket = socket.to_str().expect("utf-8 path");
    exits_when_it_panics(
        "runtime",
        &["--runtime", "docker", "--socket", socket, "--ephemeral"],
        &[],
    );
}

#[test]
fn a_panicking_kube_task_ends_the_agent() {
    let fake = FakeKube::start();
    let kubeconfig = fake.kubeconfig();
    exits_when_it_panics(
        "kube",
        &["--socket", NO_RUNTIME, "--ephemeral", "--kube", "on"],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    );
}

#[test]
fn a_panicking_store_flusher_ends_the_agent() {
    let state = std::env::temp_dir().join(unique("supervision-state"));
    exits_when_it_panics(
        "flusher",
        &["--socket", NO_RUNTIME, "--state-dir", path(&state)],
        &[],
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// The control: without a fault the same agent keeps running until told to stop, and a
/// signal is a clean stop (exit 0), not a task failure.
#[test]
fn without_a_fault_the_agent_runs_until_a_signal() {
    let state = std::env::temp_dir().join(unique("supervision-state"));
    let mut run = Run::spawn(&["--socket", NO_RUNTIME, "--state-dir", path(&state)], &[]);
    run.wait_line("serving metrics and API", Duration::from_secs(60));
    assert!(
        run.wait_exit(Duration::from_secs(2)).is_none(),
        "the agent exited on its own; log:\n{}",
        run.rest_of_log()
    );
    let pid = run.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, _) = run
        .wait_exit(Duration::from_secs(30))
        .expect("the agent stops on SIGTERM");
    let log = run.rest_of_log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(!log.contains("ended unexpectedly"), "log:\n{log}");
    let _ = std::fs::remove_dir_all(&state);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
