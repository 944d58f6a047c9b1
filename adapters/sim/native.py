"""The provider side of the native protocol: HMAC-signed JSON calls."""

from __future__ import annotations

from typing import Any

import orjson

from adapters.native import SIGNATURE_HEADER, sign
from adapters.sim import Call


class NativeClient:
    """The provider side of the native protocol: signed calls for tests, the simulator and Locust."""

    def __init__(self, provider_id: str, secret: str) -> None:
        self.provider_id = provider_id
        self.secret = secret
        self.base = f"/v1/providers/{provider_id}"

    def call(self, action: str, **fields: Any) -> Call:
        body = orjson.dumps({k: v for k, v in fields.items() if v is not None})
        return Call(f"{self.base}/{action}", {SIGNATURE_HEADER: sign(self.secret, body),
                                               "Content-Type": "application/json"}, body)

    def authenticate(self, launch_token: str) -> Call:
        return self.call("authenticate", launch_token=launch_token)

    def balance(self, session_token: str) -> Call:
        return self.call("balance", session_token=session_token)

    def bet(self, session_token: str, tx_id: str, round_id: str, amount: str, currency: str, **kw: Any) -> Call:
        return self.call("bet", session_token=session_token, transaction_id=tx_id, round_id=round_id,
                         amount=amount, currency=currency, **kw)

    def win(self, session_token: str | None, tx_id: str, round_id: str, amount: str, currency: str,
            **kw: Any) -> Call:
        return self.call("win", session_token=session_token, transaction_id=tx_id, round_id=round_id,
                         amount=amount, currency=currency, **kw)

    def rollback(self, session_token: str | None, tx_id: str, bet_tx_id: str, **kw: Any) -> Call:
        return self.call("rollback", session_token=session_token, transaction_id=tx_id,
                         bet_transaction_id=bet_tx_id, **kw)

    def end_round(self, session_token: str | None, round_id: str, **kw: Any) -> Call:
        return self.call("end-round", session_token=session_token, round_id=round_id, **kw)
