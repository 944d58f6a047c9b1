"""Provider configuration: one TOML file, validated at start-up.

Each ``[[providers]]`` table uses the ``ProviderConfig`` field names. Secrets may instead come from
the environment (``secret_env``, ``public_key_env``) or a file (``secret_file``, ``public_key_file``,
``private_key_file``), so the file itself can be committed. Unknown keys, duplicate ids, unknown
protocols and missing credentials are refused with a message naming the provider and key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.records import ProviderConfig

PROTOCOLS = ("native", "hub88", "pragmatic", "evolution")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FIELDS = {"id", "protocol", "enabled", "secret", "public_key_pem", "private_key_pem", "brands",
           "allowed_networks", "health_url", "rate_per_s", "burst", "options"}
_INDIRECT = {"secret_env": "secret", "secret_file": "secret", "public_key_env": "public_key_pem",
             "public_key_file": "public_key_pem", "private_key_env": "private_key_pem",
             "private_key_file": "private_key_pem"}


class ProviderConfigError(ValueError):
    pass


def load_providers(path: str | Path, environ: Mapping[str, str] | None = None) -> list[ProviderConfig]:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ProviderConfigError(f"providers file {p} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProviderConfigError(f"providers file {p}: {exc}") from None
    return parse_providers(data, base=p.parent, environ=os.environ if environ is None else environ)


def parse_providers(data: Mapping[str, Any], *, base: Path = Path("."),
                    environ: Mapping[str, str] | None = None) -> list[ProviderConfig]:
    env = os.environ if environ is None else environ
    extra = set(data) - {"providers"}
    if extra:
        raise ProviderConfigError(f"unknown top-level key(s) {sorted(extra)}; expected [[providers]]")
    out: list[ProviderConfig] = []
    seen: set[str] = set()
    errors: list[str] = []
    for i, raw in enumerate(data.get("providers", [])):
        where = f"providers[{i}]" + (f" ({raw.get('id')})" if isinstance(raw, dict) and raw.get("id") else "")
        try:
            cfg = _one(dict(raw), base, env)
        except (ProviderConfigError, ValueError, TypeError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        if cfg.id in seen:
            errors.append(f"{where}: duplicate provider id {cfg.id!r}")
        seen.add(cfg.id)
        out.append(cfg)
    if errors:
        raise ProviderConfigError("invalid providers configuration:\n  " + "\n  ".join(errors))
    return out


def _one(raw: dict[str, Any], base: Path, env: Mapping[str, str]) -> ProviderConfig:
    for key, target in _INDIRECT.items():
        if key not in raw:
            continue
        ref = raw.pop(key)
        if target in raw:
            raise ProviderConfigError(f"give {target} or {key}, not both")
        if key.endswith("_env"):
            if ref not in env:
                raise ProviderConfigError(f"{key}: environment variable {ref} is not set")
            raw[target] = env[ref]
        else:
            fp = Path(ref) if Path(ref).is_absolute() else base / ref
            try:
                raw[target] = fp.read_text().strip()
            except OSError as exc:
                raise ProviderConfigError(f"{key}: cannot read {fp}: {exc.strerror}") from None
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ProviderConfigError(f"unknown key(s) {sorted(unknown)}")
    pid = raw.get("id")
    if not isinstance(pid, str) or not _ID.match(pid):
        raise ProviderConfigError("id must be lower-case letters, digits, '-' or '_' (max 63)")
    protocol = raw.get("protocol")
    if protocol not in PROTOCOLS:
        raise ProviderConfigError(f"protocol must be one of {PROTOCOLS}")
    if protocol == "hub88":
        if not raw.get("public_key_pem"):
            raise ProviderConfigError("hub88 needs public_key_pem (or public_key_file / public_key_env)")
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            load_pem_public_key(raw["public_key_pem"].encode())
        except ValueError:
            raise ProviderConfigError("public_key_pem is not a PEM public key") from None
    elif len(raw.get("secret", "")) < 8:
        raise ProviderConfigError(f"{protocol} needs a secret of at least 8 characters")
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in raw.get("allowed_networks", []))
    for name in ("rate_per_s", "burst"):
        if not isinstance(raw.get(name, 0), int) or raw.get(name, 0) < 0:
            raise ProviderConfigError(f"{name} must be a non-negative integer")
    brands = raw.get("brands", [])
    if not isinstance(brands, list) or not all(isinstance(b, str) and b for b in brands):
        raise ProviderConfigError("brands must be a list of brand ids")
    return ProviderConfig(
        id=pid, protocol=protocol, enabled=bool(raw.get("enabled", True)), secret=raw.get("secret", ""),
        public_key_pem=raw.get("public_key_pem", ""), private_key_pem=raw.get("private_key_pem", ""),
        brands=tuple(brands), allowed_networks=nets, health_url=raw.get("health_url", ""),
        rate_per_s=raw.get("rate_per_s", 0), burst=raw.get("burst", 0), options=dict(raw.get("options", {})),
    )


def adapter_class(protocol: str) -> type[Any]:
    if protocol == "native":
        from adapters.native import NativeAdapter
        return NativeAdapter
    if protocol == "hub88":
        from adapters.hub88 import Hub88Adapter
        return Hub88Adapter
    if protocol == "pragmatic":
        from adapters.pragmatic import PragmaticAdapter
        return PragmaticAdapter
    if protocol == "evolution":
        from adapters.evolution import EvolutionAdapter
        return EvolutionAdapter
    raise ProviderConfigError(f"unknown protocol {protocol!r}")
