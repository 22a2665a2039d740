//! The node-scoped pod watch: kube's `watcher` on `spec.nodeName=<node>` with its default
//! backoff, metadata only, feeding the pod index; and the health it reports
//! (`lifecycle_agent_kube_*`, logs).
//!
//! Health needs one thing the watcher does not tell: after an error it retries the watch
//! from its last resource version and, when that works, emits nothing until a pod changes.
//! A small tower layer on the client therefore reports every watch request the server
//! accepted, so `lifecycle_agent_kube_up` returns to 1 as soon as the watch is back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::pods::{Allowlists, PodIndex, PodMeta};
use super::{node_selector, KubeState, WatchErrorReason};

/// What can stop the Kubernetes side from starting.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kube on, but no Kubernetes configuration was found: {0}")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client for the API server of the cluster the agent runs in (in-cluster service account)
/// or of the current kubeconfig context, with the observer `watch.rs` uses to know when a
/// watch is established.
pub struct Connection {
    pub client: Client,
    pub server: String,
    pub watch_starts: tokio::sync::watch::Receiver<u64>,
}

/// Infers the configuration (kubeconfig first, then in-cluster, as kube does) and builds
/// the client.
pub async fn connect() -> Result<Connection, KubeError> {
    let config = kube::Config::infer().await.map_err(KubeError::NoConfig)?;
    let server = config.cluster_url.to_string();
    let (layer, watch_starts) = WatchStartLayer::new();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(KubeError::Client)?
        .with_layer(&layer)
        .build();
    Ok(Connection {
        client,
        server,
        watch_starts,
    })
}

/// `lifecycle-agent check`: can the agent list the pods of its node? One line, and whether
/// it worked.
pub async fn probe(node: &str) -> (String, bool) {
    let conn = match connect().await {
        Ok(c) => c,
        Err(e) => return (format!("fail  kube    {e}"), false),
    };
    let version = conn
        .client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "version unknown".into());
    let api: Api<PartialObjectMeta<Pod>> = Api::all(conn.client);
    let lp = ListParams::default()
        .fields(&node_selector(node))
        .match_any();
    match api.list(&lp).await {
        Ok(list) => (
            format!(
                "ok    kube    {version} at {}: {} pod(s) on node {node}",
                conn.server,
                list.items.len()
            ),
            true,
        ),
        Err(e) => (
            format!(
                "fail  kube    at {}: cannot list pods of node {node}: {}",
                conn.server,
                explain_client_error(&e, "list")
            ),
            false,
        ),
    }
}

/// At most one "still unreachable" log line this often: an API server outage must not
/// flood the node's logs from every agent.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Follows the pods of `node` until `stop`. Never returns an error: every failure is
/// retried with the watcher's backoff, and reported through metrics and logs.
pub async fn run(
    conn: Connection,
    node: String,
    allow: Allowlists,
    kube: Arc<KubeState>,
    stop: CancellationToken,
) {
    let Connection {
        client,
        server,
        mut watch_starts,
    } = conn;
    info!(%server, %node, "following the pods of this node");
    let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
    let mut config = watcher::Config::default()
        .fields(&node_selector(&node))
        // Served from the API server's watch cache (indexed by node), not a quorum read
        // from etcd: what the kubelet does, and what keeps a DaemonSet's relists cheap.
        .any_semantic();
    // One node holds at most a few hundred pods: pagination would only add round trips,
    // and a paginated list cannot be served from the watch cache.
    config.page_size = None;
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut report = Reporter::default();
    // Pods of a (re)list in progress; swapped in whole when it completes.
    let mut building: Option<PodIndex> = None;
    let mut listed = false;
    loop {
        tokio::select! {
            // A watch start is always older than whatever its stream yields next.
            biased;
            _ = stop.cancelled() => return,
            Ok(()) = watch_starts.changed() => {
                if listed && !kube.set_up(true) {
                    report.recovered();
                }
            }
            ev = stream.next() => match ev {
                None => return,
                Some(Ok(Event::Init)) => building = Some(PodIndex::default()),
                Some(Ok(Event::InitApply(p))) => {
                    if let (Some(b), Some(meta)) = (building.as_mut(), meta_of(&p, &allow)) {
                        b.upsert(meta);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    let idx = building.take().unwrap_or_default();
                    debug!(pods = idx.len(), "pods of the node listed");
                    kube.replace_pods(idx);
                    listed = true;
                }
                Some(Ok(Event::Apply(p))) => {
                    if let Some(meta) = meta_of(&p, &allow) {
                        debug!(namespace = %meta.namespace, pod = %meta.name, "pod applied");
                        kube.update_pods(|idx| idx.upsert(meta));
                    }
                }
                Some(Ok(Event::Delete(p))) => {
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        debug!(uid, "pod deleted");
                        kube.update_pods(|idx| idx.remove(uid));
                    }
                }
                Some(Err(e)) => {
                    let (reason, verb) = classify(&e);
                    kube.count_error(reason);
                    if reason != WatchErrorReason::Gone {
                        kube.set_up(false);
                    }
                    report.error(reason, verb, &e);
                }
            }
        }
    }
}

