//! End to end with a real Prometheus server: it scrapes the agent the way the chart's
//! ServiceMonitor makes the Prometheus Operator scrape it (job = the Service's name,
//! `honor_labels: true`, the target's namespace/pod/container/node labels), lifecycle actions
//! happen on real containers, and PromQL over the HTTP API sees them; then the chart's own alert
//! rules, rendered by Helm with short test windows, fire for a crash-looping container.

mod common;

use std::time::Duration;

use common::{Agent, DockerDaemon, Prometheus, Runtime, LOOP};
use serde_json::Value;

/// The job the chart's rules select (release `lifecycle-agent`: job="lifecycle-agent").
const JOB: &str = "lifecycle-agent";

/// A scrape config equivalent to the one the Prometheus Operator generates from the chart's
/// ServiceMonitor: the target labels of the agent's pod, and the scraped labels kept.
fn config(agent_port: u16, rules: bool) -> String {
    let rule_files = if rules {
        "rule_files: [rules.yaml]"
    } else {
        ""
    };
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
{rule_files}
scrape_configs:
  - job_name: {JOB}
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{agent_port}"]
        labels:
          namespace: monitoring
          service: lifecycle-agent
          endpoint: metrics
          pod: lifecycle-agent-x7k2p
          container: agent
          node: test-node
"#
    )
}

fn label<'a>(m: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

