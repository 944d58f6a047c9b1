"""The load report: Markdown for people, JSON for tools, a PNG chart of throughput and latency over time.

Throughput and latency come from Locust's CSVs (``locust_stats.csv`` for the run, the per-second
``locust_stats_history.csv`` for the chart, the burst phases and the sustained rate); shed, queued and
rate-limited counts from the gateway's ``/metrics`` sampled every second; CPU from ``/proc`` per process.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtests.check import CheckResult
from loadtests.plan import burst_plan

SLO_P95_MS = 150.0
SUSTAIN_WINDOW_S = 10
_MONEY = re.compile(r"^(native|pragmatic) (bet|win|result|rollback|end-round|endRound)")
_BET_WIN = re.compile(r"^(native|pragmatic) (bet|win|result)")


def _f(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _history(out: Path) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """Per second: users, calls/s, retryable/s and bet+win calls/s (exact, from the running totals Locust
    writes each second) and Locust's p50/p95/p99 (over its last 10 s)."""
    per: dict[int, dict[str, Any]] = defaultdict(lambda: {"betwin_rps": 0.0, "money_rps": 0.0})
    last: dict[tuple[str, str], tuple[int, float]] = {}

    def rate(name: str, column: str, t: int, total: float) -> float:
        prev_t, prev = last.get((name, column), (t, total))
        last[(name, column)] = (t, total)
        return (total - prev) / (t - prev_t) if t > prev_t else 0.0

    with (out / "locust_stats_history.csv").open() as f:
        for r in csv.DictReader(f):
            t, name = int(r["Timestamp"]), r["Name"]
            row = per[t]
            calls = rate(name, "calls", t, _f(r["Total Request Count"]))
            if name == "Aggregated":
                row.update(users=int(r["User Count"]), rps=calls,
                           fail_rps=rate(name, "fails", t, _f(r["Total Failure Count"])),
                           p50=_f(r["50%"]), p95=_f(r["95%"]), p99=_f(r["99%"]))
            elif _BET_WIN.match(name):
                row["betwin_rps"] += calls
            if _MONEY.match(name):
                row["money_rps"] += calls
    times = sorted(t for t in per if "rps" in per[t])
    return times, per


