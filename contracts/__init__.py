"""Versioned contracts of what the gateway publishes: one JSON Schema per event type and version.

``contracts/events/<type>.v<N>.json`` describes the events of ``<type>`` carrying ``"v": N``. A change
that a consumer could notice (a field removed, renamed or retyped) is a new version, published beside
the old one; ``jsonschema`` (a dev dependency) is only needed by whoever validates.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def event_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """(event type, version) → its JSON Schema."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in resources.files("contracts").joinpath("events").iterdir():
        name = entry.name
        if not name.endswith(".json"):
            continue
        etype, _, version = name[: -len(".json")].rpartition(".v")
        out[(etype, int(version))] = json.loads(entry.read_text())
    return out


def event_problems(event: Any) -> list[str]:
    """Why ``event`` breaks its contract (empty when it is valid)."""
    from jsonschema import Draft202012Validator

    if not isinstance(event, dict):
        return ["an event is a JSON object"]
    schema = event_schemas().get((str(event.get("type")), event.get("v", 0)))
    if schema is None:
        return [f"no contract for type {event.get('type')!r} version {event.get('v')!r}"]
    validator = Draft202012Validator(schema)
    return [f"{event.get('id')}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(event)]
