"""The worker's hot path (issue 19): the split of agent/worker.py keeps every name where it
was; response bodies seen before are checked without parsing again; an arrival due within
the send horizon rides on a completion's wake-up; a quiet closed loop sees a stop at once."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

from hpack import Encoder
from tritonclient.grpc import service_pb2

import agent.worker as worker
import agent.worker_messages as messages
import agent.worker_upkeep as upkeep
from agent.transports.grpc_unary import SEEN_MAX, SEEN_MAX_BYTES, GrpcUnary, OutputCounts, UnaryConn
from agent.worker import Worker, WorkerTask
from tests.unit.test_h2_frames import END, RESPONSE, FakeTransport
from tests.unit.test_send_horizon import US, FakeTp, _worker
from volley import records as rc
from volley.plan import plan_from_dict
from volley.target import TargetAccess
from volley.wire import h2
from volley.wire.grpc import grpc_frame
from volley.wire.payloads import build_payloads


def test_every_moved_name_is_still_importable_from_agent_worker() -> None:
    moved = {
        messages: [
            "WorkerTask",
            "WorkerCounters",
            "Ready",
            "StartGate",
            "Records",
            "Status",
            "Done",
            "Exited",
            "WorkerMessage",
        ],
        upkeep: ["IDLE_STATUS_S", "HELD_UPKEEP_S", "sweep_delay", "pin_from_env"],
    }
    for mod, names in moved.items():
        for name in names:
            assert getattr(worker, name) is getattr(mod, name), name
        # and nothing else of theirs was left behind unexported
        defined = [
            n
            for n, o in vars(mod).items()
            if getattr(o, "__module__", None) == mod.__name__ and not n.startswith("_")
        ]
        assert set(defined) <= set(names) | {"WorkerUpkeep"}, defined
    assert issubclass(worker.Worker, upkeep.WorkerUpkeep)
    # messages pickled between processes name their new home
    assert worker.Records.__module__ == "agent.worker_messages"


# ---- responses seen before ------------------------------------------------------------
def _response(*outputs: str) -> bytes:
    return service_pb2.ModelInferResponse(
        outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name=n) for n in outputs]
    ).SerializeToString()


def test_output_counts_parse_each_distinct_body_once_and_stay_bounded() -> None:
    counts = OutputCounts()
    one, two = _response("Y"), _response("Y", "Z")
    assert [counts.outputs(b) for b in (one, two, one, two, one)] == [1, 2, 1, 2, 1]
    assert counts.parsed == 2
    assert counts.outputs(b"\xff\xff not protobuf") == -1  # a bad body stays bad
    assert counts.outputs(b"\xff\xff not protobuf") == -1 and counts.parsed == 3
    big = _response("Y" * (SEEN_MAX_BYTES + 10))
    assert counts.outputs(big) == 1 and counts.outputs(big) == 1
    assert counts.parsed == 5 and big not in counts.seen  # too long to keep
    for i in range(SEEN_MAX + 5):
        counts.outputs(_response(f"o{i}"))
    assert len(counts.seen) <= SEEN_MAX


def _unary() -> tuple[GrpcUnary, UnaryConn, FakeTransport, list[tuple[int, ...]]]:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"rate": 10, "duration": "1s"},
            "outputs": ["Y"],  # every good response carries it
        }
    )
    done: list[tuple[int, ...]] = []
    payloads = build_payloads(plan)
    tp = GrpcUnary(plan, payloads, lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess())
    t = FakeTransport()
    conn: UnaryConn = h2.Connection(tp)
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(h2.frame(h2.SETTINGS, 0, 0))
    conn.slot = 0
    tp.conns[0] = conn
    t.take()
    return tp, conn, t, done


async def test_every_response_is_still_checked_when_its_body_was_seen_before() -> None:
    tp, conn, _t, done = _unary()
    enc = Encoder()
    good, empty = _response("Y"), _response()
    bodies = [good, good, empty, good, b"\x0a\xff", empty]
    for key in range(len(bodies)):
        tp.send(key, 0, 0)
    for i, body in enumerate(bodies):
        sid = 1 + 2 * i
        conn.data_received(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, enc.encode(RESPONSE))
            + h2.frame(h2.DATA, 0, sid, grpc_frame(body, "none"))
            + h2.frame(h2.HEADERS, END, sid, enc.encode([("grpc-status", "0")]))
        )
    ok, bad = rc.OK, rc.BAD_RESPONSE
    assert [(d[0], d[4]) for d in done] == [(0, ok), (1, ok), (2, bad), (3, ok), (4, bad), (5, bad)]
    assert tp.counts.parsed == 3  # good, empty and the garbage: once each


# ---- an arrival rides on a completion's wake-up ----------------------------------------
class ArmedTimer:
    """The timerfd as `_tick` and `_ride_along` see it: `armed` until it fires."""

    def __init__(self) -> None:
        self.armed = False
        self.at: list[int] = []

    def arm_at(self, deadline_ns: int) -> None:
        self.armed = True
        self.at.append(deadline_ns)


def _riding(horizon_us: float, times_us: list[int]) -> tuple[Worker, FakeTp, ArmedTimer, list[int]]:
    w, tp, _, now = _worker(horizon_us, times_us)
    timer = ArmedTimer()
    w._timer = timer  # type: ignore[assignment]
    w._ride = horizon_us > 0
    w.payloads = build_payloads(w.plan)
    w.wires = w.payloads.wires
    return w, tp, timer, now


async def test_an_arrival_due_within_the_horizon_goes_in_a_completions_wake_up() -> None:
    w, tp, timer, now = _riding(200, [1000, 2000, 2040, 2400, 5000])
    now[0] = 1000 * US
    w._tick()
    assert [i for i, _, _ in tp.sends] == [0] and timer.at == [2000 * US]
    # a response at 1700 µs: 2000 is 300 µs away, beyond the horizon: it waits
    now[0] = 1700 * US
    w._complete(0, 1000 * US, 1000 * US, now[0], rc.OK, 0, 10)
    assert len(tp.sends) == 1 and timer.at == [2000 * US]
    # a response at 1850 µs: 2000 (and 2040, within the horizon of the send's clock) go now,
    # stamped with their true send time; the timer moves to 2400
    now[0] = 1850 * US
    w._complete(0, 1000 * US, 1000 * US, now[0], rc.OK, 0, 10)
    assert [(i, t // US, s // US) for i, t, s in tp.sends[1:]] == [(1, 2000, 1850), (2, 2040, 1855)]
    assert timer.at[-1] == 2400 * US and w._pos == 3
    # inside the timer's own tick (not armed) a completion sends nothing by itself
    timer.armed = False
    now[0] = 2300 * US
    w._complete(0, 1000 * US, 1000 * US, now[0], rc.OK, 0, 10)
    assert len(tp.sends) == 3


async def test_no_horizon_no_ride() -> None:
    w, tp, timer, now = _riding(0, [1000, 1010])
    now[0] = 1000 * US
    w._tick()
    now[0] = 1005 * US
    w._complete(0, 1000 * US, 1000 * US, now[0], rc.OK, 0, 10)
    assert [i for i, _, _ in tp.sends] == [0] and timer.at == [1010 * US]


# ---- a quiet closed loop sees a stop at once -------------------------------------------
async def test_a_quiet_closed_loop_sees_an_early_stop_within_its_level_check() -> None:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"mode": "closed", "concurrency": 2, "duration": "60s"},
        }
    )
    stop = mp.get_context("spawn").Event()
    w = Worker(WorkerTask(plan.to_json(), "r", 0, 0, 1, time.monotonic_ns()), None, stop)  # type: ignore[arg-type]
    clock = [0]
    tp = FakeTp(clock)  # its requests never complete: the worker is quiet
    w.tp = tp  # type: ignore[assignment]
    w.payloads = build_payloads(w.plan)
    w.wires = w.payloads.wires
    w.quiet = True  # the ticker (not running here) would look at the stop a second later
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, stop.set)
    t0 = time.monotonic()
    await asyncio.wait_for(w._closed_loop(), 5)
    assert w.stopping and time.monotonic() - t0 < 0.9
    assert len(tp.sends) == 2  # its two users went, then nothing more
