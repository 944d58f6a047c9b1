"""``make load``: the Locust scenarios against a gateway, a report, and the proof that no money was lost.

1. Uses the gateway answering on ``--host`` (default ``http://127.0.0.1:$GATEWAY_HTTP_PORT``, 8080) when one
   does (keys from its data folder); otherwise starts ``gateway up`` in a temporary data folder with a native
   and a Pragmatic provider, and stops it at the end.
2. Measures the baseline: the same Locust client against a trivial aiohttp handler, same users.
3. Runs the scenarios headless (``--users`` base players, ``--time``, ``--shape burst|steady``), sampling
   the gateway's ``/metrics`` (shed, queued, rate-limited) every second and the CPU time of every process;
   the ``SessionWatchers`` hold player websockets and check the balances pushed to them.
4. Reconciles the journals with the ledger and checks the watchers' counts (``loadtests/check.py``), and
   writes the report (``results/load-<UTC time>/report.md``, ``report.json``, ``chart.png``).

Exit status 1 when the reconciliation finds any lost, doubled or inconsistent money, or a round whose
final balance no websocket push told its player within the bound; 2 when the run itself could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from gateway.embedded import free_port, with_database
from loadtests.check import CheckResult, check
from loadtests.report import write_report

ROOT = Path(__file__).resolve().parents[1]
PRAGMATIC_ID = "PragmaticPlay"
CLASSES = ["RoundPlayer", "PragmaticPlayer", "RetryStorm", "Rollbacks", "HotPlayer", "SessionWatchers"]


@dataclass
class Target:
    base: str
    operator_key: str
    secret: str
    pragmatic_secret: str = ""
    dsns: dict[int, str] = field(default_factory=dict)
    #: name → pids whose CPU time is accounted (filled when we started the gateway)
    up: subprocess.Popen[bytes] | None = None
    server_pids: dict[str, int] = field(default_factory=dict)
    data: Path | None = None


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def start_gateway(out: Path, shards: int) -> Target:
    data = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    port = int(os.environ.get("GATEWAY_HTTP_PORT") or 8080)
    op_key, admin_key = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    secret, pp_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (data / "demo.secret").write_text(secret)
    (data / "providers.toml").write_text(
        f'[[providers]]\nid = "demo"\nprotocol = "native"\nsecret_file = "{data / "demo.secret"}"\n\n'
        f'[[providers]]\nid = "pragmatic"\nprotocol = "pragmatic"\nsecret = "{pp_secret}"\n'
        f'[providers.options]\nprovider_id = "{PRAGMATIC_ID}"\n')
    env = {**os.environ, "GATEWAY_DATA_DIR": str(data / "stack"), "GATEWAY_HTTP_PORT": str(port),
           "GATEWAY_API_KEYS": f"{op_key}:operator,{admin_key}:admin", "GATEWAY_SHARDS": str(shards),
           "GATEWAY_PROVIDERS_FILE": str(data / "providers.toml"), "GATEWAY_LOG_LEVEL": "WARNING"}
    log = out / "gateway-up.log"
    up = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=log.open("wb"),
                          stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while "Ctrl-C stops everything" not in log.read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            raise SystemExit(f"gateway up did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    text = log.read_text()
    urls = server_urls(text)
    servers = server_pids(text)
    dsn = os.environ.get("GATEWAY_PG_DSNS") or with_database(urls["postgres"], "gateway")
    return Target(f"http://127.0.0.1:{port}", op_key, secret, pp_secret, dict.fromkeys(range(shards), dsn),
                  up, servers, data)


_SERVER_LINE = re.compile(r"^\s+(\w+)\s+(\S+)\s+\(pid (\d+)", re.M)


def server_urls(up_log: str) -> dict[str, str]:
    """The URLs of the servers ``gateway up`` started, from its banner (nats, postgres, redis)."""
    return {m[1]: m[2] for m in _SERVER_LINE.finditer(up_log)}


def server_pids(up_log: str) -> dict[str, int]:
    """Their pids, for the CPU accounting."""
    return {m[1]: int(m[3]) for m in _SERVER_LINE.finditer(up_log)}


def existing_gateway(base: str, data: Path, shards: int) -> Target:
    try:
        key, secret = (data / "operator.key").read_text().strip(), (data / "demo.secret").read_text().strip()
    except OSError as exc:
        raise SystemExit(f"a gateway answers on {base} but its keys are not in {data}/ ({exc}); "
                         f"set GATEWAY_DATA_DIR or stop it") from None
    dsn = os.environ.get("GATEWAY_PG_DSNS", "")
    if not dsn:  # the embedded PostgreSQL of `make run`: its port is in the cluster's postmaster.pid
        with contextlib.suppress(OSError, IndexError):
            port = (data / "pg" / "postmaster.pid").read_text().splitlines()[3].strip()
            dsn = f"postgresql://postgres@127.0.0.1:{port}/gateway"
    return Target(base, key, secret, dsns=dict.fromkeys(range(shards), dsn) if dsn else {})


def stop_gateway(target: Target) -> None:
    if target.up is None:
        return
    target.up.send_signal(signal.SIGINT)
    try:
        target.up.wait(90)
    except subprocess.TimeoutExpired:
        target.up.kill()
    if target.data is not None:
        shutil.rmtree(target.data, ignore_errors=True)


# --- CPU accounting -------------------------------------------------------------------------------------


def process_groups(target: Target, extra: dict[str, int]) -> dict[str, list[int]]:
    """Process name → pids (a server with its children), found under ``gateway up`` and the given pids."""
    groups: dict[str, list[int]] = {}

    def tree(pid: int) -> list[int]:
        try:
            p = psutil.Process(pid)
            return [pid, *(c.pid for c in p.children(recursive=True))]
        except psutil.Error:
            return []

    if target.up is not None:
        for child in psutil.Process(target.up.pid).children(recursive=False):
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            for word, name in (("gateway serve", "gateway"), ("gateway ledger", "writer"),
                               ("gateway relay", "relay")):
                if word in cmd:
                    groups[name] = tree(child.pid)
        for name, label in (("nats", "NATS"), ("postgres", "PostgreSQL"), ("redis", "Redis")):
            if name in target.server_pids:
                groups[label] = tree(target.server_pids[name])
    for name, pid in extra.items():
        groups[name] = tree(pid)
    return groups


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """utime + stime of each group's living processes (``/proc/<pid>/stat`` through psutil)."""
    out: dict[str, float] = {}
    for name, pids in groups.items():
        total = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        out[name] = total
    return out


