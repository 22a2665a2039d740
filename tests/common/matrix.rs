//! The verbs the lifecycle matrix (`tests/lifecycle.rs`) speaks, the same on Docker, Podman
//! and containerd, so that its bodies say what happens to a container and not which CLI or
//! API makes it happen.
//!
//! Docker and Podman do them through their CLI ([`Runtime`]). containerd does them through
//! CRI as a kubelet does ([`Containerd`], docs/design.md "Restart semantics"): every
//! container lives in a pod sandbox; a restart is the kubelet's replacement (the running
//! attempt stopped, attempt n+1 of the same name created and started, and all but the newest
//! dead attempt removed, as the kubelet's garbage collector keeps one); a kill is
//! StopContainer with no grace period; pause and resume go through `ctr`, since CRI has
//! neither but containerd publishes `/tasks/paused` and `/tasks/resumed` for them. Whatever
//! a runtime does not have (restart policies, renames, a stopped container started again)
//! panics here on containerd: the matrix keeps those bodies in its Docker/Podman group.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_cri::v1::ContainerState;

use super::containerd::{Containerd, Pod};
use super::{unique, wait_for, Agent, AgentBuilder, Ctr, DockerDaemon, PodmanService, Runtime};

/// A runtime the matrix runs on.
pub enum Node {
    /// Docker or Podman, driven through its CLI.
    Cli(Arc<dyn Runtime>),
    /// containerd, driven over CRI as a kubelet drives it, and the agent's path to it.
    Cri(&'static Containerd, CriPath),
}

/// How the agent follows containerd.
#[derive(Clone, Copy)]
pub enum CriPath {
    /// `--runtime containerd`: containerd's event stream and CRI.
    Containerd,
    /// `--runtime crio`: the generic CRI path, which on containerd 1.6 relists every second
    /// (no `GetContainerEvents` there), as the kubelet's generic PLEG does.
    Generic,
}

impl Node {
    /// The binary's private dockerd (None: skipped, see [`super::require`]).
    pub fn docker() -> Option<Node> {
        Some(Node::Cli(DockerDaemon::shared()?))
    }

    /// The binary's private Podman service.
    pub fn podman() -> Option<Node> {
        Some(Node::Cli(PodmanService::shared()?))
    }

    /// The binary's private containerd, followed through its events.
    pub fn containerd() -> Option<Node> {
        Some(Node::Cri(Containerd::shared_static()?, CriPath::Containerd))
    }

    /// The binary's private containerd, followed through the generic CRI path.
    pub fn cri() -> Option<Node> {
        Some(Node::Cri(Containerd::shared_static()?, CriPath::Generic))
    }

    /// The agent's `--runtime`.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Cli(rt) => rt.kind(),
            Node::Cri(_, CriPath::Containerd) => "containerd",
            Node::Cri(_, CriPath::Generic) => "crio",
        }
    }

    /// The runtime the series name (`runtime`, the scheme of `kube_container_id`): the one
    /// that answers, whichever path the agent takes to it.
    pub fn runtime(&self) -> &'static str {
        match self {
            Node::Cli(rt) => rt.kind(),
            Node::Cri(..) => "containerd",
        }
    }

    pub fn socket(&self) -> PathBuf {
        match self {
            Node::Cli(rt) => rt.socket(),
            Node::Cri(ctd, _) => ctd.socket(),
        }
    }

    /// An agent on this runtime, with a fresh state dir.
    pub fn agent(&self) -> AgentBuilder {
        Agent::builder(self.kind(), self.socket())
    }

    /// Whether a restart is a `restarted` event of its own and a kill a `killed` one.
    /// Docker and Podman report both; on a kubelet node a restart is a new attempt (its own
    /// `created` and `started`) and containerd has no kill event, only the exit.
    pub fn reports_restart_and_kill(&self) -> bool {
        matches!(self, Node::Cli(_))
    }

    /// Whether the agent hears of every container: runtimes with an event stream do; the
    /// generic CRI path on containerd 1.6 relists once a second and misses one created and
    /// removed in between (the kubelet's own back-off is 10 s and more).
    pub fn sees_every_container(&self) -> bool {
        !matches!(self, Node::Cri(_, CriPath::Generic))
    }

    /// The reason word of a container killed by a signal without an OOM kill: ours,
    /// `Killed`, where the runtime reports the kill; else CRI's and the kubelet's `Error`
    /// (README "containerd and CRI-O").
    pub fn killed_reason(&self) -> &'static str {
        if self.reports_restart_and_kill() {
            "Killed"
        } else {
            "Error"
        }
    }
}

