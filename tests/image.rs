//! The container image: the Dockerfile's `final` stage, built by the private dockerd from the
//! static binary (no registry here, so the `prebuilt` stage stands in for the Rust builder),
//! then the agent run *as a container* beside the containers it watches, with only the
//! runtime socket and its state directory mounted and a read-only root filesystem.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{get, unique, wait_for, wait_metric_at, wait_ready_at, Ctr, DockerDaemon, Runtime};

#[cfg(target_arch = "x86_64")]
const ARCH: (&str, &str) = ("x86_64-unknown-linux-gnu", "amd64");
#[cfg(target_arch = "aarch64")]
const ARCH: (&str, &str) = ("aarch64-unknown-linux-gnu", "arm64");

/// Images this size or larger mean something other than the binary got in.
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

struct Image {
    daemon: Arc<DockerDaemon>,
    tag: String,
}

/// Builds the image once per test binary.
fn image() -> Option<&'static Image> {
    static I: OnceLock<Option<Image>> = OnceLock::new();
    I.get_or_init(build_image).as_ref()
}

/// The static binary: `LIFECYCLE_STATIC_BIN` (scripts/test builds it once), else built here
/// the same way.
fn static_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LIFECYCLE_STATIC_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LIFECYCLE_STATIC_BIN={} is missing",
            p.display()
        );
        return p;
    }
    let root = common::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let status = Command::new(cargo)
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .args(["build", "--release", "--locked", "--target", ARCH.0])
        .arg("--target-dir")
        .arg(root.join("target/static"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "the static release build failed");
    eprintln!("static release build: {:?}", started.elapsed());
    root.join("target/static")
        .join(ARCH.0)
        .join("release/lifecycle-agent")
}

