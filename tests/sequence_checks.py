"""What a sequence run must show, checked from its run directory (shared by the local and
the namespaced-hosts tests)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from volley import records as rc


def raw_columns(run_dir: Path) -> dict[str, npt.NDArray[Any]]:
    t = pq.read_table(run_dir / "requests.parquet")
    return {k: t.column(k).to_numpy() for k in t.column_names}


def check_sequence_run(run_dir: Path, summary: dict[str, Any], agents: int) -> dict[str, Any]:
    """Every sequence on one agent and worker, from that agent's planned range; its steps
    0..k sent in order, each after the previous response; every started sequence ended
    (its last step or volley's END answered); no wrong state. Returns the block."""
    q = summary["sequences"]
    assert q["mismatches"] == 0, q
    assert q["started"] > 0 and q["unfinished"] == 0, q
    assert q["started"] == q["completed"] + q["failed"] + q["cut"], q
    assert q["ended"] == q["started"], q
    c = raw_columns(run_dir)
    ranges = [tuple(a["range"]) for a in q["agents"]]
    assert len(ranges) == agents
    for (lo1, hi1), (lo2, _hi2) in itertools.pairwise(ranges):
        assert lo1 < hi1 <= lo2  # disjoint, in order
    flags = c["seq_flags"]
    extra = (flags & (rc.SEQ_CLEANUP | rc.SEQ_CUT)) != 0
    sent = c["status"] != rc.SEQ_NO_SLOT
    ids_by_agent: list[set[int]] = [set() for _ in range(agents)]
    # each ID's records in send order: a start (step 0), steps 1, 2, ... each sent after
    # the previous response, maybe volley's END; then the ID may start another sequence
    order = np.lexsort((c["sent_ns"], c["seq_id"], c["worker"], c["agent"]))
    a, w, sid = c["agent"][order], c["worker"][order], c["seq_id"][order]
    step, sent_ns, done_ns = c["seq_step"][order], c["sent_ns"][order], c["done_ns"][order]
    fl, ex, ok_sent = flags[order], extra[order], sent[order]
    starts = 0
    prev: tuple[int, int, int] | None = None
    expect, prev_done = 0, -1
    for i in range(order.size):
        if not ok_sent[i]:
            continue
        key = (int(a[i]), int(w[i]), int(sid[i]))
        lo, hi = ranges[key[0]]
        assert lo <= key[2] < hi, (key, ranges)
        ids_by_agent[key[0]].add(key[2])
        if fl[i] & rc.SEQ_FIRST:
            starts += 1
            assert step[i] == 0
            expect = 1
        else:
            assert key == prev, key
            assert int(sent_ns[i]) >= prev_done, (key, int(step[i]))
            if not ex[i]:
                assert int(step[i]) == expect, (key, int(step[i]), expect)
                expect += 1
        prev_done = int(done_ns[i])
        prev = key
    assert starts == q["started"]
    for x in range(agents):
        for y in range(x + 1, agents):
            assert not ids_by_agent[x] & ids_by_agent[y]
    # a started sequence's records: steps 0..k, then maybe one END of volley's
    assert int(ex.sum()) == q["failed"] + q["cut"]
    return dict(q)