fn meta_of(p: &PartialObjectMeta<Pod>, allow: &Allowlists) -> Option<PodMeta> {
    let m = &p.metadata;
    PodMeta::from_metadata(
        m.namespace.as_deref(),
        m.name.as_deref(),
        m.uid.as_deref(),
        m.annotations.as_ref(),
        m.labels.as_ref(),
        allow,
    )
}

/// The reason label of an error, and the verb that failed (named in the 403 message).
fn classify(e: &watcher::Error) -> (WatchErrorReason, &'static str) {
    match e {
        watcher::Error::InitialListFailed(c) => (client_reason(c), "list"),
        watcher::Error::WatchStartFailed(c) | watcher::Error::WatchFailed(c) => {
            (client_reason(c), "watch")
        }
        watcher::Error::WatchError(s) => (status_reason(s.code), "watch"),
        watcher::Error::NoResourceVersion => (WatchErrorReason::Other, "list"),
    }
}

fn status_reason(code: u16) -> WatchErrorReason {
    match code {
        401 => WatchErrorReason::Unauthorized,
        403 => WatchErrorReason::Forbidden,
        410 => WatchErrorReason::Gone,
        429 | 500..=599 => WatchErrorReason::Unreachable,
        _ => WatchErrorReason::Other,
    }
}

fn client_reason(e: &kube::Error) -> WatchErrorReason {
    match e {
        kube::Error::Api(s) => status_reason(s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            WatchErrorReason::Unreachable
        }
        _ => WatchErrorReason::Other,
    }
}

/// What an API error means for the agent, in words (logs and `check`).
pub fn explain_client_error(e: &kube::Error, verb: &str) -> String {
    match client_reason(e) {
        WatchErrorReason::Forbidden => forbidden_message(verb, &e.to_string()),
        WatchErrorReason::Unauthorized => format!(
            "the API server refused the agent's credentials (401); check its service account token or kubeconfig user: {e}"
        ),
        _ => e.to_string(),
    }
}

fn forbidden_message(verb: &str, server_said: &str) -> String {
    format!(
        "forbidden: the agent may not `{verb}` `pods` (cluster-wide; it filters to its node with spec.nodeName). \
         Bind its service account to a ClusterRole allowing get, list and watch on pods (README: Kubernetes, RBAC). \
         Until then pod annotations and labels are missing from series, or stale. The server said: {server_said}"
    )
}

/// Logs what the health metrics show, without flooding: a 403 once per missing permission
/// until the watch recovers, reachability errors at most once a minute, one line on
/// recovery.
#[derive(Debug, Default)]
struct Reporter {
    forbidden_reported: Vec<&'static str>,
    down_since: Option<Instant>,
    last_unreachable_log: Option<Instant>,
    suppressed: u64,
}

