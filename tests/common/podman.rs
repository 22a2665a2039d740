//! A private Podman API service for the tests. Nothing of the machine's own Podman is used
//! or changed: storage, run root, event log (`tmp_dir`), locks and network configuration all
//! live under the service's own directory, and a watchdog stops the service, removes its
//! containers and deletes the directory when the test process goes away.
//!
//! Two quirks of the build machines (Debian 12, cgroups v1) are configured here:
//! `crun` fails under cgroups v1 hybrid mode, so the runtime is `runc`; and the sandbox lacks
//! CAP_SYS_RESOURCE, so Podman's default rlimits are lowered.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::{kill_daemon, require, spawn_watchdog, unix_get, wait_for, Runtime, IMAGE, SEQ};

/// A private `podman system service`. Restartable: kill it and launch it again on the same
/// storage; containers keep running under their conmon meanwhile.
pub struct PodmanService {
    pub dir: PathBuf,
    watchdog: Mutex<Option<Child>>,
}

impl PodmanService {
    /// Starts a service of its own (for tests that kill it or need an unfiltered view).
    pub fn start_private() -> Option<Arc<PodmanService>> {
        PodmanService::start_private_with("")
    }

    /// A service of its own with extra `[engine]` settings (e.g. a small event log).
    pub fn start_private_with(engine_extra: &str) -> Option<Arc<PodmanService>> {
        if !require("podman") || !require("runc") || !require("busybox") {
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short paths: conmon's attach sockets live under the run root (108-byte limit).
        let dir = PathBuf::from(format!("/tmp/lpm-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("tmp")).expect("create the Podman dir");
        std::fs::create_dir_all(dir.join("net")).expect("create the Podman dir");
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
events_logger = "file"
tmp_dir = "{d}/tmp"
lock_type = "file"
{engine_extra}
[network]
network_config_dir = "{d}/net"
"#
            ),
        )
        .expect("write containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/root\"\n"),
        )
        .expect("write storage.conf");
        let s = Arc::new(PodmanService {
            dir,
            watchdog: Mutex::new(None),
        });
        s.launch();
        s.import_image();
        Some(s)
    }

    /// One service shared by the tests of a binary that do not kill it.
    pub fn shared() -> Option<Arc<PodmanService>> {
        static S: OnceLock<Option<Arc<PodmanService>>> = OnceLock::new();
        S.get_or_init(PodmanService::start_private).clone()
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("service.pid")
    }

    /// The private configuration, for every podman process that touches this storage.
    /// Everything Podman starts runs inside the service's directory: conmon writes files
    /// (an `oom` marker after an OOM kill) into its working directory.
    fn env(&self, cmd: &mut Command) {
        cmd.current_dir(&self.dir)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("XDG_RUNTIME_DIR", self.dir.join("xdg"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"));
    }

    /// `podman` on this storage without the service: what `podman` on a node does while
    /// the API service is down. Its events go to the same log.
    pub fn local(&self, args: &[&str]) -> Output {
        let d = &self.dir;
        let mut cmd = Command::new("podman");
        self.env(&mut cmd);
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    pub fn local_ok(&self, args: &[&str]) -> String {
        let o = self.local(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Starts the service under a shell watchdog that, when this test process exits, stops
    /// it, removes what it ran and deletes its directory.
    pub fn launch(&self) {
        let _ = std::fs::remove_file(self.pidfile());
        let _ = std::fs::remove_file(self.socket());
        let d = self.dir.display();
        let podman = format!(
            "CONTAINERS_CONF={d}/containers.conf CONTAINERS_STORAGE_CONF={d}/storage.conf \
             XDG_RUNTIME_DIR={d}/xdg XDG_CONFIG_HOME={d}/config \
             podman --root {d}/root --runroot {d}/runroot --storage-driver vfs"
        );
        let script = format!(
            r#"{podman} system service --time=0 unix://{d}/podman.sock >>{d}/service.log 2>&1 &
spid=$!
echo $spid > {d}/service.pid
while kill -0 {parent} 2>/dev/null && kill -0 $spid 2>/dev/null; do sleep 1; done
if ! kill -0 {parent} 2>/dev/null; then
  kill -TERM $spid 2>/dev/null; i=0
  while kill -0 $spid 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
  kill -KILL $spid 2>/dev/null
  timeout 60 {podman} pod rm -af -t 0 >/dev/null 2>&1
  timeout 60 {podman} rm -af -t 0 >/dev/null 2>&1
  # An exec session's conmon (health checks, exec) can outlive its removed container.
  for p in /proc/[0-9]*; do
    case "$(readlink $p/exe 2>/dev/null)" in */conmon) ;; *) continue ;; esac
    if tr '\0' ' ' <$p/cmdline 2>/dev/null | grep -qF '{d}/'; then kill -KILL ${{p#/proc/}} 2>/dev/null; fi
  done
  grep -o ' {d}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf {d}
fi"#,
            parent = std::process::id()
        );
        let child = spawn_watchdog(&script, "Podman", &self.dir);
        *self.watchdog.lock().unwrap() = Some(child);
        let sock = self.socket();
        wait_for(
            &format!(
                "the private Podman service to answer /_ping (log: {}/service.log)",
                self.dir.display()
            ),
            Duration::from_secs(60),
            || {
                let (status, _) = unix_get(&sock, "/v4.0.0/libpod/_ping").ok()?;
                (status == 200).then_some(())
            },
        );
    }

    /// SIGKILLs the service, as a crash would; containers keep running under conmon.
    pub fn kill(&self) {
        kill_daemon(&self.pidfile(), &self.watchdog, "the Podman service");
        let _ = std::fs::remove_file(self.socket());
    }

    /// Imports the busybox image (no registry here), with `/bin/infra` as a pod infra
    /// command: Podman's own pause image needs `catatonit`, which these machines lack.
    fn import_image(&self) {
        let root = super::busybox_rootfs(&self.dir);
        let infra = root.join("bin/infra");
        std::fs::write(
            &infra,
            "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 1 & wait $!; done\n",
        )
        .expect("write /bin/infra");
        let _ = Command::new("chmod").arg("755").arg(&infra).status();
        let cmd = format!(
            "tar -C {} -c . | podman --url {} import - {IMAGE}",
            root.display(),
            self.url()
        );
        let mut c = Command::new("sh");
        self.env(&mut c);
        let ok = c.arg("-c").arg(cmd).output().expect("import");
        assert!(
            ok.status.success(),
            "image import: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }

    /// The service's event log (`tmp_dir/events/events.log`).
    pub fn event_log(&self) -> PathBuf {
        self.dir.join("tmp/events/events.log")
    }

    /// Creates a pod whose infra container runs the test image (`--network none`).
    pub fn pod_create(&self, name: &str, opts: &[&str]) {
        let mut args = vec![
            "pod",
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--infra-image",
            IMAGE,
            "--infra-command",
            "/bin/infra",
        ];
        args.extend_from_slice(opts);
        self.cli_ok(&args);
    }
}

impl Runtime for PodmanService {
    fn kind(&self) -> &'static str {
        "podman"
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("podman");
        self.env(&mut cmd);
        cmd.arg("--url")
            .arg(self.url())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the podman CLI")
    }

    fn run(&self, prefix: &str, opts: &[&str], script: &str) -> super::Ctr<'_> {
        super::run_in(self, prefix, opts, script)
    }

    fn create(&self, prefix: &str, opts: &[&str], script: &str) -> super::Ctr<'_> {
        super::create_in(self, prefix, opts, script)
    }
}
