"""Every money rule of the spine, through the HTTP API, against the real writers and databases."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import orjson

from tests.support import ADMIN_KEY, Api


def tx() -> str:
    return uuid.uuid4().hex[:16]


async def test_deposit_is_idempotent_and_conflicts_on_other_amount(api: Api) -> None:
    player = api.player()
    status, first = await api.deposit(player, "25.00", key="dep-a")
    assert status == 200 and first["balance"] == "25.00" and first["duplicate"] is False
    status, again = await api.deposit(player, "25.00", key="dep-a")
    assert status == 200 and again["duplicate"] is True and again["transaction_id"] == first["transaction_id"]
    status, conflict = await api.deposit(player, "30.00", key="dep-a")
    assert status == 409 and conflict["error"]["code"] == "idempotency_conflict"
    assert await api.balance(player) == "25.00"


async def test_withdraw_needs_funds(api: Api) -> None:
    player, _ = await api.funded("10.00")
    status, body = await api.operator("POST", "/v1/wallet/withdraw",
                                      {**player, "amount": "10.01", "idempotency_key": tx()})
    assert status == 402 and body["error"]["code"] == "insufficient_funds"
    status, body = await api.operator("POST", "/v1/wallet/withdraw",
                                      {**player, "amount": "4.00", "idempotency_key": tx()})
    assert status == 200 and body["balance"] == "6.00"


async def test_bet_win_and_balance(api: Api) -> None:
    player, token = await api.funded("100.00")
    status, bet = await api.bet(token, "b-1", "r-1", "1.50")
    assert status == 200 and bet["balance"] == "98.50" and bet["duplicate"] is False
    status, win = await api.win(token, "w-1", "r-1", "4.00", bet_transaction_id="b-1", round_closed=True)
    assert status == 200 and win["balance"] == "102.50"
    assert await api.balance(player) == "102.50"
    status, body = await api.send(api.native.balance(token))
    assert status == 200 and body["balance"] == "102.50"


async def test_retry_returns_original_outcome_and_current_balance(api: Api) -> None:
    _, token = await api.funded("50.00")
    _, first = await api.bet(token, "b-1", "r-1", "5.00")
    await api.bet(token, "b-2", "r-2", "5.00")
    status, retry = await api.bet(token, "b-1", "r-1", "5.00")
    assert status == 200 and retry["duplicate"] is True
    assert retry["transaction_id"] == first["transaction_id"]
    assert retry["balance"] == "40.00"  # current, not the original 45.00
    status, conflict = await api.bet(token, "b-1", "r-1", "6.00")
    assert status == 409 and conflict["code"] == "idempotency_conflict"


async def test_refusal_is_recorded_so_a_retry_gets_the_same_refusal(api: Api) -> None:
    player, token = await api.funded("1.00")
    status, body = await api.bet(token, "b-1", "r-1", "2.00")
    assert status == 402 and body["code"] == "insufficient_funds" and body["balance"] == "1.00"
    await api.deposit(player, "10.00")
    status, body = await api.bet(token, "b-1", "r-1", "2.00")
    assert status == 402 and body["code"] == "insufficient_funds"
    assert await api.balance(player) == "11.00"


async def test_win_on_round_without_bet_refused_unless_free_round(api: Api) -> None:
    _, token = await api.funded("10.00")
    status, body = await api.win(token, "w-1", "no-such-round", "3.00")
    assert status == 404 and body["code"] == "round_not_found"
    status, body = await api.win(token, "w-2", "free-round-1", "3.00", free_round=True, type="bonus")
    assert status == 200 and body["balance"] == "13.00"
    status, body = await api.win(token, "w-3", "r-x", "3.00", bet_transaction_id="never-seen")
    assert status == 404 and body["code"] == "bet_not_found"


async def test_rollback_reverses_a_bet_and_twice_is_harmless(api: Api) -> None:
    player, token = await api.funded("10.00")
    await api.bet(token, "b-1", "r-1", "4.00")
    status, body = await api.rollback(token, "rb-1", "b-1")
    assert status == 200 and body["balance"] == "10.00"
    status, body = await api.rollback(token, "rb-1", "b-1")
    assert status == 200 and body["duplicate"] is True and body["balance"] == "10.00"
    status, body = await api.rollback(token, "rb-2", "b-1")
    assert status == 200 and body["outcome"] == "already_rolled_back" and body["balance"] == "10.00"
    status, body = await api.win(token, "w-1", "r-1", "5.00", bet_transaction_id="b-1")
    assert status == 409 and body["code"] == "tx_rolled_back"
    assert await api.balance(player) == "10.00"


async def test_rollback_of_unknown_is_tombstoned_and_later_bet_refused(api: Api) -> None:
    player, token = await api.funded("10.00")
    status, body = await api.rollback(token, "rb-1", "late-bet")
    assert status == 200 and body["outcome"] == "tombstoned" and body["balance"] == "10.00"
    status, body = await api.bet(token, "late-bet", "r-1", "2.00")
    assert status == 409 and body["code"] == "tx_rolled_back"
    assert await api.balance(player) == "10.00"


async def test_end_round_closes_it(api: Api) -> None:
    _, token = await api.funded("10.00")
    await api.bet(token, "b-1", "r-1", "1.00")
    status, _ = await api.end_round(token, "r-1")
    assert status == 200
    status, again = await api.end_round(token, "r-1")
    assert status == 200 and again["duplicate"] is True
    status, body = await api.bet(token, "b-2", "r-1", "1.00")
    assert status == 409 and body["code"] == "round_closed"
    status, body = await api.win(token, "w-1", "r-1", "2.00", bet_transaction_id="b-1")
    assert status == 200 and body["balance"] == "11.00"  # money owed is paid on a closed round


async def test_settlement_on_expired_session_is_accepted_but_bet_is_not(api: Api, gateway: object) -> None:
    from gateway.state import GatewayState

    state: GatewayState = gateway.state  # type: ignore[attr-defined]
    player, token = await api.funded("10.00")
    await api.bet(token, "b-1", "r-1", "1.00")
    key = state.wallet.sessions._k("sess", "demo", token)
    sess = orjson.loads(cast(bytes, await state.redis.get(key)))
    sess["expires_ms"] = 1
    await state.redis.set(key, orjson.dumps(sess))
    await asyncio.sleep(0.1)  # past the 50 ms local cache
    status, body = await api.bet(token, "b-2", "r-2", "1.00")
    assert status == 401 and body["code"] == "token_expired"
    status, body = await api.win(token, "w-1", "r-1", "3.00", bet_transaction_id="b-1")
    assert status == 200 and body["balance"] == "12.00"
    status, body = await api.win(None, "w-2", "r-1", "1.00", bet_transaction_id="b-1",
                                 player_id=player["player_id"])
    assert status == 200 and body["balance"] == "13.00"


async def test_concurrent_duplicates_of_one_bet_apply_once(api: Api) -> None:
    player, token = await api.funded("100.00")
    results = await asyncio.gather(*(api.bet(token, "same", "r-1", "7.00") for _ in range(25)))
    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, body in results if not body["duplicate"]) == 1
    assert len({body["transaction_id"] for _, body in results}) == 1
    assert await api.balance(player) == "93.00"


async def test_rollback_racing_its_bet_never_moves_money(api: Api) -> None:
    for i in range(6):
        player, token = await api.funded("20.00")
        bet_call = api.bet(token, f"race-{i}", f"r-{i}", "5.00")
        rb_call = api.rollback(token, f"rb-{i}", f"race-{i}")
        (bet_status, bet), (rb_status, rb) = await asyncio.gather(bet_call, rb_call) if i % 2 else reversed(
            await asyncio.gather(rb_call, bet_call))
        assert rb_status == 200
        if bet_status == 200:
            assert rb["outcome"] == "ok"  # the bet came first and was reversed
        else:
            assert bet["code"] == "tx_rolled_back" and rb["outcome"] == "tombstoned"
        assert await api.balance(player) == "20.00"


async def test_players_spread_over_all_shards(api: Api, gateway: object) -> None:
    from gateway.state import GatewayState

    state: GatewayState = gateway.state  # type: ignore[attr-defined]
    players = [api.player(f"spread-{i}") for i in range(24)]
    await asyncio.gather(*(api.deposit(p, "5.00") for p in players))
    shards = {state.ledger.shard_of(p["player_id"]) for p in players}
    assert shards == set(range(state.settings.shards))
    for shard, pool in state.pools.items():
        n = await pool.fetchval("SELECT count(*) FROM transactions WHERE player_id LIKE 'spread-%'")
        expected = sum(1 for p in players if state.ledger.shard_of(p["player_id"]) == shard)
        assert n == expected


async def test_responsible_gaming_limits(api: Api) -> None:
    player, token = await api.funded("500.00")
    async def limits(**values: object) -> tuple[int, dict[str, Any]]:
        return await api.operator("PUT", "/v1/players/limits",
                                  {**player, "idempotency_key": tx(), "limits": values})

    status, body = await limits(max_stake="5.00")
    assert status == 200 and body["limits"]["max_stake"]["value"] == "5.00"
    status, body = await api.bet(token, tx(), "r-1", "5.01")
    assert status == 403 and body["code"] == "stake_limit"
    status, body = await api.bet(token, tx(), "r-1", "5.00")
    assert status == 200

    status, body = await limits(loss_day="8.00")
    assert status == 200
    status, _ = await api.bet(token, tx(), "r-2", "3.00")  # loss today: 5 + 3 = 8
    assert status == 200
    status, body = await api.bet(token, tx(), "r-3", "0.01")
    assert status == 403 and body["code"] == "loss_limit"

    # an increase waits for the cooling-off period (2 s in the test settings); a decrease is immediate
    status, body = await limits(loss_day="100.00")
    assert body["limits"]["loss_day"]["value"] == "8.00" and body["limits"]["loss_day"]["pending"]["value"] == "100.00"
    status, body = await api.bet(token, tx(), "r-4", "1.00")
    assert status == 403 and body["code"] == "loss_limit"
    await asyncio.sleep(2.2)
    status, body = await api.bet(token, tx(), "r-5", "1.00")
    assert status == 200, body
    status, body = await limits(loss_day="9.00")
    assert body["limits"]["loss_day"]["value"] == "9.00"
    status, body = await api.bet(token, tx(), "r-6", "1.00")
    assert status == 403 and body["code"] == "loss_limit"


async def test_money_limits_are_per_currency(api: Api) -> None:
    """A limit in one currency's minor units must not hold for another currency's: EUR 5.00 is 500 minor
    units, which as JPY would be ¥500."""
    eur, eur_token = await api.funded("500.00")
    jpy = {**eur, "currency": "JPY"}
    assert (await api.deposit(jpy, "100000"))[0] == 200
    jpy_token = await api.session(jpy)

    async def put(body: dict[str, object]) -> tuple[int, dict[str, Any]]:
        return await api.operator("PUT", "/v1/players/limits", {**body, "idempotency_key": tx()})

    async def get(currency: str | None) -> dict[str, Any]:
        params = {"brand_id": eur["brand_id"], "player_id": eur["player_id"]}
        status, body = await api.operator("GET", "/v1/players/limits",
                                          params={**params, "currency": currency} if currency else params)
        assert status == 200, body
        answer: dict[str, Any] = body
        return answer

    status, limits = await put({**eur, "limits": {"max_stake": "5.00", "loss_day": "20.00"}})
    assert status == 200, limits
    status, body = await api.bet(jpy_token, tx(), "rj-1", "1000", currency="JPY")
    assert status == 200, body  # ¥1000: no JPY limit is set
    assert limits["currency"] == "EUR" and limits["limits"] == {"loss_day": {"value": "20.00"},
                                                                 "max_stake": {"value": "5.00"}}
    assert (await api.bet(eur_token, tx(), "re-1", "5.01"))[1]["code"] == "stake_limit"
    status, body = await put({**jpy, "limits": {"max_stake": "2000"}})
    assert status == 200 and body["limits"] == {"max_stake": {"value": "2000"}}
    assert (await api.bet(jpy_token, tx(), "rj-2", "2001", currency="JPY"))[1]["code"] == "stake_limit"
    assert (await api.bet(eur_token, tx(), "re-2", "5.00"))[0] == 200  # still EUR 5.00, not 20.00
    assert (await get("EUR"))["limits"] == {"loss_day": {"value": "20.00"}, "max_stake": {"value": "5.00"}}
    assert (await get("JPY"))["limits"] == {"max_stake": {"value": "2000"}}
    assert await get(None) == {"currency": None, "limits": {}}
    # a money limit names its currency; session and self-exclusion limits hold for every currency
    keys = {k: v for k, v in eur.items() if k != "currency"}
    status, body = await put({**keys, "limits": {"max_stake": "1.00"}})
    assert status == 400 and "currency" in body["error"]["message"], body
    status, body = await put({**keys, "limits": {"session_minutes": 30}})
    assert status == 200 and body == {"status": "OK", "duplicate": False, "currency": None,
                                      "limits": {"session_minutes": {"value": 30}}}
    assert (await get("JPY"))["limits"] == {"max_stake": {"value": "2000"}, "session_minutes": {"value": 30}}
    status, body = await api.operator("POST", "/v1/players/self-exclusion",
                                      {**keys, "idempotency_key": tx(), "days": 1})
    assert status == 200 and body["limits"]["self_exclude_until_ms"]["value"] > 0
    for token, currency, amount in ((eur_token, "EUR", "1.00"), (jpy_token, "JPY", "100")):
        assert (await api.bet(token, tx(), "rx", amount, currency=currency))[1]["code"] == "self_excluded"


async def test_self_exclusion_stops_bets_not_settlements(api: Api) -> None:
    player, token = await api.funded("50.00")
    await api.bet(token, "b-1", "r-1", "2.00")
    status, body = await api.operator("POST", "/v1/players/self-exclusion",
                                      {**player, "idempotency_key": tx(), "days": 30})
    assert status == 200 and body["limits"]["self_exclude_until_ms"]["value"] > 0
    status, body = await api.bet(token, "b-2", "r-2", "1.00")
    assert status == 403 and body["code"] == "self_excluded"
    status, body = await api.win(token, "w-1", "r-1", "3.00", bet_transaction_id="b-1")
    assert status == 200 and body["balance"] == "51.00"


async def test_session_time_limit(api: Api, gateway: object) -> None:
    from gateway.state import GatewayState

    state: GatewayState = gateway.state  # type: ignore[attr-defined]
    player, token = await api.funded("50.00")
    await api.operator("PUT", "/v1/players/limits",
                       {**player, "idempotency_key": tx(), "limits": {"session_minutes": 1}})
    status, _ = await api.bet(token, "b-1", "r-1", "1.00")
    assert status == 200
    key = state.wallet.sessions._k("sess", "demo", token)
    sess = orjson.loads(cast(bytes, await state.redis.get(key)))
    sess["started_ms"] -= 61_000
    await state.redis.set(key, orjson.dumps(sess))
    await asyncio.sleep(0.1)
    status, body = await api.bet(token, "b-2", "r-2", "1.00")
    assert status == 403 and body["code"] == "session_limit"


async def test_operator_api_needs_a_key_and_admin_role(api: Api) -> None:
    status, body = await api.operator("GET", "/v1/admin/degradation", key="wrong-key")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await api.operator("GET", "/v1/admin/degradation")
    assert status == 403
    status, body = await api.operator("GET", "/v1/admin/degradation", key=ADMIN_KEY)
    assert status == 200 and body["global"] == "normal"


async def test_health_and_readiness(api: Api) -> None:
    async with api.http.get(api.base + "/healthz") as resp:
        assert resp.status == 200
    async with api.http.get(api.base + "/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert body["checks"]["ledger_shard_0"] == "ok" and body["checks"]["redis"] == "ok"
    async with api.http.get(api.base + "/metrics") as resp:
        text = await resp.text()
        assert "gateway_requests_total" in text and "gateway_ledger_queue_depth" in text


async def test_launch_at_a_provider_without_token_exchange_opens_the_session(api: Api) -> None:
    from adapters.sim.hub88 import Hub88Client
    from tests.support import hub88_keys

    player, _ = await api.funded("10.00")
    status, body = await api.operator("POST", "/v1/sessions", {**player, "provider_id": "hub88"})
    assert status == 201 and body["session_token"] == body["launch_token"]
    sim = Hub88Client(hub88_keys()[0], base_path="/v1/providers/hub88")
    status, answer = await api.send(sim.bet(player["player_id"], body["session_token"], amount=250, currency="EUR",
                                            round=api.ns + "round-1"))
    assert status == 200 and answer["status"] == "RS_OK", answer
    assert answer["balance"] == 750_000  # 7.50 EUR in Hub88's units of 1/100 000
