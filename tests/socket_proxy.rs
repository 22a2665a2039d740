//! The Helm chart's socket proxy (`socketProxy.enabled`): HAProxy with exactly the file the
//! chart ships, `charts/lifecycle-agent/files/socket-proxy.cfg`, in front of a private dockerd
//! and a private Podman service. The agent works through it (a restart is counted once, the
//! event stream is never lost), and what the agent never does is refused: writes (create,
//! kill, remove, exec) and reads outside the allowlist. README: "Threat model of the chart".

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use common::{metric, unique, wait_for, Agent, DockerDaemon, PodmanService, Runtime, LOOP};

/// HAProxy running the chart's config, stopped when dropped (and by its watchdog when the
/// test process goes away).
struct SocketProxy {
    watchdog: Child,
    dir: PathBuf,
    socket: PathBuf,
    health_port: u16,
}

impl SocketProxy {
    fn start(runtime_socket: &Path) -> Option<SocketProxy> {
        if !common::require("haproxy") {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("sockproxy"));
        std::fs::create_dir_all(&dir).expect("proxy dir");
        let cfg = common::repo_root().join("charts/lifecycle-agent/files/socket-proxy.cfg");
        let socket = dir.join("runtime.sock");
        let health_port = common::free_port();
        let script = format!(
            r#"RUNTIME_SOCKET='{runtime}' PROXY_SOCKET='{socket}' HEALTH_ADDR='127.0.0.1:{health_port}' \
 haproxy -db -f '{cfg}' >>'{dir}/haproxy.log' 2>&1 &
hpid=$!
echo $hpid >'{dir}/haproxy.pid'
while kill -0 {parent} 2>/dev/null && kill -0 $hpid 2>/dev/null; do sleep 1; done
kill -TERM $hpid 2>/dev/null"#,
            runtime = runtime_socket.display(),
            socket = socket.display(),
            cfg = cfg.display(),
            dir = dir.display(),
            parent = std::process::id()
        );
        let watchdog = common::spawn_watchdog(&script, "haproxy", &dir);
        let proxy = SocketProxy {
            watchdog,
            dir,
            socket,
            health_port,
        };
        wait_for(
            &format!("haproxy's health endpoint (log: {})", proxy.log().display()),
            Duration::from_secs(30),
            || (common::get(proxy.health_port, "/healthz").0 == 200).then_some(()),
        );
        Some(proxy)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        // haproxy by the pid its watchdog recorded, then the watchdog.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("haproxy.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid.trim()])
                .status();
        }
        // The watchdog notices within a second, reaps haproxy and exits; kill it only if not.
        let exited = common::wait_for_result(Duration::from_secs(5), || {
            matches!(self.watchdog.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.watchdog.kill();
            let _ = self.watchdog.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One HTTP/1.1 request over a unix socket; the status code (0 when nothing answered).
fn request(socket: &Path, method: &str, path: &str, body: &str) -> u16 {
    let send = || -> std::io::Result<u16> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A refusal may come (and the proxy close its side) before the body is written.
        let _ = s.write_all(req.as_bytes());
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut head)?;
        Ok(String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0))
    };
    send().unwrap_or(0)
}

fn proxied_agent_counts_a_restart_and_refuses_writes(rt: Arc<dyn Runtime>, api: &str) {
    let Some(proxy) = SocketProxy::start(&rt.socket()) else {
        return;
    };
    let label = format!("lat.test={}", unique("sockproxy"));
    let agent = Agent::start_on(rt.kind(), &proxy.socket, &["--container-filter", &label]);
    let ctr = rt.run("proxied", &["--label", &label], LOOP);
    let name = [("container", ctr.name.as_str())];
    agent.wait_metric("container_running", &name, 1.0);
    agent.wait_metric("container_restarts_total", &name, 0.0);
    rt.cli_ok(&["restart", "-t", "5", &ctr.name]);
    agent.wait_metric("container_restarts_total", &name, 1.0);
    // A later container seen running is the barrier: the restart's events are all in by then.
    let barrier = rt.run("barrier", &["--label", &label], LOOP);
    agent.wait_metric("container_running", &[("container", &barrier.name)], 1.0);
    let m = agent.metrics();
    assert_eq!(metric(&m, "container_restarts_total", &name), Some(1.0));
    assert_eq!(
        metric(&m, "lifecycle_agent_stream_reconnects_total", &[]),
        Some(0.0),
        "the event stream through the proxy broke (haproxy log: {})",
        proxy.log().display()
    );
    assert_eq!(
        metric(&m, "lifecycle_agent_runtime_connected", &[]),
        Some(1.0)
    );

    // What the agent reads passes, with and without the API version prefix.
    let id = rt.cli_ok(&["inspect", "-f", "{{.Id}}", &ctr.name]);
    for path in [
        format!("{api}/_ping"),
        format!("{api}/version"),
        format!("{api}/containers/json?all=true"),
        format!("{api}/containers/{id}/json"),
        format!("{api}/containers/{}/json", ctr.name),
    ] {
        assert_eq!(request(&proxy.socket, "GET", &path, ""), 200, "GET {path}");
    }
    // Everything else is refused by the proxy (403) and never reaches the runtime.
    let evil = unique("evil");
    let create = format!(
        r#"{{"Image":"{}","Labels":{{"lat.evil":"{evil}"}}}}"#,
        common::IMAGE
    );
    let refused = [
        ("POST", format!("{api}/containers/create"), create.as_str()),
        ("POST", format!("/containers/create?name={evil}"), &create),
        ("POST", format!("{api}/containers/{}/kill", ctr.name), ""),
        ("POST", format!("{api}/containers/{}/stop", ctr.name), ""),
        (
            "POST",
            format!("{api}/containers/{}/exec", ctr.name),
            r#"{"Cmd":["id"]}"#,
        ),
        (
            "DELETE",
            format!("{api}/containers/{}?force=true", ctr.name),
            "",
        ),
        (
            "PUT",
            format!("{api}/containers/{}/archive?path=/", ctr.name),
            "",
        ),
        (
            "GET",
            format!("{api}/containers/{}/archive?path=/", ctr.name),
            "",
        ),
        (
            "GET",
            format!("{api}/containers/{}/logs?stdout=1", ctr.name),
            "",
        ),
        ("GET", format!("{api}/info"), ""),
        ("GET", format!("{api}/images/json"), ""),
        ("GET", format!("{api}/secrets"), ""),
        ("GET", format!("{api}/containers/../images/json"), ""),
        ("GET", format!("{api}/containers/%2e%2e/images/json"), ""),
        ("POST", format!("{api}/events"), ""),
    ];
    for (method, path, body) in &refused {
        assert_eq!(
            request(&proxy.socket, method, path, body),
            403,
            "{method} {path} went through the proxy"
        );
    }
    // The container the refused requests aimed at runs on, untouched, and nothing was created.
    assert_eq!(
        rt.cli_ok(&["inspect", "-f", "{{.State.Running}}", &ctr.name]),
        "true"
    );
    let all = rt.cli_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=lat.evil={evil}"),
    ]);
    assert!(
        all.is_empty(),
        "a container was created through the proxy: {all}"
    );
    // The kubelet's probe endpoint answers /healthz only.
    assert_eq!(common::get(proxy.health_port, "/healthz").0, 200);
    assert_eq!(common::get(proxy.health_port, "/metrics").0, 404);
    // The daemon is still reachable directly: the refusals were the proxy's, not an outage.
    assert_eq!(request(&rt.socket(), "GET", "/_ping", ""), 200);
}

#[test]
fn docker_through_the_socket_proxy() {
    let Some(d) = DockerDaemon::shared() else {
        return;
    };
    proxied_agent_counts_a_restart_and_refuses_writes(d, "/v1.41");
}

#[test]
fn podman_through_the_socket_proxy() {
    let Some(p) = PodmanService::shared() else {
        return;
    };
    proxied_agent_counts_a_restart_and_refuses_writes(p, "/v4.0.0/libpod");
}
