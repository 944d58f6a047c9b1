"""The Kubernetes manifests under ``k8s/`` render, validate and hold the invariants the service relies on.

Each overlay is rendered by the kustomize subset in ``tests/k8s_render.py``; when ``kubectl`` is
installed its ``kubectl kustomize`` output is compared with ours, so the subset cannot drift from real
kustomize. Custom resources are validated against the operators' upstream CRDs, read from the shared
data laid beside the checkout (``../shared/k8s-crds``; never copied into the project). Core resources
are checked for what protects money and uptime: one active ledger writer per shard, probes and
resources on every container, a drain that fits the grace period, settings that
``core.settings.Settings`` accepts, JetStream streams identical to what the processes create.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

from core.settings import Settings, SettingsError  # noqa: E402
from ledger.sharding import parse_shard_range  # noqa: E402
from tests.k8s_render import (  # noqa: E402
    CLUSTER_SCOPED,
    WORKLOADS,
    _containers,
    _group,
    _is_builtin,
    _load_yaml_docs,
    _pod_specs,
    _rid,
    _split_image,
    container_env,
    go_duration_s,
    of_kind,
    one,
    pod_labels,
    render,
    secret_template,
    selects,
    writer_shards,
    writers,
)

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "k8s-crds"
OVERLAYS = ("dev", "prod")
SECRETS_TEMPLATE = K8S / "base" / "secrets.example.yaml"

ALLOWED_ENV = {"GATEWAY_" + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "api_key_roles"}
#: custom resources whose CRD is not among the shared CRDs; checked by hand below
NO_OFFLINE_CRD = {("barmancloud.cnpg.io", "ObjectStore")}
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)


# --- the renderer itself --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: no reference render")
def test_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = {f"{_group(d)}/{_rid(d)}": d for d in yaml.safe_load_all(proc.stdout) if d}
    ours = {f"{_group(d)}/{_rid(d)}": d for d in render(overlay)}
    assert sorted(ours) == sorted(theirs)
    for key, doc in ours.items():
        assert doc == theirs[key], f"{overlay}: {key} differs from kubectl kustomize"


def test_secret_template_is_not_rendered_and_holds_only_placeholders() -> None:
    for kfile in K8S.rglob("kustomization.yaml"):
        kust = yaml.safe_load(kfile.read_text())
        listed = kust.get("resources", []) + [p["path"] for p in kust.get("patches", [])]
        assert SECRETS_TEMPLATE.name not in {Path(e).name for e in listed}, f"{kfile} includes the template"
    for name, data in secret_template().items():
        assert data, f"Secret {name} in the template lists no keys"
        for key, value in data.items():
            assert "CHANGE_ME" in value or "CHANGE-ME" in value, f"{name}.{key} looks like a real value"


def test_providers_template_is_what_the_gateway_loads(tmp_path: Path) -> None:
    """The providers Secret is mounted as a directory: providers.toml plus the files it names."""
    providers = pytest.importorskip("gateway.providers")
    files = secret_template()["gateway-providers"]
    for key, value in files.items():
        (tmp_path / key).write_text(value)
    gw = one(render("prod"), "Deployment", "gateway")
    container = gw["spec"]["template"]["spec"]["containers"][0]
    path = Path(container_env(render("prod"), container)["GATEWAY_PROVIDERS_FILE"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    mounted = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "gateway-providers"]
    assert mounted and Path(mounts[mounted[0]]) == path.parent, "GATEWAY_PROVIDERS_FILE is not in the mount"
    loaded = providers.load_providers(tmp_path / path.name, environ={})
    assert loaded, "the template must show at least one provider"


# --- every resource -------------------------------------------------------------------------------

def test_resources_are_unique_namespaced_and_labelled(rendered: list[dict[str, Any]]) -> None:
    seen = set()
    namespaces = {r["metadata"]["name"] for r in of_kind(rendered, "Namespace")}
    assert namespaces == {"game-gateway"}
    for r in rendered:
        key = (_group(r), r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if r["kind"] not in CLUSTER_SCOPED:
            assert r["metadata"].get("namespace") in namespaces, f"{_rid(r)} has no namespace"
        assert r["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "game-gateway", _rid(r)


def test_no_secret_values_in_the_build(rendered: list[dict[str, Any]]) -> None:
    assert not of_kind(rendered, "Secret"), "Secrets are created out of band, never from the repository"
    template = secret_template()
    refs: list[tuple[str, str | None]] = []
    for r in rendered:
        for c in _containers(r):
            refs += [(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
                     for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})]
        for spec in _pod_specs(r):
            refs += [(v["secret"]["secretName"], None) for v in spec.get("volumes", []) if "secret" in v]
        if r["kind"] == "ObjectStore":
            creds = r["spec"]["configuration"]["s3Credentials"]
            refs += [(ref["name"], ref["key"]) for ref in creds.values() if isinstance(ref, dict)]
    assert refs
    for name, key in refs:
        assert name in template, f"Secret {name} is referenced but missing from {SECRETS_TEMPLATE.name}"
        assert key is None or key in template[name], f"key {key} of Secret {name} missing from the template"


# --- custom resources against their CRDs ----------------------------------------------------------

@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    if not CRD_DIR.is_dir():
        pytest.skip(f"CRDs for offline validation not found at {CRD_DIR}")
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in _load_yaml_docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (spec["group"], spec["names"]["kind"], version["name"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    assert schemas, f"no CRDs in {CRD_DIR}"
    return schemas


def _check_objectstore(resource: dict[str, Any]) -> list[str]:
    """Barman Cloud plugin ObjectStore (no CRD kept offline): the fields its CRD requires."""
    spec = resource.get("spec", {})
    errors = []
    if resource["apiVersion"] != "barmancloud.cnpg.io/v1":
        errors.append(f"apiVersion {resource['apiVersion']}")
    if not spec.get("configuration", {}).get("destinationPath"):
        errors.append("spec.configuration.destinationPath is required")
    if "serverName" in spec.get("configuration", {}):
        errors.append("serverName belongs in the Cluster's plugin parameters")
    if not re.fullmatch(r"[1-9][0-9]*[dwm]", spec.get("retentionPolicy", "")):
        errors.append("spec.retentionPolicy must look like 30d")
    return errors


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Fields the API server would silently prune: structural schemas drop keys they do not declare,
    so a misspelt field would never reach the operator (JSON Schema alone accepts it)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from _unknown_fields(item, props[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                yield from _unknown_fields(item, extra, f"{path}/{key}")
            elif props is not None:
                yield f"{path}/{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}/{i}")


def test_custom_resources_match_crds(rendered: list[dict[str, Any]],
                                     crd_schemas: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    problems = []
    checked = 0
    for r in rendered:
        if _is_builtin(r):
            continue
        group, version = _group(r), r["apiVersion"].rpartition("/")[2]
        if (group, r["kind"]) in NO_OFFLINE_CRD:
            problems += [f"{_rid(r)}: {e}" for e in _check_objectstore(r)]
            continue
        schema = crd_schemas.get((group, r["kind"], version))
        if schema is None:
            problems.append(f"{_rid(r)}: no served CRD version for {r['apiVersion']} {r['kind']}")
            continue
        validator = jsonschema.Draft7Validator(schema)
        for err in validator.iter_errors(r):
            where = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{_rid(r)} at {where}: {err.message}")
        spec_schema = schema.get("properties", {}).get("spec", {})
        problems += [f"{_rid(r)}: unknown field {f} (pruned by the API server)"
                     for f in _unknown_fields(r.get("spec", {}), spec_schema, "spec")]
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 8


# --- workloads ------------------------------------------------------------------------------------

def test_workload_selectors_match_their_pods_and_nothing_else(rendered: list[dict[str, Any]]) -> None:
    workloads = of_kind(rendered, *WORKLOADS)
    assert workloads
    for w in workloads:
        assert selects(w["spec"]["selector"], pod_labels(w)), f"{_rid(w)} does not select its own pods"
        for other in workloads:
            if other is not w:
                assert not selects(w["spec"]["selector"], pod_labels(other)), \
                    f"{_rid(w)} would adopt the pods of {_rid(other)}"


def test_every_container_has_resources_probes_and_a_locked_down_context(
        rendered: list[dict[str, Any]]) -> None:
    for w in of_kind(rendered, *WORKLOADS):
        spec = w["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) > 0, _rid(w)
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", _rid(w)
        assert spec.get("automountServiceAccountToken") is False, f"{_rid(w)} needs no API token"
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{_rid(w)}/{c['name']}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), f"{where}: {part}"
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            _name, tag = _split_image(c["image"])
            assert tag and tag != ":latest", f"{where}: image {c['image']} needs a pinned tag"
            writable = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
            assert "/tmp" in writable, f"{where}: read-only root needs a writable /tmp"
        for c in spec["containers"]:
            where = f"{_rid(w)}/{c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
            port_names = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in
                                                                          c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c and "httpGet" in c[probe]:
                    assert c[probe]["httpGet"]["port"] in port_names, f"{where}: {probe} port"
            # /healthz never touches a dependency (a slow database must not get pods killed)
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where


def test_env_is_only_known_gateway_settings(rendered: list[dict[str, Any]]) -> None:
    as_env = {source["configMapRef"]["name"] for w in of_kind(rendered, *WORKLOADS) for c in _containers(w)
              for source in c.get("envFrom", []) if "configMapRef" in source}
    assert as_env, "no ConfigMap is a container's environment"
    for cm in of_kind(rendered, "ConfigMap"):
        if cm["metadata"]["name"] not in as_env:  # e.g. the Grafana dashboard: data, not settings
            continue
        unknown = set(cm["data"]) - ALLOWED_ENV
        assert not unknown, f"ConfigMap {cm['metadata']['name']}: unknown settings {sorted(unknown)}"
    for w in of_kind(rendered, *WORKLOADS):
        spec = w["spec"]["template"]["spec"]
        # Service links would add GATEWAY_PORT, GATEWAY_SERVICE_HOST, ...: unknown keys, refused at start
        assert spec.get("enableServiceLinks") is False, f"{_rid(w)} must disable service links"
        for c in spec.get("initContainers", []) + spec["containers"]:
            names = {v["name"] for v in c.get("env", [])}
            assert names <= ALLOWED_ENV, f"{_rid(w)}/{c['name']}: unknown env {sorted(names - ALLOWED_ENV)}"
            for source in c.get("envFrom", []):
                assert set(source) == {"configMapRef"}, f"{_rid(w)}: envFrom only from ConfigMaps"
                one(rendered, "ConfigMap", source["configMapRef"]["name"])


def test_settings_accept_every_container_environment(rendered: list[dict[str, Any]]) -> None:
    for w in of_kind(rendered, *WORKLOADS):
        for c in _containers(w):
            env = container_env(rendered, c)
            try:
                settings = Settings.from_env(env)
            except SettingsError as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"{_rid(w)}/{c['name']}: {exc}")
            assert settings.http_host not in ("127.0.0.1", "localhost", "::1"), \
                f"{_rid(w)}: listening on loopback, probes and the Service cannot reach it"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if c in w["spec"]["template"]["spec"]["containers"]:
                assert ports.get("http") == settings.http_port, f"{_rid(w)}: containerPort != GATEWAY_HTTP_PORT"


def test_gateway_drains_within_the_grace_period(rendered: list[dict[str, Any]]) -> None:
    gw = one(rendered, "Deployment", "gateway")
    spec = gw["spec"]["template"]["spec"]
    container = spec["containers"][0]
    settings = Settings.from_env(container_env(rendered, container))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3, "give endpoint controllers time to stop routing before SIGTERM"
    # aiohttp waits shutdown_drain_s for in-flight requests, then the ledger client drains for as long
    # again (gateway/cli.py, gateway/app.py); 5 s more to close connections
    need = pre_stop + 2 * settings.shutdown_drain_s + 5
    assert spec["terminationGracePeriodSeconds"] >= need, \
        f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} < {need}: the drain gets cut"
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_targets_a_port_of_the_pods_it_selects(rendered: list[dict[str, Any]]) -> None:
    for svc in of_kind(rendered, "Service"):
        targets = [w for w in of_kind(rendered, *WORKLOADS) if selects(svc["spec"]["selector"], pod_labels(w))]
        assert targets, f"Service {svc['metadata']['name']} selects no pods"
        for w in targets:
            ports = [p for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
            known = {p.get("name") for p in ports} | {p["containerPort"] for p in ports}
            for port in svc["spec"]["ports"]:
                assert port.get("targetPort", port["port"]) in known, \
                    f"Service {svc['metadata']['name']} port {port['name']} misses {_rid(w)}"


def test_pdb_protects_the_gateway_without_blocking_drains(rendered: list[dict[str, Any]]) -> None:
    pdb = one(rendered, "PodDisruptionBudget", "gateway")
    gw = one(rendered, "Deployment", "gateway")
    assert selects(pdb["spec"]["selector"], pod_labels(gw))
    assert "minAvailable" not in pdb["spec"], "minAvailable can block every drain at minimum scale"
    assert pdb["spec"]["maxUnavailable"] not in (0, "0%")


def test_gateway_is_scaled_by_keda_only(rendered: list[dict[str, Any]]) -> None:
    so = one(rendered, "ScaledObject", "gateway")
    target = one(rendered, so["spec"]["scaleTargetRef"].get("kind", "Deployment"), so["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], "the ScaledObject owns replicas; a fixed count fights it"
    assert 1 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
    types = {t["type"] for t in so["spec"]["triggers"]}
    assert types & {"cpu", "prometheus"}
    if "cpu" in types:
        assert all("cpu" in c["resources"]["requests"] for c in _containers(target))
    namespace = target["metadata"]["namespace"]
    for trig in so["spec"]["triggers"]:
        if trig["type"] == "prometheus":
            assert f'namespace="{namespace}"' in trig["metadata"]["query"]
            assert "ledger" not in trig["metadata"]["query"], "never scale the edge on ledger lag"


def test_prod_runs_more_than_dev() -> None:
    dev, prod = render("dev"), render("prod")
    assert (one(prod, "ScaledObject", "gateway")["spec"]["minReplicaCount"]
            > one(dev, "ScaledObject", "gateway")["spec"]["minReplicaCount"])
    assert len(of_kind(prod, "Cluster")) > len(of_kind(dev, "Cluster"))
    assert all(s["spec"]["replicas"] >= 3 for s in of_kind(prod, "Stream"))
    assert all(c["spec"]["instances"] >= 3 for c in of_kind(prod, "Cluster"))
    assert of_kind(prod, "ScheduledBackup")


# --- the ledger -----------------------------------------------------------------------------------

def test_exactly_one_active_writer_per_shard(rendered: list[dict[str, Any]]) -> None:
    config = one(rendered, "ConfigMap", "gateway-config")["data"]
    total = int(config["GATEWAY_SHARDS"])
    owner: dict[int, str] = {}
    for w in writers(rendered):
        assert w["kind"] == "StatefulSet", f"{_rid(w)}: a StatefulSet never runs two pods of one identity"
        assert w["spec"]["replicas"] == 1, f"{_rid(w)}: one active writer per shard group"
        spec = writer_shards(w)
        assert w["metadata"]["labels"]["game-gateway/shards"] == spec == pod_labels(w)["game-gateway/shards"], \
            f"{_rid(w)}: --shards {spec} and its game-gateway/shards labels disagree"
        for shard in parse_shard_range(spec, total):
            assert shard not in owner, f"shard {shard} consumed by {owner[shard]} and {_rid(w)}"
            owner[shard] = _rid(w)
        cluster = one(rendered, "Cluster", w["metadata"]["annotations"]["game-gateway/pg-cluster"])
        assert cluster["metadata"]["labels"]["game-gateway/shards"] == spec, \
            f"{_rid(w)} and {_rid(cluster)} disagree on the shard group"
    assert sorted(owner) == list(range(total)), f"shards without a writer: {set(range(total)) - set(owner)}"


def test_postgres_clusters_are_durable_and_backed_up(rendered: list[dict[str, Any]]) -> None:
    clusters = of_kind(rendered, "Cluster")
    assert clusters
    stores = {s["metadata"]["name"] for s in of_kind(rendered, "ObjectStore")}
    archived = set()
    for c in clusters:
        spec = c["spec"]
        sync = spec.get("postgresql", {}).get("synchronous")
        if sync:
            assert spec["instances"] > sync["number"], f"{_rid(c)}: writes would block forever"
        elif spec["instances"] > 1:
            pytest.fail(f"{_rid(c)}: replicas without synchronous replication can lose committed batches")
        assert spec.get("enableSuperuserAccess") is not True
        for plugin in spec.get("plugins", []):
            if plugin["name"] == BARMAN_PLUGIN:
                assert plugin["parameters"]["barmanObjectName"] in stores, f"{_rid(c)}: unknown ObjectStore"
                if plugin.get("isWALArchiver"):
                    archived.add(c["metadata"]["name"])
    for backup in of_kind(rendered, "ScheduledBackup"):
        cluster = backup["spec"]["cluster"]["name"]
        one(rendered, "Cluster", cluster)
        if backup["spec"].get("method") == "plugin":
            assert cluster in archived, f"{_rid(backup)}: {cluster} has no Barman Cloud plugin"
            assert backup["spec"]["pluginConfiguration"]["name"] == BARMAN_PLUGIN
        assert len(backup["spec"]["schedule"].split()) == 6, "CNPG schedules have a seconds field"
    assert {b["spec"]["cluster"]["name"] for b in of_kind(rendered, "ScheduledBackup")} == archived


def test_postgres_connections_fit_max_connections(rendered: list[dict[str, Any]]) -> None:
    """No pooler, so max_connections must hold every gateway pod's pools at full scale-out."""
    gw = one(rendered, "Deployment", "gateway")
    settings = Settings.from_env(container_env(rendered, gw["spec"]["template"]["spec"]["containers"][0]))
    per_pod_per_shard = settings.writer_pool_size + 2  # ledger.sharding.pools_for in gateway/app.py
    pods = one(rendered, "ScaledObject", "gateway")["spec"]["maxReplicaCount"]
    for c in of_kind(rendered, "Cluster"):
        shards = len(parse_shard_range(c["metadata"]["labels"]["game-gateway/shards"], settings.shards))
        # writer lock/apply connection + outbox relay + migration, and 20 for superuser, replication, probes
        need = pods * per_pod_per_shard * shards + 3 * shards + 20
        have = int(c["spec"]["postgresql"]["parameters"]["max_connections"])
        assert have >= need, f"{_rid(c)}: max_connections {have} < {need} at {pods} gateway pods"


