"""The baseline under the same Locust client: one signed native bet body posted to a trivial aiohttp handler.

Same user class machinery (FastHttpUser), same number of users and the same request size as ``RoundPlayer``,
sending back to back (no wait): the ceiling of this client and of aiohttp on this machine, so the ratio to
the gateway's rate shows what the gateway itself costs (``benchmarks/trivial_server.py``).
"""

from __future__ import annotations

from locust import FastHttpUser, constant, task

from adapters.sim.native import NativeClient

_CALL = NativeClient("demo", "baseline").bet("s" * 43, "b-ld-baseline-0123456789abcdef", "ld-baseline-0123456789abcdef",
                                             "1.00", "EUR")


class TrivialHandler(FastHttpUser):
    wait_time = constant(0)

    @task
    def bet(self) -> None:
        self.client.post(_CALL.path, data=_CALL.body, headers=_CALL.headers, name="trivial bet")  # type: ignore[arg-type]
