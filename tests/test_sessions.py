"""Which brand a settlement without a session token belongs to: profiles per brand, never a guess."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as redis

from core.errors import AmbiguousPlayer, UnknownPlayer
from core.records import PlayerSession
from core.settings import Settings
from gateway.sessions import SessionStore, pick_profile


def test_pick_profile() -> None:
    both = {"b1": "one", "b2": "two"}
    assert pick_profile(both, ("b2",)) == "two"  # the provider serves one brand: that one
    assert pick_profile(both, ("b2", "b3")) == "two"  # the only one of the served brands the player has
    assert pick_profile({"b1": "one"}, ()) == "one"  # an unrestricted provider, one brand known
    with pytest.raises(AmbiguousPlayer):
        pick_profile(both, ())
    with pytest.raises(AmbiguousPlayer):
        pick_profile(both, ("b1", "b2"))
    for profiles, served in (({}, ()), (both, ("b3",)), (both, ("b3", "b4"))):
        with pytest.raises(UnknownPlayer) as refused:
            pick_profile(profiles, served)
        assert not isinstance(refused.value, AmbiguousPlayer)


@pytest.fixture
async def store(settings: Settings, redis_url: str) -> AsyncIterator[SessionStore]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield SessionStore(settings, client)
    finally:
        await client.aclose()


def _player(brand: str, player_id: str) -> PlayerSession:
    return PlayerSession(token="", provider_id="pp", tenant_id="t1", brand_id=brand, license="MGA",
                         player_id=player_id, currency="EUR")


async def test_profiles_are_kept_per_brand(store: SessionStore) -> None:
    pid = f"shared-{uuid.uuid4().hex[:8]}"
    await store.launch("pp", _player("b1", pid))
    assert (await store.profile("pp", pid)).brand_id == "b1"
    await store.launch("pp", _player("b2", pid))  # the same player id at another brand
    with pytest.raises(AmbiguousPlayer):
        await store.profile("pp", pid)
    assert (await store.profile("pp", pid, ("b1",))).brand_id == "b1"
    assert (await store.profile("pp", pid, ("b2", "b9"))).brand_id == "b2"
    with pytest.raises(UnknownPlayer):
        await store.profile("pp", pid, ("b9",))


async def test_a_profile_stored_before_brands_serves_only_its_own_single_brand_provider(
        store: SessionStore) -> None:
    pid = f"legacy-{uuid.uuid4().hex[:8]}"
    legacy = dataclasses.asdict(_player("b1", pid))
    await store.r.set(store._k("player", "pp", pid), orjson.dumps(legacy), ex=60)
    assert (await store.profile("pp", pid, ("b1",))).brand_id == "b1"
    for served in ((), ("b2",), ("b1", "b2")):  # it names one brand of possibly several: not a guess to make
        with pytest.raises(UnknownPlayer):
            await store.profile("pp", pid, served)
