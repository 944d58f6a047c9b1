"""Pragmatic's side: MD5-hashed form posts as Pragmatic sends them."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping

from adapters.pragmatic import sign
from adapters.sim import Call
from core.money import format_minor


class PragmaticClient:
    """Pragmatic's side: hashed form posts as Pragmatic sends them (for tests and load generation).

    Amounts are given in minor units and sent as decimal strings. Each method returns a ``Call``;
    ``clock`` gives the ``timestamp`` in ms (injected for deterministic tests).
    """

    def __init__(self, secret: str, *, provider_id: str = "PragmaticPlay", base_path: str = "",
                 game_id: str = "vs20doghouse", clock: Callable[[], int] | None = None) -> None:
        self.secret = secret
        self.provider_id = provider_id
        self.base_path = base_path.rstrip("/")
        self.game_id = game_id
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)

    @staticmethod
    def new_reference() -> str:
        return secrets.token_hex(16)

    @staticmethod
    def new_round() -> str:
        return str(secrets.randbelow(10**15) + 10**14)

    def signed(self, method: str, params: Mapping[str, str]) -> Call:
        """A call of ``method`` with ``params`` (plus providerId unless given) and their hash."""
        full = {"providerId": self.provider_id, **params}
        full["hash"] = sign(full, self.secret)
        body = urllib.parse.urlencode(full).encode()
        return Call(f"{self.base_path}/{method}.html",
                    {"Content-Type": "application/x-www-form-urlencoded"}, body)

    def _ts(self) -> str:
        return str(self.clock())

    def authenticate(self, token: str) -> Call:
        return self.signed("authenticate", {"token": token, "gameId": self.game_id})

    def balance(self, user_id: str, *, token: str | None = None) -> Call:
        return self.signed("balance", {"userId": user_id, **({"token": token} if token else {})})

    def _play(self, user_id: str, *, token: str | None, round_id: str, amount: int, currency: str,
              reference: str, bonus_code: str | None) -> dict[str, str]:
        params = {"userId": user_id, "gameId": self.game_id, "roundId": round_id,
                  "amount": format_minor(amount, currency), "reference": reference,
                  "timestamp": self._ts(), "roundDetails": "spin", "platform": "WEB"}
        if token:
            params["token"] = token
        if bonus_code:
            params["bonusCode"] = bonus_code
        return params

    def bet(self, user_id: str, *, token: str | None, round_id: str, amount: int, currency: str,
            reference: str | None = None, bonus_code: str | None = None) -> Call:
        return self.signed("bet", self._play(user_id, token=token, round_id=round_id, amount=amount,
                                             currency=currency, reference=reference or self.new_reference(),
                                             bonus_code=bonus_code))

    def result(self, user_id: str, *, token: str | None, round_id: str, amount: int, currency: str,
               reference: str | None = None, bonus_code: str | None = None,
               promo_win: int | None = None) -> Call:
        params = self._play(user_id, token=token, round_id=round_id, amount=amount, currency=currency,
                            reference=reference or self.new_reference(), bonus_code=bonus_code)
        if promo_win is not None:
            params |= {"promoWinAmount": format_minor(promo_win, currency),
                       "promoWinReference": self.new_reference(), "promoCampaignID": "1",
                       "promoCampaignType": "T"}
        return self.signed("result", params)

    def refund(self, user_id: str, *, reference: str, token: str | None = None,
               round_id: str | None = None) -> Call:
        params = {"userId": user_id, "reference": reference, "gameId": self.game_id,
                  "timestamp": self._ts()}
        if round_id:
            params["roundId"] = round_id
        if token:
            params["token"] = token
        return self.signed("refund", params)

    def end_round(self, user_id: str, *, round_id: str, token: str | None = None) -> Call:
        params = {"userId": user_id, "gameId": self.game_id, "roundId": round_id, "roundDetails": "end"}
        if token:
            params["token"] = token
        return self.signed("endRound", params)

    def bonus_win(self, user_id: str, *, amount: int, currency: str, bonus_code: str,
                  reference: str | None = None, token: str | None = None) -> Call:
        params = {"userId": user_id, "amount": format_minor(amount, currency),
                  "reference": reference or self.new_reference(), "timestamp": self._ts(),
                  "bonusCode": bonus_code}
        if token:
            params["token"] = token
        return self.signed("bonusWin", params)

    def jackpot_win(self, user_id: str, *, round_id: str, amount: int, currency: str,
                    reference: str | None = None, jackpot_id: str = "jp1") -> Call:
        return self.signed("jackpotWin", {
            "userId": user_id, "gameId": self.game_id, "roundId": round_id, "jackpotId": jackpot_id,
            "amount": format_minor(amount, currency), "reference": reference or self.new_reference(),
            "timestamp": self._ts(),
        })

    def promo_win(self, user_id: str, *, amount: int, currency: str, campaign_id: str = "1",
                  campaign_type: str = "T", reference: str | None = None) -> Call:
        return self.signed("promoWin", {
            "userId": user_id, "campaignId": campaign_id, "campaignType": campaign_type,
            "amount": format_minor(amount, currency), "currency": currency,
            "reference": reference or self.new_reference(), "timestamp": self._ts(),
        })

    def adjustment(self, user_id: str, *, round_id: str, amount: int, currency: str,
                   reference: str | None = None, token: str | None = None) -> Call:
        """``amount`` is signed: negative takes money from the player."""
        params = {"userId": user_id, "gameId": self.game_id, "roundId": round_id,
                  "amount": format_minor(amount, currency), "reference": reference or self.new_reference(),
                  "validBetAmount": format_minor(abs(amount), currency), "timestamp": self._ts()}
        if token:
            params["token"] = token
        return self.signed("adjustment", params)

    def round(self, user_id: str, token: str, *, currency: str, bet: int, win: int,
              round_id: str | None = None) -> list[Call]:
        """A bet, its result (``win`` may be 0: a loss) and the round's end."""
        rid = round_id or self.new_round()
        return [
            self.bet(user_id, token=token, round_id=rid, amount=bet, currency=currency),
            self.result(user_id, token=token, round_id=rid, amount=win, currency=currency),
            self.end_round(user_id, round_id=rid, token=token),
        ]
