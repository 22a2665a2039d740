"""The Helm chart, offline: rendered by Helm's SDK, linted strictly, its values schema, every
object against strict schemas, the DaemonSet contract the README describes, and the alert rules
with promtool."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

import chartlib
from chartlib import CHART, CI_VALUES, NAMESPACE, RELEASE, render, values_file

SCENARIOS = [None] + CI_VALUES


def scenario_id(p: Path | None) -> str:
    return "chart-defaults" if p is None else p.name


def scenario_values(p: Path | None) -> dict:
    return {} if p is None else values_file(p)


def container(ds: dict, name: str) -> dict:
    [c] = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def volume(ds: dict, name: str) -> dict:
    [v] = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return v


def mount(c: dict, name: str) -> dict:
    [m] = [m for m in c["volumeMounts"] if m["name"] == name]
    return m


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing (Debian package prometheus; scripts/test installs it)"
    return path


# --- the tooling itself -------------------------------------------------------------------


def test_schemas_are_the_published_ones():
    assert chartlib.k8s_dir().is_dir(), f"no schemas at {chartlib.k8s_dir()}"
    chartlib.verify_checksums()


def test_strict_yaml_loader_refuses_duplicate_keys():
    with pytest.raises(chartlib.DuplicateKeyError):
        chartlib.load_yaml("a: 1\nb: 2\na: 3\n")
    with pytest.raises(chartlib.DuplicateKeyError):
        chartlib.load_all("x: {y: 1, y: 2}\n")


def test_validation_rejects_unknown_fields():
    """The schemas are strict: a misspelled field in a rendered object fails."""
    ds = copy.deepcopy(render().one("DaemonSet"))
    ds["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(AssertionError, match="tolerationz"):
        chartlib.validate_object(ds)
    sm = copy.deepcopy(render({"serviceMonitor": {"enabled": True}}).one("ServiceMonitor"))
    sm["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(AssertionError, match="honourLabels"):
        chartlib.validate_object(sm)


# --- lint, render, validate every scenario ------------------------------------------------


@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_id)
def test_lint_is_clean(path):
    report = chartlib.lint(scenario_values(path))
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, json.dumps(report, indent=2)


@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_id)
def test_every_rendered_object_passes_strict_schemas(path):
    values = scenario_values(path)
    chartlib.validate_values(values)
    r = render(values)
    assert r.objects, "nothing rendered"
    seen = set()
    for obj in r.objects:
        ident = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert ident not in seen, f"rendered twice: {ident}"
        seen.add(ident)
        chartlib.validate_object(obj)
    assert r.notes.strip(), "NOTES.txt rendered empty"


@pytest.mark.parametrize("path", CI_VALUES, ids=scenario_id)
def test_ci_values_files_have_no_duplicate_keys(path):
    chartlib.values_file(path)


# --- values.schema.json --------------------------------------------------------------------

BAD_VALUES = [
    ({"tolerationz": []}, "tolerationz"),
    ({"serviceMonitor": {"intervall": "30s"}}, "intervall"),
    ({"image": {"tagg": "1.0"}}, "tagg"),
    ({"config": {"podLabelAllowlist": ["app"]}}, "podLabelAllowlist"),
    ({"prometheusRule": {"rules": {"crashLooping": {"treshold": 3}}}}, "treshold"),
    ({"kubeRBACProxy": {"enable": True}}, "enable"),
    ({"runtime": "containerd"}, "runtime"),
    ({"config": {"kube": "maybe"}}, "kube"),
    ({"config": {"maxHistory": 0}}, "maxHistory"),
    ({"config": {"historyRetention": "a week"}}, "historyRetention"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
    ({"prometheusRule": {"rules": {"oomKilled": {"for": "soon"}}}}, "for"),
    ({"service": {"port": 70000}}, "port"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"socketPath": "docker.sock"}, "socketPath"),
]


@pytest.mark.parametrize("values,key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_values_schema_rejects_typos_and_bad_values(values, key):
    with pytest.raises(helm.HelmValuesError, match=re.escape(key)):
        chartlib.validate_values(values)
    # Helm applies the schema on install too, not only on request.
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_values_schema_accepts_yaml_booleans_for_kube():
    """A bare `kube: off` in YAML is a boolean; it still means off."""
    for given, want in ((False, "off"), (True, "on"), ("auto", "auto")):
        chartlib.validate_values({"config": {"kube": given}})
        ds = render({"config": {"kube": given}}).one("DaemonSet")
        assert env_of(container(ds, "agent"))["LIFECYCLE_KUBE"] == want


def test_every_value_in_values_yaml_is_in_the_schema():
    """values.yaml itself validates, and the schema has no key values.yaml lacks."""
    defaults = values_file(CHART / "values.yaml")
    chartlib.validate_values(defaults)
    schema = json.loads((CHART / "values.schema.json").read_text())

    optional = {"updateStrategy.rollingUpdate.maxSurge"}

    def walk(s, v, path):
        props = s.get("properties")
        if props is None or s.get("additionalProperties", True) is not False:
            return
        for k in props:
            assert k in v or f"{path}{k}" in optional, f"schema key {path}{k} has no default in values.yaml"
            if isinstance(v.get(k), dict):
                walk(props[k], v[k], f"{path}{k}.")

    walk(schema, defaults, "")


# --- the DaemonSet contract (README "Kubernetes: the Helm chart") ----------------------------------------------------------


def test_daemonset_defaults_follow_the_contract():
    r = render()
    ds = r.one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    agent = container(ds, "agent")
    env = env_of(agent)

    # Every node: all taints tolerated, Linux only.
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    # The runtime socket as a hostPath of type Socket, mounted where the agent looks for it.
    sock = volume(ds, "runtime-socket")["hostPath"]
    assert sock == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert mount(agent, "runtime-socket") == {
        "name": "runtime-socket", "mountPath": "/var/run/docker.sock", "readOnly": True}
    assert env["LIFECYCLE_RUNTIME"] == "docker"
    assert env["LIFECYCLE_SOCKET"] == "/var/run/docker.sock"

    # State on the node.
    assert volume(ds, "state")["hostPath"] == {
        "path": "/var/lib/lifecycle-agent", "type": "DirectoryOrCreate"}
    assert mount(agent, "state")["mountPath"] == env["LIFECYCLE_STATE_DIR"]

    # NODE_NAME from the downward API.
    assert env["NODE_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}

    # One port named metrics; probes on /healthz and /readyz.
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9977, "protocol": "TCP"}]
    assert env["LIFECYCLE_LISTEN"] == "0.0.0.0:9977"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["port"] == 9977

    # Root for the socket, but no capabilities, read-only root, seccomp RuntimeDefault.
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = agent["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")

    # Configuration through the environment only (an unknown variable is ignored by older
    # agents, an unknown flag is fatal), and every variable is one the README's Configuration table names.
    assert agent["args"] == ["run"]
    assert set(env) <= chartlib.agent_env_names(), set(env) - chartlib.agent_env_names()

    # Labels users know from the prometheus-node-exporter chart.
    labels = ds["spec"]["template"]["metadata"]["labels"]
    for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
              "app.kubernetes.io/managed-by", "helm.sh/chart"):
        assert k in labels and k in ds["metadata"]["labels"], k
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "lifecycle-agent",
                        "app.kubernetes.io/instance": RELEASE}
    assert selector.items() <= labels.items()

    assert container(ds, "agent")["image"] == "ghcr.io/lifecycle-agent/lifecycle-agent:0.1.0"
    assert pod["serviceAccountName"] == "lifecycle-agent"


def test_default_objects_and_minimal_rbac():
    r = render()
    assert sorted(r.kinds()) == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service",
                                 "ServiceAccount"]
    role = r.one("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lifecycle-agent",
                                    "namespace": NAMESPACE}]
    svc = r.one("Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9977, "targetPort": "metrics",
                                     "protocol": "TCP"}]
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == r.one("DaemonSet")["spec"]["selector"]["matchLabels"]


def test_every_agent_setting_is_reachable_from_values():
    full = values_file(CHART / "ci" / "full-config-values.yaml")
    ds = render(full).one("DaemonSet")
    agent = container(ds, "agent")
    env = env_of(agent)
    assert env["LIFECYCLE_KUBE"] == "on"
    assert env["LIFECYCLE_POD_ANNOTATIONS_ALLOWLIST"] == "team.example.com/owner,app.kubernetes.io/version"
    assert env["LIFECYCLE_POD_LABELS_ALLOWLIST"] == "app,tier"
    assert env["LIFECYCLE_CONTAINER_FILTER"] == "io.kubernetes.pod.namespace,com.example.tracked=true"
    assert env["LIFECYCLE_MAX_HISTORY"] == "50000"
    assert env["LIFECYCLE_HISTORY_RETENTION"] == "7d"
    assert env["LIFECYCLE_LOG_FORMAT"] == "text"
    assert env["LIFECYCLE_LOG_LEVEL"] == "lifecycle_agent=debug,warn"
    assert env["LIFECYCLE_LISTEN"] == "[::]:19977"
    assert env["LIFECYCLE_SOCKET"] == "/run/docker/docker.sock"
    assert env["LIFECYCLE_ADMIN_TOKEN_FILE"] == "/etc/lifecycle-agent/admin-token/admin-token"
    assert env["LIFECYCLE_CONFIG"] == "/etc/lifecycle-agent/config/config.yaml"
    assert env["RUST_BACKTRACE"] == "1"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert agent["args"] == ["run", "--max-history=60000"]
    assert volume(ds, "admin-token")["secret"]["secretName"] == "lifecycle-admin"
    # The socket's directory, when asked (survives a daemon re-creating its socket).
    assert volume(ds, "runtime-socket")["hostPath"] == {"path": "/run/docker", "type": "Directory"}
    assert mount(agent, "runtime-socket")["mountPath"] == "/run/docker"
    assert volume(ds, "state")["hostPath"]["path"] == "/var/lib/node-lifecycle"

    r = render(full)
    cm = r.one("ConfigMap")
    assert chartlib.load_yaml(cm["data"]["config.yaml"]) == {"max_history": 50000}
    assert "checksum/config" in ds["spec"]["template"]["metadata"]["annotations"]
    assert ds["metadata"]["name"] == "node-lifecycle"
    assert {o["metadata"].get("namespace") for o in r.objects} - {None} == {"observability"}
    assert agent["image"] == ("registry.example.com/lifecycle-agent/lifecycle-agent:0.1.0-rc.1@sha256:"
                              "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    pod = ds["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "global-pull"}, {"name": "regcred"},
                                       {"name": "other-cred"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["template"]["metadata"]["labels"]["tier"] == "node-agent"
    assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "platform"

    # Across the scenarios, every variable of `lifecycle-agent run` the README documents is set.
    seen = set()
    for path in SCENARIOS:
        d = render(scenario_values(path)).one("DaemonSet")
        seen |= set(env_of(container(d, "agent")))
    assert chartlib.agent_env_names() <= seen, chartlib.agent_env_names() - seen


def test_podman_and_non_root():
    r = render(values_file(CHART / "ci" / "podman-nonroot-values.yaml"))
    ds = r.one("DaemonSet")
    agent = container(ds, "agent")
    env = env_of(agent)
    assert volume(ds, "runtime-socket")["hostPath"] == {"path": "/run/podman/podman.sock",
                                                       "type": "Socket"}
    assert env["LIFECYCLE_RUNTIME"] == "podman"
    assert env["LIFECYCLE_SOCKET"] == "/run/podman/podman.sock"
    assert env["LIFECYCLE_EPHEMERAL"] == "true"
    assert env["LIFECYCLE_KUBE"] == "off"
    pod_sc = ds["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65534
    assert pod_sc["supplementalGroups"] == [998]
    assert volume(ds, "state") == {"name": "state", "emptyDir": {}}
    # Podman's usual socket without socketPath.
    ds = render({"runtime": "podman"}).one("DaemonSet")
    assert volume(ds, "runtime-socket")["hostPath"]["path"] == "/run/podman/podman.sock"


def test_servicemonitor_selects_the_service_by_port_name():
    r = render(values_file(CHART / "ci" / "kube-prometheus-stack-values.yaml"))
    svc, sm = r.one("Service"), r.one("ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" == svc["spec"]["ports"][0]["name"]
    assert ep["honorLabels"] is True
    assert ep["path"] == "/metrics"
    assert ep["interval"] == "15s" and ep["scrapeTimeout"] == "5s"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["attachMetadata"] == {"node": True}
    assert sm["spec"]["sampleLimit"] == 50000
    # The node of the scraped agent first, then the user's relabelings.
    assert ep["relabelings"][0] == {"sourceLabels": ["__meta_kubernetes_pod_node_name"],
                                    "targetLabel": "node"}
    assert ep["relabelings"][1]["targetLabel"] == "zone"
    assert ep["metricRelabelings"][0]["action"] == "drop"
    # The Service's port leads to the agent's container port of the same name.
    ds = r.one("DaemonSet")
    assert svc["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container(ds, "agent")["ports"]]
    assert r.one("PrometheusRule")["metadata"]["labels"]["release"] == "kps"
    # Defaults: honorLabels on, no scheme (http).
    [ep] = render({"serviceMonitor": {"enabled": True}}).one("ServiceMonitor")["spec"]["endpoints"]
    assert ep["honorLabels"] is True and "scheme" not in ep


def test_podmonitor_without_a_service():
    r = render(values_file(CHART / "ci" / "podmonitor-values.yaml"))
    assert r.maybe("Service") is None and r.maybe("ServiceMonitor") is None
    pm = r.one("PodMonitor")
    assert pm["metadata"]["namespace"] == "monitoring"
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["honorLabels"] is True
    ds = r.one("DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    # The alerts follow the PodMonitor's job name (namespace/name).
    exprs = [rule["expr"] for rule in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert all('job="monitoring/lifecycle-agent"' in e for e in exprs), exprs
    with pytest.raises(helm.HelmError, match="service.enabled"):
        render({"service": {"enabled": False}, "serviceMonitor": {"enabled": True}})


def test_kube_rbac_proxy_guards_the_port():
    r = render(values_file(CHART / "ci" / "kube-rbac-proxy-values.yaml"))
    ds = r.one("DaemonSet")
    agent, proxy = container(ds, "agent"), container(ds, "kube-rbac-proxy")
    assert env_of(agent)["LIFECYCLE_LISTEN"] == "127.0.0.1:9978"
    assert "ports" not in agent
    assert proxy["ports"] == [{"name": "metrics", "containerPort": 9977, "protocol": "TCP"}]
    assert "--upstream=http://127.0.0.1:9978/" in proxy["args"]
    assert "--secure-listen-address=:9977" in proxy["args"]
    assert "--ignore-paths=/healthz,/readyz" in proxy["args"]
    assert "--tls-min-version=VersionTLS13" in proxy["args"]
    assert agent["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    role = r.one("ClusterRole")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
            "verbs": ["create"]} in role["rules"]
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
            "verbs": ["create"]} in role["rules"]
    [ep] = r.one("ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "https"
    assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert ep["tlsConfig"] == {"insecureSkipVerify": True}
    [pep] = r.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert pep["scheme"] == "https" and pep["authorization"]["type"] == "Bearer"
    np = r.one("NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": 9977, "protocol": "TCP"}]
    assert np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    assert "kubectl create token" in r.notes


def test_notes_tell_how_to_reach_metrics_and_stats():
    notes = render().notes
    assert "port-forward" in notes
    assert "curl -s http://127.0.0.1:9977/metrics" in notes
    assert "/api/v1/stats/restarts" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes


def test_names_follow_overrides():
    r = render({"nameOverride": "lca"}, name="prod")
    assert r.one("DaemonSet")["metadata"]["name"] == "prod-lca"
    assert r.one("DaemonSet")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "lca"
    r = render({}, name="lifecycle-agent-prod")
    assert r.one("DaemonSet")["metadata"]["name"] == "lifecycle-agent-prod"


# --- alerts --------------------------------------------------------------------------------

ALL_MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                  "dashboards": {"enabled": True}}


def test_alert_templates_are_escaped_for_prometheus():
    rules = render(ALL_MONITORING).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    names = [r["alert"] for r in rules]
    assert names == ["LifecycleContainerCrashLooping", "LifecycleNodeRestartStorm",
                     "LifecycleContainerOOMKilled", "LifecycleAgentDown",
                     "LifecycleAgentRuntimeDisconnected", "LifecycleAgentEventsPossiblyMissed"]
    crash = rules[0]
    assert "{{ $labels.node }}" in crash["annotations"]["description"]
    assert '{{ printf "%.0f" $value }}' in crash["annotations"]["description"]
    assert crash["expr"] == ('sum by (node, runtime, namespace, pod, container) '
                             '(increase(container_restarts_total{job="lifecycle-agent"}[30m])) > 2')
    assert crash["for"] == "5m"


def test_alert_thresholds_and_durations_come_from_values():
    values = {"prometheusRule": {"enabled": True, "rules": {
        "crashLooping": {"threshold": 7, "window": "1h", "for": "20m", "severity": "critical"},
        "agentDown": {"enabled": False}}}}
    rules = {r["alert"]: r for r in
             render(values).one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    crash = rules["LifecycleContainerCrashLooping"]
    assert crash["expr"].endswith("[1h])) > 7") and crash["for"] == "20m"
    assert crash["labels"] == {"severity": "critical"}
    assert "LifecycleAgentDown" not in rules


def write_rules(tmp_path: Path, rendered) -> Path:
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(chartlib.prometheus_rule_groups(rendered)))
    return f


@pytest.mark.parametrize("path", [p for p in CI_VALUES if "prometheusRule" in values_file(p)],
                         ids=scenario_id)
def test_promtool_checks_the_rules(tmp_path, path):
    values = scenario_values(path)
    out = subprocess.run([promtool(), "check", "rules", str(write_rules(tmp_path, render(values)))],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_every_alert(tmp_path):
    """Synthetic series through the rendered rules: each alert fires with the labels and the
    annotation text a receiver sees."""
    rules = write_rules(tmp_path, render(ALL_MONITORING))
    ident = 'node="n1", runtime="docker", namespace="shop", pod="web-1", container="app"'
    plain = 'node="n1", runtime="docker", namespace="", pod="", container="redis"'
    job = 'job="lifecycle-agent", instance="10.0.0.1:9977"'
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # One restart a minute: more than 2 in 30m from minute 3 on.
                {"series": f"container_restarts_total{{{job}, {ident}}}", "values": "0+1x40"},
                # The kubelet's steady back-off: one restart every 5 minutes, for two hours.
                {"series": f'container_restarts_total{{{job}, {ident.replace("web-1", "web-2")}}}',
                 "values": "0+0.2x120"},
                {"series": f"container_restarts_total{{{job}, {plain}}}", "values": "0x40"},
                # 30 restarts over 10 minutes on node n1.
                {"series": f'containers_restarts_total{{{job}, node="n1", runtime="docker"}}',
                 "values": "0+3x40"},
                {"series": f"container_oom_kills_total{{{job}, {plain}}}", "values": "0x5 1x35"},
                {"series": f'up{{{job}, node="n1"}}', "values": "0x40"},
                {"series": f'lifecycle_agent_runtime_connected{{{job}, node="n1", runtime="docker"}}',
                 "values": "0x40"},
                {"series": f'lifecycle_agent_events_possibly_missed_total{{{job}, node="n1", runtime="docker"}}',
                 "values": "0x10 1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "node": "n1", "runtime": "docker",
                                   "namespace": "shop", "pod": "web-1", "container": "app"},
                    "exp_annotations": {
                        "summary": "A container is restarting over and over.",
                        "description": "shop/web-1/app on node n1 restarted 15 times in 30m (threshold 2)."},
                }]},
                # web-1's series ended at minute 40; the slow, steady loop still fires.
                {"eval_time": "119m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "node": "n1", "runtime": "docker",
                                    "namespace": "shop", "pod": "web-2", "container": "app"},
                     "exp_annotations": {
                         "summary": "A container is restarting over and over.",
                         "description": "shop/web-2/app on node n1 restarted 6 times in 30m (threshold 2)."}},
                ]},
                {"eval_time": "20m", "alertname": "LifecycleNodeRestartStorm", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "node": "n1"},
                    "exp_annotations": {
                        "summary": "Many containers are restarting on one node.",
                        "description": "Containers on node n1 restarted 30 times in 10m (threshold 20)."},
                }]},
                {"eval_time": "8m", "alertname": "LifecycleContainerOOMKilled", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "node": "n1", "runtime": "docker",
                                   "container": "redis"},
                    "exp_annotations": {
                        "summary": "A container was killed for running out of memory.",
                        "description": "redis on node n1 was OOM-killed 1 times in 15m."},
                }]},
                {"eval_time": "4m", "alertname": "LifecycleAgentDown", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "LifecycleAgentDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "job": "lifecycle-agent",
                                   "instance": "10.0.0.1:9977", "node": "n1"},
                    "exp_annotations": {
                        "summary": "A lifecycle agent cannot be scraped.",
                        "description": "The agent 10.0.0.1:9977 on node n1 has not answered scrapes "
                                       "for 5m: restarts and OOM kills on that node go unseen."},
                }]},
                {"eval_time": "6m", "alertname": "LifecycleAgentRuntimeDisconnected", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "lifecycle-agent",
                                   "instance": "10.0.0.1:9977", "node": "n1", "runtime": "docker"},
                    "exp_annotations": {
                        "summary": "A lifecycle agent lost its container runtime.",
                        "description": "The agent on node n1 has not been connected to its docker "
                                       "runtime for 5m; its /readyz says why."},
                }]},
                {"eval_time": "12m", "alertname": "LifecycleAgentEventsPossiblyMissed", "exp_alerts": [{
                    "exp_labels": {"severity": "info", "job": "lifecycle-agent",
                                   "instance": "10.0.0.1:9977", "node": "n1", "runtime": "docker"},
                    "exp_annotations": {
                        "summary": "A lifecycle agent may have missed runtime events.",
                        "description": "The agent on node n1 reconnected to its runtime after a gap "
                                       "longer than the runtime keeps events for; state was "
                                       "reconciled, but individual events of that gap are not in "
                                       "its history."},
                }]},
            ],
        }],
    }
    tf = tmp_path / "rules_test.yaml"
    tf.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", tf.name], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- dashboard -----------------------------------------------------------------------------


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced the way Grafana would for "All"."""
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            .replace("$job", ".*").replace("$node", ".*"))


