"""Every event type, driven through the real stack, matches its versioned contract; ``gateway events tail``."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
import uuid
from typing import Any

import orjson
import pytest

from contracts import event_problems, event_schemas
from gateway.events import parse_since, tail, tail_subject
from tests.support import Api

ALL_TYPES = {"bet.placed", "bet.settled", "bet.rolled_back", "wallet.debited", "wallet.credited", "round.closed",
             "rg.limit_reached"}


async def drive_every_event_type(api: Api, brand: str) -> dict[str, str]:
    """Deposit, withdraw, bet, win closing its round, bet + rollback, end of round, a bet over the stake limit."""
    player, token = await api.funded("50.00", brand=brand)
    status, _ = await api.operator("POST", "/v1/wallet/withdraw",
                                   {**player, "amount": "1.00", "idempotency_key": uuid.uuid4().hex})
    assert status == 200
    assert (await api.bet(token, "b-1", "r-1", "2.00"))[0] == 200
    assert (await api.win(token, "w-1", "r-1", "3.00", bet_transaction_id="b-1", round_closed=True))[0] == 200
    assert (await api.bet(token, "b-2", "r-2", "1.00"))[0] == 200
    assert (await api.rollback(token, "rb-2", "b-2"))[0] == 200
    assert (await api.bet(token, "b-3", "r-3", "1.00"))[0] == 200
    assert (await api.end_round(token, "r-3"))[0] == 200
    status, _ = await api.operator("PUT", "/v1/players/limits", {**player, "limits": {"max_stake": "0.50"},
                                                                 "idempotency_key": uuid.uuid4().hex})
    assert status == 200
    status, body = await api.bet(token, "b-4", "r-4", "0.51")
    assert status == 403 and body["code"] == "stake_limit"
    return player


async def test_every_event_type_is_published_and_valid(api: Api, gateway: Any) -> None:
    assert {t for t, _ in event_schemas()} == ALL_TYPES and {v for _, v in event_schemas()} == {1}
    brand = "contracts-" + api.ns.rstrip("-")
    player = await drive_every_event_type(api, brand)
    out = io.StringIO()
    stop = asyncio.Event()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    reader = asyncio.create_task(tail(gateway.state.settings, brand=brand, since=since, out=out, stop=stop))
    deadline = time.monotonic() + 15
    while {orjson.loads(line)["type"] for line in out.getvalue().splitlines()} != ALL_TYPES:
        assert time.monotonic() < deadline, out.getvalue()
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(reader, 10)
    events = [orjson.loads(line) for line in out.getvalue().splitlines()]
    problems = [p for e in events for p in event_problems(e)]
    assert problems == []
    assert all(e["player_id"] == player["player_id"] and e["brand_id"] == brand for e in events)
    (refusal,) = [e for e in events if e["type"] == "rg.limit_reached"]
    assert refusal["limit"] == "stake_limit" and refusal["amount"] == 51 and refusal["balance"] == 4900
    closed = sorted((e["round_id"], e["bet_total"], e["win_total"]) for e in events if e["type"] == "round.closed")
    assert closed == [(api.ns + "r-1", 200, 300), (api.ns + "r-3", 100, 0)]


async def test_tail_filters_by_type_and_stops_by_itself(api: Api, gateway: Any) -> None:
    brand = "tail-" + api.ns.rstrip("-")
    _, token = await api.funded("5.00", brand=brand)
    await api.bet(token, "b-1", "r-1", "1.00")
    out = io.StringIO()
    n = await asyncio.wait_for(tail(gateway.state.settings, brand=brand, etype="wallet.debited",
                                    since=parse_since("5m"), out=out, limit=1), 15)
    assert n == 1
    (line,) = out.getvalue().splitlines()
    event = orjson.loads(line)
    assert event["type"] == "wallet.debited" and event["amount"] == 100 and event["balance"] == 400


def test_tail_arguments() -> None:
    from core.settings import Settings

    s = Settings(namespace="ns1")
    assert tail_subject(s, None, None) == "ns1.events.*.*.>"
    assert tail_subject(s, "b.1", "bet.placed") == "ns1.events.*.b_1.bet.placed"
    assert tail_subject(s, None, "bet") == "ns1.events.*.*.bet.*"
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_since("15m", now) == now - dt.timedelta(minutes=15)
    assert parse_since("2026-01-01T00:00:00", now) == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now)


@pytest.mark.slow
async def test_tail_command_prints_json_lines_until_interrupted(api: Api, gateway: Any) -> None:
    import os
    import signal
    import sys

    brand = "tailcli-" + api.ns.rstrip("-")
    await api.funded("3.00", brand=brand)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(gateway.state.settings.env())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "events", "tail", "--brand", brand, "--since", "10m",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        event = orjson.loads(line)
        assert event["type"] == "wallet.credited" and event["brand_id"] == brand and event["amount"] == 300
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, (await proc.stderr.read()).decode() if proc.stderr else code
