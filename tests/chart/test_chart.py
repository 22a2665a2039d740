"""The Helm chart, offline: rendered by Helm's SDK, linted strictly, its values schema, every
object against strict schemas, the DaemonSet contract the README describes, and the alert rules
with promtool."""

from __future__ import annotations

import copy
import json
import os
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
    ({"runtime": "cri-dockerd"}, "runtime"),
    ({"containerdNamespaces": [""]}, "containerdNamespaces"),
    # The migration trap: node-exporter's `securityContext` is the pod's, and a container's
    # fields there (or a pod's in a container context) fail instead of being dropped.
    ({"securityContext": {"capabilities": {"drop": ["ALL"]}}}, "capabilities"),
    ({"securityContext": {"readOnlyRootFilesystem": True}}, "readOnlyRootFilesystem"),
    ({"containerSecurityContext": {"fsGroup": 2000}}, "fsGroup"),
    ({"containerSecurityContext": {"supplementalGroups": [998]}}, "supplementalGroups"),
    ({"kubeRBACProxy": {"containerSecurityContext": {"sysctls": []}}}, "sysctls"),
    ({"socketProxy": {"containerSecurityContext": {"fsGroupChangePolicy": "Always"}}},
     "fsGroupChangePolicy"),
    ({"podSecurityContext": {"runAsUser": 0}}, "podSecurityContext"),
    ({"kubeRBACProxy": {"securityContext": {}}}, "securityContext"),
    ({"prometheusRule": {"runbookUrl": "docs/runbooks.md"}}, "runbookUrl"),
    ({"prometheusRule": {"additionalAggregationLabels": ["not-a-label"]}},
     "additionalAggregationLabels"),
    ({"prometheusRule": {"rules": {"crashLooping": {"includePods": "yes"}}}}, "includePods"),
    ({"verticalPodAutoscaler": {"updatePolicy": {"updateMode": "Sometimes"}}}, "updateMode"),
    ({"socketProxy": {"enable": True}}, "enable"),
    ({"serviceMonitor": {"namespaceSelector": {"matchName": ["a"]}}}, "matchName"),
    ({"rbac": {"extraRules": [{"resources": ["nodes"]}]}}, "verbs"),
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

    optional = {"updateStrategy.rollingUpdate.maxSurge", "verticalPodAutoscaler.updatePolicy.minReplicas"}

    def walk(s, v, path):
        props = s.get("properties")
        if props is None or s.get("additionalProperties", True) is not False:
            return
        for k in props:
            assert k in v or f"{path}{k}" in optional, f"schema key {path}{k} has no default in values.yaml"
            # An empty default ({}) is a Kubernetes object passed through (dnsConfig, ...).
            if isinstance(v.get(k), dict) and v[k]:
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

    # The runtime socket (containerd by default: most clusters run it) as a hostPath of type
    # Socket, mounted where the agent looks for it.
    sock = volume(ds, "runtime-socket")["hostPath"]
    assert sock == {"path": "/run/containerd/containerd.sock", "type": "Socket"}
    assert mount(agent, "runtime-socket") == {
        "name": "runtime-socket", "mountPath": "/run/containerd/containerd.sock", "readOnly": True}
    assert env["LIFECYCLE_RUNTIME"] == "containerd"
    assert env["LIFECYCLE_SOCKET"] == "/run/containerd/containerd.sock"
    assert "LIFECYCLE_CONTAINERD_NAMESPACES" not in env, "the agent's default (k8s.io) applies"

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

    # Root for the socket, but no capabilities, read-only root, seccomp RuntimeDefault
    # (`securityContext` is the pod's, `containerSecurityContext` the container's).
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = agent["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")

    # Configuration through the environment only (an unknown variable is ignored by older
    # agents, an unknown flag is fatal), and every variable is one the README's Configuration
    # table names.
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


RUNTIME_SOCKETS = {
    "containerd": "/run/containerd/containerd.sock",
    "crio": "/var/run/crio/crio.sock",
    "docker": "/var/run/docker.sock",
    "podman": "/run/podman/podman.sock",
}


@pytest.mark.parametrize("runtime", sorted(RUNTIME_SOCKETS))
def test_runtime_presets(runtime):
    """Each runtime's usual socket, passed to the agent as --runtime/LIFECYCLE_RUNTIME."""
    ds = render({"runtime": runtime}).one("DaemonSet")
    agent = container(ds, "agent")
    env = env_of(agent)
    assert env["LIFECYCLE_RUNTIME"] == runtime
    assert env["LIFECYCLE_SOCKET"] == RUNTIME_SOCKETS[runtime]
    assert volume(ds, "runtime-socket")["hostPath"] == {"path": RUNTIME_SOCKETS[runtime],
                                                       "type": "Socket"}
    assert mount(agent, "runtime-socket")["mountPath"] == RUNTIME_SOCKETS[runtime]


