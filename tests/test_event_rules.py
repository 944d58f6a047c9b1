"""The two events the engine adds to the money events: round.closed and rg.limit_reached (pure rules)."""

from __future__ import annotations

import orjson

from contracts import event_problems
from core.commands import Kind, Status
from ledger.rules import Limit
from tests.test_rules import cmd, engine


def events(e: object) -> list[dict[str, object]]:
    return [orjson.loads(payload) for _, _, payload in e.m.events]  # type: ignore[attr-defined]


def test_round_closed_once_after_the_closing_commands_events() -> None:
    e = engine()
    e.apply(cmd(Kind.BET, "b1", 300))
    e.apply(cmd(Kind.WIN, "w1", 500, ref_tx_id="b1", round_closed=True))
    e.apply(cmd(Kind.END_ROUND, "end1"))  # already closed: no second round.closed
    got = events(e)
    assert [ev["type"] for ev in got] == ["bet.placed", "wallet.debited", "bet.settled", "wallet.credited",
                                          "round.closed"]
    closed = got[-1]
    assert closed["round_id"] == "r1" and closed["bet_total"] == 300 and closed["win_total"] == 500
    assert closed["amount"] == 500 and closed["balance"] == 1200
    assert closed["id"] == f"{closed['ledger_tx']}:round.closed"


def test_end_round_and_rollback_close_rounds() -> None:
    e = engine()
    e.apply(cmd(Kind.BET, "b1", 100, round_id="r1"))
    e.apply(cmd(Kind.END_ROUND, "e1", round_id="r1"))
    e.apply(cmd(Kind.BET, "b2", 100, round_id="r2"))
    e.apply(cmd(Kind.ROLLBACK, "rb2", ref_tx_id="b2", round_closed=True))
    got = [ev for ev in events(e) if ev["type"] == "round.closed"]
    assert [(ev["round_id"], ev["tx_id"], ev["bet_total"]) for ev in got] == [("r1", "e1", 100), ("r2", "rb2", 0)]


def test_rg_refusal_is_an_event_in_the_same_batch_and_moves_nothing() -> None:
    e = engine(limits={("b", "p1"): {("EUR", "max_stake"): Limit(200)}})
    r = e.apply(cmd(Kind.BET, "b1", 300))
    assert r.status is Status.STAKE_LIMIT and r.balance == 1000
    (ev,) = events(e)
    assert ev["type"] == "rg.limit_reached" and ev["limit"] == "stake_limit"
    assert ev["amount"] == 300 and ev["balance"] == 1000 and ev["id"] == f"{r.ledger_tx}:rg.limit_reached"
    assert e.m.entries == [] and len(e.m.txs) == 1  # the refusal row, nothing else
    assert e.apply(cmd(Kind.BET, "b1", 300)).duplicate and len(e.m.events) == 1  # a retry announces nothing


def test_self_exclusion_refusal_is_announced() -> None:
    e = engine(limits={("b", "p1"): {("", "self_exclude_until_ms"): Limit(2_000_000_000_000)}})
    assert e.apply(cmd(Kind.BET, "b1", 10)).status is Status.SELF_EXCLUDED
    assert [ev["limit"] for ev in events(e)] == ["self_excluded"]


def test_engine_events_match_their_contracts() -> None:
    e = engine(limits={("b", "p2"): {("EUR", "loss_day"): Limit(50)}})
    e.apply(cmd(Kind.DEPOSIT, "d1", 100))
    e.apply(cmd(Kind.WITHDRAW, "wd1", 50))
    e.apply(cmd(Kind.BET, "b1", 300))
    e.apply(cmd(Kind.WIN, "w1", 500, ref_tx_id="b1", round_closed=True))
    e.apply(cmd(Kind.BET, "b2", 100, round_id="r2"))
    e.apply(cmd(Kind.ROLLBACK, "rb2", ref_tx_id="b2"))
    e.apply(cmd(Kind.BET, "b3", 100, player="p2", round_id="r3"))
    got = events(e)
    assert {ev["type"] for ev in got} == {"bet.placed", "bet.settled", "bet.rolled_back", "wallet.debited",
                                          "wallet.credited", "round.closed", "rg.limit_reached"}
    for ev in got:
        ev["traceparent"] = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"  # the helper's is a placeholder
        assert event_problems(ev) == []
