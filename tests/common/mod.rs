//! The test harness: private container daemons (dockerd here, Podman in `podman.rs`), the
//! agent as a child process, and small clients for its HTTP surface. Nothing here touches
//! the machine's own Docker or Podman: every daemon gets its own socket, data root, exec root
//! and containerd namespace, and a watchdog that stops it when the test process goes away.
#![allow(dead_code)]

pub mod containerd;
pub mod fake_cri;
pub mod fake_kube;
pub mod podman;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "lat-busybox:1";
static SEQ: AtomicU32 = AtomicU32::new(0);

// Not every test binary uses both runtimes.
#[allow(unused_imports)]
pub use podman::PodmanService;

/// What the shared test bodies need from a runtime: its socket and its CLI, whose `run`,
/// `create`, `restart -t`, `stop -t`, `pause`, `kill` and `inspect -f` agree between Docker
/// and Podman.
pub trait Runtime: Send + Sync {
    /// `docker` or `podman`: the agent's `--runtime` and its `runtime` label.
    fn kind(&self) -> &'static str;
    fn socket(&self) -> PathBuf;
    fn cli(&self, args: &[&str]) -> Output;

    /// Runs the CLI and insists on success; returns stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{} {args:?} failed: {}",
            self.kind(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `run -d` with a unique name; `opts` go before the image.
    fn run(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_>;

    /// `create` with a unique name.
    fn create(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_>;
}

pub fn run_in<'a>(rt: &'a dyn Runtime, prefix: &str, opts: &[&str], script: &str) -> Ctr<'a> {
    let name = unique(prefix);
    let mut args = vec!["run", "-d", "--network", "none", "--name", &name];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[IMAGE, "/bin/sh", "-c", script]);
    rt.cli_ok(&args);
    Ctr { rt, name }
}

pub fn create_in<'a>(rt: &'a dyn Runtime, prefix: &str, opts: &[&str], script: &str) -> Ctr<'a> {
    let name = unique(prefix);
    let mut args = vec!["create", "--network", "none", "--name", &name];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[IMAGE, "/bin/sh", "-c", script]);
    rt.cli_ok(&args);
    Ctr { rt, name }
}

/// A folder with busybox and every applet as a symlink: the test image's root (no registry).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    let busybox = which("busybox").expect("busybox-static is needed for the test image");
    std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    root
}

/// In CI a missing runtime fails the run; elsewhere the runtime tests are skipped loudly.
pub fn require(tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("{tool} is not installed; CI must run the runtime tests (run the README's test command as root to install it)");
    }
    eprintln!(
        "SKIPPED: {tool} is not installed (the README's test command installs it when run as root)"
    );
    false
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Polls `f` until it returns `Some` or the deadline passes; panics with `what` on timeout.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "lat-{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a watchdog shell script (it starts a private daemon and stops it, and removes its
/// files, once this test process is gone).
///
/// It runs in the daemon's private `dir`, and so does what it starts: Podman's conmon writes
/// files (an `oom` marker after an OOM kill) into its working directory.
pub fn spawn_watchdog(script: &str, what: &str, dir: &Path) -> Child {
    Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the {what} watchdog: {e}"))
}

