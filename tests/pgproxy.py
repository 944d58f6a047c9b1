"""A TCP proxy in front of a real PostgreSQL, for fault tests (as asyncpg's test fuzzer does).

It forwards bytes both ways; while ``starting_up`` is set it answers every new connection as a server
still in its start-up phase does: SSL refused, then ``FATAL 57P03 the database system is starting
up``. PostgreSQL's own start-up window after a crash is a few hundred milliseconds and would be hit
only by luck; the proxy holds it open for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_STARTING_UP = b"".join(
    (b"S", b"FATAL\0", b"V", b"FATAL\0", b"C", b"57P03\0", b"M", b"the database system is starting up\0", b"\0"))


class PgProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.starting_up = False
        #: connections answered "starting up"
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self.starting_up:
                await self._refuse(reader, writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                return
            self._conns.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._conns.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            await reader.readexactly(length - 8)  # the rest of the startup packet
            break
        writer.write(b"E" + struct.pack("!i", len(_STARTING_UP) + 4) + _STARTING_UP)
        await writer.drain()
        self.refused += 1
