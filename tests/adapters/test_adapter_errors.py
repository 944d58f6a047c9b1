"""What all protocols share: every error class has a code every protocol defines; exact JSON; tracing."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from adapter_harness import Provider
from real_backend import Backend

from adapters.base import Adapter
from adapters.evolution import EvolutionAdapter
from adapters.flow import code_for
from adapters.hub88 import Hub88Adapter
from adapters.jsonwire import Raw, dumps, loads_exact, money, obj
from adapters.pragmatic import DESCRIPTIONS, PragmaticAdapter
from gateway import errors as e
from ledger.commands import Result, Status

ADAPTERS: list[type[Adapter]] = [Hub88Adapter, PragmaticAdapter, EvolutionAdapter]

PROTOCOL_CODES: dict[str, set[Any]] = {
    "hub88": {
        "RS_OK", "RS_ERROR_UNKNOWN", "RS_ERROR_INVALID_PARTNER", "RS_ERROR_INVALID_TOKEN",
        "RS_ERROR_TOKEN_EXPIRED", "RS_ERROR_INVALID_GAME", "RS_ERROR_WRONG_CURRENCY",
        "RS_ERROR_NOT_ENOUGH_MONEY", "RS_ERROR_USER_DISABLED", "RS_ERROR_INVALID_SIGNATURE",
        "RS_ERROR_WRONG_SYNTAX", "RS_ERROR_WRONG_TYPES", "RS_ERROR_DUPLICATE_TRANSACTION",
        "RS_ERROR_TRANSACTION_DOES_NOT_EXIST", "RS_ERROR_TRANSACTION_ROLLED_BACK", "RS_ERROR_LIMIT_REACHED",
    },
    "pragmatic": set(DESCRIPTIONS),
    "evolution": {
        "OK", "TEMPORARY_ERROR", "UNKNOWN_ERROR", "INVALID_TOKEN_ID", "INVALID_SID", "ACCOUNT_LOCKED",
        "FATAL_ERROR_CLOSE_USER_SESSION", "INVALID_PARAMETER", "INSUFFICIENT_FUNDS", "BET_DOES_NOT_EXIST",
        "BET_ALREADY_EXIST", "BET_ALREADY_SETTLED", "FINAL_ERROR_ACTION_FAILED", "SESSION_ALREADY_CLOSED",
        "SESSION_DOES_NOT_EXIST", "CASINO_LIMIT_EXCEEDED_TURNOVER", "CASINO_LIMIT_EXCEEDED_SESSION_TIME",
        "CASINO_LIMIT_EXCEEDED_STAKE", "CASINO_LIMIT_EXCEEDED_LOSS",
    },
}

by_protocol = pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.protocol)


@by_protocol
def test_every_error_class_is_mapped(adapter: type[Adapter]) -> None:
    tree = e.concrete_errors()
    assert len(tree) > 30
    for cls in tree:
        assert adapter.error_code(cls) in PROTOCOL_CODES[adapter.protocol]
    unmapped = [c.__name__ for c in tree if c.__module__ == "gateway.errors" and c not in adapter.ERRORS]
    assert unmapped == [], f"{adapter.protocol} has no explicit code for {unmapped}"
    assert set(adapter.ERRORS) <= set(tree)
    assert set(adapter.ERRORS.values()) <= PROTOCOL_CODES[adapter.protocol]


@by_protocol
def test_every_ledger_status_has_an_answer(adapter: type[Adapter]) -> None:
    for status in Status:
        err = e.error_for(Result("c", status, 0, "EUR"))
        if status is Status.OK:
            assert err is None
        else:
            assert err is not None and adapter.error_code(err) in PROTOCOL_CODES[adapter.protocol]
    dup = e.error_for(Result("c", Status.OK, 0, "EUR", duplicate=True))
    assert dup is not None and adapter.error_code(dup) in PROTOCOL_CODES[adapter.protocol]


@pytest.mark.parametrize(("adapter", "success"), [(Hub88Adapter, "RS_OK"), (PragmaticAdapter, 0)],
                         ids=["hub88", "pragmatic"])
def test_tombstones_and_retries_answer_success(adapter: type[Adapter], success: Any) -> None:
    for cls in (e.RollbackOfUnknown, e.AlreadyRolledBack, e.Duplicate):
        assert adapter.error_code(cls) == success
    assert adapter.error_code(e.IdempotencyConflict) != success


def test_retryable_codes() -> None:
    for cls in (e.RateLimited, e.Overloaded, e.LedgerTimeout, e.BetsPaused):
        assert Hub88Adapter.error_code(cls) == "RS_ERROR_UNKNOWN"
        assert PragmaticAdapter.error_code(cls) == 100
        assert EvolutionAdapter.error_code(cls) == "TEMPORARY_ERROR"


def test_overrides_name_exact_classes() -> None:
    adapter = EvolutionAdapter.__new__(EvolutionAdapter)
    assert code_for(adapter, e.Duplicate(), EvolutionAdapter.DEBIT_OVERRIDES) == "BET_ALREADY_EXIST"
    assert code_for(adapter, e.Duplicate()) == "BET_ALREADY_SETTLED"
    # an override of a base does not shadow the explicit code of a subclass
    assert code_for(adapter, e.IdempotencyConflict(), EvolutionAdapter.DEBIT_OVERRIDES) == "BET_ALREADY_EXIST"
    assert code_for(adapter, e.InsufficientFunds(), {e.Refused: "X"}) == "INSUFFICIENT_FUNDS"


def test_jsonwire_round_trip() -> None:
    body = dumps([("a", money(10011, "EUR")), ("b", obj([("c", Raw("0.10")), ("d", None)])), ("e", "x\"y")])
    assert body == b'{"a":100.11,"b":{"c":0.10,"d":null},"e":"x\\"y"}'
    assert loads_exact(body) == {"a": Decimal("100.11"), "b": {"c": Decimal("0.10"), "d": None}, "e": 'x"y'}
    assert str(loads_exact(b'{"a": 0.30000000000000004}')["a"]) == "0.30000000000000004"
    for bad in (b"NaN", b'{"a": -Infinity}', b"[" * 100_000, b"\xff"):
        with pytest.raises(ValueError):
            loads_exact(bad)


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_traceparent_reaches_the_command(hub88: Provider, pragmatic: Provider, evolution: Provider,
                                               wallet: Backend) -> None:
    for p in (hub88, pragmatic, evolution):
        s = await wallet.add_player(p.config.id)
        first = p.sim.round(s.player_id, s.token, currency="EUR", bet=1_00, win=0)[0]
        call = first._replace(headers={**first.headers, "traceparent": TRACE})
        reply = await p.send(call)
        assert reply.status == 200
        assert wallet.executed[-1].traceparent == TRACE


@by_protocol
def test_docs_error_table_matches(adapter: type[Adapter]) -> None:
    """``docs/<protocol>.md`` documents exactly the codes the adapter answers."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / f"{adapter.protocol}.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (?:`\w+`)? *\| `([^`]+)` \|$", doc, re.MULTILINE)
    documented = {name: code for name, code in rows}
    expected = {cls.__name__: str(code) for cls, code in adapter.ERRORS.items()}
    assert documented == expected
    statuses = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", doc, re.MULTILINE)
    for name, status in statuses:
        assert e.STATUS_ERRORS[Status(status)].__name__ == name


async def test_oversized_bodies_get_protocol_answers(hub88: Provider, pragmatic: Provider,
                                                     evolution: Provider) -> None:
    big = b"x" * (1024 * 1024 + 1)  # over aiohttp's default client_max_size
    h = await hub88.post("/transaction/bet", big)
    assert (h.status, h.json["status"]) == (200, "RS_ERROR_WRONG_SYNTAX")
    p = await pragmatic.post("/bet.html", big)
    assert (p.status, p.json["error"]) == (200, 7)
    v = await evolution.post(f"/debit?authToken={evolution.sim.auth_token}", big)
    assert (v.status, v.json["status"]) == (200, "INVALID_PARAMETER")