def test_no_transaction_pooling_in_front_of_the_ledger(rendered: list[dict[str, Any]]) -> None:
    """Writers and migrations take session-level advisory locks; transaction pooling breaks them."""
    for pooler in of_kind(rendered, "Pooler"):
        assert pooler["spec"]["pgbouncer"].get("poolMode", "session") == "session", _rid(pooler)


class _CapturingJetStream:
    def __init__(self) -> None:
        self.configs: list[Any] = []

    async def add_stream(self, config: Any) -> None:
        self.configs.append(config)

    async def update_stream(self, config: Any) -> None:  # pragma: no cover - add never fails here
        self.configs.append(config)


def test_nack_streams_equal_what_the_processes_create(rendered: list[dict[str, Any]]) -> None:
    transport = pytest.importorskip("ledger.transport")
    settings = Settings.from_env(one(rendered, "ConfigMap", "gateway-config")["data"])
    js = _CapturingJetStream()
    asyncio.run(transport.ensure_streams(js, settings))
    streams = {s["spec"]["name"]: s["spec"] for s in of_kind(rendered, "Stream")}
    assert sorted(streams) == sorted(c.name for c in js.configs)

    def val(x: Any, default: Any) -> Any:
        return default if x is None else getattr(x, "value", x)

    for cfg in js.configs:
        spec = streams[cfg.name]
        want = {
            "subjects": (list(cfg.subjects), spec.get("subjects")),
            "retention": (val(cfg.retention, "limits"), spec.get("retention", "limits")),
            "storage": (val(cfg.storage, "file"), spec.get("storage", "memory")),
            "discard": (val(cfg.discard, "old"), spec.get("discard", "old")),
            "duplicateWindow": (float(cfg.duplicate_window or 120), go_duration_s(spec.get("duplicateWindow"))
                                or 120.0),
            "maxAge": (float(cfg.max_age or 0), go_duration_s(spec.get("maxAge"))),
            "maxMsgs": (val(cfg.max_msgs, -1), spec.get("maxMsgs", -1)),
            "maxBytes": (val(cfg.max_bytes, -1), spec.get("maxBytes", -1)),
            "maxMsgSize": (val(cfg.max_msg_size, -1), spec.get("maxMsgSize", -1)),
            "maxConsumers": (val(cfg.max_consumers, -1), spec.get("maxConsumers", -1)),
            "denyDelete": (bool(cfg.deny_delete), spec.get("denyDelete", False)),
            "denyPurge": (bool(cfg.deny_purge), spec.get("denyPurge", False)),
        }
        if cfg.num_replicas is not None:
            want["replicas"] = (cfg.num_replicas, spec.get("replicas", 1))
        diff = {k: v for k, v in want.items() if v[0] != v[1]}
        assert not diff, f"stream {cfg.name}: (process, NACK) disagree on {diff}"


