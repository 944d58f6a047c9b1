"""``gateway top``: a live terminal view of a running gateway, from its /metrics alone.

Each frame shows requests per route (rate and p95), bets and stake per brand, the ledger queues,
shedding, timeouts and round trip per shard, rate limiting, the degradation mode and provider
health. Rates and p95 are over the last refresh interval; the first frame (and ``--once``) shows
totals and p95 since the gateway started.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def scrape(base_url: str, timeout_s: float = 5.0) -> Samples:
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _select(samples: Samples, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for (n, labels), v in samples.items():
        if n == name:
            yield dict(labels), v


def _by(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for labels, v in _select(samples, name):
        out[tuple(labels.get(k, "") for k in keys)] += v
    return dict(out)


Grouped = dict[tuple[str, ...], float]


def _minus(cur: Grouped, prev: Grouped | None) -> Grouped:
    if prev is None:
        return cur
    return {k: v - prev.get(k, 0.0) for k, v in cur.items()}


def quantile(q: float, buckets: dict[float, float]) -> float:
    """``histogram_quantile`` over cumulative ``le`` → count, interpolated linearly inside the bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


def _p95(samples: Samples, prev: Samples | None, name: str, key: str | None) -> dict[str, float]:
    cur = _by(samples, name + "_bucket", *((key, "le") if key else ("le",)))
    diff = _minus(cur, _by(prev, name + "_bucket", *((key, "le") if key else ("le",))) if prev else None)
    groups: defaultdict[str, dict[float, float]] = defaultdict(dict)
    for k, v in diff.items():
        group, le = (k[0], k[1]) if key else ("", k[0])
        groups[group][float(le)] = v
    return {g: quantile(0.95, b) for g, b in groups.items()}


def _ms(seconds: float) -> str:
    return "   -  " if math.isnan(seconds) else f"{seconds * 1000:6.1f}"


def render(base_url: str, samples: Samples, prev: Samples | None = None, interval_s: float = 0.0) -> str:
    live = prev is not None and interval_s > 0

    def per(v: float) -> str:
        """A rate over the interval (one decimal), or a total (a whole number)."""
        return f"{v / interval_s:.1f}" if live else f"{v:.0f}"

    unit = "/s" if live else " total"
    lines = [f"gateway top — {base_url} — {time.strftime('%H:%M:%S')} — "
             + (f"rates over {interval_s:g} s" if live else "totals and p95 since start")]

    requests = _minus(_by(samples, "gateway_requests_total", "route"),
                      _by(prev, "gateway_requests_total", "route") if prev else None)
    errors = _minus({k: v for k, v in _by(samples, "gateway_requests_total", "route", "status").items()
                     if k[1].startswith("5")},
                    _by(prev, "gateway_requests_total", "route", "status") if prev else None)
    p95 = _p95(samples, prev, "gateway_request_duration_seconds", "route")
    lines += ["", f"{'route':<44} {'req' + unit:>12} {'5xx':>8} {'p95 ms':>8}"]
    for (route,), n in sorted(requests.items(), key=lambda kv: -kv[1])[:12]:
        fives = sum(v for (r, _), v in errors.items() if r == route)
        lines.append(f"{route[:44]:<44} {per(n):>12} {per(fives):>8} {_ms(p95.get(route, math.nan)):>8}")

    bets = _minus(_by(samples, "gateway_bets_total", "brand", "currency"),
                  _by(prev, "gateway_bets_total", "brand", "currency") if prev else None)
    stake = _minus(_by(samples, "gateway_bet_stake_minor_units_total", "brand", "currency"),
                   _by(prev, "gateway_bet_stake_minor_units_total", "brand", "currency") if prev else None)
    if bets:
        lines += ["", f"{'brand':<20} {'currency':<8} {'bets' + unit:>12} {'stake (minor)' + unit:>22}"]
        for (brand, currency), n in sorted(bets.items()):
            amount = per(stake.get((brand, currency), 0))
            lines.append(f"{brand[:20]:<20} {currency:<8} {per(n):>12} {amount:>22}")

    depth = _by(samples, "gateway_ledger_queue_depth", "shard", "lane")
    shedding = _by(samples, "gateway_ledger_shedding", "shard")
    shed = _minus(_by(samples, "gateway_ledger_shed_total", "shard"),
                  _by(prev, "gateway_ledger_shed_total", "shard") if prev else None)
    inflight = _by(samples, "gateway_ledger_inflight_batches", "shard")
    shards = sorted({k[0] for k in depth} | {k[0] for k in shedding}, key=lambda s: int(s) if s.isdigit() else 0)
    ledger_p95 = _p95(samples, prev, "gateway_ledger_latency_seconds", None).get("", math.nan)
    lag = sum(v for _, v in _select(samples, "gateway_ledger_lag_seconds"))
    timeouts = _minus(_by(samples, "gateway_ledger_timeouts_total"), _by(prev, "gateway_ledger_timeouts_total")
                      if prev else None).get((), 0.0)
    lines += ["", f"ledger: round trip p95 {_ms(ledger_p95).strip()} ms, lag {lag * 1000:.1f} ms, "
                  f"timeouts {per(timeouts)}{unit}",
              f"{'shard':<6} {'bet q':>7} {'settle q':>9} {'in flight':>10} {'shedding':>9} {'shed' + unit:>12}"]
    for shard in shards:
        lines.append(f"{shard:<6} {depth.get((shard, 'bet'), 0):>7.0f} {depth.get((shard, 'settle'), 0):>9.0f} "
                     f"{inflight.get((shard,), 0):>10.0f} {'YES' if shedding.get((shard,), 0) else 'no':>9} "
                     f"{per(shed.get((shard,), 0)):>12}")

    limited = _minus(_by(samples, "gateway_rate_limited_total"), _by(prev, "gateway_rate_limited_total")
                     if prev else None).get((), 0.0)
    modes = [labels["mode"] for labels, v in _select(samples, "gateway_degradation_mode")
             if v and labels.get("scope") == "global"]
    entries = sum(v for _, v in _select(samples, "gateway_degradation_entries"))
    health = {labels["provider"]: v for labels, v in _select(samples, "gateway_provider_up")}
    lines += ["", f"rate-limited {per(limited)}{unit}   degradation: {', '.join(modes) or 'unknown'}"
                  f" ({entries:.0f} scoped)",
              "providers: " + (", ".join(f"{p} {'up' if v else 'DOWN'}" for p, v in sorted(health.items()))
                               or "no health checks")]
    return "\n".join(lines) + "\n"


def run(base_url: str, interval_s: float, once: bool) -> int:
    """Print frames until interrupted (``--once``: one frame); exit 1 when /metrics cannot be read."""
    prev: Samples | None = None
    while True:
        try:
            samples = scrape(base_url)
        except OSError as exc:
            print(f"gateway top: cannot read {base_url}/metrics: {exc}", file=sys.stderr)
            return 1
        frame = render(base_url, samples, prev, interval_s)
        if once:
            sys.stdout.write(frame)
            return 0
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        sys.stdout.write(frame)
        sys.stdout.flush()
        prev = samples
        try:
            time.sleep(interval_s)
        except KeyboardInterrupt:
            return 0
