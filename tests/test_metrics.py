"""/metrics of the gateway and the writers: prometheus-client exposition, summed over ``serve`` workers,
and every metric an alert rule or a dashboard panel names is exported."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import embedded
from gateway.settings import Settings
from tests.support import DEMO_SECRET


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
