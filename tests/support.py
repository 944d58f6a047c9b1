"""Test-side clients of the running gateway: the operator API and the native provider protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from typing import Any

import aiohttp
import orjson
import yarl

from adapters.sim import Call
from adapters.sim.native import NativeClient
from core.commands import Command, Result
from core.errors import Retryable
from core.records import ProviderConfig
from gateway.ledger_client import LedgerClient

OPERATOR_KEY = "test-operator-key"
ADMIN_KEY = "test-admin-key-1"
DEMO_SECRET = "demo-secret-for-tests"
PRAGMATIC_SECRET = "testKey-pragmatic"
EVOLUTION_TOKEN = "evo-auth-token-1"


@functools.cache
def hub88_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of the key pair standing in for Hub88's, made once per test run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def gateway_providers() -> list[ProviderConfig]:
    """The providers every test gateway mounts: one per protocol."""
    return [
        ProviderConfig(id="demo", protocol="native", secret=DEMO_SECRET),
        ProviderConfig(id="hub88", protocol="hub88", public_key_pem=hub88_keys()[1]),
        ProviderConfig(id="pragmatic", protocol="pragmatic", secret=PRAGMATIC_SECRET,
                       options={"provider_id": "PragmaticPlay"}),
        ProviderConfig(id="evolution", protocol="evolution", secret=EVOLUTION_TOKEN),
    ]


class Api:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, provider: str = "demo",
                 secret: str = DEMO_SECRET) -> None:
        self.http = http
        self.base = base_url
        self.native = NativeClient(provider, secret)
        self.provider = provider
        #: per-test prefix for transaction and round ids: the idempotency key space is shared by all tests
        self.ns = uuid.uuid4().hex[:8] + "-"

    async def operator(self, method: str, path: str, body: Any = None, *, key: str = OPERATOR_KEY,
                       params: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, json=body, params=params,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status, await resp.json()

    async def send(self, call: Call) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.base + call.path, data=call.body, headers=call.headers) as resp:
            return resp.status, await resp.json()

    async def raw(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.base + path, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    @staticmethod
    def player(player_id: str | None = None, currency: str = "EUR", brand: str = "b1") -> dict[str, str]:
        return {"tenant_id": "t1", "brand_id": brand, "license": "MGA",
                "player_id": player_id or f"p-{uuid.uuid4().hex[:10]}", "currency": currency}

    async def deposit(self, player: dict[str, str], amount: str, key: str | None = None) -> tuple[int, Any]:
        return await self.operator("POST", "/v1/wallet/deposit",
                                   {**player, "amount": amount, "idempotency_key": key or uuid.uuid4().hex})

    async def balance(self, player: dict[str, str]) -> str:
        status, body = await self.operator("GET", "/v1/wallet/balance", params={
            "brand_id": player["brand_id"], "player_id": player["player_id"], "currency": player["currency"]})
        assert status == 200, body
        return str(body["balance"])

    async def session(self, player: dict[str, str]) -> str:
        status, body = await self.operator("POST", "/v1/sessions", {**player, "provider_id": self.provider})
        assert status == 201, body
        status, auth = await self.send(self.native.authenticate(body["launch_token"]))
        assert status == 200, auth
        return str(auth["session_token"])

    async def funded(self, amount: str = "100.00", **kw: Any) -> tuple[dict[str, str], str]:
        player = self.player(**kw)
        status, body = await self.deposit(player, amount)
        assert status == 200, body
        return player, await self.session(player)

    def _ids(self, kw: dict[str, Any]) -> dict[str, Any]:
        if kw.get("bet_transaction_id"):
            kw["bet_transaction_id"] = self.ns + kw["bet_transaction_id"]
        return kw

    async def bet(self, token: str, tx: str, round_id: str, amount: str, currency: str = "EUR",
                  **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.send(self.native.bet(token, self.ns + tx, self.ns + round_id, amount, currency, **kw))

    async def win(self, token: str | None, tx: str, round_id: str, amount: str, currency: str = "EUR",
                  **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.send(self.native.win(token, self.ns + tx, self.ns + round_id, amount, currency,
                                               **self._ids(kw)))

    async def rollback(self, token: str | None, tx: str, bet_tx: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.send(self.native.rollback(token, self.ns + tx, self.ns + bet_tx, **kw))

    async def end_round(self, token: str | None, round_id: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.send(self.native.end_round(token, self.ns + round_id, **kw))


# --- raw HTTP: bytes no HTTP client library would send --------------------------------------------------
def http_bytes(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request exactly as given (header values may hold any bytes), asking to close after."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: gateway", b"Connection: close",
             b"Content-Length: %d" % len(body), *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_http(base_url: str, request: bytes, *, timeout_s: float = 10.0) -> tuple[int, Any]:
    """Send ``request`` on a fresh connection, read the answer to EOF: (status, JSON body)."""
    reader, writer = await open_raw(base_url)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


async def open_raw(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = yarl.URL(base_url)
    return await asyncio.open_connection(url.host, url.port)


async def closed_by_server(reader: asyncio.StreamReader, *, within_s: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``within_s``, reading whatever it
    sends first; False when it is still open by then."""
    try:
        async with asyncio.timeout(within_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def until_result(client: LedgerClient, cmd: Command, deadline: float) -> Result:
    """What a provider does: retry the same transaction (each attempt its own id) until it is answered."""
    attempt = cmd
    while True:
        try:
            return await client.submit(attempt)
        except Retryable:
            assert time.monotonic() < deadline, f"no answer for {cmd.tx_id} in time"
            await asyncio.sleep(0.1)
            attempt = dataclasses.replace(cmd, cmd_id=uuid.uuid4().hex)
