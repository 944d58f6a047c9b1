"""The money rules as a pure function of loaded state (no database: the integration suites cover that)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from core.commands import INT64_MAX, Command, Kind, Status
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
    lim = e.s.limits[("b", "p1")][("EUR", "max_stake")]
    assert lim.value == 100 and lim.pending_value == 500 and lim.pending_from_ms == NOW + 60_000
    e.now_ms = NOW + 60_000
    assert e.apply(cmd(Kind.BET, "b3", 200)).status is Status.OK
    e.apply(cmd(Kind.RG_SET, "l3", limits={"max_stake": None}))  # removal is a loosening too
    assert e.s.limits[("b", "p1")][("EUR", "max_stake")].effective(e.now_ms) == 500


def test_self_exclusion_cannot_be_shortened_early() -> None:
    e = engine(limits={("b", "p1"): {("", "self_exclude_until_ms"): Limit(NOW + 10 * 86_400_000)}})
    e.apply(cmd(Kind.RG_SET, "l1", limits={"self_exclude_until_ms": NOW}))
    lim = e.s.limits[("b", "p1")][("", "self_exclude_until_ms")]
    assert lim.effective(NOW + 86_400_000) == NOW + 10 * 86_400_000
    assert e.apply(cmd(Kind.BET, "b1", 1)).status is Status.SELF_EXCLUDED


def test_loss_limit_counts_wins_and_rollbacks() -> None:
    e = engine(limits={("b", "p1"): {("EUR", "loss_week"): Limit(300)}})
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


# --- house/cash accounts are unbounded; a wallet is an int64 --------------------------------------------
def test_house_and_cash_take_any_sum_beyond_int64() -> None:
    e = engine(balance=0)
    near_max = INT64_MAX - 10
    assert e.apply(cmd(Kind.DEPOSIT, "d1", near_max)).status is Status.OK
    assert e.apply(cmd(Kind.DEPOSIT, "d2", near_max, player="p2")).status is Status.OK
    cash = e.s.accounts[("cash", "b", "", "EUR")]
    assert cash.balance == -2 * near_max  # beyond int64: a Python int, a numeric in the database
    assert e.m.balance_deltas[cash.account_id] == -2 * near_max
    # the house takes two near-maximum stakes of two players, then pays both back
    assert e.apply(cmd(Kind.BET, "b1", near_max, round_id="r1")).status is Status.OK
    assert e.apply(cmd(Kind.BET, "b2", near_max, player="p2", round_id="r2")).status is Status.OK
    assert e.s.accounts[("house", "b", "", "EUR")].balance == 2 * near_max
    assert e.apply(cmd(Kind.WIN, "w1", near_max, ref_tx_id="b1")).balance == near_max
    assert e.apply(cmd(Kind.WIN, "w2", near_max, ref_tx_id="b2", player="p2", round_id="r2")).balance == near_max
    assert sum(a for _, _, a in e.m.entries) == 0


def test_a_credit_that_would_pass_int64_in_a_wallet_is_refused_not_applied() -> None:
    e = engine(balance=0)
    assert e.apply(cmd(Kind.DEPOSIT, "d1", INT64_MAX)).status is Status.OK
    r = e.apply(cmd(Kind.DEPOSIT, "d2", 1))
    assert r.status is Status.BAD_COMMAND and "int64" in r.detail and r.balance == INT64_MAX
    r = e.apply(cmd(Kind.WIN, "j1", 1, credit_type="jackpot", round_id="jp"))
    assert r.status is Status.BAD_COMMAND and r.balance == INT64_MAX
    assert e.apply(cmd(Kind.WIN, "j2", 0, credit_type="jackpot", round_id="jp")).status is Status.OK
    assert len(e.m.entries) == 2  # only the first deposit moved money


# --- a round's state is per player (live tables share one round id) ---------------------------------------
def test_players_at_one_live_table_share_the_round_id() -> None:
    e = engine()
    assert e.apply(cmd(Kind.BET, "b1", 100, round_id="g-77")).status is Status.OK
    assert e.apply(cmd(Kind.BET, "b2", 200, round_id="g-77", player="p2")).status is Status.OK
    assert e.apply(cmd(Kind.WIN, "c1", 300, ref_tx_id="b1", round_id="g-77", single_settlement=True)).balance == 1200
    r = e.apply(cmd(Kind.WIN, "c2", 500, ref_tx_id="b2", round_id="g-77", single_settlement=True, player="p2"))
    assert r.status is Status.OK and r.balance == 1300
    assert set(e.m.rounds) == {("b", "pv", "g-77", "p1"), ("b", "pv", "g-77", "p2")}
    assert (e.m.rounds[("b", "pv", "g-77", "p2")].bet_total, e.m.rounds[("b", "pv", "g-77", "p2")].win_total) == (
        200, 500)


def test_round_wins_and_ends_are_each_players_own() -> None:
    e = engine()
    e.apply(cmd(Kind.BET, "b1", 100, round_id="r5"))
    # a plain win without a reference settles only the caller's own round: p2 has none
    assert e.apply(cmd(Kind.WIN, "w2", 100, round_id="r5", player="p2")).status is Status.ROUND_NOT_FOUND
    e.apply(cmd(Kind.BET, "b2", 100, round_id="r5", player="p2"))
    assert e.apply(cmd(Kind.END_ROUND, "e1", round_id="r5")).status is Status.OK  # p1 ends theirs
    assert e.apply(cmd(Kind.BET, "b3", 100, round_id="r5")).status is Status.ROUND_CLOSED
    assert e.apply(cmd(Kind.BET, "b4", 100, round_id="r5", player="p2")).status is Status.OK  # still open
    assert e.apply(cmd(Kind.WIN, "w3", 50, round_id="r5", player="p2")).balance == 850


# --- money limits are per currency ------------------------------------------------------------------------
def test_money_limits_hold_for_their_currency_only() -> None:
    e = engine()
    e.s.accounts[("player", "b", "p1", "JPY")] = Account(10, 100_000, True)
    e.s.accounts[("house", "b", "", "JPY")] = Account(11, 0, False)
    e.apply(cmd(Kind.RG_SET, "l1", limits={"max_stake": 100, "session_minutes": 30}))  # EUR 1.00
    assert e.apply(cmd(Kind.BET, "b1", 101)).status is Status.STAKE_LIMIT
    assert e.apply(cmd(Kind.BET, "b2", 5_000, currency="JPY")).status is Status.OK  # no JPY limit
    e.apply(cmd(Kind.RG_SET, "l2", limits={"max_stake": 1_000}, currency="JPY"))
    assert e.apply(cmd(Kind.BET, "b3", 1_001, currency="JPY")).status is Status.STAKE_LIMIT
    assert e.apply(cmd(Kind.BET, "b4", 100)).status is Status.OK  # EUR still 1.00, not 10.00
    assert set(e.m.limits) == {("b", "p1", "EUR", "max_stake"), ("b", "p1", "", "session_minutes"),
                               ("b", "p1", "JPY", "max_stake")}
    # session and self-exclusion limits hold for every currency
    late = NOW - 31 * 60_000
    assert e.apply(cmd(Kind.BET, "b5", 1, currency="JPY", session_started_ms=late)).status is Status.SESSION_LIMIT


def test_loss_limits_count_their_own_currency() -> None:
    e = engine(limits={("b", "p1"): {("EUR", "loss_day"): Limit(300)}})
    e.s.accounts[("player", "b", "p1", "JPY")] = Account(10, 100_000, True)
    e.s.accounts[("house", "b", "", "JPY")] = Account(11, 0, False)
    assert e.apply(cmd(Kind.BET, "b1", 50_000, currency="JPY", round_id="j1")).status is Status.OK
    assert e.apply(cmd(Kind.BET, "b2", 300, round_id="e1")).status is Status.OK  # JPY losses do not count
    assert e.apply(cmd(Kind.BET, "b3", 1, round_id="e2")).status is Status.LOSS_LIMIT


def test_legacy_limit_without_currency_holds_until_one_is_set_for_the_currency() -> None:
    e = engine(limits={("b", "p1"): {("", "max_stake"): Limit(100)}})
    assert e.apply(cmd(Kind.BET, "b1", 101)).status is Status.STAKE_LIMIT
    e.apply(cmd(Kind.RG_SET, "l1", limits={"max_stake": 500}))  # looser than the legacy value: cooling-off
    assert e.apply(cmd(Kind.BET, "b2", 101)).status is Status.STAKE_LIMIT
    e.apply(cmd(Kind.RG_SET, "l2", limits={"max_stake": 50}))  # stricter: at once
    assert e.apply(cmd(Kind.BET, "b3", 51)).status is Status.STAKE_LIMIT
    assert e.s.limits[("b", "p1")][("", "max_stake")].value == 100  # the legacy row is left as it was
