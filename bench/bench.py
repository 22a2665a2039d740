#!/usr/bin/env python3
"""Resource and latency figures for the README's Performance table.

Runs the release agent (with its durable store on) against
  - a private dockerd with 10 idle containers: idle RSS and CPU;
  - the synthetic Docker API (examples/synthetic_docker.rs) with 1 000 and 10 000 pod
    containers and 100 000 events: peak RSS (scrapes included), ingest time, /metrics time;
  - a private dockerd during a burst of 300 start/stop/restart actions, next to a
    `docker events` client: per-event lag of the agent behind that client, and both counts;
  - a private containerd 1.6 (CRI plugin) driven over CRI by examples/cri_load.rs as a
    kubelet would: idle RSS and CPU with 10 running pod containers, the ingest of a restart
    burst (one container failing through 100 attempts; lag behind containerd's own event
    time), and the reconciliation of 1 000 containers at start.

Public tools only (dockerd, docker CLI, busybox-static, curl-free: urllib). Needs root for
dockerd. Every loop is bounded; every process it starts is stopped.

    sudo python3 bench/bench.py            # prints one Markdown table
    sudo python3 bench/bench.py containerd # only the containerd rows
"""

import hashlib

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/lifecycle-agent")
SYNTH = os.path.join(ROOT, "target/release/examples/synthetic_docker")
CRI_LOAD = os.path.join(ROOT, "target/release/examples/cri_load")
CRI_IMAGE = "localhost/latb-busybox:bb"
LOOP = "trap 'exit 0' TERM; while true; do sleep 1; done"
MAPPED = {"create", "start", "restart", "stop", "die", "kill", "pause", "unpause", "destroy", "oom"}
PROCS = []


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    PROCS.append(p)
    return p


def stop(p, timeout=30):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_until(what, fn, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, timeout=30):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except Exception:
        return 0, b""


