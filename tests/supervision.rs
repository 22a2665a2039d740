//! The agent supervises its tasks: one that panics makes the process exit non-zero within a
//! second, naming the task (`docs/design.md`, "Supervision"). The real binary, with the
//! test-only fault hook `LIFECYCLE_FAULT`, against a private dockerd (the runtime task and
//! the store flusher mid-session) and the fake API server (the kube task); each fault fires
//! once as the task starts and once mid-session, when the task is seen at work.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fake_kube::FakeKube;
use common::{agent_bin, unique, DockerDaemon, Runtime, LOOP};

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
            // The panic hook would symbolize a backtrace of this debug build first, which
            // takes over a second under load; the exit after the panic is what is measured.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
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

/// When the fault fires: as the task starts its work, or mid-session, once the agent
/// shows the task working (`working` is true of its port) and the test then creates the
/// trigger file.
enum When {
    AtStart,
    MidSession(fn(u16) -> bool),
}

/// Runs an agent whose `task` panics, and checks it exits 1 within [`EXIT_WITHIN`] of the
/// panic, saying which task ended and why.
fn exits_when_it_panics(task: &str, when: When, args: &[&str], env: &[(&str, &str)]) {
    let trigger = std::env::temp_dir().join(unique("supervision-trigger"));
    let ready = trigger.with_extension("addr");
    let fault = match when {
        When::AtStart => task.to_string(),
        When::MidSession(_) => format!("{task}@{}", path(&trigger)),
    };
    let mut env = env.to_vec();
    env.push(("LIFECYCLE_FAULT", &fault));
    let mut args = args.to_vec();
    args.extend(["--ready-file", path(&ready)]);
    let mut run = Run::spawn(&args, &env);
    if let When::MidSession(working) = when {
        let port = wait_listening(&mut run, &ready);
        common::wait_for(
            &format!("the {task} task to be at work"),
            Duration::from_secs(60),
            || {
                assert!(
                    run.child.try_wait().expect("wait for the agent").is_none(),
                    "the agent exited before the fault; log:\n{}",
                    run.rest_of_log()
                );
                working(port).then_some(())
            },
        );
        std::fs::write(&trigger, b"").expect("create the trigger file");
    }
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
    let _ = std::fs::remove_file(&trigger);
    let _ = std::fs::remove_file(&ready);
}

/// Waits (bounded) until the agent wrote its address to its ready file; returns the port.
fn wait_listening(run: &mut Run, ready: &Path) -> u16 {
    common::wait_for("the agent to listen", Duration::from_secs(60), || {
        assert!(
            run.child.try_wait().expect("wait for the agent").is_none(),
            "the agent exited at start; log:\n{}",
            run.rest_of_log()
        );
        common::agent::ready_addr(ready)
    })
    .port()
}

/// Whether a scrape of the agent on `port` has `name` at `want` or more.
fn metric_at_least(port: u16, name: &str, want: f64) -> bool {
    let (status, text) = common::http::get(port, "/metrics");
    status == 200 && common::metric(&text, name, &[]).is_some_and(|v| v >= want)
}

fn docker_args(docker: &DockerDaemon) -> Vec<String> {
    let socket = docker.socket();
    vec![
        "--runtime".into(),
        "docker".into(),
        "--socket".into(),
        path(&socket).into(),
    ]
}

#[test]
fn a_panicking_runtime_task_ends_the_agent() {
    let Some(docker) = DockerDaemon::shared() else {
        return;
    };
    let args = docker_args(&docker);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--ephemeral");
    exits_when_it_panics("runtime", When::AtStart, &args, &[]);
    // Mid-session: synced with the runtime and serving, then the watcher panics.
    let synced: fn(u16) -> bool = |port| {
        common::http::get(port, "/readyz").0 == 200
            && metric_at_least(port, "lifecycle_agent_runtime_connected", 1.0)
    };
    exits_when_it_panics("runtime", When::MidSession(synced), &args, &[]);
}

#[test]
fn a_panicking_kube_task_ends_the_agent() {
    let fake = FakeKube::start();
    let kubeconfig = fake.kubeconfig();
    let env = [("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))];
    let args = ["--socket", NO_RUNTIME, "--ephemeral", "--kube", "on"];
    exits_when_it_panics("kube", When::AtStart, &args, &env);
    // Mid-session: the pods are listed and watched, then the pod watcher panics.
    let watching: fn(u16) -> bool = |port| metric_at_least(port, "lifecycle_agent_kube_up", 1.0);
    exits_when_it_panics("kube", When::MidSession(watching), &args, &env);
}

#[test]
fn a_panicking_store_flusher_ends_the_agent() {
    let state = std::env::temp_dir().join(unique("supervision-state"));
    exits_when_it_panics(
        "flusher",
        When::AtStart,
        &["--socket", NO_RUNTIME, "--state-dir", path(&state)],
        &[],
    );
    let _ = std::fs::remove_dir_all(&state);
    // Mid-session: the store has taken writes (a container the runtime's sync found), then
    // the flusher panics.
    let Some(docker) = DockerDaemon::shared() else {
        return;
    };
    let _ctr = docker.run("flushed", &[], LOOP);
    let args = docker_args(&docker);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--state-dir", path(&state)]);
    let wrote: fn(u16) -> bool =
        |port| metric_at_least(port, "lifecycle_agent_store_writes_total", 1.0);
    exits_when_it_panics("flusher", When::MidSession(wrote), &args, &[]);
    let _ = std::fs::remove_dir_all(&state);
}

/// The control: without a fault the same agent keeps running until told to stop, and a
/// signal is a clean stop (exit 0), not a task failure.
#[test]
fn without_a_fault_the_agent_runs_until_a_signal() {
    let state = std::env::temp_dir().join(unique("supervision-state"));
    let ready = state.with_extension("addr");
    let mut run = Run::spawn(
        &[
            "--socket",
            NO_RUNTIME,
            "--state-dir",
            path(&state),
            "--ready-file",
            path(&ready),
        ],
        &[],
    );
    wait_listening(&mut run, &ready);
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
    let _ = std::fs::remove_file(&ready);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