def _own_cpu_seconds() -> float:
    t = psutil.Process().cpu_times()  # this process alone: its children are groups of their own
    return float(t.user + t.system)


class CpuMeter:
    """CPU seconds per process group between ``start()`` and ``stop()`` (children that appear are included),
    and this process's own under ``own`` if given (a benchmark's load generator, or the writer it runs)."""

    def __init__(self, target: Target, extra: dict[str, int], own: str = "") -> None:
        self.target, self.extra, self.own = target, extra, own
        self.groups = process_groups(target, extra)
        self.before = cpu_seconds(self.groups)
        self.own_before = _own_cpu_seconds()

    def stop(self) -> dict[str, float]:
        groups = process_groups(self.target, self.extra)
        after = cpu_seconds(groups)
        spent = {name: max(0.0, after[name] - self.before.get(name, 0.0)) for name in after}
        if self.own:
            spent[self.own] = _own_cpu_seconds() - self.own_before
        return spent


# --- /metrics sampling ----------------------------------------------------------------------------------

_METRIC = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')


def scrape(base: str) -> dict[str, Any]:
    """The gauges and counters the report needs, summed per lane / per status."""
    status, text = _get(base + "/metrics")
    out: dict[str, Any] = {"ok": status == 200, "queued": {"bet": 0, "settle": 0}, "shed": 0, "rate_limited": 0,
                           "timeouts": 0, "shedding_shards": 0, "by_status": {}}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, labels, value = m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2] or "")), float(m[3])
        if name == "gateway_ledger_queue_depth":
            out["queued"][labels["lane"]] = out["queued"].get(labels["lane"], 0) + int(value)
        elif name == "gateway_ledger_shed_total":
            out["shed"] += int(value)
        elif name == "gateway_ledger_shedding":
            out["shedding_shards"] += int(value)
        elif name == "gateway_rate_limited_total":
            out["rate_limited"] = int(value)
        elif name == "gateway_ledger_timeouts_total":
            out["timeouts"] = int(value)
        elif name == "gateway_requests_total":
            out["by_status"][labels["status"]] = out["by_status"].get(labels["status"], 0) + int(value)
    return out


class MetricsSampler(threading.Thread):
    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.halt = base, threading.Event()
        self.samples: list[dict[str, Any]] = []

    def run(self) -> None:
        while not self.halt.wait(1.0):
            sample = scrape(self.base)
            sample["t"] = time.time()
            self.samples.append(sample)


# --- Locust runs ----------------------------------------------------------------------------------------


