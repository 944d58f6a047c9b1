"""``gateway up`` starts the whole stack from nothing, keeps it running, and Ctrl-C leaves nothing running.

The supervision tests share one data folder and run in order: one ``up`` has its children and then its
embedded servers SIGKILLed one by one (each must come back, on the same port for a server, and a bet+win
must go through again); it is stopped and a second ``up`` on the same folder must still honour the old
session token (Redis keeps its data); that one is made to fail (a server's port taken). Another one
crash-loops on a bad providers file. Every ``up`` must leave nothing running.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from core.records import ProviderConfig
from core.settings import Settings
from gateway.embedded import free_port
from gateway.walkthrough import walkthrough
from tests.support import ADMIN_KEY, DEMO_SECRET, OPERATOR_KEY, Api

SERVER_LINE = re.compile(r"^  (nats|postgres|redis)\s+\S+:(\d+)\S*\s+\(pid (\d+),", re.M)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _ppids() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _descendants(pid: int) -> set[int]:
    ppids, found, todo = _ppids(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in ppids.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


class Up:
    """One ``gateway up`` process with its output in a log file; fixed API keys and demo secret."""

    def __init__(self, data: Path, log: Path, port: int, **env: str) -> None:
        self.data, self.log_path, self.port = data, log, port
        data.mkdir(parents=True, exist_ok=True)
        (data / "demo.secret").write_text(DEMO_SECRET)  # `up` keeps an existing one
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(GATEWAY_DATA_DIR=str(data), GATEWAY_HTTP_PORT=str(port), GATEWAY_SHARDS="2",
                        GATEWAY_LOG_LEVEL="WARNING", GATEWAY_API_KEYS=f"{OPERATOR_KEY}:operator,{ADMIN_KEY}:admin",
                        **env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def launch(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)

    async def start(self) -> None:
        self.launch()
        await self.wait_for("Ctrl-C stops everything", 120)

    async def wait_for(self, pattern: str, within_s: float = 30, *, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log from offset ``after``, waiting for it while ``up`` runs."""
        assert self.proc is not None
        deadline = time.monotonic() + within_s
        while True:
            found = re.compile(pattern, re.M).search(self.text(), after)
            if found:
                return found
            assert self.proc.poll() is None, f"up exited with {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()}"
            await asyncio.sleep(0.2)

    def server(self, name: str) -> tuple[int, int]:
        """(pid, port) of an embedded server, the latest restart's if it was restarted."""
        first = {m[1]: (int(m[3]), int(m[2])) for m in SERVER_LINE.finditer(self.text())}[name]
        restarts = re.findall(rf"^gateway up: {name} restarted \(pid (\d+)\) on port (\d+)$", self.text(), re.M)
        return (int(restarts[-1][0]), int(restarts[-1][1])) if restarts else first

    def child(self, command: str) -> int:
        """pid of the ``gateway <command>`` child."""
        assert self.proc is not None
        for pid in _descendants(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"gateway" in argv and command.encode() in argv and _alive(pid):
                return pid
        raise AssertionError(f"no `gateway {command}` child:\n{self.text()}")

    def remember(self) -> None:
        assert self.proc is not None
        self.seen |= _descendants(self.proc.pid)

    async def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        self.remember()
        self.proc.send_signal(sig)
        return await self.wait_exit()

    async def wait_exit(self, within_s: float = 60) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + within_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"up did not exit in {within_s} s:\n{self.text()}")
            self.remember()
            await asyncio.sleep(0.2)
        return self.proc.returncode

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 10
        while [p for p in self.seen if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in self.seen if _alive(p)], self.text()
        leftovers = subprocess.run(["pgrep", "-f", str(self.data)], capture_output=True, text=True).stdout.split()
        assert not leftovers, self.text()


async def settle(api: Api, token: str, tag: str, within_s: float = 30) -> dict[str, Any]:
    """A bet and its win go through, retrying the same ids (as a provider does) while the stack recovers;
    a non-retryable error (e.g. ``invalid_token``) fails at once."""
    deadline = time.monotonic() + within_s
    body: dict[str, Any] = {}
    calls: tuple[Callable[[], Awaitable[tuple[int, dict[str, Any]]]], ...] = (
        lambda: api.bet(token, f"bet-{tag}", f"r-{tag}", "1.00"),
        lambda: api.win(token, f"win-{tag}", f"r-{tag}", "2.00", bet_transaction_id=f"bet-{tag}"))
    for call in calls:
        while True:
            try:
                status, body = await call()
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, body = 0, {"error": repr(exc)}
            if status == 200:
                assert body["status"] == "OK", body
                break
            assert status == 0 or body.get("retryable") is True, (tag, status, body)
            assert time.monotonic() < deadline, (tag, status, body)
            await asyncio.sleep(0.3)
    return body


