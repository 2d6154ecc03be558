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


#: An agent is called missing only after this many of its idle heartbeats' worth of
#: silence, at least (the agent announces its idle beat: Started.idle_heartbeat_s).
MISSED_BEATS = 3
#: An announced idle beat counts up to this (a longer one would let an agent that
#: announced it stay silent for minutes before it is called missing).
MAX_ANNOUNCED_BEAT_S = 5.0


def announced_beat_s(beat_s: float) -> float:
    """An agent's announced idle beat, as the coordinator takes it: 0 (not announced, or
    not a sane number) or at most MAX_ANNOUNCED_BEAT_S."""
    if not 0.0 < beat_s < float("inf"):  # also NaN
        return 0.0
    return min(beat_s, MAX_ANNOUNCED_BEAT_S)


def silence_limit_s(timeout_s: float, beat_s: float) -> float:
    """How long an agent that beats every `beat_s` while idle may be silent before it is
    called missing: the configured timeout, but never under MISSED_BEATS beats, so a
    busy-but-alive agent always has two whole beats and more of margin."""
    return max(timeout_s, MISSED_BEATS * announced_beat_s(beat_s))
