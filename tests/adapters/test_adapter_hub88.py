"""Hub88: signed JSON, always HTTP 200 with a status, money as value x 100 000."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from adapter_harness import FakeWallet, Provider, mount, networks
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import PlayerSession, ProviderConfig
from adapters.flow import Call
from adapters.hub88 import SIGNATURE_HEADER, Hub88Adapter, Hub88Client, from_minor, to_minor
from gateway.errors import InvalidAmount, LedgerTimeout, Overloaded, RateLimited
from ledger.commands import Kind, Status


async def ask(p: Provider, call: Call) -> dict[str, Any]:
    reply = await p.send(call)
    assert reply.status == 200, reply.body
    data: dict[str, Any] = reply.json
    return data


@pytest.fixture
async def player(wallet: FakeWallet, hub88: Provider) -> PlayerSession:
    return await wallet.add_player(hub88.config.id, balance=100_00)


def bet(p: Provider, s: PlayerSession, amount: int, **kw: Any) -> Call:
    kw.setdefault("currency", s.currency)
    kw.setdefault("round", "r1")
    return p.sim.bet(s.player_id, s.token, amount=amount, **kw)  # type: ignore[no-any-return]


def win(p: Provider, s: PlayerSession, amount: int, reference: str, **kw: Any) -> Call:
    kw.setdefault("currency", s.currency)
    kw.setdefault("round", "r1")
    return p.sim.win(s.player_id, s.token, amount=amount, reference=reference, **kw)  # type: ignore[no-any-return]


# --- shapes ---------------------------------------------------------------------------------------
async def test_user_info(hub88: Provider, player: PlayerSession) -> None:
    call = hub88.sim.user_info(player.player_id)
    data = await ask(hub88, call)
    assert data == {"user": player.player_id, "status": "RS_OK",
                    "request_uuid": orjson.loads(call.body)["request_uuid"], "country": "MT",
                    "jurisdiction": "MGA"}


async def test_balance_shape(hub88: Provider, player: PlayerSession) -> None:
    call = hub88.sim.balance(player.player_id, player.token)
    data = await ask(hub88, call)
    assert data == {"user": player.player_id, "status": "RS_OK",
                    "request_uuid": orjson.loads(call.body)["request_uuid"], "currency": "EUR",
                    "balance": 100_00 * 1000}


async def test_round_bet_then_win(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    bet_call, win_call = hub88.sim.round(player.player_id, player.token, currency="EUR", bet=2_50, win=10_05)
    assert orjson.loads(bet_call.body)["amount"] == 250_000
    data = await ask(hub88, bet_call)
    assert (data["status"], data["balance"], data["currency"]) == ("RS_OK", 97_50_000, "EUR")
    assert data["request_uuid"] == orjson.loads(bet_call.body)["request_uuid"]
    data = await ask(hub88, win_call)
    assert (data["status"], data["balance"]) == ("RS_OK", 107_55_000)
    assert await wallet.balance(player) == 107_55
    cmd = wallet.executed[-1]
    bet_id = orjson.loads(bet_call.body)["transaction_uuid"]
    assert (cmd.kind, cmd.ref_tx_id, cmd.round_closed) == (Kind.WIN, bet_id, True)


async def test_zero_exponent_currency(hub88: Provider, wallet: FakeWallet) -> None:
    s = await wallet.add_player(hub88.config.id, balance=5000, currency="JPY")
    data = await ask(hub88, bet(hub88, s, 100))
    assert (data["status"], data["balance"], data["currency"]) == ("RS_OK", 4900 * 100_000, "JPY")


async def test_free_bet_moves_no_cash(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    data = await ask(hub88, bet(hub88, player, 1_00, is_free=True))
    assert (data["status"], data["balance"]) == ("RS_OK", 100_00_000)
    assert wallet.executed[-1].free_round and wallet.executed[-1].amount == 0


# --- retries and idempotency ----------------------------------------------------------------------
async def test_retried_bet_debits_once(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r1")
    first = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    payload["request_uuid"] = hub88.sim.new_id()  # a retry is a new attempt of the same transaction
    again = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    assert first["status"] == again["status"] == "RS_OK"
    assert again["balance"] == first["balance"] == 99_00_000
    assert again["request_uuid"] == payload["request_uuid"]
    assert await wallet.balance(player) == 99_00


async def test_retried_win_credits_once(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    b = bet(hub88, player, 1_00)
    await ask(hub88, b)
    w = win(hub88, player, 3_00, orjson.loads(b.body)["transaction_uuid"])
    assert (await ask(hub88, w))["balance"] == 102_00_000
    assert (await ask(hub88, w))["status"] == "RS_OK"
    assert await wallet.balance(player) == 102_00


async def test_same_id_other_details_is_duplicate_transaction(hub88: Provider, player: PlayerSession) -> None:
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r1")
    await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    payload["amount"] = from_minor(2_00, "EUR")
    data = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    assert data["status"] == "RS_ERROR_DUPLICATE_TRANSACTION"


# --- rollbacks ------------------------------------------------------------------------------------
async def test_rollback_of_unknown_bet_tombstones(hub88: Provider, wallet: FakeWallet,
                                                  player: PlayerSession) -> None:
    bet_id = hub88.sim.new_id()
    rb = hub88.sim.rollback(player.player_id, player.token, reference=bet_id, round="r1")
    data = await ask(hub88, rb)
    assert (data["status"], data["balance"], data["currency"]) == ("RS_OK", 100_00_000, "EUR")
    assert (await ask(hub88, rb))["status"] == "RS_OK"  # repeated rollback
    again = hub88.sim.rollback(player.player_id, player.token, reference=bet_id, round="r1")
    assert (await ask(hub88, again))["status"] == "RS_OK"  # another rollback of the same bet
    late = await ask(hub88, bet(hub88, player, 1_00, transaction_uuid=bet_id))
    assert late["status"] == "RS_ERROR_TRANSACTION_ROLLED_BACK"
    assert await wallet.balance(player) == 100_00


async def test_rollback_refunds_and_win_after_rollback_refused(hub88: Provider, wallet: FakeWallet,
                                                               player: PlayerSession) -> None:
    b = bet(hub88, player, 5_00)
    bet_id = orjson.loads(b.body)["transaction_uuid"]
    await ask(hub88, b)
    data = await ask(hub88, hub88.sim.rollback(player.player_id, player.token, reference=bet_id, round="r1"))
    assert (data["status"], data["balance"]) == ("RS_OK", 100_00_000)
    late = await ask(hub88, win(hub88, player, 7_00, bet_id))
    assert late["status"] == "RS_ERROR_TRANSACTION_ROLLED_BACK"
    assert await wallet.balance(player) == 100_00


async def test_win_of_unknown_bet(hub88: Provider, player: PlayerSession) -> None:
    data = await ask(hub88, win(hub88, player, 1_00, hub88.sim.new_id()))
    assert data["status"] == "RS_ERROR_TRANSACTION_DOES_NOT_EXIST"


async def test_bet_on_closed_round(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    b = bet(hub88, player, 1_00)
    await ask(hub88, b)
    await ask(hub88, win(hub88, player, 0, orjson.loads(b.body)["transaction_uuid"], round_closed=True))
    data = await ask(hub88, bet(hub88, player, 1_00))
    assert data["status"] == "RS_ERROR_UNKNOWN"
    assert await wallet.balance(player) == 99_00


# --- refusals -------------------------------------------------------------------------------------
async def test_insufficient_funds_carries_balance(hub88: Provider, player: PlayerSession) -> None:
    data = await ask(hub88, bet(hub88, player, 100_01))
    assert data["status"] == "RS_ERROR_NOT_ENOUGH_MONEY"
    assert (data["balance"], data["currency"], data["user"]) == (100_00_000, "EUR", player.player_id)


@pytest.mark.parametrize(("status", "code"), [
    (Status.LOSS_LIMIT, "RS_ERROR_LIMIT_REACHED"),
    (Status.STAKE_LIMIT, "RS_ERROR_LIMIT_REACHED"),
    (Status.SESSION_LIMIT, "RS_ERROR_LIMIT_REACHED"),
    (Status.SELF_EXCLUDED, "RS_ERROR_USER_DISABLED"),
])
async def test_responsible_gaming_refusal(hub88: Provider, wallet: FakeWallet, player: PlayerSession,
                                          status: Status, code: str) -> None:
    await wallet.refuse_bets(player.player_id, status)
    assert (await ask(hub88, bet(hub88, player, 1_00)))["status"] == code


async def test_invalid_and_expired_tokens(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    bad = hub88.sim.bet(player.player_id, "nope", amount=1_00, currency="EUR", round="r1")
    assert (await ask(hub88, bad))["status"] == "RS_ERROR_INVALID_TOKEN"
    b = bet(hub88, player, 1_00)
    await ask(hub88, b)
    await wallet.expire(player)
    assert (await ask(hub88, bet(hub88, player, 1_00)))["status"] == "RS_ERROR_TOKEN_EXPIRED"
    # settlements are never refused for an expired (or evicted) token
    data = await ask(hub88, win(hub88, player, 2_00, orjson.loads(b.body)["transaction_uuid"]))
    assert (data["status"], data["balance"]) == ("RS_OK", 101_00_000)
    b2 = orjson.loads(bet(hub88, player, 1_00).body)["transaction_uuid"]
    rb = hub88.sim.rollback(player.player_id, "evicted-token", reference=b2)
    assert (await ask(hub88, rb))["status"] == "RS_OK"
    assert (await ask(hub88, hub88.sim.balance(player.player_id, player.token)))["status"] == "RS_OK"


async def test_unknown_player_and_foreign_token(hub88: Provider, wallet: FakeWallet,
                                                player: PlayerSession) -> None:
    assert (await ask(hub88, hub88.sim.user_info("ghost")))["status"] == "RS_ERROR_INVALID_TOKEN"
    other = await wallet.add_player(hub88.config.id)
    foreign = hub88.sim.bet(other.player_id, player.token, amount=1_00, currency="EUR", round="r1")
    assert (await ask(hub88, foreign))["status"] == "RS_ERROR_INVALID_TOKEN"
    win_ghost = hub88.sim.win("ghost", "no-token", amount=1_00, currency="EUR", reference="x", round="r")
    assert (await ask(hub88, win_ghost))["status"] == "RS_ERROR_INVALID_TOKEN"


async def test_wrong_and_unknown_currency(hub88: Provider, player: PlayerSession) -> None:
    assert (await ask(hub88, bet(hub88, player, 1_00, currency="USD")))["status"] == "RS_ERROR_WRONG_CURRENCY"
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r")
    payload["currency"] = "XXX"
    data = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    assert data["status"] == "RS_ERROR_WRONG_CURRENCY"


async def test_brand_not_served(wallet: FakeWallet, hub88_config: ProviderConfig,
                                rsa_keys: tuple[str, str]) -> None:
    config = ProviderConfig(id="hub88", protocol="hub88", public_key_pem=rsa_keys[1], brands=("other",))
    http = await mount(Hub88Adapter(config, wallet))
    try:
        p = Provider(http, Hub88Client(rsa_keys[0], base_path="/v1/providers/hub88"), config,
                     "/v1/providers/hub88")
        s = await wallet.add_player("hub88")
        assert (await ask(p, bet(p, s, 1_00)))["status"] == "RS_ERROR_INVALID_PARTNER"
    finally:
        await http.close()


# --- retryable failures ---------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RateLimited(), Overloaded(), LedgerTimeout()], ids=lambda x: x.code)
@pytest.mark.parametrize("after_apply", [False, True], ids=["not-applied", "applied"])
async def test_retryable_bet_then_rollback(hub88: Provider, wallet: FakeWallet, player: PlayerSession,
                                          exc: Exception, after_apply: bool) -> None:
    await wallet.fail_next(exc, after_apply=after_apply)  # type: ignore[arg-type]
    b = bet(hub88, player, 4_00)
    data = await ask(hub88, b)
    assert data["status"] == "RS_ERROR_UNKNOWN"
    # Hub88 then rolls the bet back: it must work whether or not the bet was applied
    rb = hub88.sim.rollback(player.player_id, player.token, reference=orjson.loads(b.body)["transaction_uuid"])
    data = await ask(hub88, rb)
    assert (data["status"], data["balance"]) == ("RS_OK", 100_00_000)
    assert await wallet.balance(player) == 100_00


async def test_retryable_win_then_retry(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    b = bet(hub88, player, 1_00)
    await ask(hub88, b)
    await wallet.fail_next(LedgerTimeout(), after_apply=True)
    w = win(hub88, player, 5_00, orjson.loads(b.body)["transaction_uuid"])
    assert (await ask(hub88, w))["status"] == "RS_ERROR_UNKNOWN"
    data = await ask(hub88, w)
    assert (data["status"], data["balance"]) == ("RS_OK", 104_00_000)


async def test_crash_is_still_http_200(hub88: Provider, wallet: FakeWallet, player: PlayerSession,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(wallet, "execute", boom)
    data = await ask(hub88, bet(hub88, player, 1_00))
    assert data["status"] == "RS_ERROR_UNKNOWN"


# --- authentication and strict parsing ------------------------------------------------------------
async def test_signature_tampering(hub88: Provider, wallet: FakeWallet, player: PlayerSession) -> None:
    good = bet(hub88, player, 1_00)
    tampered = Call(good.path, good.headers, good.body.replace(b'"amount":100000', b'"amount":1000'))
    assert tampered.body != good.body
    assert (await ask(hub88, tampered))["status"] == "RS_ERROR_INVALID_SIGNATURE"
    missing = Call(good.path, {"Content-Type": "application/json"}, good.body)
    assert (await ask(hub88, missing))["status"] == "RS_ERROR_INVALID_SIGNATURE"
    garbage = Call(good.path, {SIGNATURE_HEADER: "not base64!"}, good.body)
    assert (await ask(hub88, garbage))["status"] == "RS_ERROR_INVALID_SIGNATURE"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = stranger.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    forged = Hub88Client(pem, base_path=hub88.base).bet(player.player_id, player.token, amount=1_00,
                                                        currency="EUR", round="r1")
    assert (await ask(hub88, forged))["status"] == "RS_ERROR_INVALID_SIGNATURE"
    reformatted = Call(good.path, good.headers, orjson.dumps(orjson.loads(good.body), option=orjson.OPT_INDENT_2))
    assert (await ask(hub88, reformatted))["status"] == "RS_ERROR_INVALID_SIGNATURE"
    assert wallet.executed == []
    assert base64.b64decode(good.headers[SIGNATURE_HEADER])  # the good one is plain base64


@pytest.mark.parametrize("amount", [100_500, 1, 999, 100_001])
async def test_excess_precision_refused(hub88: Provider, wallet: FakeWallet, player: PlayerSession,
                                        amount: int) -> None:
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r")
    payload["amount"] = amount
    data = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    assert data["status"] == "RS_ERROR_WRONG_TYPES"
    assert wallet.executed == []


@pytest.mark.parametrize(("field", "value", "status"), [
    ("amount", 1000.0, "RS_ERROR_WRONG_TYPES"),
    ("amount", "100000", "RS_ERROR_WRONG_TYPES"),
    ("amount", True, "RS_ERROR_WRONG_TYPES"),
    ("amount", -100000, "RS_ERROR_WRONG_TYPES"),
    ("amount", 0, "RS_ERROR_WRONG_TYPES"),
    ("round_closed", "false", "RS_ERROR_WRONG_TYPES"),
    ("token", 12, "RS_ERROR_WRONG_TYPES"),
    ("meta", "x", "RS_ERROR_WRONG_TYPES"),
    ("user", None, "RS_ERROR_WRONG_TYPES"),
])
async def test_wrong_types(hub88: Provider, wallet: FakeWallet, player: PlayerSession, field: str,
                           value: object, status: str) -> None:
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r")
    payload[field] = value
    assert (await ask(hub88, hub88.sim.signed("/transaction/bet", payload)))["status"] == status
    assert wallet.executed == []


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"user":"u"}', b"", b'{"request_uuid": "r"'])
async def test_wrong_syntax(hub88: Provider, wallet: FakeWallet, body: bytes) -> None:
    data = await ask(hub88, hub88.sim.signed("/transaction/bet", body))
    assert data["status"] == "RS_ERROR_WRONG_SYNTAX"
    assert wallet.executed == []


async def test_missing_field_echoes_request(hub88: Provider, player: PlayerSession) -> None:
    payload = hub88.sim.bet_payload(player.player_id, player.token, amount=1_00, currency="EUR", round="r")
    del payload["transaction_uuid"]
    data = await ask(hub88, hub88.sim.signed("/transaction/bet", payload))
    assert data == {"user": player.player_id, "status": "RS_ERROR_WRONG_SYNTAX",
                    "request_uuid": payload["request_uuid"]}


async def test_source_network_refused(wallet: FakeWallet, rsa_keys: tuple[str, str]) -> None:
    config = ProviderConfig(id="hub88", protocol="hub88", public_key_pem=rsa_keys[1],
                            allowed_networks=networks("10.0.0.0/8"))
    http = await mount(Hub88Adapter(config, wallet))
    try:
        p = Provider(http, Hub88Client(rsa_keys[0], base_path="/v1/providers/hub88"), config,
                     "/v1/providers/hub88")
        s = await wallet.add_player("hub88")
        reply = await p.send(bet(p, s, 1_00))
        assert reply.status == 200 and reply.json["status"] == "RS_ERROR_INVALID_PARTNER"
        assert wallet.executed == []
    finally:
        await http.close()


def test_config_needs_an_rsa_public_key(wallet: FakeWallet) -> None:
    with pytest.raises(ValueError):
        Hub88Adapter(ProviderConfig(id="h", protocol="hub88"), wallet)


def test_money_conversion() -> None:
    assert to_minor(1_005_000, "EUR") == 1005
    assert to_minor(300_000, "JPY") == 3
    assert to_minor(100_500, "KWD") == 1005
    assert from_minor(1005, "EUR") == 1_005_000
    with pytest.raises(InvalidAmount):
        to_minor(100_500, "USD")
    with pytest.raises(InvalidAmount):
        to_minor(1_001, "KWD")


# --- property: any valid sequence of rounds leaves exactly the expected balance ------------------
round_plans = st.lists(
    st.tuples(
        st.integers(1, 30_00),                                     # bet in minor units
        st.one_of(st.none(), st.integers(0, 60_00)),               # win (None: rolled back)
        st.booleans(),                                             # retry the bet
        st.booleans(),                                             # retry the settlement
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 50_00), plan=round_plans)
async def test_random_rounds_leave_expected_balance(hub88: Provider, wallet: FakeWallet, start: int,
                                                    plan: list[tuple[int, int | None, bool, bool]]) -> None:
    s = await wallet.add_player(hub88.config.id, balance=start)
    expected = start
    for stake, payout, retry_bet, retry_settle in plan:
        b, w = hub88.sim.round(s.player_id, s.token, currency="EUR", bet=stake, win=payout or 0)
        bet_id = orjson.loads(b.body)["transaction_uuid"]
        settle = w if payout is not None else hub88.sim.rollback(s.player_id, s.token, reference=bet_id)
        first = await ask(hub88, b)
        if retry_bet:
            assert await ask(hub88, b) == first
        placed = first["status"] == "RS_OK"
        assert placed == (stake <= expected)
        if placed:
            expected -= stake
            expected += payout if payout is not None else stake
        done = await ask(hub88, settle)
        if retry_settle:
            done = await ask(hub88, settle)
        if placed or payout is None:
            assert done["status"] == "RS_OK"
            assert done["balance"] == expected * 1000
    assert await wallet.balance(s) == expected
    assert (await ask(hub88, hub88.sim.balance(s.player_id, s.token)))["balance"] == expected * 1000
