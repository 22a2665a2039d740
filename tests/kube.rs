//! Kubernetes pod metadata on every series (issue 4), end to end: the agent as a process,
//! real containers on a private dockerd named and labelled as the kubelet (cri-dockerd)
//! makes them, and a fake API server in the test process that speaks the real list/watch
//! protocol (`common/fake_kube.rs`). Each test has its own fake server and agent; the agent
//! tracks only the containers labelled for its test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_kube::{FakeKube, PodBuilder};
use common::{metric, samples, wait_for, Agent, Ctr, DockerDaemon, Runtime, LOOP};
use serde_json::Value;

/// The harness runs every agent with `--node-name test-node`.
const NODE: &str = "test-node";
const LONG: Duration = Duration::from_secs(60);

struct Setup {
    docker: Arc<DockerDaemon>,
    fake: FakeKube,
    filter: String,
}

impl Setup {
    fn new(name: &str) -> Option<Setup> {
        Some(Setup {
            docker: DockerDaemon::shared()?,
            fake: FakeKube::start(),
            filter: format!("lat.test={}", common::unique(name)),
        })
    }

    /// An agent with `--kube on` against the fake server, tracking this test's containers.
    fn agent(&self, extra: &[&str]) -> Agent {
        let kubeconfig = self.fake.kubeconfig();
        Agent::on(&*self.docker)
            .ephemeral()
            .args(&["--kube", "on"])
            .filter(&self.filter)
            .args(extra)
            .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
            .start()
    }

    /// Returns once the agent has applied all the runtime did so far (a sentinel container
    /// with this test's label): exact counts are read after it.
    fn settle(&self, agent: &Agent) {
        agent.barrier(&*self.docker, &["--label", &self.filter]);
    }

    /// A container as the kubelet creates one for `pod` (cri-dockerd's name and labels),
    /// `attempt` being its restart ordinal.
    fn pod_container(&self, pod: &PodBuilder, attempt: u32, script: &str) -> Ctr<'_> {
        let name = format!(
            "k8s_web_{}_{}_{}_{attempt}",
            pod.name(),
            pod.namespace(),
            pod.uid()
        );
        self.docker
            .container("k8s")
            .named(&name)
            .label(&self.filter)
            .pod(pod.namespace(), pod.name(), pod.uid(), "web", attempt)
            .label("io.kubernetes.docker.type=container")
            .run(script)
    }

    /// Pods of other nodes are never asked for: every list and watch the fake server saw
    /// selected this node, asked for metadata only, and lists came from the watch cache.
    fn assert_node_scoped(&self) {
        let reqs = self.fake.requests();
        let pods: Vec<_> = reqs
            .iter()
            .filter(|r| r.verb == "list" || r.verb == "watch")
            .collect();
        assert!(!pods.is_empty(), "the agent never asked for pods");
        let want = format!("spec.nodeName={NODE}");
        for r in &pods {
            assert_eq!(r.param("fieldSelector"), Some(want.as_str()), "{r:?}");
            assert!(r.accept.contains("as=PartialObjectMetadata"), "{r:?}");
            if r.verb == "list" {
                assert_eq!(r.param("resourceVersion"), Some("0"), "{r:?}");
                assert_eq!(r.param("limit"), None, "{r:?}");
            } else {
                assert_eq!(r.param("allowWatchBookmarks"), Some("true"), "{r:?}");
            }
        }
    }
}

fn pod(name: &str) -> PodBuilder {
    PodBuilder::new(
        "shop",
        &common::unique(name),
        &format!("uid-{}", common::unique(name)),
        NODE,
    )
}

fn id(p: &PodBuilder) -> Vec<(&str, &str)> {
    vec![
        ("namespace", p.namespace()),
        ("pod", p.name()),
        ("container", "web"),
    ]
}

fn with<'a>(
    mut base: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.extend_from_slice(more);
    base
}

/// Waits (up to a minute: the watcher's backoff grows to 30 s) for a sample's value.
fn wait_value(agent: &Agent, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let found = wait_result(LONG, || {
        last = metric(&agent.metrics(), name, labels);
        last == Some(want)
    });
    assert!(
        found,
        "{name}{labels:?}: wanted {want}, last seen {last:?} (log: {})",
        agent.log.display()
    );
}

