//! What the store keeps of the tracker: the changes since the last group commit ([`Delta`]),
//! and the rebuild of a tracker from what a store saved ([`Saved`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{ContainerState, IdentityState, Journal, Tracker};
use crate::event::{Identity, RuntimeKind};
use crate::history::{HistoryDelta, HistoryEvent};
use crate::time::UnixNanos;

/// Node-level state persisted beside the records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerMeta {
    pub cursor: Option<UnixNanos>,
    pub cursor_keys: Vec<u64>,
    pub node_restarts: u64,
    pub restart_times: Vec<UnixNanos>,
    pub next_seq: u64,
}

/// One group commit for the store: records to write (`Some`) or delete (`None`), history
/// changes, and the node's meta state. Deltas merge, so a failed write is retried with the next.
#[derive(Debug, Default)]
pub struct Delta {
    pub containers: HashMap<String, Option<ContainerState>>,
    pub identities: HashMap<Identity, Option<IdentityState>>,
    pub history: HistoryDelta,
    pub meta: TrackerMeta,
    /// Which runtime the records are of, so a restart labels them right before it connects.
    pub runtime: RuntimeKind,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.identities.is_empty() && self.history.is_empty()
    }

    /// Folds a newer delta into this one.
    pub fn merge(&mut self, newer: Delta) {
        self.containers.extend(newer.containers);
        self.identities.extend(newer.identities);
        self.history.merge(newer.history);
        self.meta = newer.meta;
        self.runtime = newer.runtime;
    }

    pub fn events(&self) -> usize {
        self.history.events.len()
    }
}

/// What the store loaded, to rebuild a tracker after a restart.
#[derive(Debug, Default)]
pub struct Saved {
    pub containers: Vec<(String, ContainerState)>,
    pub identities: Vec<IdentityState>,
    /// Oldest first.
    pub events: Vec<HistoryEvent>,
    pub meta: TrackerMeta,
    /// `None` from a store written before the runtime was saved.
    pub runtime: Option<RuntimeKind>,
}

impl Tracker {
    /// Starts recording changes for [`Tracker::take_delta`].
    pub fn enable_journal(&mut self) {
        self.journal = Some(Journal::default());
        self.history.enable_journal();
    }

    pub fn meta(&self) -> TrackerMeta {
        TrackerMeta {
            cursor: self.cursor,
            cursor_keys: self.cursor_keys.clone(),
            node_restarts: self.node_restarts,
            restart_times: self.restart_times.iter().copied().collect(),
            next_seq: self.history.next_seq(),
        }
    }

    /// Everything changed since the last call, or `None` without a journal or changes.
    pub fn take_delta(&mut self) -> Option<Delta> {
        let j = std::mem::take(self.journal.as_mut()?);
        let history = self.history.take_delta();
        if j.containers.is_empty() && j.identities.is_empty() && history.is_empty() {
            return None;
        }
        let containers = j
            .containers
            .into_iter()
            .map(|id| {
                let rec = self.containers.get(&id).cloned();
                (id, rec)
            })
            .collect();
        let identities = j
            .identities
            .into_iter()
            .map(|id| {
                let rec = self.identities.get(&id).cloned();
                (id, rec)
            })
            .collect();
        Some(Delta {
            containers,
            identities,
            history,
            meta: self.meta(),
            runtime: self.runtime,
        })
    }

    /// Rebuilds the state a store saved. Call before any event is applied.
    pub fn restore(&mut self, saved: Saved) {
        if let Some(r) = saved.runtime {
            self.runtime = r;
        }
        self.containers = saved.containers.into_iter().collect();
        self.identities = saved
            .identities
            .into_iter()
            .map(|i| (i.identity.clone(), i))
            .collect();
        self.node_restarts = saved.meta.node_restarts;
        self.restart_times = saved.meta.restart_times.into_iter().collect();
        self.cursor = saved.meta.cursor;
        self.floor = saved.meta.cursor;
        for k in &saved.meta.cursor_keys {
            self.recent.insert(*k);
        }
        self.cursor_keys = saved.meta.cursor_keys;
        self.history.restore(saved.events, saved.meta.next_seq);
    }
}
