"""``gateway top --once`` against a running test gateway, and its quantile arithmetic."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

from gateway.top import quantile
from tests.conftest import GatewayHandle
from tests.support import Api


def test_quantile_interpolates_like_prometheus() -> None:
    # 100 observations: 50 under 10 ms, 40 more under 20 ms, 10 more under 50 ms
    buckets = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, math.inf: 100.0}
    assert math.isclose(quantile(0.5, buckets), 0.01)
    assert math.isclose(quantile(0.95, buckets), 0.02 + 0.03 * 0.5)
    assert math.isnan(quantile(0.95, {math.inf: 0.0}))


def _top(base_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "top", "--once", "--url", base_url],
                          capture_output=True, text=True, timeout=60, check=False)


async def test_top_once_shows_a_frame_of_the_running_gateway(api: Api, gateway: GatewayHandle) -> None:
    _, token = await api.funded("10.00", brand="top-brand")
    status, body = await api.bet(token, "top-bet", "top-r", "2.50")
    assert status == 200, body
    done = await asyncio.to_thread(_top, gateway.base_url)
    assert done.returncode == 0, done.stderr
    frame = done.stdout
    assert "/v1/providers/demo/bet" in frame  # the route just called, with its count and p95
    brand_rows = [line.split() for line in frame.splitlines() if line.startswith("top-brand")]
    assert brand_rows == [["top-brand", "EUR", "1", "250"]], frame  # one bet, 2.50 EUR in cents
    assert "degradation: normal" in frame and "shard" in frame


async def test_top_says_when_it_cannot_read_metrics() -> None:
    done = await asyncio.to_thread(_top, "http://127.0.0.1:9")
    assert done.returncode == 1 and "cannot read" in done.stderr


def test_live_frame_shows_rates_over_the_interval() -> None:
    from gateway.top import render

    def at(n: float, shed: float) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {("gateway_requests_total", frozenset({("route", "/v1/providers/demo/bet"), ("status", "200")})): n,
                ("gateway_ledger_shed_total", frozenset({("shard", "0")})): shed,
                ("gateway_ledger_shedding", frozenset({("shard", "0")})): 1.0}

    frame = render("http://gw", at(30, 8), at(10, 4), interval_s=2.0)
    assert "rates over 2 s" in frame
    bet = next(line.split() for line in frame.splitlines() if line.startswith("/v1/providers/demo/bet"))
    assert bet[1] == "10.0"  # (30 - 10) / 2 s
    shard = next(line.split() for line in frame.splitlines() if line.startswith("0 "))
    assert shard[-2:] == ["YES", "2.0"]
