"""The servers the project starts itself are real, and leave nothing behind.

JetStream deduplicates by ``Nats-Msg-Id``, PostgreSQL stores and reads rows, Redis answers; an
``EmbeddedStack`` stops every process it started (pids gone, ports closed), a second start on the same
folder keeps the data, and servers left by a killed run are stopped before new ones start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import nats
import pytest
import redis.asyncio as aioredis

from gateway.embedded import (
    EmbeddedServer,
    EmbeddedServerError,
    EmbeddedStack,
    start_nats,
    start_postgres,
    start_redis,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL's backends and workers), read from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


async def test_jetstream_deduplicates_by_msg_id(nats_url: str, namespace: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream, subject = f"{namespace}_EMBEDDED", f"{namespace}.embedded.check"
        await js.add_stream(name=stream, subjects=[subject], duplicate_window=60.0)
        try:
            first = await js.publish(subject, b"bet-1", headers={"Nats-Msg-Id": "bet-1"})
            again = await js.publish(subject, b"bet-1", headers={"Nats-Msg-Id": "bet-1"})
            info = await js.stream_info(stream)
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert info.state.messages == 1


async def test_postgres_stores_and_reads(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") != "postgres"
        await conn.execute("CREATE TABLE embedded_check (id bigint PRIMARY KEY, amount numeric(20, 2) NOT NULL)")
        try:
            await conn.execute("INSERT INTO embedded_check VALUES ($1, $2)", 1, Decimal("12.34"))
            assert await conn.fetchval("SELECT amount FROM embedded_check WHERE id = 1") == Decimal("12.34")
        finally:
            await conn.execute("DROP TABLE embedded_check")
    finally:
        await conn.close()


async def test_redis_set_get(redis_url: str, namespace: str) -> None:
    client = aioredis.from_url(redis_url)
    key = f"{namespace}:embedded:check"
    try:
        assert await client.set(key, b"42", ex=60)
        assert await client.get(key) == b"42"
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.slow
def test_stack_stop_leaves_nothing_running(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path, fast=True, database="gateway")
    with stack:
        servers = list(stack)
        assert [s.name for s in servers] == ["nats", "postgres", "redis"]
        assert stack.pg_dsn.endswith("/gateway")
        assert all(s.running and _port_open(s.port) for s in servers)
        pids = [s.pid for s in servers] + _children(servers[1].pid)
        assert len(pids) > 3
    assert not [pid for pid in pids if _alive(pid)]
    assert not [s.port for s in servers if _port_open(s.port)]
    stack.stop()  # idempotent


@pytest.mark.slow
async def test_second_start_on_same_folder_keeps_data(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path, fast=True, database="gateway") as stack:
        conn = await asyncpg.connect(stack.pg_dsn)
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO kept VALUES (7)")
        await conn.close()
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept"])
        await js.publish("kept", b"x")
        await nc.close()
    with EmbeddedStack(tmp_path, fast=True, database="gateway") as stack:
        conn = await asyncpg.connect(stack.pg_dsn)
        assert await conn.fetchval("SELECT id FROM kept") == 7
        await conn.close()
        nc = await nats.connect(stack.nats_url)
        info = await nc.jetstream().stream_info("KEPT")
        await nc.close()
        assert info.state.messages == 1


Starter = Callable[[Path], EmbeddedServer]


@pytest.mark.slow
@pytest.mark.parametrize("start", [start_nats, start_postgres, start_redis], ids=["nats", "postgres", "redis"])
def test_start_stops_server_left_by_killed_run(tmp_path: Path, start: Starter) -> None:
    old = start(tmp_path)
    state = tmp_path / f"{old.name}.pid"
    record = json.loads(state.read_text())
    state.write_text(json.dumps(record | {"owner": _dead_pid()}))
    new = start(tmp_path)
    try:
        assert old.process.wait(10) is not None
        assert new.running and _port_open(new.port)
    finally:
        new.stop()
        old.stop()


@pytest.mark.slow
def test_postgres_starts_over_stale_postmaster_pid(tmp_path: Path) -> None:
    old = start_postgres(tmp_path, fast=True)
    old.process.kill()
    old.process.wait()
    assert (tmp_path / "pg" / "postmaster.pid").exists()
    new = start_postgres(tmp_path, fast=True)
    try:
        assert new.running and new.pid != old.pid
    finally:
        new.stop()


@pytest.mark.slow
def test_start_refuses_folder_a_live_run_uses(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    try:
        with pytest.raises(EmbeddedServerError, match="already running"):
            start_redis(tmp_path)
    finally:
        server.stop()


@pytest.mark.slow
def test_start_error_names_the_failure_and_quotes_the_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(EmbeddedServerError, match=r"(?s)redis failed to start.*Address already in use"):
            start_redis(tmp_path, port=busy.getsockname()[1])


@pytest.mark.slow
async def test_redis_keeps_its_data_across_a_kill_and_restart(tmp_path: Path) -> None:
    """Sessions live in Redis: a restarted stack (or Redis after a crash) must still know them."""
    old = start_redis(tmp_path)
    client = aioredis.from_url(old.url)
    try:
        assert await client.set("sess:kept", b"alice", ex=600)
    finally:
        await client.aclose()
    old.process.kill()
    old.process.wait()
    new = start_redis(tmp_path, port=old.port)
    client = aioredis.from_url(new.url)
    try:
        assert await client.get("sess:kept") == b"alice"
        assert 0 < await client.ttl("sess:kept") <= 600
    finally:
        await client.aclose()
        new.stop()


@pytest.mark.slow
async def test_stack_restarts_a_killed_server_on_its_port_with_its_data(tmp_path: Path) -> None:
    """PostgreSQL SIGKILLed while a client holds a backend: ``restart`` clears what it left (the orphaned
    backend, ``postmaster.pid``) and brings it back on the same port, so the same DSN works again."""
    with EmbeddedStack(tmp_path, fast=True, database="gateway") as stack:
        conn = await asyncpg.connect(stack.pg_dsn)
        await conn.execute("SET synchronous_commit = on")  # the test server's default is off
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO kept VALUES (7)")
        old = stack.servers[1]
        backends = _children(old.pid)
        old.process.kill()
        old.process.wait()
        new = stack.restart(old)
        try:
            assert stack.servers[1] is new and new.port == old.port and new.pid != old.pid
            assert backends and not [pid for pid in backends if _running(pid)]
            again = await asyncpg.connect(stack.pg_dsn)
            assert await again.fetchval("SELECT id FROM kept") == 7
            await again.close()
        finally:
            conn.terminate()
        nats_server = stack.servers[0]
        nats_server.process.kill()
        nats_server.process.wait()
        assert stack.restart(nats_server).url == stack.nats_url and _port_open(stack.servers[0].port)


def test_free_port_never_hands_out_a_reserved_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gateway up`` reserves the gateway's HTTP port, which is free until the gateway binds it: the
    kernel may offer it for port 0 meanwhile, and a server started on it would lock the gateway out."""
    from gateway import serverproc

    offered = iter([41001, 41001, 41002])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(serverproc, "RESERVED_PORTS", {41001})
    monkeypatch.setattr("gateway.serverproc.socket.socket", FakeSocket)
    assert serverproc.free_port() == 41002