def test_containerd_distribution_sockets_and_namespaces():
    ds = render(values_file(CHART / "ci" / "containerd-values.yaml")).one("DaemonSet")
    env = env_of(container(ds, "agent"))
    assert env["LIFECYCLE_SOCKET"] == "/run/k3s/containerd/containerd.sock"
    assert env["LIFECYCLE_CONTAINERD_NAMESPACES"] == "k8s.io,moby"
    # Namespaces are containerd's alone.
    ds = render({"runtime": "docker", "containerdNamespaces": ["k8s.io"]}).one("DaemonSet")
    assert "LIFECYCLE_CONTAINERD_NAMESPACES" not in env_of(container(ds, "agent"))
    # The README names the socket of each distribution the values document.
    readme = (chartlib.REPO / "README.md").read_text()
    for path in ("/run/k3s/containerd/containerd.sock",
                 "/var/snap/microk8s/common/run/containerd.sock", *RUNTIME_SOCKETS.values()):
        assert path in readme, path


@pytest.mark.parametrize("kube", ["off", False])
def test_kube_off_mounts_no_token_and_creates_no_rbac(kube):
    """Least privilege: without Kubernetes metadata (and no kube-rbac-proxy) nothing in the
    pod talks to the API server, so no token is mounted and no RBAC object exists."""
    r = render({"config": {"kube": kube}})
    ds = r.one("DaemonSet")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert r.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert not [o for o in r.objects if o["apiVersion"].startswith("rbac.authorization.k8s.io")]
    for c in ds["spec"]["template"]["spec"]["containers"]:
        assert not [m for m in c.get("volumeMounts", []) if "serviceaccount" in m["mountPath"]]
    # The ci example of it (CRI-O, kube off) too.
    r = render(values_file(CHART / "ci" / "crio-values.yaml"))
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert r.maybe("ClusterRole") is None and r.maybe("ClusterRoleBinding") is None


def test_token_and_rbac_follow_what_uses_them():
    # kube on: the pod watch, nothing else.
    r = render({"config": {"kube": "on"}})
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert r.one("ClusterRole")["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                                              "verbs": ["get", "list", "watch"]}]
    # kube off behind kube-rbac-proxy: the proxy's reviews only, no pod access.
    r = render({"config": {"kube": "off"}, "kubeRBACProxy": {"enabled": True}})
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    resources = [res for rule in r.one("ClusterRole")["rules"] for res in rule["resources"]]
    assert sorted(resources) == ["subjectaccessreviews", "tokenreviews"]
    # kube off with extra rules (for a sidecar): those rules only.
    extra = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    r = render({"config": {"kube": "off"}, "rbac": {"extraRules": extra}})
    assert r.one("ClusterRole")["rules"] == extra
    # The user's own switch still turns the token off.
    r = render({"serviceAccount": {"automountServiceAccountToken": False}})
    assert r.one("DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


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
    assert proxy["ports"][0] == {"name": "metrics", "containerPort": 9977, "protocol": "TCP"}
    assert "--upstream=http://127.0.0.1:9978/" in proxy["args"]
    assert "--secure-listen-address=:9977" in proxy["args"]
    assert "--ignore-paths=/healthz,/readyz" in proxy["args"]
    assert "--tls-min-version=VersionTLS13" in proxy["args"]
    assert proxy["image"] == "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    assert agent["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # The certificate from a Secret instead of the proxy's self-signed one.
    assert "--tls-cert-file=/etc/kube-rbac-proxy/tls/tls.crt" in proxy["args"]
    assert "--tls-private-key-file=/etc/kube-rbac-proxy/tls/tls.key" in proxy["args"]
    assert mount(proxy, "kube-rbac-proxy-tls")["mountPath"] == "/etc/kube-rbac-proxy/tls"
    assert volume(ds, "kube-rbac-proxy-tls")["secret"]["secretName"] == "lifecycle-agent-metrics-tls"
    # The proxy is probed on its own endpoint port, and the agent's liveness does not go
    # through the proxy: a stuck proxy restarts alone, never the agent.
    assert "--proxy-endpoints-port=8888" in proxy["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz", "port": "proxy-health",
                                           "scheme": "HTTPS"}
    assert {"name": "proxy-health", "containerPort": 8888, "protocol": "TCP"} in proxy["ports"]
    assert "httpGet" not in agent["livenessProbe"]
    assert agent["livenessProbe"]["exec"]["command"] == [
        "/usr/local/bin/lifecycle-agent", "stats", "--json", "--url", "http://127.0.0.1:9978"]
    # The example scrapes with the ServiceMonitor only: not every agent twice.
    assert r.maybe("PodMonitor") is None
    assert "scraped twice" not in r.notes and "twice" not in r.notes
    role = r.one("ClusterRole")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
            "verbs": ["create"]} in role["rules"]
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
            "verbs": ["create"]} in role["rules"]
    [ep] = r.one("ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "https"
    assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert ep["tlsConfig"] == {"insecureSkipVerify": True}
    both = render({"kubeRBACProxy": {"enabled": True}, "serviceMonitor": {"enabled": True},
                   "podMonitor": {"enabled": True, "authorization": {
                       "type": "Bearer", "credentials": {"name": "scrape", "key": "token"}}}})
    [pep] = both.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert pep["scheme"] == "https" and pep["authorization"]["type"] == "Bearer"
    np = r.one("NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": 9977, "protocol": "TCP"}]
    assert np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    assert "kubectl create token" in r.notes


