//! What the agent keeps of the pods on its node, and the join of containers to them.
//!
//! Per pod only what the join needs is kept: namespace, name, uid and the allowlisted
//! annotations and labels, their metric label names already computed. Never whole Pod
//! objects: the agent runs on every node, and a pod's spec and status are most of its size.
//! The scrape path reads a shared snapshot (`Arc<PodIndex>`) and only borrows from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::labels::{cut_label_value, sanitize_label_key};

/// The kubelet names the uid it gave a static pod (and its containers' labels) in this
/// annotation of the pod's API mirror, whose own uid differs.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Which keys of a pod's annotations (or labels) become metric labels (README
/// "Kubernetes": default none, `*` all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Allowlist {
    #[default]
    None,
    All,
    Keys(BTreeSet<String>),
}

impl Allowlist {
    /// Parses the flag/env/file items: `*` alone means all; anything else must be a valid
    /// Kubernetes key (`[prefix/]name`), so a typo such as `team=shop` fails at start.
    pub fn parse(items: &[String]) -> Result<Allowlist, String> {
        let items: Vec<&str> = items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"*") {
            if items.len() > 1 {
                return Err("`*` already allows every key; give it alone".into());
            }
            return Ok(Allowlist::All);
        }
        let mut keys = BTreeSet::new();
        for k in items {
            validate_key(k)?;
            keys.insert(k.to_string());
        }
        Ok(if keys.is_empty() {
            Allowlist::None
        } else {
            Allowlist::Keys(keys)
        })
    }

    pub fn allows(&self, key: &str) -> bool {
        match self {
            Allowlist::None => false,
            Allowlist::All => true,
            Allowlist::Keys(k) => k.contains(key),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Allowlist::None
    }
}

/// The two allowlists together: what is copied from a pod's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlists {
    pub annotations: Allowlist,
    pub labels: Allowlist,
}

impl Allowlists {
    /// Nothing is copied: the scrape path then skips the join altogether.
    pub fn is_none(&self) -> bool {
        self.annotations.is_none() && self.labels.is_none()
    }
}

/// Checks a Kubernetes annotation or label key: an optional DNS-subdomain prefix and `/`,
/// then a name of at most 63 characters of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric (the API server's own rule).
fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(format!(
            "{k:?} is not a Kubernetes key: the name part must be 1-63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"
        ));
    }
    if let Some(p) = prefix {
        let prefix_ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(alnum)
                    && part.ends_with(alnum)
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if !prefix_ok {
            return Err(format!(
                "{k:?} is not a Kubernetes key: the prefix before `/` must be a lowercase DNS subdomain"
            ));
        }
    }
    Ok(())
}

/// Where a metric label of a pod comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Annotation,
    Label,
}

impl Source {
    fn prefix(self) -> &'static str {
        match self {
            Source::Annotation => "annotation_",
            Source::Label => "label_",
        }
    }
}

/// One allowlisted annotation or label of a pod, with its metric label name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaLabel {
    /// `annotation_<sanitized key>` or `label_<sanitized key>`, unique within the pod.
    pub name: String,
    pub source: Source,
    /// The key as Kubernetes has it.
    pub key: String,
    /// The full value; metrics cut it at 1 KiB when encoding, the API gives it whole.
    pub value: String,
}

/// What the join needs of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// For the API mirror of a static pod: the uid the kubelet gave the pod, which is the
    /// one on its containers' labels.
    pub mirror_of: Option<String>,
    /// Sorted by name, names unique.
    labels: Vec<MetaLabel>,
}

impl PodMeta {
    /// Keeps what the allowlists select from a pod's metadata; `None` without a name or uid
    /// (which the API server always sets, so only a broken object lacks them).
    pub fn from_metadata(
        namespace: Option<&str>,
        name: Option<&str>,
        uid: Option<&str>,
        annotations: Option<&BTreeMap<String, String>>,
        labels: Option<&BTreeMap<String, String>>,
        allow: &Allowlists,
    ) -> Option<PodMeta> {
        let empty = BTreeMap::new();
        let annotations = annotations.unwrap_or(&empty);
        let labels = labels.unwrap_or(&empty);
        Some(PodMeta {
            namespace: namespace.unwrap_or_default().to_string(),
            name: name.filter(|n| !n.is_empty())?.to_string(),
            uid: uid.filter(|u| !u.is_empty())?.to_string(),
            mirror_of: annotations
                .get(MIRROR_ANNOTATION)
                .filter(|v| !v.is_empty())
                .cloned(),
            labels: metric_labels(annotations, labels, allow),
        })
    }