/// One test of the matrix on one runtime: its runtime, the `lat.test=<unique>` label its
/// agents filter on, and (containerd) the pod its plain containers live in.
pub struct Case {
    pub node: Node,
    /// `lat.test=<unique>`.
    pub label: String,
    home: OnceLock<Pod<'static>>,
}

impl Case {
    pub fn new(node: Node, name: &str) -> Case {
        Case {
            node,
            label: format!("lat.test={}", unique(name)),
            home: OnceLock::new(),
        }
    }

    /// An agent that tracks only this case's containers, with `extra` flags, ready.
    pub fn agent(&self, extra: &[&str]) -> Agent {
        self.node.agent().filter(&self.label).args(extra).start()
    }

    /// Returns once the agent has applied all this case's runtime did so far (a sentinel
    /// container with the case's label, seen and then seen gone): exact counts are read
    /// after it. Returns the sentinel's name.
    pub fn settle(&self, agent: &Agent) -> String {
        agent.barrier_on(|| {
            let sentinel = self.create("barrier", "true");
            (sentinel.name.clone(), sentinel)
        })
    }

    /// A container with this case's label, named uniquely after `prefix`.
    pub fn container(&self, prefix: &str) -> Spec<'_> {
        self.unlabelled(prefix).label(&self.label)
    }

    /// A container without the case's label (the agent must not see it unless the test
    /// gives it the labels the filter asks for).
    pub fn unlabelled(&self, prefix: &str) -> Spec<'_> {
        let place = match &self.node {
            Node::Cli(rt) => Place::Cli(&**rt),
            Node::Cri(..) => Place::Cri {
                pod: self.home(),
                attempt: 0,
            },
        };
        Spec::at(unique(prefix), place)
    }

    /// `run`: a started container with the case's label.
    pub fn run(&self, prefix: &str, script: &str) -> Container<'_> {
        self.container(prefix).run(script)
    }

    /// `create`: a container with the case's label, never started.
    pub fn create(&self, prefix: &str, script: &str) -> Container<'_> {
        self.container(prefix).create(script)
    }

    /// A container that fails `restarts` + 1 times in a row and is restarted after each
    /// failure but the last: Docker's and Podman's `--restart on-failure:N`; on containerd
    /// the kubelet's crash loop, attempts 0 to `restarts`, each created once the one before
    /// it has exited.
    pub fn crash_loop(&self, prefix: &str, restarts: u32, script: &str) -> Container<'_> {
        match &self.node {
            Node::Cli(_) => {
                let policy = format!("on-failure:{restarts}");
                self.container(prefix)
                    .opts(&["--restart", &policy])
                    .run(script)
            }
            Node::Cri(..) => {
                let ctr = self.container(prefix).run(script);
                for _ in 0..restarts {
                    ctr.wait_exited();
                    ctr.replace(0);
                }
                ctr
            }
        }
    }

    /// A pod identity of namespace `namespace`, name `name` and uid `uid`: on Docker and
    /// Podman the kubelet's labels on each container (as cri-dockerd writes them), on
    /// containerd a pod sandbox.
    pub fn pod(&self, namespace: &str, name: &str, uid: &str) -> PodRef<'_> {
        let sandbox = match &self.node {
            Node::Cli(_) => None,
            Node::Cri(ctd, _) => Some(ctd.pod_named(namespace, name, uid)),
        };
        PodRef {
            case: self,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            sandbox,
        }
    }

    /// containerd: the pod sandbox of this case's plain containers.
    fn home(&self) -> &Pod<'static> {
        let Node::Cri(ctd, _) = &self.node else {
            unreachable!("only containerd needs a pod for a container");
        };
        self.home
            .get_or_init(|| ctd.pod("home", &unique("ns").replace('-', "x")))
    }
}

