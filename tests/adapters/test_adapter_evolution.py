"""Evolution one-wallet: authToken, exact JSON decimals, settlement by refId with the go-live rules."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest

from adapters.evolution import EvolutionAdapter
from adapters.exact_json import loads_exact
from adapters.sim import Call
from adapters.sim.evolution import EvolutionClient
from core.commands import Kind, Status
from core.errors import LedgerTimeout, Overloaded, RateLimited
from core.records import PlayerSession, ProviderConfig
from tests.adapters.adapter_harness import FakeWallet, Provider, networks, round_property
from tests.adapters.docs_examples import evolution_round, matches
from tests.adapters.real_backend import Backend, RealBackend

TOKEN = "evo-auth-token-1"


async def ask(p: Provider, call: Call) -> dict[str, Any]:
    reply = await p.send(call)
    assert reply.status == 200, reply.body
    data: dict[str, Any] = reply.json
    return data


def fields(call: Call) -> dict[str, Any]:
    data: dict[str, Any] = loads_exact(call.body)
    return data


def exact(value: Any) -> Any:
    """Nested values ready for ``orjson.dumps``: decimals as their exact text."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    return value


def with_body(call: Call, data: dict[str, Any]) -> Call:
    return Call(call.path, call.headers, orjson.dumps(exact(data)))


@pytest.fixture
async def player(wallet: Backend, evolution: Provider) -> PlayerSession:
    return await wallet.add_player(evolution.config.id, balance=100_00)


def debit(p: Provider, s: PlayerSession, amount: int, ref: str = "ref1", round_id: str = "g1",
          **kw: Any) -> Call:
    return p.sim.debit(s.player_id, s.token, currency=s.currency, amount=amount,  # type: ignore[no-any-return]
                       ref_id=ref, round_id=round_id, **kw)


def credit(p: Provider, s: PlayerSession, amount: int, ref: str = "ref1", round_id: str = "g1",
           **kw: Any) -> Call:
    return p.sim.credit(s.player_id, s.token, currency=s.currency, amount=amount,  # type: ignore[no-any-return]
                        ref_id=ref, round_id=round_id, **kw)


def cancel(p: Provider, s: PlayerSession, amount: int, ref: str = "ref1", round_id: str = "g1",
           **kw: Any) -> Call:
    return p.sim.cancel(s.player_id, s.token, currency=s.currency, amount=amount,  # type: ignore[no-any-return]
                        ref_id=ref, round_id=round_id, **kw)


# --- shapes ---------------------------------------------------------------------------------------
async def test_check(evolution: Provider, player: PlayerSession) -> None:
    call = evolution.sim.check(player.player_id, player.token)
    assert (await ask(evolution, call)) == {"status": "OK", "sid": player.token, "uuid": fields(call)["uuid"]}


async def test_check_may_rotate_the_sid(wallet: Backend) -> None:
    config = ProviderConfig(id="evo", protocol="evolution", secret=TOKEN, options={"rotate_sid_on_check": True})
    async with wallet.mounted(config, EvolutionClient(TOKEN, base_path="/v1/providers/evo")) as p:
        s = await wallet.add_player("evo")
        data = await ask(p, p.sim.check(s.player_id, s.token))
        assert data["status"] == "OK" and data["sid"] != s.token
        assert (await ask(p, p.sim.check(s.player_id, s.token)))["status"] == "INVALID_SID"
        assert (await ask(p, p.sim.balance(s.player_id, data["sid"], currency="EUR")))["status"] == "OK"
        placed = await ask(p, p.sim.debit(s.player_id, data["sid"], currency="EUR", amount=1_00))
        assert (placed["status"], placed["balance"]) == ("OK", Decimal("99.00"))
        assert await wallet.balance(s) == 99_00


async def test_balance_shape(evolution: Provider, player: PlayerSession) -> None:
    call = evolution.sim.balance(player.player_id, player.token, currency="EUR")
    reply = await evolution.send(call)
    uuid = fields(call)["uuid"]
    assert reply.body == b'{"status":"OK","balance":100.00,"bonus":0.00,"uuid":"%s"}' % uuid.encode()


