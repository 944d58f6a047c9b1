"""Money under faults: a ledger writer, NATS and PostgreSQL killed for real under a steady stream of bets,
wins and rollbacks with provider retries, each restarted; the stack heals by itself and the ledger proves
that nothing was lost or doubled.

The system under test runs as it does in production: its own servers (durable PostgreSQL, since a killed
server must keep what it committed), ``gateway ledger``, ``gateway relay`` and ``gateway serve`` as separate
processes. The test plays the providers: every call is retried with the same transaction id until it gets a
definitive answer, some are sent two or three times at once (a retry storm), some again long after they
were answered. Afterwards every success must be in the ledger exactly once, nothing refused may have moved
money, every balance must equal the sum of what its player was told, ``gateway reconcile`` must be clean,
and after each restart the service must take money again within ``RESUME_BOUND_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.sim import Call
from adapters.sim.native import NativeClient
from gateway import embedded
from gateway.embedded import EmbeddedServer, free_port
from ledger.sharding import connect
from tests.support import DEMO_SECRET, OPERATOR_KEY

pytestmark = pytest.mark.slow

SHARDS = 2
PLAYERS = 8
LOAD_S = 24.0
#: (what, seconds into the load); each is killed with SIGKILL and restarted a second later
FAULTS = (("writer", 3.0), ("nats", 9.0), ("postgres", 16.0))
DOWN_S = 1.0
#: the issue's bound: after a restart the service takes money again within this
RESUME_BOUND_S = 10.0
#: how long a call may stay without a definitive answer before the run counts it as lost
SETTLE_DEADLINE_S = 60.0
START_CENTS = 100_000
APPLIED = ("ok", "tombstoned", "already_rolled_back")


@dataclass
class Outcome:
    """What the provider side was told about one transaction."""

    kind: str
    player: str
    tx_id: str
    cents: int
    call: Call
    result: str = "unknown"  # ok | refused | unknown
    answers: list[str] = field(default_factory=list)


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    resumed_s: dict[str, float] = field(default_factory=dict)


def _cents(text: str) -> int:
    whole, _, frac = text.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 100 + int((frac + "00")[:2]))


def _amount(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class Stack:
    """Servers and gateway processes the test owns, with kill and restart for each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers_dir = root / "servers"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.nats: EmbeddedServer | None = None
        self.pg: EmbeddedServer | None = None
        self.redis: EmbeddedServer | None = None
        self.env: dict[str, str] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.nats = await asyncio.to_thread(embedded.start_nats, self.servers_dir)
        self.pg = await asyncio.to_thread(embedded.start_postgres, self.servers_dir)
        self.redis = await asyncio.to_thread(embedded.start_redis, self.servers_dir)
        dsn = await embedded.create_database(self.pg.url, "gateway")
        providers = self.root / "providers.toml"
        providers.write_text(f'[[providers]]\nid = "demo"\nprotocol = "native"\nsecret = "{DEMO_SECRET}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_NATS_URL=self.nats.url, GATEWAY_PG_DSNS=dsn, GATEWAY_REDIS_URL=self.redis.url,
            GATEWAY_SHARDS=str(SHARDS), GATEWAY_HTTP_PORT=str(self.port), GATEWAY_PROVIDERS_FILE=str(providers),
            GATEWAY_API_KEYS=f"{OPERATOR_KEY}:operator", GATEWAY_DATA_DIR=str(self.root / "data"),
            GATEWAY_LEDGER_TIMEOUT_MS="1500", GATEWAY_WRITER_ACK_WAIT_S="3", GATEWAY_LOG_LEVEL="WARNING",
            GATEWAY_INSTANCE_ID="faults",
        )
        self.env = env
        assert self._run("migrate", ["migrate"]).wait(60) == 0, self.log_tails()
        for name in ("writer", "relay", "serve"):
            self.spawn(name)

    def _run(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "gateway", *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)
        finally:
            log.close()

    def spawn(self, name: str) -> None:
        args = {"writer": ["ledger", "--shards", "all", "--no-relay"], "relay": ["relay", "--shards", "all"],
                "serve": ["serve", "--workers", "1"]}[name]
        self.children[name] = self._run(name, args)

    async def kill(self, what: str) -> None:
        """SIGKILL ``what`` and bring it back ``DOWN_S`` later, on the same port with the same data."""
        if what == "writer":
            proc = self.children["writer"]
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            await asyncio.sleep(DOWN_S)
            self.spawn("writer")
            return
        server = self.nats if what == "nats" else self.pg
        assert server is not None
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.to_thread(server.process.wait, 10)
        await asyncio.to_thread(server.stop)  # reaps what the kill left (PostgreSQL's backends)
        await asyncio.sleep(DOWN_S)
        if what == "nats":
            self.nats = await asyncio.to_thread(embedded.start_nats, self.servers_dir, port=server.port)
        else:
            self.pg = await asyncio.to_thread(embedded.start_postgres, self.servers_dir, port=server.port)

    def dead_children(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.children.items() if p.poll() is not None]

    def log_tails(self) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-30:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def reconcile(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "reconcile"], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for server in (self.redis, self.pg, self.nats):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()


