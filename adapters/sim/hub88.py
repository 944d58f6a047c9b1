"""Hub88's side: RSA-signed requests as Hub88 sends them."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.hub88 import SIGNATURE_HEADER, from_minor
from adapters.sim import Call


class Hub88Client:
    """Hub88's side: signed requests as Hub88 sends them (for tests and load generation).

    Amounts are given in minor units and sent as Hub88 money. Each method returns a ``Call``.
    """

    def __init__(self, private_key_pem: str | bytes, *, base_path: str = "", game_code: str = "hub88_game"):
        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("private_key_pem is not an RSA private key")
        self._key = key
        self.base_path = base_path.rstrip("/")
        self.game_code = game_code

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self._key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()

    def signed(self, path: str, payload: dict[str, Any] | bytes) -> Call:
        """A call to ``path`` (e.g. ``/transaction/bet``) with ``payload`` signed as sent."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: self.sign(body)}
        return Call(self.base_path + path, headers, body)

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def user_info(self, user: str) -> Call:
        return self.signed("/user/info", {"user": user, "request_uuid": self.new_id()})

    def balance(self, user: str, token: str) -> Call:
        return self.signed("/user/balance", {"user": user, "token": token, "request_uuid": self.new_id(),
                                             "game_code": self.game_code})

    def bet_payload(self, user: str, token: str, *, amount: int, currency: str, round: str | None,
                    transaction_uuid: str | None = None, round_closed: bool = False,
                    is_free: bool = False) -> dict[str, Any]:
        tx = transaction_uuid or self.new_id()
        return {
            "user": user, "transaction_uuid": tx, "supplier_transaction_id": f"sup-{tx}", "token": token,
            "supplier_user": None, "round_closed": round_closed, "round": round, "reward_uuid": None,
            "request_uuid": self.new_id(), "is_free": is_free, "is_aggregated": False,
            "game_code": self.game_code, "currency": currency, "bet": None,
            "amount": from_minor(amount, currency), "meta": None,
        }

    def bet(self, user: str, token: str, **kw: Any) -> Call:
        return self.signed("/transaction/bet", self.bet_payload(user, token, **kw))

    def win_payload(self, user: str, token: str, *, amount: int, currency: str, reference: str,
                    round: str | None, transaction_uuid: str | None = None, round_closed: bool = True,
                    is_free: bool = False) -> dict[str, Any]:
        payload = self.bet_payload(user, token, amount=amount, currency=currency, round=round,
                                   transaction_uuid=transaction_uuid, round_closed=round_closed,
                                   is_free=is_free)
        payload["reference_transaction_uuid"] = reference
        return payload

    def win(self, user: str, token: str, **kw: Any) -> Call:
        return self.signed("/transaction/win", self.win_payload(user, token, **kw))

    def rollback(self, user: str, token: str, *, reference: str, round: str | None = None,
                 transaction_uuid: str | None = None) -> Call:
        tx = transaction_uuid or self.new_id()
        return self.signed("/transaction/rollback", {
            "user": user, "transaction_uuid": tx, "supplier_transaction_id": f"sup-{tx}", "token": token,
            "round_closed": True, "round": round, "request_uuid": self.new_id(),
            "reference_transaction_uuid": reference, "game_code": self.game_code, "meta": None,
        })

    def round(self, user: str, token: str, *, currency: str, bet: int, win: int | None,
              round_id: str | None = None) -> list[Call]:
        """A bet, then its win (``win=None``: a lost round, settled with a zero win)."""
        rid = round_id or self.new_id()
        bet_tx = self.new_id()
        return [
            self.bet(user, token, amount=bet, currency=currency, round=rid, transaction_uuid=bet_tx),
            self.win(user, token, amount=win or 0, currency=currency, reference=bet_tx, round=rid),
        ]
