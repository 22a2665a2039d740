//! The wiring behind `lifecycle-agent run`: builds the state, starts the tasks (HTTP server,
//! runtime watcher, pod watcher, history housekeeping, store flusher) and supervises them.
//! A task that ends or panics before shutdown stops the agent with an error: frozen data
//! served with `/healthz` ok is worse than a restart, which Kubernetes does by itself
//! (`docs/design.md`, "Supervision").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::event::RuntimeKind;
use crate::history::HistoryLimits;
use crate::kube::watch::Connection;
use crate::kube::{self, KubeState};
use crate::runtime::any::{AnySource, SourceOptions};
use crate::runtime::discovery::{self, Candidate, RuntimeChoice};
use crate::runtime::{watch, RuntimeInfo};
use crate::state::State;
use crate::store::Store;
use crate::time::UnixNanos;
use crate::tracker::persist::Delta;
use crate::{api, server, Error, Result};

/// How often the history's retention window is applied.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// How often changes are group-committed to the store: what a crash can lose at most, and
/// what the replay from the cursor then recovers.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The state of a new agent, as `config` describes it.
pub fn new_state(config: &Config) -> State {
    State::new(
        config.node_name.clone(),
        // Until a socket answers (or a saved state says otherwise): what was asked for.
        match config.runtime {
            RuntimeChoice::Podman => RuntimeKind::Podman,
            RuntimeChoice::Containerd => RuntimeKind::Containerd,
            RuntimeChoice::Crio => RuntimeKind::Crio,
            RuntimeChoice::Docker | RuntimeChoice::Auto => RuntimeKind::Docker,
        },
        HistoryLimits {
            max_events: config.max_history,
            retention: config.history_retention,
        },
    )
}

