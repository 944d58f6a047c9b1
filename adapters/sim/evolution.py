"""Evolution's side: JSON calls with exact decimal numbers, as Evolution sends them."""

from __future__ import annotations

import secrets
import urllib.parse
from typing import Any

import orjson

from adapters.exact_json import money
from adapters.sim import Call


class EvolutionClient:
    """Evolution's side: JSON calls as Evolution sends them (for tests and load generation).

    Amounts are given in minor units and sent as exact JSON decimal numbers. Each method returns a
    ``Call`` whose path carries ``?authToken=``.
    """

    def __init__(self, auth_token: str, *, base_path: str = "", table_id: str = "vip-roulette-123xyz",
                 game_type: str = "roulette") -> None:
        self.auth_token = auth_token
        self.base_path = base_path.rstrip("/")
        self.table_id = table_id
        self.game_type = game_type

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(12)

    def call(self, endpoint: str, fields: dict[str, Any] | bytes) -> Call:
        body = fields if isinstance(fields, bytes) else orjson.dumps(fields)
        query = urllib.parse.urlencode({"authToken": self.auth_token})
        return Call(f"{self.base_path}/{endpoint}?{query}", {"Content-Type": "application/json"}, body)

    def check(self, user_id: str, sid: str, *, channel: str = "desktop") -> Call:
        return self.call("check", {"sid": sid, "userId": user_id, "uuid": self.new_id(),
                                   "channel": {"type": channel}})

    def balance(self, user_id: str, sid: str, *, currency: str) -> Call:
        return self.call("balance", {"sid": sid, "userId": user_id, "currency": currency, "game": None,
                                     "uuid": self.new_id()})

    def _money_call(self, endpoint: str, user_id: str, sid: str, *, currency: str, amount: int,
                    ref_id: str, round_id: str, tx_id: str | None) -> Call:
        game = {"id": round_id, "type": self.game_type,
                "details": {"table": {"id": self.table_id, "vid": None}}}
        tx = {"id": tx_id or self.new_id(), "refId": ref_id, "amount": money(amount, currency)}
        return self.call(endpoint, {"sid": sid, "userId": user_id, "currency": currency, "game": game,
                                    "transaction": tx, "uuid": self.new_id()})

    def debit(self, user_id: str, sid: str, *, currency: str, amount: int, ref_id: str | None = None,
              round_id: str | None = None, tx_id: str | None = None) -> Call:
        return self._money_call("debit", user_id, sid, currency=currency, amount=amount,
                                ref_id=ref_id or self.new_id(), round_id=round_id or self.new_id(),
                                tx_id=tx_id)

    def credit(self, user_id: str, sid: str, *, currency: str, amount: int, ref_id: str, round_id: str,
               tx_id: str | None = None) -> Call:
        return self._money_call("credit", user_id, sid, currency=currency, amount=amount, ref_id=ref_id,
                                round_id=round_id, tx_id=tx_id)

    def cancel(self, user_id: str, sid: str, *, currency: str, amount: int, ref_id: str, round_id: str,
               tx_id: str | None = None) -> Call:
        return self._money_call("cancel", user_id, sid, currency=currency, amount=amount, ref_id=ref_id,
                                round_id=round_id, tx_id=tx_id)

    def promo_payout(self, user_id: str, sid: str, *, currency: str, amount: int,
                     promo_type: str = "JackpotWin", promo_id: str | None = None) -> Call:
        promo = {"type": promo_type, "id": promo_id or self.new_id(), "amount": money(amount, currency),
                 "voucherId": None, "remainingRounds": 0}
        return self.call("promo_payout", {"sid": sid, "userId": user_id, "currency": currency, "game": None,
                                          "promoTransaction": promo, "uuid": self.new_id()})

    def round(self, user_id: str, sid: str, *, currency: str, bet: int, win: int,
              round_id: str | None = None) -> list[Call]:
        """A debit and its credit (``win`` may be 0: a loss)."""
        rid, ref = round_id or self.new_id(), self.new_id()
        return [
            self.debit(user_id, sid, currency=currency, amount=bet, ref_id=ref, round_id=rid),
            self.credit(user_id, sid, currency=currency, amount=win, ref_id=ref, round_id=rid),
        ]