fn wait_result(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Every label set of every sample of the pod's series (all families; in the classic text
/// format a family's `# TYPE` name is its samples' name).
fn pod_series(text: &str, pod_name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut out = Vec::new();
    for f in families {
        for (labels, _) in samples(text, f) {
            if labels.iter().any(|(k, v)| k == "pod" && v == pod_name) {
                out.push((f.to_string(), labels));
            }
        }
    }
    out
}

fn errors(agent: &Agent, reason: &str) -> f64 {
    metric(
        &agent.metrics(),
        "lifecycle_agent_kube_watch_errors_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

fn log_lines(agent: &Agent, needle: &str) -> usize {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn allowlisted_annotations_and_labels_are_on_every_series_and_in_the_api() {
    let Some(s) = Setup::new("allow") else { return };
    let p = pod("web")
        .annotation("team", "shop")
        .annotation("example.com/owner", "alice")
        .annotation("secret", "hunter2")
        .label("app", "web")
        .label("tier", "front");
    s.fake.apply(&p);
    s.fake.apply(&pod("neighbour").annotation("team", "other"));
    let agent = s.agent(&[
        "--pod-annotations-allowlist",
        "team,example.com/owner",
        "--pod-labels-allowlist",
        "app",
    ]);
    let ctr = s.pod_container(&p, 0, LOOP);
    let meta = [
        ("annotation_team", "shop"),
        ("annotation_example_com_owner", "alice"),
        ("label_app", "web"),
    ];
    wait_value(&agent, "container_running", &with(id(&p), &meta), 1.0);
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    wait_value(&agent, "lifecycle_agent_kube_pods", &[], 2.0);

    let text = agent.metrics();
    let series = pod_series(&text, p.name());
    let families: std::collections::BTreeSet<_> = series.iter().map(|(f, _)| f.as_str()).collect();
    for f in [
        "container_running",
        "container_paused",
        "container_uptime_seconds_total",
        "container_time_since_start_seconds",
        "container_last_start_time_seconds",
        "container_restarts_total",
        "container_oom_kills_total",
        "container_events_total",
        "container_info",
    ] {
        assert!(families.contains(f), "{f} missing from {families:?}");
    }
    for (family, labels) in &series {
        for (k, v) in meta {
            assert!(
                labels.iter().any(|(a, b)| a == k && b == v),
                "{family} lacks {k}={v}: {labels:?}"
            );
        }
    }
    for banned in ["annotation_secret", "label_tier", "hunter2"] {
        assert!(!text.contains(banned), "{banned} leaked:\n{text}");
    }
    // Node-wide series carry no pod metadata.
    for line in text
        .lines()
        .filter(|l| l.starts_with("containers_") || l.starts_with("lifecycle_agent_"))
    {
        assert!(
            !line.contains("annotation_") && !line.contains("label_"),
            "{line}"
        );
    }
    common::promtool_check(&text);

    // The JSON API: the identity and its events carry the same metadata, keys as in Kubernetes.
    let list = agent.json("/api/v1/containers");
    let c = &list["containers"][0];
    assert_eq!(c["pod_uid"], p.uid());
    assert_eq!(
        c["pod_annotations"],
        serde_json::json!({"team": "shop", "example.com/owner": "alice"})
    );
    assert_eq!(c["pod_labels"], serde_json::json!({"app": "web"}));
    let one = agent.json(&format!("/api/v1/containers/{}", ctr.name));
    assert_eq!(one["pod_annotations"]["team"], "shop");
    let ev = agent.json(&format!("/api/v1/events?namespace=shop&pod={}", p.name()));
    let ev = ev["events"].as_array().cloned().unwrap_or_default();
    assert!(!ev.is_empty());
    assert!(
        ev.iter()
            .all(|e| e["pod_annotations"]["example.com/owner"] == "alice"),
        "{ev:?}"
    );
    // `events --pod --namespace` queries show it too.
    let out = std::process::Command::new(common::agent_bin())
        .args([
            "events",
            "--namespace",
            "shop",
            "--pod",
            p.name(),
            "--json",
            "--url",
        ])
        .arg(agent.url())
        .output()
        .expect("events CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("events --json");
    assert_eq!(v["events"][0]["pod_labels"]["app"], "web");

    // Without an allowlist: no annotation or label of any pod appears at all.
    let bare = s.agent(&[]);
    wait_value(&bare, "container_running", &id(&p), 1.0);
    wait_value(&bare, "lifecycle_agent_kube_up", &[], 1.0);
    let text = bare.metrics();
    assert!(
        !text.contains("annotation_") && !text.contains("label_"),
        "{text}"
    );
    s.assert_node_scoped();
    drop(ctr);
}

#[test]
fn kubelet_replacement_stays_one_identity_with_its_pod_metadata() {
    let Some(s) = Setup::new("replace") else {
        return;
    };
    let p = pod("web").annotation("team", "shop");
    s.fake.apply(&p);
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    let labels = with(id(&p), &[("annotation_team", "shop")]);
    let first = s.pod_container(&p, 0, "exit 1");
    wait_value(&agent, "container_running", &labels, 0.0);
    wait_value(&agent, "container_restarts_total", &labels, 0.0);
    // The kubelet replaces it: a new container, the same labels, the next attempt.
    let second = s.pod_container(&p, 1, LOOP);
    wait_value(&agent, "container_running", &labels, 1.0);
    wait_value(&agent, "container_restarts_total", &labels, 1.0);
    drop(first);
    wait_value(&agent, "containers_tracked", &[], 1.0);
    s.settle(&agent);
    let text = agent.metrics();
    assert_eq!(metric(&text, "containers_tracked", &[]), Some(1.0));
    let restarts = samples(&text, "container_restarts_total");
    assert_eq!(restarts.len(), 1, "one identity: {restarts:?}");
    assert_eq!(
        metric(&text, "container_restarts_total", &labels),
        Some(1.0)
    );
    assert_eq!(metric(&text, "containers_restarts_total", &[]), Some(1.0));
    s.assert_node_scoped();
    drop(second);
}

#[test]
fn a_pod_arriving_late_labels_existing_series_and_a_deleted_pod_takes_them_away() {
    let Some(s) = Setup::new("late") else { return };
    // A pod of another node whose container (oddly) runs here: its metadata must never
    // reach this agent, which never asks for other nodes' pods.
    let elsewhere = pod("elsewhere")
        .annotation("team", "foreign")
        .node("other-node");
    s.fake.apply(&elsewhere);
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    let foreign = s.pod_container(&elsewhere, 0, LOOP);
    let p = pod("late").annotation("team", "shop");
    let ctr = s.pod_container(&p, 0, LOOP);
    wait_value(&agent, "container_running", &id(&p), 1.0);
    wait_value(&agent, "container_running", &id(&elsewhere), 1.0);
    let bare = agent.metrics();
    assert!(!bare.contains("annotation_team"), "{bare}");
    let cid = metric_label(&bare, "container_info", p.name(), "container_id");

    // Created but not scheduled yet (no node): not this node's pod. A marker pod applied
    // after it shows the agent has seen both events, in order.
    s.fake.apply(&p.clone().node(""));
    s.fake.apply(&pod("marker"));
    wait_value(&agent, "lifecycle_agent_kube_pods", &[], 1.0);
    assert!(!agent.metrics().contains("annotation_team"));

    // Scheduled onto this node: the running container's series gain the metadata.
    s.fake.apply(&p);
    let labelled = with(id(&p), &[("annotation_team", "shop")]);
    wait_value(&agent, "container_running", &labelled, 1.0);
    wait_value(&agent, "lifecycle_agent_kube_pods", &[], 2.0);
    s.settle(&agent);
    let text = agent.metrics();
    assert_eq!(
        metric_label(&text, "container_info", p.name(), "container_id"),
        cid
    );
    assert_eq!(
        metric(&text, "container_restarts_total", &labelled),
        Some(0.0)
    );
    // One series per family for the pod: the labelled one replaced the bare one.
    assert_eq!(
        samples(&text, "container_running")
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| k == "pod" && v == p.name()))
            .count(),
        1
    );

    // Deleted: its metadata goes at once, its series when its containers go.
    s.fake.delete(p.uid());
    wait_value(&agent, "lifecycle_agent_kube_pods", &[], 1.0);
    let text = agent.metrics();
    assert!(!text.contains("annotation_team=\"shop\""), "{text}");
    assert_eq!(metric(&text, "container_running", &id(&p)), Some(1.0));
    drop(ctr);
    wait_for("the deleted pod's series to go", LONG, || {
        metric(&agent.metrics(), "container_running", &id(&p))
            .is_none()
            .then_some(())
    });
    assert!(!agent.metrics().contains("foreign"));
    s.assert_node_scoped();
    drop(foreign);
}

fn metric_label(text: &str, name: &str, pod: &str, key: &str) -> String {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| l.iter().any(|(k, v)| k == "pod" && v == pod))
        .and_then(|(l, _)| l.into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {name}{{pod={pod}}} with {key}"))
}

#[test]
fn api_server_outage_keeps_lifecycle_metrics_and_labels_come_back() {
    let Some(s) = Setup::new("outage") else {
        return;
    };
    let a = pod("a").annotation("team", "a");
    s.fake.apply(&a);
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    let ctr_a = s.pod_container(&a, 0, LOOP);
    let a_labels = with(id(&a), &[("annotation_team", "a")]);
    wait_value(&agent, "container_running", &a_labels, 1.0);
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);

    s.fake.stop();
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 0.0);
    assert!(errors(&agent, "unreachable") >= 1.0);
    // Lifecycle metrics keep flowing; the known pod keeps its labels (no series churn).
    s.docker.cli_ok(&["restart", "-t", "5", &ctr_a.name]);
    wait_value(&agent, "container_restarts_total", &a_labels, 1.0);
    s.settle(&agent);
    agent.assert_metric("container_restarts_total", &a_labels, 1.0);
    assert_eq!(
        agent.get("/readyz").0,
        200,
        "readiness must not depend on Kubernetes"
    );
    // A pod created during the outage: its container is tracked, without metadata yet.
    let b = pod("b").annotation("team", "b");
    s.fake.apply(&b);
    let ctr_b = s.pod_container(&b, 0, LOOP);
    wait_value(&agent, "container_running", &id(&b), 1.0);
    assert_eq!(
        metric(
            &agent.metrics(),
            "container_running",
            &with(id(&b), &[("annotation_team", "b")])
        ),
        None
    );

    s.fake.restart();
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    wait_value(
        &agent,
        "container_running",
        &with(id(&b), &[("annotation_team", "b")]),
        1.0,
    );
    wait_value(&agent, "container_restarts_total", &a_labels, 1.0);
    s.settle(&agent);
    agent.assert_metric("container_restarts_total", &a_labels, 1.0);
    assert_eq!(
        metric(&agent.metrics(), "containers_restarts_total", &[]),
        Some(1.0)
    );
    // Reachability errors are logged once a minute at most (the outage may just cross a
    // minute while the backoff grows), and the recovery once.
    let warned = log_lines(&agent, "cannot follow the node's pods");
    assert!(
        (1..=2).contains(&warned),
        "{warned} lines: {}",
        agent.log_text()
    );
    assert_eq!(
        log_lines(&agent, "following the node's pods again"),
        1,
        "{}",
        agent.log_text()
    );
    s.assert_node_scoped();
    drop((ctr_a, ctr_b));
}

#[test]
fn forbidden_list_and_watch_are_reported_once_each_and_recover() {
    let Some(s) = Setup::new("rbac") else { return };
    let p = pod("web").annotation("team", "shop");
    s.fake.apply(&p);
    s.fake.forbid(&["list", "watch"]);
    // The agent serves lifecycle metrics without the API.
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    let ctr = s.pod_container(&p, 0, LOOP);
    wait_value(&agent, "container_running", &id(&p), 1.0);
    wait_for("repeated forbidden lists", LONG, || {
        (errors(&agent, "forbidden") >= 3.0).then_some(())
    });
    assert_eq!(
        metric(&agent.metrics(), "lifecycle_agent_kube_up", &[]),
        Some(0.0)
    );
    assert!(!agent.metrics().contains("annotation_team"));
    assert_eq!(
        log_lines(&agent, "may not `list` `pods`"),
        1,
        "{}",
        agent.log_text()
    );

    // Listing allowed, watching still not: the list labels the series, the watch's 403 is
    // reported once, and the agent is not up (its view would go stale).
    s.fake.forbid(&["watch"]);
    let labelled = with(id(&p), &[("annotation_team", "shop")]);
    wait_value(&agent, "container_running", &labelled, 1.0);
    let before = errors(&agent, "forbidden");
    wait_for("repeated forbidden watches", LONG, || {
        (errors(&agent, "forbidden") >= before + 2.0).then_some(())
    });
    assert_eq!(
        log_lines(&agent, "may not `watch` `pods`"),
        1,
        "{}",
        agent.log_text()
    );
    assert_eq!(log_lines(&agent, "may not `list` `pods`"), 1);
    assert_eq!(
        metric(&agent.metrics(), "lifecycle_agent_kube_up", &[]),
        Some(0.0)
    );

    s.fake.allow_all();
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    // The watch works again: a change reaches the series.
    s.fake.apply(&p.clone().annotation("team", "checkout"));
    wait_value(
        &agent,
        "container_running",
        &with(id(&p), &[("annotation_team", "checkout")]),
        1.0,
    );
    assert_eq!(
        log_lines(&agent, "following the node's pods again"),
        1,
        "{}",
        agent.log_text()
    );
    s.assert_node_scoped();
    drop(ctr);
}

#[test]
fn a_stale_resource_version_gets_410_gone_and_the_agent_relists() {
    let Some(s) = Setup::new("gone") else { return };
    let p = pod("web").annotation("team", "a");
    s.fake.apply(&p);
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    let ctr = s.pod_container(&p, 0, LOOP);
    wait_value(
        &agent,
        "container_running",
        &with(id(&p), &[("annotation_team", "a")]),
        1.0,
    );
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    let lists = || {
        s.fake
            .requests()
            .iter()
            .filter(|r| r.verb == "list")
            .count()
    };
    assert_eq!(lists(), 1);
    // The change is compacted away before any watch sees it: only a relist can find it.
    s.fake
        .change_unseen_and_compact(&[p.clone().annotation("team", "b")]);
    wait_value(
        &agent,
        "container_running",
        &with(id(&p), &[("annotation_team", "b")]),
        1.0,
    );
    assert!(s.fake.gone_sent() >= 1);
    assert!(lists() >= 2);
    assert!(errors(&agent, "gone") >= 1.0);
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    s.assert_node_scoped();
    drop(ctr);
}

#[test]
fn bookmarks_and_watch_timeouts_resume_without_relisting() {
    let Some(s) = Setup::new("bookmark") else {
        return;
    };
    s.fake.set_max_watch(Duration::from_secs(2));
    s.fake.set_bookmark_every(Duration::from_millis(200));
    let p = pod("web").annotation("team", "a");
    s.fake.apply(&p);
    let agent = s.agent(&["--pod-annotations-allowlist", "team"]);
    wait_value(&agent, "lifecycle_agent_kube_up", &[], 1.0);
    // Changes this agent does not see (another node) move the resource version; only
    // bookmarks tell the agent about it.
    for i in 0..3 {
        s.fake.apply(&pod(&format!("other{i}")).node("other-node"));
    }
    let rv = s.fake.resource_version().to_string();
    wait_for("a watch resumed from a bookmark's version", LONG, || {
        s.fake
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.param("resourceVersion") == Some(rv.as_str()))
            .then_some(())
    });
    let reqs = s.fake.requests();
    assert_eq!(
        reqs.iter().filter(|r| r.verb == "list").count(),
        1,
        "{reqs:?}"
    );
    assert!(reqs.iter().filter(|r| r.verb == "watch").count() >= 2);
    let m = agent.metrics();
    assert_eq!(metric(&m, "lifecycle_agent_kube_up", &[]), Some(1.0));
    for reason in ["forbidden", "unauthorized", "unreachable", "gone", "other"] {
        assert_eq!(errors(&agent, reason), 0.0, "{reason}");
    }
    assert_eq!(metric(&m, "lifecycle_agent_kube_pods", &[]), Some(1.0));
    s.assert_node_scoped();
}

