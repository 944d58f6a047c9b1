from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from core.settings import _DERIVED, Settings, SettingsError


def test_defaults_and_env_parsing() -> None:
    s = Settings.from_env({"GATEWAY_HTTP_PORT": "9090", "GATEWAY_REDIS_QUOTA_ENABLED": "true",
                           "GATEWAY_BATCH_MAX_COMMANDS": "1_000", "PATH": "/bin"})
    assert s.http_port == 9090 and s.redis_quota_enabled is True and s.batch_max_commands == 1000
    assert Settings().http_port == 8080 and Settings().data_dir == ".gateway" and Settings().shards == 4


def test_unknown_and_bad_keys_are_all_named() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"GATEWAY_HTTP_PROT": "1", "GATEWAY_SHARDS": "four", "GATEWAY_NO_EXTENSIONS": "1"})
    text = str(err.value)
    assert "GATEWAY_HTTP_PROT: unknown setting" in text and "GATEWAY_SHARDS" in text
    assert "NO_EXTENSIONS" not in text


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GATEWAY_HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({"GATEWAY_SHARDS": "0"}, "SHARDS"),
        ({"GATEWAY_BATCH_MAX_BYTES": "9000000"}, "BATCH_MAX_BYTES"),
        ({"GATEWAY_API_KEYS": "short:operator"}, "API_KEYS"),
        ({"GATEWAY_API_KEYS": "longenoughkey:root"}, "API_KEYS"),
        ({"GATEWAY_LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"GATEWAY_PG_DSNS": "0-1=postgresql://a/b", "GATEWAY_SHARDS": "4"}, "no DSN for shard(s) [2, 3]"),
        ({"GATEWAY_REDIS_QUOTA_ENABLED": "maybe"}, "REDIS_QUOTA_ENABLED"),
        ({"GATEWAY_UP_RESTART_DELAY_MS": "0"}, "UP_RESTART_DELAY_MS"),
        ({"GATEWAY_UP_RESTART_DELAY_MS": "5000", "GATEWAY_UP_RESTART_DELAY_MAX_S": "2"}, "UP_RESTART_DELAY_MAX_S"),
        ({"GATEWAY_UP_RESTART_STABLE_S": "0"}, "UP_RESTART_STABLE_S"),
        ({"GATEWAY_UP_RESTART_MAX_QUICK": "0"}, "UP_RESTART_MAX_QUICK"),
        ({"GATEWAY_READY_MAX_PENDING_AGE_S": "-1"}, "READY_MAX_PENDING_AGE_S"),
    ],
)
def test_validation(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(needle)):
        Settings.from_env(env)


def test_shard_dsn_map() -> None:
    s = Settings(pg_dsns="0-1=postgresql://a/x;2-3=postgresql://b/y", shards=4)
    assert s.shard_dsns() == {0: "postgresql://a/x", 1: "postgresql://a/x", 2: "postgresql://b/y",
                              3: "postgresql://b/y"}
    assert Settings(pg_dsns="postgresql://a/x", shards=2).shard_dsns() == {0: "postgresql://a/x",
                                                                          1: "postgresql://a/x"}


def test_api_key_roles_and_round_trip_through_env() -> None:
    s = Settings(api_keys="operator-key-1:operator, admin-key-123:admin", shards=3)
    assert s.api_key_roles == {"operator-key-1": "operator", "admin-key-123": "admin"}
    assert Settings.from_env(s.env()) == s


def test_maximum_amounts_per_currency() -> None:
    s = Settings.from_env({"GATEWAY_MAX_AMOUNT_MAJOR": "1_000", "GATEWAY_MAX_AMOUNT_OVERRIDES": "JPY=50000, KWD=7"})
    assert s.max_amounts_minor["EUR"] == 1000_00 and s.max_amounts_minor["JPY"] == 50000
    assert s.max_amounts_minor["KWD"] == 7_000 and s.max_amounts_minor["VND"] == 1000
    default = Settings()
    assert default.max_amounts_minor["EUR"] == 1_000_000_000_00
    assert default.max_amounts_minor["VND"] == 100_000_000_000  # low-value units get more by default
    assert Settings.from_env(s.env()) == s


@pytest.mark.parametrize(("env", "needle"), [
    ({"GATEWAY_MAX_AMOUNT_MAJOR": "0"}, "MAX_AMOUNT_MAJOR"),
    ({"GATEWAY_MAX_AMOUNT_MAJOR": "100000000000000000"}, "MAX_AMOUNT_MAJOR"),  # x 100 is beyond int64
    ({"GATEWAY_MAX_AMOUNT_OVERRIDES": "XYZ=5"}, "'XYZ'"),
    ({"GATEWAY_MAX_AMOUNT_OVERRIDES": "EUR=lots"}, "EUR=lots"),
    ({"GATEWAY_MAX_AMOUNT_OVERRIDES": "KWD=10000000000000000"}, "MAX_AMOUNT_OVERRIDES"),
    ({"GATEWAY_HTTP_HEADER_TIMEOUT_S": "0"}, "HTTP_HEADER_TIMEOUT_S"),
    ({"GATEWAY_HTTP_BODY_TIMEOUT_S": "4000"}, "HTTP_BODY_TIMEOUT_S"),
    ({"GATEWAY_HTTP_IDLE_TIMEOUT_S": "-1"}, "HTTP_IDLE_TIMEOUT_S"),
])
def test_edge_limit_validation(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(needle)):
        Settings.from_env(env)


def test_readme_configuration_table_names_every_setting() -> None:
    """Every setting read from the environment has its row in README.md's configuration table, and the table
    names none that does not exist."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `GATEWAY_")]
    documented = {name for row in rows for name in re.findall(r"`(GATEWAY_[A-Z0-9_]+)`", row.split(" | ")[0])}
    settings = {f"GATEWAY_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.name not in _DERIVED}
    assert sorted(settings - documented) == [], "settings missing from the README configuration table"
    assert sorted(documented - settings) == [], "README configuration table names unknown settings"