/// A pod identity made by [`Case::pod`]; on containerd its sandbox goes (with its
/// containers) when it is dropped.
pub struct PodRef<'a> {
    case: &'a Case,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    sandbox: Option<Pod<'static>>,
}

impl PodRef<'_> {
    /// Attempt `attempt` of the pod's container `container`, with the case's label.
    pub fn container(&self, container: &str, attempt: u32) -> Spec<'_> {
        match (&self.case.node, &self.sandbox) {
            (Node::Cli(rt), _) => Spec::at(unique("k8s"), Place::Cli(&**rt))
                .label(&self.case.label)
                .label(&format!("io.kubernetes.pod.namespace={}", self.namespace))
                .label(&format!("io.kubernetes.pod.name={}", self.name))
                .label(&format!("io.kubernetes.pod.uid={}", self.uid))
                .label(&format!("io.kubernetes.container.name={container}"))
                .label(&format!(
                    "annotation.io.kubernetes.container.restartCount={attempt}"
                )),
            (Node::Cri(..), Some(pod)) => {
                Spec::at(container.to_string(), Place::Cri { pod, attempt }).label(&self.case.label)
            }
            (Node::Cri(..), None) => unreachable!("a containerd pod has its sandbox"),
        }
    }
}

/// Where a container is made.
enum Place<'a> {
    Cli(&'a dyn Runtime),
    Cri { pod: &'a Pod<'static>, attempt: u32 },
}

/// A container to make: its name, labels and limits, then [`Spec::run`] or [`Spec::create`]
/// it with a shell script on the busybox image.
pub struct Spec<'a> {
    name: String,
    place: Place<'a>,
    labels: Vec<String>,
    opts: Vec<String>,
    memory: Option<i64>,
}

impl<'a> Spec<'a> {
    fn at(name: String, place: Place<'a>) -> Self {
        Spec {
            name,
            place,
            labels: Vec::new(),
            opts: Vec::new(),
            memory: None,
        }
    }

    /// A label, `KEY=VALUE` (containerd: a CreateContainer config label).
    pub fn label(mut self, label: &str) -> Self {
        self.labels.push(label.to_string());
        self
    }

    /// A memory limit in bytes, without swap.
    pub fn memory(mut self, bytes: i64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// Docker/Podman CLI options before the image, for what only they have.
    pub fn opts(mut self, opts: &[&str]) -> Self {
        assert!(
            matches!(self.place, Place::Cli(_)),
            "CLI options {opts:?} on containerd: keep this body in the Docker/Podman group"
        );
        self.opts.extend(opts.iter().map(|o| o.to_string()));
        self
    }

    /// Made and started.
    pub fn run(self, script: &str) -> Container<'a> {
        self.make(script, true)
    }

    /// Made, never started.
    pub fn create(self, script: &str) -> Container<'a> {
        self.make(script, false)
    }

    fn make(self, script: &str, start: bool) -> Container<'a> {
        match self.place {
            Place::Cli(rt) => {
                let memory = self.memory.map(|m| m.to_string());
                let mut b = rt.container("x").named(&self.name);
                for l in &self.labels {
                    b = b.label(l);
                }
                if let Some(m) = &memory {
                    b = b.opts(&["--memory", m, "--memory-swap", m]);
                }
                let opts: Vec<&str> = self.opts.iter().map(String::as_str).collect();
                let b = b.opts(&opts);
                let ctr = if start {
                    b.run(script)
                } else {
                    b.create(script)
                };
                Container {
                    name: self.name,
                    inner: Inner::Cli(ctr),
                }
            }
            Place::Cri { pod, attempt } => {
                let labels = self
                    .labels
                    .iter()
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap_or((l, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                let cri = CriCtr {
                    pod,
                    script: script.to_string(),
                    memory: self.memory,
                    labels,
                    attempts: RefCell::new(Vec::new()),
                };
                let ctr = Container {
                    name: self.name,
                    inner: Inner::Cri(cri),
                };
                ctr.cri_attempt(attempt, start);
                ctr
            }
        }
    }
}

