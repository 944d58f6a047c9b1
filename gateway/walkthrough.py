"""What ``gateway up`` prints once the gateway answers: a walk-through for the providers file in use.

The generated demo file (one native provider, ``demo``) gets the full round in curl; a user's own file
gets, per enabled provider, its mount path, how its calls are authenticated and a first call to try in
that provider's protocol, with the page of ``docs/`` that describes it. Secrets are never printed: the
demo's is read from its file by the shell, a user's is named as a placeholder.
"""

from __future__ import annotations

from pathlib import Path

from core.records import ProviderConfig
from core.settings import Settings

DEMO_PROVIDER = "demo"
_PLAYER = '"tenant_id":"t1","brand_id":"b1","license":"MGA","player_id":"alice","currency":"EUR"'


def walkthrough(settings: Settings, base: str, providers: list[ProviderConfig]) -> str:
    op_key = next((k for k, r in settings.api_key_roles.items() if r == "operator"), "<operator key>")
    enabled = [p for p in providers if p.enabled]
    lines = [
        "",
        "Try it (bash; needs curl and openssl):",
        "",
        f"  KEY={op_key}",
        f"  P='{_PLAYER}'",
        "  # 1. deposit 100.00 EUR (operator API, with an idempotency key)",
        f'  curl -s -H "Authorization: Bearer $KEY" {base}/v1/wallet/deposit \\',
        '    -d "{$P,\\"amount\\":\\"100.00\\",\\"idempotency_key\\":\\"dep-1\\"}"; echo',
    ]
    if not enabled:
        lines += ["", f"  No provider is enabled in {settings.providers_file or 'the providers file'}: "
                  "add one (see README.md, section Providers) and restart."]
        return "\n".join(lines) + "\n"
    native = next((p for p in enabled if p.protocol == "native"), None)
    if native is not None:
        lines += _native_round(settings, base, native)
    lines += ["", "Providers (every call is authenticated before anything else is read):"]
    for cfg in providers:
        lines += _provider(base, cfg)
    return "\n".join(lines) + "\n"


def _native_round(settings: Settings, base: str, cfg: ProviderConfig) -> list[str]:
    demo_secret = Path(settings.data_dir) / f"{DEMO_PROVIDER}.secret"
    if cfg.id == DEMO_PROVIDER and demo_secret.exists():
        secret = f"$(cat {demo_secret})"
    else:
        secret = f"'<the secret of provider {cfg.id} in your providers file>'"
    url = f"{base}/v1/providers/{cfg.id}"
    return [
        f"  SECRET={secret}",
        "  sign() { printf '%s' \"$1\" | openssl dgst -sha256 -hmac \"$SECRET\" | sed 's/^.*= //'; }",
        f"  # 2. launch a game session for alice at provider {cfg.id}",
        f'  LT=$(curl -s -H "Authorization: Bearer $KEY" {base}/v1/sessions '
        f'-d "{{$P,\\"provider_id\\":\\"{cfg.id}\\"}}" \\',
        "    | sed 's/.*\"launch_token\":\"\\([^\"]*\\)\".*/\\1/')",
        "  # 3. the provider exchanges the launch token for a session (every provider call is signed)",
        '  B="{\\"launch_token\\":\\"$LT\\"}"',
        f'  ST=$(curl -s -H "X-Signature: $(sign "$B")" {url}/authenticate -d "$B" \\',
        "    | sed 's/.*\"session_token\":\"\\([^\"]*\\)\".*/\\1/')",
        "  # 4. bet 1.50, then win 4.00 on round r1",
        '  B="{\\"session_token\\":\\"$ST\\",\\"transaction_id\\":\\"bet-1\\",\\"round_id\\":\\"r1\\",'
        '\\"amount\\":\\"1.50\\",\\"currency\\":\\"EUR\\"}"',
        f'  curl -s -H "X-Signature: $(sign "$B")" {url}/bet -d "$B"; echo',
        '  B="{\\"session_token\\":\\"$ST\\",\\"transaction_id\\":\\"win-1\\",\\"round_id\\":\\"r1\\",'
        '\\"amount\\":\\"4.00\\",\\"currency\\":\\"EUR\\",\\"bet_transaction_id\\":\\"bet-1\\"}"',
        f'  curl -s -H "X-Signature: $(sign "$B")" {url}/win -d "$B"; echo',
        "  # 5. the balance (operator API): 102.50",
        f'  curl -s -H "Authorization: Bearer $KEY" "{base}/v1/wallet/balance?brand_id=b1&player_id=alice'
        '&currency=EUR"; echo',
    ]


def _provider(base: str, cfg: ProviderConfig) -> list[str]:
    url = f"{base}/v1/providers/{cfg.id}"
    head = f"  {cfg.id} ({cfg.protocol}) at {url}/"
    if not cfg.enabled:
        return [head + "  (disabled: not mounted)"]
    if cfg.protocol == "native":
        return [head, "    X-Signature: hex HMAC-SHA256 of the raw body with the provider's secret "
                "(sign() above); calls: authenticate, balance, bet, win, rollback, end-round; "
                "see README.md and /openapi.json"]
    if cfg.protocol == "hub88":
        return [head,
                "    X-Hub88-Signature: base64 RSA-SHA256 (PKCS#1 v1.5) of the raw body with Hub88's private key;",
                "    a launch (POST /v1/sessions) returns the token for the game URL; see docs/hub88.md",
                "    B='{\"user\":\"alice\",\"request_uuid\":\"u1\"}'",
                f"    curl -s {url}/user/info -d \"$B\" -H \"X-Hub88-Signature: $(printf '%s' \"$B\" "
                "| openssl dgst -sha256 -sign hub88_private.pem | base64 -w0)\"; echo"]
    if cfg.protocol == "pragmatic":
        provider_id = str(cfg.options.get("provider_id", "") or "PragmaticPlay")
        return [head,
                "    form POSTs to /{method}.html; hash = MD5 hex of the parameters sorted by name as k=v "
                "joined by &, then the secret key; see docs/pragmatic.md",
                f"    Q='providerId={provider_id}&token=<launch token>'; "
                f"H=$(printf '%s' \"$Q<secret key>\" | md5sum | cut -d' ' -f1)",
                f"    curl -s {url}/authenticate.html -d \"$Q&hash=$H\"; echo"]
    if cfg.protocol == "evolution":
        return [head,
                "    JSON POSTs with the static authToken in the query (?authToken=...); a launch returns the sid; "
                "see docs/evolution.md",
                f"    curl -s \"{url}/check?authToken=<authToken>\" "
                "-d '{\"sid\":\"<sid>\",\"userId\":\"alice\",\"uuid\":\"u1\"}'; echo"]
    return [head]
