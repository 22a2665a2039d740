//! A private containerd 1.6 with its CRI plugin, driven over CRI exactly as a kubelet drives
//! it: RunPodSandbox (host network, no CNI), CreateContainer with the kubelet's labels,
//! annotations and increasing attempts, StartContainer, StopContainer, RemoveContainer,
//! RemovePodSandbox.
//!
//! Its own root, state, sockets and runc root under one directory, and a watchdog that stops
//! it, its shims and their containers once the test process is gone. The pod sandbox image
//! and the containers' image are one OCI image made here from busybox (no registry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tonic::transport::Channel;

use super::{busybox_rootfs, kill_daemon, require, spawn_watchdog, unique, wait_for, SEQ};

/// The image every pod sandbox and container runs (imported, never pulled).
pub const CRI_IMAGE: &str = "localhost/lat-busybox:bb";

static SHARED: OnceLock<Option<Arc<Containerd>>> = OnceLock::new();

/// A private containerd. Restartable (kill -9 and start again on the same data).
pub struct Containerd {
    pub dir: PathBuf,
    rt: tokio::runtime::Runtime,
    watchdog: Mutex<Option<Child>>,
}

/// A pod sandbox made through CRI, removed (with its containers) when dropped.
pub struct Pod<'a> {
    pub ctd: &'a Containerd,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox_id: String,
    config: PodSandboxConfig,
}

impl Containerd {
    /// Starts a containerd of its own (for tests that restart it).
    pub fn start_private() -> Option<Arc<Containerd>> {
        if !require("containerd") || !require("ctr") || !require("busybox") {
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/latc-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("cni/bin")).expect("create containerd dir");
        std::fs::create_dir_all(dir.join("cni/conf")).expect("create containerd dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for CRI calls");
        let c = Arc::new(Containerd {
            dir,
            rt,
            watchdog: Mutex::new(None),
        });
        c.write_config();
        c.launch();
        c.import_image();
        Some(c)
    }

    /// One containerd shared by the tests of a binary that do not restart it.
    pub fn shared() -> Option<Arc<Containerd>> {
        SHARED.get_or_init(Containerd::start_private).clone()
    }