/// Runs the agent until SIGTERM or SIGINT, or until a task ends early (an error).
pub async fn run(config: Config) -> Result<()> {
    let state = new_state(&config);
    let kube_state = Arc::new(KubeState::new(&config.pod_metadata));
    let fault = Fault::from_env();
    if let Some(path) = &config.admin_token_exposed {
        warn!(path = %path.display(), "the admin token file is readable by its group or everyone; make it the owner's only (chmod 600, or defaultMode: 0400 on the Secret volume)");
    }
    let shutdown = CancellationToken::new();
    let store = match &config.state_dir {
        Some(dir) => Some(Arc::new(open_store(dir, &config, &state)?)),
        None => {
            info!("ephemeral: state is kept in memory only");
            None
        }
    };

    // Before listening: `--kube on` without any cluster configuration is a configuration
    // error, reported like the others.
    let kube_conn = connect_kube(&config, &kube_state).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Listen(config.listen, e))?;
    info!(%addr, node = %config.node_name, "serving metrics and API");
    if let Some(path) = &config.ready_file {
        write_ready_file(path, addr).map_err(|e| Error::ReadyFile(path.clone(), e))?;
    }

    let mut server = {
        let http = Arc::new(server::HttpStats::default());
        let app = api::router(api::App {
            state: state.reader(),
            kube: kube_state.clone(),
            admin: config.admin_token.clone().map(|token| api::Admin {
                token,
                history: state.history_clearer(),
            }),
            http: http.clone(),
            store: store.clone(),
        });
        let limits = server::Limits::for_fd_limit(crate::process::ProcessStats::read().max_fds);
        tokio::spawn(
            server::serve(listener, app, http, limits, shutdown.clone())
                .instrument(info_span!("http")),
        )
    };

    let mut watcher = {
        let state = state.clone();
        let stop = shutdown.clone();
        let cands = discovery::candidates(config.runtime, config.socket.as_deref(), |k| {
            std::env::var(k).ok()
        });
        let options = SourceOptions {
            filter: config.container_filter.clone(),
            containerd_namespaces: config.containerd_namespaces.clone(),
            generic_cri: config.runtime == RuntimeChoice::Crio,
        };
        let choice = config.runtime;
        let fault = fault.clone();
        tokio::spawn(
            async move {
                let Some((candidate, info)) = discover(&cands, &state, &stop).await else {
                    return;
                };
                if !discovery::matches_choice(choice, info.runtime) {
                    warn!(endpoint = %candidate.endpoint, runtime = %info.runtime, asked = ?choice, "the socket belongs to another runtime than asked for; following what answers there");
                }
                let source = AnySource::for_runtime(info.runtime, &candidate.endpoint, options);
                fault.around(Task::Runtime, watch::run(source, state, stop)).await;
            }
            .instrument(info_span!("runtime")),
        )
    };

    let mut pod_watch = kube_conn.map(|conn| {
        let kube = kube_state.clone();
        let stop = shutdown.clone();
        let node = config.node_name.clone();
        let allow = config.pod_metadata.clone();
        let fault = fault.clone();
        tokio::spawn(
            async move {
                fault
                    .around(Task::Kube, kube::watch::run(conn, node, allow, kube, stop))
                    .await;
            }
            .instrument(info_span!("kube")),
        )
    });

    let mut housekeeping = {
        let state = state.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let dropped = state.apply_retention(UnixNanos::now());
                        if dropped > 0 {
                            info!(dropped, "history retention applied");
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    let mut flusher = store.clone().map(|store| {
        let state = state.clone();
        let stop = shutdown.clone();
        tokio::spawn(
            async move {
                fault
                    .around(Task::Flusher, flush_loop(store, state, stop))
                    .await
            }
            .instrument(info_span!("store")),
        )
    });

    let early = tokio::select! {
        _ = wait_for_signal() => None,
        ended = first_to_end(&mut server, &mut watcher, pod_watch.as_mut(), &mut housekeeping, flusher.as_mut()) => Some(ended),
    };
    if let Some((task, why)) = early {
        error!(task, reason = %why, "a task ended before shutdown; exiting so the agent is restarted");
        shutdown.cancel();
        return Err(Error::TaskEnded { task, reason: why });
    }
    info!("shutting down");
    shutdown.cancel();
    // A second signal aborts a shutdown that hangs.
    tokio::select! {
        _ = async {
            let _ = watcher.await;
            if let Some(w) = pod_watch {
                let _ = w.await;
            }
            let _ = housekeeping.await;
            api::drain(server, HTTP_DRAIN).await;
            if let (Some(store), Some(flusher)) = (&store, flusher) {
                let mut pending = flusher.await.unwrap_or_default();
                if let Err(e) = flush_once(store, &state, &mut pending).await {
                    error!(error = %e, "the last changes could not be saved; the next start replays them from the runtime where it still holds them");
                }
            }
        } => {}
        _ = wait_for_signal() => warn!("second signal: exiting without waiting"),
    }
    info!("stopped");
    Ok(())
}

/// Writes the bound address to `path` through a sibling temporary file and a rename, so a
/// reader never sees a partial address (README "Configuration", `--ready-file`).
fn write_ready_file(path: &std::path::Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Waits until the first of the agent's tasks ends, and says which and why. Before
/// shutdown every one of them runs until told to stop, so any end is a failure.
async fn first_to_end(
    server: &mut JoinHandle<()>,
    watcher: &mut JoinHandle<()>,
    pod_watch: Option<&mut JoinHandle<()>>,
    housekeeping: &mut JoinHandle<()>,
    flusher: Option<&mut JoinHandle<Option<Delta>>>,
) -> (&'static str, String) {
    fn watch<'a, T: Send + 'a>(
        task: &'static str,
        handle: &'a mut JoinHandle<T>,
    ) -> BoxFuture<'a, (&'static str, String)> {
        Box::pin(async move { (task, why_ended(handle.await.map(drop))) })
    }
    let mut all = vec![
        watch("http", server),
        watch(Task::Runtime.name(), watcher),
        watch("housekeeping", housekeeping),
    ];
    if let Some(h) = pod_watch {
        all.push(watch(Task::Kube.name(), h));
    }
    if let Some(h) = flusher {
        all.push(watch(Task::Flusher.name(), h));
    }
    futures_util::future::select_all(all).await.0
}

/// Why a task ended, in words: its panic message, or that it returned.
fn why_ended(r: std::result::Result<(), JoinError>) -> String {
    match r {
        Ok(()) => "it returned".into(),
        Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(&*e.into_panic())),
        Err(e) => format!("it was cancelled: {e}"),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Tasks a test can make panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Runtime,
    Kube,
    Flusher,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Runtime => "runtime",
            Task::Kube => "kube",
            Task::Flusher => "flusher",
        }
    }
}

/// Test-only fault injection, so the supervision can be proven against the real binary
/// (`docs/design.md`, "Supervision"). `LIFECYCLE_FAULT=TASK` makes that task (`runtime`, `kube`
/// or `flusher`) panic as it starts its work; `LIFECYCLE_FAULT=TASK@FILE` lets it work and
/// makes it panic mid-session, once `FILE` exists. Unset, it does nothing.
#[derive(Debug, Clone)]
struct Fault {
    task: Option<Task>,
    trigger: Option<PathBuf>,
}

/// How often an armed fault looks for its trigger file.
const FAULT_POLL: Duration = Duration::from_millis(10);

impl Fault {
    fn from_env() -> Fault {
        let spec = std::env::var("LIFECYCLE_FAULT").unwrap_or_default();
        let (task, trigger) = match spec.split_once('@') {
            Some((task, file)) => (task, Some(PathBuf::from(file))),
            None => (spec.as_str(), None),
        };
        let task = match task {
            "runtime" => Some(Task::Runtime),
            "kube" => Some(Task::Kube),
            "flusher" => Some(Task::Flusher),
            _ => None,
        };
        Fault { task, trigger }
    }

