"""A precise one-shot timer for the event loop: Linux timerfd on CLOCK_MONOTONIC.

uvloop's timers take whole milliseconds (a delay is rounded to the nearest ms), so a
send aimed at t fires anywhere in [t - 0.5 ms, t + 0.5 ms] and needs a spin or a
late wake-up. A timerfd armed at an absolute CLOCK_MONOTONIC instant (the clock of
`time.monotonic_ns`, which the schedule uses) wakes the loop's epoll at that
nanosecond instant; its readiness callback runs the tick. One `timerfd_settime` per
wake-up (through ctypes), no Python objects per arm. Where timerfd is missing
(non-Linux), `make_timer` returns None and the worker falls back to loop timers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class LoopTimer:
    """Arms one absolute deadline at a time; `callback` runs in the loop when it passes."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], libc: ctypes.CDLL
    ) -> None:
        fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self.loop = loop
        self.callback = callback
        self._settime = libc.timerfd_settime
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self.armed = False
        loop.add_reader(fd, self._fired)

    def arm_at(self, deadline_ns: int) -> None:
        """Fire at CLOCK_MONOTONIC `deadline_ns` (immediately if it has passed)."""
        v = self._spec.it_value
        v.tv_sec, v.tv_nsec = divmod(max(deadline_ns, 1), 1_000_000_000)
        self._settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None)
        self.armed = True

    def _fired(self) -> None:
        # Re-arming (timerfd_settime) resets the expiry count, which makes the fd
        # unreadable again: no read() needed when the callback re-arms; otherwise disarm.
        self.armed = False
        self.callback()
        if not self.armed:
            v = self._spec.it_value
            v.tv_sec = v.tv_nsec = 0
            self._settime(self.fd, 0, self._ref, None)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


def make_timer(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> LoopTimer | None:
    """A timerfd-backed timer, or None where the platform has no timerfd."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "read"):
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        return LoopTimer(loop, callback, libc)
    except (OSError, AttributeError, NotImplementedError):
        return None
