//! Hostile clients against the agent's HTTP port (README "Security and limits"): clients
//! that ask for large answers and never read them, connections that send nothing or half a
//! request, and a flood of connections beside the kubelet's probes.
//!
//! The 10 000-event history comes from the synthetic Docker API (`examples/synthetic_docker.rs`,
//! built here when missing), which streams events as fast as the agent reads them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric, unique, wait_for, Agent, Runtime};

/// The synthetic Docker API as a child process on its own socket.
struct Synthetic {
    child: Child,
    socket: PathBuf,
}

impl Synthetic {
    fn start(containers: usize, events: usize) -> Synthetic {
        let bin = synthetic_bin();
        let socket = std::env::temp_dir().join(format!("{}.sock", unique("synth")));
        let child = Command::new(bin)
            .args(["--socket", &socket.display().to_string()])
            .args(["--containers", &containers.to_string()])
            .args(["--events", &events.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start synthetic_docker");
        wait_for("the synthetic socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
        Synthetic { child, socket }
    }
}

impl Drop for Synthetic {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `target/<profile>/examples/synthetic_docker`, built with this test's profile if missing.
fn synthetic_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("synthetic_docker");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--locked", "--example", "synthetic_docker"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("cargo build --example synthetic_docker");
    assert!(
        status.success(),
        "building examples/synthetic_docker failed"
    );
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// The chart's memory limit for the agent (charts/lifecycle-agent/values.yaml), in bytes.
fn chart_memory_limit() -> u64 {
    let values =
        std::fs::read_to_string(common::repo_root().join("charts/lifecycle-agent/values.yaml"))
            .expect("chart values");
    let mut in_limits = false;
    for line in values.lines() {
        let t = line.trim();
        if t == "limits:" {
            in_limits = true;
        } else if in_limits {
            if let Some(v) = t.strip_prefix("memory:") {
                let v = v.trim();
                let mib: u64 = v
                    .strip_suffix("Mi")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("memory limit {v:?} is not in Mi"));
                return mib << 20;
            }
        }
    }
    panic!("no resources.limits.memory in the chart values");
}

fn rss(agent: &Agent) -> Option<f64> {
    let (status, body) = agent.get("/metrics");
    (status == 200)
        .then(|| metric(&body, "process_resident_memory_bytes", &[]))
        .flatten()
}

/// A connection that sent `request` and reads nothing.
fn non_reader(port: u16, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(request.as_bytes()).expect("send the request");
    s
}

/// `/healthz` on a fresh connection answers 200 within `within`.
fn healthz_answers(port: u16, within: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

#[test]
fn clients_that_never_read_large_answers_cannot_exhaust_memory() {
    const HISTORY: usize = 10_000;
    const CLIENTS: usize = 200;
    let synth = Synthetic::start(100, HISTORY);
    let agent = Agent::builder("docker", &synth.socket).ephemeral().spawn();
    agent.wait_ready();
    wait_for("the 10 000-event history", Duration::from_secs(120), || {
        let m = agent.metrics();
        (metric(&m, "lifecycle_agent_history_events", &[]) == Some(HISTORY as f64)).then_some(())
    });
    // One answer, read whole: what each client asks for.
    let (status, body) = agent.get("/api/v1/events?limit=10000");
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["events"].as_array().map(Vec::len), Some(HISTORY));
    let answer_bytes = body.len();
    let before = rss(&agent).expect("RSS");

    let request = "GET /api/v1/events?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n";
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| non_reader(agent.port, request))
        .collect();
    let limit = chart_memory_limit() as f64;
    let mut peak = before;
    let mut probes = 0;
    // Long enough for every request to have been answered or refused, and for the agent's
    // write timeout to drop the clients holding answers.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        assert!(
            healthz_answers(agent.port, Duration::from_secs(2)),
            "/healthz answers beside {CLIENTS} clients that do not read"
        );
        probes += 1;
        if let Some(r) = rss(&agent) {
            peak = peak.max(r);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = agent.metrics();
    let rejected = metric(&m, "lifecycle_agent_http_answers_rejected_total", &[]).expect("counter");
    eprintln!(
        "answer {answer_bytes} B; RSS before {:.1} MiB, peak {:.1} MiB (limit {:.0} MiB); {rejected} answers refused; {probes} probes",
        before / 1048576.0,
        peak / 1048576.0,
        limit / 1048576.0
    );
    assert!(
        peak < limit,
        "RSS peaked at {peak} bytes, above the chart's limit {limit}"
    );
    assert!(rejected > 0.0, "the answer budget refused some clients");
    drop(clients);
    // Freed memory is given back to the system (or kept for reuse) within a margin of the
    // answer budget.
    let near = before + 48.0 * 1048576.0;
    let mut last = f64::MAX;
    let back = common::wait_for_result(Duration::from_secs(30), || {
        last = rss(&agent).unwrap_or(f64::MAX);
        last < near
    });
    assert!(
        back,
        "RSS {last} bytes after the clients left, before {before}"
    );
    eprintln!("RSS after the clients left: {:.1} MiB", last / 1048576.0);
    // The agent still answers in full.
    let (status, body) = agent.get("/api/v1/events?limit=10000");
    assert_eq!(status, 200);
    assert_eq!(body.len(), answer_bytes);
}

/// Reads until the agent closes the connection; returns when, or `None` after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn idle_half_sent_and_trickling_connections_are_closed_within_a_minute() {
    // No runtime needed: the HTTP server runs while the agent looks for one.
    let missing = std::env::temp_dir().join(format!("{}.sock", unique("none")));
    let agent = Agent::builder("docker", &missing).ephemeral().spawn();
    let port = agent.port;
    let minute = Duration::from_secs(60);
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        closed_within(&mut s, minute + Duration::from_secs(15))
    });
    let half = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /heal").expect("half a request line");
        closed_within(&mut s, minute + Duration::from_secs(15))
    });
    let keep_alive = std::thread::spawn(move || {
        // A whole request answered, then nothing: an idle keep-alive connection.
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        closed_within(&mut s, minute + Duration::from_secs(15))
    });
    let trickle = std::thread::spawn(move || {
        // One byte of the head every 5 s, as slowloris does.
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let start = Instant::now();
        let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head {
            if s.write_all(&[*b]).is_err() {
                return Some(start.elapsed());
            }
            if closed_within(&mut s, Duration::from_secs(5)).is_some() {
                return Some(start.elapsed());
            }
            if start.elapsed() > minute + Duration::from_secs(15) {
                return None;
            }
        }
        None
    });
    for (what, h) in [
        ("a connection that sends nothing", silent),
        ("half a request line", half),
        ("an idle keep-alive connection", keep_alive),
        ("a head sent one byte every 5 s", trickle),
    ] {
        let took = h.join().expect("client thread");
        eprintln!("{what}: closed after {took:?}");
        assert!(
            took.is_some_and(|t| t < minute),
            "{what} is closed within a minute (took {took:?})"
        );
    }
    let m = agent.metrics();
    let timeouts = metric(
        &m,
        "lifecycle_agent_http_connections_closed_total",
        &[("reason", "timeout")],
    )
    .expect("counter");
    assert!(timeouts >= 4.0, "{timeouts} timeouts counted");
}