    /// Runs `work` as `task`; if the fault is for this task, panics at its start or, with a
    /// trigger file, while `work` runs, once the file exists.
    async fn around<T>(self, task: Task, work: impl std::future::Future<Output = T>) -> T {
        if self.task != Some(task) {
            return work.await;
        }
        let Some(trigger) = self.trigger else {
            Self::panic(task)
        };
        tokio::pin!(work);
        let mut poll = tokio::time::interval(FAULT_POLL);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = poll.tick() => {
                    if trigger.exists() {
                        Self::panic(task)
                    }
                }
            }
        }
    }

    fn panic(task: Task) -> ! {
        error!(
            task = task.name(),
            "LIFECYCLE_FAULT: this task panics on purpose"
        );
        panic!("LIFECYCLE_FAULT={}", task.name());
    }
}

/// How long requests in flight at shutdown may take to finish. A scraper that stopped reading
/// would otherwise hold the shutdown (and the final store flush) until the kubelet kills us.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Decides whether the Kubernetes side runs (`--kube`) and connects it. In `auto` mode a
/// kubeconfig that cannot be used is logged and the agent runs without Kubernetes; with
/// `--kube on` it is an error.
async fn connect_kube(config: &Config, kube_state: &KubeState) -> Result<Option<Connection>> {
    let Some(why) = kube::enabled_because(
        config.kube,
        |k| std::env::var(k).ok(),
        kube::home_kubeconfig_exists,
    ) else {
        if !config.pod_metadata.is_none() {
            warn!("pod annotation/label allowlists are set but Kubernetes is off (--kube); series carry no pod metadata");
        }
        return Ok(None);
    };
    if config.node_name_defaulted {
        warn!(node = %config.node_name, "NODE_NAME is not set: watching the pods of the node named like this host; in a pod set NODE_NAME from the downward API (spec.nodeName), or no pod will match");
    }
    match kube::watch::connect().await {
        Ok(conn) => {
            info!(because = why, server = %conn.server, "Kubernetes pod metadata on");
            kube_state.set_enabled();
            Ok(Some(conn))
        }
        Err(e) if config.kube == kube::KubeMode::On => Err(e.into()),
        Err(e) => {
            error!(because = why, error = %e, "Kubernetes configuration found but unusable; running without pod metadata");
            // Visible as lifecycle_agent_kube_up 0 with an `other` error, not only in the log.
            kube_state.set_enabled();
            kube_state.count_error(kube::WatchErrorReason::Other);
            Ok(None)
        }
    }
}

fn open_store(dir: &std::path::Path, config: &Config, state: &State) -> Result<Store> {
    let opened = Store::open(dir, config.max_history)?;
    if let Some(why) = &opened.recovered {
        state.store_recovered();
        warn!(path = %opened.store.path().display(), "state file unusable: {why}; rebuilding from the runtime");
    }
    if let Some(saved) = &opened.saved {
        info!(
            path = %opened.store.path().display(),
            containers = saved.containers.len(),
            identities = saved.identities.len(),
            events = saved.events.len(),
            cursor = ?saved.meta.cursor.map(UnixNanos::to_rfc3339),
            "state loaded"
        );
    }
    state.attach_store(opened.saved);
    Ok(opened.store)
}

/// Group-commits the tracker's changes until `stop`; returns what could not be written yet.
/// It sleeps until something changed (no wakeups on an idle node), then gathers for
/// [`FLUSH_INTERVAL`] so one commit carries a whole burst.
///
/// While writes fail (a full or read-only disk) the changes stay in memory, merged into one
/// delta that the history's bound keeps bounded, and are retried after [`RETRY_MIN`]
/// doubling to [`RETRY_MAX`]; the store reopens its database for each retry, so writing
/// resumes by itself once the disk takes it. Logged when writes start failing and when
/// they work again, not per attempt (`lifecycle_agent_store_errors_total` counts those).
async fn flush_loop(store: Arc<Store>, state: State, stop: CancellationToken) -> Option<Delta> {
    let mut pending: Option<Delta> = None;
    let mut failing: Option<(u64, Duration)> = None;
    loop {
        if pending.is_none() {
            tokio::select! {
                _ = state.changed() => {}
                _ = stop.cancelled() => return pending,
            }
        }
        let wait = failing.map_or(FLUSH_INTERVAL, |(_, delay)| delay);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return pending,
        }
        match (flush_once(&store, &state, &mut pending).await, failing) {
            (Ok(()), None) => {}
            (Ok(()), Some((failures, _))) => {
                info!(
                    failures,
                    "store writes work again; the changes kept in memory are saved"
                );
                failing = None;
            }
            (Err(e), None) => {
                warn!(error = %e, events = pending.as_ref().map_or(0, Delta::events), retry_in_secs = RETRY_MIN.as_secs(), "store writes fail; changes are kept in memory and retried with backoff");
                failing = Some((1, RETRY_MIN));
            }
            (Err(e), Some((failures, delay))) => {
                debug!(error = %e, failures = failures + 1, "store write failed again");
                failing = Some((failures + 1, (delay * 2).min(RETRY_MAX)));
            }
        }
    }
}

