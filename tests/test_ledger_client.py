"""The gateway's ledger client against a real NATS server: how a batch is stored in JetStream."""

from __future__ import annotations

import secrets
import time

import nats
import orjson
import pytest

from core.commands import Command, Kind
from core.errors import LedgerTimeout
from core.settings import Settings
from gateway.ledger_client import LedgerClient
from ledger import transport


def _command(tx: str) -> Command:
    return Command(cmd_id=secrets.token_hex(16), kind=Kind.WIN, tenant_id="t1", brand_id="b1", license="MGA",
                   player_id="p1", currency="EUR", provider_id="sim", tx_id=tx, round_id=f"r-{tx}",
                   traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", amount=150)


async def test_a_batch_published_while_the_stream_is_gone_recreates_it_and_is_stored(settings: Settings) -> None:
    """NATS answers "no responders" to a publish nothing stores (a server back without its store): the
    client recreates the streams and stores the batch on a retry, with its message id."""
    s = settings.replace(namespace=f"{settings.namespace}lc{secrets.token_hex(2)}", shards=1,
                         ledger_timeout_ms=3000)  # a namespace of its own: no writer consumes it
    nc = await nats.connect(s.nats_url)
    client = LedgerClient(s, nc)
    js = nc.jetstream()
    stream = transport.stream_name(s, s.stream_name)
    try:
        await client.start()
        await js.delete_stream(stream)
        cmd = _command("gone-1")
        started = time.monotonic()
        with pytest.raises(LedgerTimeout):  # stored, but no writer answers here
            await client.submit(cmd)
        assert time.monotonic() - started < 10
        info = await js.stream_info(stream)
        assert info.state.messages == 1
        msg = await js.get_msg(stream, seq=info.state.first_seq)
        assert msg.subject == transport.cmd_subject(s, 0)
        assert msg.headers is not None and msg.headers[transport.MSG_ID_HEADER].startswith(client._instance)
        assert [row["id"] for row in orjson.loads(msg.data or b"[]")] == [cmd.cmd_id]
        assert client.published == 1
    finally:
        await client.close()
        for name in (stream, transport.stream_name(s, s.events_stream_name)):
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await nc.close()
