"""End to end: native bet+win through ``gateway up`` vs. a trivial aiohttp handler, same load, same run.

Each of ``--concurrency`` virtual players plays rounds back to back (bet, then the win settling it),
with requests prepared and signed before the clock starts so the load generator spends its time
sending. The same generator then posts the same bodies to a trivial aiohttp JSON handler served the
same way (uvloop, one process). Reported: calls/s and p50/p95/p99 latency from request to response,
and the CPU time (utime+stime from /proc, the load tests' accounting) each process spent per call:
gateway, ledger writer, outbox relay, NATS, PostgreSQL, Redis and the load generator itself.
The generator shares this machine's two cores with everything it measures: compare the ratio, not
the absolute rates, across machines.

    python -m benchmarks.e2e_bench [--seconds 20] [--concurrency 4,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import nats
import orjson
from prometheus_client.parser import text_string_to_metric_families

from adapters.sim.native import NativeClient
from benchmarks.floor import STREAM as FLOOR_STREAM
from gateway.embedded import create_database, free_port
from loadtests.run import CpuMeter, Target, _get, server_pids, server_urls

Run = tuple[int, int, list[float], dict[str, float]]  # calls/s, errors, sorted latencies, CPU µs per call


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


async def drive(base: str, rounds: list[list[tuple[str, bytes, dict[str, str]]]], seconds: float,
                ) -> tuple[int, int, list[float]]:
    """Every worker sends its prepared requests in order until the time is up."""
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        stop_at = time.perf_counter() + seconds

        async def worker(calls: list[tuple[str, bytes, dict[str, str]]]) -> None:
            nonlocal errors
            for path, headers, body in calls:
                if time.perf_counter() >= stop_at:
                    return
                t0 = time.perf_counter()
                async with http.post(base + path, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker(r) for r in rounds))
        elapsed = time.perf_counter() - start
    return int(len(latencies) / elapsed), errors, sorted(latencies)


async def setup_players(base: str, key: str, secret: str, n: int, rounds_each: int
                        ) -> list[list[tuple[str, bytes, dict[str, str]]]]:
    native = NativeClient("demo", secret)
    auth = {"Authorization": f"Bearer {key}"}
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            player = {"tenant_id": "t1", "brand_id": "b1", "license": "MGA",
                      "player_id": f"bench-{uuid.uuid4().hex[:10]}", "currency": "EUR"}
            async with http.post(base + "/v1/wallet/deposit", headers=auth, json={
                    **player, "amount": "1000000.00", "idempotency_key": uuid.uuid4().hex}) as r:
                assert r.status == 200, await r.text()
            async with http.post(base + "/v1/sessions", headers=auth, json={**player, "provider_id": "demo"}) as r:
                launch = (await r.json())["launch_token"]
            call = native.authenticate(launch)
            async with http.post(base + call.path, data=call.body, headers=call.headers) as r:
                token = (await r.json())["session_token"]
            calls = []
            for i in range(rounds_each):
                rid = f"{player['player_id']}-{i}"
                calls.append(tuple(native.bet(token, f"b-{rid}", rid, "1.00", "EUR")))
                calls.append(tuple(native.win(token, f"w-{rid}", rid, "0.50", "EUR", bet_transaction_id=f"b-{rid}",
                                              round_closed=True)))
            out.append(calls)
    return out  # type: ignore[return-value]


def wait_answering(base: str, rounds: list[list[tuple[str, bytes, dict[str, str]]]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(drive(base, [rounds[0][:2]], 1))
            return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def floor_messages(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(FLOOR_STREAM)).state.last_seq
    finally:
        await nc.close()


def floor_runs(up_log: str, levels: Sequence[int], rounds: list[list[tuple[str, bytes, dict[str, str]]]],
               seconds: float) -> dict[int, Run]:
    """``benchmarks.floor`` on the NATS and PostgreSQL that ``gateway up`` started (its own stream and
    database), with the same load: the design's bare path, accounted like the gateway."""
    urls, pids = server_urls(up_log), server_pids(up_log)
    dsn = asyncio.run(create_database(urls["postgres"], "floor"))
    port = free_port()
    floor = [sys.executable, "-m", "benchmarks.floor"]
    procs = {"floor edge": subprocess.Popen([*floor, "edge", str(port), urls["nats"]]),
             "floor writer": subprocess.Popen([*floor, "writer", urls["nats"], dsn])}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_answering(base, rounds)
        asyncio.run(drive(base, [r[:50] for r in rounds], 2))  # warm-up
        extra = {**{name: p.pid for name, p in procs.items()}, "NATS": pids["nats"], "PostgreSQL": pids["postgres"]}
        runs = {}
        for level in levels:
            before = asyncio.run(floor_messages(urls["nats"]))
            runs[level] = measured(Target("", "", ""), extra, base, [r[50:] for r in rounds[:level]], seconds)
            moved = asyncio.run(floor_messages(urls["nats"])) - before
            print(f"  floor batching: {len(runs[level][2]) / max(moved, 1):.1f} commands per JetStream message")
        return runs
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(20)


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return log.read_text()