@pytest.fixture(scope="module")
def up_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("up")


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture(scope="module")
async def first_up(up_dir: Path) -> AsyncIterator[Up]:
    up = Up(up_dir / "data", up_dir / "up1.log", free_port())
    try:
        await up.start()
        yield up
    finally:
        if up.proc is not None and up.proc.poll() is None:
            await up.stop()


@pytest.fixture(scope="module")
async def played(first_up: Up, client: aiohttp.ClientSession) -> tuple[Api, str]:
    """A funded player's session at the demo provider, and one round played."""
    api = Api(client, first_up.base)
    _, token = await api.funded("100.00")
    await settle(api, token, "first")
    return api, token


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ledger", "relay", "serve"])
async def test_up_restarts_a_killed_child(first_up: Up, played: tuple[Api, str], command: str) -> None:
    api, token = played
    old = first_up.child(command)
    mark = len(first_up.text())
    os.kill(old, signal.SIGKILL)
    line = await first_up.wait_for(rf"^gateway up: (.+) \(pid {old}\) killed by SIGKILL after \S+ s; "
                                   r"restart 1/\d+ in \S+ s$", after=mark)
    restarted = await first_up.wait_for(rf"^gateway up: {re.escape(line[1])} restarted \(pid (\d+)\)$", after=mark)
    assert int(restarted[1]) == first_up.child(command) != old
    await settle(api, token, f"after-{command}")
    assert first_up.proc is not None and first_up.proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["postgres", "redis", "nats"])
async def test_up_restarts_a_killed_server_on_its_port(first_up: Up, played: tuple[Api, str], name: str) -> None:
    """Redis: the session token made before the kill still works (its append-only file). NATS: the server
    coming back is up's part; the writers pulling again after it is the ledger puller's."""
    api, token = played
    pid, port = first_up.server(name)
    mark = len(first_up.text())
    os.kill(pid, signal.SIGKILL)
    await first_up.wait_for(rf"^gateway up: {name} \(pid {pid}\) on port {port} killed by SIGKILL after \S+ s; "
                            r"restart 1/\d+ in \S+ s$", after=mark)
    restarted = await first_up.wait_for(rf"^gateway up: {name} restarted \(pid (\d+)\) on port {port}$", after=mark)
    assert _alive(int(restarted[1])) and _port_open(port)
    for command in ("ledger", "relay", "serve"):
        first_up.child(command)
    # for NATS this needs the writers to pull again from the restarted server (the ledger puller's part)
    await settle(api, token, f"after-{name}")
    assert first_up.proc is not None and first_up.proc.poll() is None


@pytest.mark.slow
async def test_sessions_survive_a_restart_of_up(up_dir: Path, first_up: Up, played: tuple[Api, str]) -> None:
    api, token = played
    assert await first_up.stop() == 0, first_up.text()
    assert "gateway up: stopped" in first_up.text()
    first_up.assert_nothing_left()
    again = Up(first_up.data, up_dir / "up2.log", first_up.port, GATEWAY_UP_RESTART_MAX_QUICK="2")
    try:
        await again.start()
        await settle(api, token, "after-up-restart")  # not invalid_token: Redis kept the session
        # a server that cannot come back (its port taken) makes `up` give up, loudly, leaving nothing
        pid, port = again.server("redis")
        again.remember()
        os.kill(pid, signal.SIGKILL)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 5
            while True:
                try:
                    squatter.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
            squatter.listen()
            code = await again.wait_exit()
    finally:
        if again.proc is not None and again.proc.poll() is None:
            await again.stop()
    text = again.text()
    assert code == 1, text
    assert re.search(rf"^gateway up: redis on port {port} could not be restarted \(2 attempts\): redis failed to "
                     r"start.*\n(.*\n)*.*Address already in use", text, re.M), text
    assert re.search(rf"^gateway up: redis on port {port} did not start: redis failed to start: .*; restart 2/2 "
                     r"in 1\.0 s$", text, re.M), text
    assert "gateway up: giving up; stopping everything" in text and "gateway up: stopped" in text
    again.assert_nothing_left()


