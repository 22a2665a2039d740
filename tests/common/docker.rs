//! A private `dockerd` for the tests: its own socket, data root, exec root and containerd
//! namespace, under a watchdog that stops it and removes its files when the test process
//! goes away. Nothing of the machine's own Docker is used or changed.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::runtime::{busybox_rootfs, kill_daemon, spawn_watchdog, CtrBuilder, Runtime};
use super::{require, unix_get, wait_for, IMAGE, SEQ};

/// A private `dockerd`. Restartable (kill -9 and start again on the same data).
pub struct DockerDaemon {
    pub dir: PathBuf,
    namespace: String,
    /// Also listening on `tcp://127.0.0.1:PORT` (no TLS: loopback only).
    pub tcp_port: Option<u16>,
    watchdog: Mutex<Option<Child>>,
}

impl DockerDaemon {
    /// Starts a daemon of its own (for tests that kill it).
    pub fn start_private() -> Option<Arc<DockerDaemon>> {
        DockerDaemon::start(None)
    }

    /// A daemon of its own that also answers on `tcp://127.0.0.1:PORT`, as a remote Docker
    /// host does. (The port is probed free first: a test taking it meanwhile fails the start.)
    pub fn start_private_tcp() -> Option<Arc<DockerDaemon>> {
        DockerDaemon::start(Some(super::free_port()))
    }

    fn start(tcp_port: Option<u16>) -> Option<Arc<DockerDaemon>> {
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
            tcp_port,
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
        let tcp = self
            .tcp_port
            .map(|p| format!("-H tcp://127.0.0.1:{p}"))
            .unwrap_or_default();
        let script = format!(
            r#"dockerd --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid -H unix://{d}/docker.sock {tcp} \
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

    fn container(&self, prefix: &str) -> CtrBuilder<'_> {
        CtrBuilder::new(self, prefix)
    }
}
