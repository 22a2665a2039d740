//! An in-process fake Kubernetes API server that speaks the real list/watch protocol for
//! pods, so the agent's kube client and watcher run unmodified against it (no API server can
//! run on these machines).
//!
//! What it implements, as the API server does:
//! - `GET /api/v1/pods` lists with `metadata.resourceVersion`, `fieldSelector` filtering
//!   (`spec.nodeName`, `metadata.name`, `metadata.namespace`, `status.phase`; `=`, `==`,
//!   `!=`; anything else is a 400), `limit`/`continue` pagination, and metadata-only
//!   answers (`PartialObjectMetadataList`) when the `Accept` header asks for them;
//! - `?watch=true&resourceVersion=N` as a chunked stream of `{"type":...,"object":...}`
//!   lines resuming after N: `ADDED`/`MODIFIED`/`DELETED` with the watch cache's selector
//!   transitions (a pod newly matching is `ADDED`, one leaving is `DELETED` with its previous
//!   content), `BOOKMARK`s when `allowWatchBookmarks=true`, the stream closed after
//!   `timeoutSeconds` (capped, see [`FakeKube::set_max_watch`]), and an `ERROR` event with a
//!   410 `Status` when N is older than the compacted history;
//! - `403` `Status` answers for verbs the test revoked, and an outage mode that closes the
//!   port and every connection, then listens again on the same port;
//! - `GET /version`.
//!
//! Every request is recorded (path, query, `Accept`, answer) for the tests to assert on.
//! The server runs on its own small tokio runtime and stops with the value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A pod to put on the fake server.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    namespace: String,
    name: String,
    uid: String,
    node: String,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

