//! The agent as a child process, started through one builder ([`Agent::on`]), and the
//! readers of its HTTP surface that the suites share.
//!
//! The agent binds port 0 and writes the address it got to a ready file (`--ready-file`,
//! README "Configuration"): the harness reads the address from there, never from log
//! wording, and no port can be taken by another test between a probe and the bind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::runtime::Runtime;
use super::{http, metric, unique, wait_for, wait_for_result};

/// The agent's `--ready-file`, in its directory.
const READY_FILE: &str = "addr";

/// The `--node-name` every harness agent runs with.
pub const NODE: &str = "test-node";

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifecycle-agent")
}

/// Where the agent keeps its store.
enum StateDir {
    /// A fresh directory of this handle's own, removed with it.
    Fresh,
    /// A directory the test owns (kept after the agent stops: the next agent reads it).
    At(PathBuf),
    /// `--ephemeral`: nothing written.
    Ephemeral,
}

/// How to start an agent: the runtime it watches, its state, and whatever flags and
/// environment a test adds. Kubernetes is off unless a test turns it on (`--kube on` wins
/// over the environment): the machine's own kubeconfig or cluster must never leak into a test.
pub struct AgentBuilder {
    kind: String,
    socket: String,
    node_name: Option<String>,
    state: StateDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u32>,
}

impl AgentBuilder {
    /// Keeps the store in `dir`, which outlives the agent (restarts, crashes).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state = StateDir::At(dir.to_path_buf());
        self
    }

    /// Runs `--ephemeral`.
    pub fn ephemeral(mut self) -> Self {
        self.state = StateDir::Ephemeral;
        self
    }

    /// Tracks only containers carrying `label` (`KEY=VALUE`): tests share a daemon safely.
    pub fn filter(self, label: &str) -> Self {
        self.args(&["--container-filter", label])
    }

    /// No `--node-name`: the agent takes it from the environment, the file or the host.
    pub fn without_node_name(mut self) -> Self {
        self.node_name = None;
        self
    }

    /// More flags after the harness's own.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Runs the agent under `ulimit -n limit` (file descriptors), as a tight pod would.
    pub fn nofile_limit(mut self, limit: u32) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// An environment variable for the agent process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the agent and waits until it listens (not until it is ready).
    pub fn spawn(self) -> Agent {
        let (child, dir) = self.launch();
        let mut agent = Agent {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            port: 0,
            log: dir.join("agent.log"),
            dir,
        };
        agent.addr = agent.wait_listening();
        agent.port = agent.addr.port();
        agent
    }

    /// Runs an agent that is expected to stop by itself (a refused start): its exit status and
    /// log once it exits. Panics if it is still running after `timeout`.
    pub fn run_to_exit(self, timeout: Duration) -> (ExitStatus, String) {
        let (mut child, dir) = self.launch();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent still ran after {timeout:?} (log: {})",
                    dir.join("agent.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (status, log)
    }

    /// Starts the process: its log (stdout and stderr), ready file and fresh state dir live
    /// in a directory of its own.
    fn launch(self) -> (Child, PathBuf) {
        let dir = std::env::temp_dir().join(unique("agent"));
        std::fs::create_dir_all(&dir).expect("the agent's directory");
        let logf = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            self.kind,
            "--socket".into(),
            self.socket,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--ready-file".into(),
            dir.join(READY_FILE).display().to_string(),
            "--log-level".into(),
            "lifecycle_agent=debug".into(),
        ];
        if let Some(node) = self.node_name {
            args.extend(["--node-name".into(), node]);
        }
        match &self.state {
            StateDir::Fresh => args.extend([
                "--state-dir".into(),
                dir.join("state").display().to_string(),
            ]),
            StateDir::At(d) => args.extend(["--state-dir".into(), d.display().to_string()]),
            StateDir::Ephemeral => args.push("--ephemeral".into()),
        }
        args.extend(self.args);
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    agent_bin(),
                ]);
                c
            }
            None => Command::new(agent_bin()),
        };
        let child = cmd
            .args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .env("LIFECYCLE_KUBE", "off")
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("spawn the agent");
        (child, dir)
    }

    /// Starts the agent and waits until `/readyz` answers 200.
    pub fn start(self) -> Agent {
        let agent = self.spawn();
        agent.wait_ready();
        agent
    }
}

/// The agent as a child process, stopped with SIGTERM when dropped.
pub struct Agent {
    child: Child,
    /// The address it listens on, from its ready file.
    pub addr: SocketAddr,
    pub port: u16,
    pub log: PathBuf,
    /// Log, ready file and (unless the test gave one) state dir; removed unless a test failed.
    dir: PathBuf,
}

impl Agent {
    /// An agent watching `rt` (as `--runtime KIND --socket SOCKET`), with a fresh state dir.
    pub fn on(rt: &dyn Runtime) -> AgentBuilder {
        Agent::builder(rt.kind(), rt.socket())
    }

