//! Reconciliation: bringing the tracker in line with a list + inspect of the runtime after
//! every (re)connect, and with a look-up of one container (`docs/design.md`, "Replay and
//! reconciliation"). What happened unseen is inferred here.

use std::collections::{HashMap, HashSet};

use super::{
    first_sight, ContainerState, Counted, TerminationReason, Tracker, MAX_SANDBOXES_COUNTED,
};
use crate::event::snapshot::{ContainerSnapshot, SnapshotState};
use crate::event::{Identity, Lookup, RuntimeKind};
use crate::time::{Nanos, UnixNanos};

/// What a reconciliation changed, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub inferred_restarts: u64,
}

/// Takes a container's image ID, image and (if `with_name`) name from an inspect: the image
/// ID is known only there, and a name changes when the container is renamed. Empty answers
/// keep what is known. Returns whether anything changed.
fn refresh_details(c: &mut ContainerState, s: &ContainerSnapshot, with_name: bool) -> bool {
    let mut changed = false;
    let mut take = |field: &mut String, value: &str| {
        if !value.is_empty() && field != value {
            value.clone_into(field);
            changed = true;
        }
    };
    take(&mut c.image_id, &s.image_id);
    take(&mut c.image, &s.image);
    if with_name {
        take(&mut c.name, &s.name);
    }
    changed
}

impl Tracker {
    /// Applies what an inspect of one container says about it that events do not: image ID,
    /// image and name. The name only if no rename was applied since the look-up was asked
    /// for, as the inspect may have answered before it. Returns whether anything changed.
    pub fn enrich(&mut self, asked: &Lookup, s: &ContainerSnapshot) -> bool {
        let Some(c) = self.containers.get_mut(&asked.container_id) else {
            return false;
        };
        let name_current = c.name == asked.name;
        let changed = refresh_details(c, s, name_current);
        if changed {
            let identity = c.identity.clone();
            self.touch(&asked.container_id, &identity);
        }
        changed
    }

    /// Brings the state in line with a list + inspect of the runtime. `complete` means the
    /// snapshot lists every container, so missing ones were removed unseen.
    pub fn reconcile(
        &mut self,
        snaps: &[ContainerSnapshot],
        complete: bool,
        now: UnixNanos,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let mut present = HashSet::with_capacity(snaps.len());
        // The runtime lists containers in no promised order: oldest first (by the kubelet's
        // ordinal, then creation), so the latest exit of an identity is the last one closed.
        let mut ordered: Vec<&ContainerSnapshot> =
            snaps.iter().filter(|s| !s.labels.sandbox).collect();
        ordered.sort_by_key(|s| {
            (
                s.labels.k8s_restart_count,
                s.created_at,
                s.started_at,
                s.id.as_str(),
            )
        });
        // Identities this snapshot shows for the first time, with their newest container's
        // ordinal and whether it ran: the best lower bound, whichever container comes first.
        let mut first_seen: HashMap<Identity, (Option<u64>, bool)> = HashMap::new();
        for s in &ordered {
            if !self.containers.contains_key(&s.id) {
                let identity = Identity::of(&s.id, &s.labels);
                if !self.identities.contains_key(&identity) {
                    first_seen.insert(
                        identity,
                        (s.labels.k8s_restart_count, s.started_at.is_some()),
                    );
                }
            }
        }
        for s in ordered {
            present.insert(s.id.as_str());
            let identity = self
                .containers
                .get(&s.id)
                .map(|c| c.identity.clone())
                .unwrap_or_else(|| Identity::of(&s.id, &s.labels));
            self.touch(&s.id, &identity);
            if self.containers.contains_key(&s.id) {
                report.inferred_restarts += self.reconcile_known(s, now);
            } else {
                report.inferred_restarts += self.adopt(s, now, &first_seen);
                report.added += 1;
            }
        }
        if complete {
            self.sandboxes = snaps
                .iter()
                .filter(|s| s.labels.sandbox)
                .take(MAX_SANDBOXES_COUNTED)
                .map(|s| s.id.clone())
                .collect();
            let gone: Vec<String> = self
                .containers
                .keys()
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect();
            for id in gone {
                if self.remove_container(&id) {
                    report.removed += 1;
                }
            }
        }
        report
    }