#[test]
fn prometheus_sees_restarts_by_node_and_running_gauges() {
    let Some(daemon) = DockerDaemon::shared() else {
        return;
    };
    let filter = format!("lat.test={}", common::unique("prom"));
    let agent = Agent::start(&daemon.socket(), &["--container-filter", &filter]);
    let Some(prom) = Prometheus::start(&config(agent.port, false), &[]) else {
        return;
    };
    let opts = ["--label", filter.as_str()];

    // Two restarts of one container, one stop + start of another, one never started.
    let a = daemon.run("prom-a", &opts, LOOP);
    let b = daemon.run("prom-b", &opts, LOOP);
    let c = daemon.create("prom-c", &opts, LOOP);
    agent.wait_metric("container_running", &[("container", &a.name)], 1.0);
    // Prometheus sees both at zero first, as it would for containers that ran a while:
    // increase() (the dashboard, the alerts) counts only what happens after a first sample.
    for name in [&a.name, &b.name] {
        prom.wait_sample(
            &format!(r#"container_restarts_total{{container="{name}"}}"#),
            |_, v| v == 0.0,
        );
    }
    for want in [1.0, 2.0] {
        daemon.docker_ok(&["restart", "-t", "5", &a.name]);
        agent.wait_metric("container_restarts_total", &[("container", &a.name)], want);
    }
    daemon.docker_ok(&["stop", "-t", "5", &b.name]);
    agent.wait_metric("container_running", &[("container", &b.name)], 0.0);
    daemon.docker_ok(&["start", &b.name]);
    agent.wait_metric("container_restarts_total", &[("container", &b.name)], 1.0);

    // The acceptance query: restarts by node.
    prom.wait_sample("sum by (node) (container_restarts_total)", |m, v| {
        m.len() == 1 && label(m, "node") == Some("test-node") && v == 3.0
    });
    prom.wait_sample("sum by (node) (containers_restarts_total)", |m, v| {
        label(m, "node") == Some("test-node") && v == 3.0
    });
    prom.wait_sample(
        &format!(r#"container_restarts_total{{container="{}"}}"#, a.name),
        |m, v| {
            // honor_labels: the agent's labels win over the scraped pod's; a plain Docker
            // container keeps its empty namespace and pod instead of the agent's.
            v == 2.0
                && label(m, "node") == Some("test-node")
                && label(m, "runtime") == Some("docker")
                && label(m, "job") == Some(JOB)
                && label(m, "namespace").is_none()
                && label(m, "pod").is_none()
        },
    );

    // The running gauges.
    for name in [&a.name, &b.name] {
        prom.wait_sample(
            &format!(r#"container_running{{container="{name}"}}"#),
            |_, v| v == 1.0,
        );
    }
    prom.wait_sample(
        &format!(r#"container_running{{container="{}"}}"#, c.name),
        |_, v| v == 0.0,
    );
    prom.wait_sample("sum by (node) (containers_running)", |m, v| {
        label(m, "node") == Some("test-node") && v == 2.0
    });
    prom.wait_sample("sum by (node) (containers_stopped)", |m, v| {
        label(m, "node") == Some("test-node") && v == 1.0
    });
    // `up` carries the target's labels (the agent-down alert names the node from them).
    prom.wait_sample(&format!(r#"up{{job="{JOB}"}}"#), |m, v| {
        v == 1.0
            && label(m, "node") == Some("test-node")
            && label(m, "namespace") == Some("monitoring")
    });

    // Every query of the chart's Grafana dashboard runs against these series, the way Grafana
    // sends it for "All" (its variables substituted).
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::repo_root().join("charts/lifecycle-agent/dashboards/lifecycle-agent.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard json");
    let wanted = [
        "Restarts in range",
        "Restarts by node",
        "Top restarting containers",
        "Running containers",
        "Stopped containers",
        "Runtime connected",
        "Agents up",
    ];
    let panels_with_data = || {
        let mut with_data = Vec::new();
        for panel in board["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .expect("expr")
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "10m")
                    // Series without a `cluster` label match its empty value, as in Grafana.
                    .replace("$cluster", "")
                    .replace("$job", ".*")
                    .replace("$node", ".*");
                // A query Prometheus refuses fails the test here (status "error").
                if !prom.query(&expr).is_empty() {
                    with_data.push(panel["title"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        with_data
    };
    // Rates and increases need two scrapes of each series.
    let mut last = Vec::new();
    let all = common::wait_for_result(Duration::from_secs(30), || {
        last = panels_with_data();
        wanted.iter().all(|w| last.iter().any(|t| t == w))
    });
    assert!(
        all,
        "dashboard panels {wanted:?} should have data; these do: {last:?}"
    );
}

#[test]
fn chart_alerts_fire_for_a_crash_looping_container_and_a_lost_agent() {
    let Some(daemon) = DockerDaemon::shared() else {
        return;
    };
    let Some(python) = common::chart_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.yaml");
    common::render_chart_rules(
        &python,
        &common::repo_root().join("tests/chart/e2e-values.yaml"),
        &rules,
    );
    let rules = std::fs::read_to_string(&rules).expect("rendered rules");

    let filter = format!("lat.test={}", common::unique("alerts"));
    let agent = Agent::start(&daemon.socket(), &["--container-filter", &filter]);
    let Some(prom) = Prometheus::start(&config(agent.port, true), &[("rules.yaml", &rules)]) else {
        return;
    };

    // Prometheus loaded every rule of the chart, and each evaluates without error.
    let loaded = common::wait_for(
        "the chart's rules to be evaluated",
        Duration::from_secs(30),
        || {
            let groups = prom.api("/api/v1/rules")["groups"].clone();
            let rules: Vec<Value> = groups
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
            (rules.len() == 6 && evaluated).then_some(rules)
        },
    );
    assert!(loaded
        .iter()
        .all(|r| r["lastError"].as_str().unwrap_or("").is_empty()));

    // A container whose process fails every second, restarted by Docker each time.
    let crash = daemon.run(
        "crashloop",
        &["--label", &filter, "--restart", "always"],
        "sleep 1; exit 1",
    );
    let who = [("container", crash.name.as_str()), ("node", "test-node")];
    let pending = prom.wait_alert(
        "LifecycleContainerCrashLooping",
        &who,
        &["pending", "firing"],
        Duration::from_secs(90),
    );
    eprintln!("crash-loop alert {}", pending["state"]);
    let firing = prom.wait_alert(
        "LifecycleContainerCrashLooping",
        &who,
        &["firing"],
        Duration::from_secs(60),
    );
    let description = firing["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.starts_with(&format!("{} on node test-node restarted ", crash.name)),
        "{description}"
    );
    assert_eq!(firing["labels"]["severity"], "warning");
    assert_eq!(firing["labels"]["runtime"], "docker");
    // The same restarts make a storm on the node.
    prom.wait_alert(
        "LifecycleNodeRestartStorm",
        &[("node", "test-node")],
        &["firing"],
        Duration::from_secs(60),
    );
    drop(crash);

    // An OOM kill: the container waits until Prometheus has seen it at zero, then allocates.
    let oom = daemon.run(
        "oom",
        &[
            "--label",
            &filter,
            "--memory",
            "16m",
            "--memory-swap",
            "16m",
        ],
        "while [ ! -f /go ]; do sleep 0.2; done; dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    prom.wait_sample(
        &format!(r#"container_oom_kills_total{{container="{}"}}"#, oom.name),
        |_, v| v == 0.0,
    );
    daemon.docker_ok(&["exec", &oom.name, "touch", "/go"]);
    prom.wait_alert(
        "LifecycleContainerOOMKilled",
        &[("container", oom.name.as_str()), ("node", "test-node")],
        &["firing"],
        Duration::from_secs(60),
    );

    // The agent goes away: its scrapes fail and the agent-down alert names the node.
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status:?}");
    prom.wait_alert(
        "LifecycleAgentDown",
        &[("node", "test-node"), ("job", JOB)],
        &["firing"],
        Duration::from_secs(60),
    );
}
