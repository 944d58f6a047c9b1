"""Per-call cost of every hot-path operation, compiled twin next to pure twin. Never asserts a time.

Each benchmark runs ``CALLS`` calls from a Python loop (the loop's own cost is included, as it is
for any caller), grouped by operation. Bulk operations (``add_many``, ``take_many``) move ``BULK``
items per call; their rows also give the cost per item, comparable with the single-item rows.
At the end of the module a table prints the median ns/call and ns/item of each twin and their
ratio, all measured in this run. Run with::

    .venv/bin/pytest benchmarks/test_bench_hotpath.py --benchmark-only -q -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

if getattr(importlib.util.find_spec("hotpath"), "origin", None) is None:  # not installed
    sys.modules.pop("hotpath", None)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))
CALLS = 1000
NOW = 10**12
IMPLS = [
    pytest.param("c", marks=[pytest.mark.c_ext, pytest.mark.skipif(NO_EXTENSIONS, reason="no extensions")]),
    pytest.param("py"),
]
KEYS = [f"p:brand{n % 7}:player{n}" for n in range(CALLS)]

BULK = 100

# operation -> implementation -> median ns per call
RESULTS: dict[str, dict[str, float]] = {}
# operation -> items moved per call (1 unless recorded)
ITEMS: dict[str, int] = {}


def load(name: str, impl: str) -> ModuleType:
    return importlib.import_module(f"hotpath._{name}_{impl}")


def run(benchmark: Any, op: str, impl: str, loop: Callable[[], object], calls: int = CALLS) -> None:
    benchmark.group = op
    benchmark(loop)
    record(benchmark, op, impl, calls)


def record(benchmark: Any, op: str, impl: str, calls: int, items: int = 1) -> None:
    if benchmark.disabled or benchmark.stats is None:
        return
    RESULTS.setdefault(op, {})[impl] = benchmark.stats.stats.median / calls * 1e9
    ITEMS[op] = items


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print ns/call per twin and the ratios once every benchmark of the module has run."""
    yield
    if not RESULTS:
        return
    width = max(len(op) for op in RESULTS)
    lines = [
        f"{'operation':<{width}} {'c ns':>8} {'py ns':>9} {'c ns/it':>8} {'py ns/it':>8} {'c/py':>7} {'speed-up':>9}"
        "  other",
    ]
    for op, by_impl in RESULTS.items():
        items = ITEMS.get(op, 1)
        c, py = by_impl.get("c"), by_impl.get("py")
        cells = [f"{op:<{width}}", f"{c:8.1f}" if c else f"{'-':>8}", f"{py:9.1f}" if py else f"{'-':>9}"]
        cells += [f"{c / items:8.1f}" if c else f"{'-':>8}", f"{py / items:8.1f}" if py else f"{'-':>8}"]
        if c and py:
            cells += [f"{c / py:7.3f}", f"{py / c:8.1f}x"]
        else:
            cells += [f"{'-':>7}", f"{'-':>9}"]
        others = [f"{name} {ns:.1f} ns" for name, ns in by_impl.items() if name not in ("c", "py")]
        lines.append(" ".join(cells) + ("  " + ", ".join(others) if others else ""))
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write("\n")
        reporter.write_sep("=", "hot path: median ns per call and per item (it), compiled (c) vs pure twin (py)")
        for line in lines:
            reporter.write_line(line)


# --- ratelimit ----------------------------------------------------------------------------------


class TokenBucket:
    """Baseline: the bare pure-Python token bucket one would write first (unbounded, floats)."""

    __slots__ = ("_buckets", "_burst", "_per_ns")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self._per_ns = rate_per_s / 1e9
        self._burst = burst
        self._buckets: dict[object, list[float]] = {}

    def check(self, scope_id: int, key: object, now_ns: int) -> int:
        state = self._buckets.get(key)
        if state is None:
            self._buckets[key] = [self._burst - 1, now_ns]
            return 0
        tokens = min(self._burst, state[0] + (now_ns - state[1]) * self._per_ns)
        state[1] = now_ns
        if tokens >= 1:
            state[0] = tokens - 1
            return 0
        state[0] = tokens
        return int((1 - tokens) / self._per_ns)


