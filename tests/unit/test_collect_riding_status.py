"""`volley collect` reads a status that rode on a timing batch (TimingBatch.agent_status)
as the live run does: a fast run's statuses travel there, not as their own events."""

from __future__ import annotations

from coordinator.collect.spools import _SpoolParser
from volley.records import RecordBuffer
from volley.v1 import control_pb2 as pb


def test_the_last_status_is_the_one_that_rode_on_the_last_batch() -> None:
    p = _SpoolParser("r1", "127.0.0.1:1", None, None)
    p.feed(pb.RunEvent(started=pb.Started(run_id="r1", agent_index=0, workers=1)))
    p.feed(pb.RunEvent(status=pb.AgentStatus(state="running", cpu_seconds=1.0, retried=1)))
    buf = RecordBuffer(4)
    buf.append(0, 0, 10, 20, 0, 100, 100, 1, 0, 0)
    block = buf.take(["1"])
    assert block is not None
    batch = block.to_proto()
    batch.agent_status.CopyFrom(pb.AgentStatus(state="running", cpu_seconds=9.0, retried=7))
    p.feed(pb.RunEvent(timings=batch))
    (sp,) = p.out
    assert sp.records == 1
    assert sp.last_status is not None
    assert (sp.last_status.cpu_seconds, sp.last_status.retried) == (9.0, 7)