class Provider:
    """The provider side: signed native calls, each retried until it gets a definitive answer."""

    def __init__(self, http: aiohttp.ClientSession, stack: Stack, tally: Tally) -> None:
        self.http = http
        self.stack = stack
        self.tally = tally
        self.native = NativeClient("demo", DEMO_SECRET)

    async def once(self, call: Call) -> tuple[str, dict[str, Any]]:
        """ok | refused | retry, with the body."""
        self.tally.requests += 1
        try:
            async with self.http.post(self.stack.base + call.path, data=call.body, headers=call.headers,
                                      timeout=aiohttp.ClientTimeout(total=5)) as resp:
                self.tally.statuses[resp.status] += 1
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.tally.transport_errors += 1
            return "retry", {}
        if resp.status == 200 and body.get("status") == "OK":
            return "ok", body
        if resp.status == 429 or resp.status >= 500 or body.get("retryable"):
            return "retry", body
        return "refused", body

    async def definitive(self, out: Outcome, deadline: float) -> None:
        while time.monotonic() < deadline:
            verdict, body = await self.once(out.call)
            if verdict != "retry":
                out.answers.append(verdict if verdict == "ok" else f"refused:{body.get('code')}")
                if out.result == "unknown":
                    out.result = verdict
                elif out.result != verdict:
                    self.tally.disagreements.append(f"{out.tx_id}: {out.result} then {verdict} ({body})")
                return
            await asyncio.sleep(random.uniform(0.05, 0.25))

    async def storm(self, out: Outcome, deadline: float) -> None:
        """The call sent once, or two or three times at once, as providers retry."""
        copies = random.choice((1, 1, 2, 3))
        await asyncio.gather(*(self.definitive(out, deadline) for _ in range(copies)))

    def record(self, kind: str, player: str, tx_id: str, cents: int, call: Call) -> Outcome:
        out = Outcome(kind, player, tx_id, cents, call)
        self.tally.outcomes.append(out)
        return out


async def _operator(http: aiohttp.ClientSession, base: str, method: str, path: str, **kw: Any) -> Any:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with http.request(method, base + path, headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
                                    timeout=aiohttp.ClientTimeout(total=5), **kw) as resp:
                body = await resp.json(content_type=None)
                if resp.status < 300:
                    return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            body = None
        assert time.monotonic() < deadline, f"{method} {path} never succeeded: {body}"
        await asyncio.sleep(0.3)


async def _wait_ready(http: aiohttp.ClientSession, stack: Stack) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert not stack.dead_children(), stack.dead_children()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(stack.base + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.3)
    raise AssertionError("gateway never became ready\n" + stack.log_tails())


async def _player_loop(p: Provider, player: dict[str, str], token: str, stop_at: float) -> None:
    pid = player["player_id"]
    rounds = 0
    while time.monotonic() < stop_at:
        rounds += 1
        rid, bet_tx = f"{pid}-r{rounds}", f"{pid}-b{rounds}"
        stake = random.randint(100, 500)
        bet = p.record("bet", pid, bet_tx, stake, p.native.bet(token, bet_tx, rid, _amount(stake), "EUR"))
        await p.storm(bet, time.monotonic() + 8)
        if bet.result != "ok":
            continue
        if random.random() < 0.3:
            rb_tx = f"{pid}-x{rounds}"
            rb = p.record("rollback", pid, rb_tx, stake, p.native.rollback(token, rb_tx, bet_tx, round_id=rid))
            await p.storm(rb, time.monotonic() + 8)
        else:
            prize = random.randint(0, 900)
            win_tx = f"{pid}-w{rounds}"
            win = p.record("win", pid, win_tx, prize, p.native.win(token, win_tx, rid, _amount(prize), "EUR",
                                                                   bet_transaction_id=bet_tx))
            await p.storm(win, time.monotonic() + 8)
        if random.random() < 0.2:  # a late retry of the bet, after it was settled: answered, moves nothing
            late = Outcome("bet", pid, bet_tx, stake, bet.call)
            await p.definitive(late, time.monotonic() + 8)
            if late.result == "refused":
                p.tally.disagreements.append(f"{bet_tx}: late retry of an accepted bet refused {late.answers}")
        await asyncio.sleep(random.uniform(0.0, 0.05))


async def _faults(p: Provider, stack: Stack, token: str, started: float) -> None:
    """Kill each part on schedule; after its restart, time how long until a new bet is accepted."""
    for n, (what, at) in enumerate(FAULTS):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await stack.kill(what)
        p.tally.faults[what] += 1
        back = time.monotonic()
        probe_tx = f"probe-{n}-{uuid.uuid4().hex[:6]}"
        probe = p.record("bet", "probe", probe_tx, 100, p.native.bet(token, probe_tx, probe_tx, "1.00", "EUR"))
        await p.definitive(probe, back + SETTLE_DEADLINE_S)
        p.tally.resumed_s[what] = round(time.monotonic() - back, 2)