    /// The `(label name, value)` pairs for metrics, values cut at 1 KiB.
    pub fn metric_labels(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.labels
            .iter()
            .map(|l| (l.name.as_str(), cut_label_value(&l.value)))
    }

    pub fn metric_label_count(&self) -> usize {
        self.labels.len()
    }

    /// The allowlisted entries of one source, by their Kubernetes key, values whole.
    pub fn entries(&self, source: Source) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.labels
            .iter()
            .filter(move |l| l.source == source)
            .map(|l| (l.key.as_str(), l.value.as_str()))
    }

    /// `pod_annotations` and `pod_labels` for the JSON API.
    pub fn api_fields(&self) -> ApiFields<'_> {
        ApiFields(self)
    }
}

/// Serializes as the two fields `pod_annotations` and `pod_labels` (flattened into a
/// container or an event object by the API).
#[derive(Debug, Clone, Copy)]
pub struct ApiFields<'a>(&'a PodMeta);

impl Serialize for ApiFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Entries<'a>(&'a PodMeta, Source);
        impl Serialize for Entries<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.entries(self.1))
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("pod_annotations", &Entries(self.0, Source::Annotation))?;
        m.serialize_entry("pod_labels", &Entries(self.0, Source::Label))?;
        m.end()
    }
}

/// `annotation_<key>` / `label_<key>` with the key sanitized to `[a-zA-Z0-9_]` (`.`, `/`,
/// `-` become `_`) by the same rule as every other label name here.
fn label_name(source: Source, key: &str) -> String {
    let mut s = sanitize_label_key(key);
    s.insert_str(0, source.prefix());
    s
}

/// Turns the allowlisted entries into metric labels.
///
/// Two keys that sanitize to the same name (`example.com/owner`, `example.com-owner`) both
/// get a suffix `_conflict1`, `_conflict2`, ... in the order of their original keys, as
/// kube-state-metrics does, so neither silently hides the other. A name that would still
/// repeat (a key literally ending in `_conflict1` next to such a pair) keeps only its first
/// entry: a repeated label name would make Prometheus reject the whole scrape.
fn metric_labels(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    allow: &Allowlists,
) -> Vec<MetaLabel> {
    let mut out = Vec::new();
    for (source, map, list) in [
        (Source::Annotation, annotations, &allow.annotations),
        (Source::Label, labels, &allow.labels),
    ] {
        if list.is_none() {
            continue;
        }
        // BTreeMap iterates in key order, so conflict numbers follow the original keys.
        let picked: Vec<(String, &String, &String)> = map
            .iter()
            .filter(|(k, _)| list.allows(k))
            .map(|(k, v)| (label_name(source, k), k, v))
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (name, _, _) in &picked {
            *seen.entry(name.as_str()).or_default() += 1;
        }
        let mut numbered: HashMap<String, usize> = HashMap::new();
        let mut renamed = Vec::with_capacity(picked.len());
        for (name, k, v) in &picked {
            let name = if seen.get(name.as_str()).copied().unwrap_or(0) > 1 {
                let n = numbered.entry(name.clone()).or_default();
                *n += 1;
                format!("{name}_conflict{n}")
            } else {
                name.clone()
            };
            renamed.push(MetaLabel {
                name,
                source,
                key: (*k).clone(),
                value: (*v).clone(),
            });
        }
        out.extend(renamed);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|later, first| later.name == first.name);
    out
}

/// The pods of the node, by uid and by namespace/name.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_name: HashMap<String, HashMap<String, Arc<PodMeta>>>,
}