/// The agent with at most `nofile` open files (as under systemd's default soft limit),
/// ephemeral, on a socket where no runtime answers.
#[test]
fn probes_answer_beside_a_flood_of_idle_connections() {
    // 256 descriptors: the agent serves 64 connections, plus 8 for probes only.
    let missing = std::env::temp_dir().join(format!("{}.sock", unique("none")));
    let agent = Agent::builder("docker", &missing)
        .ephemeral()
        .nofile_limit(256)
        .spawn();
    let port = agent.port;
    let mut flood = Vec::new();
    let mut failed_connects = 0;
    for _ in 0..600 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => flood.push(s),
            Err(_) => failed_connects += 1,
        }
    }
    // Keep flooding while probing once a second. The kubelet restarts a container after
    // `failureThreshold` (3) probes in a row fail; here none may fail twice in a row (only
    // the first second of a burst, when every connection is new, may refuse one).
    let mut probes = 0;
    let mut failures = 0;
    let mut in_a_row = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for _ in 0..50 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                flood.push(s);
            }
        }
        probes += 1;
        if healthz_answers(port, Duration::from_secs(3)) {
            in_a_row = 0;
        } else {
            failures += 1;
            in_a_row += 1;
            assert!(
                in_a_row < 2,
                "/healthz fails twice in a row beside a flood of {} idle connections",
                flood.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(failures <= 1, "{failures} of {probes} probes failed");
    let (status, m) = common::get(port, "/metrics");
    assert_eq!(status, 200, "/metrics answers too");
    let open = metric(&m, "lifecycle_agent_http_connections", &[]).expect("gauge");
    let fds = metric(&m, "process_open_fds", &[]).expect("gauge");
    let closed = |reason| {
        metric(
            &m,
            "lifecycle_agent_http_connections_closed_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "{} flood connections ({failed_connects} failed), {probes} probes ({failures} failed); open {open}, fds {fds}, evicted {}, refused {}",
        flood.len(),
        closed("evicted"),
        closed("limit")
    );
    assert!(open <= 72.0, "{open} connections open, cap 64 + 8");
    assert!(fds < 200.0, "{fds} descriptors open under a limit of 256");
    assert!(closed("evicted") + closed("limit") > 0.0);
    drop(flood);
    let log = agent.log_text();
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log file: {log}"
    );
    assert!(
        !log.contains("Too many open files"),
        "the agent never ran out of descriptors: {log}"
    );
    let warnings = log.matches("HTTP connection limit reached").count();
    assert!(
        warnings <= 3,
        "the limit is logged when reached, not per connection ({warnings} lines)"
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root): the caller skips, or fails in CI.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(unique("tmpfs"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("mount -o remount");
        assert!(status.success(), "remounting the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn value(agent: &Agent, name: &str) -> f64 {
    metric(&agent.metrics(), name, &[]).unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn a_store_on_a_full_disk_writes_again_once_the_disk_grows() {
    let Some(disk) = Tmpfs::mount("1m") else {
        assert!(
            !common::in_ci(),
            "the store test needs root to mount a tmpfs"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
        return;
    };
    const EVENTS: usize = 6_000;
    let state = disk.dir.join("state");
    // 300 events a second: the disk fills within seconds, and events keep coming after it
    // has grown.
    let synth = {
        let bin = synthetic_bin();
        let socket = std::env::temp_dir().join(format!("{}.sock", unique("synth")));
        let child = Command::new(bin)
            .args(["--socket", &socket.display().to_string()])
            .args(["--containers", "100", "--events", &EVENTS.to_string()])
            .args(["--rate", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start synthetic_docker");
        wait_for("the synthetic socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
        Synthetic { child, socket }
    };
    let agent = Agent::builder("docker", &synth.socket)
        .state_dir(&state)
        .start();
    // Three failures: the first, and two retries (after 1 s and 2 s) on a database
    // reopened on the still full disk.
    wait_for("store writes to fail", Duration::from_secs(60), || {
        (value(&agent, "lifecycle_agent_store_errors_total") >= 3.0).then_some(())
    });
    wait_for(
        "lifecycle_agent_store_up 0",
        Duration::from_secs(10),
        || (value(&agent, "lifecycle_agent_store_up") == 0.0).then_some(()),
    );
    let held_when_full = value(&agent, "lifecycle_agent_history_events");
    assert!(
        held_when_full < EVENTS as f64,
        "the disk filled before the stream ended ({held_when_full} events)"
    );
    let writes_before = value(&agent, "lifecycle_agent_store_writes_total");
    disk.resize("64m");
    let grown = Instant::now();
    wait_for(
        "writes again after the disk grew",
        Duration::from_secs(60),
        || {
            (value(&agent, "lifecycle_agent_store_up") == 1.0
                && value(&agent, "lifecycle_agent_store_writes_total") > writes_before)
                .then_some(())
        },
    );
    eprintln!("writing again {:?} after the disk grew", grown.elapsed());
    assert!(grown.elapsed() < Duration::from_secs(60));
    wait_for("every event", Duration::from_secs(120), || {
        (value(&agent, "lifecycle_agent_history_events") == EVENTS as f64).then_some(())
    });
    let writes = value(&agent, "lifecycle_agent_store_writes_total");
    let errors = value(&agent, "lifecycle_agent_store_errors_total");
    let newest = agent.events("limit=1");
    let log = agent.log_text();
    assert_eq!(
        log.matches("store writes fail").count(),
        1,
        "one line when writes start failing ({errors} failures): {log}"
    );
    assert_eq!(log.matches("store writes work again").count(), 1);
    eprintln!("{errors} failed writes, {writes} writes; held {held_when_full} events when full");
    assert!(agent.stop().success());

    // A later start finds what happened after the disk grew.
    drop(synth);
    let quiet = Synthetic::start(100, 0);
    let again = Agent::builder("docker", &quiet.socket)
        .state_dir(&state)
        .start();
    assert_eq!(
        value(&again, "lifecycle_agent_history_events"),
        EVENTS as f64,
        "every event, those after the growth included, was saved"
    );
    assert_eq!(
        again.events("limit=1"),
        newest,
        "the newest event was saved"
    );
}

#[test]
fn absurd_kubelet_ordinals_move_no_node_counter() {
    let Some(daemon) = common::DockerDaemon::start_private() else {
        return;
    };
    let agent = Agent::on(&*daemon).start();
    let ordinal = |n: u64| format!("annotation.io.kubernetes.container.restartCount={n}");
    let pod_uid = unique("uid");
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let pod = |n: u64| {
        vec![
            "-l".to_string(),
            "io.kubernetes.pod.namespace=shop".into(),
            "-l".into(),
            "io.kubernetes.pod.name=web-1".into(),
            "-l".into(),
            format!("io.kubernetes.pod.uid={pod_uid}"),
            "-l".into(),
            "io.kubernetes.container.name=nginx".into(),
            "-l".into(),
            ordinal(n),
        ]
    };
    let plain_labels = vec!["-l".to_string(), ordinal(u64::MAX - 1)];
    let plain_args = args(&plain_labels);
    let plain = daemon.run("ordinal-plain", &plain_args, common::LOOP);
    let first_labels = pod(u64::MAX);
    let first_args = args(&first_labels);
    let first = daemon.run("ordinal-pod", &first_args, common::LOOP);
    agent.wait_metric("container_running", &[("container", &plain.name)], 1.0);
    agent.wait_metric("container_running", &[("pod", "web-1")], 1.0);
    let stats = agent.json("/api/v1/stats/restarts");
    assert_eq!(stats["node_restarts_total"], 0, "{stats}");
    assert_eq!(
        common::metric(&agent.metrics(), "containers_restarts_total", &[]),
        Some(0.0)
    );

    // Observed: one restart of the plain container, and the pod's container replaced by
    // one with the other absurd ordinal (a start of an identity that ran before; the kubelet
    // keeps the dead container, so the identity stays).
    daemon.docker_ok(&["restart", "-t", "1", &plain.name]);
    daemon.docker_ok(&["stop", "-t", "1", &first.name]);
    let second_labels = pod(u64::MAX - 1);
    let second_args = args(&second_labels);
    let second = daemon.run("ordinal-pod", &second_args, common::LOOP);
    agent.wait_metric(
        "container_restarts_total",
        &[("container", &plain.name)],
        1.0,
    );
    agent.wait_metric("container_restarts_total", &[("pod", "web-1")], 1.0);
    // A later container seen running: everything before it has been applied.
    let barrier = daemon.run("ordinal-barrier", &[], common::LOOP);
    agent.wait_metric("container_running", &[("container", &barrier.name)], 1.0);
    let m = agent.metrics();
    assert_eq!(
        common::metric(&m, "containers_restarts_total", &[]),
        Some(2.0)
    );
    let stats = agent.json("/api/v1/stats/restarts");
    for key in [
        "node_restarts_total",
        "restarts_last_1h",
        "restarts_last_24h",
        "total_restarts",
    ] {
        assert_eq!(stats[key], 2, "{key}: {stats}");
    }
    drop((plain, first, second, barrier));
}
