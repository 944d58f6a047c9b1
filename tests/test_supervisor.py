"""The supervisor's restart policy, with fake processes and a fake clock (the real ones: ``test_up.py``)."""

from __future__ import annotations

from gateway.supervisor import Backoff, Supervisor, supervise


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Fake:
    """A process that runs until ``die(code)``; ``start`` fails while ``broken``."""

    def __init__(self, name: str) -> None:
        self.name, self.starts, self.broken = name, 0, False
        self.code_: int | None = None

    @property
    def pid(self) -> int:
        return 100 + self.starts

    def returncode(self) -> int | None:
        return self.code_

    def die(self, code: int = -9) -> None:
        self.code_ = code

    def start(self) -> None:
        if self.broken:
            raise RuntimeError("port taken\nmore detail")
        self.starts += 1
        self.code_ = None

    def where(self) -> str:
        return ""


def make(*, servers: int = 0) -> tuple[Supervisor, list[Fake], list[Fake], list[str], Clock]:
    clock, lines = Clock(), list[str]()
    srv = [Fake(f"server{i}") for i in range(servers)]
    kids = [Fake("child")]
    sup = Supervisor(list(srv), list(kids), lambda: Backoff(0.5, 4.0, 30.0, 3), lines.append, clock)
    return sup, srv, kids, lines, clock


def test_backoff_doubles_to_its_cap_and_gives_up_on_a_crash_loop() -> None:
    b = Backoff(first_s=0.5, max_s=4.0, stable_s=30.0, max_quick=6)
    assert [b.next_delay(1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, None]


def test_backoff_starts_over_after_a_stable_run_or_a_failure_not_its_own() -> None:
    b = Backoff(first_s=0.5, max_s=30.0, stable_s=30.0, max_quick=3)
    assert [b.next_delay(1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert b.next_delay(30.0) == 0.5
    assert b.next_delay(1.0) == 1.0
    assert b.next_delay(1.0, own_fault=False) == 0.5


def test_dead_child_is_restarted_after_the_delay_with_one_line_each() -> None:
    sup, _, (child,), lines, clock = make()
    child.die(-9)
    assert sup.tick() is None
    assert lines == ["gateway up: child (pid 100) killed by SIGKILL after 0.0 s; restart 1/3 in 0.5 s"]
    clock.now = 0.4
    assert sup.tick() is None and child.starts == 0
    clock.now = 0.5
    assert sup.tick() is None and child.starts == 1
    assert lines[-1] == "gateway up: child restarted (pid 101)"


def test_crash_loop_is_fatal_and_names_the_process() -> None:
    sup, _, (child,), _lines, clock = make()
    for _ in range(3):
        child.die(2)
        assert sup.tick() is None
        clock.now += 10
        assert sup.tick() is None
    child.die(2)
    fatal = sup.tick()
    assert fatal == "child keeps dying right after start: 3 restarts in a row, last one exited with code 2 after 0.0 s"


def test_a_server_that_cannot_start_again_is_fatal_after_the_attempts() -> None:
    sup, (server,), _, lines, clock = make(servers=1)
    server.die(-9)
    server.broken = True
    assert sup.tick() is None
    for _ in range(2):
        clock.now += 10
        assert sup.tick() is None
    assert lines[-1] == "gateway up: server0 did not start: port taken (more detail); restart 3/3 in 2.0 s"
    clock.now += 10
    assert sup.tick() == "server0 could not be restarted (3 attempts): port taken\nmore detail"


def test_children_wait_for_servers_and_their_deaths_after_a_server_do_not_count() -> None:
    clock, lines = Clock(), list[str]()
    servers, child = [Fake("server0"), Fake("server1")], Fake("child")
    sup = Supervisor(list(servers), [child], lambda: Backoff(0.5, 4.0, 8.0, 3), lines.append, clock)
    for i in range(6):  # twice max_quick child deaths 5 s apart, each caused by a server dying
        server = servers[i % 2]  # each server runs 10 s: stable
        clock.now += 5
        server.die(-9)
        child.die(1)
        server.broken = True
        assert sup.tick() is None
        clock.now += 1
        assert sup.tick() is None
        assert child.returncode() == 1 and child.starts == i  # not started while a server is down
        server.broken = False
        clock.now += 2
        assert sup.tick() is None
        assert server.returncode() is None and child.returncode() is None and child.starts == i + 1
    child_lines = [line for line in lines if line.startswith("gateway up: child (")]
    assert len(child_lines) == 6 and all("restart 1/3 in 0.5 s" in line for line in child_lines), lines


def test_supervise_survives_its_own_errors() -> None:
    class Flaky:
        calls = 0

        def tick(self) -> str | None:
            self.calls += 1
            if self.calls == 1:
                raise OSError("disk full")
            return "done"

    lines: list[str] = []
    assert supervise(Flaky(), lambda: False, lines.append) == "done"  # type: ignore[arg-type]
    assert lines == ["gateway up: supervisor error OSError('disk full'); carrying on in 0.5 s"]