impl PodIndex {
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Adds or replaces a pod. A pod of the same name under another uid is the previous
    /// incarnation, whose deletion this replaces.
    pub fn upsert(&mut self, pod: PodMeta) {
        let pod = Arc::new(pod);
        let names = self.by_name.entry(pod.namespace.clone()).or_default();
        if let Some(old) = names.insert(pod.name.clone(), pod.clone()) {
            if old.uid != pod.uid {
                self.by_uid.remove(&old.uid);
            }
        }
        self.by_uid.insert(pod.uid.clone(), pod);
    }

    /// Removes a deleted pod: its containers' series lose its metadata.
    pub fn remove(&mut self, uid: &str) {
        let Some(old) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(names) = self.by_name.get_mut(&old.namespace) {
            if names.get(&old.name).is_some_and(|p| p.uid == old.uid) {
                names.remove(&old.name);
            }
            if names.is_empty() {
                self.by_name.remove(&old.namespace);
            }
        }
    }

    /// The pod of a container identity: by its pod uid first, then by namespace/name for the
    /// mirror of a static pod (whose API uid differs from the kubelet's, checked through the
    /// mirror annotation). A pod re-created under the same name has a new uid and no such
    /// annotation, so it never lends its metadata to the old incarnation's containers.
    pub fn for_identity(&self, uid: &str, namespace: &str, name: &str) -> Option<&PodMeta> {
        if let Some(p) = self.by_uid.get(uid) {
            return Some(p);
        }
        self.by_name(namespace, name)
            .filter(|p| p.mirror_of.as_deref() == Some(uid))
    }

    /// The pod now known under a namespace and name (for events, which carry no uid).
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&PodMeta> {
        self.by_name.get(namespace)?.get(name).map(|p| &**p)
    }
}

