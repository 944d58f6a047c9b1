"""A small kustomize subset for the manifest tests: renders ``k8s/`` overlays without kubectl.

It handles ``resources``, ``namespace``, ``images`` and ``patches`` by path (strategic-merge-like patches
and ``$patch: delete``); a kustomization using any other field fails the build instead of being
half-rendered. The helpers below read the rendered resources.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SECRETS_TEMPLATE = K8S / "base" / "secrets.example.yaml"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "ClusterTriggerAuthentication"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}

# --- a kustomize subset ---------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}


def _group(resource: dict[str, Any]) -> str:
    api = resource["apiVersion"]
    return api.rpartition("/")[0] if "/" in api else ""


def _is_builtin(resource: dict[str, Any]) -> bool:
    group = _group(resource)
    return "." not in group or group.endswith(".k8s.io")


def _rid(resource: dict[str, Any]) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: dict[str, Any], patch: dict[str, Any], builtin: bool) -> None:
    """Strategic-merge-like: maps merge, ``null`` deletes, lists of named maps in core kinds merge by
    ``name`` (containers, env, volumes), every other list is replaced (merge-patch, as for CRs)."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, builtin)
        elif (builtin and isinstance(value, list) and isinstance(base.get(key), list)
              and all(isinstance(i, dict) and "name" in i for i in value + base[key])):
            by_name = {item["name"]: item for item in base[key]}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item, builtin)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def _pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] in WORKLOADS:
        return [resource["spec"]["template"]["spec"]]
    if resource["kind"] == "Pod":
        return [resource["spec"]]
    return []


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for spec in _pod_specs(resource)
            for c in spec.get("initContainers", []) + spec.get("containers", [])]


def _split_image(image: str) -> tuple[str, str]:
    """``registry:5000/name:tag@sha256:...`` -> (``registry:5000/name``, ``:tag@sha256:...``)."""
    ref, at, digest = image.partition("@")
    slash, colon = ref.rfind("/"), ref.rfind(":")
    name, tag = (ref[:colon], ref[colon:]) if colon > slash else (ref, "")
    return name, tag + at + digest


def build(path: Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``path`` (a directory) like ``kustomize build`` would."""
    kfile = path / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    unknown = set(kust) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{kfile}: fields {sorted(unknown)} are not supported by the test's renderer"
    out: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        target = (path / entry).resolve()
        out.extend(build(target) if target.is_dir() else _load_yaml_docs(target))
    for patch_ref in kust.get("patches", []):
        assert set(patch_ref) == {"path"}, f"{kfile}: only `patches: - path: ...` is supported"
        for patch in _load_yaml_docs(path / patch_ref["path"]):
            patch = copy.deepcopy(patch)
            delete = patch.pop("$patch", None) == "delete"
            hits = [r for r in out if r["kind"] == patch["kind"] and _group(r) == _group(patch)
                    and r["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(hits) == 1, f"{kfile}: patch {patch_ref['path']} matches {len(hits)} resources"
            if delete:
                out.remove(hits[0])
            else:
                _merge(hits[0], patch, _is_builtin(hits[0]))
    if "namespace" in kust:
        for resource in out:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        for container in (c for r in out for c in _containers(r)):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                new_tag = f"@{image['digest']}" if "digest" in image else (
                    f":{image['newTag']}" if "newTag" in image else tag)
                container["image"] = image.get("newName", name) + new_tag
    return out


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(name: str) -> list[dict[str, Any]]:
    if name not in _RENDERED:
        _RENDERED[name] = build(K8S / "overlays" / name)
    return copy.deepcopy(_RENDERED[name])


# --- helpers over rendered resources --------------------------------------------------------------

def of_kind(resources: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] in kinds]


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected exactly one {kind}/{name}, found {len(hits)}"
    return hits[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (``matchLabels``/``matchExpressions``, or a bare map as in Services)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def container_env(resources: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The GATEWAY_* environment a container would see, with secrets taken from the template."""
    secrets = secret_template()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "envFrom only from ConfigMaps: secret keys must be listed one by one"
        env.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            env[var["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            cm = one(resources, "ConfigMap", ref["configMapKeyRef"]["name"])
            env[var["name"]] = cm["data"][ref["configMapKeyRef"]["key"]]
        else:
            env[var["name"]] = "pod-0"
    return env


def secret_template() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: dict(doc.get("stringData", {}))
            for doc in _load_yaml_docs(SECRETS_TEMPLATE)}


def writer_shards(workload: dict[str, Any]) -> str:
    args = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "ledger" and "--shards" in args, f"{_rid(workload)}: args {args}"
    return str(args[args.index("--shards") + 1])


def writers(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for w in of_kind(resources, *WORKLOADS)
            if w["metadata"]["labels"].get("app.kubernetes.io/name") == "ledger-writer"]


def go_duration_s(value: str | None) -> float:
    if not value:
        return 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert "".join(n + u for n, u in parts) == value, f"not a Go duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)