# --- monitoring -----------------------------------------------------------------------------------

def _named(resources: list[dict[str, Any]], label: str = "app.kubernetes.io/name") -> set[str]:
    return {r["metadata"].get("labels", {}).get(label, "") for r in resources}


def test_monitors_scrape_existing_ports(rendered: list[dict[str, Any]]) -> None:
    for sm in of_kind(rendered, "ServiceMonitor"):
        services = [s for s in of_kind(rendered, "Service") if selects(sm["spec"]["selector"],
                                                                       s["metadata"]["labels"])]
        assert services, f"{_rid(sm)} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services), \
                f"{_rid(sm)}: port {ep['port']} is not a named port of the Services it selects"
    for pm in of_kind(rendered, "PodMonitor"):
        pods = [w for w in of_kind(rendered, *WORKLOADS) if selects(pm["spec"]["selector"], pod_labels(w))]
        if not pods:
            # operator-made pods (CloudNativePG instances) are not in the build; they must be named
            assert "cnpg.io/podRole" in pm["spec"]["selector"].get("matchLabels", {}), _rid(pm)
            continue
        for ep in pm["spec"]["podMetricsEndpoints"]:
            for w in pods:
                names = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
                assert ep["port"] in names, f"{_rid(pm)}: port {ep['port']} not on {_rid(w)}"