impl PodBuilder {
    pub fn new(namespace: &str, name: &str, uid: &str, node: &str) -> PodBuilder {
        PodBuilder {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            node: node.into(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    pub fn annotation(mut self, k: &str, v: &str) -> PodBuilder {
        self.annotations.insert(k.into(), v.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> PodBuilder {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Bound to another node (`""`: pending, not scheduled yet).
    pub fn node(mut self, node: &str) -> PodBuilder {
        self.node = node.into();
        self
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Pod as the API server stores it (without `resourceVersion`, which it assigns).
    pub fn to_json(&self) -> Value {
        let mut spec = json!({ "containers": [{ "name": "web", "image": "lat-busybox:1" }] });
        if !self.node.is_empty() {
            spec["nodeName"] = json!(self.node);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": self.uid,
                "annotations": self.annotations,
                "labels": self.labels,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": spec,
            "status": { "phase": if self.node.is_empty() { "Pending" } else { "Running" } },
        })
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `list`, `watch`, `version` or `other`.
    pub verb: &'static str,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub accept: String,
    /// The HTTP status answered (a watch that ends in a 410 `ERROR` event is a 200).
    pub status: u16,
}

impl Request {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    old: Option<Value>,
    new: Option<Value>,
}

struct State {
    rv: u64,
    /// By uid.
    pods: BTreeMap<String, Value>,
    /// Changes after `compacted`, oldest first.
    log: Vec<Change>,
    /// A watch from an older resource version gets 410 Gone.
    compacted: u64,
    forbidden: Vec<&'static str>,
    requests: Vec<Request>,
    gone_sent: usize,
    /// Cancelled (and replaced) to drop every open watch.
    watches: CancellationToken,
    bookmark_every: Duration,
    max_watch: Duration,
}

struct Inner {
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server. Listens on 127.0.0.1 on a port of its own until dropped.
pub struct FakeKube {
    pub port: u16,
    rt: tokio::runtime::Runtime,
    inner: Arc<Inner>,
    serving: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    dir: PathBuf,
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the fake API server's runtime");
        let (changed, _) = tokio::sync::watch::channel(0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                pods: BTreeMap::new(),
                log: Vec::new(),
                compacted: 100,
                forbidden: Vec::new(),
                requests: Vec::new(),
                gone_sent: 0,
                watches: CancellationToken::new(),
                bookmark_every: Duration::from_secs(1),
                max_watch: Duration::from_secs(30),
            }),
            changed,
        });
        let dir = std::env::temp_dir().join(super::unique("fake-kube"));
        std::fs::create_dir_all(&dir).expect("fake kube dir");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let port = listener.local_addr().expect("its address").port();
        let fake = FakeKube {
            port,
            rt,
            inner,
            serving: Mutex::new(None),
            dir,
        };
        fake.serve(listener);
        fake.write_kubeconfig();
        fake
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let _enter = self.rt.enter();
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let token = CancellationToken::new();
        let task = self
            .rt
            .spawn(accept_loop(listener, self.inner.clone(), token.clone()));
        *self.serving.lock().unwrap() = Some((token, task));
    }

    /// A kubeconfig pointing at this server (plain HTTP on loopback, a bearer token).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn write_kubeconfig(&self) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\nusers:\n- name: agent\n  user:\n    token: fake-token\n",
            self.port
        );
        std::fs::write(self.kubeconfig(), text).expect("write the kubeconfig");
    }

    /// Creates or updates a pod (`ADDED` or `MODIFIED` for the watches it matches).
    pub fn apply(&self, pod: &PodBuilder) {
        let mut st = self.inner.lock();
        apply_locked(&mut st, pod.to_json());
        let rv = st.rv;
        drop(st);
        self.inner.changed.send_replace(rv);
    }

    /// Deletes a pod by uid.
    pub fn delete(&self, uid: &str) {
        let mut st = self.inner.lock();
        delete_locked(&mut st, uid);
        let rv = st.rv;
        drop(st);
        self.inner.changed.send_replace(rv);
    }

    /// Revokes verbs (`list`, `watch`): they answer 403 from now on. Open watches are
    /// dropped so the next watch request meets the new rules at once.
    pub fn forbid(&self, verbs: &[&'static str]) {
        let mut st = self.inner.lock();
        st.forbidden = verbs.to_vec();
        drop_watches(&mut st);
    }

    pub fn allow_all(&self) {
        self.inner.lock().forbidden.clear();
    }

    /// Outage: stops listening and closes every connection; requests are refused.
    pub fn stop(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some((token, task)) = serving {
            token.cancel();
            let _ = self.rt.block_on(task);
        }
    }

    /// Back after an outage, on the same port.
    pub fn restart(&self) {
        let listener = super::wait_for(
            "the fake API server's port to be free again",
            Duration::from_secs(10),
            || std::net::TcpListener::bind(("127.0.0.1", self.port)).ok(),
        );
        self.serve(listener);
    }

    /// Changes pods while no watch can see it, then compacts the history past them, as etcd
    /// compaction does: a watch resuming from before gets `410 Gone` and must re-list.
    pub fn change_unseen_and_compact(&self, pods: &[PodBuilder]) {
        let mut st = self.inner.lock();
        drop_watches(&mut st);
        for p in pods {
            apply_locked(&mut st, p.to_json());
        }
        st.rv += 1;
        st.compacted = st.rv;
        st.log.clear();
        let rv = st.rv;
        drop(st);
        self.inner.changed.send_replace(rv);
    }

    /// Closes every open watch (as a load balancer or an API server restart would).
    pub fn drop_watches(&self) {
        drop_watches(&mut self.inner.lock());
    }

    pub fn set_bookmark_every(&self, d: Duration) {
        self.inner.lock().bookmark_every = d;
    }

    /// Watches end after at most this long, whatever `timeoutSeconds` asked (the API
    /// server's own `--min-request-timeout` does the same).
    pub fn set_max_watch(&self, d: Duration) {
        self.inner.lock().max_watch = d;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().requests.clone()
    }

    /// Watches that ended in `410 Gone`.
    pub fn gone_sent(&self) -> usize {
        self.inner.lock().gone_sent
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn apply_locked(st: &mut State, mut pod: Value) {
    st.rv += 1;
    pod["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let old = st.pods.insert(uid, pod.clone());
    let rv = st.rv;
    st.log.push(Change {
        rv,
        old,
        new: Some(pod),
    });
}

fn delete_locked(st: &mut State, uid: &str) {
    let Some(old) = st.pods.remove(uid) else {
        return;
    };
    st.rv += 1;
    let rv = st.rv;
    st.log.push(Change {
        rv,
        old: Some(old),
        new: None,
    });
}

fn drop_watches(st: &mut State) {
    st.watches.cancel();
    st.watches = CancellationToken::new();
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let inner = inner.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = handle(stream, inner) => {}
                    }
                });
            }
        }
    }
}

