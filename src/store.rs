//! The embedded store in `--state-dir`: per-identity and per-container state, the event
//! history and the runtime cursor, so a restarted agent continues its counters and replays
//! only what it missed.
//!
//! Engine: redb, a pure-Rust embedded database with ACID transactions and copy-on-write
//! B-trees whose commits are atomic after a crash (no external service, no C toolchain).
//! Writes arrive as group commits ([`Delta`]) from a flusher task, so the ingest path never
//! waits on the disk; one transaction holds the records, the history changes and the cursor,
//! so the cursor never points past what was saved.

use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Health, Identity, RuntimeKind};
use crate::history::{HistoryEvent, SubjectInterner, SubjectRef};
use crate::self_metrics::{self, NodeLabels};
use crate::time::UnixNanos;
use crate::tracker::persist::{Delta, Saved, TrackerMeta};
use crate::tracker::{ContainerState, IdentityState};

/// Bumped whenever a persisted type changes shape. An older file is moved aside and the
/// state rebuilt from the runtime (no migration exists yet); it is never read with the new
/// types.
pub const FORMAT_VERSION: u32 = 1;
pub const FILE_NAME: &str = "state.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const IDENTITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("identities");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

const KEY_VERSION: &str = "format_version";
/// redb's page cache (its default is 1 GiB). The store is written, and read only on start,
/// so a small cache costs nothing and keeps the agent's memory flat.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
const KEY_TRACKER: &str = "tracker";
/// The runtime the records are of; absent in stores written before it was saved.
const KEY_RUNTIME: &str = "runtime";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is in use by another process (is another agent running with this --state-dir?)")]
    InUse { path: PathBuf },
    #[error("state file {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("state file {path}: write failed: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// The history event as stored (the API's JSON shape is a different concern): written from
/// borrowed strings, read back borrowing from the database page.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent<S> {
    seq: u64,
    time_nanos: UnixNanos,
    kind: EventKind,
    action: S,
    runtime: RuntimeKind,
    container_id: S,
    name: S,
    image: S,
    namespace: S,
    pod: S,
    container: S,
    exit_code: Option<i64>,
    health: Option<Health>,
}

impl<'a> From<&'a HistoryEvent> for StoredEvent<&'a str> {
    fn from(e: &'a HistoryEvent) -> Self {
        let s = &e.subject;
        StoredEvent {
            seq: e.seq,
            time_nanos: e.time_nanos,
            kind: e.kind,
            action: &e.action,
            runtime: e.runtime,
            container_id: &s.container_id,
            name: &s.name,
            image: &s.image,
            namespace: &s.namespace,
            pod: &s.pod,
            container: &s.container,
            exit_code: e.exit_code,
            health: e.health,
        }
    }
}

impl StoredEvent<&str> {
    /// The event, its strings and subject shared with the events loaded before it.
    fn load(self, shared: &mut SubjectInterner) -> HistoryEvent {
        HistoryEvent {
            seq: self.seq,
            time_nanos: self.time_nanos,
            kind: self.kind,
            action: shared.text(self.action),
            runtime: self.runtime,
            subject: shared.subject(SubjectRef {
                container_id: self.container_id,
                name: self.name,
                image: self.image,
                namespace: self.namespace,
                pod: self.pod,
                container: self.container,
            }),
            exit_code: self.exit_code,
            health: self.health,
        }
    }
}

pub struct Store {
    /// `None` after a failed write: redb refuses every transaction after an I/O error until
    /// the database is closed and opened again, which the next write does.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    /// Whether the last write succeeded (`lifecycle_agent_store_up`).
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What opening found.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    pub saved: Option<Saved>,
    /// Set when the old file could not be used and was moved aside: why, and where it went.
    pub recovered: Option<String>,
}

/// Why an existing file cannot be used as it is.
enum Unusable {
    /// Another process, permissions, a read-only disk: moving the file would not help.
    Fatal(StoreError),
    /// Corrupt, truncated, garbage, or of another format version: moved aside and rebuilt.
    Rebuild(String),
}

fn is_environmental(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
    )
}

fn classify(path: &Path, e: redb::DatabaseError) -> Unusable {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            Unusable::Fatal(StoreError::InUse {
                path: path.to_path_buf(),
            })
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) if is_environmental(&io) => {
            Unusable::Fatal(StoreError::Unusable {
                path: path.to_path_buf(),
                reason: io.to_string(),
            })
        }
        other => Unusable::Rebuild(other.to_string()),
    }
}

fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable {what} record: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v).map_err(|e| e.to_string())
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads what it holds, keeping at most
    /// `max_events` history events. A file that cannot be read is moved aside and a fresh
    /// store created; only problems that moving would not fix are errors.
    pub fn open(dir: &Path, max_events: usize) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        match Store::try_open(&path, max_events) {
            Ok((store, saved)) => Ok(Opened {
                store,
                saved,
                recovered: None,
            }),
            Err(Unusable::Fatal(e)) => Err(e),
            Err(Unusable::Rebuild(reason)) => {
                let aside = move_aside(&path)?;
                let msg = format!(
                    "{reason}; moved it to {} and started afresh",
                    aside.display()
                );
                let (store, _) = Store::try_open(&path, max_events).map_err(|u| match u {
                    Unusable::Fatal(e) => e,
                    Unusable::Rebuild(r) => StoreError::Unusable {
                        path: path.clone(),
                        reason: r,
                    },
                })?;
                Ok(Opened {
                    store,
                    saved: None,
                    recovered: Some(msg),
                })
            }
        }
    }

    /// redb asserts some invariants of a file it wrote by panicking in debug builds; a file
    /// it did not write (garbage, truncation) can trip them. Those panics mean "corrupt".
    fn try_open(path: &Path, max_events: usize) -> Result<(Store, Option<Saved>), Unusable> {
        let r = catch_unwind(AssertUnwindSafe(
            || -> Result<(Store, Option<Saved>), Unusable> {
                let db = open_db(path).map_err(|e| classify(path, e))?;
                let saved = load(&db, max_events).map_err(Unusable::Rebuild)?;
                let store = Store {
                    db: Mutex::new(Some(db)),
                    path: path.to_path_buf(),
                    up: Arc::new(AtomicBool::new(true)),
                };
                Ok((store, saved))
            },
        ));
        match r {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the database engine failed on it".into());
                Err(Unusable::Rebuild(format!("corrupt: {what}")))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// redb with a small page cache (see [`CACHE_BYTES`]).
fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// Reads everything back. A fresh file gets its format version and yields `None`.
fn load(db: &Database, max_events: usize) -> Result<Option<Saved>, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let version = {
        let tx = db.begin_read().map_err(|x| e(&x))?;
        match tx.open_table(META) {
            Ok(t) => t
                .get(KEY_VERSION)
                .map_err(|x| e(&x))?
                .map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(x) => return Err(e(&x)),
        }
    };
    let Some(version) = version else {
        init(db).map_err(|x| e(&x))?;
        return Ok(None);
    };
    let version = <[u8; 4]>::try_from(version.as_slice())
        .map(u32::from_le_bytes)
        .map_err(|_| "unreadable format version".to_string())?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this agent uses {FORMAT_VERSION}"
        ));
    }
    let saved = read_all(db, max_events)?;
    if let Some(first) = saved.events.first().map(|e| e.seq) {
        prune_events_before(db, first).map_err(|x| e(&x))?;
    }
    Ok(Some(saved))
}

/// Drops events a lowered `--max-history` no longer keeps.
fn prune_events_before(db: &Database, seq: u64) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    tx.open_table(EVENTS)?.retain_in(..seq, |_, _| false)?;
    tx.commit()?;
    Ok(())
}

fn init(db: &Database) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert(KEY_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())?;
        tx.open_table(CONTAINERS)?;
        tx.open_table(IDENTITIES)?;
        tx.open_table(EVENTS)?;
    }
    tx.commit()?;
    Ok(())
}

fn read_all(db: &Database, max_events: usize) -> Result<Saved, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tx = db.begin_read().map_err(|x| e(&x))?;
    let meta_t = tx.open_table(META).map_err(|x| e(&x))?;
    let meta: TrackerMeta = match meta_t.get(KEY_TRACKER).map_err(|x| e(&x))? {
        Some(v) => decode("tracker meta", v.value())?,
        None => TrackerMeta::default(),
    };
    let runtime = match meta_t.get(KEY_RUNTIME).map_err(|x| e(&x))? {
        Some(v) => Some(decode("runtime", v.value())?),
        None => None,
    };
    let mut saved = Saved {
        meta,
        runtime,
        ..Default::default()
    };
    for row in tx
        .open_table(CONTAINERS)
        .map_err(|x| e(&x))?
        .iter()
        .map_err(|x| e(&x))?
    {
        let (k, v) = row.map_err(|x| e(&x))?;
        let c: ContainerState = decode("container", v.value())?;
        saved.containers.push((k.value().to_string(), c));
    }
    for row in tx
        .open_table(IDENTITIES)
        .map_err(|x| e(&x))?
        .iter()
        .map_err(|x| e(&x))?
    {
        let (_, v) = row.map_err(|x| e(&x))?;
        saved.identities.push(decode("identity", v.value())?);
    }
    let events = tx.open_table(EVENTS).map_err(|x| e(&x))?;
    let mut shared = SubjectInterner::default();
    for row in events
        .iter()
        .map_err(|x| e(&x))?
        .rev()
        .take(max_events.max(1))
    {
        let (_, v) = row.map_err(|x| e(&x))?;
        let stored: StoredEvent<&str> = decode("event", v.value())?;
        saved.events.push(stored.load(&mut shared));
    }
    saved.events.reverse();
    Ok(saved)
}

