"""How busy the agent's whole host is: every process on it, not only the agent's own.

A worker that falls behind on a host whose cores are all busy (other agents, the server
itself when it runs there, anything else) is not short of workers: adding workers there
makes it worse. The agent says, in each status, how busy its host was since the previous
one, so that the verdict can name the host, not the agent, as the bottleneck.

Linux's /proc/stat first line counts, per state, the time all cores together have spent
since boot (in USER_HZ ticks): busy is everything but `idle` and `iowait`. Two readings
give the share of the interval the cores were busy. Elsewhere (no /proc/stat) the figure
is absent, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: (busy, total) ticks of all cores since boot, or None where the host cannot say.
Reading = tuple[int, int] | None

PROC_STAT = Path("/proc/stat")


def parse_proc_stat(text: str) -> Reading:
    """The aggregate `cpu` line of /proc/stat as (busy, total) ticks; None if absent.

    Fields after `cpu`: user nice system idle iowait irq softirq steal guest guest_nice.
    guest and guest_nice are already inside user and nice, so they are not added again."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "cpu":
            continue
        try:
            ticks = [int(x) for x in parts[1:9]]
        except ValueError:
            return None
        if len(ticks) < 4:
            return None
        total = sum(ticks)
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return total - idle, total
    return None


def read_proc_stat() -> Reading:
    try:
        return parse_proc_stat(PROC_STAT.read_text())
    except OSError:
        return None


class HostCpu:
    """`sample()`: the host's CPU busy (% of all cores) since the previous sample."""

    def __init__(self, read: Callable[[], Reading] = read_proc_stat) -> None:
        self._read = read
        self._last = read()

    def sample(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        busy, total = now[0] - last[0], now[1] - last[1]
        if total <= 0 or busy < 0:
            return None  # no tick elapsed (two samples within 10 ms), or a counter reset
        return round(min(100.0, 100.0 * busy / total), 1)
