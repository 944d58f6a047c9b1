"""Provider simulators: the provider side of each protocol, for tests, benchmarks and Locust.

Each builds correctly signed requests exactly as that provider sends them, returned as ``Call``s ready to
send to a gateway; they are not part of the gateway (nothing under ``gateway/`` or the adapters imports
them).
"""

from __future__ import annotations

from typing import NamedTuple


class Call(NamedTuple):
    """One provider request, ready to send: path (relative to the server root), headers, raw body."""

    path: str
    headers: dict[str, str]
    body: bytes
