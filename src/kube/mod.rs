//! The Kubernetes side: a node-scoped watch of the pods on this node (`watch.rs`, with the
//! client it connects) feeding a
//! small index of their allowlisted metadata (`pods.rs`), which metrics and the API join to
//! container identities. Everything here is optional: without the API server (unreachable,
//! forbidden, or not configured) lifecycle metrics flow exactly as before, without the
//! extra labels.

mod health;
pub mod pods;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use pods::{Allowlists, PodIndex};

/// `--kube auto|on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KubeMode {
    /// On in a cluster (`KUBERNETES_SERVICE_HOST`) or with a kubeconfig.
    #[default]
    Auto,
    On,
    Off,
}

/// Decides whether the Kubernetes side runs, and says why (for the log). `auto` follows
/// what kube's own config inference would find: the in-cluster service account
/// (`KUBERNETES_SERVICE_HOST`), `KUBECONFIG`, or `~/.kube/config`.
pub fn enabled_because(
    mode: KubeMode,
    env: impl Fn(&str) -> Option<String>,
    home_kubeconfig_exists: impl FnOnce() -> bool,
) -> Option<&'static str> {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    match mode {
        KubeMode::Off => None,
        KubeMode::On => Some("--kube on"),
        KubeMode::Auto if set("KUBERNETES_SERVICE_HOST") => {
            Some("in a cluster (KUBERNETES_SERVICE_HOST)")
        }
        KubeMode::Auto if set("KUBECONFIG") => Some("KUBECONFIG is set"),
        KubeMode::Auto if home_kubeconfig_exists() => Some("~/.kube/config exists"),
        KubeMode::Auto => None,
    }
}

/// Whether `~/.kube/config` exists (the kubeconfig `auto` falls back to).
pub fn home_kubeconfig_exists() -> bool {
    std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".kube/config").is_file())
        .unwrap_or(false)
}

/// Why a watch request failed, as the `reason` label of
/// `lifecycle_agent_kube_watch_errors_total` (a fixed set: the label stays bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchErrorReason {
    /// 403: RBAC does not allow list or watch on pods.
    Forbidden,
    /// 401: the credentials were refused (an expired or revoked token).
    Unauthorized,
    /// No connection, a timeout, or the server kept answering 429/5xx past kube's retries.
    Unreachable,
    /// 410: the watch fell behind the server's history; the watcher re-lists by itself.
    Gone,
    Other,
}

impl WatchErrorReason {
    pub const ALL: [WatchErrorReason; 5] = [
        WatchErrorReason::Forbidden,
        WatchErrorReason::Unauthorized,
        WatchErrorReason::Unreachable,
        WatchErrorReason::Gone,
        WatchErrorReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WatchErrorReason::Forbidden => "forbidden",
            WatchErrorReason::Unauthorized => "unauthorized",
            WatchErrorReason::Unreachable => "unreachable",
            WatchErrorReason::Gone => "gone",
            WatchErrorReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The Kubernetes side's state shared with the scrape path and the API: the pod index and
/// the health behind `lifecycle_agent_kube_*`.
#[derive(Debug, Default)]
pub struct KubeState {
    enabled: AtomicBool,
    up: AtomicBool,
    errors: [Counter; WatchErrorReason::ALL.len()],
    /// Replaced whole after a (re)list, changed in place (copy-on-write) by watch events; a
    /// scrape clones the `Arc` and never holds the lock while encoding.
    pods: RwLock<Arc<PodIndex>>,
    /// Whether any allowlist is set; without one metrics skip the join.
    joins: bool,
}

impl KubeState {
    pub fn new(allow: &Allowlists) -> KubeState {
        KubeState {
            joins: !allow.is_none(),
            ..Default::default()
        }
    }

    pub fn set_enabled(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether the Kubernetes side runs (its self-metrics are exported only then).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// `lifecycle_agent_kube_up`: the initial list is done and the watch is established.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sets `up`; returns the previous value.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }

    pub fn count_error(&self, reason: WatchErrorReason) {
        self.errors[reason.index()].inc();
    }

    pub fn errors(&self, reason: WatchErrorReason) -> u64 {
        self.errors[reason.index()].get()
    }

    /// The current pod index (cheap: one `Arc` clone).
    pub fn pods(&self) -> Arc<PodIndex> {
        self.pods.read().clone()
    }

    /// The index for metrics, or `None` when no allowlist makes the join worth doing.
    pub fn pods_for_metrics(&self) -> Option<Arc<PodIndex>> {
        self.joins.then(|| self.pods())
    }

    /// Swaps in an index rebuilt by a (re)list.
    pub fn replace_pods(&self, idx: PodIndex) {
        *self.pods.write() = Arc::new(idx);
    }

    /// Changes the index in place; copies it first only while a scrape still holds the
    /// previous snapshot.
    pub fn update_pods(&self, f: impl FnOnce(&mut PodIndex)) {
        let mut g = self.pods.write();
        f(Arc::make_mut(&mut g));
    }
}

/// The field selector that keeps the watch to this node's pods.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

#[cfg(test)]
mod test {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_turns_on_in_a_cluster_or_with_a_kubeconfig() {
        let none: &[(&str, &str)] = &[];
        assert_eq!(enabled_because(KubeMode::Auto, env(none), || false), None);
        assert!(enabled_because(
            KubeMode::Auto,
            env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]),
            || false
        )
        .is_some());
        assert!(enabled_because(KubeMode::Auto, env(&[("KUBECONFIG", "/k")]), || false).is_some());
        assert!(enabled_because(KubeMode::Auto, env(&[("KUBECONFIG", "")]), || false).is_none());
        assert!(enabled_because(KubeMode::Auto, env(none), || true).is_some());
        assert!(enabled_because(KubeMode::On, env(none), || false).is_some());
        assert!(enabled_because(
            KubeMode::Off,
            env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]),
            || true
        )
        .is_none());
    }

    #[test]
    fn reasons_have_bounded_names() {
        let names: Vec<_> = WatchErrorReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            ["forbidden", "unauthorized", "unreachable", "gone", "other"]
        );
        for (i, r) in WatchErrorReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