/// SIGKILLs the daemon whose pid is in `pidfile`, as a crash would, waits until it is dead
/// (a killed child stays a zombie until its watchdog shell reaps it), then ends that
/// watchdog so it does not clean up behind a relaunch.
pub fn kill_daemon(pidfile: &Path, watchdog: &Mutex<Option<Child>>, what: &str) {
    let pid = std::fs::read_to_string(pidfile).unwrap_or_else(|e| panic!("{what} pid file: {e}"));
    let pid = pid.trim().to_string();
    let ok = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -9 {what}");
    wait_for(&format!("{what} to die"), Duration::from_secs(20), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, None | Some("Z") | Some("X")).then_some(())
    });
    if let Some(mut w) = watchdog.lock().unwrap().take() {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// A private `dockerd`. Restartable (kill -9 and start again on the same data).
pub struct DockerDaemon {
    pub dir: PathBuf,
    namespace: String,
    watchdog: Mutex<Option<Child>>,
}

impl DockerDaemon {
    /// Starts a daemon of its own (for tests that kill it).
    pub fn start_private() -> Option<Arc<DockerDaemon>> {
        if !require("dockerd") || !require("docker") {
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short paths: containerd's sockets live under the exec root (108-byte limit).
        let dir = PathBuf::from(format!("/tmp/lat-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create daemon dir");
        let d = Arc::new(DockerDaemon {
            dir,
            namespace: format!("lat{}x{n}", std::process::id()),
            watchdog: Mutex::new(None),
        });
        d.launch();
        d.import_image();
        Some(d)
    }

    /// One daemon shared by the tests of a binary that do not kill it.
    pub fn shared() -> Option<Arc<DockerDaemon>> {
        static D: OnceLock<Option<Arc<DockerDaemon>>> = OnceLock::new();
        D.get_or_init(DockerDaemon::start_private).clone()
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("docker.pid")
    }

    /// Starts dockerd under a shell watchdog that stops it (and removes its files) when this
    /// test process exits, whatever way it exits.
    pub fn launch(&self) {
        let _ = std::fs::remove_file(self.pidfile());
        let _ = std::fs::remove_file(self.socket());
        // dockerd kills its containerd with itself (pdeathsig), but the dead one can stay a
        // zombie where PID 1 does not reap: its stale pid file would make dockerd wait for it.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        let d = self.dir.display();
        let ns = &self.namespace;
        let script = format!(
            r#"dockerd --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid -H unix://{d}/docker.sock \
 --bridge=none --iptables=false --ip-masq=false --containerd-namespace {ns} --containerd-plugins-namespace {ns}p \
 >>{d}/dockerd.log 2>&1 &
dpid=$!
while kill -0 {parent} 2>/dev/null && kill -0 $dpid 2>/dev/null; do sleep 1; done
if kill -0 $dpid 2>/dev/null; then
  kill -TERM $dpid; i=0
  while kill -0 $dpid 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
  kill -KILL $dpid 2>/dev/null
  grep -o ' {d}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf {d}
fi"#,
            parent = std::process::id()
        );
        let child = spawn_watchdog(&script, "dockerd", &self.dir);
        *self.watchdog.lock().unwrap() = Some(child);
        let sock = self.socket();
        wait_for(
            "the private dockerd to answer /_ping",
            Duration::from_secs(60),
            || {
                let (status, _) = unix_get(&sock, "/_ping").ok()?;
                (status == 200).then_some(())
            },
        );
    }

    /// SIGKILLs the daemon, as a crash would; its containers' shims survive it.
    pub fn kill(&self) {
        kill_daemon(&self.pidfile(), &self.watchdog, "dockerd");
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cli(args)
    }

    /// Runs docker and insists on success; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.cli_ok(args)
    }

    /// Imports a busybox image (no registry here).
    fn import_image(&self) {
        let root = busybox_rootfs(&self.dir);
        let cmd = format!(
            "tar -C {} -c . | docker -H {} import - {IMAGE}",
            root.display(),
            self.host()
        );
        let ok = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .expect("import");
        assert!(
            ok.status.success(),
            "image import: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
}

impl Runtime for DockerDaemon {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the docker CLI")
    }

    fn run(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_> {
        run_in(self, prefix, opts, script)
    }

    fn create(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_> {
        create_in(self, prefix, opts, script)
    }
}

/// A test container, removed when dropped.
pub struct Ctr<'a> {
    pub rt: &'a dyn Runtime,
    pub name: String,
}

impl Drop for Ctr<'_> {
    fn drop(&mut self) {
        // Podman's `rm -f` waits for the stop timeout; Docker's kills at once.
        let args: &[&str] = match self.rt.kind() {
            "podman" => &["rm", "-f", "-t", "0"],
            _ => &["rm", "-f"],
        };
        let mut args = args.to_vec();
        args.push(&self.name);
        let _ = self.rt.cli(&args);
    }
}

/// A shell loop that exits promptly on SIGTERM (busybox `sleep` as PID 1 would ignore it).
pub const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

enum Listening {
    Yes,
    PortTaken,
    Exited,
}

/// The agent as a child process, stopped with SIGTERM when dropped.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    /// A state dir this handle created (and removes), when the test did not give one.
    owned_state: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifecycle-agent")
}

impl Agent {
    /// The agent on a private dockerd's socket, with a fresh state dir of its own.
    pub fn start(socket: &Path, extra: &[&str]) -> Agent {
        Agent::start_on("docker", socket, extra)
    }

    /// The agent on any runtime's socket, as `--runtime KIND`, with a fresh state dir.
    pub fn start_on(kind: &str, socket: &Path, extra: &[&str]) -> Agent {
        let state = std::env::temp_dir().join(unique("state"));
        let mut agent = Agent::spawn_on(kind, socket, Some(&state), extra);
        agent.owned_state = Some(state);
        agent.wait_ready();
        agent
    }

    /// Starts an agent on a given state dir (kept after it stops), and waits until ready.
    pub fn start_with_state(socket: &Path, state: &Path, extra: &[&str]) -> Agent {
        let agent = Agent::spawn(socket, Some(state), extra);
        agent.wait_ready();
        agent
    }

    /// Starts an agent on a dockerd without waiting for it.
    pub fn spawn(socket: &Path, state: Option<&Path>, extra: &[&str]) -> Agent {
        Agent::spawn_on("docker", socket, state, extra)
    }

    /// Starts an agent without waiting for it; `state: None` runs it `--ephemeral`.
    pub fn spawn_on(kind: &str, socket: &Path, state: Option<&Path>, extra: &[&str]) -> Agent {
        Agent::spawn_env(kind, socket, state, extra, &[])
    }

    /// The agent on a dockerd with extra environment variables (a test's `KUBECONFIG`),
    /// ephemeral, and waits until ready.
    pub fn start_env(socket: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let agent = Agent::spawn_env("docker", socket, None, extra, env);
        agent.wait_ready();
        agent
    }

    /// Starts an agent without waiting for it. Kubernetes is off unless a test turns it on
    /// (`--kube on` wins over the environment): the machine's own kubeconfig or cluster
    /// must never leak into a test.
    pub fn spawn_env(
        kind: &str,
        socket: &Path,
        state: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        // A free port can be taken by another test between our probe and the agent's bind:
        // then the agent exits with EADDRINUSE and is started again on another port.
        for _ in 0..5 {
            let agent = Agent::spawn_once(kind, socket, state, extra, env);
            match agent.wait_listening() {
                Listening::Yes => return agent,
                Listening::PortTaken => continue,
                Listening::Exited => {
                    panic!("the agent exited at start (log: {})", agent.log.display())
                }
            }
        }
        panic!("no free port for the agent after 5 tries");
    }

    fn spawn_once(
        kind: &str,
        socket: &Path,
        state: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("agent")));
        let logf = std::fs::File::create(&log).expect("agent log");
        let mut args = vec![
            "run".to_string(),
            "--runtime".into(),
            kind.into(),
            "--socket".into(),
            socket.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--node-name".into(),
            "test-node".into(),
            "--log-level".into(),
            "lifecycle_agent=debug".into(),
        ];
        match state {
            Some(dir) => args.extend(["--state-dir".to_string(), dir.display().to_string()]),
            None => args.push("--ephemeral".into()),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(agent_bin())
            .args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .env("LIFECYCLE_KUBE", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("spawn the agent");
        Agent {
            child,
            port,
            log,
            owned_state: None,
        }
    }

    /// Waits until the agent has bound its port (it logs that), or has exited.
    fn wait_listening(&self) -> Listening {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.log_text();
            if log.contains("serving metrics and API") {
                return Listening::Yes;
            }
            if log.contains("Address already in use") {
                return Listening::PortTaken;
            }
            if log.contains("lifecycle-agent:") && !log.contains("serving") {
                return Listening::Exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "the agent did not start listening within 30 s (log: {})",
            self.log.display()
        );
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
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
        // Kept for a failing test, whose message names it.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
            if let Some(dir) = &self.owned_state {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

pub fn wait_for_result(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Finds the value of the first sample of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|(_, v)| v)
}

/// Every sample of `name`: its labels (unescaped) and value.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (ls, end) = parse_labels(r);
            (ls, r[end..].trim())
        } else if rest.starts_with(' ') {
            (Vec::new(), rest.trim())
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// Parses `k="v",...}` with the exposition format's escapes; returns the labels and the
/// index just past the closing brace.
fn parse_labels(s: &str) -> (Vec<(String, String)>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() && b[i] != b'}' {
        let k0 = i;
        while b[i] != b'=' {
            i += 1;
        }
        let key = s[k0..i].to_string();
        i += 2; // ="
        let mut val = Vec::new();
        while b[i] != b'"' {
            if b[i] == b'\\' {
                i += 1;
                val.push(match b[i] {
                    b'n' => b'\n',
                    c => c,
                });
            } else {
                val.push(b[i]);
            }
            i += 1;
        }
        i += 1;
        if i < b.len() && b[i] == b',' {
            i += 1;
        }
        out.push((key, String::from_utf8_lossy(&val).into_owned()));
    }
    (out, i + 1)
}

/// A minimal HTTP/1.1 client for the agent (loopback only).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    read_response(&mut s)
}

fn read_response(s: &mut impl Read) -> std::io::Result<(u16, String)> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET over a unix socket (the daemons' API), for readiness checks.
pub fn unix_get(sock: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n").as_bytes())?;
    read_response(&mut s)
}

/// Lints an exposition with promtool (installed by the test command; required in CI).
pub fn promtool_check(text: &str) {
    if !require("promtool") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET `path` from an HTTP server on 127.0.0.1:`port`; `(0, "")` when it does not answer.
pub fn get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, &[]).unwrap_or((0, String::new()))
}

/// Waits until `/readyz` on `port` answers 200; `what` names the agent (and its log).
pub fn wait_ready_at(port: u16, what: &str) {
    wait_for(
        &format!("{what}: /readyz to answer 200"),
        Duration::from_secs(60),
        || (get(port, "/readyz").0 == 200).then_some(()),
    );
}

/// Waits until the series of `name` selected by `labels` on `port`'s `/metrics` is `want`.
pub fn wait_metric_at(port: u16, name: &str, labels: &[(&str, &str)], want: f64, what: &str) {
    let mut last = None;
    let ok = wait_for_result(Duration::from_secs(30), || {
        let (status, body) = get(port, "/metrics");
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

/// The repository root (for the chart, the Dockerfile and `target/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the run is CI's, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The Python of the chart tests' virtualenv (helm-python-sdk), which `scripts/test` sets up:
/// `LIFECYCLE_CHART_PYTHON`, else `target/chart-venv/bin/python`. Panics in CI without it.
pub fn chart_python() -> Option<PathBuf> {
    let p = std::env::var_os("LIFECYCLE_CHART_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/chart-venv/bin/python"));
    if p.is_file() {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "no chart Python at {} (scripts/test creates it)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: no chart Python at {} (scripts/test creates it)",
        p.display()
    );
    None
}

/// Renders the chart with `values` (a file under the repo) and writes the PrometheusRule's
/// groups as a Prometheus rule file to `out`.
pub fn render_chart_rules(python: &Path, values: &Path, out: &Path) {
    let o = Command::new(python)
        .arg(repo_root().join("tests/chart/render_rules.py"))
        .arg(values)
        .arg(out)
        .output()
        .expect("run render_rules.py");
    assert!(
        o.status.success(),
        "rendering the chart's rules: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A private Prometheus server on 127.0.0.1 with its own data directory, stopped when dropped
/// and, through a watchdog, when the test process goes away.
pub struct Prometheus {
    pub port: u16,
    pub dir: PathBuf,
    watchdog: Child,
}

/// A Prometheus configuration scraping each agent port every second, honouring its labels
/// (as the chart's ServiceMonitor does).
pub fn scrape_config(ports: &[u16]) -> String {
    let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: agent\n  honor_labels: true\n  static_configs:\n  - targets: [{}]\n",
        targets.join(", ")
    )
}

impl Prometheus {
    /// The label sets of every series matching a selector (`/api/v1/series`).
    pub fn series(&self, selector: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let q = serde_urlencoded::to_string([("match[]", selector)]).expect("encode");
        self.api(&format!("/api/v1/series?{q}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect()
    }

    /// Health of the scrape of every target, as Prometheus saw it (`up` and the last error).
    pub fn targets(&self) -> Vec<(String, String)> {
        self.api("/api/v1/targets")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Starts Prometheus with `config` (YAML; `rule_files` relative to its directory) and the
    /// given extra files written beside it.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Option<Prometheus> {
        if !require("prometheus") {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("prometheus file");
        }
        let port = free_port();
        let d = dir.display();
        let script = format!(
            r#"cd {d} && prometheus --config.file={d}/prometheus.yml --storage.tsdb.path={d}/data \
 --web.listen-address=127.0.0.1:{port} --log.level=warn >>{d}/prometheus.log 2>&1 &
ppid=$!
echo $ppid > {d}/prometheus.pid
while kill -0 {parent} 2>/dev/null && kill -0 $ppid 2>/dev/null; do sleep 1; done
if kill -0 $ppid 2>/dev/null; then
  kill -TERM $ppid; i=0
  while kill -0 $ppid 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
  kill -KILL $ppid 2>/dev/null
  rm -rf {d}
fi"#,
            parent = std::process::id()
        );
        let watchdog = spawn_watchdog(&script, "prometheus", &dir);
        let p = Prometheus {
            port,
            dir,
            watchdog,
        };
        wait_for(
            &format!("prometheus /-/ready (log: {})", p.log().display()),
            Duration::from_secs(60),
            || (get(p.port, "/-/ready").0 == 200).then_some(()),
        );
        Some(p)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// GET an API path; the parsed `data` of a successful answer.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.port, path);
        assert_eq!(status, 200, "prometheus {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}: {body}"));
        assert_eq!(v["status"], "success", "prometheus {path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let q = serde_urlencoded::to_string([("query", expr)]).expect("encode query");
        let data = self.api(&format!("/api/v1/query?{q}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns exactly one sample and `check` accepts its labels and value.
    pub fn wait_sample(
        &self,
        expr: &str,
        mut check: impl FnMut(&serde_json::Map<String, serde_json::Value>, f64) -> bool,
    ) -> serde_json::Value {
        let mut last = Vec::new();
        let ok = wait_for_result(Duration::from_secs(60), || {
            last = self.query(expr);
            match last.as_slice() {
                [s] => {
                    let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
                    match (s["metric"].as_object(), v) {
                        (Some(m), Some(v)) => check(m, v),
                        _ => false,
                    }
                }
                _ => false,
            }
        });
        assert!(ok, "PromQL {expr}: last answer {last:?}");
        last.remove(0)
    }

    /// Waits for an alert named `name` whose labels include `labels`, in one of `states`.
    pub fn wait_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        states: &[&str],
        timeout: Duration,
    ) -> serde_json::Value {
        let mut seen = Vec::new();
        let mut found = None;
        let ok = wait_for_result(timeout, || {
            seen = self.api("/api/v1/alerts")["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            found = seen
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == name
                        && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                        && states.iter().any(|s| a["state"] == *s)
                })
                .cloned();
            found.is_some()
        });
        assert!(
            ok,
            "alert {name}{labels:?} in {states:?} within {timeout:?}; alerts seen: {seen:?}"
        );
        found.expect("found")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("prometheus.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        // Kept for a failing test, whose message names its log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
