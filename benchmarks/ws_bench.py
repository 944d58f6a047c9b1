"""Player websocket: idle sockets per GiB of gateway memory, and bet → ``balance`` push latency.

Starts ``gateway up`` (one gateway process), then:

1. memory: opens ``--sockets`` idle player sockets (each its own player and session), waits for them to
   settle and reports the gateway process's RSS growth per socket and what that makes per GiB;
2. latency: ``--players`` players, each with a socket, bet back to back at a light rate; for every bet
   it records when the provider's answer arrived (the ledger has committed by then) and when the
   player's ``balance`` push arrived. Reported: push after the answer (≈ commit → push, minus the
   answer's own way back), push and answer after the request.

The generator shares the machine with the gateway, writers, relay and servers: read ratios, not
absolute numbers, across machines.

    python -m benchmarks.ws_bench [--sockets 4000] [--players 4] [--pause-ms 50] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from adapters.sim.native import NativeClient
from benchmarks.e2e_bench import percentile, wait_for
from gateway.embedded import free_port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def gateway_pid(up_pid: int) -> int:
    """The ``gateway serve`` child of ``gateway up``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == up_pid and b"serve" in cmd:
            return int(entry.name)
    raise RuntimeError("gateway serve process not found")


async def sessions(http: aiohttp.ClientSession, base: str, key: str, secret: str, n: int,
                   amount: str = "0.00") -> list[str]:
    native = NativeClient("demo", secret)
    auth = {"Authorization": f"Bearer {key}"}
    sem = asyncio.Semaphore(16)

    async def one() -> str:
        async with sem:
            player = {"tenant_id": "t1", "brand_id": "b1", "license": "MGA",
                      "player_id": f"ws-{uuid.uuid4().hex[:12]}", "currency": "EUR"}
            if amount != "0.00":
                async with http.post(base + "/v1/wallet/deposit", headers=auth, json={
                        **player, "amount": amount, "idempotency_key": uuid.uuid4().hex}) as r:
                    assert r.status == 200, await r.text()
            async with http.post(base + "/v1/sessions", headers=auth, json={**player, "provider_id": "demo"}) as r:
                assert r.status == 201, await r.text()
                launch = (await r.json())["launch_token"]
            call = native.authenticate(launch)
            async with http.post(base + call.path, data=call.body, headers=call.headers) as r:
                return str((await r.json())["session_token"])

    return list(await asyncio.gather(*(one() for _ in range(n))))


def ws_url(base: str, token: str) -> str:
    return f"{base.replace('http', 'ws', 1)}/v1/ws?provider=demo&token={token}"


async def open_sockets(http: aiohttp.ClientSession, base: str,
                       tokens: list[str]) -> list[aiohttp.ClientWebSocketResponse]:
    sem = asyncio.Semaphore(64)

    async def one(token: str) -> aiohttp.ClientWebSocketResponse:
        async with sem:
            sock = await http.ws_connect(ws_url(base, token), autoping=True, heartbeat=None)
            hello = await sock.receive_json(timeout=30)
            assert hello["type"] == "hello", hello
            return sock

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def memory(base: str, key: str, secret: str, pid: int, n: int) -> tuple[int, float]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tokens = await sessions(http, base, key, secret, n + 200)
        warm = await open_sockets(http, base, tokens[n:])  # allocator and code paths warmed first
        for s in warm:
            await s.close()
        await asyncio.sleep(2)
        before = rss_bytes(pid)
        socks = await open_sockets(http, base, tokens[:n])
        await asyncio.sleep(3)
        after = rss_bytes(pid)
        for s in socks:
            await s.close()
    per = (after - before) / n
    return int(per), (1 << 30) / per if per > 0 else float("inf")


