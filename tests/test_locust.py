"""The Locust scenarios really drive a gateway, and their journals reconcile with the ledger.

A short headless run of every user class (native and Pragmatic rounds, retry storms, rollbacks before and
after their bets, one hot player; the websocket watchers idle while the gateway has no ``/v1/ws``), then
the checker: every success in the ledger exactly once, every refusal moved nothing, balances equal to the
answers' sums, ``gateway reconcile`` clean. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.native import NativeClient
from gateway.settings import Settings
from loadtests.check import check
from loadtests.journal import Answer, Journal, Money, classify, read_journals
from loadtests.plan import burst_plan
from tests.support import DEMO_SECRET, OPERATOR_KEY, PRAGMATIC_SECRET

ROOT = Path(__file__).resolve().parents[1]


def load_env(journal: Path) -> dict[str, str]:
    return {**os.environ, "GW_OPERATOR_KEY": OPERATOR_KEY, "GW_PROVIDER_SECRET": DEMO_SECRET,
            "GW_PRAGMATIC_SECRET": PRAGMATIC_SECRET, "GW_PRAGMATIC_PROVIDER": "pragmatic",
            "GW_LOAD_JOURNAL": str(journal), "GW_LOAD_SHAPE": "none"}


@pytest.mark.slow
async def test_locust_scenarios_reconcile_with_the_ledger(gateway: Any, writers: Settings, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--host", gateway.base_url, "--headless", "-u", "12", "-r", "12", "-t", "5s", "--stop-timeout", "0",
        "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING",
        env=load_env(journal), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    (tmp_path / "locust.log").write_bytes(out)
    # Locust exits 1 when any request "failed": retryable answers are counted as failures on purpose
    assert proc.returncode in (0, 1), out.decode()[-2000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    for name in ("native bet", "pragmatic bet", "native rollback", "native bet (late copy)", "ws probe"):
        assert name in rows and int(rows[name]["Request Count"]) > 0, (name, out.decode()[-3000:])

    result = await check(str(journal), gateway.base_url, OPERATOR_KEY, writers.shard_dsns())
    assert result.ok, "\n".join(result.problems[:20])
    assert result.ledger_checked and result.succeeded > 0 and result.wallets > 1
    assert {"native bet", "native win", "native rollback", "pragmatic bet", "operator deposit"} <= set(result.by_kind)
    # rollbacks that overtook their bets made those bets refused, and the checker saw them move nothing
    assert result.by_kind["native bet"]["refused"] > 0


async def test_checker_flags_a_lost_success_a_moved_refusal_and_a_resent_unknown(
        gateway: Any, writers: Settings, api: Any, tmp_path: Path) -> None:
    player, token = await api.funded("50.00")
    native = NativeClient("demo", DEMO_SECRET)
    j = Journal(tmp_path)

    def money(kind: str, tx: str, amount: int) -> Money:
        return Money("native", "demo", kind, "b1", player["player_id"], "EUR", tx, amount)

    ns = api.ns
    # 1. a bet the journal says succeeded, but it was never sent: lost
    lost = j.sent(money("bet", f"{ns}lost", 100), native.bet(token, f"{ns}lost", f"{ns}r1", "1.00", "EUR"))
    j.done(lost, Answer.OK, "OK")
    # 2. a bet that did land, but the journal says it was refused: money moved on a refusal
    moved = native.bet(token, f"{ns}moved", f"{ns}r2", "2.00", "EUR")
    assert (await api.send(moved))[0] == 200
    j.done(j.sent(money("bet", f"{ns}moved", 200), moved), Answer.REFUSED, "insufficient_funds")
    # 3. a bet never answered: the checker sends it and then expects it in the ledger
    j.sent(money("bet", f"{ns}unknown", 300), native.bet(token, f"{ns}unknown", f"{ns}r3", "3.00", "EUR"))
    j.close()

    result = await check(str(tmp_path), gateway.base_url, OPERATOR_KEY, writers.shard_dsns(), full_reconcile=False)
    assert result.resent_unknown == 1
    text = "\n".join(result.problems)
    assert f"demo/{ns}lost: answered success but not in the ledger (lost)" in text
    assert f"demo/{ns}moved: answered refusal, ledger moved -200, expected 0" in text
    assert f"{ns}unknown" not in text  # re-sent, landed, and accounted for
    assert await api.balance(player) == "45.00"  # 50 - 2 (landed) - 3 (re-sent)


def test_answers_are_classified_as_providers_retry_them(tmp_path: Path) -> None:
    j = orjson.dumps
    assert classify("native", 200, j({"status": "OK", "duplicate": True}))[0] is Answer.OK
    assert classify("native", 402, j({"status": "ERROR", "code": "insufficient_funds", "retryable": False}))[0] \
        is Answer.REFUSED
    assert classify("native", 503, j({"status": "ERROR", "code": "overloaded", "retryable": True}))[0] is Answer.RETRY
    assert classify("native", 429, j({"status": "ERROR", "retryable": True}))[0] is Answer.RETRY
    assert classify("native", 0, b"")[0] is Answer.RETRY  # the connection dropped: unknown, send again
    assert classify("pragmatic", 200, j({"error": 0}))[0] is Answer.OK
    assert classify("pragmatic", 200, j({"error": 100}))[0] is Answer.RETRY
    assert classify("pragmatic", 200, j({"error": 1}))[0] is Answer.REFUSED
    assert classify("operator", 200, j({"balance": "1.00"}))[0] is Answer.OK
    journal = Journal(tmp_path)
    journal.done(journal.sent(Money("native", "demo", "bet", "b1", "p", "EUR", "t", 1),
                              NativeClient("demo", "s").balance("x")), Answer.OK, "OK")
    journal.close()
    assert [r["e"] for r in read_journals(tmp_path)] == ["s", "d"]


def test_the_tournament_burst_ramps_spikes_holds_and_falls() -> None:
    plan = burst_plan(50, 100)
    targets = [target for _, target, _, _ in plan]
    assert targets == [50, 50, 200, 200, 50, 50]
    assert plan[-1][0] == 100