    /// An agent as `--runtime kind` (`auto` too) on `socket` (a path or a `unix://` or
    /// `tcp://` URL), with a fresh state dir.
    pub fn builder(kind: &str, socket: impl AsRef<std::ffi::OsStr>) -> AgentBuilder {
        AgentBuilder {
            kind: kind.to_string(),
            socket: socket.as_ref().to_string_lossy().into_owned(),
            node_name: Some(NODE.to_string()),
            nofile: None,
            state: StateDir::Fresh,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Waits until the agent has written its ready file, or panics if it exits first.
    fn wait_listening(&mut self) -> SocketAddr {
        let ready_file = self.dir.join(READY_FILE);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = ready_addr(&ready_file) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited at start ({status}; log: {})",
                    self.log.display()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the agent wrote no ready file within 30 s (log: {})",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `http://ADDR`, for the CLI's `--url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, as an OOM kill or a node crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_ready(&self) {
        wait_for(
            &format!("agent /readyz (log: {})", self.log.display()),
            Duration::from_secs(30),
            || (self.get("/readyz").0 == 200).then_some(()),
        );
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[]).unwrap_or((0, String::new()))
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The `events` array of `/api/v1/events?{query}`.
    pub fn events(&self, query: &str) -> Vec<serde_json::Value> {
        self.json(&format!("/api/v1/events?{query}"))["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every event is in the history once, whether it came live, by replay or both.
    pub fn assert_no_duplicate_events(&self) {
        let mut seen = std::collections::HashSet::new();
        for e in self.events("limit=10000") {
            let key = (
                e["time_unix_nano"].as_i64(),
                e["container_id"].as_str().map(String::from),
                e["action"].as_str().map(String::from),
            );
            assert!(
                seen.insert(key.clone()),
                "duplicate event in the history: {key:?}"
            );
        }
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Waits until the series selected by `labels` has value `want`.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let mut last = None;
        let ok = wait_for_result(Duration::from_secs(30), || {
            last = metric(&self.metrics(), name, labels);
            last == Some(want)
        });
        assert!(
            ok,
            "{name}{labels:?}: wanted {want}, last seen {last:?} (log: {})",
            self.log.display()
        );
    }

    /// The series selected by `labels` has value `want` now (after a [`Agent::barrier`]).
    pub fn assert_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        assert_eq!(
            metric(&self.metrics(), name, labels),
            Some(want),
            "{name}{labels:?} after the counts settled (log: {})",
            self.log.display()
        );
    }

    /// Returns once the agent has applied everything `rt` did before this call, so that an
    /// exact count read afterwards cannot be overtaken by a late duplicate.
    ///
    /// A sentinel container (created with `opts`: the test's filter label) is created and
    /// removed, and the agent is seen to know it and then to forget it. The runtime's events
    /// reach the agent in order on one stream (live or replayed), so by then every earlier
    /// event has been applied. The sentinel never starts: it adds no restart, no running
    /// container, and is gone from the node-wide gauges when this returns; its own events
    /// (created, destroyed) stay in the history under the name returned.
    pub fn barrier(&self, rt: &dyn Runtime, opts: &[&str]) -> String {
        self.barrier_on(|| {
            let sentinel = rt.create("barrier", opts, "true");
            (sentinel.name.clone(), sentinel)
        })
    }

    /// [`Agent::barrier`] with a sentinel `make` creates (never started) and names; it is
    /// removed when what `make` returned is dropped (the lifecycle matrix's, on any runtime).
    pub fn barrier_on<T>(&self, make: impl FnOnce() -> (String, T)) -> String {
        let (name, sentinel) = make();
        let path = format!("/api/v1/containers/{name}");
        wait_for(
            &format!(
                "the agent to see the barrier {name} (log: {})",
                self.log.display()
            ),
            Duration::from_secs(30),
            || (self.get(&path).0 == 200).then_some(()),
        );
        drop(sentinel);
        wait_for(
            &format!(
                "the agent to forget the barrier {name} (log: {})",
                self.log.display()
            ),
            Duration::from_secs(30),
            || (self.get(&path).0 == 404).then_some(()),
        );
        name
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGTERM; the exit status and the whole log, shutdown included.
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        (status, self.log_text())
    }

    fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("agent exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
        // Kept for a failing test, whose message names its log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until `/readyz` on `port` answers 200; `what` names the agent (and its log).
/// The address an agent wrote to its `--ready-file`, once it has (the file is written whole,
/// through a rename).
pub fn ready_addr(ready_file: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(ready_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

pub fn wait_ready_at(port: u16, what: &str) {
    wait_for(
        &format!("{what}: /readyz to answer 200"),
        Duration::from_secs(60),
        || (super::get(port, "/readyz").0 == 200).then_some(()),
    );
}

/// Waits until the series of `name` selected by `labels` on `port`'s `/metrics` is `want`.
pub fn wait_metric_at(port: u16, name: &str, labels: &[(&str, &str)], want: f64, what: &str) {
    let mut last = None;
    let ok = wait_for_result(Duration::from_secs(30), || {
        let (status, body) = super::get(port, "/metrics");
        last = (status == 200)
            .then(|| metric(&body, name, labels))
            .flatten();
        last == Some(want)
    });
    assert!(
        ok,
        "{name}{labels:?}: wanted {want}, last seen {last:?} ({what})"
    );
}

/// The `type` of each event of a history answer, oldest first (the API answers newest first).
pub fn types_of(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .rev()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}