async def test_round(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    d, c = evolution.sim.round(player.player_id, player.token, currency="EUR", bet=10_11, win=20_22)
    assert b'"amount":10.11' in d.body
    placed = await ask(evolution, d)
    assert (placed["status"], placed["balance"], placed["bonus"]) == ("OK", Decimal("89.89"), 0)
    assert placed["uuid"] == fields(d)["uuid"]
    paid = await ask(evolution, c)
    assert (paid["status"], paid["balance"]) == ("OK", Decimal("110.11"))
    ref = fields(d)["transaction"]["refId"]
    tx = fields(c)["transaction"]["id"]
    cmds = [(x.kind, x.tx_id, x.ref_tx_id, x.single_settlement) for x in wallet.executed]
    assert cmds == [(Kind.BET, f"debit:{ref}", None, False), (Kind.WIN, f"credit:{tx}", f"debit:{ref}", True)]
    assert wallet.executed[0].game_id == "vip-roulette-123xyz"


async def test_exact_decimals(evolution: Provider, player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 10, ref="a"))
    data = await ask(evolution, debit(evolution, player, 20, ref="b"))
    assert data["balance"] == Decimal("99.70")  # 100 - 0.1 - 0.2, exactly


# --- go-live scenarios ----------------------------------------------------------------------------
async def test_same_debit_twice(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    d = debit(evolution, player, 5_00)
    assert (await ask(evolution, d))["status"] == "OK"
    again = await ask(evolution, d)
    assert (again["status"], again["balance"]) == ("BET_ALREADY_EXIST", Decimal("95.00"))
    other_tx = debit(evolution, player, 5_00)  # same refId, new transaction id
    assert (await ask(evolution, other_tx))["status"] == "BET_ALREADY_EXIST"
    other_amount = debit(evolution, player, 6_00)
    assert (await ask(evolution, other_amount))["status"] == "BET_ALREADY_EXIST"
    assert await wallet.balance(player) == 95_00


async def test_credit_twice(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 5_00))
    c = credit(evolution, player, 7_00)
    assert (await ask(evolution, c))["status"] == "OK"
    again = await ask(evolution, c)
    assert (again["status"], again["balance"]) == ("BET_ALREADY_SETTLED", Decimal("102.00"))
    assert (await ask(evolution, credit(evolution, player, 7_00)))["status"] == "BET_ALREADY_SETTLED"
    assert await wallet.balance(player) == 102_00


async def test_credit_unknown_ref(evolution: Provider, player: PlayerSession) -> None:
    assert (await ask(evolution, credit(evolution, player, 1_00, ref="nope")))["status"] == "BET_DOES_NOT_EXIST"


async def test_zero_credit_is_a_loss(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 5_00))
    assert (await ask(evolution, credit(evolution, player, 0)))["status"] == "OK"
    assert (await ask(evolution, cancel(evolution, player, 5_00)))["status"] == "BET_ALREADY_SETTLED"
    assert await wallet.balance(player) == 95_00


async def test_cancel_rules(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 5_00))
    x = cancel(evolution, player, 5_00)
    done = await ask(evolution, x)
    assert (done["status"], done["balance"]) == ("OK", Decimal("100.00"))
    assert (await ask(evolution, x))["status"] == "BET_ALREADY_SETTLED"  # retried cancel
    assert (await ask(evolution, cancel(evolution, player, 5_00)))["status"] == "BET_ALREADY_SETTLED"
    assert (await ask(evolution, credit(evolution, player, 9_00)))["status"] == "BET_ALREADY_SETTLED"
    assert await wallet.balance(player) == 100_00


async def test_cancel_of_unknown_ref_refuses_late_debit(evolution: Provider, wallet: Backend,
                                                        player: PlayerSession) -> None:
    x = cancel(evolution, player, 5_00, ref="late")
    data = await ask(evolution, x)
    assert (data["status"], data["balance"]) == ("BET_DOES_NOT_EXIST", Decimal("100.00"))
    assert (await ask(evolution, x))["status"] == "BET_DOES_NOT_EXIST"
    assert (await ask(evolution, debit(evolution, player, 5_00, ref="late")))["status"] == "FINAL_ERROR_ACTION_FAILED"
    assert await wallet.balance(player) == 100_00