def test_dashboard_configmap_and_panels(tmp_path):
    r = render(ALL_MONITORING)
    cm = [o for o in r.all("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(cm["data"]["lifecycle-agent.json"])
    assert board == json.loads((CHART / "dashboards" / "lifecycle-agent.json").read_text())
    titles = {p["title"] for p in board["panels"]}
    for want in ("Restarts by node", "Top restarting containers", "Running containers",
                 "Stopped containers", "OOM kills", "Runtime connected", "Agents up"):
        assert want in titles, want
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs(board)
    metrics_used = " ".join(e for _, e in exprs)
    for m in ("containers_restarts_total", "container_restarts_total", "containers_running",
              "containers_stopped", "container_oom_kills_total",
              "lifecycle_agent_runtime_connected", "up{"):
        assert m in metrics_used, m
    # Every query parses: promtool checks them as recording rules.
    group = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-rules.yaml"
    f.write_text(yaml.safe_dump(group))
    out = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- packaging ---------------------------------------------------------------------------


def test_chart_image_and_crate_versions_agree():
    import tomllib

    crate = tomllib.loads((chartlib.REPO / "Cargo.toml").read_text())["package"]["version"]
    chart = chartlib.load_yaml((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == crate, "Chart.yaml appVersion must follow Cargo.toml"
    dockerfile = (chartlib.REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(crate)}$", dockerfile, re.M), \
        "the Dockerfile's default VERSION must follow Cargo.toml"


def test_readme_documents_every_value():
    """The README's values table names every top-level key and every agent setting."""
    readme = (chartlib.REPO / "README.md").read_text()
    table = readme.split("### Values", 1)[1].split("\n## ", 1)[0]
    defaults = values_file(CHART / "values.yaml")
    missing = [k for k in defaults if k != "global" and f"`{k}" not in table]
    missing += [f"config.{k}" for k in defaults["config"] if f"`config.{k}" not in table]
    missing += [f"prometheusRule.rules.{k}" for k in defaults["prometheusRule"]["rules"]
                if f"`{k}`" not in table]
    assert not missing, f"README's values table lacks {missing}"
