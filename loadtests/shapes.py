"""Load shapes: a tournament burst and a steady load, both sized by Locust's own ``-u`` and ``-t``.

``-u`` is the base number of players and ``-t`` the whole run; a shape returns ``None`` at the end, which
stops the run. The burst is what a tournament start does to a casino: players arrive, the tournament
opens and several times as many join within seconds, stay through it, then leave again.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.plan import burst_plan


class _Sized(LoadTestShape):
    abstract = True
    use_common_options = True

    def _options(self) -> tuple[int, float]:
        opts = self.runner.environment.parsed_options if self.runner else None
        users = int(getattr(opts, "num_users", 0) or 10)
        run_time = float(getattr(opts, "run_time", 0) or 60)
        return users, run_time


class TournamentBurst(_Sized):
    """Ramp to -u, hold, spike to 4 times -u within seconds, hold, fall back to -u, hold, stop."""

    abstract = True

    def tick(self) -> tuple[int, float] | None:
        users, run_time = self._options()
        now = self.get_run_time()  # type: ignore[no-untyped-call]
        for end, target, rate, _ in burst_plan(users, run_time):
            if now < end:
                return target, rate
        return None


class Steady(_Sized):
    """-u players for the whole run (they arrive within the first tenth of it)."""

    abstract = True

    def tick(self) -> tuple[int, float] | None:
        users, run_time = self._options()
        if self.get_run_time() >= run_time:  # type: ignore[no-untyped-call]
            return None
        return users, max(users / max(run_time * 0.1, 1.0), 1.0)