impl Reporter {
    fn error(&mut self, reason: WatchErrorReason, verb: &'static str, e: &watcher::Error) {
        if reason == WatchErrorReason::Gone {
            debug!(error = %e, "the watch fell behind the server's history (410 Gone); re-listing the node's pods");
            return;
        }
        self.down_since.get_or_insert_with(Instant::now);
        match reason {
            WatchErrorReason::Forbidden => {
                if !self.forbidden_reported.contains(&verb) {
                    self.forbidden_reported.push(verb);
                    let server_said = server_message(e);
                    error!(
                        verb,
                        resource = "pods",
                        reason = reason.as_str(),
                        "{}",
                        forbidden_message(verb, &server_said)
                    );
                }
            }
            _ => {
                let now = Instant::now();
                let due = self
                    .last_unreachable_log
                    .is_none_or(|t| now.duration_since(t) >= UNREACHABLE_LOG_EVERY);
                if due {
                    warn!(
                        reason = reason.as_str(),
                        verb,
                        error = %e,
                        errors_since_last_report = self.suppressed,
                        "cannot follow the node's pods; lifecycle metrics go on without pod annotations and labels for pods not seen yet, retrying with backoff"
                    );
                    self.last_unreachable_log = Some(now);
                    self.suppressed = 0;
                } else {
                    self.suppressed += 1;
                }
            }
        }
    }

    fn recovered(&mut self) {
        match self.down_since.take() {
            Some(t) => info!(
                down_for_secs = t.elapsed().as_secs(),
                "following the node's pods again"
            ),
            None => info!("pods of the node listed; watching"),
        }
        self.forbidden_reported.clear();
        self.last_unreachable_log = None;
        self.suppressed = 0;
    }
}

/// The API server's own words in an error (a 403 names the user and the verb).
fn server_message(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.message.clone(),
        watcher::Error::WatchError(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// A tower layer on the kube client that counts watch requests the server accepted (2xx).
#[derive(Debug, Clone)]
pub struct WatchStartLayer {
    tx: Arc<tokio::sync::watch::Sender<u64>>,
}

impl WatchStartLayer {
    pub fn new() -> (WatchStartLayer, tokio::sync::watch::Receiver<u64>) {
        let (tx, rx) = tokio::sync::watch::channel(0);
        (WatchStartLayer { tx: Arc::new(tx) }, rx)
    }
}

impl<S> tower_layer::Layer<S> for WatchStartLayer {
    type Service = WatchStarts<S>;

    fn layer(&self, inner: S) -> WatchStarts<S> {
        WatchStarts {
            inner,
            tx: self.tx.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WatchStarts<S> {
    inner: S,
    tx: Arc<tokio::sync::watch::Sender<u64>>,
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for WatchStarts<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watch = is_watch(req.uri());
        let fut = self.inner.call(req);
        let tx = self.tx.clone();
        Box::pin(async move {
            let r = fut.await;
            if watch && r.as_ref().is_ok_and(|resp| resp.status().is_success()) {
                tx.send_modify(|n| *n += 1);
            }
            r
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("no", "Because").with_code(code))
    }

    #[test]
    fn errors_are_classified_by_status_and_verb() {
        let list403 = watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
        assert_eq!(classify(&list403), (WatchErrorReason::Forbidden, "list"));
        let watch403 = watcher::Error::WatchStartFailed(kube::Error::Api(status(403)));
        assert_eq!(classify(&watch403), (WatchErrorReason::Forbidden, "watch"));
        let gone = watcher::Error::WatchError(status(410));
        assert_eq!(classify(&gone).0, WatchErrorReason::Gone);
        let busy = watcher::Error::InitialListFailed(kube::Error::Api(status(503)));
        assert_eq!(classify(&busy).0, WatchErrorReason::Unreachable);
        let refused = watcher::Error::WatchStartFailed(kube::Error::ReadEvents(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
        assert_eq!(classify(&refused).0, WatchErrorReason::Unreachable);
        let bad = watcher::Error::WatchError(status(401));
        assert_eq!(classify(&bad).0, WatchErrorReason::Unauthorized);
        assert_eq!(
            classify(&watcher::Error::NoResourceVersion).0,
            WatchErrorReason::Other
        );
    }

    #[test]
    fn only_watch_requests_count_as_watch_starts() {
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&u(
            "/api/v1/pods?watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3Dn"
        )));
        assert!(!is_watch(&u(
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn"
        )));
        assert!(!is_watch(&u("/api/v1/pods?watch=false")));
    }

    #[test]
    fn the_forbidden_message_names_the_permission() {
        let m = forbidden_message("watch", "pods is forbidden");
        assert!(
            m.contains("`watch` `pods`") && m.contains("ClusterRole"),
            "{m}"
        );
    }
}