def _alerts(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for pr in of_kind(rendered, "PrometheusRule") for group in pr["spec"]["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_alerts_cover_the_failure_modes(rendered: list[dict[str, Any]]) -> None:
    alerts = _alerts(rendered)
    exprs = " ".join(a["expr"] for a in alerts)
    for needle, why in [("gateway_ledger_timeouts_total", "ledger lag"),
                        ("gateway_ledger_queue_depth", "ledger backlog"), ("gateway_ledger_shed_total", "shedding"),
                        ("gateway_degradation_mode", "degradation mode"), ('status=~"5..', "5xx rate"),
                        ("histogram_quantile(0.95", "p95 latency"), ("> 0.150", "the 150 ms SLO"),
                        ('up{job="ledger-writer"}', "writer down")]:
        assert needle in exprs, f"no alert on {why}"
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        assert a["labels"]["severity"] in {"warning", "critical"}, a["alert"]
        assert a.get("for"), f"{a['alert']}: alerts without `for` page on one bad scrape"
        assert a["annotations"].get("summary") and a["annotations"].get("description"), a["alert"]
        assert a["expr"].count("(") == a["expr"].count(")"), a["alert"]
        assert a["expr"].count("{") == a["expr"].count("}"), a["alert"]


def test_job_labels_in_queries_exist(rendered: list[dict[str, Any]]) -> None:
    """Monitors set jobLabel app.kubernetes.io/name, so job="x" must be such a name of a monitored object."""
    jobs: set[str] = set()
    for mon in of_kind(rendered, "ServiceMonitor", "PodMonitor"):
        if mon["spec"].get("jobLabel"):
            assert mon["spec"]["jobLabel"] == "app.kubernetes.io/name"
            jobs |= _named([mon])
    queries = [a["expr"] for a in _alerts(rendered)]
    queries += [t["metadata"]["query"] for so in of_kind(rendered, "ScaledObject")
                for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    used = {m for q in queries for m in re.findall(r'job="([^"]+)"', q)}
    assert used and used <= jobs, f"queries use jobs {sorted(used - jobs)} that no monitor produces"


def _metric_sources() -> Iterator[str]:
    for package in ("gateway", "ledger"):
        for path in (REPO / package).rglob("*.py"):
            yield path.read_text(errors="replace")


def test_alerted_metrics_are_exported_by_the_code() -> None:
    sources = "\n".join(_metric_sources())
    if "gateway_" not in sources or "/metrics" not in sources:
        pytest.skip("the /metrics endpoint is not implemented yet; nothing to compare the rules with")
    prod = render("prod")
    queries = [a["expr"] for a in _alerts(prod)] + [
        t["metadata"]["query"] for so in of_kind(prod, "ScaledObject") for t in so["spec"]["triggers"]
        if t["type"] == "prometheus"]
    used = {m for q in queries for m in re.findall(r"\b(gateway_[a-z_]+)", q)}
    assert used
    missing = set()
    for metric in used:
        base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
        if base not in sources:
            missing.add(metric)
    assert not missing, f"rules and KEDA use metrics the code does not export: {sorted(missing)}"
