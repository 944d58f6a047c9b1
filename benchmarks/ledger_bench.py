"""Ledger throughput: one shard writer with group commit vs. one PostgreSQL transaction per settlement.

Both write the same schema on the same embedded PostgreSQL (durable settings: fsync on). The batched
writer's commands are already in JetStream; the clock runs from starting the writer to the last
result published to the reply subject (committed AND answered). The naive writer applies the same
kind of settlement, one per transaction, through the same rules engine.

Beside each rate, the CPU each process spent per settlement over the timed part (this process is the
writer; PostgreSQL with its backends; NATS and the relay for the batched run): what a settlement costs,
and which part bounds the ratio.

    python -m benchmarks.ledger_bench [--commands 20000] [--naive 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats
import orjson

from core.commands import Command, Kind
from core.settings import Settings
from gateway import embedded
from ledger import transport
from ledger.migrate import migrate_all
from ledger.sharding import connect_writer
from ledger.writer import BatchApplier, ShardWriter
from loadtests.run import CpuMeter, Target

PLAYERS = 2000

Rate = tuple[float, dict[str, float]]  # settlements/s, CPU µs per settlement by process


def per_settlement(meter: CpuMeter, n: int) -> dict[str, float]:
    return {k: v * 1e6 / n for k, v in meter.stop().items()}


def _cmd(kind: Kind, player: str, tx: str, amount: int, **kw: object) -> Command:
    fields: dict[str, object] = dict(
        cmd_id=uuid.uuid4().hex, kind=kind, tenant_id="t1", brand_id="b1", license="MGA", player_id=player,
        currency="EUR", provider_id="bench", tx_id=tx, round_id=f"r-{tx}",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", amount=amount)
    fields.update(kw)
    return Command(**fields)  # type: ignore[arg-type]


def settlements(n: int, tag: str) -> list[Command]:
    """Alternating bets and the wins that settle them, spread over the players."""
    out = []
    for i in range(n // 2):
        player = f"p{i % PLAYERS}"
        out.append(_cmd(Kind.BET, player, f"{tag}-b{i}", 100))
        out.append(_cmd(Kind.WIN, player, f"{tag}-w{i}", 150, ref_tx_id=f"{tag}-b{i}", round_id=f"r-{tag}-b{i}"))
    return out


async def fund(applier: BatchApplier) -> None:
    deposits = [_cmd(Kind.DEPOSIT, f"p{i}", f"dep-{i}", 10_000_000, provider_id="operator") for i in range(PLAYERS)]
    for i in range(0, len(deposits), 500):
        await applier.apply(deposits[i:i + 500])


async def bench_batched(settings: Settings, dsn: str, n: int, per_msg: int, servers: dict[str, int]) -> Rate:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await transport.ensure_streams(js, settings)
    await js.add_consumer(transport.stream_name(settings, settings.stream_name), transport.consumer_config(settings, 0))
    conn = await connect_writer(dsn, 0)
    await fund(BatchApplier(conn, 0, settings))
    await conn.close()
    reply = f"bench.results.{uuid.uuid4().hex[:6]}"
    done = asyncio.Event()
    answered = 0
    last = 0.0

    async def on_results(msg: nats.aio.msg.Msg) -> None:
        nonlocal answered, last
        answered += len(orjson.loads(msg.data))
        if answered >= n:
            last = time.perf_counter()
            done.set()

    await nc.subscribe(reply, cb=on_results)
    cmds = settlements(n, "batched")
    subject = transport.cmd_subject(settings, 0)
    for i in range(0, n, per_msg):
        body = b"[" + b",".join(orjson.dumps(c.to_wire()) for c in cmds[i:i + per_msg]) + b"]"
        await js.publish(subject, body, headers={transport.MSG_ID_HEADER: f"m{i}", transport.REPLY_HEADER: reply})
    # the outbox relay runs as `gateway up` runs it: a process of its own, competing for the same cores
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(settings.env())
    relay = subprocess.Popen([sys.executable, "-m", "gateway", "relay", "--shards", "0"], env=env)  # noqa: ASYNC220
    writer = ShardWriter(settings, 0, dsn, nc, relay=False)
    try:
        cpu = CpuMeter(Target("", "", ""), {**servers, "relay": relay.pid}, own="writer")
        start = time.perf_counter()
        task = asyncio.create_task(writer.run())
        await asyncio.wait_for(done.wait(), 600)
        spent = per_settlement(cpu, n)
        writer.stop()
        await task
    finally:
        relay.terminate()
        relay.wait(30)
    await nc.drain()
    return n / (last - start), spent


async def bench_naive(settings: Settings, dsn: str, n: int, servers: dict[str, int]) -> Rate:
    conn = await connect_writer(dsn, 0)
    # the writer this issue started from: every settlement loads its state, no hot state kept
    applier = BatchApplier(conn, 0, settings.replace(writer_cache_keys=0))
    await fund(applier)
    cmds = settlements(n, "naive")
    cpu = CpuMeter(Target("", "", ""), {"PostgreSQL": servers["PostgreSQL"]}, own="writer")
    start = time.perf_counter()
    for cmd in cmds:
        await applier.apply([cmd])
    elapsed = time.perf_counter() - start
    spent = per_settlement(cpu, n)
    await conn.close()
    return n / elapsed, spent


async def main_async(args: argparse.Namespace, stack: embedded.EmbeddedStack) -> None:
    results: dict[str, Rate] = {}
    servers = {{"postgres": "PostgreSQL", "nats": "NATS"}[s.name]: s.pid for s in stack.servers
               if s.name in ("postgres", "nats")}
    for name in ("batched", "naive"):
        dsn = await embedded.create_database(stack.pg_dsn, f"bench_{name}_{uuid.uuid4().hex[:6]}")
        s = Settings(nats_url=stack.nats_url, pg_dsns=dsn, redis_url="", shards=1, namespace=f"b{uuid.uuid4().hex[:6]}",
                     writer_fetch_msgs=args.fetch, log_level="WARNING")
        await migrate_all(s.shard_dsns())
        if name == "batched":
            results[name] = await bench_batched(s, dsn, args.commands, args.per_msg, servers)
        else:
            results[name] = await bench_naive(s, dsn, args.naive, servers)
    print(f"\nledger: one shard writer, durable PostgreSQL (fsync on), {args.commands} settlements "
          f"({args.per_msg} per JetStream message)")
    print(f"  batched writer (group commit)   {results['batched'][0]:>10,.0f} settlements/s")
    print(f"  naive (1 transaction each)      {results['naive'][0]:>10,.0f} settlements/s  ({args.naive} settlements)")
    print(f"  ratio                           {results['batched'][0] / results['naive'][0]:>10.1f}x")
    print("  CPU µs per settlement (the relay with its start-up)")
    columns = ("writer", "PostgreSQL", "NATS", "relay")
    print(" " * 34 + "".join(f"{k:>12}" for k in columns))
    for name, (_, spent) in results.items():
        print(f"    {name:<29} " + "".join(f"{spent.get(k, 0.0):>12.1f}" for k in columns))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=1_500)
    parser.add_argument("--per-msg", type=int, default=256)
    parser.add_argument("--fetch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        stack = embedded.EmbeddedStack(Path(tmp), fast=False).start()
        try:
            asyncio.run(main_async(args, stack))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
