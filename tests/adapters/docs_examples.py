"""The request/response examples of ``docs/<protocol>.md`` ("One round by hand"), read from the docs themselves.

The tests replay each documented request and compare the answer with the documented one, so the docs
and the gateway cannot drift apart. Documented answers are matched exactly, except for what the docs mark
as a placeholder: ``…`` (fields left out), ``<SESSION>``/``<SID>`` (a session token) and the example
``transactionId`` (the ledger's own id).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _shell_block(protocol: str) -> str:
    """The ``sh`` block of the "One round by hand" section, continuation lines joined."""
    text = (DOCS / f"{protocol}.md").read_text()
    section = text.split("## One round by hand", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ")


def hub88_round() -> list[tuple[str, str, str]]:
    """(path, body with ``'$TOKEN'`` and user ``p1``, documented answer) of each documented call."""
    block = _shell_block("hub88")
    bodies = dict(re.findall(r"^(\w+)='(.*)'$", block, re.MULTILINE))
    calls = re.findall(r'^curl -sS "\$BASE(/[\w/]+)".*--data-binary "\$(\w+)"\n# (.*)$', block, re.MULTILINE)
    return [(path, bodies[name], answer) for path, name, answer in calls]


def pragmatic_round() -> list[tuple[str, dict[str, str], str]]:
    """(method, parameters with ``$LAUNCH``/``$TOKEN`` and user ``p1``, documented answer) of each call."""
    block = _shell_block("pragmatic")
    calls = re.findall(r"^call (\w+) (.*)\n# (.*)$", block, re.MULTILINE)
    return [(method, dict(kv.split("=", 1) for kv in shlex.split(args)), answer) for method, args, answer in calls]


def evolution_round() -> list[tuple[str, str, str]]:
    """(endpoint, body with ``'$SID'`` and user ``p1``, documented answer) of each documented call."""
    block = _shell_block("evolution")
    return re.findall(r"^curl -sS \"\$BASE/(\w+)\?authToken=\$AUTH\".* -d '(.*)'\n# (.*)$", block, re.MULTILINE)


def matches(body: bytes, documented: str, substitutions: dict[str, str]) -> bool:
    """Whether ``body`` is the documented answer, after ``substitutions`` and up to the docs' placeholders."""
    for old, new in substitutions.items():
        documented = documented.replace(old, new)
    pattern = re.escape(documented)
    pattern = pattern.replace(re.escape("…"), ".*")
    pattern = re.sub(r"<SESSION>|<SID>", r'[^"]+', pattern)
    pattern = re.sub(r'"transactionId":\d+', r'"transactionId":[1-9][0-9]*', pattern)
    return re.fullmatch(pattern, body.decode()) is not None
