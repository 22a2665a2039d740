//! The running agent: the state shared between the runtime watcher and the HTTP server, and
//! the task wiring behind `lifecycle-agent run`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::event::RuntimeKind;
use crate::history::HistoryLimits;
use crate::kube::{self, KubeState};
use crate::runtime::discovery::{self, Candidate, RuntimeChoice};
use crate::runtime::{watch, AnySource, RuntimeInfo};
use crate::store::Store;
use crate::time::now_nanos;
use crate::tracker::{Applied, Delta, Tracker};
use crate::{api, server, Error, Result};

/// How often the history's retention window is applied.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// How often changes are group-committed to the store: what a crash can lose at most, and
/// what the replay from the cursor then recovers.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A monotonically increasing self-metric.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The agent's own health counters (`lifecycle_agent_*`).
#[derive(Debug, Default)]
pub struct Counters {
    pub events_processed: Counter,
    pub events_duplicate: Counter,
    pub stream_reconnects: Counter,
    pub events_possibly_missed: Counter,
    pub store_writes: Counter,
    pub store_errors: Counter,
    pub store_recoveries: Counter,
    pub scrapes_rejected: Counter,
}

impl Counters {
    pub fn count(&self, applied: Applied) {
        match applied {
            Applied::Recorded => self.events_processed.inc(),
            Applied::Duplicate => self.events_duplicate.inc(),
            Applied::Ignored | Applied::Unchanged => {}
        }
    }
}

/// Whether the runtime's initial sync is done and its stream connected (`/readyz`).
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
}

/// Everything the watcher writes and the HTTP server reads.
#[derive(Debug)]
pub struct Shared {
    pub tracker: RwLock<Tracker>,
    pub readiness: Mutex<Readiness>,
    pub runtime_info: Mutex<Option<RuntimeInfo>>,
    pub counters: Counters,
    pub admin_token: Option<String>,
    /// Signalled after the tracker changed, so the store's flusher sleeps while nothing does.
    pub changed: tokio::sync::Notify,
    /// Pods of the node and the health of their watch; empty and idle without Kubernetes.
    pub kube: KubeState,
    /// The HTTP server's connection and answer counters.
    pub http: Arc<crate::server::HttpStats>,
}

impl Shared {
    pub fn new(config: &Config) -> Shared {
        Shared {
            tracker: RwLock::new(Tracker::new(
                config.node_name.clone(),
                // Until a socket answers (or a saved state says otherwise): what was asked for.
                match config.runtime {
                    RuntimeChoice::Podman => RuntimeKind::Podman,
                    RuntimeChoice::Docker | RuntimeChoice::Auto => RuntimeKind::Docker,
                },
                HistoryLimits {
                    max_events: config.max_history,
                    retention: config.history_retention,
                },
            )),
            readiness: Mutex::new(Readiness {
                ready: false,
                reason: "starting".into(),
            }),
            runtime_info: Mutex::new(None),
            counters: Counters::default(),
            admin_token: config.admin_token.clone(),
            changed: tokio::sync::Notify::new(),
            kube: KubeState::new(&config.pod_metadata),
            http: Arc::default(),
        }
    }

    pub fn set_ready(&self) {
        *self.readiness.lock() = Readiness {
            ready: true,
            reason: String::new(),
        };
    }

    pub fn set_disconnected(&self, reason: String) {
        *self.readiness.lock() = Readiness {
            ready: false,
            reason,
        };
    }

    pub fn is_connected(&self) -> bool {
        self.readiness.lock().ready
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let shared = Arc::new(Shared::new(&config));
    let shutdown = CancellationToken::new();
    let store = match &config.state_dir {
        Some(dir) => Some(Arc::new(open_store(dir, &config, &shared)?)),
        None => {
            info!("ephemeral: state is kept in memory only");
            None
        }
    };

    // Before listening: `--kube on` without any cluster configuration is a configuration
    // error, reported like the others.
    let kube_conn = connect_kube(&config, &shared).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Listen(config.listen, e))?;
    info!(%addr, node = %config.node_name, "serving metrics and API");

    let server = {
        let app = api::router(shared.clone());
        let limits = server::Limits::for_fd_limit(crate::process::ProcessStats::read().max_fds);
        tokio::spawn(
            server::serve(listener, app, shared.http.clone(), limits, shutdown.clone())
                .instrument(info_span!("http")),
        )
    };

    let watcher = {
        let shared = shared.clone();
        let stop = shutdown.clone();
        let cands = discovery::candidates(config.runtime, config.socket.as_deref(), |k| {
            std::env::var(k).ok()
        });
        let filter = config.container_filter.clone();
        let choice = config.runtime;
        tokio::spawn(
            async move {
                let Some((candidate, info)) = discover(&cands, &shared, &stop).await else {
                    return;
                };
                if !discovery::matches_choice(choice, info.runtime) {
                    warn!(endpoint = %candidate.endpoint, runtime = %info.runtime, asked = ?choice, "the socket belongs to another runtime than asked for; following what answers there");
                }
                let source = AnySource::for_runtime(info.runtime, &candidate.endpoint, filter);
                watch::run(source, shared, stop).await;
            }
            .instrument(info_span!("runtime")),
        )
    };

