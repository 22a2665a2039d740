//! What every container runtime of the tests offers (the [`Runtime`] trait the lifecycle
//! matrix runs against), test containers that remove themselves, and the pieces the private
//! daemons share: the busybox image's root, the watchdog shell and a crash by SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{unique, wait_for, which, IMAGE};

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

    /// A test container to make, with a unique name from `prefix`.
    fn container(&self, prefix: &str) -> CtrBuilder<'_>;

    /// `run -d` with a unique name; `opts` go before the image.
    fn run(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_> {
        self.container(prefix).opts(opts).run(script)
    }

    /// `create` with a unique name.
    fn create(&self, prefix: &str, opts: &[&str], script: &str) -> Ctr<'_> {
        self.container(prefix).opts(opts).create(script)
    }
}

/// A test container to make: its name, labels and options, then `run` or `create` it with a
/// shell script on the busybox image (`--network none` always).
pub struct CtrBuilder<'a> {
    rt: &'a dyn Runtime,
    name: String,
    opts: Vec<String>,
}

impl<'a> CtrBuilder<'a> {
    /// A container named uniquely after `prefix`.
    pub fn new(rt: &'a dyn Runtime, prefix: &str) -> Self {
        CtrBuilder {
            rt,
            name: unique(prefix),
            opts: Vec::new(),
        }
    }

    /// This exact name instead (e.g. the kubelet's naming), unique by the caller's care.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// A label, `KEY=VALUE`.
    pub fn label(self, label: &str) -> Self {
        self.opts(&["--label", label])
    }

    /// The labels the kubelet puts on a container of a pod (`namespace/pod` with `uid`),
    /// `attempt` being its restart ordinal (cri-dockerd's restartCount annotation).
    pub fn pod(self, namespace: &str, pod: &str, uid: &str, container: &str, attempt: u32) -> Self {
        self.label(&format!("io.kubernetes.pod.namespace={namespace}"))
            .label(&format!("io.kubernetes.pod.name={pod}"))
            .label(&format!("io.kubernetes.pod.uid={uid}"))
            .label(&format!("io.kubernetes.container.name={container}"))
            .label(&format!(
                "annotation.io.kubernetes.container.restartCount={attempt}"
            ))
    }

    /// More CLI options, before the image.
    pub fn opts(mut self, opts: &[&str]) -> Self {
        self.opts.extend(opts.iter().map(|o| o.to_string()));
        self
    }

    /// `run -d`: started.
    pub fn run(self, script: &str) -> Ctr<'a> {
        self.make(&["run", "-d"], script)
    }

    /// `create`: never started.
    pub fn create(self, script: &str) -> Ctr<'a> {
        self.make(&["create"], script)
    }

    fn make(self, verb: &[&str], script: &str) -> Ctr<'a> {
        let mut args: Vec<&str> = verb.to_vec();
        args.extend_from_slice(&["--network", "none", "--name", &self.name]);
        args.extend(self.opts.iter().map(String::as_str));
        args.extend_from_slice(&[IMAGE, "/bin/sh", "-c", script]);
        self.rt.cli_ok(&args);
        Ctr::adopt(self.rt, &self.name)
    }
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

/// A test container, removed when dropped.
pub struct Ctr<'a> {
    pub rt: &'a dyn Runtime,
    pub name: String,
}

impl<'a> Ctr<'a> {
    /// Takes charge of a container made some other way (removed when dropped).
    pub fn adopt(rt: &'a dyn Runtime, name: &str) -> Ctr<'a> {
        Ctr {
            rt,
            name: name.to_string(),
        }
    }
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