impl FromIterator<PodMeta> for PodIndex {
    fn from_iter<I: IntoIterator<Item = PodMeta>>(iter: I) -> Self {
        let mut idx = PodIndex::default();
        for p in iter {
            idx.upsert(p);
        }
        idx
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn list(items: &[&str]) -> Allowlist {
        Allowlist::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn pod(uid: &str, name: &str, ann: &[(&str, &str)], allow: &Allowlists) -> PodMeta {
        PodMeta::from_metadata(
            Some("shop"),
            Some(name),
            Some(uid),
            Some(&map(ann)),
            None,
            allow,
        )
        .unwrap()
    }

    fn names(p: &PodMeta) -> Vec<(&str, &str)> {
        p.metric_labels().collect()
    }

    #[test]
    fn allowlists_parse_star_and_keys_and_refuse_bad_keys() {
        assert_eq!(list(&[]), Allowlist::None);
        assert_eq!(list(&["", " "]), Allowlist::None);
        assert_eq!(list(&["*"]), Allowlist::All);
        let k = list(&["team", " example.com/owner "]);
        assert!(k.allows("example.com/owner") && k.allows("team") && !k.allows("other"));
        for bad in [
            "team=shop",
            "-x",
            "a b",
            "Example.COM/x",
            "/x",
            "x/",
            &"n".repeat(64),
        ] {
            assert!(
                Allowlist::parse(&[bad.to_string()]).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(Allowlist::parse(&["*".into(), "team".into()]).is_err());
    }

    #[test]
    fn only_allowlisted_keys_become_sanitized_labels() {
        let allow = Allowlists {
            annotations: list(&["team", "example.com/owner"]),
            labels: list(&["app.kubernetes.io/name"]),
        };
        let p = PodMeta::from_metadata(
            Some("shop"),
            Some("web-1"),
            Some("u1"),
            Some(&map(&[
                ("team", "shop"),
                ("example.com/owner", "alice"),
                ("secret", "s3cret"),
            ])),
            Some(&map(&[
                ("app.kubernetes.io/name", "web"),
                ("tier", "front"),
            ])),
            &allow,
        )
        .unwrap();
        assert_eq!(
            names(&p),
            vec![
                ("annotation_example_com_owner", "alice"),
                ("annotation_team", "shop"),
                ("label_app_kubernetes_io_name", "web"),
            ]
        );
        let json = serde_json::to_value(p.api_fields()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pod_annotations": {"example.com/owner": "alice", "team": "shop"},
                "pod_labels": {"app.kubernetes.io/name": "web"},
            })
        );
    }

    #[test]
    fn no_allowlist_copies_nothing_and_star_copies_all() {
        let p = pod("u1", "web", &[("team", "shop")], &Allowlists::default());
        assert_eq!(p.metric_label_count(), 0);
        let all = Allowlists {
            annotations: Allowlist::All,
            labels: Allowlist::None,
        };
        let p = pod("u1", "web", &[("team", "shop"), ("9lives", "x")], &all);
        assert_eq!(
            names(&p),
            vec![("annotation__9lives", "x"), ("annotation_team", "shop")]
        );
    }

    #[test]
    fn colliding_keys_get_numbered_and_names_stay_unique() {
        let all = Allowlists {
            annotations: Allowlist::All,
            labels: Allowlist::All,
        };
        let p = pod(
            "u1",
            "web",
            &[
                ("a.b", "dot"),
                ("a/b", "slash"),
                ("a-b", "dash"),
                ("a_b_conflict1", "literal"),
            ],
            &all,
        );
        // Key order: a-b < a.b < a/b < a_b_conflict1.
        assert_eq!(
            names(&p),
            vec![
                ("annotation_a_b_conflict1", "dash"),
                ("annotation_a_b_conflict2", "dot"),
                ("annotation_a_b_conflict3", "slash"),
            ]
        );
        // An annotation and a label of the same key never collide: their prefixes differ.
        let p = PodMeta::from_metadata(
            Some("shop"),
            Some("web"),
            Some("u1"),
            Some(&map(&[("team", "a")])),
            Some(&map(&[("team", "b")])),
            &all,
        )
        .unwrap();
        assert_eq!(
            names(&p),
            vec![("annotation_team", "a"), ("label_team", "b")]
        );
    }

    #[test]
    fn long_values_are_cut_for_metrics_only() {
        let all = Allowlists {
            annotations: Allowlist::All,
            labels: Allowlist::None,
        };
        let long = "é".repeat(1000);
        let p = pod("u1", "web", &[("big", &long)], &all);
        assert_eq!(names(&p)[0].1.len(), 1024);
        assert_eq!(
            p.entries(Source::Annotation).next().map(|(_, v)| v.len()),
            Some(2000)
        );
    }

    #[test]
    fn identities_join_by_uid_then_static_pods_by_name() {
        let allow = Allowlists {
            annotations: Allowlist::All,
            labels: Allowlist::None,
        };
        let mut idx: PodIndex = [pod("u1", "web-1", &[("team", "shop")], &allow)]
            .into_iter()
            .collect();
        assert_eq!(
            idx.for_identity("u1", "other", "other").map(|p| &*p.name),
            Some("web-1")
        );
        // Same name, another uid: a re-created pod is not the old one.
        assert!(idx.for_identity("u0", "shop", "web-1").is_none());
        // A static pod's mirror is found by name when its annotation names the kubelet's uid.
        idx.upsert(pod(
            "m1",
            "etcd-n1",
            &[(MIRROR_ANNOTATION, "hash1")],
            &allow,
        ));
        assert_eq!(
            idx.for_identity("hash1", "shop", "etcd-n1")
                .map(|p| &*p.uid),
            Some("m1")
        );
        assert!(idx.for_identity("hash2", "shop", "etcd-n1").is_none());
        assert_eq!(idx.len(), 2);
        // A re-created pod replaces the old incarnation under its name.
        idx.upsert(pod("u2", "web-1", &[], &allow));
        assert_eq!(idx.len(), 2);
        assert!(idx.for_identity("u1", "shop", "web-1").is_none());
        assert_eq!(idx.by_name("shop", "web-1").map(|p| &*p.uid), Some("u2"));
        idx.remove("u2");
        idx.remove("m1");
        idx.remove("unknown");
        assert!(idx.is_empty());
        assert!(idx.by_name("shop", "web-1").is_none());
    }
}
