"""Capped exponential backoff shared by every long-running loop (writers, relays, pumps, monitors).

A loop that meets an error waits and tries again instead of ending: fast after a blip (the first
delay is short), without hammering a server that stays down (the delay doubles up to a cap), and
not in lock-step with its siblings (jitter), so many loops reconnecting at once spread out.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self._next = first_s

    def next(self) -> float:
        """The delay before the next attempt (between half and all of the current step)."""
        step = self._next
        self._next = min(self.cap_s, step * 2)
        return step * random.uniform(0.5, 1.0)  # jitter, not cryptography

    def reset(self) -> None:
        """After a success: the next failure is retried quickly again."""
        self._next = self.first_s
