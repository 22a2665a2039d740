//! The agent's own counters (`lifecycle_agent_*_total`): each subsystem owns its
//! prometheus-client [`Counter`]s and registers them itself ([`register_counters`]).
//!
//! They are node-wide series with the `node` and `runtime` labels, and the runtime is known
//! only once a socket answers (or a saved state says it): so the labels are read at scrape
//! time through [`NodeLabels`] instead of being fixed when the counter is registered.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The labels of node-wide series at the moment of a scrape: `[("node", ..), ("runtime", ..)]`.
pub type NodeLabels = Arc<dyn Fn() -> [(&'static str, String); 2] + Send + Sync>;

/// The node's labels of the moment as the encoder takes them, borrowed from `owned` (what
/// a [`NodeLabels`] call returned).
pub fn borrowed<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// One counter: its name (without `_total`, which the encoder adds), help and value.
pub type Described = (&'static str, &'static str, Counter);

struct CounterSet {
    labels: NodeLabels,
    counters: Vec<Described>,
}

impl std::fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.counters.iter().map(|(name, _, c)| (name, c.get())))
            .finish()
    }
}

impl Collector for CounterSet {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let owned = (self.labels)();
        let labels = borrowed(&owned);
        for (name, help, counter) in &self.counters {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Registers `counters` (clones sharing their values) as node-wide series.
pub fn register_counters(r: &mut Registry, labels: NodeLabels, counters: Vec<Described>) {
    r.register_collector(Box::new(CounterSet { labels, counters }));
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn counters_are_encoded_with_the_labels_of_the_moment() {
        let c = Counter::default();
        let runtime = Arc::new(parking_lot::Mutex::new("docker"));
        let seen = runtime.clone();
        let labels: NodeLabels =
            Arc::new(move || [("node", "n1".into()), ("runtime", seen.lock().to_string())]);
        let mut r = Registry::default();
        register_counters(&mut r, labels, vec![("x_events", "Events.", c.clone())]);
        c.inc_by(3);
        *runtime.lock() = "podman";
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
        assert!(
            out.contains("x_events_total{node=\"n1\",runtime=\"podman\"} 3"),
            "{out}"
        );
        assert!(out.contains("# TYPE x_events counter"), "{out}");
    }
}
