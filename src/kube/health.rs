//! `lifecycle_agent_kube_*`: the Kubernetes side's own health (watch up, pods known, watch
//! errors by reason), registered by [`KubeState`] itself like every other subsystem's
//! self-metrics (`docs/design.md`, "Self-metrics"). Exported only while the Kubernetes side
//! runs, so a node without it shows no `kube` series at all.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{KubeState, WatchErrorReason};
use crate::self_metrics::{self, NodeLabels};

impl KubeState {
    /// Registers `lifecycle_agent_kube_up`, `_pods` and `_watch_errors_total`, read at scrape
    /// time with the node's labels of that moment.
    pub fn register(self: &Arc<Self>, r: &mut Registry, labels: NodeLabels) {
        r.register_collector(Box::new(KubeHealth {
            kube: self.clone(),
            labels,
        }));
    }
}

struct KubeHealth {
    kube: Arc<KubeState>,
    labels: NodeLabels,
}

impl std::fmt::Debug for KubeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHealth")
            .field("enabled", &self.kube.enabled())
            .field("up", &self.kube.up())
            .finish()
    }
}

impl Collector for KubeHealth {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let k = &self.kube;
        if !k.enabled() {
            return Ok(());
        }
        let owned = (self.labels)();
        let l = self_metrics::borrowed(&owned);
        let gauges = [
            (
                "lifecycle_agent_kube_up",
                "1 while the pods of the node are listed and their watch is established, else 0.",
                if k.up() { 1.0 } else { 0.0 },
            ),
            (
                "lifecycle_agent_kube_pods",
                "Pods of the node known from the Kubernetes API.",
                k.pods().len() as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(family.encode_family(&l)?)?;
        }
        let mut family = enc.encode_descriptor(
            "lifecycle_agent_kube_watch_errors",
            "Failed list/watch requests for the node's pods, by reason (forbidden, unauthorized, unreachable, gone, other).",
            None,
            MetricType::Counter,
        )?;
        for reason in WatchErrorReason::ALL {
            let mut row = l.clone();
            row.push(("reason", reason.as_str()));
            ConstCounter::new(k.errors(reason)).encode(family.encode_family(&row)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::kube::pods::Allowlists;

    fn scrape(k: &Arc<KubeState>) -> String {
        let mut r = Registry::default();
        k.register(
            &mut r,
            Arc::new(|| [("node", "n1".into()), ("runtime", "containerd".into())]),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
        out
    }

    #[test]
    fn nothing_is_exported_while_the_kubernetes_side_is_off() {
        let k = Arc::new(KubeState::new(&Allowlists::default()));
        assert!(!scrape(&k).contains("lifecycle_agent_kube"));
    }

    #[test]
    fn errors_are_counted_by_reason_with_the_node_labels() {
        let k = Arc::new(KubeState::new(&Allowlists::default()));
        k.set_enabled();
        k.count_error(WatchErrorReason::Forbidden);
        k.count_error(WatchErrorReason::Forbidden);
        k.set_up(true);
        let out = scrape(&k);
        for line in [
            r#"lifecycle_agent_kube_up{node="n1",runtime="containerd"} 1"#,
            r#"lifecycle_agent_kube_pods{node="n1",runtime="containerd"} 0"#,
            r#"lifecycle_agent_kube_watch_errors_total{node="n1",runtime="containerd",reason="forbidden"} 2"#,
            r#"lifecycle_agent_kube_watch_errors_total{node="n1",runtime="containerd",reason="gone"} 0"#,
            "# TYPE lifecycle_agent_kube_watch_errors counter",
        ] {
            assert!(out.contains(line), "{line} not in {out}");
        }
    }
}
