"""/metrics of the gateway and the writers: prometheus-client exposition, summed over ``serve`` workers,
and every metric an alert rule or a dashboard panel names is exported."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.records import ProviderConfig
from core.settings import Settings
from gateway import embedded
from tests.support import DEMO_SECRET, Api


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= ls)


async def _scrape(base: str) -> str:
    # a connection of its own, so SO_REUSEPORT may hand it to any worker
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


@pytest.mark.slow
async def test_serve_workers_metrics_sum_every_worker(writers: Settings, tmp_path: Path) -> None:
    """40 requests on 40 connections spread over two workers; every scrape, whichever worker answers it,
    counts all 40 (one worker's own count would be short of 40 unless every connection went to it)."""
    port = embedded.free_port()
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[[providers]]\nid = "demo"\nprotocol = "native"\nsecret = "{DEMO_SECRET}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    env["TMPDIR"] = str(tmp_path)  # where serve creates its multi-process folder
    env.update(writers.replace(http_port=port, providers_file=str(providers), log_level="WARNING").env())
    proc = _spawn(["serve", "--workers", "2"], env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # both workers up: readiness answered (connections land on either)
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                oks = 0
                for _ in range(6):
                    async with aiohttp.ClientSession() as http, http.get(base + "/readyz") as resp:
                        oks += resp.status == 200
                if oks == 6:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            await asyncio.sleep(0.2)
        n = 40
        for _ in range(n):
            async with aiohttp.ClientSession() as http, http.get(base + "/healthz") as resp:
                assert resp.status == 200
        counts: list[float] = []
        deadline = time.monotonic() + 20
        while True:  # the other worker flushes its tallies within a second
            text = await _scrape(base)
            counts.append(value(text, "gateway_requests_total", route="/healthz", status="200"))
            if counts[-1] == n:
                break
            assert counts[-1] < n and time.monotonic() < deadline, counts
            await asyncio.sleep(0.2)
        for _ in range(8):
            text = await _scrape(base)
            assert value(text, "gateway_requests_total", route="/healthz", status="200") == n
            assert value(text, "gateway_request_duration_seconds_count", route="/healthz") == n
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    assert not _leftovers(tmp_path), "the multi-process folder outlived serve"


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _leftovers(folder: Path) -> list[Path]:
    return list(folder.glob("gateway-metrics-*"))


# --- every metric the alert rules and the dashboard name is exported ---------------------------------------

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "k8s" / "dashboards" / "game-gateway.json"


def _queries() -> list[str]:
    import yaml

    rules = yaml.safe_load((REPO / "k8s" / "base" / "prometheusrule.yaml").read_text())
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    return exprs + [t["expr"] for p in dash["panels"] for t in p["targets"]]


def _named_metrics(queries: list[str]) -> set[str]:
    return {m for q in queries for m in re.findall(r"\b((?:gateway|ledger)_[a-z_]+)\b", q)}


def test_dashboard_configmap_embeds_the_dashboard_verbatim() -> None:
    import yaml

    cm = yaml.safe_load((REPO / "k8s" / "base" / "grafana-dashboard.yaml").read_text())
    assert json.loads(cm["data"]["game-gateway.json"]) == json.loads(DASHBOARD.read_text())
    assert "grafana-dashboard.yaml" in (REPO / "k8s" / "base" / "kustomization.yaml").read_text()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), p["title"]


@pytest.fixture
async def own_db(pg_server_dsn: str, settings: Settings) -> AsyncIterator[Settings]:
    """A database and NATS namespace of this test's own: its writers serve /metrics on a port."""
    from ledger.migrate import migrate_all

    suffix = uuid.uuid4().hex[:6]
    dsn = await embedded.create_database(pg_server_dsn, f"metrics_{suffix}", exist_ok=False)
    own = settings.replace(pg_dsns=dsn, namespace=f"{settings.namespace}m{suffix}", shards=2,
                           instance_id=f"m-{suffix}", writer_http_port=embedded.free_port(), health_poll_ms=100,
                           health_ok_threshold=1)
    await migrate_all(own.shard_dsns())
    try:
        yield own
    finally:
        await embedded.drop_database(pg_server_dsn, f"metrics_{suffix}")


async def _until_ok(http: Any, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, url
        await asyncio.sleep(0.1)


async def test_every_metric_a_rule_or_panel_names_is_exported(own_db: Settings, http: Any) -> None:
    """A few rounds through a gateway and its writers, then both /metrics: every gateway_* and ledger_*
    metric an alert rule or a dashboard panel queries is there (with a sample, not just declared)."""
    from ledger.writer import run_writers
    from tests.conftest import running_gateway

    s = own_db
    writer_base = f"http://127.0.0.1:{s.writer_http_port}"
    stop = asyncio.Event()
    task = asyncio.create_task(run_writers(s, range(s.shards), stop))
    try:
        await _until_ok(http, writer_base + "/readyz")
        polled = ProviderConfig(id="polled", protocol="native", secret=DEMO_SECRET,
                                health_url=writer_base + "/healthz")
        async with running_gateway(s, [polled]) as gw:
            api = Api(http, gw.base_url)
            for n in range(3):
                _, token = await api.funded("10.00", brand="b2")
                status, body = await api.bet(token, f"m-bet-{n}", f"m-r-{n}", "1.25")
                assert status == 200, body
                status, body = await api.win(token, f"m-win-{n}", f"m-r-{n}", "2.00")
                assert status == 200, body
            deadline = time.monotonic() + 10
            while True:  # the provider's health poll has run
                async with http.get(gw.base_url + "/metrics") as resp:
                    gateway_text = await resp.text()
                if value(gateway_text, "gateway_provider_up", provider="polled") == 1:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        async with http.get(writer_base + "/metrics") as resp:
            writer_text = await resp.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    exported = {name for name, _ in samples(gateway_text)} | {name for name, _ in samples(writer_text)}
    named = _named_metrics(_queries())
    assert {"gateway_bets_total", "ledger_settle_lag_seconds_bucket", "gateway_ledger_shed_total"} <= named
    assert not named - exported, f"named by a rule or panel, not exported: {sorted(named - exported)}"
    assert value(gateway_text, "gateway_bets_total", brand="b2", currency="EUR") >= 3
    assert value(gateway_text, "gateway_bet_stake_minor_units_total", brand="b2", currency="EUR") >= 375
    assert value(writer_text, "ledger_writer_batch_commands_count") > 0
