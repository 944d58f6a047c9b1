"""Pragmatic Play: hashed form posts, JSON answers with ``error``, exact decimal numbers."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.parse
from decimal import Decimal
from typing import Any

import orjson
import pytest

from adapters.pragmatic import PragmaticAdapter, cash, sign
from adapters.sim import Call
from adapters.sim.pragmatic import PragmaticClient
from core.commands import Kind, Status
from core.errors import LedgerTimeout, Overloaded, RateLimited
from core.records import PlayerSession, ProviderConfig
from tests.adapters.adapter_harness import FakeWallet, Provider, networks, round_property
from tests.adapters.docs_examples import matches, pragmatic_round
from tests.adapters.real_backend import Backend, RealBackend
from tests.support import PRAGMATIC_SECRET

SECRET = "testKey"


async def ask(p: Provider, call: Call) -> dict[str, Any]:
    reply = await p.send(call)
    assert reply.status == 200, reply.body
    data: dict[str, Any] = reply.json
    return data


def form(call: Call) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(call.body.decode(), keep_blank_values=True))


def resign(params: dict[str, str], path: str, secret: str = PRAGMATIC_SECRET) -> Call:
    params = {k: v for k, v in params.items() if k != "hash"}
    params["hash"] = sign(params, secret)
    return Call(path, {"Content-Type": "application/x-www-form-urlencoded"},
                urllib.parse.urlencode(params).encode())


@pytest.fixture
async def player(wallet: Backend, pragmatic: Provider) -> PlayerSession:
    return await wallet.add_player(pragmatic.config.id, balance=100_00)


def bet(p: Provider, s: PlayerSession, amount: int, round_id: str = "1001", **kw: Any) -> Call:
    return p.sim.bet(s.player_id, token=s.token, round_id=round_id, amount=amount,  # type: ignore[no-any-return]
                     currency=s.currency, **kw)


def result(p: Provider, s: PlayerSession, amount: int, round_id: str = "1001", **kw: Any) -> Call:
    return p.sim.result(s.player_id, token=s.token, round_id=round_id,  # type: ignore[no-any-return]
                        amount=amount, currency=s.currency, **kw)


# --- the hash ---------------------------------------------------------------------------------------
def test_hash_is_sorted_pairs_plus_secret() -> None:
    params = {"token": "abc", "providerId": "PragmaticPlay", "gameId": "", "hash": "ignored"}
    expected = hashlib.md5(b"gameId=&providerId=PragmaticPlay&token=abctestKey").hexdigest()
    assert sign(params, SECRET) == expected


def test_cash_renders_exactly() -> None:
    assert orjson.dumps([cash(9989999, "EUR"), cash(5, "EUR"), cash(100, "JPY"), cash(1005, "KWD")]) == (
        b"[99899.99,0.05,100.00,1.005]")


# --- shapes ---------------------------------------------------------------------------------------
async def test_authenticate_exchanges_launch_token(pragmatic: Provider, wallet: Backend,
                                                   player: PlayerSession) -> None:
    launch = await wallet.add_launch_token(player)
    reply = await pragmatic.send(pragmatic.sim.authenticate(launch))
    assert b'"cash":100.00,"bonus":0.00' in reply.body
    data = reply.json
    assert data["error"] == 0 and data["description"] == "Success"
    assert (data["userId"], data["currency"], data["cash"]) == (player.player_id, "EUR", Decimal("100.00"))
    assert (data["country"], data["jurisdiction"]) == ("MT", "MGA")
    session_token = data["token"]
    assert session_token != launch
    # the session token works for play, the launch token cannot be exchanged twice
    assert (await ask(pragmatic, pragmatic.sim.bet(player.player_id, token=session_token, round_id="7",
                                                   amount=1_00, currency="EUR")))["error"] == 0
    again = await ask(pragmatic, pragmatic.sim.authenticate(session_token))  # a game reload
    assert (again["error"], again["token"]) == (0, session_token)
    assert (await ask(pragmatic, pragmatic.sim.authenticate("launch-unknown")))["error"] == 4


async def test_balance(pragmatic: Provider, player: PlayerSession) -> None:
    reply = await pragmatic.send(pragmatic.sim.balance(player.player_id, token=player.token))
    assert reply.body == b'{"currency":"EUR","cash":100.00,"bonus":0.00,"error":0,"description":"Success"}'
    assert (await ask(pragmatic, pragmatic.sim.balance(player.player_id)))["cash"] == Decimal("100.00")
    assert (await ask(pragmatic, pragmatic.sim.balance("ghost")))["error"] == 2


async def test_round(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    b, r, end = pragmatic.sim.round(player.player_id, player.token, currency="EUR", bet=2_50, win=10_05)
    assert form(b)["amount"] == "2.50"
    placed = await ask(pragmatic, b)
    assert placed["error"] == 0 and placed["cash"] == Decimal("97.50") and placed["usedPromo"] == 0
    assert isinstance(placed["transactionId"], int) and placed["transactionId"] > 0
    paid = await ask(pragmatic, r)
    assert (paid["error"], paid["cash"]) == (0, Decimal("107.55"))
    assert paid["transactionId"] != placed["transactionId"]
    ended = await ask(pragmatic, end)
    assert (ended["error"], ended["cash"], ended["bonus"]) == (0, Decimal("107.55"), 0)
    assert (await ask(pragmatic, end))["error"] == 0  # endRound may repeat
    cmds = [(c.kind, c.tx_id) for c in wallet.executed]
    ref_b, ref_r = form(b)["reference"], form(r)["reference"]
    assert cmds == [(Kind.BET, f"bet:{ref_b}"), (Kind.WIN, f"result:{ref_r}"),
                    (Kind.END_ROUND, f"endRound:{form(b)['roundId']}"),
                    (Kind.END_ROUND, f"endRound:{form(b)['roundId']}")]
    assert wallet.executed[1].ref_tx_id is None and wallet.executed[1].round_id == form(b)["roundId"]


# --- retries and idempotency ----------------------------------------------------------------------
async def test_retried_bet_keeps_transaction_id(pragmatic: Provider, wallet: Backend,
                                                player: PlayerSession) -> None:
    b = bet(pragmatic, player, 1_00)
    first, again = await ask(pragmatic, b), await ask(pragmatic, b)
    assert first == again
    assert await wallet.balance(player) == 99_00


async def test_retried_result_keeps_transaction_id(pragmatic: Provider, wallet: Backend,
                                                   player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 1_00))
    r = result(pragmatic, player, 5_00)
    first, again = await ask(pragmatic, r), await ask(pragmatic, r)
    assert first == again and first["cash"] == Decimal("104.00")
    assert await wallet.balance(player) == 104_00


async def test_reference_reused_with_other_amount(pragmatic: Provider, player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 1_00, reference="ref1"))
    assert (await ask(pragmatic, bet(pragmatic, player, 2_00, reference="ref1")))["error"] == 7


async def test_references_are_scoped_by_method(pragmatic: Provider, wallet: Backend,
                                               player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 1_00, reference="same"))
    assert (await ask(pragmatic, result(pragmatic, player, 3_00, reference="same")))["error"] == 0
    assert await wallet.balance(player) == 102_00


# --- refunds --------------------------------------------------------------------------------------
async def test_refund_of_unknown_bet(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    refund = pragmatic.sim.refund(player.player_id, reference="lost1", round_id="1001")
    data = await ask(pragmatic, refund)
    assert data["error"] == 0 and set(data) == {"transactionId", "error", "description"}
    assert (await ask(pragmatic, refund)) == data  # a second refund
    late = await ask(pragmatic, bet(pragmatic, player, 1_00, reference="lost1"))
    assert late["error"] == 3
    assert await wallet.balance(player) == 100_00


async def test_refund_then_result_refused(pragmatic: Provider, wallet: Backend,
                                          player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 5_00, reference="b1"))
    assert (await ask(pragmatic, pragmatic.sim.refund(player.player_id, reference="b1")))["error"] == 0
    assert await wallet.balance(player) == 100_00
    assert (await ask(pragmatic, result(pragmatic, player, 9_00)))["error"] == 7
    assert (await ask(pragmatic, pragmatic.sim.end_round(player.player_id, round_id="1001")))["error"] == 0
    assert await wallet.balance(player) == 100_00


async def test_result_without_bet(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    assert (await ask(pragmatic, result(pragmatic, player, 1_00, round_id="999")))["error"] == 7
    # a free-round result has no bet and is credited
    free = await ask(pragmatic, result(pragmatic, player, 1_00, round_id="998", bonus_code="FRB1"))
    assert (free["error"], free["cash"]) == (0, Decimal("101.00"))
    cmd = wallet.executed[-1]
    assert (cmd.free_round, cmd.credit_type) == (True, "bonus")


async def test_free_round_bet_moves_no_cash(pragmatic: Provider, wallet: Backend,
                                            player: PlayerSession) -> None:
    data = await ask(pragmatic, bet(pragmatic, player, 1_00, bonus_code="FRB1"))
    assert (data["error"], data["cash"]) == (0, Decimal("100.00"))


async def test_bet_on_closed_round(pragmatic: Provider, player: PlayerSession) -> None:
    for call in pragmatic.sim.round(player.player_id, player.token, currency="EUR", bet=1_00, win=0,
                                    round_id="555"):
        assert (await ask(pragmatic, call))["error"] == 0
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="555")))["error"] == 3


async def test_end_round_closes_the_round(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    sim, uid = pragmatic.sim, player.player_id
    assert (await ask(pragmatic, sim.end_round(uid, round_id="2001")))["error"] == 0  # nothing was played
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="2001")))["error"] == 3
    await ask(pragmatic, bet(pragmatic, player, 5_00, round_id="2002", reference="b2"))
    assert (await ask(pragmatic, sim.refund(uid, reference="b2")))["error"] == 0
    assert (await ask(pragmatic, sim.end_round(uid, round_id="2002")))["error"] == 0  # its only bet refunded
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="2002")))["error"] == 3
    assert await wallet.balance(player) == 100_00


async def test_result_on_another_players_round(pragmatic: Provider, wallet: Backend,
                                               player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 5_00, round_id="3001"))
    other = await wallet.add_player(pragmatic.config.id, beside=player)
    assert (await ask(pragmatic, result(pragmatic, other, 50_00, round_id="3001")))["error"] == 7
    assert (await ask(pragmatic, pragmatic.sim.end_round(other.player_id, round_id="3001")))["error"] == 0
    assert (await wallet.balance(player), await wallet.balance(other)) == (95_00, 100_00)
    # the owner's round was neither settled nor ended by the stranger
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="3001")))["error"] == 0
    assert (await ask(pragmatic, result(pragmatic, player, 9_00, round_id="3001")))["cash"] == Decimal("103.00")


# --- other credits --------------------------------------------------------------------------------
async def test_bonus_jackpot_promo_and_adjustments(pragmatic: Provider, wallet: Backend,
                                                   player: PlayerSession) -> None:
    sim, uid = pragmatic.sim, player.player_id
    assert (await ask(pragmatic, sim.bonus_win(uid, amount=3_00, currency="EUR", bonus_code="B1")))["error"] == 0
    assert (await ask(pragmatic, sim.bonus_win(uid, amount=0, currency="EUR", bonus_code="B1")))["error"] == 0
    assert (await ask(pragmatic, sim.jackpot_win(uid, round_id="42", amount=50_00, currency="EUR")))["error"] == 0
    promo = await ask(pragmatic, sim.promo_win(uid, amount=2_00, currency="EUR", campaign_id="c9"))
    assert (promo["error"], promo["cash"]) == (0, Decimal("155.00"))
    await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="43"))
    plus = await ask(pragmatic, sim.adjustment(uid, round_id="43", amount=1_50, currency="EUR"))
    minus = await ask(pragmatic, sim.adjustment(uid, round_id="43", amount=-2_25, currency="EUR"))
    assert (plus["cash"], minus["cash"]) == (Decimal("155.50"), Decimal("153.25"))
    too_much = await ask(pragmatic, sim.adjustment(uid, round_id="43", amount=-999_00, currency="EUR"))
    assert too_much["error"] == 1
    kinds = [(c.kind, c.credit_type, c.free_round, c.tx_id.split(":")[0]) for c in wallet.executed]
    assert kinds == [
        (Kind.WIN, "bonus", True, "bonusWin"), (Kind.WIN, "bonus", True, "bonusWin"),
        (Kind.WIN, "jackpot", False, "jackpotWin"), (Kind.WIN, "promo", False, "promoWin"),
        (Kind.BET, "win", False, "bet"), (Kind.WIN, "adjustment", False, "adjustment"),
        (Kind.BET, "win", False, "adjustment"), (Kind.BET, "win", False, "adjustment"),
    ]
    assert wallet.executed[3].round_id.startswith("promo:c9:")
    debit = wallet.executed[6]
    assert (debit.round_id, debit.round_closed) == (debit.tx_id, True)
    assert await wallet.balance(player) == 153_25


async def test_negative_adjustment_after_round_end(pragmatic: Provider, wallet: Backend,
                                                   player: PlayerSession) -> None:
    for call in pragmatic.sim.round(player.player_id, player.token, currency="EUR", bet=1_00, win=5_00,
                                    round_id="77"):
        await ask(pragmatic, call)
    for amount in (-1_00, -2_00):
        fix = await ask(pragmatic, pragmatic.sim.adjustment(player.player_id, round_id="77", amount=amount,
                                                            currency="EUR"))
        assert fix["error"] == 0
    assert await wallet.balance(player) == 101_00


async def test_result_with_promo_win(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 1_00))
    r = result(pragmatic, player, 2_00, promo_win=3_00)
    first, again = await ask(pragmatic, r), await ask(pragmatic, r)
    assert first == again and first["cash"] == Decimal("104.00")
    assert await wallet.balance(player) == 104_00


async def test_bonus_win_as_notice(wallet: Backend) -> None:
    config = ProviderConfig(id="pp", protocol="pragmatic", secret=SECRET, options={"bonus_win_credits": False})
    async with wallet.mounted(config, PragmaticClient(SECRET, base_path="/v1/providers/pp")) as p:
        s = await wallet.add_player("pp")
        data = await ask(p, p.sim.bonus_win(s.player_id, amount=3_00, currency="EUR", bonus_code="B"))
        assert (data["error"], data["cash"]) == (0, Decimal("100.00"))
        assert await wallet.balance(s) == 100_00


async def test_tokenless_settlements_never_guess_the_brand(pragmatic: Provider, wallet: Backend) -> None:
    """refund and jackpotWin name only the user: when two brands share the player id at this provider,
    the call is refused (nothing moves) rather than paid into the brand launched last; a provider
    mount that serves one brand places the very same calls there."""
    a = await wallet.add_player(pragmatic.config.id, player_id="shared", brand="brand-a")
    b = await wallet.add_player(pragmatic.config.id, player_id="shared", brand="brand-b")
    assert a.player_id == b.player_id and a.brand_id != b.brand_id
    sim = pragmatic.sim
    assert (await ask(pragmatic, bet(pragmatic, a, 5_00, round_id="4001", reference="ab1")))["error"] == 0
    refund = sim.refund(a.player_id, reference="ab1", round_id="4001")
    jackpot = sim.jackpot_win(a.player_id, round_id="4002", amount=50_00, currency="EUR")
    for call in (refund, jackpot):
        reply = await pragmatic.send(call)
        assert reply.body == b'{"error":2,"description":"Player not found or is logged out"}'
    assert (await wallet.balance(a), await wallet.balance(b)) == (95_00, 100_00)
    async with wallet.mounted(dataclasses.replace(pragmatic.config, brands=(a.brand_id,)), sim) as only_a:
        assert (await ask(only_a, refund))["error"] == 0
        assert (await ask(only_a, jackpot))["error"] == 0
    assert (await wallet.balance(a), await wallet.balance(b)) == (150_00, 100_00)


async def test_tokenless_settlement_of_a_player_known_under_one_brand(pragmatic: Provider, wallet: Backend,
                                                                      player: PlayerSession) -> None:
    other = await wallet.add_player(pragmatic.config.id, brand="brand-b")  # another player, another brand
    jackpot = pragmatic.sim.jackpot_win(player.player_id, round_id="4003", amount=7_00, currency="EUR")
    assert (await ask(pragmatic, jackpot))["cash"] == Decimal("107.00")
    assert (await wallet.balance(player), await wallet.balance(other)) == (107_00, 100_00)


# --- refusals -------------------------------------------------------------------------------------
async def test_insufficient_funds(pragmatic: Provider, player: PlayerSession) -> None:
    reply = await pragmatic.send(bet(pragmatic, player, 100_01))
    assert reply.body == b'{"error":1,"description":"Insufficient balance"}'


@pytest.mark.parametrize(("status", "code"), [
    (Status.LOSS_LIMIT, 50), (Status.STAKE_LIMIT, 50), (Status.SESSION_LIMIT, 50), (Status.SELF_EXCLUDED, 6),
])
async def test_responsible_gaming_refusal(pragmatic: Provider, wallet: Backend, player: PlayerSession,
                                          status: Status, code: int) -> None:
    await wallet.refuse_bets(player.player_id, status)
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00)))["error"] == code


async def test_tokens(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    sim, uid = pragmatic.sim, player.player_id
    assert (await ask(pragmatic, sim.bet(uid, token="bad", round_id="1", amount=1_00, currency="EUR")))["error"] == 4
    assert (await ask(pragmatic, sim.bet(uid, token=None, round_id="1", amount=1_00, currency="EUR")))["error"] == 4
    await ask(pragmatic, bet(pragmatic, player, 1_00))
    await wallet.expire(player)
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00, round_id="2")))["error"] == 4
    paid = await ask(pragmatic, result(pragmatic, player, 2_00))  # settlements ignore expiry
    assert (paid["error"], paid["cash"]) == (0, Decimal("101.00"))
    other = await wallet.add_player(pragmatic.config.id)
    foreign = sim.bet(other.player_id, token=player.token, round_id="3", amount=1_00, currency="EUR")
    assert (await ask(pragmatic, foreign))["error"] == 4


async def test_unknown_player(pragmatic: Provider) -> None:
    r = pragmatic.sim.result("ghost", token=None, round_id="1", amount=1_00, currency="EUR")
    assert (await ask(pragmatic, r))["error"] == 2


async def test_wrong_currency(pragmatic: Provider, player: PlayerSession) -> None:
    call = pragmatic.sim.promo_win(player.player_id, amount=1_00, currency="USD")
    assert (await ask(pragmatic, call))["error"] == 7


@pytest.mark.parametrize("exc", [RateLimited(), Overloaded(), LedgerTimeout()], ids=lambda x: x.code)
@pytest.mark.parametrize("after_apply", [False, True], ids=["not-applied", "applied"])
async def test_retryable_then_refund(pragmatic: Provider, wallet: Backend, player: PlayerSession,
                                     exc: Exception, after_apply: bool) -> None:
    await wallet.fail_next(exc, after_apply=after_apply)  # type: ignore[arg-type]
    assert (await ask(pragmatic, bet(pragmatic, player, 4_00, reference="r1")))["error"] == 100
    assert (await ask(pragmatic, pragmatic.sim.refund(player.player_id, reference="r1")))["error"] == 0
    assert await wallet.balance(player) == 100_00


async def test_retryable_result_then_retry(pragmatic: Provider, wallet: Backend,
                                           player: PlayerSession) -> None:
    await ask(pragmatic, bet(pragmatic, player, 1_00))
    await wallet.fail_next(LedgerTimeout(), after_apply=True)
    r = result(pragmatic, player, 5_00)
    assert (await ask(pragmatic, r))["error"] == 100
    assert (await ask(pragmatic, r))["cash"] == Decimal("104.00")


async def test_crash_answers_retry(pragmatic: Provider, wallet: Backend, player: PlayerSession,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(wallet, "execute", boom)
    assert (await ask(pragmatic, bet(pragmatic, player, 1_00)))["error"] == 100


# --- authentication and strict parsing ------------------------------------------------------------
async def test_hash_tampering(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    good = bet(pragmatic, player, 1_00)
    params = form(good)

    def raw(fields: dict[str, str]) -> Call:
        return Call(good.path, good.headers, urllib.parse.urlencode(fields).encode())

    assert (await ask(pragmatic, raw(dict(params, amount="0.01"))))["error"] == 5
    assert (await ask(pragmatic, resign(params, good.path, "otherSecret")))["error"] == 5
    assert (await ask(pragmatic, raw({k: v for k, v in params.items() if k != "hash"})))["error"] == 5
    assert (await ask(pragmatic, raw(dict(params, newField="x"))))["error"] == 5  # not covered by the hash
    assert wallet.executed == []
    assert await wallet.balance(player) == 100_00  # no money moved
    assert (await ask(pragmatic, raw(dict(params, hash=params["hash"].upper()))))["error"] == 0
    # unknown and empty parameters are part of the hash and accepted when covered
    covered = resign(dict(params, newField="x", language="", reference="r2"), good.path)
    assert (await ask(pragmatic, covered))["error"] == 0


@pytest.mark.parametrize("amount", ["1.005", "1e2", "-1.00", "1,00", " 1.00", "0x10", "NaN", "1.", ".5", ""])
async def test_bad_amounts_refused(pragmatic: Provider, wallet: Backend, player: PlayerSession,
                                   amount: str) -> None:
    good = bet(pragmatic, player, 1_00)
    assert (await ask(pragmatic, resign(dict(form(good), amount=amount), good.path)))["error"] == 7
    assert wallet.executed == []


async def test_excess_precision_for_currency(pragmatic: Provider, wallet: Backend) -> None:
    s = await wallet.add_player(pragmatic.config.id, currency="JPY", balance=1000)
    good = pragmatic.sim.bet(s.player_id, token=s.token, round_id="1", amount=100, currency="JPY")
    assert (await ask(pragmatic, resign(dict(form(good), amount="1.50"), good.path)))["error"] == 7
    ok = await ask(pragmatic, resign(dict(form(good), amount="100.00"), good.path))
    assert (ok["error"], ok["cash"]) == (0, Decimal("900.00"))


@pytest.mark.parametrize(("field", "value"), [
    ("userId", None), ("reference", None), ("roundId", None), ("roundId", "12a"), ("gameId", "g" * 33),
    ("timestamp", "yesterday"), ("roundDetails", None), ("providerId", "SomeoneElse"), ("reference", "r" * 33),
])
async def test_bad_parameters(pragmatic: Provider, wallet: Backend, player: PlayerSession, field: str,
                              value: str | None) -> None:
    params = form(bet(pragmatic, player, 1_00))
    if value is None:
        del params[field]
    else:
        params[field] = value
    assert (await ask(pragmatic, resign(params, pragmatic.base + "/bet.html")))["error"] == 7
    assert wallet.executed == []


@pytest.mark.parametrize("body", [b"\xff\xfe", b"a=1&a=2", b"no-equals-sign"])
async def test_unparseable_forms(pragmatic: Provider, wallet: Backend, body: bytes) -> None:
    assert (await pragmatic.post("/bet.html", body)).json["error"] == 7
    assert wallet.executed == []


async def test_unknown_method(pragmatic: Provider) -> None:
    reply = await pragmatic.post("/withdrawAll.html", b"")
    assert reply.status == 404 and reply.json["error"] == 7


async def test_source_network_refused(wallet: Backend) -> None:
    config = ProviderConfig(id="pp", protocol="pragmatic", secret=SECRET,
                            allowed_networks=networks("10.0.0.0/8", "fd00::/8"))
    async with wallet.mounted(config, PragmaticClient(SECRET, base_path="/v1/providers/pp")) as p:
        s = await wallet.add_player("pp")
        assert (await ask(p, p.sim.balance(s.player_id)))["error"] == 5
        assert (await ask(p, p.sim.bet(s.player_id, token=s.token, round_id="1", amount=1_00,
                                       currency="EUR")))["error"] == 5
        assert wallet.executed == []
        assert await wallet.balance(s) == 100_00


def test_config_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        PragmaticAdapter(ProviderConfig(id="pp", protocol="pragmatic"), FakeWallet())


# --- property: any valid sequence of rounds leaves exactly the expected balance ------------------
def _random_rounds_test(examples: int, backend: str) -> Any:
    @round_property(examples, backend)
    async def test(pragmatic: Provider, wallet: Backend, start: int,
                   plan: list[tuple[int, int | None, bool, bool]]) -> None:
        s = await wallet.add_player(pragmatic.config.id, balance=start)
        expected = start
        for stake, payout, retry_bet, retry_settle in plan:
            b, r, end = pragmatic.sim.round(s.player_id, s.token, currency="EUR", bet=stake, win=payout or 0)
            settle = r if payout is not None else pragmatic.sim.refund(s.player_id, reference=form(b)["reference"])
            first = await ask(pragmatic, b)
            if retry_bet:
                assert await ask(pragmatic, b) == first
            placed = first["error"] == 0
            assert placed == (stake <= expected)
            if placed:
                expected += -stake + (payout if payout is not None else stake)
            done = await ask(pragmatic, settle)
            if retry_settle:
                assert await ask(pragmatic, settle) == done
            assert done["error"] == (0 if placed or payout is None else 7)
            assert (await ask(pragmatic, end))["error"] == 0
        assert await wallet.balance(s) == expected
        data = await ask(pragmatic, pragmatic.sim.balance(s.player_id, token=s.token))
        assert data["cash"] == Decimal(expected).scaleb(-2)

    return test


test_random_rounds_leave_expected_balance = _random_rounds_test(25, "fake")
#: the same property through the real gateway and ledger, with fewer examples (each is many ledger calls)
test_random_rounds_leave_expected_balance_real = _random_rounds_test(10, "real")


# --- the documented examples, replayed --------------------------------------------------------------
async def test_documented_round(pragmatic: Provider, wallet: Backend, player: PlayerSession) -> None:
    """``docs/pragmatic.md``'s round by hand: the documented parameters sent (hashed with our secret), the
    documented answers received."""
    examples = pragmatic_round()
    assert [method for method, _, _ in examples] == ["authenticate", "bet", "result", "endRound"]
    values = {"$LAUNCH": await wallet.add_launch_token(player), "p1": player.player_id}
    user = {'"p1"': orjson.dumps(player.player_id).decode()}
    for method, params, documented in examples:
        sent = {k: values.get(v, v) for k, v in params.items()}
        reply = await pragmatic.send(resign(sent, f"{pragmatic.base}/{method}.html"))
        assert reply.status == 200
        assert matches(reply.body, documented, user), (method, reply.body)
        if method == "authenticate":
            values["$TOKEN"] = reply.json["token"]  # the documented TOKEN=<SESSION>
    assert await wallet.balance(player) == 107_55


# --- real shedding: a gateway whose ledger never answers --------------------------------------------
@pytest.mark.parametrize("wallet", ["real"], indirect=True)
async def test_real_ledger_silence_answers_retryable(pragmatic: Provider, wallet: Backend,
                                                     unanswered_gateway: Any) -> None:
    """No writer serves the gateway's namespace: a bet times out (error 100), nothing moves, and
    Pragmatic's refund of it, sent to a healthy gateway, leaves the balance exact; so does a result's retry."""
    assert isinstance(wallet, RealBackend)
    s = await wallet.add_player(pragmatic.config.id)
    assert (await ask(pragmatic, bet(pragmatic, s, 3_00, round_id="1001")))["cash"] == Decimal("97.00")
    silent = wallet.provider_at(unanswered_gateway, pragmatic)
    s_silent = await wallet.session_at(unanswered_gateway, s)
    assert (await ask(silent, bet(silent, s_silent, 4_00, round_id="1002", reference="shed1")))["error"] == 100
    r = result(silent, s_silent, 5_00, round_id="1001")
    assert (await ask(silent, r))["error"] == 100
    assert await wallet.balance(s) == 97_00
    # Pragmatic refunds the bet answered 100 and retries the result, here at the healthy gateway
    assert (await ask(pragmatic, pragmatic.sim.refund(s.player_id, reference="shed1")))["error"] == 0
    assert (await ask(pragmatic, r))["cash"] == Decimal("102.00")  # its token is unknown here: profile
    late = await ask(pragmatic, bet(pragmatic, s, 4_00, round_id="1002", reference="shed1"))
    assert late["error"] == 3
    assert await wallet.balance(s) == 102_00
