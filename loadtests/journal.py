"""What the load saw, written down so a checker can prove it against the ledger afterwards.

Every money call is journalled twice: a ``sent`` record before its first attempt (with the exact
request, so the checker can re-send it when no definitive answer ever came back) and a ``done`` record
for each definitive answer. A call is *definitive* when the provider would stop retrying it: success or
a refusal. A retryable answer (HTTP 429/503, ``retryable: true``, Pragmatic error 100/120, a dropped
connection) is not: the provider sends the same transaction again, byte for byte, until it is.

One JSONL file per process (Locust with ``--processes`` forks), buffered and flushed at exit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from adapters.sim import Call


class Answer(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    RETRY = "retry"


def classify(proto: str, status: int, body: bytes) -> tuple[Answer, str]:
    """(definitive or not, a short code) for one HTTP answer in the caller's protocol."""
    try:
        data: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return Answer.RETRY, f"http {status}, no JSON"
    if proto == "pragmatic":
        code = data.get("error")
        if status != 200 or code in (100, 120):
            return Answer.RETRY, f"error {code}"
        return (Answer.OK, "0") if code == 0 else (Answer.REFUSED, f"error {code}")
    if status in (429, 503) or status >= 500 or data.get("retryable") is True:
        return Answer.RETRY, str(data.get("code") or status)
    if proto == "native":
        if status == 200 and data.get("status") == "OK":
            return Answer.OK, "duplicate" if data.get("duplicate") else "OK"
        return Answer.REFUSED, str(data.get("code") or status)
    # the operator API (deposits)
    return (Answer.OK, str(status)) if status in (200, 201) else (Answer.REFUSED, str(data.get("code") or status))


@dataclass(frozen=True, slots=True)
class Money:
    """One money call as the ledger will know it: the idempotency key and its effect if applied."""

    proto: str        # native | pragmatic | operator
    provider: str     # the ledger's provider_id
    kind: str         # bet | win | rollback | end | deposit
    brand: str
    player: str
    currency: str
    tx: str           # the ledger's tx_id
    amount: int = 0   # minor units
    ref: str = ""     # the bet a rollback reverses (ledger tx_id)


class Journal:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"journal-{os.getpid()}.jsonl"
        self._file: IO[bytes] = self.path.open("ab", buffering=1 << 16)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}-"

    def sent(self, money: Money, call: Call) -> str:
        rec_id = f"{self._prefix}{next(self._ids)}"
        self._write({"e": "s", "id": rec_id, "proto": money.proto, "provider": money.provider, "kind": money.kind,
                     "brand": money.brand, "player": money.player, "cur": money.currency, "tx": money.tx,
                     "amount": money.amount, "ref": money.ref, "path": call.path, "headers": call.headers,
                     "body": call.body.decode()})
        return rec_id

    def done(self, rec_id: str, answer: Answer, code: str) -> None:
        self._write({"e": "d", "id": rec_id, "ok": answer is Answer.OK, "code": code})

    def _write(self, rec: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(rec) + b"\n")

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._file.flush()
            self._file.close()


def read_journals(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of every process's journal (a torn last line from a killed process is skipped)."""
    out: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("journal-*.jsonl")):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
    return out