def test_notes_warn_when_every_agent_is_scraped_twice():
    notes = render({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}).notes
    assert "WARNING" in notes and "scrapes every\nagent twice" in notes
    for one in ({"serviceMonitor": {"enabled": True}}, {"podMonitor": {"enabled": True}}):
        assert "WARNING" not in render(one).notes


def test_kube_rbac_proxy_tls_needs_a_secret():
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render({"kubeRBACProxy": {"enabled": True, "tls": {"enabled": True}}})


def test_node_exporter_security_context_naming():
    """`securityContext` is the pod's and `containerSecurityContext` the container's, as in
    the prometheus-node-exporter chart; values copied from it land where they mean."""
    ds = render({"securityContext": {"runAsUser": 65534, "runAsNonRoot": True, "fsGroup": 65534,
                                     "supplementalGroups": [998]},
                 "containerSecurityContext": {"readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"], "add": []}}}
                ).one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsUser": 65534, "runAsGroup": 0, "runAsNonRoot": True,
                                      "fsGroup": 65534, "supplementalGroups": [998],
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container(ds, "agent")["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": []}}
    chartlib.validate_object(ds)


def test_pod_and_monitoring_keys_of_the_upstream_charts():
    """Keys users of the node-exporter and kube-state-metrics charts rely on (ci/extras)."""
    r = render(values_file(CHART / "ci" / "extras-values.yaml"))
    ds = r.one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    agent = container(ds, "agent")
    assert pod["dnsConfig"] == {"options": [{"name": "ndots", "value": "2"}]}
    assert agent["startupProbe"]["httpGet"] == {"path": "/healthz", "port": 9977, "scheme": "HTTP"}
    assert agent["startupProbe"]["failureThreshold"] == 60 and "enabled" not in agent["startupProbe"]
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-socket"]
    assert [c["name"] for c in pod["containers"]] == ["agent", "log-tail"]
    assert r.one("ServiceAccount")["imagePullSecrets"] == [{"name": "sa-pull"},
                                                          {"name": "other-sa-pull"}]
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]} in \
        r.one("ClusterRole")["rules"]
    extra = {o["metadata"]["name"]: o for o in r.all("ConfigMap")}
    assert extra["lifecycle-agent-extra"]["data"] == {"note": "made by extraManifests"}
    assert extra["lifecycle-agent-extra-string"]["data"] == {"namespace": NAMESPACE}
    vpa = r.one("VerticalPodAutoscaler")
    assert vpa["spec"]["targetRef"] == {"apiVersion": "apps/v1", "kind": "DaemonSet",
                                        "name": ds["metadata"]["name"]}
    [policy] = vpa["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy["containerName"] == "agent" and policy["maxAllowed"] == {"memory": "512Mi"}
    sm = r.one("ServiceMonitor")["spec"]
    assert sm["selector"] == {"matchLabels": {"app.kubernetes.io/name": "lifecycle-agent"}}
    assert sm["namespaceSelector"] == {"any": True}
    assert sm["targetLabels"] == ["tier"] and sm["podTargetLabels"] == ["app.kubernetes.io/instance"]
    board = [o for o in r.all("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")][0]
    assert board["metadata"]["annotations"] == {"grafana_folder": "Containers"}
    pm = render({"podMonitor": {"enabled": True, "selectorOverride": {"a": "b"},
                                "namespaceSelector": {"matchNames": ["x", "y"]},
                                "podTargetLabels": ["team"]}}).one("PodMonitor")["spec"]
    assert pm["selector"] == {"matchLabels": {"a": "b"}}
    assert pm["namespaceSelector"] == {"matchNames": ["x", "y"]}
    assert pm["podTargetLabels"] == ["team"]


def test_chart_metadata():
    meta = chartlib.load_yaml((CHART / "Chart.yaml").read_text())
    for key in ("home", "sources", "maintainers", "icon"):
        assert meta.get(key), key
    assert (CHART / "icon.svg").is_file() and meta["icon"].endswith("charts/lifecycle-agent/icon.svg")


def test_socket_proxy_keeps_the_real_socket_from_the_agent():
    r = render(values_file(CHART / "ci" / "socket-proxy-values.yaml"))
    ds = r.one("DaemonSet")
    agent, proxy = container(ds, "agent"), container(ds, "socket-proxy")
    assert "runtime-socket" not in [m["name"] for m in agent["volumeMounts"]]
    assert env_of(agent)["LIFECYCLE_SOCKET"] == "/run/lifecycle-agent/runtime.sock"
    assert mount(agent, "proxy-socket")["mountPath"] == "/run/lifecycle-agent"
    assert mount(proxy, "runtime-socket") == {"name": "runtime-socket",
                                              "mountPath": "/var/run/docker.sock", "readOnly": True}
    assert mount(proxy, "proxy-socket")["mountPath"] == "/run/lifecycle-agent"
    penv = env_of(proxy)
    assert penv == {"RUNTIME_SOCKET": "/var/run/docker.sock",
                    "PROXY_SOCKET": "/run/lifecycle-agent/runtime.sock", "HEALTH_ADDR": ":8889"}
    assert proxy["command"][-1] == "/etc/lifecycle-agent/socket-proxy/socket-proxy.cfg"
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8889}
    assert volume(ds, "proxy-socket")["emptyDir"]["medium"] == "Memory"
    # The proxy runs exactly the file the integration test (tests/socket_proxy.rs) runs.
    cm = [o for o in r.all("ConfigMap") if o["metadata"]["name"].endswith("-socket-proxy")][0]
    shipped = (CHART / "files" / "socket-proxy.cfg").read_text()
    assert cm["data"]["socket-proxy.cfg"] == shipped.strip()
    assert volume(ds, "socket-proxy-config")["configMap"]["name"] == cm["metadata"]["name"]
    # Kubernetes off and no token: the pod holds neither the socket's power nor the API's.
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # Podman too, with the socket's directory; containerd and CRI-O speak gRPC: refused.
    ds = render({"runtime": "podman", "socketProxy": {"enabled": True},
                 "mountSocketDirectory": True}).one("DaemonSet")
    assert env_of(container(ds, "socket-proxy"))["RUNTIME_SOCKET"] == "/run/podman/podman.sock"
    assert mount(container(ds, "socket-proxy"), "runtime-socket")["mountPath"] == "/run/podman"
    for runtime in ("containerd", "crio"):
        with pytest.raises(helm.HelmError, match="socketProxy"):
            render({"runtime": runtime, "socketProxy": {"enabled": True}})


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
    # Plain containers only by default (pod=""): pods are KubePodCrashLooping's.
    assert crash["expr"] == ('sum by (cluster, node, runtime, namespace, pod, container) '
                             '(increase(container_restarts_total{job="lifecycle-agent", pod=""}[30m])) > 2')
    assert [r["labels"]["severity"] for r in rules] == [
        "warning", "warning", "warning", "warning", "warning", "info"]
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


