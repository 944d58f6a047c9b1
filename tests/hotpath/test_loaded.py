"""The compiled twins really load when extensions are on, and the selectors pick them."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hotpath

NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))
NAMES = ("ratelimit", "batcher", "backpressure", "shard")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.c_ext
@pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is set")
@pytest.mark.parametrize("name", NAMES)
def test_compiled_twin_loaded(name: str) -> None:
    compiled = importlib.import_module(f"hotpath._{name}_c")
    assert compiled.__file__ is not None
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    selector = importlib.import_module(f"hotpath.{name}")
    for public in selector.__all__:
        assert getattr(selector, public) is getattr(compiled, public)
    assert hotpath.IMPLEMENTATION == "c"


@pytest.mark.skipif(not NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is not set")
@pytest.mark.parametrize("name", NAMES)
def test_pure_twin_selected(name: str) -> None:
    pure = importlib.import_module(f"hotpath._{name}_py")
    selector = importlib.import_module(f"hotpath.{name}")
    for public in selector.__all__:
        assert getattr(selector, public) is getattr(pure, public)
    assert hotpath.IMPLEMENTATION == "py"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        pytest.param("1", "py", id="disabled"),
        pytest.param(
            "",
            "c",
            id="enabled",
            marks=[pytest.mark.c_ext, pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS is set")],
        ),
    ],
)
def test_implementation_follows_environment(flag: str, expected: str) -> None:
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": flag, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", "import hotpath; print(hotpath.IMPLEMENTATION)"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected


BLOCK_COMPILED = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hotpath._") and name.endswith("_c"):
            raise ImportError(name)

sys.meta_path.insert(0, Block())
import hotpath
print(hotpath.IMPLEMENTATION, hotpath.ratelimit.RateLimiter.__module__)
"""


def test_missing_extension_falls_back_to_twin() -> None:
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_COMPILED], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["py", "hotpath._ratelimit_py"]
