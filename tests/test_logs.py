"""Log lines: JSON objects with the trace and tenant context, plain text on request, never a secret."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest

from core import logs
from core.settings import Settings, SettingsError


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("connect to postgresql://ledger:hunter2-pw@db:5432/x failed")
        except RuntimeError:
            import sys
            exc_info = sys.exc_info()
    return logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_line_carries_the_context_set_where_it_is_known() -> None:
    def in_request() -> str:
        logs.bind("4bf92f3577b34da6a3ce929d0e0e4736", "brand-1", "demo", 2)
        return logs.JsonFormatter().format(_record("bet %s refused", "tx-1"))

    line = json.loads(contextvars.copy_context().run(in_request))
    assert line["msg"] == "bet tx-1 refused" and line["level"] == "WARNING" and line["logger"] == "gateway.test"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and line["shard"] == 2
    assert line["brand"] == "brand-1" and line["provider"] == "demo" and line["ts"].endswith("Z")
    # another task (another request) does not inherit it
    assert "trace_id" not in json.loads(logs.JsonFormatter().format(_record("idle")))


async def test_context_does_not_leak_between_tasks() -> None:
    async def request(n: int) -> dict[str, object]:
        logs.bind(f"{n:032x}", "b", "p", n)
        await asyncio.sleep(0)
        return dict(logs.context())

    first, second = await asyncio.gather(asyncio.create_task(request(1)), asyncio.create_task(request(2)))
    assert first["shard"] == 1 and second["shard"] == 2 and logs.context() == {}


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()], ids=["json", "text"])
def test_secrets_and_tokens_never_reach_a_log_line(formatter: logging.Formatter) -> None:
    secrets = ["s3cr3t-session-token-value", "launch-abcdef123456", "Bearer-key-0123456789", "hunter2-pw",
               "deadbeefcafebabe0011", "op-key-9876543210", "auth-token-424242"]
    msg = ("session_token=s3cr3t-session-token-value launch_token: launch-abcdef123456 "
           "Authorization: Bearer Bearer-key-0123456789 X-Signature=deadbeefcafebabe0011 "
           '{"api_key": "op-key-9876543210"} /check?authToken=auth-token-424242&x=1')
    text = formatter.format(_record(msg, exc=True))
    for secret in secrets:
        assert secret not in text, (secret, text)
    assert "s3cr…" in text  # a prefix is kept, enough to tell two tokens apart
    assert "/check?authToken=" in text and "x=1" in text  # the rest of the line is intact


def test_format_setting_is_validated() -> None:
    assert Settings().log_format == "json"
    assert Settings.from_env({"GATEWAY_LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(SettingsError, match="GATEWAY_LOG_FORMAT"):
        Settings.from_env({"GATEWAY_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_configure_writes_the_chosen_format_to_stderr(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("INFO", fmt)
        logging.getLogger("ledger.writer").warning("shard %d lost its database: password=%s", 3, "hunter2-pw")
        err = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "hunter2-pw" not in err
    if fmt == "json":
        line = json.loads(err)
        assert line["logger"] == "ledger.writer" and line["msg"].startswith("shard 3 lost its database")
    else:
        assert "WARNING ledger.writer[" in err and "shard 3" in err