    /// The shared containerd, borrowed for the whole test process (its pods can then live
    /// in a test's own structs, as the lifecycle matrix's do).
    pub fn shared_static() -> Option<&'static Containerd> {
        SHARED.get_or_init(Containerd::start_private).as_deref()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{CRI_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
        );
        std::fs::write(self.dir.join("config.toml"), config).expect("write config.toml");
    }

    /// Starts containerd under a shell watchdog that stops it, its shims and their
    /// containers, and removes its files, when this test process exits.
    pub fn launch(&self) {
        let _ = std::fs::remove_file(self.pidfile());
        let _ = std::fs::remove_file(self.socket());
        let d = self.dir.display();
        let script = format!(
            r#"containerd --config {d}/config.toml >>{d}/containerd.log 2>&1 &
cpid=$!
echo $cpid > {d}/containerd.pid
while kill -0 {parent} 2>/dev/null && kill -0 $cpid 2>/dev/null; do sleep 1; done
# containerd ended under a live test (a crash the test made): the test starts another.
kill -0 {parent} 2>/dev/null && exit 0
for c in $(runc --root {d}/runc/k8s.io list -q 2>/dev/null); do runc --root {d}/runc/k8s.io kill $c KILL 2>/dev/null; done
kill -TERM $cpid 2>/dev/null; i=0
while kill -0 $cpid 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
kill -KILL $cpid 2>/dev/null
for p in $(grep -l -s -- '{d}/c.sock' /proc/[0-9]*/cmdline | cut -d/ -f3); do [ "$p" = "$$" ] || kill -KILL $p 2>/dev/null; done
grep -o ' {d}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
rm -rf {d}"#,
            parent = std::process::id()
        );
        let child = spawn_watchdog(&script, "containerd", &self.dir);
        *self.watchdog.lock().unwrap() = Some(child);
        wait_for(
            "the private containerd to answer CRI Version",
            Duration::from_secs(60),
            || {
                self.rt
                    .block_on(async {
                        let mut cri = self.client().await.ok()?;
                        cri.version(VersionRequest {
                            version: "v1".into(),
                        })
                        .await
                        .ok()
                    })
                    .map(|_| ())
            },
        );
    }

    /// SIGKILLs containerd, as a crash would; the shims and their containers survive it.
    pub fn kill(&self) {
        kill_daemon(&self.pidfile(), &self.watchdog, "containerd");
    }

    /// A crash and a restart on the same data, as `systemctl restart containerd` after one.
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// The busybox image, as an OCI archive imported with `ctr` (no registry here). Its
    /// default command keeps a pod sandbox running.
    fn import_image(&self) {
        let work = self.dir.join("image");
        let blobs = work.join("oci/blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("image dir");
        let root = busybox_rootfs(&work);
        let layer = work.join("layer.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&layer)
                .arg("."),
        );
        let blob = |bytes: &[u8]| -> (String, usize) {
            let tmp = work.join("blob");
            std::fs::write(&tmp, bytes).expect("write blob");
            let digest = sha256(&tmp);
            std::fs::rename(&tmp, blobs.join(&digest)).expect("store blob");
            (digest, bytes.len())
        };
        let layer_bytes = std::fs::read(&layer).expect("read layer");
        let (layer_digest, layer_size) = blob(&layer_bytes);
        let config = serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sleep", "1000000"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        });
        let (config_digest, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{config_digest}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": format!("sha256:{layer_digest}"), "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                           "annotations": {"io.containerd.image.name": CRI_IMAGE}}],
        });
        std::fs::write(work.join("oci/index.json"), index.to_string()).expect("index.json");
        std::fs::write(
            work.join("oci/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let archive = work.join("image.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(work.join("oci"))
                .arg("-cf")
                .arg(&archive)
                .arg("."),
        );
        run_ok(
            Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive),
        );
    }

    /// Runs `ctr` against this containerd in `namespace`; insists on success.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr -n {namespace} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The test image in another containerd namespace (Docker's own would be `moby`).
    pub fn import_into(&self, namespace: &str) {
        let archive = self.dir.join("image/image.tar");
        self.ctr(
            namespace,
            &["images", "import", &archive.display().to_string()],
        );
    }

    async fn client(&self) -> Result<RuntimeServiceClient<Channel>, String> {
        let ch = containerd_client::connect(self.socket())
            .await
            .map_err(|e| e.to_string())?;
        Ok(RuntimeServiceClient::new(ch))
    }

    /// Runs one CRI call to completion.
    pub fn cri<T, F>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(async {
            let cri = self
                .client()
                .await
                .unwrap_or_else(|e| panic!("connect to the private containerd: {e}"));
            match tokio::time::timeout(Duration::from_secs(60), f(cri)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => panic!("CRI {what}: {:?}: {}", s.code(), s.message()),
                Err(_) => panic!("CRI {what}: no answer within 60s"),
            }
        })
    }

    /// A pod sandbox with host networking (no CNI) in Kubernetes namespace `namespace`.
    pub fn pod(&self, prefix: &str, namespace: &str) -> Pod<'_> {
        let name = unique(prefix);
        let uid = format!("uid-{name}");
        self.pod_named(namespace, &name, &uid)
    }

    /// A pod sandbox of this exact identity (a pod re-created under its name gets a new uid).
    pub fn pod_named(&self, namespace: &str, name: &str, uid: &str) -> Pod<'_> {
        let (name, uid) = (name.to_string(), uid.to_string());
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            log_directory: self.dir.join("logs").join(&uid).display().to_string(),
            labels: HashMap::from([
                ("io.kubernetes.pod.name".into(), name.clone()),
                ("io.kubernetes.pod.namespace".into(), namespace.into()),
                ("io.kubernetes.pod.uid".into(), uid.clone()),
            ]),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let c = config.clone();
        let sandbox_id = self
            .cri("RunPodSandbox", |mut cri| async move {
                cri.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(c),
                    runtime_handler: String::new(),
                })
                .await
            })
            .pod_sandbox_id;
        Pod {
            ctd: self,
            namespace: namespace.into(),
            name,
            uid,
            sandbox_id,
            config,
        }
    }

    pub fn start(&self, id: &str) {
        let id = id.to_string();
        self.cri("StartContainer", |mut cri| async move {
            cri.start_container(StartContainerRequest { container_id: id })
                .await
        });
    }

    /// StopContainer: SIGTERM, then SIGKILL after `timeout` seconds (0: at once, exit 137).
    pub fn stop(&self, id: &str, timeout: i64) {
        let id = id.to_string();
        self.cri("StopContainer", |mut cri| async move {
            cri.stop_container(StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await
        });
    }

    pub fn remove(&self, id: &str) {
        let id = id.to_string();
        self.cri("RemoveContainer", |mut cri| async move {
            cri.remove_container(RemoveContainerRequest { container_id: id })
                .await
        });
    }

    pub fn status(&self, id: &str) -> ContainerStatus {
        let id = id.to_string();
        self.cri("ContainerStatus", |mut cri| async move {
            cri.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
        })
        .status
        .expect("a container status")
    }

    /// Waits until a container has exited (CRI state EXITED); returns its status.
    pub fn wait_exited(&self, id: &str) -> ContainerStatus {
        wait_for("a container to exit", Duration::from_secs(60), || {
            let st = self.status(id);
            (st.state == k8s_cri::v1::ContainerState::ContainerExited as i32).then_some(st)
        })
    }
}

