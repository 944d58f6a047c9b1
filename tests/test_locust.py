"""The Locust scenarios really drive a gateway, and their journals reconcile with the ledger.

A short headless run of every user class (native and Pragmatic rounds, retry storms, rollbacks before and
after their bets, one hot player, players holding the websocket), then the checker: every success in the
ledger exactly once, every refusal moved nothing, balances equal to the answers' sums, ``gateway
reconcile`` clean, every watcher's last pushed balance equal to the provider's answer. No timing is asserted.
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

from adapters.sim.native import NativeClient
from core.settings import Settings
from loadtests.check import check
from loadtests.journal import Answer, Journal, Money, classify, read_journals
from loadtests.plan import burst_plan
from loadtests.watch import Tally, Watcher, summarize
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
    for name in ("native bet", "pragmatic bet", "native rollback", "native bet (late copy)", "ws connect"):
        assert name in rows and int(rows[name]["Request Count"]) > 0, (name, out.decode()[-3000:])

    result = await check(str(journal), gateway.base_url, OPERATOR_KEY, writers.shard_dsns())
    assert result.ok, "\n".join(result.problems[:20])
    assert result.ledger_checked and result.succeeded > 0 and result.wallets > 1
    assert {"native bet", "native win", "native rollback", "pragmatic bet", "operator deposit"} <= set(result.by_kind)
    # rollbacks that overtook their bets made those bets refused, and the checker saw them move nothing
    assert result.by_kind["native bet"]["refused"] > 0
    # the watchers held sockets, were pushed balances, and each checked round's final balance matched
    ws = result.ws
    assert ws["sockets"] > 0 and ws["pushes"] > 0 and ws["rounds_checked"] > 0, ws
    assert ws["mismatches"] == 0 and ws["order_errors"] == 0, ws
    assert ws["push_lag_ms"]["samples"] > 0


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


def test_watcher_counts_pushes_and_flags_gaps_disorder_and_a_missing_balance(tmp_path: Path) -> None:
    """The watcher's bookkeeping on made-up messages (no socket): conflated pushes are fine, a seq gap or
    a push older than one already seen is an order error, a final balance never pushed is a mismatch."""
    tally = Tally()
    w = Watcher("ws://unused", tally, "p1")
    w.on_message({"type": "hello", "seq": 1, "balance": 1000, "cursor": 50}, 0.0)
    w.answered("b-1", 1.0)
    w.on_message({"type": "round", "seq": 2, "cursor": 40, "balance": 900}, 1.0)  # before hello's cursor: fine
    w.on_message({"type": "balance", "seq": 3, "cursor": 41, "balance": 900, "change": -100, "tx_id": "b-1"}, 1.25)
    assert w.expect(900, within_s=1) and tally.order_errors == 0
    w.on_message({"type": "balance", "seq": 4, "cursor": 45, "balance": 700, "change": -200, "tx_id": "b-3",
                  "conflated": True}, 2.0)
    assert (tally.pushes, tally.conflated, tally.rounds_checked) == (2, 1, 1)
    assert tally.lags_ms == [250.0] and tally.early == 0
    w.on_message({"type": "balance", "seq": 5, "cursor": 46, "balance": 650, "change": -50, "tx_id": "b-5"}, 2.5)
    w.answered("b-5", 2.75)  # the push was read before the answer: lag 0, counted as early
    assert tally.lags_ms == [250.0, 0.0] and tally.early == 1
    w.on_message({"type": "balance", "seq": 7, "cursor": 44, "balance": 600, "change": -100, "tx_id": "b-4"}, 3.0)
    assert tally.order_errors == 2  # seq 7 after 5, cursor 44 after 46
    assert not w.expect(650, within_s=0.05) and tally.mismatches == 1
    tally.write(tmp_path)
    summary = summarize(tmp_path)
    assert (summary["pushes"], summary["mismatches"], summary["order_errors"], summary["early"]) == (4, 1, 2, 1)
    assert summary["push_lag_ms"]["p50"] == 250.0 and len(summary["problems"]) == 3
    assert summarize(tmp_path / "none") == {}


def test_the_tournament_burst_ramps_spikes_holds_and_falls() -> None:
    plan = burst_plan(50, 100)
    targets = [target for _, target, _, _ in plan]
    assert targets == [50, 50, 200, 200, 50, 50]
    assert plan[-1][0] == 100


def test_report_measures_the_sustained_rate_phases_and_verdict(tmp_path: Path) -> None:
    """The report's arithmetic on a made-up run: 20 s of 100 bet+win calls/s, p95 under the SLO for the
    first 12 s only; a reconciliation problem turns the verdict."""
    from loadtests.check import CheckResult
    from loadtests.report import write_report

    cols = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%",
            "Total Request Count", "Total Failure Count"]
    with (tmp_path / "locust_stats_history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(21):
            p95 = 100 if i < 12 else 400
            w.writerow([1000 + i, 10, "POST", "native bet", 0, 0, 20, p95, p95, 100 * i, 0])
            w.writerow([1000 + i, 10, "", "Aggregated", 0, 0, 20, p95, p95, 120 * i, 2 * i])
    with (tmp_path / "locust_stats.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"])
        w.writerow(["native bet", 2000, 0, 100, 20, 300, 400])
        w.writerow(["Aggregated", 2400, 40, 120, 20, 300, 400])
    sample = {"t": 1005.0, "queued": {"bet": 7, "settle": 3}, "shed": 4, "rate_limited": 9, "timeouts": 0,
              "shedding_shards": 1, "by_status": {"200": 2400, "429": 9}}
    before = sample | {"shed": 0, "rate_limited": 0, "by_status": {}}
    common: dict[str, Any] = {
        "args": {"shape": "burst", "users": 10, "seconds": 20, "classes": ["RoundPlayer"], "ws_status": 404},
        "started": 1000.0, "ended": 1020.0, "cpu": {"gateway": 1.2},
        "trivial": {"users": 10, "seconds": 5, "calls": 5000, "rps": 1000.0, "p50_ms": 1.0, "p95_ms": 2.0,
                    "p99_ms": 3.0, "cpu_us_per_call": {"trivial handler": 50.0}},
        "metrics": (before, sample), "samples": [sample]}
    ws = {"sockets": 3, "reconnects": 0, "open_max": 3, "messages": 40, "pushes": 30, "conflated": 2,
          "rounds_checked": 12, "mismatches": 0, "order_errors": 0, "early": 5,
          "push_lag_ms": {"samples": 28, "p50": 4.0, "p95": 9.0, "p99": 9.5, "max": 10.0}, "problems": []}
    md = write_report(tmp_path, result=CheckResult(calls=10, succeeded=10, ws=ws), **common)
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["sustained_at_slo"]["betwin_rps"] == 100.0  # 12 s under the SLO hold a 10 s window
    assert report["sustained_at_slo"]["window_start_s"] == 1  # second 0 has no earlier total to rate from
    assert report["throughput"]["bet_win_calls"] == 2000 and report["throughput"]["calls_per_s"] == 120.0
    assert report["gateway_metrics"]["shed_bets"] == 4 and report["gateway_metrics"]["queued_max"] == {
        "bet": 7, "settle": 3}
    assert report["cpu_us_per_call"]["gateway"] == 500.0  # 1.2 s over 2400 calls
    assert [p["phase"] for p in report["phases"]] == ["ramp", "base", "spike", "hold", "fall", "after"]
    assert (tmp_path / "chart.png").stat().st_size > 0 and "**CLEAN**" in md.read_text()
    assert report["websocket"]["pushes"] == 30 and "problems" not in report["websocket"]
    assert "balance pushes received 30" in md.read_text() and "**mismatches 0**" in md.read_text()
    assert "(5 read before the answer itself" in md.read_text()

    failed = write_report(tmp_path, result=CheckResult(problems=["demo/x: answered success but not in the "
                                                                 "ledger (lost)"]), **common)
    assert "**FAILED**" in failed.read_text() and "(lost)" in failed.read_text()