def locust(args: list[str], env: dict[str, str], log: Path, meter_target: Target | None = None,
           extra: dict[str, int] | None = None, timeout: float = 3600) -> tuple[int, dict[str, float]]:
    """Run Locust to its end; the CPU seconds of every accounted process over the run."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "locust", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        meter = CpuMeter(meter_target or Target("", "", ""), {**(extra or {}), "Locust": proc.pid})
        # Locust's own CPU is read just before it exits: sample it while alive
        last: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            last = meter.stop()
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        final = meter.stop()
        final["Locust"] = max(final.get("Locust", 0.0), last.get("Locust", 0.0))
        return proc.returncode, final


def stats_rows(prefix: Path) -> dict[str, dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open() as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def trivial_baseline(out: Path, users: int, seconds: int) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.trivial_server", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while _get(f"http://127.0.0.1:{port}/")[0] == 0:
            if time.monotonic() > deadline:
                raise SystemExit("the trivial handler did not start")
            time.sleep(0.2)
        _, cpu = locust(["-f", str(ROOT / "loadtests" / "trivial.py"), "--host", f"http://127.0.0.1:{port}",
                            "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
                            "--csv", str(out / "trivial"), "--only-summary", "--loglevel", "WARNING"],
                           dict(os.environ), out / "trivial.log", extra={"trivial handler": server.pid})
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
    agg = stats_rows(out / "trivial")["Aggregated"]
    calls = int(agg["Request Count"])
    return {"users": users, "seconds": seconds, "calls": calls, "rps": float(agg["Requests/s"]),
            "p50_ms": float(agg["50%"]), "p95_ms": float(agg["95%"]), "p99_ms": float(agg["99%"]),
            "cpu_us_per_call": {k: v * 1e6 / max(calls, 1) for k, v in cpu.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=50, help="base players (the burst spikes to 4x)")
    p.add_argument("--time", default="60s", help="run time, Locust syntax (90s, 2m)")
    p.add_argument("--shape", choices=("burst", "steady"), default="burst")
    p.add_argument("--host", default="", help="gateway to load (default: start one unless one answers)")
    p.add_argument("--results", default="results", help="folder for load-<time>/ reports")
    p.add_argument("--trivial-seconds", type=int, default=0, help="baseline run (0: a quarter of --time, 5-20 s)")
    p.add_argument("--win-ratio", default="0.45")
    args = p.parse_args(argv)
    from locust.util.timespan import parse_timespan
    seconds = int(parse_timespan(args.time))
    shards = int(os.environ.get("GATEWAY_SHARDS") or 4)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (ROOT / args.results / f"load-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    default = f"http://127.0.0.1:{os.environ.get('GATEWAY_HTTP_PORT') or 8080}"
    base = args.host or default
    if _get(base + "/healthz")[0] == 200:
        print(f"load: using the gateway on {base}", flush=True)
        target = existing_gateway(base, Path(os.environ.get("GATEWAY_DATA_DIR") or ROOT / ".gateway"), shards)
    elif args.host:
        raise SystemExit(f"nothing answers on {args.host}")
    else:
        print(f"load: starting gateway up ({out / 'gateway-up.log'})", flush=True)
        target = start_gateway(out, shards)
    try:
        trivial_s = args.trivial_seconds or max(5, min(20, seconds // 4))
        print(f"load: baseline, trivial aiohttp handler, {args.users} users, {trivial_s}s", flush=True)
        trivial = trivial_baseline(out, args.users, trivial_s)
        classes = [c for c in CLASSES if c != "PragmaticPlayer" or target.pragmatic_secret]
        ws_status = _get(target.base + "/v1/ws")[0]
        if ws_status == 404:
            classes.remove("SessionWatchers")
        env = {**os.environ, "GW_OPERATOR_KEY": target.operator_key, "GW_PROVIDER_SECRET": target.secret,
               "GW_PRAGMATIC_SECRET": target.pragmatic_secret, "GW_PRAGMATIC_ID": PRAGMATIC_ID,
               "GW_LOAD_JOURNAL": str(out / "journal"), "GW_LOAD_RUN": stamp[-7:].lower(),
               "GW_LOAD_SHAPE": args.shape, "GW_WIN_RATIO": args.win_ratio}
        print(f"load: {args.shape} load, {args.users} base users, {seconds}s: {', '.join(classes)}", flush=True)
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        metrics_before = scrape(target.base)
        sampler = MetricsSampler(target.base)
        sampler.start()
        started = time.time()
        code, cpu = locust(["-f", str(ROOT / "loadtests" / "locustfile.py"), "--host", target.base, "--headless",
                            "-u", str(args.users), "-t", f"{seconds}s", "--csv", str(out / "locust"),
                            "--csv-full-history", "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "2",
                            *classes], env, out / "locust.log", target)
        ended = time.time()
        loadavg_after = [round(x, 2) for x in os.getloadavg()]
        sampler.halt.set()
        sampler.join(5)
        metrics_after = scrape(target.base)
        (out / "metrics-samples.json").write_text(json.dumps(sampler.samples))
        if code not in (0, 1) or not Path(f"{out / 'locust'}_stats.csv").exists():
            print((out / "locust.log").read_text()[-3000:], file=sys.stderr)
            return 2
        print("load: reconciling the journals with the ledger", flush=True)
        result: CheckResult = asyncio.run(check(str(out / "journal"), target.base, target.operator_key,
                                                target.dsns or None))
    finally:
        stop_gateway(target)
    report = write_report(out, args=vars(args) | {"seconds": seconds, "classes": classes, "ws_status": ws_status,
                                              "loadavg_before": loadavg_before, "loadavg_after": loadavg_after},
                          started=started, ended=ended, trivial=trivial, cpu=cpu, metrics=(metrics_before,
                          metrics_after), samples=sampler.samples, result=result)
    print(report.read_text())
    print(f"load: report in {out}/ (report.md, report.json, chart.png)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