/// Reads the request head (the client sends no body with GET).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > 64 * 1024 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn handle(mut s: TcpStream, inner: Arc<Inner>) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let meta_only = accept.contains("as=PartialObjectMetadata");
    let watch = query
        .iter()
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let mut req = Request {
        verb: "other",
        path: path.to_string(),
        query,
        accept,
        status: 0,
    };
    let (status, body) = match (method, path) {
        ("GET", "/version") => {
            req.verb = "version";
            (
                200,
                json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                    "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            )
        }
        ("GET", "/api/v1/pods") if watch => {
            req.verb = "watch";
            return serve_watch(s, inner, req, meta_only).await;
        }
        ("GET", "/api/v1/pods") => {
            req.verb = "list";
            list(&mut inner.lock(), &req, meta_only)
        }
        _ => (
            404,
            status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    };
    req.status = status;
    inner.lock().requests.push(req);
    let _ = respond(&mut s, status, &body).await;
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        _ => "Unknown",
    }
}

async fn respond(s: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": { "kind": "pods" }, "code": code,
    })
}

fn forbidden(verb: &str) -> Value {
    status_json(
        403,
        "Forbidden",
        &format!("pods is forbidden: User \"system:serviceaccount:monitoring:lifecycle-agent\" cannot {verb} resource \"pods\" in API group \"\" at the cluster scope"),
    )
}

/// A parsed `fieldSelector`: every requirement must hold.
struct Selector(Vec<(String, bool, String)>);

impl Selector {
    fn parse(s: Option<&str>) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in s.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector requirement {part:?}"));
            };
            if !matches!(
                field,
                "spec.nodeName" | "metadata.name" | "metadata.namespace" | "status.phase"
            ) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_string(), eq, value.to_string()));
        }
        Ok(Selector(reqs))
    }

    fn matches(&self, pod: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let v = field
                .split('.')
                .fold(pod, |v, k| &v[k])
                .as_str()
                .unwrap_or_default();
            (v == want) == *eq
        })
    }
}

fn render(pod: &Value, meta_only: bool) -> Value {
    if meta_only {
        json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"] })
    } else {
        pod.clone()
    }
}

fn list(st: &mut State, req: &Request, meta_only: bool) -> (u16, Value) {
    if st.forbidden.contains(&"list") {
        return (403, forbidden("list"));
    }
    let sel = match Selector::parse(req.param("fieldSelector")) {
        Ok(s) => s,
        Err(m) => return (400, status_json(400, "BadRequest", &m)),
    };
    let mut items: Vec<&Value> = st.pods.values().filter(|p| sel.matches(p)).collect();
    let key = |p: &Value| {
        format!(
            "{}/{}",
            p["metadata"]["namespace"].as_str().unwrap_or_default(),
            p["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    items.sort_by_key(|p| key(p));
    // A continue token is the key of the last item sent, in hex.
    if let Some(after) = req.param("continue").filter(|c| !c.is_empty()) {
        let after = hex_decode(after);
        items.retain(|p| key(p) > after);
    }
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut metadata = json!({ "resourceVersion": st.rv.to_string() });
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        items.truncate(limit);
        if let Some(last) = items.last() {
            metadata["continue"] = json!(hex_encode(&key(last)));
        }
    }
    let items: Vec<Value> = items.into_iter().map(|p| render(p, meta_only)).collect();
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        ("PodList", "v1")
    };
    (
        200,
        json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items }),
    )
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What a change looks like to a watch with this selector (the watch cache's rules).
fn watch_event(c: &Change, sel: &Selector, meta_only: bool) -> Option<Value> {
    let was = c.old.as_ref().is_some_and(|p| sel.matches(p));
    let is = c.new.as_ref().is_some_and(|p| sel.matches(p));
    let (kind, obj) = match (was, is) {
        (false, true) => ("ADDED", c.new.clone()?),
        (true, true) => ("MODIFIED", c.new.clone()?),
        (true, false) => {
            // The previous content, at the change's resource version.
            let mut old = c.old.clone()?;
            old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
            ("DELETED", old)
        }
        (false, false) => return None,
    };
    Some(json!({ "type": kind, "object": render(&obj, meta_only) }))
}

fn bookmark(rv: u64, meta_only: bool) -> Value {
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    } else {
        ("Pod", "v1")
    };
    json!({ "type": "BOOKMARK", "object": {
        "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv.to_string() },
    }})
}