async def test_money_survives_writer_nats_and_postgres_kills(tmp_path: Path) -> None:
    random.seed(7)
    stack = Stack(tmp_path)
    tally = Tally()
    try:
        await stack.start()
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, stack)
            p = Provider(http, stack, tally)
            players: list[tuple[dict[str, str], str]] = []
            for i in range(PLAYERS + 1):
                pid = "probe" if i == PLAYERS else f"fp{i}-{uuid.uuid4().hex[:6]}"
                player = {"tenant_id": "t1", "brand_id": "b1", "license": "MGA", "player_id": pid,
                          "currency": "EUR"}
                await _operator(http, stack.base, "POST", "/v1/wallet/deposit",
                                json={**player, "amount": _amount(START_CENTS), "idempotency_key": f"dep-{pid}"})
                launch = await _operator(http, stack.base, "POST", "/v1/sessions",
                                         json={**player, "provider_id": "demo"})
                verdict, auth = await p.once(p.native.authenticate(launch["launch_token"]))
                assert verdict == "ok", auth
                players.append((player, auth["session_token"]))

            started = time.monotonic()
            stop_at = started + LOAD_S
            faults = asyncio.create_task(_faults(p, stack, players[-1][1], started))
            await asyncio.gather(*(_player_loop(p, pl, tok, stop_at) for pl, tok in players[:-1]))
            await faults

            # whatever is still without a definitive answer is sent again until it has one
            final = time.monotonic() + SETTLE_DEADLINE_S
            await asyncio.gather(*(p.definitive(o, final) for o in tally.outcomes if o.result == "unknown"))
            lost = [o.tx_id for o in tally.outcomes if o.result == "unknown"]
            assert not lost, f"never answered: {lost[:10]}\n{stack.log_tails()}"

            expected: dict[str, int] = {}
            for o in tally.outcomes:
                if o.result == "ok":
                    sign = -1 if o.kind == "bet" else 1
                    expected[o.player] = expected.get(o.player, START_CENTS) + sign * o.cents
            balances = {}
            for player, _ in players:
                body = await _operator(http, stack.base, "GET", "/v1/wallet/balance", params={
                    "brand_id": "b1", "player_id": player["player_id"], "currency": "EUR"})
                balances[player["player_id"]] = _cents(body["balance"])

        ok = [o.tx_id for o in tally.outcomes if o.result == "ok"]
        refused = [o.tx_id for o in tally.outcomes if o.result == "refused"]
        rows: dict[str, list[str]] = {}
        moved: set[str] = set()
        dsn = stack.env["GATEWAY_PG_DSNS"]
        for shard in range(SHARDS):
            conn = await connect(dsn, shard)
            try:
                for r in await conn.fetch("SELECT tx_id, status FROM transactions WHERE provider_id = 'demo'"):
                    rows.setdefault(r["tx_id"], []).append(r["status"])
                moved |= {r["tx_id"] for r in await conn.fetch(
                    "SELECT DISTINCT t.tx_id FROM transactions t JOIN entries e USING (ledger_tx)"
                    " WHERE t.provider_id = 'demo'")}
            finally:
                await conn.close()
        reconcile = stack.reconcile()
        dead = stack.dead_children()
    finally:
        stack.stop()

    report = {
        "calls": len(tally.outcomes), "requests": tally.requests, "statuses": dict(tally.statuses),
        "transport_errors": tally.transport_errors, "faults": dict(tally.faults), "resumed_s": tally.resumed_s,
        "ok": len(ok), "refused": len(refused), "reconcile_exit": reconcile.returncode,
    }
    (tmp_path / "fault-report.json").write_text(json.dumps(report, indent=2))
    print("fault run:", json.dumps(report))

    assert tally.faults == Counter({"writer": 1, "nats": 1, "postgres": 1}), report
    assert not dead, f"{dead}: a fault must not kill the gateway or the relay"
    assert not tally.disagreements, tally.disagreements[:10]
    assert tally.statuses.get(500, 0) == 0, f"internal errors under faults: {report}"
    for tx in ok:
        assert len(rows.get(tx, [])) == 1 and rows[tx][0] in APPLIED, (tx, rows.get(tx))
    for tx in refused:
        assert tx not in moved, f"{tx} was refused but moved money"
        assert all(s not in APPLIED for s in rows.get(tx, [])), (tx, rows.get(tx))
    assert balances == {pid: expected.get(pid, START_CENTS) for pid in balances}, report
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    for what, seconds in tally.resumed_s.items():
        assert seconds <= RESUME_BOUND_S, f"service took {seconds} s to resume after {what} restarted: {report}"
    assert len(ok) > 50, f"too little got through to prove anything: {report}"
