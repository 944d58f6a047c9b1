"""The records the gateway, the adapters and the ledger side share: a configured provider and a player's
session at one."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One configured provider instance, mounted at ``/v1/providers/<id>/``."""

    id: str
    protocol: str
    enabled: bool = True
    #: HMAC secret (native), secret key (Pragmatic) or authToken (Evolution)
    secret: str = ""
    #: the provider's RSA public key, PEM (Hub88): we verify its signatures with it
    public_key_pem: str = ""
    #: our RSA private key, PEM (Hub88): only needed to sign what we send to the provider
    private_key_pem: str = ""
    #: brands this provider may act for; empty = any brand of a session it holds
    brands: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    health_url: str = ""
    rate_per_s: int = 0
    burst: int = 0
    #: protocol-specific extras (e.g. Pragmatic providerId, Hub88 operator id)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlayerSession:
    """A player's session at one provider, as the gateway holds it (Redis is the truth)."""

    token: str
    provider_id: str
    tenant_id: str
    brand_id: str
    license: str
    player_id: str
    currency: str
    country: str = ""
    game_id: str = ""
    started_ms: int = 0
    expires_ms: int = 0
