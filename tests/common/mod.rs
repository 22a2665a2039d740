//! The test harness, one concern per file:
//!
//! - `runtime.rs`: the [`Runtime`] trait the lifecycle matrix runs against, test containers,
//!   and what the private daemons share; `docker.rs` a private dockerd, `podman.rs` a private
//!   Podman service;
//! - `agent.rs`: the agent as a child process, started through one builder ([`Agent::on`]);
//! - `http.rs`: small HTTP clients for the agent, Prometheus and the daemons' sockets;
//! - `exposition.rs`: samples out of a `/metrics` text, and promtool's lint;
//! - `prom.rs`: a private Prometheus server, and the chart's rules rendered for it;
//! - `matrix.rs`: the runtime-neutral verbs of the lifecycle matrix (Docker and Podman through
//!   their CLI, containerd over CRI as a kubelet);
//! - `containerd.rs`: a private containerd driven over CRI as a kubelet drives it;
//!   `fake_cri.rs` an in-process CRI runtime (CRI-O is not packaged here);
//! - `fake_kube.rs`: a fake Kubernetes API server speaking the real list/watch protocol.
//!
//! Nothing here touches the machine's own Docker or Podman: every daemon gets its own socket,
//! data root, exec root and containerd namespace, and a watchdog that stops it when the test
//! process goes away. This file holds the small utilities every part uses.
#![allow(dead_code)]

pub mod agent;
pub mod containerd;
pub mod docker;
pub mod exposition;
pub mod fake_cri;
pub mod fake_kube;
pub mod http;
pub mod matrix;
pub mod podman;
pub mod prom;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use agent::{agent_bin, types_of, wait_metric_at, wait_ready_at, Agent, AgentBuilder, NODE};
#[allow(unused_imports)]
pub use docker::DockerDaemon;
#[allow(unused_imports)]
pub use exposition::{metric, promtool_check, samples};
#[allow(unused_imports)]
pub use http::{get, http, unix_get};
#[allow(unused_imports)]
pub use podman::PodmanService;
#[allow(unused_imports)]
pub use prom::{chart_python, render_chart_rules, scrape_config, Prometheus};
#[allow(unused_imports)]
pub use runtime::{busybox_rootfs, kill_daemon, spawn_watchdog, Ctr, CtrBuilder, Runtime, LOOP};

/// The busybox image every test daemon imports (no registry here).
pub const IMAGE: &str = "lat-busybox:1";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// In CI a missing runtime fails the run; elsewhere the runtime tests are skipped loudly.
pub fn require(tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if in_ci() {
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

/// Whether the run is CI's, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
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

/// Polls `f` until it returns true or the deadline passes; says which.
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

/// A name no other test (of this or another test process) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "lat-{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free port on 127.0.0.1 at the time of asking (for servers that cannot report the port
/// they bound; the agent does, through its ready file).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The repository root (for the chart, the Dockerfile and `target/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