/// First pause after a failed store write.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause between store write attempts.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Takes the tracker's delta (a short lock), merges it into what failed before, and writes
/// it on a blocking thread. A failed write is kept in `pending` for the next attempt.
async fn flush_once(
    store: &Arc<Store>,
    state: &State,
    pending: &mut Option<Delta>,
) -> std::result::Result<(), String> {
    let fresh = state.take_delta();
    let delta = match (pending.take(), fresh) {
        (Some(mut old), Some(new)) => {
            old.merge(new);
            old
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => return Ok(()),
    };
    let s = store.clone();
    match tokio::task::spawn_blocking(move || write_kept(delta, |d| s.write(d))).await {
        Ok((Ok(Ok(())), _)) => {
            state.store_written();
            Ok(())
        }
        Ok((Ok(Err(e)), delta)) => {
            state.store_failed();
            *pending = Some(delta);
            Err(e.to_string())
        }
        Ok((Err(panic), delta)) => {
            state.store_failed();
            *pending = Some(delta);
            Err(format!("the store write panicked: {panic}"))
        }
        Err(e) => {
            state.store_failed();
            Err(format!("the store writer task failed: {e}"))
        }
    }
}

/// Runs `write` on `delta` and hands the delta back whatever happened, a panic included
/// (its message is the error): a write that panicked is retried with the next one, like a
/// failed write. Its transaction was dropped unfinished, so none of it was committed.
fn write_kept<E>(
    delta: Delta,
    write: impl FnOnce(&Delta) -> Result<(), E>,
) -> (Result<Result<(), E>, String>, Delta) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(&delta)))
        .map_err(|p| panic_message(&*p));
    (r, delta)
}

/// Probes the candidate sockets until one answers, and says what answered (which source to
/// use). A node's runtime may come up after the agent (boot order, daemon upgrades), so this
/// retries instead of exiting; `/readyz` says what is missing meanwhile.
async fn discover(
    cands: &[Candidate],
    state: &State,
    stop: &CancellationToken,
) -> Option<(Candidate, RuntimeInfo)> {
    let mut delay = Duration::from_millis(500);
    let mut reported = false;
    loop {
        match discovery::select(cands).await {
            Ok((c, info)) => {
                info!(endpoint = %c.endpoint, origin = c.origin, runtime = %info.runtime, version = %info.version, "runtime selected");
                return Some((c, info));
            }
            Err(failures) => {
                let msg = discovery::explain_none_reachable(&failures);
                if !reported {
                    error!("{msg}");
                    reported = true;
                }
                state.unreachable(msg);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::event::{ContainerLabels, EventKind, RuntimeEvent, Subject};

    #[test]
    fn a_panicked_store_write_keeps_its_batch_for_the_next_write() {
        let mut t = crate::fixtures::tracker("n", 100);
        t.enable_journal();
        for (at, kind) in [(1, EventKind::Created), (2, EventKind::Started)] {
            let at = UnixNanos::from_nanos(at);
            let ev = RuntimeEvent {
                time_nanos: at,
                kind,
                action: kind.as_str().into(),
                subject: Arc::new(Subject {
                    container_id: "c1".into(),
                    name: "web".into(),
                    image: "busybox".into(),
                    labels: ContainerLabels::default(),
                }),
                exit_code: None,
                health: None,
            };
            t.apply(&ev, at);
        }
        let delta = t.take_delta().expect("a delta");
        let (r, kept) = write_kept(delta, |_| -> std::result::Result<(), String> {
            panic!("the disk caught fire")
        });
        assert_eq!(r, Err("the disk caught fire".to_string()));
        assert_eq!(kept.events(), 2, "the batch survives the panic");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), 100).expect("open").store;
        let (r, _) = write_kept(kept, |d| store.write(d));
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        drop(store);
        let saved = Store::open(dir.path(), 100)
            .expect("reopen")
            .saved
            .expect("saved state");
        let mut restored = crate::fixtures::tracker("n", 100);
        restored.restore(saved);
        assert_eq!(restored.history().len(), 2);
    }
}