_COUNTERS = {"gateway_ledger_batches_published_total": "messages", "ledger_writer_batches_total": "transactions",
             "ledger_writer_applied_total": "commands"}


def batching(urls: Sequence[str]) -> dict[str, float]:
    """The ledger counters that tell how well commands are batched, summed over shards."""
    out = dict.fromkeys(_COUNTERS.values(), 0.0)
    for url in urls:
        for family in text_string_to_metric_families(_get(url)[1]):
            for sample in family.samples:
                if sample.name in _COUNTERS:
                    out[_COUNTERS[sample.name]] += sample.value
    return out


def measured(target: Target, extra: dict[str, int], base: str,
             rounds: list[list[tuple[str, bytes, dict[str, str]]]], seconds: float,
             counters: Sequence[str] = ()) -> Run:
    """One driven run with the CPU of every process (the generator's own, without its children), and
    the batching counters (commands per JetStream message and per PostgreSQL transaction) if given."""
    before = batching(counters)
    meter = CpuMeter(target, extra, own="load generator")
    rate, errors, lat = asyncio.run(drive(base, rounds, seconds))
    cpu = meter.stop()
    calls = max(len(lat), 1)
    if counters:
        moved = {k: v - before[k] for k, v in batching(counters).items()}
        print(f"  batching: {moved['commands'] / max(moved['messages'], 1):.1f} commands per JetStream message, "
              f"{moved['commands'] / max(moved['transactions'], 1):.1f} per PostgreSQL transaction")
    return rate, errors, lat, {k: v * 1e6 / calls for k, v in cpu.items()}


_ORDER = ["gateway", "writer", "relay", "floor edge", "floor writer", "NATS", "PostgreSQL", "Redis", "trivial handler",
          "load generator"]


def cpu_table(runs: dict[str, Run]) -> None:
    """µs of CPU per call, one column per run; 'system under test' sums all but the generator."""
    names = sorted({k for r in runs.values() for k in r[3]}, key=lambda k: ([*_ORDER, k]).index(k))
    print("\n  CPU µs per call      " + "".join(f"{c:>22}" for c in runs))
    for name in names:
        print(f"  {name:<20} " + "".join(f"{r[3].get(name, 0.0):>22.1f}" for r in runs.values()))
    print(f"  {'system under test':<20} " + "".join(
        f"{sum(v for k, v in r[3].items() if k != 'load generator'):>22.1f}" for r in runs.values()))