/// A test container, removed when dropped (on containerd: every attempt of it).
pub struct Container<'a> {
    /// Docker's and Podman's container name; containerd's container name in its pod
    /// (`metadata.name`), the same for every attempt.
    pub name: String,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Cli(Ctr<'a>),
    Cri(CriCtr<'a>),
}

/// A container's attempts on containerd, and how to make the next one.
struct CriCtr<'a> {
    pod: &'a Pod<'static>,
    script: String,
    memory: Option<i64>,
    labels: Vec<(String, String)>,
    /// (attempt, CRI container id), oldest first; the last is the current one.
    attempts: RefCell<Vec<(u32, String)>>,
}

impl Container<'_> {
    fn cli_ok(&self, args: &[&str]) -> String {
        match &self.inner {
            Inner::Cli(c) => {
                let mut a = args.to_vec();
                a.push(&c.name);
                c.rt.cli_ok(&a)
            }
            Inner::Cri(_) => {
                panic!("{args:?} has no CRI counterpart: keep this body in the Docker/Podman group")
            }
        }
    }

    fn cri(&self) -> Option<(&Containerd, &CriCtr<'_>)> {
        match &self.inner {
            Inner::Cri(c) => Some((c.pod.ctd, c)),
            Inner::Cli(_) => None,
        }
    }

    /// The current attempt's CRI id.
    fn current(c: &CriCtr<'_>) -> String {
        c.attempts
            .borrow()
            .last()
            .map(|(_, id)| id.clone())
            .expect("a CRI container has an attempt")
    }

    /// Creates (and starts) attempt `attempt` on containerd.
    fn cri_attempt(&self, attempt: u32, start: bool) {
        let (ctd, c) = self.cri().expect("a containerd container");
        let id = c
            .pod
            .create_labelled(&self.name, attempt, &c.script, c.memory, &c.labels);
        c.attempts.borrow_mut().push((attempt, id.clone()));
        if start {
            ctd.start(&id);
        }
    }

    /// The kubelet's replacement of an exited attempt: the next attempt created and started,
    /// then every dead attempt but the newest removed (its garbage collector keeps one).
    fn replace(&self, grace: i64) {
        let (ctd, c) = self.cri().expect("a containerd container");
        let current = Container::current(c);
        if ctd.status(&current).state != ContainerState::ContainerExited as i32 {
            ctd.stop(&current, grace);
        }
        let next = c.attempts.borrow().last().map_or(0, |(n, _)| n + 1);
        self.cri_attempt(next, true);
        let mut attempts = c.attempts.borrow_mut();
        while attempts.len() > 2 {
            let (_, old) = attempts.remove(0);
            ctd.remove(&old);
        }
    }

    /// The runtime's id of the current container (attempt).
    pub fn id(&self) -> String {
        match self.cri() {
            Some((_, c)) => Container::current(c),
            None => self.cli_ok(&["inspect", "-f", "{{.Id}}"]),
        }
    }

    /// The image ID the runtime names for the current container.
    pub fn image_id(&self) -> String {
        match self.cri() {
            Some((ctd, c)) => ctd.status(&Container::current(c)).image_ref,
            None => self.cli_ok(&["inspect", "-f", "{{.Image}}"]),
        }
    }

    /// `restart -t GRACE`; containerd: the kubelet's replacement of the attempt, stopped
    /// with that grace period.
    pub fn restart(&self, grace: u32) {
        match self.cri() {
            Some(_) => self.replace(i64::from(grace)),
            None => {
                let g = grace.to_string();
                self.cli_ok(&["restart", "-t", &g]);
            }
        }
    }

    /// Runs `cli` (Docker, Podman: the container's name appended) or, on containerd, `cri`
    /// with the current attempt's id.
    fn act(&self, cli: &[&str], cri: impl FnOnce(&Containerd, &str)) {
        match self.cri() {
            Some((ctd, c)) => cri(ctd, &Container::current(c)),
            None => {
                self.cli_ok(cli);
            }
        }
    }

    /// `stop -t 5`: SIGTERM, SIGKILL after 5 s (CRI StopContainer with that timeout).
    pub fn stop(&self) {
        self.act(&["stop", "-t", "5"], |ctd, id| ctd.stop(id, 5));
    }

    /// `start` of a stopped container: Docker and Podman only (a CRI container once exited
    /// is never started again; the kubelet makes the next attempt).
    pub fn start(&self) {
        self.cli_ok(&["start"]);
    }

    /// SIGKILL: `kill`; containerd: StopContainer without a grace period, as the kubelet kills.
    pub fn kill(&self) {
        self.act(&["kill"], |ctd, id| ctd.stop(id, 0));
    }

    /// `pause`; containerd: `ctr tasks pause` (CRI has no pause).
    pub fn pause(&self) {
        self.act(&["pause"], |ctd, id| {
            ctd.ctr("k8s.io", &["tasks", "pause", id]);
        });
    }

    /// `unpause`; containerd: `ctr tasks resume`.
    pub fn unpause(&self) {
        self.act(&["unpause"], |ctd, id| {
            ctd.ctr("k8s.io", &["tasks", "resume", id]);
        });
    }

    /// Waits until the current container has exited.
    pub fn wait_exited(&self) {
        match self.cri() {
            Some((ctd, c)) => {
                ctd.wait_exited(&Container::current(c));
            }
            None => wait_for("the container to exit", Duration::from_secs(60), || {
                (self.cli_ok(&["inspect", "-f", "{{.State.Status}}"]) == "exited").then_some(())
            }),
        }
    }

    /// Whether the runtime says the (exited) container was OOM-killed: inspect's
    /// `OOMKilled`, CRI's reason `OOMKilled`.
    pub fn oom_reported(&self) -> bool {
        self.wait_exited();
        match self.cri() {
            Some((ctd, c)) => ctd.status(&Container::current(c)).reason == "OOMKilled",
            None => self.cli_ok(&["inspect", "-f", "{{.State.OOMKilled}}"]) == "true",
        }
    }

    /// The runtime's own restart count and state word of the container: Docker's and
    /// Podman's `RestartCount` and `State.Status`, containerd's attempt ordinal and CRI
    /// state (`exited`, `running`, `created`).
    pub fn runtime_restarts(&self) -> (u32, String) {
        match self.cri() {
            Some((ctd, c)) => {
                let st = ctd.status(&Container::current(c));
                let attempt = st.metadata.as_ref().map_or(0, |m| m.attempt);
                let state = match ContainerState::try_from(st.state) {
                    Ok(ContainerState::ContainerRunning) => "running",
                    Ok(ContainerState::ContainerExited) => "exited",
                    Ok(ContainerState::ContainerCreated) => "created",
                    _ => "unknown",
                };
                (attempt, state.to_string())
            }
            None => {
                let s = self.cli_ok(&["inspect", "-f", "{{.RestartCount}} {{.State.Status}}"]);
                let (n, state) = s.split_once(' ').unwrap_or((&s, ""));
                (n.parse().unwrap_or(u32::MAX), state.to_string())
            }
        }
    }

    /// How many runtime containers it is now: one on Docker and Podman; on containerd its
    /// attempts still there (a kubelet keeps the newest dead one beside the running one).
    pub fn containers(&self) -> usize {
        match self.cri() {
            Some((_, c)) => c.attempts.borrow().len(),
            None => 1,
        }
    }

    /// `rename`: Docker and Podman only (CRI has no rename). The container is removed under
    /// its new name when dropped.
    pub fn rename(&mut self, new_name: &str) {
        let Inner::Cli(c) = &mut self.inner else {
            panic!("CRI has no rename: keep this body in the Docker/Podman group");
        };
        c.rt.cli_ok(&["rename", &c.name, new_name]);
        c.name = new_name.to_string();
        self.name = new_name.to_string();
    }

    /// Docker's or Podman's CLI with this container's name appended; panics on containerd.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_ok(args)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Inner::Cri(c) = &self.inner {
            let ctd = c.pod.ctd;
            for (_, id) in c.attempts.borrow().iter() {
                // Panicking in a drop during a failed test would hide its message.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctd.remove(id)));
            }
        }
    }
}
