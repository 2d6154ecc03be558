"""How long a peer has been silent, counted only over time the judging side was running.

The coordinator judges its agents with it, and each agent its coordinator: a process that
was paused (SIGSTOP) or starved is not mistaken for a dead peer. Pure: no clock of its own.
"""

from __future__ import annotations


class SilenceClock:
    """`check(now, heard)` is called once per tick with the instant the peer was last heard
    from (same clock, any unit). Between two checks at most `max_gap` counts: a longer gap
    means this side was not running, and whatever the peer sent meanwhile was not read yet,
    so it is no evidence of the peer's silence."""

    def __init__(self, max_gap: float) -> None:
        self.max_gap = max_gap
        self._prev: float | None = None
        self._heard = 0.0
        self._silent = 0.0

    def check(self, now: float, heard: float) -> float:
        """Silence (of this side's running time) since `heard`, in the clock's unit."""
        heard = max(heard, self._heard)
        if self._prev is None:
            silent = now - heard
        else:
            credit = min(now - self._prev, self.max_gap)
            if heard > self._prev:  # heard since the last check: only the credit counts
                silent = min(now - heard, credit)
            else:
                silent = min(self._silent, self._prev - heard) + credit
        self._prev, self._heard, self._silent = now, heard, max(silent, 0.0)
        return self._silent