    /// A container met first in a snapshot; `first_seen` holds the identities the snapshot
    /// shows for the first time (see [`Tracker::reconcile`]). Returns restarts inferred.
    fn adopt(
        &mut self,
        s: &ContainerSnapshot,
        now: UnixNanos,
        first_seen: &HashMap<Identity, (Option<u64>, bool)>,
    ) -> u64 {
        let identity = Identity::of(&s.id, &s.labels);
        let running = s.state.is_running();
        let state = ContainerState {
            identity: identity.clone(),
            name: s.name.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            running,
            paused: s.state == SnapshotState::Paused,
            started_at: s.started_at,
            finished_at: s.finished_at,
            created_at: s.created_at.unwrap_or(now),
            as_of: [s.started_at, s.finished_at, s.created_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(UnixNanos::MIN),
            runtime_restart_count: s.restart_count,
            killed_in_session: false,
            oom_in_session: s.oom_killed && !running,
            exited: s.finished_at.is_some() && !running,
        };
        self.containers.insert(s.id.clone(), state);
        let started = s.started_at.is_some();
        let fresh = !self.identities.contains_key(&identity);
        let inferred = if fresh {
            let id = self.identity_entry(&identity);
            // The best lower bound the runtime gives (`docs/design.md`, "Restart semantics").
            let newest = first_seen
                .get(&identity)
                .and_then(|&(attempt, ran)| attempt.map(|a| (a, ran)));
            let (restarts, ever_started) = match newest {
                Some((attempt, ran)) => first_sight(Some(attempt), ran),
                // Docker raises RestartCount when it schedules a restart: the start that
                // follows the back-off is counted when it is seen, as for a known container.
                None if s.state == SnapshotState::Restarting => {
                    (s.restart_count.saturating_sub(1), true)
                }
                None => (s.restart_count, started),
            };
            id.ever_started = ever_started;
            id.max_attempt = newest.map(|(a, _)| a);
            self.add_restarts(&identity, restarts, Counted::FirstSight);
            restarts
        } else if s.labels.k8s_restart_count.is_some() {
            self.note_attempt(&identity, s.labels.k8s_restart_count, started, now)
        } else if started {
            // Same pod labels without the kubelet's ordinal: one unseen start.
            let id = self.identity_entry(&identity);
            let n = u64::from(id.ever_started);
            id.ever_started = true;
            self.add_restarts(&identity, n, Counted::Inferred(now));
            n
        } else {
            0
        };
        let id = self.identity_entry(&identity);
        id.containers.push(s.id.clone());
        if s.health.is_some() {
            id.health = s.health;
        }
        if s.finished_at.is_some() && !running {
            // The last session of each container of an identity this snapshot shows first is
            // known exactly; earlier ones are not, and a known identity's sessions were counted
            // as they ended.
            let new_identity = first_seen.contains_key(&identity);
            let uptime = match (new_identity, s.started_at, s.finished_at) {
                (true, Some(a), Some(b)) => b - a,
                _ => Nanos::ZERO,
            };
            let reason = TerminationReason::classify(s.exit_code, s.oom_killed, false);
            self.close_session(&identity, uptime, s.exit_code, reason);
        }
        inferred
    }

    /// A container the tracker knows: apply what happened unseen. Returns restarts inferred.
    fn reconcile_known(&mut self, s: &ContainerSnapshot, now: UnixNanos) -> u64 {
        // A CRI container starts at most once (the kubelet's restart is a new container), and
        // CRI stamps its start a little after containerd's `/tasks/start` event: a later start
        // time of a known CRI container is the same start, never an unseen one.
        let starts_once = matches!(self.runtime, RuntimeKind::Containerd | RuntimeKind::Crio);
        let Some(c) = self.containers.get_mut(&s.id) else {
            return 0;
        };
        let identity = c.identity.clone();
        refresh_details(c, s, true);
        let mut ended: Option<(UnixNanos, UnixNanos)> = None;
        let mut unseen_starts = 0u64;
        let newer_start = match (s.started_at, c.started_at) {
            (Some(new), Some(old)) => new > old && !starts_once,
            (Some(_), None) => true,
            _ => false,
        };
        if newer_start {
            // The session we knew (if it was still running) ended unseen before this start.
            if c.running {
                let end = s
                    .finished_at
                    .filter(|&f| Some(f) > c.started_at)
                    .or(s.started_at)
                    .unwrap_or(now);
                ended = Some((c.started_at.unwrap_or(end), end));
            }
            // Docker counts a restart when it schedules it: in its back-off the count holds
            // a start still to come, which is counted when it is seen.
            let pending = u64::from(s.state == SnapshotState::Restarting);
            let policy = s
                .restart_count
                .saturating_sub(pending)
                .saturating_sub(c.runtime_restart_count);
            unseen_starts = policy.max(1);
            c.started_at = s.started_at;
            c.running = s.state.is_running();
            c.killed_in_session = false;
            c.oom_in_session = false;
            if !c.running {
                if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
                    if b >= a {
                        ended = Some(ended.map_or((a, b), |(x, y)| (x, y + (b - a))));
                    }
                }
            }
        } else if c.running && !s.state.is_running() {
            let end = s.finished_at.unwrap_or(now);
            ended = Some((c.started_at.unwrap_or(end), end));
            c.running = false;
        }
        c.paused = s.state == SnapshotState::Paused;
        c.runtime_restart_count = s.restart_count;
        c.exited = !c.running && s.finished_at.is_some();
        if !c.running {
            c.finished_at = s.finished_at.or(c.finished_at);
        }
        let newest = [s.started_at, s.finished_at].into_iter().flatten().max();
        if let Some(t) = newest {
            c.as_of = c.as_of.max(t);
        }
        let oom_unseen = s.oom_killed && !c.running && !c.oom_in_session && ended.is_some();
        if oom_unseen {
            c.oom_in_session = true;
        }
        let killed = c.killed_in_session;
        let Some(id) = self.identities.get_mut(&identity) else {
            return 0;
        };
        if let Some(h) = s.health {
            id.health = Some(h);
        }
        if oom_unseen {
            id.oom_kills += 1;
        }
        let inferred = if id.ever_started {
            unseen_starts
        } else {
            unseen_starts.saturating_sub(1)
        };
        if unseen_starts > 0 {
            id.ever_started = true;
        }
        if let Some((a, b)) = ended {
            let reason = TerminationReason::classify(s.exit_code, s.oom_killed, killed);
            self.close_session(&identity, b - a, s.exit_code, reason);
        }
        self.add_restarts(&identity, inferred, Counted::Inferred(now));
        inferred + self.restart_count_bound(&identity, s)
    }

    /// The first-sight rule for a container met through an event (`docs/design.md`,
    /// "Restart semantics"): a container first seen in a replay that lost its beginning (a
    /// gap longer than Docker's buffer) is counted from its first event, so the runtime's
    /// `RestartCount` is still its lower bound when it is reconciled. Restarts all seen are
    /// never fewer (the runtime counts only policy restarts and resets its count on a manual
    /// start), so this only raises a count that missed some. A container Docker is about to
    /// restart already counts the start to come, which is counted when seen. Plain containers
    /// only: a kubelet container's bound is its ordinal. Returns restarts added.
    fn restart_count_bound(&mut self, identity: &Identity, s: &ContainerSnapshot) -> u64 {
        if !matches!(identity, Identity::Container(_)) {
            return 0;
        }
        let bound = match s.state {
            SnapshotState::Restarting => s.restart_count.saturating_sub(1),
            _ => s.restart_count,
        };
        let Some(id) = self.identities.get_mut(identity) else {
            return 0;
        };
        let missing = bound.saturating_sub(id.restarts);
        if missing > 0 {
            id.ever_started = true;
            self.add_restarts(identity, missing, Counted::FirstSight);
        }
        missing
    }
}
