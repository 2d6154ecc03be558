"""The cheaper open loop: one wake-up sends the arrivals due within the send horizon (each
stamped with its true send time), and their requests leave in one write (h2 cork)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from agent.worker import Worker, WorkerTask
from tests.unit.test_h2_frames import BLOCK, Peer
from volley.plan import PlanError, plan_from_dict
from volley.wire import h2

US = 1_000


class CountingTransport:
    """Counts the connection's write calls (each is one system call on a socket)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def write(self, data: bytes) -> None:
        self.calls += 1
        self.inner.write(data)

    def writelines(self, items: Iterable[bytes]) -> None:
        self.calls += 1
        self.inner.writelines(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_corked_streams_leave_in_one_write_in_order() -> None:
    p = Peer()
    counting = CountingTransport(p.t)
    p.conn.transport = counting  # type: ignore[assignment]
    p.conn.cork()
    sids = [p.conn.start_stream(BLOCK, b"body%d" % i, True) for i in range(3)]
    assert counting.calls == 0 and p.t.out == b""  # held
    p.conn.uncork()
    assert counting.calls == 1
    frames = p.t.take()
    assert [(f.type, f.sid) for f in frames] == [
        (t, sid) for sid in sids for t in (h2.HEADERS, h2.DATA)
    ]
    assert [f.payload for f in frames if f.type == h2.DATA] == [b"body0", b"body1", b"body2"]
    p.conn.start_stream(BLOCK, b"x", True)  # uncorked: written at once
    assert counting.calls == 2


async def test_a_control_frame_while_corked_goes_after_the_held_streams() -> None:
    p = Peer()
    p.conn.cork()
    sid = p.conn.start_stream(BLOCK, b"a", True)
    p.conn.reset_stream(sid)  # RST_STREAM must not overtake the stream's HEADERS
    p.conn.uncork()
    assert [(f.type, f.sid) for f in p.t.take()] == [
        (h2.HEADERS, sid),
        (h2.DATA, sid),
        (h2.RST_STREAM, sid),
    ]


class FakeTp:
    def __init__(self, clock: list[int]) -> None:
        self.in_flight = 0
        self.clock = clock
        self.sends: list[tuple[int, int, int]] = []  # (index, intended, sent)
        self.log: list[str] = []

    def send(self, key: int, intended: int, pidx: int) -> None:
        self.in_flight += 1
        self.sends.append((key, intended, self.clock[0]))
        self.log.append("send")
        self.clock[0] += 5 * US  # each send takes 5 µs

    def cork(self) -> None:
        self.log.append("cork")

    def uncork(self) -> None:
        self.log.append("uncork")


class FakeTimer:
    def __init__(self) -> None:
        self.armed: list[int] = []

    def arm_at(self, deadline_ns: int) -> None:
        self.armed.append(deadline_ns)


def _worker(horizon_us: float, times_us: list[int]) -> tuple[Worker, FakeTp, FakeTimer, list[int]]:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"rate": 100, "duration": "1s", "send_horizon_us": horizon_us},
        }
    )
    now = [0]
    task = WorkerTask(plan.to_json(), "r", 0, 0, 1, 0)
    import multiprocessing as mp

    w = Worker(task, None, mp.get_context("spawn").Event(), clock=lambda: now[0])  # type: ignore[arg-type]
    tp = FakeTp(now)
    timer = FakeTimer()
    w.tp = tp  # type: ignore[assignment]
    w._cap = 1 << 40
    w._spin_us_ns = 0
    w._horizon_ns = int(horizon_us * US)
    w._timer = timer  # type: ignore[assignment]
    w._finished = asyncio.get_running_loop().create_future()
    w._chunks = iter(())
    w._idx = list(range(len(times_us)))
    w._ts = [t * US for t in times_us]
    w._pidx = [0] * len(times_us)
    w._pos = 0
    return w, tp, timer, now


async def test_one_wake_up_sends_what_is_due_within_the_horizon() -> None:
    w, tp, timer, now = _worker(200, [1000, 1050, 1180, 1400, 3000])
    now[0] = 1000 * US  # the timer fired at the first arrival
    w._tick()
    # 1000, 1050 and 1180 µs go in this wake-up (1180 is within 200 µs of the last
    # send's clock), corked once; 1400 waits for its own wake-up
    assert [i for i, _, _ in tp.sends] == [0, 1, 2]
    assert tp.log == ["cork", "send", "send", "send", "uncork"]
    # each keeps its true send time: the early ones are stamped before their intended time
    assert [(t // US, s // US) for _, t, s in tp.sends] == [
        (1000, 1000),
        (1050, 1005),
        (1180, 1010),
    ]
    assert timer.armed == [1400 * US]
    now[0] = 1400 * US
    w._tick()
    assert [i for i, _, _ in tp.sends] == [0, 1, 2, 3]
    assert tp.log[-1] == "send"  # alone: no cork
    assert timer.armed[-1] == 3000 * US


async def test_no_horizon_is_one_arrival_per_wake_up() -> None:
    w, tp, timer, now = _worker(0, [1000, 1050, 1180])
    now[0] = 1000 * US
    w._tick()
    assert [i for i, _, _ in tp.sends] == [0] and "cork" not in tp.log
    assert timer.armed == [1050 * US]


async def test_nothing_goes_early_before_the_start() -> None:
    w, tp, timer, now = _worker(500, [0, 100, 900])
    now[0] = -50 * US  # the worker looks 50 µs before the start instant
    w._tick()
    assert tp.sends == [] and timer.armed == [0]


def test_the_horizon_is_bounded_by_what_the_coordinator_accepts() -> None:
    doc: dict[str, Any] = {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 1}}
    assert plan_from_dict(doc).load.send_horizon_us == 200.0
    doc["load"]["send_horizon_us"] = 1500
    with pytest.raises(PlanError, match=r"load\.send_horizon_us: must be between 0 and 1000"):
        plan_from_dict(doc)