def sustained(times: list[int], per: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The best bet+win rate held for ``SUSTAIN_WINDOW_S`` seconds with every second's p95 under the SLO."""
    best: dict[str, Any] = {"betwin_rps": 0.0, "window_start_s": None, "p95_max_ms": None,
                            "peak_betwin_rps": 0.0, "peak_p95_max_ms": None}
    for i in range(len(times) - SUSTAIN_WINDOW_S + 1):
        window = [per[t] for t in times[i:i + SUSTAIN_WINDOW_S]]
        rate = sum(w["betwin_rps"] for w in window) / len(window)
        if rate > best["peak_betwin_rps"]:
            best |= {"peak_betwin_rps": round(rate, 1), "peak_p95_max_ms": max(w["p95"] for w in window)}
        if all(0 < w["p95"] < SLO_P95_MS for w in window):
            rate = sum(w["betwin_rps"] for w in window) / len(window)
            if rate > best["betwin_rps"]:
                best |= {"betwin_rps": round(rate, 1), "window_start_s": times[i] - times[0],
                         "p95_max_ms": max(w["p95"] for w in window)}
    return best


def _phases(args: dict[str, Any], times: list[int], per: dict[int, dict[str, Any]],
            samples: list[dict[str, Any]], started: float) -> list[dict[str, Any]]:
    if args["shape"] == "burst":
        plan = [(end, target, name) for end, target, _, name in burst_plan(args["users"], args["seconds"])]
    else:
        plan = [(float(args["seconds"]), args["users"], "steady")]
    out, start = [], 0.0
    for end, target, name in plan:
        rows = [per[t] for t in times if start <= t - started < end]
        sm = [s for s in samples if start <= s["t"] - started < end]
        prev = [s for s in samples if s["t"] - started < start]
        shed_before = prev[-1]["shed"] if prev else (sm[0]["shed"] if sm else 0)
        out.append({
            "phase": name, "from_s": round(start), "to_s": round(end), "target_users": target,
            "users_max": max((r["users"] for r in rows), default=0),
            "rps_mean": round(sum(r["rps"] for r in rows) / len(rows), 1) if rows else 0.0,
            "betwin_rps_mean": round(sum(r["betwin_rps"] for r in rows) / len(rows), 1) if rows else 0.0,
            "retryable_per_s": round(sum(r["fail_rps"] for r in rows) / len(rows), 1) if rows else 0.0,
            "p95_max_ms": max((r["p95"] for r in rows), default=0.0),
            "p99_max_ms": max((r["p99"] for r in rows), default=0.0),
            "shed": (sm[-1]["shed"] - shed_before) if sm else 0,
            "queued_max": {lane: max((s["queued"].get(lane, 0) for s in sm), default=0) for lane in ("bet", "settle")},
        })
        start = end
    return out


def _chart(path: Path, times: list[int], per: dict[int, dict[str, Any]], samples: list[dict[str, Any]],
           phases: list[dict[str, Any]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = times[0] if times else 0
    x = [t - t0 for t in times]

    def smooth(key: str) -> list[float]:  # 3 s centred mean: Locust's 1 s ticks jitter under load
        v = [per[t][key] for t in times]
        return [sum(v[max(0, i - 1):i + 2]) / len(v[max(0, i - 1):i + 2]) for i in range(len(v))]

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    ax1.plot(x, smooth("rps"), label="all calls/s (3 s mean)")
    ax1.plot(x, smooth("betwin_rps"), label="bet+win calls/s (3 s mean)")
    ax1.plot(x, smooth("fail_rps"), label="retryable answers/s", color="tab:red", lw=0.8)
    ax1.set_ylabel("calls/s")
    users = ax1.twinx()
    users.plot(x, [per[t]["users"] for t in times], color="grey", ls="--", label="users")
    users.set_ylabel("users")
    ax1.legend(loc="upper left")
    users.legend(loc="upper right")
    for key, style in (("p50", "-"), ("p95", "-"), ("p99", ":")):
        ax2.plot(x, [per[t][key] or None for t in times], style, label=key)
    ax2.axhline(SLO_P95_MS, color="red", lw=0.8, label=f"SLO p95 {SLO_P95_MS:.0f} ms")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (10 s window)")
    ax2.legend(loc="upper left")
    if samples:
        sx = [s["t"] - t0 for s in samples]
        ax3.plot(sx, [s["queued"].get("bet", 0) for s in samples], label="queued, bet lane")
        ax3.plot(sx, [s["queued"].get("settle", 0) for s in samples], label="queued, settle lane")
        base_shed = samples[0]["shed"]
        ax3.plot(sx, [s["shed"] - base_shed for s in samples], label="shed bets (cumulative)", color="tab:red")
        base_rl = samples[0]["rate_limited"]
        limited = ax3.twinx()
        limited.plot(sx, [s["rate_limited"] - base_rl for s in samples], label="rate-limited calls (cumulative)",
                     color="tab:purple", lw=0.8)
        limited.set_ylabel("rate-limited calls")
        limited.legend(loc="upper right")
    ax3.set_ylabel("commands queued / shed")
    ax3.set_xlabel("seconds")
    ax3.legend(loc="upper left")
    for ax in (ax1, ax2, ax3):
        for ph in phases[:-1]:
            ax.axvline(ph["to_s"], color="#bbb", lw=0.6)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, *, args: dict[str, Any], started: float, ended: float, trivial: dict[str, Any],
                 cpu: dict[str, float], metrics: tuple[dict[str, Any], dict[str, Any]],
                 samples: list[dict[str, Any]], result: CheckResult) -> Path:
    with (out / "locust_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows["Aggregated"]
    calls = int(agg["Request Count"])
    times, per = _history(out)
    phases = _phases(args, times, per, samples, times[0] if times else started)
    before, after = metrics
    status_delta = {k: v - before["by_status"].get(k, 0) for k, v in after["by_status"].items()}
    betwin = sum(int(r["Request Count"]) for n, r in rows.items() if _BET_WIN.match(n))
    elapsed = max(ended - started, 1e-9)
    summary: dict[str, Any] = {
        "run": {"shape": args["shape"], "base_users": args["users"], "seconds": args["seconds"],
                "classes": args["classes"], "websocket": "absent (GET /v1/ws: 404), SessionWatchers left out"
                if args["ws_status"] == 404 else f"present (GET /v1/ws without the upgrade: {args['ws_status']})",
                "loadavg_before": args.get("loadavg_before"), "loadavg_after": args.get("loadavg_after"),
                "cpus": os.cpu_count()},
        "throughput": {"calls": calls, "calls_per_s": round(calls / elapsed, 1), "bet_win_calls": betwin,
                       "bet_win_per_s": round(betwin / elapsed, 1),
                       "retryable_answers": int(agg["Failure Count"]),
                       "p50_ms": _f(agg["50%"]), "p95_ms": _f(agg["95%"]), "p99_ms": _f(agg["99%"])},
        "sustained_at_slo": sustained(times, per) | {"slo_p95_ms": SLO_P95_MS, "window_s": SUSTAIN_WINDOW_S},
        "trivial_handler": trivial,
        "gateway_metrics": {
            "shed_bets": after["shed"] - before["shed"],
            "queued_max": {lane: max((s["queued"].get(lane, 0) for s in samples), default=0)
                           for lane in ("bet", "settle")},
            "shedding_shards_max": max((s["shedding_shards"] for s in samples), default=0),
            "rate_limited": after["rate_limited"] - before["rate_limited"],
            "ledger_timeouts": after["timeouts"] - before["timeouts"],
            "responses_by_status": dict(sorted(status_delta.items())),
        },
        "cpu_us_per_call": {k: round(v * 1e6 / max(calls, 1), 1) for k, v in sorted(cpu.items())},
        "cpu_seconds": {k: round(v, 2) for k, v in sorted(cpu.items())},
        "phases": phases,
        "websocket": {k: v for k, v in result.ws.items() if k != "problems"},
        "reconciliation": result.as_dict(),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    title = (f"{args['shape']} load, {args['users']} base users, {args['seconds']} s: "
             f"{'reconciled' if result.ok else 'RECONCILIATION FAILED'}")
    if times:
        _chart(out / "chart.png", times, per, samples, phases, title)
    md = out / "report.md"
    md.write_text(_markdown(summary, title))
    return md


def _markdown(s: dict[str, Any], title: str) -> str:
    t, st, tr, gm, rec = (s["throughput"], s["sustained_at_slo"], s["trivial_handler"], s["gateway_metrics"],
                          s["reconciliation"])
    lines = [f"# Load run: {title}", "",
             f"User classes: {', '.join(s['run']['classes'])}. Websocket: {s['run']['websocket']}.", "",
             "![throughput and latency](chart.png)", "", "## Throughput and latency", "",
             "| | calls | calls/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|",
             f"| gateway, all calls (setup included) | {t['calls']} | {t['calls_per_s']} | {t['p50_ms']:.0f} | "
             f"{t['p95_ms']:.0f} | {t['p99_ms']:.0f} |",
             f"| gateway, bet+win calls | {t['bet_win_calls']} | {t['bet_win_per_s']} | | | |",
             f"| trivial aiohttp handler, same Locust client, {tr['users']} users back to back, {tr['seconds']} s "
             f"| {tr['calls']} | "
             f"{tr['rps']:.0f} | {tr['p50_ms']:.0f} | {tr['p95_ms']:.0f} | {tr['p99_ms']:.0f} |", "",
             (f"Sustained bet+win rate with p95 < {st['slo_p95_ms']:.0f} ms over {st['window_s']} s: "
              f"**{st['betwin_rps']} calls/s** (window from {st['window_start_s']} s, "
              f"p95 at most {st['p95_max_ms']} ms). " if st["window_start_s"] is not None else
              f"No {st['window_s']} s window kept p95 under {st['slo_p95_ms']:.0f} ms. ") +
             f"Best {st['window_s']} s bet+win rate: {st['peak_betwin_rps']} calls/s "
             f"(p95 up to {st['peak_p95_max_ms']} ms). Load average of the machine before/after: "
             f"{s['run']['loadavg_before']} / {s['run']['loadavg_after']} ({s['run']['cpus']} CPUs, shared with "
             f"everything measured). "
             f"Retryable answers (429/503/Pragmatic 100, each retried with the same transaction id): "
             f"{t['retryable_answers']}.", "",
             "## Shedding and queues (gateway /metrics)", "",
             f"Shed bets {gm['shed_bets']}; queued at most {gm['queued_max']['bet']} (bet lane) and "
             f"{gm['queued_max']['settle']} (settle lane, never shed); shards shedding at once at most "
             f"{gm['shedding_shards_max']}; rate-limited {gm['rate_limited']}; "
             f"ledger timeouts {gm['ledger_timeouts']}; "
             f"responses by status {gm['responses_by_status']}.", "",
             "## Phases", "", "| phase | s | users | calls/s | bet+win/s | retryable/s | p95 max ms | p99 max ms "
             "| shed | queued max bet/settle |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in s["phases"]:
        lines.append(f"| {p['phase']} | {p['from_s']}-{p['to_s']} | {p['users_max']} | {p['rps_mean']} | "
                     f"{p['betwin_rps_mean']} | {p['retryable_per_s']} | {p['p95_max_ms']:.0f} | {p['p99_max_ms']:.0f} "
                     f"| {p['shed']} | {p['queued_max']['bet']}/{p['queued_max']['settle']} |")
    lines += ["", "## CPU per call (µs of CPU time per Locust request, from /proc utime+stime)", "",
              "| process | µs/call | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {s['cpu_seconds'][k]} |" for k, v in s["cpu_us_per_call"].items()]
    lines += [f"| trivial run: {k} | {v:.1f} | |" for k, v in tr["cpu_us_per_call"].items()]
    verdict = "**CLEAN**: nothing lost, nothing doubled" if rec["ok"] else "**FAILED**"
    lines += ["", "## Reconciliation", "", f"{verdict}. {rec['calls']} journalled calls, {rec['answers']} "
              f"definitive answers, {rec['succeeded']} ledger keys answered success, {rec['refused']} refused, "
              f"{rec['resent_unknown']} without a definitive answer at the end re-sent until definitive, "
              f"{rec['wallets']} wallets checked (operator balance API"
              f"{' and ledger SQL' if rec['ledger_checked'] else ''}).", "",
              "| call | success | refused |", "|---|---|---|"]
    lines += [f"| {k} | {v['ok']} | {v['refused']} |" for k, v in sorted(rec["by_kind"].items())]
    ws = s.get("websocket")
    if ws:
        lag = ws["push_lag_ms"]
        lines += ["", "## Player websocket (SessionWatchers)", "",
                  f"Sockets opened {ws['sockets']} (reopened after the gateway dropped them: {ws['reconnects']}; "
                  f"held at once at most {ws['open_max']}); balance pushes received {ws['pushes']} "
                  f"({ws['conflated']} conflated); rounds checked {ws['rounds_checked']}; "
                  f"**mismatches {ws['mismatches']}** (last pushed balance not the provider's answer within the "
                  f"bound); seq gaps or pushes out of commit order {ws['order_errors']}. "
                  f"Push lag after the provider's answer over {lag['samples']} pushes ({ws.get('early', 0)} "
                  f"read before the answer itself, counted as 0): p50 {lag['p50']} ms, p95 {lag['p95']} ms, "
                  f"p99 {lag['p99']} ms, max {lag['max']} ms."]
    if rec["reconcile"]:
        lines += ["", "`gateway reconcile`:", "", "```", rec["reconcile"], "```"]
    if rec["problems"]:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in rec["problems"][:50]]
    return "\n".join(lines) + "\n"
