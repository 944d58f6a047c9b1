"""How the code is put together: imports run one way, adapters reach the wallet through a typed port."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.base import WalletPort
from core.records import PlayerSession, ProviderConfig
from core.settings import Settings
from gateway.app import WALLET_KEY, create_app, mount_providers
from gateway.wallet import LazyWallet, Wallet


class _Sessions:
    async def get(self, provider_id: str, token: str, *, allow_expired: bool = False) -> PlayerSession:
        return PlayerSession(token=token, provider_id=provider_id, tenant_id="t", brand_id="b", license="MGA",
                             player_id="p1", currency="EUR")


async def test_adapters_get_a_typed_wallet_bound_at_start_up() -> None:
    app = create_app(Settings(), [])
    mount_providers(app, [ProviderConfig(id="demo", protocol="native", secret="x" * 16)])
    lazy = app[WALLET_KEY]
    port: WalletPort = lazy  # structurally a WalletPort: mypy checks every method's signature
    with pytest.raises(RuntimeError, match="before the gateway has started"):
        await port.session("demo", "tok")
    lazy.bind(Wallet(cast(Any, _Sessions()), *[cast(Any, None)] * 4, max_amounts={}))
    session = await port.session("demo", "tok")
    assert (session.provider_id, session.token) == ("demo", "tok")
    assert isinstance(lazy, LazyWallet) and not hasattr(LazyWallet, "__getattr__")


# --- imports run one way ------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
#: package → the project packages it may import (``loadtests`` and ``tests`` sit on top and may import all)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "hotpath": set(),
    "ledger": {"core", "hotpath"},
    "adapters": {"core"},
    "gateway": {"core", "hotpath", "ledger", "adapters"},
}


def _imports() -> dict[str, set[str]]:
    """Module → the project modules it imports, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
            graph[module] = {n for n in names if n.split(".")[0] in ALLOWED}
    return graph


def test_packages_import_only_downwards() -> None:
    wrong = sorted(f"{module} imports {name}" for module, names in _imports().items() for name in names
                   if (top := name.split(".")[0]) != module.split(".")[0] and top not in ALLOWED[module.split(".")[0]])
    assert wrong == []


def test_no_two_modules_import_each_other() -> None:
    graph = _imports()
    modules = set(graph)
    edges = {(m, n) for m, names in graph.items() for n in names if n in modules and n != m}
    mutual = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert mutual == []
    assert ("gateway.state", "gateway.operator_api") not in edges
