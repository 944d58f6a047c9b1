"""A provider's traffic: each Locust user is one player playing bet+win rounds at the native protocol.

Run against a gateway started with ``make run`` (values from its banner):

    GW_OPERATOR_KEY=… GW_PROVIDER_SECRET=$(cat .gateway/demo.secret) \\
      .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
      --headless -u 50 -r 10 -t 60s

Every request is signed exactly as a provider signs it; every money call uses a fresh transaction id,
and one round in ``GW_RETRY_EVERY`` repeats its bet to exercise the idempotent-retry path.
"""

from __future__ import annotations

import itertools
import os
import uuid

from locust import FastHttpUser, between, events, task

from adapters.native import NativeClient

OPERATOR_KEY = os.environ.get("GW_OPERATOR_KEY", "")
PROVIDER = os.environ.get("GW_PROVIDER", "demo")
SECRET = os.environ.get("GW_PROVIDER_SECRET", "")
RETRY_EVERY = int(os.environ.get("GW_RETRY_EVERY", "20"))


@events.init_command_line_parser.add_listener
def _check_config(parser: object) -> None:
    if not OPERATOR_KEY or not SECRET:
        raise SystemExit("set GW_OPERATOR_KEY and GW_PROVIDER_SECRET (see the module docstring)")


class Player(FastHttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.native = NativeClient(PROVIDER, SECRET)
        self.player = {"tenant_id": "t1", "brand_id": "b1", "license": "MGA",
                       "player_id": f"load-{uuid.uuid4().hex[:12]}", "currency": "EUR"}
        auth = {"Authorization": f"Bearer {OPERATOR_KEY}"}
        self.client.post("/v1/wallet/deposit", json={**self.player, "amount": "100000.00",
                                                      "idempotency_key": uuid.uuid4().hex}, headers=auth)
        launch = self.client.post("/v1/sessions", json={**self.player, "provider_id": PROVIDER}, headers=auth)
        call = self.native.authenticate(launch.json()["launch_token"])
        self.token = self.client.post(call.path, data=call.body, headers=call.headers).json()["session_token"]
        self.rounds = itertools.count()

    def _send(self, call: object, name: str) -> None:
        path, headers, body = call  # type: ignore[misc]
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task
    def round(self) -> None:
        n = next(self.rounds)
        rid = f"{self.player['player_id']}-{n}"
        bet = self.native.bet(self.token, f"b-{rid}", rid, "1.00", "EUR")
        self._send(bet, "bet")
        if RETRY_EVERY and n % RETRY_EVERY == 0:
            self._send(bet, "bet (retry)")
        self._send(self.native.win(self.token, f"w-{rid}", rid, "0.50", "EUR", bet_transaction_id=f"b-{rid}",
                                   round_closed=True), "win")