@pytest.mark.slow
async def test_up_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    """A gateway that dies right after every start (a providers file that is not there) is not restarted
    forever: `up` stops everything and exits non-zero, naming it."""
    up = Up(tmp_path / "data", tmp_path / "up.log", free_port(), GATEWAY_UP_RESTART_MAX_QUICK="2",
            GATEWAY_PROVIDERS_FILE=str(tmp_path / "missing.toml"))
    up.launch()
    code = await up.wait_exit()
    text = up.text()
    assert code == 1, text
    assert len(re.findall(r"^gateway up: gateway \(pid \d+\) exited with code 2 after", text, re.M)) == 2, text
    assert re.search(r"^gateway up: gateway keeps dying right after start: 2 restarts in a row, last one exited "
                     r"with code 2", text, re.M), text
    assert "providers file" in text and "gateway up: stopped" in text
    up.assert_nothing_left()


@pytest.mark.slow
def test_gateway_up_starts_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATA_DIR=str(tmp_path / "data"), GATEWAY_HTTP_PORT=str(port), GATEWAY_SHARDS="2",
               GATEWAY_LOG_LEVEL="WARNING")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "up"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Ctrl-C stops everything" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            text = log.read_text()
            key = re.search(r"operator API key\s+(\S+)", text)
            assert key, text
            body = orjson.dumps({"tenant_id": "t1", "brand_id": "b1", "license": "MGA", "player_id": "alice",
                                 "currency": "EUR", "amount": "12.34", "idempotency_key": "smoke-1"})
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/wallet/deposit", data=body,
                                         headers={"Authorization": f"Bearer {key.group(1)}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert orjson.loads(resp.read())["balance"] == "12.34"
            pids = [int(p) for p in re.findall(r"\(pid (\d+),", text)]
            assert len(pids) == 3, text  # nats, postgres, redis
            pids += list(_descendants(proc.pid))
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
    assert code == 0, log.read_text()
    assert "gateway up: stopped" in log.read_text()
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], log.read_text()
    children = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not children


# --- the walk-through printed once the gateway answers ------------------------------------------------
_WALK_KEYS = "operator-key-1:operator,admin-key-12:admin"


def test_walkthrough_plays_the_demo_round(tmp_path: Path) -> None:
    (tmp_path / "demo.secret").write_text("demo-secret-value")
    settings = Settings(data_dir=str(tmp_path), api_keys=_WALK_KEYS)
    text = walkthrough(settings, "http://h:1", [ProviderConfig(id="demo", protocol="native", secret="x" * 16)])
    assert f"SECRET=$(cat {tmp_path / 'demo.secret'})" in text
    for call in ("/v1/wallet/deposit", "/v1/sessions", "/v1/providers/demo/authenticate",
                 "/v1/providers/demo/bet", "/v1/providers/demo/win", "/v1/wallet/balance"):
        assert f"http://h:1{call}" in text
    assert "demo-secret-value" not in text and "KEY=operator-key-1" in text


def test_walkthrough_describes_the_providers_file_in_use(tmp_path: Path) -> None:
    """A user's own providers: each enabled one with its mount path, how it authenticates and its page of
    docs/; never the demo provider, never a secret."""
    providers = [
        ProviderConfig(id="hub", protocol="hub88", public_key_pem="PEM"),
        ProviderConfig(id="pp", protocol="pragmatic", secret="pp-secret-value", options={"provider_id": "PP1"}),
        ProviderConfig(id="evo", protocol="evolution", secret="evo-secret-value"),
        ProviderConfig(id="mine", protocol="native", secret="native-secret-value"),
        ProviderConfig(id="old", protocol="native", secret="old-secret-value", enabled=False),
    ]
    text = walkthrough(Settings(data_dir=str(tmp_path), api_keys=_WALK_KEYS), "http://h:1", providers)
    assert "/providers/demo" not in text and "demo.secret" not in text
    assert not [p.secret for p in providers if p.secret and p.secret in text]
    for doc, mount, auth in (("docs/hub88.md", "hub/user/info", "X-Hub88-Signature"),
                             ("docs/pragmatic.md", "pp/authenticate.html", "providerId=PP1"),
                             ("docs/evolution.md", "evo/check?authToken=", "authToken"),
                             ("/openapi.json", "mine/bet", "X-Signature")):
        assert doc in text and f"http://h:1/v1/providers/{mount}" in text and auth in text
    assert "old (native) at http://h:1/v1/providers/old/  (disabled: not mounted)" in text
    assert "/v1/providers/old/bet" not in text
    for doc in ("hub88", "pragmatic", "evolution"):
        assert (Path(__file__).resolve().parents[1] / "docs" / f"{doc}.md").exists()
