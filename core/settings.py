"""One frozen, typed settings object read from ``GATEWAY_*`` environment variables.

Every key is a field below (name upper-cased, ``GATEWAY_`` prefix); units are in the names. Values are
validated at start-up and an unknown ``GATEWAY_*`` key is refused, so a typo never silently falls back
to a default. Security- and money-relevant defaults are explained in ``THREAT_MODEL.md``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from core.commands import INT64_MAX
from core.money import CURRENCY_EXPONENTS, exponent

PREFIX = "GATEWAY_"
#: switches read elsewhere (build and import time), accepted here so they are not "unknown"
OTHER_KEYS = frozenset({"GATEWAY_NO_EXTENSIONS"})


class SettingsError(ValueError):
    """Bad or unknown configuration; the message names every offending key."""


@dataclass(frozen=True, slots=True)
class Settings:
    # --- where things are ------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: str = ".gateway"
    nats_url: str = ""
    #: one DSN for all shards (one schema each) or ``0=dsn;1-3=dsn`` per shard range
    pg_dsns: str = ""
    redis_url: str = ""
    providers_file: str = ""
    #: ``key:role`` pairs, comma-separated; roles: operator, admin
    api_keys: str = ""
    instance_id: str = ""
    #: prepended to every NATS subject and stream name and Redis key, so several deployments (or test
    #: runs) can share one server
    namespace: str = ""
    workers: int = 1
    log_level: str = "INFO"
    #: ``json`` (one object per line, with trace id, brand, provider and shard) or ``text``
    log_format: str = "json"
    #: OTLP/HTTP traces endpoint (e.g. ``http://collector:4318/v1/traces``); needs the ``otel`` extra. Empty: off
    otel_endpoint: str = ""

    # --- ledger and transport --------------------------------------------------------------------
    shards: int = 4
    stream_name: str = "LEDGER"
    stream_duplicate_window_s: int = 120
    stream_max_msgs: int = 1_000_000
    events_stream_name: str = "EVENTS"
    batch_max_commands: int = 256
    batch_max_bytes: int = 512 * 1024
    batch_max_delay_ms: int = 2
    ledger_timeout_ms: int = 2000
    #: batches per shard awaiting their results; beyond it commands wait in the shard's queue, whose
    #: sojourn time is what the CoDel shedding reacts to
    ledger_inflight_batches: int = 2
    writer_fetch_msgs: int = 64
    writer_pool_size: int = 2
    #: keys (idempotency keys, bets, rounds, accounts, usage days) a shard writer keeps in memory between
    #: batches; beyond it the cache is emptied and refilled on demand (0: load every batch from the database)
    writer_cache_keys: int = 200_000
    #: how long JetStream waits for a writer's ack before redelivering a batch to the next writer
    writer_ack_wait_s: int = 10
    #: port of the writer process's /healthz, /readyz and /metrics (0: none, as under ``gateway up``)
    writer_http_port: int = 0
    #: JetStream replicas of both streams (3 in a production cluster)
    stream_replicas: int = 1
    #: how often the outbox relay looks for events the writers did not publish, and how old (since their
    #: commit) such events must be before it publishes them (a writer publishes its own within milliseconds)
    outbox_poll_ms: int = 1000
    outbox_grace_ms: int = 2000

    # --- sessions --------------------------------------------------------------------------------
    launch_token_ttl_s: int = 300
    session_ttl_s: int = 1800
    session_cache_ttl_ms: int = 2000
    session_cache_jitter_pct: int = 20
    session_cache_max: int = 100_000

    # --- edge limits -----------------------------------------------------------------------------
    max_body_bytes: int = 64 * 1024
    #: a connection whose request headers are not complete this long after their first byte is closed
    http_header_timeout_s: int = 10
    #: a request body not fully received this long after its headers is answered 408 (retryable)
    http_body_timeout_s: int = 10
    #: a connection with no request in progress (before the first one, or between keep-alive requests)
    #: is closed after this long
    http_idle_timeout_s: int = 60
    #: largest amount of one command (bet, win, deposit, ...) in major units, for every currency ...
    max_amount_major: int = 1_000_000_000
    #: ... except these (``CUR=major``, comma-separated): currencies whose unit is worth very little
    max_amount_overrides: str = "IDR=100000000000,VND=100000000000"
    rl_player_per_s: int = 50
    rl_player_burst: int = 100
    rl_round_per_s: int = 100
    rl_round_burst: int = 200
    rl_provider_per_s: int = 50_000
    rl_provider_burst: int = 100_000
    rl_brand_per_s: int = 50_000
    rl_brand_burst: int = 100_000
    rl_max_keys: int = 200_000
    rl_idle_expiry_s: int = 300
    redis_quota_enabled: bool = False
    redis_quota_per_s: int = 100_000
    redis_quota_burst: int = 200_000

    # --- back-pressure and degradation -----------------------------------------------------------
    queue_max_depth: int = 10_000
    queue_target_ms: int = 5
    queue_interval_ms: int = 100
    degrade_lag_budget_ms: int = 500
    degrade_persist_s: int = 5
    health_poll_ms: int = 5000
    health_fail_threshold: int = 3
    health_ok_threshold: int = 2
    #: /readyz of the gateway and the writers is 503 while a shard's oldest pending command is older
    #: than this (a stalled writer or transport); 0 turns the check off
    ready_max_pending_age_s: int = 10

    # --- responsible gaming ----------------------------------------------------------------------
    rg_cooling_off_s: int = 24 * 3600

    shutdown_drain_s: int = 10

    # --- `gateway up`: restarting its dead children and embedded servers --------------------------
    up_restart_delay_ms: int = 500
    up_restart_delay_max_s: int = 30
    #: a process that ran this long was healthy: its next death starts the backoff over
    up_restart_stable_s: int = 30
    #: restarts in a row of a process dying within ``up_restart_stable_s`` of its start; then ``up`` gives up
    up_restart_max_quick: int = 5

    # --- player session websocket (gateway/ws.py) -------------------------------------------------
    ws_max_connections: int = 100_000
    ws_heartbeat_s: int = 30
    #: outgoing messages queued per socket (balances conflate); a full queue disconnects the client
    ws_queue_max: int = 64
    ws_send_timeout_s: int = 10
    #: cap of each socket's transport write buffer and kernel send buffer (0: OS defaults)
    ws_send_buffer_bytes: int = 32 * 1024
    ws_reality_check_min: int = 60
    ws_resume_max_events: int = 10_000
    ws_reconnect_jitter_ms: int = 5000
    ws_tick_ms: int = 1000

    # --- derived, not read from the environment --------------------------------------------------
    api_key_roles: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: currency → largest amount of one command, in minor units
    max_amounts_minor: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        errors: list[str] = []

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                errors.append(f"{PREFIX}{key.upper()}: {why}")

        need(0 < self.http_port < 65536, "http_port", "must be a TCP port (1-65535)")
        need(1 <= self.shards <= 1024, "shards", "must be between 1 and 1024")
        need(0 <= self.writer_http_port < 65536, "writer_http_port", "must be 0 (off) or a TCP port")
        need(self.stream_replicas in (1, 3, 5), "stream_replicas", "must be 1, 3 or 5")
        need(1 <= self.workers <= 64, "workers", "must be between 1 and 64")
        need(1 <= self.batch_max_commands <= 10_000, "batch_max_commands", "must be 1..10000")
        need(1024 <= self.batch_max_bytes <= 1024 * 1024, "batch_max_bytes",
             "must be 1 KiB..1 MiB (below the NATS max payload)")
        need(0 <= self.batch_max_delay_ms <= 1000, "batch_max_delay_ms", "must be 0..1000")
        need(self.ledger_timeout_ms >= 10, "ledger_timeout_ms", "must be at least 10")
        need(10 <= self.outbox_poll_ms <= 60_000, "outbox_poll_ms", "must be 10..60000")
        need(0 <= self.outbox_grace_ms <= 600_000, "outbox_grace_ms", "must be 0..600000")
        need(0 <= self.writer_cache_keys <= 10_000_000, "writer_cache_keys", "must be 0 (off)..10000000")
        need(1 <= self.ledger_inflight_batches <= 64, "ledger_inflight_batches", "must be 1..64")
        need(self.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024")
        need(self.launch_token_ttl_s > 0 and self.session_ttl_s > 0, "session_ttl_s", "TTLs must be positive")
        need(0 <= self.session_cache_jitter_pct <= 100, "session_cache_jitter_pct", "must be 0..100")
        need(self.queue_target_ms > 0 and self.queue_interval_ms > self.queue_target_ms, "queue_interval_ms",
             "must exceed queue_target_ms > 0")
        need(10 <= self.up_restart_delay_ms <= 60_000, "up_restart_delay_ms", "must be 10..60000")
        need(1 <= self.up_restart_delay_max_s <= 3600
             and self.up_restart_delay_max_s * 1000 >= self.up_restart_delay_ms, "up_restart_delay_max_s",
             "must be 1..3600 and not below up_restart_delay_ms")
        need(self.up_restart_stable_s >= 1, "up_restart_stable_s", "must be at least 1")
        need(1 <= self.up_restart_max_quick <= 1000, "up_restart_max_quick", "must be 1..1000")
        need(0 <= self.ready_max_pending_age_s <= 86_400, "ready_max_pending_age_s", "must be 0 (off)..86400")
        need(self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "log_level",
             "must be DEBUG, INFO, WARNING or ERROR")
        need(self.log_format in {"json", "text"}, "log_format", "must be json or text")
        need(not self.otel_endpoint or self.otel_endpoint.startswith(("http://", "https://")), "otel_endpoint",
             "must be an http(s) URL or empty")
        for name in ("rl_player_per_s", "rl_round_per_s", "rl_provider_per_s", "rl_brand_per_s",
                     "rl_player_burst", "rl_round_burst", "rl_provider_burst", "rl_brand_burst",
                     "rl_max_keys", "queue_max_depth", "stream_duplicate_window_s"):
            need(getattr(self, name) > 0, name, "must be positive")
        for name in ("http_header_timeout_s", "http_body_timeout_s", "http_idle_timeout_s"):
            need(1 <= getattr(self, name) <= 3600, name, "must be 1..3600 seconds")
        maxima = self._max_amounts(errors)
        for name in ("ws_max_connections", "ws_heartbeat_s", "ws_queue_max", "ws_send_timeout_s", "ws_tick_ms",
                     "ws_resume_max_events"):
            need(getattr(self, name) > 0, name, "must be positive")
        need(min(self.ws_send_buffer_bytes, self.ws_reality_check_min, self.ws_reconnect_jitter_ms) >= 0,
             "ws_send_buffer_bytes", "websocket buffer, reality-check and jitter settings must be >= 0")
        roles: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.api_keys.split(","))):
            key, _, role = pair.rpartition(":")
            if not key or role not in {"operator", "admin"}:
                errors.append(f"{PREFIX}API_KEYS: {pair!r} must be key:operator or key:admin")
            elif len(key) < 8:
                errors.append(f"{PREFIX}API_KEYS: keys must be at least 8 characters")
            else:
                roles[key] = role
        try:
            self.shard_dsns()
        except SettingsError as exc:
            errors.append(str(exc))
        if errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))
        object.__setattr__(self, "api_key_roles", roles)
        object.__setattr__(self, "max_amounts_minor", maxima)

    def _max_amounts(self, errors: list[str]) -> dict[str, int]:
        """Largest amount of one command per currency, in minor units; problems appended to ``errors``."""
        majors = dict.fromkeys(CURRENCY_EXPONENTS, self.max_amount_major)
        key = f"{PREFIX}MAX_AMOUNT_OVERRIDES"
        for pair in filter(None, (p.strip() for p in self.max_amount_overrides.split(","))):
            currency, _, value = pair.partition("=")
            currency = currency.strip()
            if currency not in CURRENCY_EXPONENTS:
                errors.append(f"{key}: {currency!r} is not a currency the gateway knows")
                continue
            try:
                majors[currency] = int(value.strip().replace("_", ""))
            except ValueError:
                errors.append(f"{key}: {pair!r} must be CUR=<whole major units>")
        out: dict[str, int] = {}
        for currency, major in majors.items():
            minor = major * 10 ** exponent(currency)
            if not 0 < minor <= INT64_MAX:
                name = "MAX_AMOUNT_MAJOR" if major == self.max_amount_major else "MAX_AMOUNT_OVERRIDES"
                errors.append(f"{PREFIX}{name}: {major} {currency} must be positive and fit int64 minor units")
            out[currency] = minor
        return out

    def shard_dsns(self) -> dict[int, str]:
        """Shard → DSN; shards sharing a server keep their tables in schema ``shard_<n>``."""
        if not self.pg_dsns:
            return {}
        if "=" not in self.pg_dsns.split(";")[0].split("://")[0]:
            return dict.fromkeys(range(self.shards), self.pg_dsns)
        out: dict[int, str] = {}
        for part in filter(None, (p.strip() for p in self.pg_dsns.split(";"))):
            spec, _, dsn = part.partition("=")
            lo, _, hi = spec.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                raise SettingsError(f"{PREFIX}PG_DSNS: bad shard range {spec!r}") from None
            for shard in range(first, last + 1):
                out[shard] = dsn
        missing = set(range(self.shards)) - set(out)
        if missing:
            raise SettingsError(f"{PREFIX}PG_DSNS: no DSN for shard(s) {sorted(missing)}")
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls) if f.name not in _DERIVED}
        values: dict[str, Any] = {}
        errors: list[str] = []
        for key, raw in env.items():
            if not key.startswith(PREFIX) or key in OTHER_KEYS:
                continue
            name = key[len(PREFIX):].lower()
            if name not in known:
                errors.append(f"{key}: unknown setting")
                continue
            kind = known[name].type
            try:
                values[name] = _parse(raw, kind)
            except ValueError:
                errors.append(f"{key}: {raw!r} is not a valid {kind}")
        if errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for f in fields(self):
            if f.name in _DERIVED:
                continue
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


_DERIVED = frozenset({"api_key_roles", "max_amounts_minor"})


def _parse(raw: str, kind: Any) -> Any:
    if kind in ("int", int):
        return int(raw.replace("_", ""))
    if kind in ("bool", bool):
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(raw)
    return raw


SETTINGS_KEY = web.AppKey("settings", Settings)