def open_limiter(impl: str) -> Any:
    rl = load("ratelimit", impl).RateLimiter(100_000, 10**9)
    rl.add_scope(1, 1_000_000_000, (1 << 31) - 1)  # always allowed at a fixed now
    rl.add_scope(2, 1, 1)  # refused after the first call
    rl.add_scope(3, 1_000_000_000, (1 << 31) - 1)
    return rl


def check_loop(check: Callable[..., int], scope: int, keys: list[Any]) -> Callable[[], None]:
    def loop() -> None:
        for key in keys:
            check(scope, key, NOW)

    return loop


@pytest.mark.parametrize("impl", [*IMPLS, pytest.param("bucket")])
def test_ratelimit_check(benchmark: Any, impl: str) -> None:
    check = TokenBucket(1e9, 1e12).check if impl == "bucket" else open_limiter(impl).check
    run(benchmark, "ratelimit.check str key", impl, check_loop(check, 1, KEYS))


@pytest.mark.parametrize("impl", IMPLS)
def test_ratelimit_check_int_key(benchmark: Any, impl: str) -> None:
    run(benchmark, "ratelimit.check int key", impl, check_loop(open_limiter(impl).check, 1, list(range(CALLS))))


@pytest.mark.parametrize("impl", IMPLS)
def test_ratelimit_check_refused(benchmark: Any, impl: str) -> None:
    rl = open_limiter(impl)
    for key in KEYS:
        rl.check(2, key, NOW)
    run(benchmark, "ratelimit.check refused", impl, check_loop(rl.check, 2, KEYS))


@pytest.mark.parametrize("impl", IMPLS)
def test_ratelimit_check_new_key_objects(benchmark: Any, impl: str) -> None:
    """Keys built per request: no str hash cached yet (the key strings are new every round)."""
    check = open_limiter(impl).check

    def setup() -> tuple[tuple[list[str]], dict[str, Any]]:
        return ([(key + ".")[:-1] for key in KEYS],), {}

    def loop(keys: list[str]) -> None:
        for key in keys:
            check(1, key, NOW)

    benchmark.group = "ratelimit.check new str objects"
    benchmark.pedantic(loop, setup=setup, rounds=300, warmup_rounds=5)
    record(benchmark, "ratelimit.check new str objects", impl, CALLS)


@pytest.mark.parametrize("impl", IMPLS)
def test_ratelimit_check_many(benchmark: Any, impl: str) -> None:
    check_many = open_limiter(impl).check_many
    batches = [[(1, key), (3, key.split(":")[1]), (3, "global")] for key in KEYS]

    def loop() -> None:
        for items in batches:
            check_many(items, NOW)

    run(benchmark, "ratelimit.check_many 3 scopes", impl, loop)


# --- batcher ------------------------------------------------------------------------------------

PAYLOADS = [orjson.dumps({"cmd": "win", "id": f"c{n}", "amount": "12.50", "round": n}) for n in range(CALLS)]
IDS = [f"c{n}" for n in range(CALLS)]


@pytest.mark.parametrize("impl", IMPLS)
def test_batcher_add(benchmark: Any, impl: str) -> None:
    add = load("batcher", impl).Batcher(16, 100, 1 << 20, 10**9).add
    work = list(zip(range(CALLS), IDS, PAYLOADS, strict=True))

    def loop() -> None:
        for n, cmd_id, payload in work:
            add(n & 15, cmd_id, payload, NOW)

    run(benchmark, "batcher.add (count 100)", impl, loop)


@pytest.mark.parametrize("impl", IMPLS)
def test_batcher_encode(benchmark: Any, impl: str) -> None:
    batch = load("batcher", impl).Batch(0, IDS[:100], PAYLOADS[:100], 0, NOW)
    encode = batch.encode
    run(benchmark, "batcher.encode 100 payloads", impl, encode, calls=1)


