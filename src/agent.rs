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
use crate::runtime::discovery::{self, Candidate};
use crate::runtime::{watch, AnySource, RuntimeInfo};
use crate::time::now_nanos;
use crate::tracker::{Applied, Tracker};
use crate::{api, Error, Result};

/// How often the history's retention window is applied.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

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
    pub inferred_restarts: Counter,
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
}

impl Shared {
    pub fn new(config: &Config) -> Shared {
        Shared {
            tracker: RwLock::new(Tracker::new(
                config.node_name.clone(),
                RuntimeKind::Docker,
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

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Listen(config.listen, e))?;
    info!(%addr, node = %config.node_name, "serving metrics and API");

    let server = {
        let app = api::router(shared.clone());
        let stop = shutdown.clone();
        tokio::spawn(
            async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = r {
                    error!(error = %e, "HTTP server failed");
                }
            }
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
                            info!(dropped, "history retention applied");
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    // A second signal aborts a shutdown that hangs.
    tokio::select! {
        _ = async {
            let _ = watcher.await;
            let _ = housekeeping.await;
            let _ = server.await;
        } => {}
        _ = wait_for_signal() => warn!("second signal: exiting without waiting"),
    }
    info!("stopped");
    Ok(())
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
