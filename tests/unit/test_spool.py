"""The agent's spool: round trip, truncated tails, size cap, pruning, safe run ids."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from agent import spool
from volley.records import RecordBuffer
from volley.v1 import control_pb2 as pb


def _batch(n: int, start: int = 0) -> pb.RunEvent:
    buf = RecordBuffer(max(n, 1))
    for i in range(start, start + n):
        buf.append(i, i * 10, i * 10 + 1, i * 10 + 5, 0, 64, 32, 1, 0)
    block = buf.take(["1x4"])
    assert block is not None
    return pb.RunEvent(timings=block.to_proto())


def test_round_trip_and_truncated_tail(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, "run1", 2, {"run_id": "run1"})
    w.write(pb.RunEvent(started=pb.Started(run_id="run1", agent_index=2)))
    for k in range(5):
        w.write(_batch(100, k * 100))
    w.write(pb.RunEvent(finished=pb.Finished(run_id="run1", ok=True)))
    w.close()
    events = list(spool.read_events(tmp_path, "run1", 2))
    assert [e.WhichOneof("event") for e in events] == ["started"] + ["timings"] * 5 + ["finished"]
    assert events[0].started.agent_index == 2
    idx = np.concatenate([np.frombuffer(e.timings.index, "<i8") for e in events[1:6]])
    assert np.array_equal(idx, np.arange(500))
    # an agent killed mid-write leaves a partial event: readers keep what precedes it
    path = spool.slot_path(tmp_path, "run1", 2)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    assert [e.WhichOneof("event") for e in spool.read_events(tmp_path, "run1", 2)][-1] == "timings"
    path.write_bytes(data + b"\xff\xff\xff\x7f" + b"junk")  # a corrupt length
    assert len(list(spool.read_events(tmp_path, "run1", 2))) == 7


def test_size_cap_keeps_the_finish(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, "capped", 0, {}, max_bytes=20_000)
    for k in range(20):
        w.write(_batch(100, k * 100))
    w.write(pb.RunEvent(finished=pb.Finished(run_id="capped", ok=True)))
    w.close()
    kinds = [e.WhichOneof("event") for e in spool.read_events(tmp_path, "capped", 0)]
    assert kinds[-1] == "finished"
    assert "status" in kinds  # the note saying the spool filled up
    assert 0 < kinds.count("timings") < 20
    assert w.full


def test_unwritable_spool_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    w = spool.SpoolWriter(blocker, "r", 0, {})
    assert not w.ok and w.error
    w.write(_batch(3))
    w.close()


def test_run_ids_are_safe_folder_names(tmp_path: Path) -> None:
    for bad in ("", "..", "../x", "a/b", "-rf", ".hidden", "x" * 65, "a b", "ü"):
        assert not spool.valid_run_id(bad), bad
        with pytest.raises(ValueError):
            spool.run_path(tmp_path, bad)
    assert spool.valid_run_id("0a1b2c3d4e5f")
    assert not spool.exists(tmp_path, "../etc")


def test_prune_and_discard(tmp_path: Path) -> None:
    for i in range(5):
        w = spool.SpoolWriter(tmp_path, f"r{i}", 0, {})
        w.write(_batch(1))
        w.close()
        past = time.time() - 100 + i
        os.utime(spool.slot_path(tmp_path, f"r{i}", 0), (past, past))
    removed = spool.prune(tmp_path, keep=2, active="r0")
    assert removed == ["r1", "r2"]
    assert [r for _, r in spool.list_runs(tmp_path)] == ["r0", "r3", "r4"]
    assert spool.discard(tmp_path, "r3")
    assert not spool.discard(tmp_path, "r3")
    assert not spool.exists(tmp_path, "r3")


def test_agents_sharing_a_folder_keep_one_file_per_slot(tmp_path: Path) -> None:
    for slot in (0, 1):
        w = spool.SpoolWriter(tmp_path, "shared", slot, {})
        w.write(pb.RunEvent(started=pb.Started(run_id="shared", agent_index=slot)))
        w.write(_batch(10, slot * 10))
        w.close()
    assert spool.slots(tmp_path, "shared") == [0, 1]
    first = next(iter(spool.read_events(tmp_path, "shared", 1)))
    assert first.started.agent_index == 1
    assert spool.discard(tmp_path, "shared", 0)  # one agent's run is stored
    assert spool.slots(tmp_path, "shared") == [1]  # the other's spool stays
    assert spool.exists(tmp_path, "shared", 1) and not spool.exists(tmp_path, "shared", 0)
    assert spool.discard(tmp_path, "shared", 1)
    assert not (tmp_path / "shared").exists()