def run_promtool_tests(tmp_path: Path, rendered, tests: list[dict]) -> None:
    rules = write_rules(tmp_path, rendered)
    f = tmp_path / "rules_test.yaml"
    f.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m",
                                 "tests": tests}, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", f.name], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def runbook(alert: str) -> str:
    base = values_file(CHART / "values.yaml")["prometheusRule"]["runbookUrl"]
    return f"{base}#{alert.lower()}"


def test_promtool_unit_tests_fire_every_alert(tmp_path):
    """Synthetic series through the rendered rules (defaults): each alert fires with the
    labels and the annotation text a receiver sees, cluster included."""
    ident = 'cluster="c1", node="n1", runtime="docker", namespace="shop", pod="web-1", container="app"'
    plain = 'cluster="c1", node="n1", runtime="docker", namespace="", pod="", container="redis"'
    job = 'job="lifecycle-agent", instance="10.0.0.1:9977"'
    crash = {"summary": "A container is restarting over and over."}
    tests = [{
        "interval": "1m",
        "input_series": [
            # A plain container, one restart a minute: more than 2 in 30m from minute 3 on.
            {"series": f"container_restarts_total{{{job}, {plain}}}", "values": "0+1x40"},
            # A Kubernetes pod restarting as fast: KubePodCrashLooping's, not ours by default.
            {"series": f"container_restarts_total{{{job}, {ident}}}", "values": "0+1x40"},
            # 30 restarts over 10 minutes on node n1.
            {"series": f'containers_restarts_total{{{job}, cluster="c1", node="n1", runtime="docker"}}',
             "values": "0+3x40"},
            {"series": f"container_oom_kills_total{{{job}, {plain}}}", "values": "0x5 1x35"},
            {"series": f'up{{{job}, cluster="c1", node="n1"}}', "values": "0x40"},
            {"series": f'lifecycle_agent_runtime_connected{{{job}, cluster="c1", node="n1", runtime="docker"}}',
             "values": "0x40"},
            {"series": f'lifecycle_agent_events_possibly_missed_total{{{job}, cluster="c1", node="n1", runtime="docker"}}',
             "values": "0x10 1x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": [{
                # Empty labels (namespace="", pod="") do not exist in Prometheus.
                "exp_labels": {"severity": "warning", "cluster": "c1", "node": "n1",
                               "runtime": "docker", "container": "redis"},
                "exp_annotations": {
                    **crash, "runbook_url": runbook("LifecycleContainerCrashLooping"),
                    "description": "redis on node n1 restarted 15 times in 30m (threshold 2)."},
            }]},
            {"eval_time": "20m", "alertname": "LifecycleNodeRestartStorm", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "cluster": "c1", "node": "n1"},
                "exp_annotations": {
                    "summary": "Many containers are restarting on one node.",
                    "runbook_url": runbook("LifecycleNodeRestartStorm"),
                    "description": "Containers on node n1 restarted 30 times in 10m (threshold 20)."},
            }]},
            {"eval_time": "8m", "alertname": "LifecycleContainerOOMKilled", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "cluster": "c1", "node": "n1",
                               "runtime": "docker", "container": "redis"},
                "exp_annotations": {
                    "summary": "A container was killed for running out of memory.",
                    "runbook_url": runbook("LifecycleContainerOOMKilled"),
                    "description": "redis on node n1 was OOM-killed 1 times in 15m."},
            }]},
            {"eval_time": "4m", "alertname": "LifecycleAgentDown", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "LifecycleAgentDown", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "job": "lifecycle-agent", "cluster": "c1",
                               "instance": "10.0.0.1:9977", "node": "n1"},
                "exp_annotations": {
                    "summary": "A lifecycle agent cannot be scraped.",
                    "runbook_url": runbook("LifecycleAgentDown"),
                    "description": "The agent 10.0.0.1:9977 on node n1 has not answered scrapes "
                                   "for 5m: restarts and OOM kills on that node go unseen."},
            }]},
            {"eval_time": "6m", "alertname": "LifecycleAgentRuntimeDisconnected", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "job": "lifecycle-agent", "cluster": "c1",
                               "instance": "10.0.0.1:9977", "node": "n1", "runtime": "docker"},
                "exp_annotations": {
                    "summary": "A lifecycle agent lost its container runtime.",
                    "runbook_url": runbook("LifecycleAgentRuntimeDisconnected"),
                    "description": "The agent on node n1 has not been connected to its docker "
                                   "runtime for 5m; its /readyz says why."},
            }]},
            {"eval_time": "12m", "alertname": "LifecycleAgentEventsPossiblyMissed", "exp_alerts": [{
                "exp_labels": {"severity": "info", "job": "lifecycle-agent", "cluster": "c1",
                               "instance": "10.0.0.1:9977", "node": "n1", "runtime": "docker"},
                "exp_annotations": {
                    "summary": "A lifecycle agent may have missed runtime events.",
                    "runbook_url": runbook("LifecycleAgentEventsPossiblyMissed"),
                    "description": "The agent on node n1 reconnected to its runtime after a gap "
                                   "longer than the runtime keeps events for; state was "
                                   "reconciled, but individual events of that gap are not in "
                                   "its history."},
            }]},
        ],
    }]
    run_promtool_tests(tmp_path, render(ALL_MONITORING), tests)


