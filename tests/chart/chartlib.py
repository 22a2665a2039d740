"""Offline chart tooling for the tests: render with Helm's own SDK, parse strictly, validate
every object against strict schemas.

No helm binary and no API server exist on the test machines: `helm-python-sdk` bundles the Helm
SDK, and the schemas are vendored under `tests/chart/k8s/` (see its README.md: where they come
from, how to refresh them) plus `kubernetes-validate` for the core kinds that set lacks
(NetworkPolicy).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lifecycle-agent"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "lifecycle-agent"
NAMESPACE = "monitoring"
KUBE_VERSION = "1.33.0"


def k8s_dir() -> Path:
    """The vendored strict schemas and CRDs (inside the repository: a bare clone passes)."""
    return Path(__file__).resolve().parent / "k8s"


class DuplicateKeyError(yaml.YAMLError):
    pass


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently,
    the API server would reject or silently merge them)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise DuplicateKeyError(f"duplicate key {key!r} at {key_node.start_mark}")
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)


def load_all(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]


def values_file(path: Path) -> dict[str, Any]:
    data = load_yaml(path.read_text())
    return data or {}


class Rendered:
    """One rendering: objects by kind, and NOTES.txt."""

    def __init__(self, manifests: dict[str, str]):
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in load_all(text):
                assert isinstance(doc, dict), f"{path}: not an object: {doc!r}"
                doc["__template__"] = path
                self.objects.append(doc)

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}, got {len(found)}"
        return found[0] if found else None


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        return Rendered(chart.render(values or {}, name=name, namespace=namespace, is_install=True))


def validate_values(values: dict[str, Any]) -> None:
    """Raises helm.HelmValuesError when values.schema.json rejects `values`."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                     kube_version=f"v{KUBE_VERSION}")


# Kind -> strict schema file under k8s/schemas/.
CORE_SCHEMAS = {
    ("apps/v1", "DaemonSet"): "v1.33.0-standalone-strict/daemonset-apps-v1.json",
    ("v1", "Service"): "v1.33.0-standalone-strict/service-v1.json",
    ("v1", "ServiceAccount"): "v1.33.0-standalone-strict/serviceaccount-v1.json",
    ("v1", "ConfigMap"): "v1.33.0-standalone-strict/configmap-v1.json",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "v1.33.0-standalone-strict/clusterrole-rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"):
        "v1.33.0-standalone-strict/clusterrolebinding-rbac-v1.json",
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "monitoring.coreos.com/servicemonitor_v1.json",
        "v0.88.1-minified/monitoring.coreos.com_servicemonitors.yaml"),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "monitoring.coreos.com/podmonitor_v1.json",
        "v0.88.1-minified/monitoring.coreos.com_podmonitors.yaml"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "monitoring.coreos.com/prometheusrule_v1.json",
        "v0.88.1-minified/monitoring.coreos.com_prometheusrules.yaml"),
}
# Kinds of other APIs with a strict JSON schema of their own.
OTHER_SCHEMAS = {
    ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler"):
        "autoscaling.k8s.io/verticalpodautoscaler_v1.json",
}
# Core kinds the vendored set has no schema for: kubernetes-validate's strict schemas.
KUBERNETES_VALIDATE_ONLY = {("networking.k8s.io/v1", "NetworkPolicy")}

_cache: dict[str, Any] = {}


def _json_schema(rel: str) -> dict[str, Any]:
    if rel not in _cache:
        _cache[rel] = json.loads((k8s_dir() / "schemas" / rel).read_text())
    return _cache[rel]


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema made strict: objects with properties admit nothing else."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()
               if not k.startswith("x-kubernetes-")}
        if schema.get("type") == "object" and "properties" in schema \
                and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(rel: str, version: str = "v1") -> dict[str, Any]:
    key = f"crd:{rel}"
    if key not in _cache:
        crd = load_yaml((k8s_dir() / "crds" / rel).read_text())
        [ver] = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = _strict(ver["schema"]["openAPIV3Schema"])
        # metadata is the API server's ObjectMeta; the CRD leaves it open.
        schema["properties"]["metadata"] = {"type": "object"}
        _cache[key] = schema
    return _cache[key]


def _check(schema: dict[str, Any], obj: dict[str, Any], what: str) -> None:
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{what}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:10])


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Validates one rendered object against every schema that covers its kind; returns the
    schemas used. An object of a kind without a schema is a failure, not a pass."""
    obj = {k: v for k, v in obj.items() if k != "__template__"}
    key = (obj.get("apiVersion"), obj.get("kind"))
    what = f"{key[1]} {obj.get('metadata', {}).get('name')}"
    used = []
    if key in CORE_SCHEMAS:
        _check(_json_schema(CORE_SCHEMAS[key]), obj, f"{what} ({CORE_SCHEMAS[key]})")
        used.append(CORE_SCHEMAS[key])
    if key in OTHER_SCHEMAS:
        _check(_json_schema(OTHER_SCHEMAS[key]), obj, f"{what} ({OTHER_SCHEMAS[key]})")
        used.append(OTHER_SCHEMAS[key])
    if key in CRD_SCHEMAS:
        strict_json, newer_crd = CRD_SCHEMAS[key]
        _check(_json_schema(strict_json), obj, f"{what} ({strict_json})")
        _check(_crd_schema(newer_crd), obj, f"{what} ({newer_crd})")
        used += [strict_json, newer_crd]
    if key in CORE_SCHEMAS or key in KUBERNETES_VALIDATE_ONLY:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{what} (kubernetes-validate {KUBE_VERSION} strict): {e.message}")
        used.append(f"kubernetes-validate {KUBE_VERSION} strict")
    assert used, f"{what}: no schema covers {key}; add one before rendering this kind"
    return used


def schema_files() -> list[Path]:
    return [k8s_dir() / "schemas" / rel
            for rel in list(CORE_SCHEMAS.values()) + list(OTHER_SCHEMAS.values())] + [
        k8s_dir() / d / rel for pair in CRD_SCHEMAS.values()
        for d, rel in zip(("schemas", "crds"), pair)]


def verify_checksums() -> None:
    """The schema files are the ones `SHA256SUMS` names (not edited to make a chart pass), and
    every vendored file is covered by it."""
    sums = {}
    for line in (k8s_dir() / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.strip()] = digest
    for f in schema_files():
        rel = f.relative_to(k8s_dir()).as_posix()
        assert rel in sums, f"{rel} is not in SHA256SUMS"
    vendored = sorted(p for p in k8s_dir().rglob("*")
                      if p.is_file() and p.name not in ("SHA256SUMS", "README.md"))
    assert {p.relative_to(k8s_dir()).as_posix() for p in vendored} == set(sums), \
        "SHA256SUMS and the vendored files differ"
    for f in vendored:
        rel = f.relative_to(k8s_dir()).as_posix()
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sums[rel], f"{rel}: checksum mismatch"


def prometheus_rule_groups(rendered: Rendered) -> dict[str, Any]:
    """The PrometheusRule's spec as a Prometheus rule file."""
    return {"groups": rendered.one("PrometheusRule")["spec"]["groups"]}


def agent_env_names() -> set[str]:
    """Environment variables of `lifecycle-agent run`: the env column of the README's
    Configuration table (the agent's documented interface)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.replace("\\|", "/").strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`--"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]))
    assert "NODE_NAME" in names and "LIFECYCLE_RUNTIME" in names, \
        "README's Configuration table not found or changed shape"
    return names
