"""One suite over both twins: each fixture yields the compiled module (id ``c``) or the pure one (``py``).

The ``c`` parameters are skipped only when ``GATEWAY_NO_EXTENSIONS`` is set; with extensions on, a
missing build fails the import loudly instead of silently testing the pure twin twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

# With tests/ on sys.path, this folder would shadow the real package as a namespace package.
if getattr(importlib.util.find_spec("hotpath"), "origin", None) is None:
    sys.modules.pop("hotpath", None)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))

requires_c = pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is set")

IMPLS = [
    pytest.param("c", marks=[pytest.mark.c_ext, requires_c], id="c"),
    pytest.param("py", id="py"),
]


def _load(name: str, impl: str) -> ModuleType:
    return importlib.import_module(f"hotpath._{name}_{impl}")


@pytest.fixture(scope="module", params=IMPLS)
def ratelimit(request: pytest.FixtureRequest) -> ModuleType:
    """``hotpath._ratelimit_c`` or ``hotpath._ratelimit_py``."""
    return _load("ratelimit", request.param)


@pytest.fixture(scope="module", params=IMPLS)
def batcher(request: pytest.FixtureRequest) -> ModuleType:
    """``hotpath._batcher_c`` or ``hotpath._batcher_py``."""
    return _load("batcher", request.param)


@pytest.fixture(scope="module", params=IMPLS)
def backpressure(request: pytest.FixtureRequest) -> ModuleType:
    """``hotpath._backpressure_c`` or ``hotpath._backpressure_py``."""
    return _load("backpressure", request.param)


@pytest.fixture(scope="module", params=IMPLS)
def shard(request: pytest.FixtureRequest) -> ModuleType:
    """``hotpath._shard_c`` or ``hotpath._shard_py``."""
    return _load("shard", request.param)


@pytest.fixture(scope="module")
def twins() -> dict[str, tuple[ModuleType, ModuleType]]:
    """``name -> (compiled, pure)`` for the differential tests; skipped without extensions."""
    if NO_EXTENSIONS:
        pytest.skip("GATEWAY_NO_EXTENSIONS is set")
    names = ("ratelimit", "batcher", "backpressure", "shard")
    return {name: (_load(name, "c"), _load(name, "py")) for name in names}