async def test_several_debits_settle_per_ref(evolution: Provider, wallet: Backend,
                                             player: PlayerSession) -> None:
    for ref in ("hand1", "hand2", "hand3"):
        assert (await ask(evolution, debit(evolution, player, 10_00, ref=ref)))["status"] == "OK"
    other_table = debit(evolution, player, 5_00, ref="t2", round_id="g2")
    assert (await ask(evolution, other_table))["status"] == "OK"
    assert (await ask(evolution, credit(evolution, player, 20_00, ref="hand1")))["status"] == "OK"
    assert (await ask(evolution, credit(evolution, player, 0, ref="hand2")))["status"] == "OK"
    assert (await ask(evolution, cancel(evolution, player, 10_00, ref="hand3")))["status"] == "OK"
    assert (await ask(evolution, credit(evolution, player, 10_00, ref="t2", round_id="g2")))["status"] == "OK"
    assert await wallet.balance(player) == 100_00 - 30_00 - 5_00 + 20_00 + 10_00 + 10_00


async def test_settlements_never_touch_another_players_debit(evolution: Provider, wallet: Backend,
                                                             player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 5_00, ref="mine"))
    other = await wallet.add_player(evolution.config.id, beside=player)
    assert (await ask(evolution, credit(evolution, other, 50_00, ref="mine")))["status"] == "BET_DOES_NOT_EXIST"
    assert (await ask(evolution, cancel(evolution, other, 5_00, ref="mine")))["status"] == "BET_DOES_NOT_EXIST"
    assert (await wallet.balance(player), await wallet.balance(other)) == (95_00, 100_00)
    assert (await ask(evolution, credit(evolution, player, 6_00, ref="mine")))["balance"] == Decimal("101.00")


async def test_players_at_one_live_table_share_its_round(evolution: Provider, wallet: Backend,
                                                          player: PlayerSession) -> None:
    """Evolution sends the table's ``game.id`` as the round of everyone seated: each player's debit,
    credit and cancel on it are their own (the ledger keeps a round per player). ``beside`` seats them
    all on the first player's ledger shard, where they meet the same round id."""
    seats = [player] + [await wallet.add_player(evolution.config.id, beside=player) for _ in range(3)]
    if isinstance(wallet, RealBackend):
        shard_of = wallet.gateway.state.ledger.shard_of
        assert {shard_of(s.player_id) for s in seats} == {shard_of(player.player_id)}
    for i, seat in enumerate(seats):
        data = await ask(evolution, debit(evolution, seat, 10_00, ref=f"seat{i}", round_id="table-game-1"))
        assert data["status"] == "OK", data
    # settlements still never cross players: a seat cannot credit another's debit on the shared round
    data = await ask(evolution, credit(evolution, seats[1], 50_00, ref="seat0", round_id="table-game-1"))
    assert data["status"] == "BET_DOES_NOT_EXIST"
    for i, seat in enumerate(seats[:3]):
        data = await ask(evolution, credit(evolution, seat, (i + 1) * 10_00, ref=f"seat{i}", round_id="table-game-1"))
        assert (data["status"], data["balance"]) == ("OK", Decimal(90 + (i + 1) * 10)), (i, data)
    data = await ask(evolution, cancel(evolution, seats[3], 10_00, ref="seat3", round_id="table-game-1"))
    assert (data["status"], data["balance"]) == ("OK", Decimal("100.00"))
    assert [await wallet.balance(s) for s in seats] == [100_00, 110_00, 120_00, 100_00]


