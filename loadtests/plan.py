"""The tournament burst's phases, apart from Locust so reports and tests can read them without it."""

from __future__ import annotations

#: (end of phase as a fraction of the run, players as a multiple of -u, seconds to reach them)
BURST_PHASES: tuple[tuple[float, float, str], ...] = (
    (0.15, 1.0, "ramp"),
    (0.35, 1.0, "base"),
    (0.40, 4.0, "spike"),
    (0.65, 4.0, "hold"),
    (0.75, 1.0, "fall"),
    (1.00, 1.0, "after"),
)


def burst_plan(base: int, run_time: float) -> list[tuple[float, int, float, str]]:
    """(phase end in s, target players, spawn rate/s, phase name) for a run of ``run_time`` seconds."""
    plan, start, users = [], 0.0, 0
    for end_frac, multiple, name in BURST_PHASES:
        end = end_frac * run_time
        target = max(1, round(base * multiple))
        span = max(end - start, 1.0)
        # ramp and fall take their whole phase; the spike arrives within its phase (a few seconds)
        rate = max(abs(target - users) / span, 1.0) if target != users else float(max(base, 1))
        plan.append((end, target, rate, name))
        start, users = end, target
    return plan