def report(name: str, rate: int, errors: int, lat: list[float], *_: object) -> None:
    ms = [x * 1000 for x in lat]
    print(f"  {name:<34} {rate:>8,} calls/s   p50 {percentile(ms, 50):6.2f} ms   p95 {percentile(ms, 95):6.2f} ms"
          f"   p99 {percentile(ms, 99):6.2f} ms   errors {errors}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", default="4,16,64", help="comma-separated player counts, each a run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="GATEWAY_X=value",
                        help="a setting for the gateway under test (e.g. GATEWAY_WRITER_CACHE_KEYS=0), repeatable")
    args = parser.parse_args()
    rounds_each = 4000
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        port, writer_port = free_port(), free_port()
        log = Path(tmp) / "up.log"
        env.update(GATEWAY_DATA_DIR=f"{tmp}/data", GATEWAY_HTTP_PORT=str(port), GATEWAY_LOG_LEVEL="WARNING",
                   GATEWAY_WRITER_HTTP_PORT=str(writer_port),
                   GATEWAY_WORKERS=str(args.workers), GATEWAY_RL_PLAYER_PER_S="100000",
                   GATEWAY_RL_PLAYER_BURST="100000", GATEWAY_RL_ROUND_PER_S="100000",
                   GATEWAY_RL_ROUND_BURST="100000")
        env.update(item.split("=", 1) for item in args.set)
        with log.open("wb") as out:
            up = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
            try:
                text = wait_for(log, "Ctrl-C stops everything", up)
                key = re.search(r"operator API key\s+(\S+)", text).group(1)  # type: ignore[union-attr]
                secret = (Path(tmp) / "data" / "demo.secret").read_text().strip()
                base = f"http://127.0.0.1:{port}"
                target = Target(base, key, secret, up=up, server_pids=server_pids(text))
                levels = [int(c) for c in args.concurrency.split(",")]
                rounds = asyncio.run(setup_players(base, key, secret, max(levels), rounds_each))
                asyncio.run(drive(base, [r[:50] for r in rounds], 2))  # warm-up
                used = 50
                gw: dict[int, Run] = {}
                for level in levels:
                    share = (rounds_each * 2 - used) // len(levels) // 2 * 2  # whole rounds: bet, then win
                    gw[level] = measured(target, {}, base, [r[used:used + share] for r in rounds[:level]],
                                         args.seconds, [f"{base}/metrics", f"http://127.0.0.1:{writer_port}/metrics"])
                    used += share
                floor = floor_runs(text, levels, rounds, args.seconds)
            finally:
                up.send_signal(signal.SIGINT)
                up.wait(60)
        tport = free_port()
        trivial = subprocess.Popen([sys.executable, "-m", "benchmarks.trivial_server", str(tport)])
        try:
            tbase = f"http://127.0.0.1:{tport}"
            wait_answering(tbase, rounds)
            asyncio.run(drive(tbase, [r[:50] for r in rounds], 2))  # warm-up
            none = Target("", "", "")
            base_run = {level: measured(none, {"trivial handler": trivial.pid}, tbase,
                                        [r[50:] for r in rounds[:level]], args.seconds) for level in levels}
        finally:
            trivial.send_signal(signal.SIGINT)
            trivial.wait(20)
    print(f"\nend to end: native bet+win, players playing back to back, {args.seconds:.0f} s per run, "
          f"gateway workers {args.workers}")
    for level in levels:
        report(f"gateway, {level} players", *gw[level])
        report(f"floor, {level} players", *floor[level])
        report(f"trivial handler, {level} players", *base_run[level])
        print(f"  {'ratio gateway / trivial':<34} {gw[level][0] / base_run[level][0]:8.1%}")
        print(f"  {'ratio floor / trivial':<34} {floor[level][0] / base_run[level][0]:8.1%}")
    cpu_table({**{f"gateway {level}p": gw[level] for level in levels},
               **{f"floor {level}p": floor[level] for level in levels},
               **{f"trivial {level}p": base_run[level] for level in levels}})
    print(orjson.dumps({str(level): {
        "gateway_rps": gw[level][0], "trivial_rps": base_run[level][0],
        "gateway_p95_ms": round(percentile(gw[level][2], 95) * 1000, 2),
        "trivial_p95_ms": round(percentile(base_run[level][2], 95) * 1000, 2),
        "floor_rps": floor[level][0], "floor_p95_ms": round(percentile(floor[level][2], 95) * 1000, 2),
        "gateway_cpu_us_per_call": {k: round(v, 1) for k, v in gw[level][3].items()},
        "floor_cpu_us_per_call": {k: round(v, 1) for k, v in floor[level][3].items()},
        "trivial_cpu_us_per_call": {k: round(v, 1) for k, v in base_run[level][3].items()}}
        for level in levels}).decode())


if __name__ == "__main__":
    main()