impl Store {
    /// Writes one group commit durably (fsync before returning). Blocking: call it off the
    /// async workers. After a failed write the database is closed, and the next write opens
    /// it again first (redb's recovery makes the file consistent), so a disk that was full
    /// or read-only for a while is written again once it can be, without a restart.
    pub fn write(&self, d: &Delta) -> Result<(), StoreError> {
        let mut db = self.db.lock();
        let r = match db.as_ref() {
            Some(open) => write_inner(open, d),
            None => match open_db(&self.path) {
                Ok(open) => write_inner(db.insert(open), d),
                Err(e) => Err(format!("reopening the database: {e}")),
            },
        };
        if r.is_err() {
            // Closed now; reopened by the next write.
            *db = None;
        }
        self.up.store(r.is_ok(), Ordering::Relaxed);
        r.map_err(|reason| StoreError::Write {
            path: self.path.clone(),
            reason,
        })
    }

    /// Registers `lifecycle_agent_store_up`: 1 while the last write succeeded, 0 while writes
    /// fail (changes are kept in memory and retried).
    pub fn register(&self, r: &mut Registry, labels: NodeLabels) {
        r.register_collector(Box::new(StoreUp {
            up: self.up.clone(),
            labels,
        }));
    }
}

/// `lifecycle_agent_store_up`, read at scrape time.
struct StoreUp {
    up: Arc<AtomicBool>,
    labels: NodeLabels,
}

impl std::fmt::Debug for StoreUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUp").field("up", &self.up).finish()
    }
}

impl Collector for StoreUp {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let owned = (self.labels)();
        let labels = self_metrics::borrowed(&owned);
        let mut family = enc.encode_descriptor(
            "lifecycle_agent_store_up",
            "1 while the state store takes writes, 0 while they fail (changes are kept in memory and retried with backoff).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.up.load(Ordering::Relaxed)))
            .encode(family.encode_family(&labels)?)
    }
}

fn write_inner(db: &Database, d: &Delta) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tx = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut t = tx.open_table(CONTAINERS).map_err(|x| e(&x))?;
        for (id, rec) in &d.containers {
            match rec {
                Some(c) => t.insert(id.as_str(), encode(c)?.as_slice()).map(|_| ()),
                None => t.remove(id.as_str()).map(|_| ()),
            }
            .map_err(|x| e(&x))?;
        }
        let mut t = tx.open_table(IDENTITIES).map_err(|x| e(&x))?;
        for (id, rec) in &d.identities {
            let key = encode::<Identity>(id)?;
            match rec {
                Some(i) => t
                    .insert(key.as_slice(), encode::<IdentityState>(i)?.as_slice())
                    .map(|_| ()),
                None => t.remove(key.as_slice()).map(|_| ()),
            }
            .map_err(|x| e(&x))?;
        }
        let mut t = tx.open_table(EVENTS).map_err(|x| e(&x))?;
        for ev in &d.history.events {
            t.insert(ev.seq, encode(&StoredEvent::from(ev))?.as_slice())
                .map_err(|x| e(&x))?;
        }
        if d.history.evicted_through > 0 {
            t.retain_in(..=d.history.evicted_through, |_, _| false)
                .map_err(|x| e(&x))?;
        }
        for seq in &d.history.removed {
            t.remove(*seq).map_err(|x| e(&x))?;
        }
        let mut t = tx.open_table(META).map_err(|x| e(&x))?;
        t.insert(KEY_TRACKER, encode(&d.meta)?.as_slice())
            .map_err(|x| e(&x))?;
        t.insert(KEY_RUNTIME, encode(&d.runtime)?.as_slice())
            .map_err(|x| e(&x))?;
    }
    tx.commit().map_err(|x| e(&x))
}

/// Renames an unusable file to `state.redb.bad-<unix seconds>` beside it, keeping it for a
/// post-mortem.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.with_extension(format!("redb.bad-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("redb.bad-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(|source| StoreError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(aside)
}

#[cfg(test)]
mod test;