async def test_promo_payout(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    jp = evolution.sim.promo_payout(player.player_id, player.token, currency="EUR", amount=50_00)
    data = await ask(evolution, jp)
    assert (data["status"], data["balance"]) == ("OK", Decimal("150.00"))
    assert (await ask(evolution, jp))["status"] == "BET_ALREADY_SETTLED"
    fr = evolution.sim.promo_payout(player.player_id, player.token, currency="EUR", amount=1_00,
                                    promo_type="FreeRoundPlayableSpent")
    assert (await ask(evolution, fr))["status"] == "OK"
    kinds = [(c.kind, c.credit_type, c.free_round) for c in wallet.executed]
    assert kinds == [(Kind.WIN, "jackpot", False), (Kind.WIN, "jackpot", False), (Kind.WIN, "bonus", True)]
    assert await wallet.balance(player) == 151_00


# --- refusals -------------------------------------------------------------------------------------
async def test_insufficient_funds(evolution: Provider, player: PlayerSession) -> None:
    data = await ask(evolution, debit(evolution, player, 100_01))
    assert (data["status"], data["balance"]) == ("INSUFFICIENT_FUNDS", Decimal("100.00"))


@pytest.mark.parametrize(("status", "code"), [
    (Status.LOSS_LIMIT, "CASINO_LIMIT_EXCEEDED_LOSS"), (Status.STAKE_LIMIT, "CASINO_LIMIT_EXCEEDED_STAKE"),
    (Status.SESSION_LIMIT, "CASINO_LIMIT_EXCEEDED_SESSION_TIME"), (Status.SELF_EXCLUDED, "ACCOUNT_LOCKED"),
])
async def test_responsible_gaming_refusal(evolution: Provider, wallet: Backend, player: PlayerSession,
                                          status: Status, code: str) -> None:
    await wallet.refuse_bets(player.player_id, status)
    assert (await ask(evolution, debit(evolution, player, 1_00)))["status"] == code


async def test_sids(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    sim, uid = evolution.sim, player.player_id
    bad = sim.debit(uid, "bad-sid", currency="EUR", amount=1_00)
    assert (await ask(evolution, bad))["status"] == "INVALID_SID"
    await ask(evolution, debit(evolution, player, 1_00, ref="a"))
    await ask(evolution, debit(evolution, player, 1_00, ref="b"))
    await wallet.expire(player)
    assert (await ask(evolution, debit(evolution, player, 1_00, ref="c")))["status"] == "INVALID_SID"
    assert (await ask(evolution, sim.check(uid, player.token)))["status"] == "INVALID_SID"
    # credits and cancels are accepted on an expired sid
    assert (await ask(evolution, credit(evolution, player, 3_00, ref="a")))["status"] == "OK"
    assert (await ask(evolution, cancel(evolution, player, 1_00, ref="b")))["status"] == "OK"
    assert await wallet.balance(player) == 102_00


async def test_unknown_user(evolution: Provider, player: PlayerSession) -> None:
    sim = evolution.sim
    assert (await ask(evolution, sim.check("fake", player.token)))["status"] == "INVALID_SID"
    for call in (sim.debit("fake", player.token, currency="EUR", amount=1_00),
                 sim.credit("fake", player.token, currency="EUR", amount=1_00, ref_id="r", round_id="g"),
                 sim.cancel("fake", player.token, currency="EUR", amount=1_00, ref_id="r", round_id="g"),
                 sim.credit("fake", "unknown-sid", currency="EUR", amount=1_00, ref_id="r", round_id="g")):
        assert (await ask(evolution, call))["status"] == "INVALID_SID"


async def test_wrong_currency(evolution: Provider, player: PlayerSession) -> None:
    call = evolution.sim.debit(player.player_id, player.token, currency="USD", amount=1_00)
    assert (await ask(evolution, call))["status"] == "INVALID_PARAMETER"


@pytest.mark.parametrize("exc", [RateLimited(), Overloaded(), LedgerTimeout()], ids=lambda x: x.code)
@pytest.mark.parametrize("after_apply", [False, True], ids=["not-applied", "applied"])
async def test_retryable_then_cancel(evolution: Provider, wallet: Backend, player: PlayerSession,
                                     exc: Exception, after_apply: bool) -> None:
    await wallet.fail_next(exc, after_apply=after_apply)  # type: ignore[arg-type]
    assert (await ask(evolution, debit(evolution, player, 4_00)))["status"] == "TEMPORARY_ERROR"
    status = (await ask(evolution, cancel(evolution, player, 4_00)))["status"]
    assert status == ("OK" if after_apply else "BET_DOES_NOT_EXIST")
    assert await wallet.balance(player) == 100_00


async def test_retryable_credit_then_retry(evolution: Provider, wallet: Backend,
                                           player: PlayerSession) -> None:
    await ask(evolution, debit(evolution, player, 1_00))
    await wallet.fail_next(LedgerTimeout())
    c = credit(evolution, player, 5_00)
    assert (await ask(evolution, c))["status"] == "TEMPORARY_ERROR"
    assert (await ask(evolution, c))["balance"] == Decimal("104.00")


async def test_crash(evolution: Provider, wallet: Backend, player: PlayerSession,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(wallet, "execute", boom)
    reply = await evolution.send(debit(evolution, player, 1_00))
    assert reply.status == 200 and reply.json["status"] == "UNKNOWN_ERROR"


# --- authentication and strict parsing ------------------------------------------------------------
@pytest.mark.parametrize("query", ["", "?authToken=wrong", "?authToken=", f"?authtoken={TOKEN}",
                                   f"?authToken={TOKEN}x"])
async def test_auth_token(evolution: Provider, wallet: Backend, player: PlayerSession, query: str) -> None:
    call = debit(evolution, player, 1_00)
    reply = await evolution.send(Call(call.path.split("?")[0] + query, call.headers, call.body))
    assert reply.status == 200 and reply.json["status"] == "INVALID_TOKEN_ID"
    assert wallet.executed == []
    assert await wallet.balance(player) == 100_00  # no money moved


async def test_auth_before_parsing(evolution: Provider) -> None:
    reply = await evolution.post("/debit?authToken=wrong", b"not json")
    assert reply.status == 200 and reply.json["status"] == "INVALID_TOKEN_ID"


@pytest.mark.parametrize("body", [b"not json", b'{"sid": NaN}', b'{"a":', b"\xff", b'{"amount": Infinity}'])
async def test_non_json_is_http_400(evolution: Provider, wallet: Backend, body: bytes) -> None:
    reply = await evolution.post(f"/debit?authToken={TOKEN}", body)
    assert reply.status == 400 and reply.json["status"] == "INVALID_PARAMETER"
    assert wallet.executed == []


@pytest.mark.parametrize("amount", [b"10.111", b"0.30000000000000004", b'"10.00"', b"true", b"-1.00", b"0",
                                    b"null"])
async def test_bad_amounts(evolution: Provider, wallet: Backend, player: PlayerSession,
                           amount: bytes) -> None:
    call = debit(evolution, player, 1_00)
    body = call.body.replace(b'"amount":1.00', b'"amount":' + amount)
    assert body != call.body
    reply = await evolution.send(Call(call.path, call.headers, body))
    assert reply.status == 200 and reply.json["status"] == "INVALID_PARAMETER"
    assert wallet.executed == []


async def test_integer_amounts(evolution: Provider, player: PlayerSession) -> None:
    call = debit(evolution, player, 1_00)
    data = await ask(evolution, Call(call.path, call.headers, call.body.replace(b'"amount":1.00', b'"amount":2')))
    assert data["balance"] == Decimal("98.00")


@pytest.mark.parametrize("amount", [b"1E1", b"1e1", b"0.1e2", b"10.0e0", b"1e-0", b"1e999999", b"-1e999999",
                                    b"1" * 41, b"0." + b"0" * 39 + b"1"])
@pytest.mark.parametrize("endpoint", ["debit", "credit", "cancel", "promo_payout"])
async def test_exponent_and_overlong_amounts_are_refused(evolution: Provider, wallet: Backend,
                                                         player: PlayerSession, endpoint: str,
                                                         amount: bytes) -> None:
    """Only plain positional decimals are money: an exponent (even one that means 10.00) or more than 40
    characters is INVALID_PARAMETER, never a traceback and never a debit or credit."""
    await ask(evolution, debit(evolution, player, 1_00, ref="placed"))
    sim = evolution.sim
    s = player
    calls: dict[str, Callable[[], Call]] = {
        "debit": lambda: debit(evolution, s, 1_00, ref="new"),
        "credit": lambda: credit(evolution, s, 1_00, ref="placed"),
        "cancel": lambda: cancel(evolution, s, 1_00, ref="placed"),
        "promo_payout": lambda: sim.promo_payout(s.player_id, s.token, currency="EUR", amount=1_00),
    }
    call = calls[endpoint]()
    body = call.body.replace(b'"amount":1.00', b'"amount":' + amount)
    assert body != call.body
    before = len(wallet.executed)
    reply = await evolution.send(Call(call.path, call.headers, body))
    assert reply.status == 200 and reply.json["status"] == "INVALID_PARAMETER", reply.body
    assert reply.json["uuid"] == fields(call)["uuid"]
    assert len(wallet.executed) == before  # no command was built
    assert await wallet.balance(player) == 99_00


async def test_excess_precision_for_currency(evolution: Provider, wallet: Backend) -> None:
    s = await wallet.add_player(evolution.config.id, currency="JPY", balance=1000)
    call = evolution.sim.debit(s.player_id, s.token, currency="JPY", amount=100)
    assert b'"amount":100}' in call.body
    bad = Call(call.path, call.headers, call.body.replace(b'"amount":100}', b'"amount":1.5}'))
    assert (await ask(evolution, bad))["status"] == "INVALID_PARAMETER"
    data = await ask(evolution, call)
    assert (data["status"], data["balance"]) == ("OK", 900)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("sid"), lambda d: d.pop("uuid"), lambda d: d.pop("transaction"), lambda d: d.pop("game"),
    lambda d: d.update(userId=5), lambda d: d.update(game="g1"), lambda d: d["transaction"].pop("refId"),
    lambda d: d["game"].pop("id"), lambda d: d.pop("currency"), lambda d: d["game"].update(type=3),
])
async def test_bad_fields(evolution: Provider, wallet: Backend, player: PlayerSession,
                          mutate: Any) -> None:
    call = debit(evolution, player, 1_00)
    data = fields(call)
    mutate(data)
    reply = await evolution.send(with_body(call, data))
    assert reply.status == 200 and reply.json["status"] == "INVALID_PARAMETER"
    assert wallet.executed == []


async def test_json_but_not_an_object(evolution: Provider) -> None:
    reply = await evolution.post(f"/balance?authToken={TOKEN}", orjson.dumps([1, 2]))
    assert reply.status == 200 and reply.json == {"status": "INVALID_PARAMETER", "uuid": ""}


async def test_source_network_refused(wallet: Backend) -> None:
    config = ProviderConfig(id="evo", protocol="evolution", secret=TOKEN, allowed_networks=networks("10.0.0.0/8"))
    async with wallet.mounted(config, EvolutionClient(TOKEN, base_path="/v1/providers/evo")) as p:
        s = await wallet.add_player("evo")
        assert (await ask(p, p.sim.check(s.player_id, s.token)))["status"] == "INVALID_TOKEN_ID"
        debit_call = p.sim.debit(s.player_id, s.token, currency="EUR", amount=1_00)
        assert (await ask(p, debit_call))["status"] == "INVALID_TOKEN_ID"
        assert wallet.executed == []
        assert await wallet.balance(s) == 100_00


def test_config_needs_a_token() -> None:
    with pytest.raises(ValueError):
        EvolutionAdapter(ProviderConfig(id="evo", protocol="evolution"), FakeWallet())


# --- property: any valid sequence of rounds leaves exactly the expected balance ------------------
def _random_rounds_test(examples: int, backend: str) -> Any:
    @round_property(examples, backend)
    async def test(evolution: Provider, wallet: Backend, start: int,
                   plan: list[tuple[int, int | None, bool, bool]]) -> None:
        s = await wallet.add_player(evolution.config.id, balance=start)
        expected = start
        for stake, payout, retry_debit, retry_settle in plan:
            d, c = evolution.sim.round(s.player_id, s.token, currency="EUR", bet=stake, win=payout or 0)
            tx = fields(d)["transaction"]
            settle = c if payout is not None else evolution.sim.cancel(
                s.player_id, s.token, currency="EUR", amount=stake, ref_id=tx["refId"],
                round_id=fields(d)["game"]["id"])
            first = await ask(evolution, d)
            placed = first["status"] == "OK"
            assert placed == (stake <= expected)
            if placed:
                expected += -stake + (payout if payout is not None else stake)
            if retry_debit:
                again = (await ask(evolution, d))["status"]
                assert again == ("BET_ALREADY_EXIST" if placed else "INSUFFICIENT_FUNDS")
            done = await ask(evolution, settle)
            assert done["status"] == ("OK" if placed else "BET_DOES_NOT_EXIST")
            if retry_settle:
                again = await ask(evolution, settle)
                assert again["status"] == ("BET_ALREADY_SETTLED" if placed else "BET_DOES_NOT_EXIST")
            assert done["balance"] == Decimal(expected).scaleb(-2)
        assert await wallet.balance(s) == expected
        data = await ask(evolution, evolution.sim.balance(s.player_id, s.token, currency="EUR"))
        assert data["balance"] == Decimal(expected).scaleb(-2)

    return test


test_random_rounds_leave_expected_balance = _random_rounds_test(25, "fake")
#: the same property through the real gateway and ledger, with fewer examples (each is many ledger calls)
test_random_rounds_leave_expected_balance_real = _random_rounds_test(10, "real")


# --- the documented examples, replayed --------------------------------------------------------------
async def test_documented_round(evolution: Provider, wallet: Backend, player: PlayerSession) -> None:
    """``docs/evolution.md``'s round by hand: the exact bodies sent, the exact documented answers received."""
    examples = evolution_round()
    assert [endpoint for endpoint, _, _ in examples] == ["check", "debit", "credit"]
    user = {'"p1"': orjson.dumps(player.player_id).decode()}
    for endpoint, body, documented in examples:
        sent = body.replace("'$SID'", player.token).replace('"p1"', user['"p1"'])
        reply = await evolution.send(evolution.sim.call(endpoint, sent.encode()))
        assert reply.status == 200
        assert matches(reply.body, documented, user), (endpoint, reply.body)
    assert await wallet.balance(player) == 110_11


# --- real shedding: a gateway whose ledger never answers --------------------------------------------
@pytest.mark.parametrize("wallet", ["real"], indirect=True)
async def test_real_ledger_silence_answers_retryable(evolution: Provider, wallet: Backend,
                                                     unanswered_gateway: Any) -> None:
    """No writer serves the gateway's namespace: a debit times out (TEMPORARY_ERROR), nothing moves, and
    Evolution's cancel of it, sent to a healthy gateway, leaves the balance exact; so does a credit's retry."""
    assert isinstance(wallet, RealBackend)
    s = await wallet.add_player(evolution.config.id)
    assert (await ask(evolution, debit(evolution, s, 3_00, ref="a")))["balance"] == Decimal("97.00")
    silent = wallet.provider_at(unanswered_gateway, evolution)
    s_silent = await wallet.session_at(unanswered_gateway, s)
    assert (await ask(silent, debit(silent, s_silent, 4_00, ref="shed")))["status"] == "TEMPORARY_ERROR"
    c = credit(silent, s_silent, 5_00, ref="a")
    assert (await ask(silent, c))["status"] == "TEMPORARY_ERROR"
    assert await wallet.balance(s) == 97_00
    # Evolution cancels the debit answered TEMPORARY_ERROR and retries the credit, here at the healthy gateway
    assert (await ask(evolution, cancel(evolution, s, 4_00, ref="shed")))["status"] == "BET_DOES_NOT_EXIST"
    assert (await ask(evolution, c))["balance"] == Decimal("102.00")  # its sid is unknown here: profile
    late = await ask(evolution, debit(evolution, s, 4_00, ref="shed"))
    assert late["status"] == "FINAL_ERROR_ACTION_FAILED"
    assert await wallet.balance(s) == 102_00