def metric(text, name):
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Dockerd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="latb-", dir="/tmp")
        self.sock = os.path.join(self.dir, "d.sock")
        ns = f"latb{os.getpid()}"
        self.proc = spawn(
            ["dockerd", "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec",
             "--pidfile", f"{self.dir}/d.pid", "-H", f"unix://{self.sock}", "--bridge=none",
             "--iptables=false", "--ip-masq=false", "--containerd-namespace", ns,
             "--containerd-plugins-namespace", ns + "p"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/dockerd.log", "w"))
        wait_until("dockerd", lambda: self.cli("version", check=False).returncode == 0)
        rootfs = os.path.join(self.dir, "rootfs/bin")
        os.makedirs(rootfs)
        busybox = shutil.which("busybox")
        shutil.copy(busybox, os.path.join(rootfs, "busybox"))
        for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split():
            if applet != "busybox":
                os.symlink("busybox", os.path.join(rootfs, applet))
        tar = subprocess.Popen(["tar", "-C", os.path.join(self.dir, "rootfs"), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", f"unix://{self.sock}", "import", "-", "latb:1"], stdin=tar.stdout,
                       check=True, capture_output=True)
        tar.wait()

    def cli(self, *args, check=True):
        return subprocess.run(["docker", "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                              check=check)

    def run(self, name):
        self.cli("run", "-d", "--network", "none", "--name", name, "latb:1", "/bin/sh", "-c", LOOP)

    def close(self):
        names = self.cli("ps", "-aq", check=False).stdout.split()
        if names:
            self.cli("rm", "-f", *names, check=False)
        stop(self.proc)
        subprocess.run(["sh", "-c", f"grep -o ' {self.dir}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def busybox_rootfs(dir):
    rootfs = os.path.join(dir, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    busybox = shutil.which("busybox")
    shutil.copy(busybox, os.path.join(rootfs, "bin/busybox"))
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    return rootfs


class Containerd:
    """A private containerd with its CRI plugin (own root, state, sockets, runc root)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="latb-c-", dir="/tmp")
        d = self.dir
        self.sock = os.path.join(d, "c.sock")
        for sub in ("cni/bin", "cni/conf"):
            os.makedirs(os.path.join(d, sub))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(f"""version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[{cri}]
  sandbox_image = "{CRI_IMAGE}"
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [{cri}.cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
""")
        self.proc = spawn(["containerd", "--config", os.path.join(d, "config.toml")],
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "containerd.log"), "w"))
        wait_until("containerd", lambda: subprocess.run(["ctr", "-a", self.sock, "version"],
                                                        capture_output=True).returncode == 0)
        subprocess.run(["ctr", "-a", self.sock, "-n", "k8s.io", "images", "import", self.image()],
                       check=True, capture_output=True)

    def image(self):
        """The busybox image as an OCI archive (no registry here); it keeps a sandbox running."""
        work = os.path.join(self.dir, "image")
        blobs = os.path.join(work, "oci/blobs/sha256")
        os.makedirs(blobs)
        rootfs = busybox_rootfs(work)
        layer = os.path.join(work, "layer.tar")
        subprocess.run(["tar", "-C", rootfs, "-cf", layer, "."], check=True)

        def blob(data):
            digest = hashlib.sha256(data).hexdigest()
            with open(os.path.join(blobs, digest), "wb") as f:
                f.write(data)
            return {"digest": f"sha256:{digest}", "size": len(data)}

        with open(layer, "rb") as f:
            lb = blob(f.read())
        cb = blob(json.dumps({"architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
                              "os": "linux", "config": {"Cmd": ["/bin/sleep", "1000000"]},
                              "rootfs": {"type": "layers", "diff_ids": [lb["digest"]]}}).encode())
        mb = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cb},
                              "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **lb}]}).encode())
        with open(os.path.join(work, "oci/index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       **mb, "annotations": {"io.containerd.image.name": CRI_IMAGE}}]}, f)
        with open(os.path.join(work, "oci/oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        archive = os.path.join(work, "image.tar")
        subprocess.run(["tar", "-C", os.path.join(work, "oci"), "-cf", archive, "."], check=True)
        return archive

    def load(self, *args):
        subprocess.run([CRI_LOAD, self.sock, CRI_IMAGE, *args], check=True)

    def close(self):
        subprocess.run([CRI_LOAD, self.sock, CRI_IMAGE, "cleanup"], capture_output=True)
        stop(self.proc)
        # Shims outlive containerd; they are ours by the socket path they were given.
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if self.sock.encode() in f.read():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        subprocess.run(["sh", "-c", f"grep -o ' {self.dir}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_agent(sock, extra=(), log=None, state=None):
    port = free_port()
    state = state or tempfile.mkdtemp(prefix="latb-state-")
    p = spawn([AGENT, "run", "--socket", sock, "--listen", f"127.0.0.1:{port}", "--node-name", "bench",
               "--state-dir", state, *extra],
              stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    wait_until("agent /readyz", lambda: http(port, "/readyz")[0] == 200)
    return p, port, state


def measure_idle(rows, what, sock, extra=()):
    """An agent on `sock` with 10 running containers: peak RSS and CPU over 60 s of scrapes."""
    p, port, state = start_agent(sock, extra)
    wait_until("10 containers", lambda: metric(http(port, "/metrics")[1], "containers_running") == 10)
    time.sleep(5)  # let start-up settle before measuring
    t0, c0 = time.monotonic(), proc_stat(p.pid)
    for _ in range(12):  # 60 s, one scrape every 5 s as Prometheus would
        http(port, "/metrics")
        time.sleep(5)
    cpu = (proc_stat(p.pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) * 100
    rows.append((what, f"{hwm_kib(p.pid) / 1024:.1f} MiB", f"{cpu:.3f} % of a core", "60 s, scraped every 5 s"))
    stop(p)
    shutil.rmtree(state, ignore_errors=True)


def idle(rows):
    d = Dockerd()
    try:
        for i in range(10):
            d.run(f"idle-{i}")
        measure_idle(rows, "idle, 10 containers (real dockerd)", d.sock)
    finally:
        d.close()


def synthetic(rows, containers, events, restart=False):
    sock = tempfile.mktemp(prefix="latb-synth-", suffix=".sock", dir="/tmp")
    s = spawn([SYNTH, "--socket", sock, "--containers", str(containers), "--events", str(events)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until("synthetic socket", lambda: os.path.exists(sock))
    try:
        t0 = time.monotonic()
        p, port, state = start_agent(sock, ["--max-history", str(events)])
        c0 = proc_stat(p.pid)
        wait_until("all events", lambda: metric(http(port, "/metrics")[1], "lifecycle_agent_events_processed_total")
                   == events, timeout=300)
        ingest = time.monotonic() - t0
        cpu_s = (proc_stat(p.pid) - c0) / os.sysconf("SC_CLK_TCK")
        scrape = []
        for _ in range(5):
            a = time.monotonic()
            _, body = http(port, "/metrics")
            scrape.append(time.monotonic() - a)
        rows.append((f"{containers} containers + {events} history events (synthetic)",
                     f"{hwm_kib(p.pid) / 1024:.1f} MiB", f"{cpu_s:.2f} CPU-s to ingest",
                     f"ready + ingest {ingest:.1f} s; /metrics {min(scrape) * 1000:.1f} ms ({len(body) / 1e6:.1f} MB)"))
        stop(p)
        if restart:
            restarted(rows, containers, events, state)
        shutil.rmtree(state, ignore_errors=True)
    finally:
        stop(s)


def restarted(rows, containers, events, state):
    """The agent started again on the state the flood left: the history is loaded from disk."""
    sock = tempfile.mktemp(prefix="latb-synth-", suffix=".sock", dir="/tmp")
    s = spawn([SYNTH, "--socket", sock, "--containers", str(containers), "--events", "0"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until("synthetic socket", lambda: os.path.exists(sock))
    try:
        t0 = time.monotonic()
        p, port, _ = start_agent(sock, ["--max-history", str(events)], state=state)
        ready = time.monotonic() - t0
        held = metric(http(port, "/metrics")[1], "lifecycle_agent_history_events")
        if held != events:
            raise SystemExit(f"the restarted agent holds {held} history events, not {events}")
        rows.append((f"restart on that state ({events} stored events)", f"{hwm_kib(p.pid) / 1024:.1f} MiB", "-",
                     f"ready {ready:.1f} s, history loaded from disk"))
        stop(p)
    finally:
        stop(s)


def burst(rows):
    d = Dockerd()
    log_path = tempfile.mktemp(prefix="latb-agent-", suffix=".log")
    try:
        names = [f"burst-{i}" for i in range(10)]
        p, port, state = start_agent(d.sock, ["--log-format", "json", "--log-level", "lifecycle_agent::events=debug,warn"],
                                     log=open(log_path, "w"))
        client = spawn(["docker", "-H", f"unix://{d.sock}", "events", "--filter", "type=container", "--format",
                        "{{json .}}"], stdout=subprocess.PIPE, text=True)
        seen = {}

        def read():
            for line in client.stdout:
                now = time.time_ns()
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                seen[(e["timeNano"], e["Actor"]["ID"], e["Action"])] = now

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(1)  # the client subscribes
        for n in names:
            d.run(n)
        actions = 0
        for i in range(300 - len(names)):
            n = names[i % len(names)]
            step = (i // len(names)) % 3
            d.cli({0: "restart", 1: "stop", 2: "start"}[step], *(["-t", "5"] if step < 2 else []), n)
            actions += 1
        time.sleep(2)  # both sides drain
        stop(client)
        agent_at = {(int(e["time_nanos"]), e["container_id"], e["action"]): iso_ns(e["timestamp"])
                    for e in recorded_events(log_path)}
        lifecycle = {k: v for k, v in seen.items() if k[2].split(":")[0] in MAPPED}
        lags = sorted((agent_at[k] - v) / 1e6 for k, v in lifecycle.items() if k in agent_at)
        missing = len([k for k in lifecycle if k not in agent_at])
        p50 = lags[len(lags) // 2] if lags else float("nan")
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
        rows.append((f"burst: {actions + len(names)} actions on a real dockerd", "-",
                     f"lag p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                     f"events: docker events {len(lifecycle)}, agent {len(agent_at)}, missed {missing}"))
        stop(p)
        shutil.rmtree(state, ignore_errors=True)
    finally:
        d.close()
        if os.path.exists(log_path):
            os.remove(log_path)


def containerd_idle(rows):
    c = Containerd()
    try:
        c.load("pods", "10", "1", "run")
        measure_idle(rows, "idle, 10 pod containers (real containerd)", c.sock, ["--runtime", "containerd"])
    finally:
        c.close()


def containerd_burst(rows):
    c = Containerd()
    log_path = tempfile.mktemp(prefix="latb-agent-", suffix=".log")
    attempts = 100
    try:
        p, port, state = start_agent(c.sock, ["--runtime", "containerd", "--log-format", "json", "--log-level",
                                              "lifecycle_agent::events=debug,warn"], log=open(log_path, "w"))
        c0 = proc_stat(p.pid)
        t0 = time.monotonic()
        c.load("crashloop", str(attempts))
        took = time.monotonic() - t0
        wait_until("the burst's restarts", lambda: metric(http(port, "/metrics")[1], "containers_restarts_total")
                   == attempts - 1)
        cpu = (proc_stat(p.pid) - c0) / os.sysconf("SC_CLK_TCK")
        lags = sorted((iso_ns(e["timestamp"]) - int(e["time_nanos"])) / 1e6 for e in recorded_events(log_path))
        p50 = lags[len(lags) // 2] if lags else float("nan")
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
        rows.append((f"restart burst: one container through {attempts} attempts (real containerd, {took:.1f} s)",
                     f"{hwm_kib(p.pid) / 1024:.1f} MiB", f"lag p50 {p50:.2f} ms, p99 {p99:.2f} ms; {cpu:.2f} CPU-s",
                     f"{len(lags)} events; restarts counted {attempts - 1}, "
                     f"inferred {metric(http(port, '/metrics')[1], 'lifecycle_agent_restarts_inferred_total'):.0f}"))
        stop(p)
        shutil.rmtree(state, ignore_errors=True)
    finally:
        c.close()
        if os.path.exists(log_path):
            os.remove(log_path)


def containerd_reconcile(rows, containers=1_000, pods=10):
    c = Containerd()
    try:
        c.load("pods", str(pods), str(containers // pods), "create")
        t0 = time.monotonic()
        p, port, state = start_agent(c.sock, ["--runtime", "containerd"])
        ready = time.monotonic() - t0
        n = metric(http(port, "/metrics")[1], "containers_tracked")
        cpu = proc_stat(p.pid) / os.sysconf("SC_CLK_TCK")
        rows.append((f"reconciliation of {containers} containers at start (real containerd, CRI list + status)",
                     f"{hwm_kib(p.pid) / 1024:.1f} MiB", f"ready {ready:.2f} s; {cpu:.2f} CPU-s",
                     f"containers_tracked {n:.0f}"))
        stop(p)
        shutil.rmtree(state, ignore_errors=True)
    finally:
        c.close()


def recorded_events(log_path):
    """The events the agent's JSON debug log says it recorded (`event applied`, `Recorded`)."""
    with open(log_path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("message") == "event applied" and e.get("applied") == "Recorded":
                yield e


def iso_ns(ts):
    # 2026-11-26T05:02:41.687193Z (tracing-subscriber's JSON timestamp, microseconds or better)
    import datetime
    main, frac = ts.rstrip("Z").split(".")
    secs = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def main():
    only_containerd = sys.argv[1:] == ["containerd"]
    tools = ("containerd", "ctr", "busybox") if only_containerd else ("dockerd", "docker", "containerd", "ctr", "busybox")
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (sudo ./scripts/test installs it)")
    subprocess.run(["cargo", "build", "--release", "--bin", "lifecycle-agent", "--example", "synthetic_docker",
                    "--example", "cri_load"], cwd=ROOT, check=True)
    rows = []
    try:
        if not only_containerd:
            idle(rows)
            synthetic(rows, 1_000, 100_000, restart=True)
            synthetic(rows, 10_000, 100_000)
            burst(rows)
        containerd_idle(rows)
        containerd_burst(rows)
        containerd_reconcile(rows)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nMachine: {os.cpu_count()} cores ({cpu}), {os.uname().release}\n")
    print("| scenario | peak RSS | CPU / lag | notes |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