async def latency(base: str, key: str, secret: str, players: int, seconds: float, pause_s: float
                  ) -> tuple[list[float], list[float], list[float]]:
    native = NativeClient("demo", secret)
    after_answer: list[float] = []
    after_request_push: list[float] = []
    after_request_answer: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tokens = await sessions(http, base, key, secret, players, amount="100000.00")
        socks = await open_sockets(http, base, tokens)
        stop_at = time.perf_counter() + seconds

        async def player(token: str, sock: aiohttp.ClientWebSocketResponse, warmup: bool) -> None:
            i = 0
            while time.perf_counter() < stop_at:
                i += 1
                tx = f"b-{uuid.uuid4().hex[:16]}"
                call = native.bet(token, tx, f"r-{tx}", "1.00", "EUR")
                t0 = time.perf_counter()
                pushed = asyncio.create_task(_push_for(sock, tx))
                async with http.post(base + call.path, data=call.body, headers=call.headers) as r:
                    await r.read()
                    assert r.status == 200
                t_answer = time.perf_counter()
                t_push = await asyncio.wait_for(pushed, 10)
                if not warmup:
                    after_answer.append(max(0.0, t_push - t_answer))
                    after_request_push.append(t_push - t0)
                    after_request_answer.append(t_answer - t0)
                await asyncio.sleep(pause_s)
                if warmup and i >= 5:
                    return

        await asyncio.gather(*(player(t, s, True) for t, s in zip(tokens, socks, strict=True)))
        await asyncio.gather(*(player(t, s, False) for t, s in zip(tokens, socks, strict=True)))
        for s in socks:
            await s.close()
    return sorted(after_answer), sorted(after_request_push), sorted(after_request_answer)


async def _push_for(sock: aiohttp.ClientWebSocketResponse, tx: str) -> float:
    while True:
        msg = orjson.loads((await sock.receive(timeout=10)).data)
        if msg["type"] == "balance" and msg["tx_id"] == tx:
            return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=4000)
    parser.add_argument("--players", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--pause-ms", type=float, default=50, help="pause between a player's bets")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.sockets + 1000  # client and server ends both live on this machine
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if min(need, hard) < need:
        args.sockets = (hard - 1000) // 2
        print(f"file descriptor limit {hard}: measuring {args.sockets} sockets")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        port = free_port()
        log = Path(tmp) / "up.log"
        env.update(GATEWAY_DATA_DIR=f"{tmp}/data", GATEWAY_HTTP_PORT=str(port), GATEWAY_LOG_LEVEL="WARNING",
                   GATEWAY_WORKERS="1", GATEWAY_RL_PLAYER_PER_S="100000", GATEWAY_RL_PLAYER_BURST="100000",
                   GATEWAY_RL_ROUND_PER_S="100000", GATEWAY_RL_ROUND_BURST="100000")
        with log.open("wb") as out:
            up = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
            try:
                text = wait_for(log, "Ctrl-C stops everything", up)
                key = re.search(r"operator API key\s+(\S+)", text).group(1)  # type: ignore[union-attr]
                secret = (Path(tmp) / "data" / "demo.secret").read_text().strip()
                base = f"http://127.0.0.1:{port}"
                pid = gateway_pid(up.pid)
                per_socket, per_gib = asyncio.run(memory(base, key, secret, pid, args.sockets))
                lat = asyncio.run(latency(base, key, secret, args.players, args.seconds, args.pause_ms / 1000))
            finally:
                up.send_signal(signal.SIGINT)
                up.wait(60)
    answer, push_req, answer_req = ([x * 1000 for x in xs] for xs in lat)
    print(f"\nplayer websocket ({args.sockets} idle sockets; {args.players} players betting, {len(answer)} bets)")
    print(f"  idle socket memory           {per_socket:>8,} B RSS each   → {per_gib:>10,.0f} sockets per GiB")
    for name, xs in (("push after provider answer", answer), ("push after bet request", push_req),
                     ("answer after bet request", answer_req)):
        print(f"  {name:<28} p50 {percentile(xs, 50):6.2f} ms   p95 {percentile(xs, 95):6.2f} ms"
              f"   p99 {percentile(xs, 99):6.2f} ms")
    print(orjson.dumps({"sockets": args.sockets, "bytes_per_socket": per_socket, "sockets_per_gib": int(per_gib),
                        "push_after_answer_p50_ms": percentile(answer, 50),
                        "push_after_answer_p95_ms": percentile(answer, 95),
                        "push_after_request_p95_ms": percentile(push_req, 95)}).decode())


if __name__ == "__main__":
    main()