@pytest.mark.parametrize("impl", [*IMPLS, pytest.param("c add x100")])
def test_batcher_add_many(benchmark: Any, impl: str) -> None:
    """What the ledger pump does when a slot frees: a shard's queued commands into its batcher.

    The gateway's defaults (256 commands, 512 KiB): a call appends to the open batch, starts a
    new one, or closes one by count on the way, in turn. ``c add x100`` is the compiled twin's
    ``add`` called once per item, for comparison.
    """
    batcher = load("batcher", "c" if impl.startswith("c") else impl).Batcher(1, 256, 512 * 1024, 10**9)
    chunks = [(IDS[k : k + BULK], PAYLOADS[k : k + BULK]) for k in range(0, CALLS, BULK)]
    if impl == "c add x100":
        add = batcher.add

        def loop() -> None:
            for ids, payloads in chunks:
                for cmd_id, payload in zip(ids, payloads, strict=True):
                    add(0, cmd_id, payload, NOW)

    else:
        add_many = batcher.add_many

        def loop() -> None:
            for ids, payloads in chunks:
                add_many(0, ids, payloads, NOW)

    op = f"batcher.add_many ({BULK} items)"
    benchmark.group = op
    benchmark(loop)
    record(benchmark, op, impl, len(chunks), BULK)


# --- backpressure -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_backpressure_offer_take(benchmark: Any, impl: str) -> None:
    queue = load("backpressure", impl).ShardQueue(CALLS * 2)
    offer, take = queue.offer, queue.take
    items = [(n & 1, f"i{n}") for n in range(CALLS)]

    def loop() -> None:
        for lane, item in items:
            offer(lane, item, NOW)
        for _ in items:
            take(NOW)

    run(benchmark, "backpressure.offer+take (pair)", impl, loop)


@pytest.mark.parametrize("impl", [*IMPLS, pytest.param("c take x100")])
def test_backpressure_take_many(benchmark: Any, impl: str) -> None:
    """One ``take_many`` of ``BULK`` items from a queue that just received ``BULK`` offers (both
    lanes), which it empties. The offers are the untimed setup: only the takes are measured.
    ``c take x100`` is the compiled twin's ``take`` called once per item, for comparison."""
    mod = load("backpressure", "c" if impl.startswith("c") else impl)
    queues = [mod.ShardQueue(BULK * 2) for _ in range(CALLS // BULK)]
    items = [(n & 1, f"i{n}") for n in range(BULK)]

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        for queue in queues:
            offer = queue.offer
            for lane, item in items:
                offer(lane, item, NOW - 1000)
        return (), {}

    if impl == "c take x100":
        takes = [queue.take for queue in queues]

        def loop() -> None:
            for take in takes:
                for _ in range(BULK):
                    take(NOW)

    else:
        take_manys = [queue.take_many for queue in queues]

        def loop() -> None:
            for take_many in take_manys:
                take_many(NOW, BULK)

    op = f"backpressure.take_many ({BULK} items, after {BULK} offers)"
    benchmark.group = op
    benchmark.pedantic(loop, setup=setup, rounds=2000, warmup_rounds=20)
    record(benchmark, op, impl, len(queues), BULK)


# --- shard --------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_shard_for(benchmark: Any, impl: str) -> None:
    shard_for = load("shard", impl).shard_for

    def loop() -> None:
        for key in KEYS:
            shard_for(key, 64)

    run(benchmark, "shard.shard_for 64 shards", impl, loop)


@pytest.mark.parametrize("impl", IMPLS)
def test_shard_jump(benchmark: Any, impl: str) -> None:
    jump = load("shard", impl).jump
    keys = [(n * 0x9E3779B97F4A7C15) & ((1 << 64) - 1) for n in range(CALLS)]

    def loop() -> None:
        for key in keys:
            jump(key, 64)

    run(benchmark, "shard.jump 64 buckets", impl, loop)