def test_promtool_crash_loop_scope_includes_pods_on_request(tmp_path):
    """includePods: Kubernetes pods alert too, a fast loop and the kubelet's steady back-off."""
    job = 'job="lifecycle-agent", instance="10.0.0.1:9977"'
    pod = 'node="n1", runtime="docker", namespace="shop", container="app"'
    values = {"prometheusRule": {"enabled": True, "rules": {"crashLooping": {"includePods": True}}}}
    tests = [{
        "interval": "1m",
        "input_series": [
            {"series": f'container_restarts_total{{{job}, {pod}, pod="web-1"}}', "values": "0+1x40"},
            # The kubelet's steady back-off: one restart every 5 minutes, for two hours.
            {"series": f'container_restarts_total{{{job}, {pod}, pod="web-2"}}', "values": "0+0.2x120"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "node": "n1", "runtime": "docker",
                               "namespace": "shop", "pod": "web-1", "container": "app"},
                "exp_annotations": {
                    "summary": "A container is restarting over and over.",
                    "runbook_url": runbook("LifecycleContainerCrashLooping"),
                    "description": "shop/web-1/app on node n1 restarted 15 times in 30m (threshold 2)."},
            }]},
            # web-1's series ended at minute 40; the slow, steady loop still fires.
            {"eval_time": "119m", "alertname": "LifecycleContainerCrashLooping", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "node": "n1", "runtime": "docker",
                               "namespace": "shop", "pod": "web-2", "container": "app"},
                "exp_annotations": {
                    "summary": "A container is restarting over and over.",
                    "runbook_url": runbook("LifecycleContainerCrashLooping"),
                    "description": "shop/web-2/app on node n1 restarted 6 times in 30m (threshold 2)."}},
            ]},
        ],
    }]
    run_promtool_tests(tmp_path, render(values), tests)