/// Fails unless `bin` is an ELF executable with no interpreter and no shared libraries.
fn assert_static(bin: &Path) {
    let b = std::fs::read(bin).expect("read the binary");
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", bin.display());
    assert_eq!(b[4], 2, "not a 64-bit ELF");
    assert_eq!(b[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            // PT_INTERP: a dynamic loader would be needed at run time.
            3 => panic!("{} has a program interpreter", bin.display()),
            // PT_DYNAMIC: allowed (static-pie relocates itself) as long as nothing is NEEDED.
            2 => {
                let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
                for entry in (off..off + size).step_by(16) {
                    match u64_at(entry) {
                        0 => break,
                        1 => panic!("{} needs a shared library (DT_NEEDED)", bin.display()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A docker CLI that builds with BuildKit against the private daemon: one with the buildx
/// plugin, or an engine-20.x-era CLI, which carries BuildKit's client itself. (A newer CLI
/// without buildx only has the legacy builder, which builds every stage before the target,
/// including the Rust builder this machine cannot pull.)
fn buildkit_cli(daemon: &DockerDaemon) -> (PathBuf, Vec<&'static str>) {
    let mut candidates: Vec<PathBuf> = Vec::new();
    let path = std::env::var("PATH").unwrap_or_default();
    for p in path
        .split(':')
        .chain(["/usr/bin"])
        .map(|d| Path::new(d).join("docker"))
    {
        if let Ok(real) = p.canonicalize() {
            if !candidates
                .iter()
                .any(|c| c.canonicalize().ok() == Some(real.clone()))
            {
                candidates.push(p);
            }
        }
    }
    let mut tried = Vec::new();
    for cli in candidates {
        // Asked of the private daemon: `docker version` fails without one, yet names the client.
        let run = |args: &[&str]| {
            Command::new(&cli)
                .env("DOCKER_HOST", daemon.host())
                .args(args)
                .stdin(Stdio::null())
                .output()
                .ok()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stdout).trim().to_string(),
                    )
                })
        };
        if run(&["buildx", "version"]).is_some_and(|(ok, _)| ok) {
            return (cli, vec!["buildx", "build", "--load"]);
        }
        let version = run(&["version", "--format", "{{.Client.Version}}"])
            .map(|(_, v)| v)
            .unwrap_or_default();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if (18..23).contains(&major) {
            return (cli, vec!["build"]);
        }
        tried.push(format!("{} (client {version:?}, no buildx)", cli.display()));
    }
    panic!("no docker CLI that builds with BuildKit; tried {tried:?}");
}

fn build_image() -> Option<Image> {
    let daemon = DockerDaemon::shared()?;
    let bin = static_binary();
    assert_static(&bin);

    // A context of its own holding only dist/<arch>/lifecycle-agent (the repository's
    // Dockerfile is given with -f): nothing is written into the work tree.
    let ctx = tempfile::tempdir().expect("build context");
    let dist = ctx.path().join("dist").join(ARCH.1);
    std::fs::create_dir_all(&dist).expect("dist dir");
    std::fs::copy(&bin, dist.join("lifecycle-agent")).expect("copy the binary");

    let tag = format!("lat-agent-image:{}", std::process::id());
    let (cli, build) = buildkit_cli(&daemon);
    let version = format!("VERSION={}", env!("CARGO_PKG_VERSION"));
    let dockerfile = common::repo_root().join("Dockerfile");
    let started = Instant::now();
    let out = Command::new(&cli)
        .env("DOCKER_HOST", daemon.host())
        .env("DOCKER_BUILDKIT", "1")
        .args(&build)
        .arg("-f")
        .arg(&dockerfile)
        .args(["--target", "final", "--build-arg", "BINARY_FROM=prebuilt"])
        .args(["--build-arg", &version, "-t", &tag])
        .arg(ctx.path())
        .stdin(Stdio::null())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build ({}): {}{}",
        cli.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "image {tag} built in {:?} with {} {}",
        started.elapsed(),
        cli.display(),
        build.join(" ")
    );
    Some(Image { daemon, tag })
}

fn inspect(daemon: &DockerDaemon, what: &str, format: &str) -> String {
    daemon.docker_ok(&["inspect", "-f", format, what])
}

#[test]
fn image_is_small_static_labelled_and_runs_as_root_by_default() {
    let Some(img) = image() else { return };
    let d = &img.daemon;
    let size: u64 = inspect(d, &img.tag, "{{.Size}}").parse().expect("size");
    eprintln!(
        "image size: {size} bytes ({:.1} MiB)",
        size as f64 / 1048576.0
    );
    assert!(size < MAX_IMAGE_BYTES, "image is {size} bytes");
    // One layer: the binary.
    assert_eq!(inspect(d, &img.tag, "{{len .RootFS.Layers}}"), "1");
    let labels: serde_json::Value =
        serde_json::from_str(&inspect(d, &img.tag, "{{json .Config.Labels}}")).expect("labels");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.title"], "lifecycle-agent");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(inspect(d, &img.tag, "{{.Config.User}}"), "0:0");
    assert_eq!(
        inspect(
            d,
            &img.tag,
            "{{json .Config.Entrypoint}} {{json .Config.Cmd}}"
        ),
        r#"["/usr/local/bin/lifecycle-agent"] ["run"]"#
    );
    assert_eq!(inspect(d, &img.tag, "{{.Architecture}}"), ARCH.1);
    // The binary runs in the empty image.
    let v = d.docker_ok(&["run", "--rm", "--network", "none", &img.tag, "--version"]);
    assert_eq!(v, format!("lifecycle-agent {}", env!("CARGO_PKG_VERSION")));
}

/// The agent's container, removed when dropped.
struct AgentCtr<'a> {
    ctr: Ctr<'a>,
    port: u16,
    state: tempfile::TempDir,
}

impl AgentCtr<'_> {
    fn logs(&self) -> String {
        let o = self.ctr.rt.cli(&["logs", &self.ctr.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
}

/// Runs the image as the chart does: configuration through the environment only, read-only
/// root, no capabilities, no privilege escalation, the socket (read-only) and the state
/// directory mounted. Host networking, with the agent bound to 127.0.0.1 only, on a port of
/// its choosing that it writes to a ready file in the state directory (`--ready-file`).
fn run_agent<'a>(img: &'a Image, filter: &str, user: &[&str], uid: Option<u32>) -> AgentCtr<'a> {
    let d = &img.daemon;
    let state = tempfile::tempdir().expect("state dir");
    if let Some(uid) = uid {
        std::os::unix::fs::chown(state.path(), Some(uid), Some(uid)).expect("chown the state dir");
    }
    let name = unique("agent-ctr");
    let sock = format!("{}:/var/run/docker.sock:ro", d.socket().display());
    let state_mount = format!("{}:/var/lib/lifecycle-agent", state.path().display());
    let env = [
        "NODE_NAME=image-node".to_string(),
        "LIFECYCLE_RUNTIME=docker".into(),
        "LIFECYCLE_SOCKET=/var/run/docker.sock".into(),
        "LIFECYCLE_LISTEN=127.0.0.1:0".into(),
        "LIFECYCLE_READY_FILE=/var/lib/lifecycle-agent/addr".into(),
        "LIFECYCLE_STATE_DIR=/var/lib/lifecycle-agent".into(),
        "LIFECYCLE_KUBE=off".into(),
        format!("LIFECYCLE_CONTAINER_FILTER={filter}"),
        "LIFECYCLE_LOG_FORMAT=json".into(),
        "LIFECYCLE_LOG_LEVEL=lifecycle_agent=debug".into(),
    ];
    let mut args: Vec<&str> = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &sock,
        "-v",
        &state_mount,
    ];
    args.extend_from_slice(user);
    for e in &env {
        args.extend_from_slice(&["-e", e]);
    }
    args.push(&img.tag);
    d.docker_ok(&args);
    let ctr = Ctr::adopt(d.as_ref(), &name);
    let ready = state.path().join("addr");
    let addr: std::net::SocketAddr = wait_for(
        &format!("the agent container {name} to write its address"),
        Duration::from_secs(30),
        || {
            if let Some(addr) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(addr);
            }
            let running = d.docker_ok(&["inspect", "-f", "{{.State.Running}}", &name]);
            assert_eq!(running, "true", "the agent container exited at start");
            None
        },
    );
    AgentCtr {
        ctr,
        port: addr.port(),
        state,
    }
}

