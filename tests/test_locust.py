"""The Locust scenario really drives a gateway: a short headless run with no failed request."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import DEMO_SECRET, OPERATOR_KEY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
async def test_locust_scenario_plays_rounds_without_failures(gateway: Any, tmp_path: Path) -> None:
    env = {**os.environ, "GW_OPERATOR_KEY": OPERATOR_KEY, "GW_PROVIDER_SECRET": DEMO_SECRET,
           "GW_RETRY_EVERY": "3"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--host", gateway.base_url, "--headless", "-u", "4", "-r", "4", "-t", "4s",
        "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()[-2000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["bet"]["Request Count"]) > 0 and int(rows["win"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