impl Pod<'_> {
    /// CreateContainer as the kubelet does for attempt `attempt` of container `name`:
    /// its labels, its restartCount annotation, and an optional memory limit in bytes.
    pub fn create(&self, name: &str, attempt: u32, script: &str, memory: Option<i64>) -> String {
        self.create_labelled(name, attempt, script, memory, &[])
    }

    /// [`Pod::create`] with more CreateContainer labels beside the kubelet's (`KEY`, `VALUE`).
    pub fn create_labelled(
        &self,
        name: &str,
        attempt: u32,
        script: &str,
        memory: Option<i64>,
        extra: &[(String, String)],
    ) -> String {
        let mut labels: HashMap<String, String> = extra.iter().cloned().collect();
        labels.extend([
            ("io.kubernetes.pod.name".into(), self.name.clone()),
            ("io.kubernetes.pod.namespace".into(), self.namespace.clone()),
            ("io.kubernetes.pod.uid".into(), self.uid.clone()),
            ("io.kubernetes.container.name".into(), name.into()),
        ]);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: CRI_IMAGE.into(),
                ..ImageSpec::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            labels,
            annotations: HashMap::from([
                (
                    "io.kubernetes.container.restartCount".into(),
                    attempt.to_string(),
                ),
                (
                    "io.kubernetes.container.terminationMessagePath".into(),
                    "/dev/termination-log".into(),
                ),
            ]),
            log_path: format!("{name}/{attempt}.log"),
            linux: Some(LinuxContainerConfig {
                resources: memory.map(|m| LinuxContainerResources {
                    memory_limit_in_bytes: m,
                    ..LinuxContainerResources::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let sandbox = self.sandbox_id.clone();
        let sandbox_config = self.config.clone();
        self.ctd
            .cri("CreateContainer", |mut cri| async move {
                cri.create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox,
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await
            })
            .container_id
    }

    /// Creates and starts attempt `attempt`, as the kubelet does after each back-off.
    pub fn run(&self, name: &str, attempt: u32, script: &str, memory: Option<i64>) -> String {
        let id = self.create(name, attempt, script, memory);
        self.ctd.start(&id);
        id
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let id = self.sandbox_id.clone();
        let ctd = self.ctd;
        // Panicking in a drop during a failed test would hide its message: best effort.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let stop = id.clone();
            ctd.cri("StopPodSandbox", |mut cri| async move {
                cri.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: stop,
                })
                .await
            });
            ctd.cri("RemovePodSandbox", |mut cri| async move {
                cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
            });
        }));
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}