#[test]
fn containerized_agent_serves_metrics_for_containers_started_beside_it() {
    let Some(img) = image() else { return };
    let d = &img.daemon;
    let label = format!("lat.test={}", unique("image"));
    let agent = run_agent(img, &label, &[], None);
    let what = format!("agent container {}", agent.ctr.name);
    wait_ready_at(agent.port, &what);

    let web = d.run("img-web", &["--label", &label], common::LOOP);
    let idle = d.create("img-idle", &["--label", &label], common::LOOP);
    let (port, web_c, idle_c) = (
        agent.port,
        [("container", web.name.as_str())],
        [("container", idle.name.as_str())],
    );
    wait_metric_at(port, "container_running", &web_c, 1.0, &what);
    d.docker_ok(&["restart", "-t", "5", &web.name]);
    wait_metric_at(port, "container_restarts_total", &web_c, 1.0, &what);
    wait_metric_at(port, "container_running", &web_c, 1.0, &what);
    wait_metric_at(port, "container_running", &idle_c, 0.0, &what);
    wait_metric_at(port, "containers_running", &[], 1.0, &what);
    wait_metric_at(port, "containers_stopped", &[], 1.0, &what);
    let (_, body) = get(agent.port, "/metrics");
    for (ls, _) in common::samples(&body, "container_restarts_total") {
        assert!(ls.contains(&("node".into(), "image-node".into())), "{ls:?}");
        assert!(ls.contains(&("runtime".into(), "docker".into())), "{ls:?}");
    }
    assert_eq!(
        common::metric(&body, "lifecycle_agent_runtime_connected", &[]),
        Some(1.0)
    );
    common::promtool_check(&body);
    let (status, stats) = get(agent.port, "/api/v1/stats/restarts");
    assert_eq!(status, 200, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats json");
    assert_eq!(stats["total_restarts"], 1, "{stats}");

    // The CLI inside the image reaches the agent by IP: no resolver, no NSS modules needed.
    let url = format!("http://127.0.0.1:{}", agent.port);
    let out = d.docker_ok(&[
        "exec",
        &agent.ctr.name,
        "/usr/local/bin/lifecycle-agent",
        "stats",
        "--url",
        &url,
    ]);
    assert!(!out.is_empty(), "empty stats output");

    // It really ran hardened.
    let n = &agent.ctr.name;
    assert_eq!(inspect(d, n, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(inspect(d, n, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert_eq!(
        inspect(d, n, "{{.State.Running}} {{.RestartCount}}"),
        "true 0"
    );

    // SIGTERM to PID 1: a clean exit.
    d.docker_ok(&["stop", "-t", "20", n]);
    let code = inspect(d, n, "{{.State.ExitCode}}");
    assert_eq!(code, "0", "exit code {code}; logs:\n{}", agent.logs());
    // Its store went to the mounted state dir, the one writable place it has.
    let stored = std::fs::read_dir(agent.state.path())
        .expect("state dir")
        .count();
    assert!(
        stored > 0,
        "nothing in the state dir; logs:\n{}",
        agent.logs()
    );
}

#[test]
fn containerized_agent_runs_as_non_root_in_the_sockets_group() {
    let Some(img) = image() else { return };
    let d = &img.daemon;
    let gid = std::fs::metadata(d.socket()).expect("socket").gid();
    assert_ne!(
        std::fs::metadata(d.socket()).expect("socket").mode() & 0o060,
        0,
        "the socket's group cannot use it"
    );

    // Without the socket's group: not ready, and /readyz says why.
    let label = format!("lat.test={}", unique("nonroot"));
    let denied = run_agent(img, &label, &["--user", "65532:65532"], Some(65532));
    let reason = wait_for(
        "/readyz to explain the refused socket",
        Duration::from_secs(30),
        || {
            let (status, body) = get(denied.port, "/readyz");
            (status == 503 && body.to_lowercase().contains("permission denied")).then_some(body)
        },
    );
    assert!(reason.contains("/var/run/docker.sock"), "{reason}");
    drop(denied);

    // In the socket's group (the chart's supplementalGroups), with a state dir it owns.
    let group = gid.to_string();
    let agent = run_agent(
        img,
        &label,
        &["--user", "65532:65532", "--group-add", &group],
        Some(65532),
    );
    let what = format!("non-root agent container {}", agent.ctr.name);
    wait_ready_at(agent.port, &what);
    let web = d.run("img-nonroot", &["--label", &label], common::LOOP);
    wait_metric_at(
        agent.port,
        "container_running",
        &[("container", &web.name)],
        1.0,
        &what,
    );
    assert_eq!(
        inspect(d, &agent.ctr.name, "{{.Config.User}}"),
        "65532:65532"
    );
    let stored = std::fs::read_dir(agent.state.path())
        .expect("state dir")
        .count();
    assert!(
        stored > 0,
        "the non-root agent wrote no store; logs:\n{}",
        agent.logs()
    );
}
