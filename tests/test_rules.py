"""The money rules as a pure function of loaded state (no database: the integration suites cover that)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from ledger.commands import Command, Kind, Status
from ledger.rules import Account, BatchState, Engine, Limit

NOW = 1_790_000_000_000


def cmd(kind: Kind, tx: str, amount: int = 0, player: str = "p1", **kw: Any) -> Command:
    base: dict[str, Any] = dict(cmd_id=kw.pop("cmd_id", uuid.uuid4().hex), kind=kind, tenant_id="t", brand_id="b",
                                license="MGA", player_id=player, currency="EUR", provider_id="pv", tx_id=tx,
                                round_id=kw.pop("round_id", "r1"), traceparent="00-x-y-01", amount=amount)
    base.update(kw)
    return Command(**base)


def engine(balance: int = 1000, **state: Any) -> Engine:
    st = BatchState(**state)
    ids = itertools.count(1)
    for kind, player in (("player", "p1"), ("player", "p2"), ("house", ""), ("cash", "")):
        st.accounts[(kind, "b", player, "EUR")] = Account(next(ids), balance if kind == "player" else 0,
                                                          kind == "player")
    return Engine(st, batch_seq=1, now_ms=NOW, tx_ids=list(range(100, 200)), cooling_off_ms=60_000)


def test_bet_and_win_in_one_batch_and_balanced_entries() -> None:
    e = engine()
    assert e.apply(cmd(Kind.BET, "b1", 300)).status is Status.OK
    r = e.apply(cmd(Kind.WIN, "w1", 500, ref_tx_id="b1"))
    assert r.status is Status.OK and r.balance == 1200
    assert sum(a for _, _, a in e.m.entries) == 0
    by_tx: dict[int, int] = {}
    for ltx, _, amount in e.m.entries:
        by_tx[ltx] = by_tx.get(ltx, 0) + amount
    assert set(by_tx.values()) == {0}
    assert e.m.balance_deltas[3] == 300 - 500  # house: one delta for the whole batch


def test_duplicate_within_batch_and_redelivery() -> None:
    e = engine()
    first = cmd(Kind.BET, "b1", 100)
    e.apply(first)
    retry = e.apply(cmd(Kind.BET, "b1", 100))
    assert retry.duplicate and retry.status is Status.OK and retry.balance == 900
    redelivered = e.apply(first)  # the very same attempt again: first answer for its caller
    assert not redelivered.duplicate and redelivered.ledger_tx == retry.ledger_tx
    assert e.apply(cmd(Kind.BET, "b1", 101)).status is Status.CONFLICT
    assert len(e.m.txs) == 1


def test_free_round_bet_moves_no_money_and_single_settlement() -> None:
    e = engine()
    assert e.apply(cmd(Kind.BET, "b1", 100, free_round=True)).balance == 1000
    assert e.apply(cmd(Kind.WIN, "c1", 50, ref_tx_id="b1", single_settlement=True)).balance == 1050
    assert e.apply(cmd(Kind.WIN, "c2", 50, ref_tx_id="b1", single_settlement=True)).status is Status.BET_ALREADY_SETTLED
    assert e.apply(cmd(Kind.ROLLBACK, "x1", ref_tx_id="b1", single_settlement=True)).status is (
        Status.BET_ALREADY_SETTLED)


def test_settlements_check_the_player() -> None:
    e = engine()
    e.apply(cmd(Kind.BET, "b1", 100))
    assert e.apply(cmd(Kind.WIN, "w1", 100, ref_tx_id="b1", player="p2")).status is Status.BET_NOT_FOUND
    assert e.apply(cmd(Kind.ROLLBACK, "rb", ref_tx_id="b1", player="p2")).status is Status.BET_NOT_FOUND


def test_round_win_without_reference() -> None:
    e = engine()
    assert e.apply(cmd(Kind.WIN, "w0", 100, round_id="r9")).status is Status.ROUND_NOT_FOUND
    e.apply(cmd(Kind.BET, "b1", 100, round_id="r9"))
    e.apply(cmd(Kind.ROLLBACK, "rb1", ref_tx_id="b1"))
    assert e.apply(cmd(Kind.WIN, "w1", 100, round_id="r9")).status is Status.TX_ROLLED_BACK


def test_limits_stricter_now_looser_after_cooling_off() -> None:
    e = engine()
    e.apply(cmd(Kind.RG_SET, "l1", limits={"max_stake": 100}))
    assert e.apply(cmd(Kind.BET, "b1", 101)).status is Status.STAKE_LIMIT
    e.apply(cmd(Kind.RG_SET, "l2", limits={"max_stake": 500}))
    assert e.apply(cmd(Kind.BET, "b2", 200)).status is Status.STAKE_LIMIT  # still 100 until cooling-off ends
    lim = e.s.limits[("b", "p1")]["max_stake"]
    assert lim.value == 100 and lim.pending_value == 500 and lim.pending_from_ms == NOW + 60_000
    e.now_ms = NOW + 60_000
    assert e.apply(cmd(Kind.BET, "b3", 200)).status is Status.OK
    e.apply(cmd(Kind.RG_SET, "l3", limits={"max_stake": None}))  # removal is a loosening too
    assert e.s.limits[("b", "p1")]["max_stake"].effective(e.now_ms) == 500


def test_self_exclusion_cannot_be_shortened_early() -> None:
    e = engine(limits={("b", "p1"): {"self_exclude_until_ms": Limit(NOW + 10 * 86_400_000)}})
    e.apply(cmd(Kind.RG_SET, "l1", limits={"self_exclude_until_ms": NOW}))
    lim = e.s.limits[("b", "p1")]["self_exclude_until_ms"]
    assert lim.effective(NOW + 86_400_000) == NOW + 10 * 86_400_000
    assert e.apply(cmd(Kind.BET, "b1", 1)).status is Status.SELF_EXCLUDED


def test_loss_limit_counts_wins_and_rollbacks() -> None:
    e = engine(limits={("b", "p1"): {"loss_week": Limit(300)}})
    assert e.apply(cmd(Kind.BET, "b1", 200, round_id="r1")).status is Status.OK
    assert e.apply(cmd(Kind.BET, "b2", 200, round_id="r2")).status is Status.LOSS_LIMIT
    e.apply(cmd(Kind.WIN, "w1", 150, ref_tx_id="b1"))  # net loss now 50
    assert e.apply(cmd(Kind.BET, "b3", 200, round_id="r3")).status is Status.OK  # 250
    e.apply(cmd(Kind.ROLLBACK, "rb3", ref_tx_id="b3"))  # back to 50
    assert e.apply(cmd(Kind.BET, "b4", 250, round_id="r4")).status is Status.OK


def test_withdraw_and_deposit_use_the_cash_account() -> None:
    e = engine(balance=100)
    assert e.apply(cmd(Kind.WITHDRAW, "wd1", 101)).status is Status.INSUFFICIENT_FUNDS
    assert e.apply(cmd(Kind.DEPOSIT, "dp1", 50)).balance == 150
    assert e.s.accounts[("cash", "b", "", "EUR")].balance == -50


def test_events_name_every_money_movement() -> None:
    e = engine()
    e.apply(cmd(Kind.BET, "b1", 100))
    e.apply(cmd(Kind.WIN, "w1", 50, ref_tx_id="b1"))
    e.apply(cmd(Kind.BET, "b2", 100, round_id="r2"))
    e.apply(cmd(Kind.ROLLBACK, "rb2", ref_tx_id="b2"))
    types = [subject.rsplit(".", 2)[-2] + "." + subject.rsplit(".", 1)[-1] for _, subject, _ in e.m.events]
    assert types == ["bet.placed", "wallet.debited", "bet.settled", "wallet.credited", "bet.placed",
                     "wallet.debited", "bet.rolled_back", "wallet.credited"]
    assert all(subject.startswith("events.t.b.") for _, subject, _ in e.m.events)


def test_jackpot_and_promo_credits_need_no_bet() -> None:
    e = engine()
    assert e.apply(cmd(Kind.WIN, "j1", 500, round_id="jp", credit_type="jackpot")).status is Status.OK
    assert e.apply(cmd(Kind.WIN, "p1", 100, round_id="promo-1", credit_type="promo")).balance == 1600
    assert e.apply(cmd(Kind.WIN, "w1", 100, round_id="plain")).status is Status.ROUND_NOT_FOUND