    let pod_watch = kube_conn.map(|conn| {
        let shared = shared.clone();
        let stop = shutdown.clone();
        let node = config.node_name.clone();
        let allow = config.pod_metadata.clone();
        tokio::spawn(
            kube::watch::run(conn, node, allow, shared, stop).instrument(info_span!("kube")),
        )
    });

    let housekeeping = {
        let shared = shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let dropped = shared.tracker.write().history_mut().apply_retention(now_nanos());
                        if dropped > 0 {
                            shared.changed.notify_one();
                            info!(dropped, "history retention applied");
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    let flusher = store.clone().map(|store| {
        let shared = shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(flush_loop(store, shared, stop).instrument(info_span!("store")))
    });

    wait_for_signal().await;
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
                flush_once(store, &shared, &mut pending).await;
                if pending.is_some() {
                    error!("the last changes could not be saved; the next start replays them from the runtime where it still holds them");
                }
            }
        } => {}
        _ = wait_for_signal() => warn!("second signal: exiting without waiting"),
    }
    info!("stopped");
    Ok(())
}

/// How long requests in flight at shutdown may take to finish. A scraper that stopped reading
/// would otherwise hold the shutdown (and the final store flush) until the kubelet kills us.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Decides whether the Kubernetes side runs (`--kube`) and connects it. In `auto` mode a
/// kubeconfig that cannot be used is logged and the agent runs without Kubernetes; with
/// `--kube on` it is an error.
async fn connect_kube(config: &Config, shared: &Shared) -> Result<Option<kube::Connection>> {
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
    match kube::connect().await {
        Ok(conn) => {
            info!(because = why, server = %conn.server, "Kubernetes pod metadata on");
            shared.kube.set_enabled();
            Ok(Some(conn))
        }
        Err(e) if config.kube == kube::KubeMode::On => Err(e.into()),
        Err(e) => {
            error!(because = why, error = %e, "Kubernetes configuration found but unusable; running without pod metadata");
            // Visible as lifecycle_agent_kube_up 0 with an `other` error, not only in the log.
            shared.kube.set_enabled();
            shared.kube.count_error(kube::WatchErrorReason::Other);
            Ok(None)
        }
    }
}

fn open_store(dir: &std::path::Path, config: &Config, shared: &Shared) -> Result<Store> {
    let opened = Store::open(dir, config.max_history)?;
    if let Some(why) = &opened.recovered {
        shared.counters.store_recoveries.inc();
        warn!(path = %opened.store.path().display(), "state file unusable: {why}; rebuilding from the runtime");
    }
    let mut tracker = shared.tracker.write();
    if let Some(saved) = opened.saved {
        info!(
            path = %opened.store.path().display(),
            containers = saved.containers.len(),
            identities = saved.identities.len(),
            events = saved.events.len(),
            cursor = ?saved.meta.cursor.map(crate::time::format_rfc3339),
            "state loaded"
        );
        tracker.restore(saved);
    }
    tracker.enable_journal();
    Ok(opened.store)
}

/// Group-commits the tracker's changes until `stop`; returns what could not be written yet.
/// It sleeps until something changed (no wakeups on an idle node), then gathers for
/// [`FLUSH_INTERVAL`] so one commit carries a whole burst.
async fn flush_loop(
    store: Arc<Store>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Option<Delta> {
    let mut pending: Option<Delta> = None;
    loop {
        if pending.is_none() {
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = stop.cancelled() => return pending,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            _ = stop.cancelled() => return pending,
        }
        flush_once(&store, &shared, &mut pending).await;
    }
}

/// Takes the tracker's delta (a short lock), merges it into what failed before, and writes
/// it on a blocking thread. A failed write is kept and retried with the next one.
async fn flush_once(store: &Arc<Store>, shared: &Shared, pending: &mut Option<Delta>) {
    let fresh = shared.tracker.write().take_delta();
    let delta = match (pending.take(), fresh) {
        (Some(mut old), Some(new)) => {
            old.merge(new);
            old
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => return,
    };
    let s = store.clone();
    match tokio::task::spawn_blocking(move || (s.write(&delta), delta)).await {
        Ok((Ok(()), _)) => shared.counters.store_writes.inc(),
        Ok((Err(e), delta)) => {
            shared.counters.store_errors.inc();
            warn!(error = %e, events = delta.events(), "store write failed; will retry");
            *pending = Some(delta);
        }
        Err(e) => {
            shared.counters.store_errors.inc();
            error!(error = %e, "store writer task failed");
        }
    }
}

/// Probes the candidate sockets until one answers, and says what answered (which source to
/// use). A node's runtime may come up after the agent (boot order, daemon upgrades), so this
/// retries instead of exiting; `/readyz` says what is missing meanwhile.
async fn discover(
    cands: &[Candidate],
    shared: &Shared,
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
                shared.set_disconnected(msg);
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