async fn write_chunk(s: &mut TcpStream, ev: &Value) -> std::io::Result<()> {
    let mut line = ev.to_string();
    line.push('\n');
    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
    s.write_all(chunk.as_bytes()).await
}

/// Events for a watch after `cursor`, and the new cursor.
fn pending(st: &State, cursor: u64, sel: &Selector, meta_only: bool) -> (Vec<Value>, u64) {
    let events = st
        .log
        .iter()
        .filter(|c| c.rv > cursor)
        .filter_map(|c| watch_event(c, sel, meta_only))
        .collect();
    (events, st.rv.max(cursor))
}

async fn serve_watch(mut s: TcpStream, inner: Arc<Inner>, mut req: Request, meta_only: bool) {
    let sel = Selector::parse(req.param("fieldSelector"));
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let asked = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let rv: Option<u64> = req
        .param("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let mut changed = inner.changed.subscribe();
    // Decide the answer under the lock, then write without it.
    let start = {
        let mut st = inner.lock();
        let refusal = if st.forbidden.contains(&"watch") {
            Some((403, forbidden("watch")))
        } else {
            sel.as_ref()
                .err()
                .map(|m| (400, status_json(400, "BadRequest", m)))
        };
        req.status = refusal.as_ref().map_or(200, |(status, _)| *status);
        let start = match (refusal, rv, sel.as_ref()) {
            (Some(r), _, _) => Err(r),
            (None, Some(rv), _) if rv < st.compacted => {
                st.gone_sent += 1;
                let msg = format!("too old resource version: {rv} ({})", st.compacted);
                let gone = json!({ "type": "ERROR", "object": status_json(410, "Expired", &msg) });
                Ok((vec![gone], None))
            }
            (None, Some(rv), Ok(sel)) => {
                let (events, cursor) = pending(&st, rv, sel, meta_only);
                Ok((events, Some(cursor)))
            }
            // No version: the current state as ADDED events, then changes.
            (None, None, Ok(sel)) => Ok((
                st.pods
                    .values()
                    .filter(|p| sel.matches(p))
                    .map(|p| json!({ "type": "ADDED", "object": render(p, meta_only) }))
                    .collect(),
                Some(st.rv),
            )),
            (None, _, Err(_)) => Ok((Vec::new(), None)),
        };
        let until = asked.unwrap_or(st.max_watch).min(st.max_watch);
        st.requests.push(req);
        start.map(|(first, cursor)| (first, cursor, st.watches.clone(), st.bookmark_every, until))
    };
    let (first, cursor, kill, every, until) = match start {
        Ok(s) => s,
        Err((status, body)) => {
            let _ = respond(&mut s, status, &body).await;
            return;
        }
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for ev in &first {
        if write_chunk(&mut s, ev).await.is_err() {
            return;
        }
    }
    let (Ok(sel), Some(mut cursor)) = (sel, cursor) else {
        // A 410 ends the stream after its ERROR event.
        let _ = s.write_all(b"0\r\n\r\n").await;
        let _ = s.shutdown().await;
        return;
    };
    let deadline = tokio::time::Instant::now() + until;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let mark = tokio::select! {
            // Dropped abruptly: no terminating chunk, as a lost connection looks.
            _ = kill.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => break,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => bookmarks,
        };
        let (events, next) = pending(&inner.lock(), cursor, &sel, meta_only);
        cursor = next;
        for ev in &events {
            if write_chunk(&mut s, ev).await.is_err() {
                return;
            }
        }
        if mark
            && write_chunk(&mut s, &bookmark(cursor, meta_only))
                .await
                .is_err()
        {
            return;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let _ = s.shutdown().await;
}