def test_promtool_aggregations_keep_clusters_apart(tmp_path):
    """Two clusters with the same node, pod and container names (one Thanos or Mimir ruler):
    each keeps its own alert, with its cluster label and the configured extra label."""
    job = 'job="lifecycle-agent"'
    values = {"prometheusRule": {"enabled": True, "additionalAggregationLabels": ["tenant"]}}
    series, storm, oom = [], [], []
    for c in ("c1", "c2"):
        where = f'cluster="{c}", tenant="t", node="n1", runtime="docker"'
        plain = f'{where}, namespace="", pod="", container="redis"'
        series += [
            {"series": f'containers_restarts_total{{{job}, instance="a", {where}}}', "values": "0+3x20"},
            {"series": f'container_oom_kills_total{{{job}, instance="a", {plain}}}', "values": "0x5 1x15"},
        ]
        storm.append({"exp_labels": {"severity": "warning", "cluster": c, "tenant": "t", "node": "n1"},
                      "exp_annotations": {
                          "summary": "Many containers are restarting on one node.",
                          "runbook_url": runbook("LifecycleNodeRestartStorm"),
                          "description": "Containers on node n1 restarted 30 times in 10m (threshold 20)."}})
        oom.append({"exp_labels": {"severity": "warning", "cluster": c, "tenant": "t", "node": "n1",
                                   "runtime": "docker", "container": "redis"},
                    "exp_annotations": {
                        "summary": "A container was killed for running out of memory.",
                        "runbook_url": runbook("LifecycleContainerOOMKilled"),
                        "description": "redis on node n1 was OOM-killed 1 times in 15m."}})
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "15m", "alertname": "LifecycleNodeRestartStorm", "exp_alerts": storm},
        {"eval_time": "8m", "alertname": "LifecycleContainerOOMKilled", "exp_alerts": oom},
    ]}]
    run_promtool_tests(tmp_path, render(values), tests)
    # Without a cluster label configured, `by` keeps only the alert's own labels.
    exprs = [r["expr"] for r in render({"prometheusRule": {"enabled": True, "clusterLabel": ""}}
                                       ).one("PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert "sum by (node) (" in " ".join(exprs) and "cluster" not in " ".join(exprs)


def test_every_aggregation_keeps_cluster_and_extra_labels():
    values = {"prometheusRule": {"enabled": True, "additionalAggregationLabels": ["prometheus"]}}
    rules = render(values).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    bys = [m for r in rules for m in re.findall(r"\bby \(([^)]*)\)", r["expr"])]
    assert len(bys) == 3, bys
    for by in bys:
        labels = [x.strip() for x in by.split(",")]
        assert labels[:2] == ["cluster", "prometheus"], by


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_a_runbook_section():
    """runbook_url = prometheusRule.runbookUrl + #<anchor> of a section of docs/runbooks.md,
    and that section says what the alert means, its impact, how to diagnose and fix it."""
    runbooks = (chartlib.REPO / "docs" / "runbooks.md").read_text()
    sections = {}
    current = None
    for line in runbooks.splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    base = values_file(CHART / "values.yaml")["prometheusRule"]["runbookUrl"]
    assert base.endswith("/docs/runbooks.md")
    rules = render({"prometheusRule": {"enabled": True}}).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    assert len(rules) == 6
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        page, anchor = url.split("#", 1)
        assert page == base, url
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/runbooks.md"
        for part in ("Meaning", "Impact", "Diagnosis", "Mitigation"):
            assert f"### {part}" in sections[anchor] or f"**{part}" in sections[anchor], \
                f"{rule['alert']}: its runbook has no {part}"
    # A different base (an internal wiki) is used as given.
    rules = render({"prometheusRule": {"enabled": True, "runbookUrl": "https://wiki.example.com/rb/"}}
                   ).one("PrometheusRule")["spec"]["groups"][0]["rules"]
    assert rules[0]["annotations"]["runbook_url"] == \
        "https://wiki.example.com/rb#lifecyclecontainercrashlooping"


# --- dashboard -----------------------------------------------------------------------------


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def load_board() -> dict:
    return json.loads((CHART / "dashboards" / "lifecycle-agent.json").read_text())


# What Prometheus holds besides the agents' series in a kube-prometheus-stack cluster: the
# dashboard must select none of it, whatever its variables say.
AGENT_JOBS = ["lifecycle-agent", "monitoring/lifecycle-agent", "lifecycle-agent.prod"]
FOREIGN_SERIES = [
    {"__name__": "up", "job": job, "cluster": "c1", "node": "n1"}
    for job in ("kubelet", "node-exporter", "apiserver", "kube-state-metrics", "coredns", "",
                "lifecycle-agentXprod")
] + [
    # Another exporter with a metric of the same name, or an agent of another cluster.
    {"__name__": "container_restarts_total", "job": "other-exporter", "cluster": "c1", "node": "n1"},
    {"__name__": "up", "job": "lifecycle-agent", "cluster": "c2", "node": "n1"},
    {"__name__": "containers_running", "job": "lifecycle-agent", "cluster": "c2", "node": "n1"},
]


def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping of a variable value inside a PromQL regex string: a regex
    metacharacter gets a backslash, written as two inside the PromQL string literal."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def variable_expansions(board: dict) -> list[dict[str, str]]:
    """Each variable at "All" and at one value, the way Grafana interpolates a multi-value
    variable into a Prometheus regex: its allValue if it has one, else all of its values
    joined as (a|b). The hidden cluster variable has no "All": c1, or empty when the series
    carry no cluster label."""
    variables = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "query"}
    assert set(variables) == {"cluster", "job", "node"}, set(variables)
    assert variables["cluster"]["hide"] == 2 and not variables["cluster"]["includeAll"]
    values = {"job": AGENT_JOBS, "node": ["n1", "n2"]}

    def all_of(name: str) -> str:
        v = variables[name]
        assert v["includeAll"] and v["multi"], name
        return v.get("allValue") or "(" + "|".join(grafana_regex_escape(x) for x in values[name]) + ")"

    out = []
    for cluster in ("c1", ""):
        for job in (all_of("job"), AGENT_JOBS[0]):
            for node in (all_of("node"), "n1"):
                out.append({"cluster": cluster, "job": job, "node": node})
    return out


def expand(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    found = []
    for name, body in SELECTOR.findall(expr):
        matchers = MATCHER.findall(body)
        assert "".join(f'{k}{op}"{v}",' for k, op, v in matchers).replace(",", "") == \
            re.sub(r"[\s,]", "", body), f"unparsed matchers in {body!r}"
        found.append((name, matchers))
    # Every metric name in the expression is inside a selector (no bare metric names).
    bare = re.sub(SELECTOR, "", expr)
    bare = re.sub(r"\b(by|on|and|or|unless|sum|max|count|topk|bottomk|increase|rate|ignoring|"
                  r"group_left|without)\b", "", bare)
    assert not re.search(r"\b[a-z_]+_(total|seconds|info|running|stopped|connected|reason|"
                         r"code|status)\b", bare), f"a metric without a selector in {expr}"
    return found


def matches(series: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for k, op, v in matchers:
        v = re.sub(r"\\(.)", r"\1", v)  # the PromQL string literal's escapes
        have = series.get(k, "")
        ok = {"=": have == v, "!=": have != v,
              "=~": re.fullmatch(v, have) is not None,
              "!~": re.fullmatch(v, have) is None}[op]
        if not ok:
            return False
    return True


def agent_metric_names() -> set[str]:
    readme = (chartlib.REPO / "README.md").read_text()
    table = readme.split("\n## Metrics\n", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", table, re.M))


def test_dashboard_selects_only_the_agents_series(tmp_path):
    """Every panel query, with every variable at "All" and at one value, selects the agents'
    series and nothing else Prometheus holds (the old "Agents up" counted every target)."""
    board = load_board()
    known = agent_metric_names() | {"up"}
    exprs = dashboard_exprs(board)
    # The variables' own queries read the agents' metric only.
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            assert v["definition"].startswith("label_values(lifecycle_agent_build_info"), v["name"]
    checked = 0
    for variables in variable_expansions(board):
        for title, raw in exprs:
            expr = expand(raw, variables)
            for name, matchers in selectors(expr):
                assert name in known, f"{title}: {name} is not a metric the agent exports"
                labels = {k for k, _, _ in matchers}
                assert {"cluster", "job"} <= labels, f"{title}: {expr} lacks cluster or job"
                for series in FOREIGN_SERIES:
                    if series["__name__"] == name or name == "up":
                        assert not matches(series, matchers), \
                            f"{title} with {variables} selects {series}: {expr}"
                # ...and it does select the agent's own series of that name.
                own = {"__name__": name, "job": AGENT_JOBS[0], "cluster": variables["cluster"],
                       "node": "n1"}
                assert matches(own, matchers), f"{title} with {variables} misses {own}"
                checked += 1
        # Every expansion parses: promtool checks them as recording rules.
        group = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:q{i}", "expr": expand(e, variables)}
            for i, (_, e) in enumerate(exprs)]}]}
        f = tmp_path / "dashboard-rules.yaml"
        f.write_text(yaml.safe_dump(group))
        out = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    assert checked > 100, checked


def test_dashboard_selector_check_catches_a_select_all_job():
    """The check above fails on the old bug: a custom allValue of ".*" on the job variable."""
    board = load_board()
    [job] = [v for v in board["templating"]["list"] if v["name"] == "job"]
    job["allValue"] = ".*"
    variables = variable_expansions(board)[0]
    expr = expand('sum(up{cluster="$cluster", job=~"$job", node=~"$node"})', variables)
    [(_, matchers)] = selectors(expr)
    assert any(matches(s, matchers) for s in FOREIGN_SERIES if s["__name__"] == "up")


def test_dashboard_configmap_and_panels():
    r = render(ALL_MONITORING)
    cm = [o for o in r.all("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"], "no folder annotation unless dashboards.folder"
    board = json.loads(cm["data"]["lifecycle-agent.json"])
    assert board == load_board()
    titles = {p["title"] for p in board["panels"]}
    for want in ("Restarts by node", "Top restarting containers", "Running containers",
                 "Stopped containers", "OOM kills", "Runtime connected", "Agents up",
                 "Last terminated reason", "Health checks", "Uptime (most recently started first)"):
        assert want in titles, want
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    metrics_used = " ".join(e for _, e in dashboard_exprs(board))
    for m in ("containers_restarts_total", "container_restarts_total", "containers_running",
              "containers_stopped", "container_oom_kills_total",
              "lifecycle_agent_runtime_connected", "up{", "container_last_terminated_reason",
              "container_health_status", "container_time_since_start_seconds",
              "container_uptime_seconds_total"):
        assert m in metrics_used, m
    cm = [o for o in render({"dashboards": {"enabled": True, "folder": "Platform",
                                            "folderAnnotation": "k8s-sidecar-target-directory"}}
                            ).all("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")][0]
    assert cm["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "Platform"}


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


# --- checkov ---------------------------------------------------------------------------------

# checkov's findings on the rendered chart that are accepted, each only where its reason holds
# (a predicate on the rendered DaemonSet). The README's "checkov findings" lists each with the
# reason and how to avoid it; anything else checkov finds fails the test.
def _containers(ds: dict) -> list[dict]:
    pod = ds["spec"]["template"]["spec"]
    return pod["containers"] + pod.get("initContainers", [])


def _runs_as_root(ds: dict) -> bool:
    pod_user = ds["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
    return any(c.get("securityContext", {}).get("runAsUser", pod_user) in (0, None)
               for c in _containers(ds))


def _mounts_docker_socket(ds: dict) -> bool:
    return any(v.get("hostPath", {}).get("path") in ("/var/run/docker.sock", "/run/docker.sock")
               for v in ds["spec"]["template"]["spec"]["volumes"])


def _token_needed(values: dict) -> bool:
    kube = values.get("config", {}).get("kube", "auto")
    return kube not in ("off", False) or values.get("kubeRBACProxy", {}).get("enabled", False) \
        or bool(values.get("rbac", {}).get("extraRules"))


CHECKOV_ACCEPTED = {
    "CKV_K8S_11": lambda ds, v: True,  # CPU limits
    "CKV_K8S_15": lambda ds, v: True,  # image pull policy Always
    "CKV_K8S_43": lambda ds, v: any("@sha256:" not in c["image"] for c in _containers(ds)),
    "CKV_K8S_23": lambda ds, v: _runs_as_root(ds),  # root containers
    "CKV_K8S_40": lambda ds, v: _runs_as_root(ds),  # high UID
    "CKV_K8S_27": lambda ds, v: _mounts_docker_socket(ds),
    "CKV_K8S_38": lambda ds, v: _token_needed(v),  # service-account token
}


def checkov() -> str | None:
    path = os.environ.get("LIFECYCLE_CHECKOV") or str(chartlib.REPO / "target" / "checkov-venv"
                                                      / "bin" / "checkov")
    if Path(path).is_file():
        return path
    if os.environ.get("CI", "") not in ("", "false"):
        pytest.fail(f"checkov is missing at {path}; scripts/test installs it "
                    "(tests/chart/checkov-requirements.txt)")
    print("SKIPPED: checkov is missing (scripts/test installs it into target/checkov-venv)")
    pytest.skip("checkov is missing (scripts/test installs it into target/checkov-venv)")


def test_checkov_finds_nothing_unaccepted(tmp_path):
    """checkov on the rendered chart (defaults and every ci/ values file): every finding is
    one of the accepted ones, where its reason holds; the README lists each."""
    tool = checkov()
    rendered = {}
    for path in SCENARIOS:
        values = scenario_values(path)
        r = render(values)
        name = scenario_id(path).replace(".yaml", "") + ".yaml"
        docs = [{k: x for k, x in o.items() if k != "__template__"} for o in r.objects]
        (tmp_path / name).write_text(yaml.safe_dump_all(docs))
        rendered[name] = (r.one("DaemonSet"), values)
    out = subprocess.run([tool, "-d", str(tmp_path), "--framework", "kubernetes", "--quiet",
                          "--compact", "-o", "json", "--skip-download"],
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for rep in reports for c in rep["results"]["failed_checks"]]
    passed = sum(rep["summary"]["passed"] for rep in reports)
    assert passed > 100, f"checkov checked (almost) nothing: {passed} passed"
    unaccepted = []
    for c in failed:
        ds, values = rendered[Path(c["file_path"]).name]
        ok = CHECKOV_ACCEPTED.get(c["check_id"])
        if not (ok and c["resource"].startswith("DaemonSet.") and ok(ds, values)):
            unaccepted.append(f'{Path(c["file_path"]).name}: {c["check_id"]} {c["check_name"]} '
                              f'({c["resource"]})')
    assert not unaccepted, "\n".join(unaccepted)
    # The fixable ones are fixed where the chart can: no token with Kubernetes off, probes on
    # every container (kube-rbac-proxy and the socket proxy included).
    ids = {(Path(c["file_path"]).name, c["check_id"]) for c in failed}
    assert ("crio-values.yaml", "CKV_K8S_38") not in ids
    assert not {i for i in ids if i[1] in ("CKV_K8S_8", "CKV_K8S_9")}
    # The README names each accepted finding.
    readme = (chartlib.REPO / "README.md").read_text()
    section = readme.split("checkov findings", 1)[1].split("\n## ", 1)[0]
    for check in CHECKOV_ACCEPTED:
        assert f"`{check}`" in section, f"README's checkov findings lack {check}"
