"""``gateway up`` starts the whole stack from nothing and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway.embedded import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_gateway_up_starts_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_HTTP_PORT=str(port), GATEWAY_SHARDS="2",
               GATEWAY_LOG_LEVEL="WARNING")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Ctrl-C stops everything" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            text = log.read_text()
            key = re.search(r"operator API key\s+(\S+)", text)
            assert key, text
            body = orjson.dumps({"tenant_id": "t1", "brand_id": "b1", "license": "MGA", "player_id": "alice",
                                 "currency": "EUR", "amount": "12.34", "idempotency_key": "smoke-1"})
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/wallet/deposit", data=body,
                                         headers={"Authorization": f"Bearer {key.group(1)}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert orjson.loads(resp.read())["balance"] == "12.34"
            pids = [int(p) for p in re.findall(r"\(pid (\d+),", text)]
            assert len(pids) == 3, text  # nats, postgres, redis
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
    assert code == 0, log.read_text()
    assert "gateway up: stopped" in log.read_text()
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], log.read_text()
    children = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not children