#[test]
fn hostile_pod_metadata_survives_a_real_prometheus_scrape_unchanged_or_cut() {
    let Some(s) = Setup::new("prom") else { return };
    let exact = "x".repeat(1024);
    let long = "é".repeat(750); // 1500 bytes: cut to 1024, on a character boundary
    let values = [
        ("quote", "say \"hi\""),
        ("path", "C:\\dir\\file\\"),
        ("multi", "line1\nline2\n"),
        ("intl", "ünïcödé ✓ 日本語 😀"),
        ("exact", exact.as_str()),
        ("long", long.as_str()),
        ("a.b", "dot"),
        ("a/b", "slash"),
    ];
    let mut p = pod("web").label("app", "web");
    for (k, v) in values {
        p = p.annotation(k, v);
    }
    s.fake.apply(&p);
    let agent = s.agent(&[
        "--pod-annotations-allowlist",
        "*",
        "--pod-labels-allowlist",
        "*",
    ]);
    let ctr = s.pod_container(&p, 0, LOOP);
    wait_value(
        &agent,
        "container_running",
        &with(id(&p), &[("annotation_quote", "say \"hi\"")]),
        1.0,
    );
    common::promtool_check(&agent.metrics());
    let Some(prom) = common::Prometheus::start(&common::scrape_config(&[agent.port]), &[]) else {
        return;
    };
    let selector = format!("container_running{{pod=\"{}\"}}", p.name());
    let series = wait_for("Prometheus to store the pod's series", LONG, || {
        let s = prom.series(&selector);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(series.len(), 1, "{series:?}");
    let got = &series[0];
    let want = [
        ("annotation_quote", "say \"hi\""),
        ("annotation_path", "C:\\dir\\file\\"),
        ("annotation_multi", "line1\nline2\n"),
        ("annotation_intl", "ünïcödé ✓ 日本語 😀"),
        ("annotation_exact", exact.as_str()),
        ("annotation_long", &long[..1024]),
        ("annotation_a_b_conflict1", "dot"),
        ("annotation_a_b_conflict2", "slash"),
        ("label_app", "web"),
        ("namespace", "shop"),
        ("container", "web"),
    ];
    for (k, v) in want {
        assert_eq!(
            got.get(k).and_then(Value::as_str),
            Some(v),
            "{k} in {got:?}"
        );
    }
    assert!(
        prom.targets().iter().all(|(health, _)| health == "up"),
        "{:?}",
        prom.targets()
    );
    drop(ctr);
}

#[test]
fn kube_on_without_any_configuration_exits_2_naming_it() {
    let home = std::env::temp_dir().join(common::unique("home"));
    std::fs::create_dir_all(&home).expect("home");
    let out = std::process::Command::new(common::agent_bin())
        .args([
            "run",
            "--kube",
            "on",
            "--ephemeral",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .env("HOME", &home)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`kube`"), "{err}");
    let out = std::process::Command::new(common::agent_bin())
        .args(["run", "--kube", "maybe"])
        .output()
        .expect("run the agent");
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(home);
}

#[test]
fn check_reports_the_kubernetes_api() {
    let Some(s) = Setup::new("check") else { return };
    s.fake.apply(&pod("web"));
    let check = || {
        std::process::Command::new(common::agent_bin())
            .args([
                "check",
                "--runtime",
                "docker",
                "--kube",
                "on",
                "--node-name",
                NODE,
                "--socket",
            ])
            .arg(s.docker.socket())
            .env("KUBECONFIG", s.fake.kubeconfig())
            .output()
            .expect("check")
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok    kube    v1.33.0-fake") && text.contains("1 pod(s) on node test-node"),
        "{text}"
    );
    s.fake.forbid(&["list"]);
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    // The runtime decides the exit status; the API is reported.
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("fail  kube") && text.contains("may not `list` `pods`"),
        "{text}"
    );
    s.assert_node_scoped();
}
