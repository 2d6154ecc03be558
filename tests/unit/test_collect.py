"""`volley collect` pieces: duplicate records count once, outages, one-line errors; the
rebuilt figures (measured period from the records, the schedule's counts, no-record
counts) and local agents' spool files read from the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import uvloop
import yaml
from typer.testing import CliRunner

from coordinator.aggregate import Aggregator
from coordinator.collect import _dedupe, collect_run
from coordinator.local import SPOOL_FOLDER, local_spool_dir
from coordinator.recovery import (
    add_schedule_counts,
    count_schedule,
    find_outages,
    recovered_measured_s,
    write_manifest,
)
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.arrivals import global_schedule
from volley.cli import app
from volley.plan import plan_from_dict
from volley.records import RecordBuffer, concat
from volley.v1 import control_pb2 as pb


def _block(indices: list[int], status: int = 0, worker: int = 0) -> object:
    buf = RecordBuffer(max(len(indices), 1))
    buf.worker = worker
    for i in indices:
        t = i * 10_000_000
        buf.append(i, t, t + 1000, t + 2_000_000, status, 10, 10, 1, 0)
    return buf.take(["1"])


def test_same_record_from_run_dir_and_spool_counts_once() -> None:
    a, b = _block([0, 1, 2, 3]), _block([2, 3, 4, 5])
    merged = _dedupe(concat([a, b]))  # type: ignore[list-item]
    assert sorted(merged.columns["index"].tolist()) == [0, 1, 2, 3, 4, 5]
    # closed loop: index -1 for all, told apart by worker and clocks
    c = _block([7, 8], worker=1)
    c.columns["index"][:] = -1  # type: ignore[attr-defined]
    d = _block([8, 9], worker=1)
    d.columns["index"][:] = -1  # type: ignore[attr-defined]
    assert len(_dedupe(concat([c, d]))) == 3  # type: ignore[list-item]


def test_outages_from_windows() -> None:
    agg = Aggregator(1, 0)
    ok = _block(list(range(0, 100)))  # windows 0 (intended 0..0.99 s)
    down = _block(list(range(100, 250)), status=rc.UNAVAILABLE)  # 1.0..2.49 s
    back = _block(list(range(250, 400)))
    for b in (ok, down, back):
        agg.ingest(0, b)  # type: ignore[arg-type]
    out = find_outages(agg)
    assert len(out) == 1
    assert out[0]["start_s"] == 1.0 and out[0]["end_s"] == 3.0
    assert out[0]["error_codes"] == {"UNAVAILABLE": 150}
    assert np.isclose(out[0]["errors"] / out[0]["records"], 150 / 200)


def test_collect_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["collect", str(tmp_path)])
    assert res.exit_code == 2 and "no run.json" in res.output
    (tmp_path / "run.json").write_text("{not json")
    res = runner.invoke(app, ["collect", str(tmp_path)])
    assert res.exit_code == 2 and "run.json" in res.output
    manifest = {
        "run_id": "abc123",
        "span_s": 2,
        "scheduled_total": 10,
        "agents": [{"index": 0, "address": "127.0.0.1:1", "id": "x", "workers": 1}],
    }
    (tmp_path / "run.json").write_text(json.dumps(manifest))
    (tmp_path / "plan.yaml").write_text("target: 127.0.0.1:8001\nmodel: add\nload: {rate: 5}\n")
    res = runner.invoke(app, ["collect", str(tmp_path), "--agent", "nonsense"])
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    res = runner.invoke(app, ["collect", str(tmp_path)], env={"VOLLEY_TOKEN": ""})
    assert res.exit_code == 2 and "127.0.0.1:1" in res.output
    for r in (res,):
        assert r.output.strip().count("\n") == 0, r.output
        assert "Traceback" not in r.output


# ---------------------------------------------------------------- the rebuilt figures
RATE, DURATION_S, WARMUP_S = 100.0, 4.0, 1.0


def _plan_doc() -> dict[str, Any]:
    return {
        "target": "127.0.0.1:1",
        "model": "add",
        "seed": 3,
        "load": {"rate": RATE, "duration": f"{DURATION_S}s", "warmup": f"{WARMUP_S}s"},
        "agents": [{"address": "127.0.0.1:7001"}, {"address": "127.0.0.1:7002"}],
    }


def test_schedule_counts_per_period_and_agent() -> None:
    plan = plan_from_dict(_plan_doc())
    c = count_schedule(plan, after_index=299)
    assert c is not None
    assert (c.total, c.warmup, c.measured) == (400, 100, 300)  # constant: t_i = i / 100
    assert c.agent_measured == [150, 150] and c.agent_warmup == [50, 50]
    assert c.model_measured == [300]
    assert c.next_ns == 3_000_000_000  # arrival 300
    assert count_schedule(plan, after_index=399).next_ns is None  # type: ignore[union-attr]
    closed = plan_from_dict(
        {**_plan_doc(), "load": {"mode": "closed", "concurrency": 2, "duration": "2s"}}
    )
    assert count_schedule(closed) is None


def test_recovered_measured_period() -> None:
    plan = plan_from_dict(_plan_doc())
    # records stop after arrival 249 (t = 2.49 s): the period ends where arrival 250 was due
    assert recovered_measured_s(plan, 249, 2_500_000_000, 2_495_000_000, False) == 1.5
    # records reach the end of the schedule: the planned measured period, as a normal run
    assert recovered_measured_s(plan, 399, None, 3_995_000_000, False) == DURATION_S - WARMUP_S
    assert recovered_measured_s(plan, None, None, None, False) == 0.0
    closed = plan_from_dict(
        {**_plan_doc(), "load": {"mode": "closed", "concurrency": 2, "duration": "4s"}}
    )
    assert recovered_measured_s(closed, None, None, 2_750_000_000, False) == 2.75
    assert recovered_measured_s(closed, None, None, 2_750_000_000, True) == 4.0


def _spool_run(
    tmp_path: Path,
    cut: list[int],
    finished: bool = False,
    extra: dict[int, list[pb.RunEvent]] | None = None,
) -> Path:
    """A run directory as a SIGKILLed coordinator leaves it, with two local agents' spool
    files inside it: agent k has the arrivals of its slice below cut[k] (then the events
    extra[k])."""
    from agent.spool import SpoolWriter
    from volley.schedule import worker_slice

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plan = plan_from_dict(_plan_doc())
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(_plan_doc()))
    spools = {a.address: local_spool_dir(run_dir, i) for i, a in enumerate(plan.agents)}
    infos = [
        AgentInfo(index=i, address=a.address, id=f"local-{i}", workers=1)
        for i, a in enumerate(plan.agents)
    ]
    write_manifest(run_dir, "r1", infos, 0, DURATION_S, 400, spools)
    (run_dir / "requests.parquet").write_bytes(b"PAR1 truncated")  # what the kill left
    for k, info in enumerate(infos):
        w = SpoolWriter(local_spool_dir(run_dir, k), "r1", k, {"run_id": "r1"})
        w.write(pb.RunEvent(started=pb.Started(run_id="r1", agent_index=k, agent_id=info.id)))
        idx, t = worker_slice(*global_schedule(plan).all(), plan.agent_weights, k, [1], 0)
        buf = RecordBuffer(len(idx))
        for i, ti in zip(idx.tolist(), t.tolist(), strict=True):
            if i < cut[k]:
                status = rc.UNAVAILABLE if i % 10 == 0 else rc.OK
                buf.append(i, ti, ti + 10_000, ti + 2_000_000, status, 10, 10, 1, 0)
        block = buf.take(["1"])
        assert block is not None
        w.write(pb.RunEvent(timings=block.to_proto()))
        for ev in (extra or {}).get(k, []):
            w.write(ev)
        if finished:
            w.write(pb.RunEvent(finished=pb.Finished(run_id="r1", ok=True)))
        w.close()
    return run_dir


def test_collect_reads_local_spools_and_keeps_the_truth(tmp_path: Path) -> None:
    """`volley collect RUN_DIR` alone, the local agents gone: their spool files are read
    from the run directory; rates come from the recorded span, scheduled from the plan."""
    run_dir = _spool_run(tmp_path, cut=[300, 300])  # both stopped at 3.0 s of 4 s
    res = CliRunner().invoke(app, ["collect", str(run_dir)], env={"VOLLEY_TOKEN": ""})
    assert res.exit_code == 0, res.output
    s = json.loads((run_dir / "summary.json").read_text())
    req = s["requests"]
    # measured 1.0 s .. 3.0 s (arrival 300 was due at 3.0 s), not the planned 3 s
    assert s["duration_s"] == 2.0 and s["recovered"]["planned_duration_s"] == 3.0
    assert s["offered_rps"] == pytest.approx(RATE)  # 200 records / 2 s; old code: 66.7
    assert s["throughput_rps"] == pytest.approx(0.9 * RATE)
    # the schedule's counts, the records, and what has none
    assert req["schedule_total"] == 400 and req["scheduled"] == 300
    assert req["recorded"] == 200 and req["no_record"] == 100
    assert s["warmup_requests"]["scheduled"] == s["warmup_requests"]["recorded"] == 100
    assert s["warmup_requests"]["no_record"] == 0
    for a in s["agents"]:
        assert (a["scheduled"], a["recorded"], a["no_record"]) == (150, 100, 50)
        assert a["state"] == "missing"
    assert req["error_codes"] == {"UNAVAILABLE": 20}
    assert [a["source"] for a in s["recovered"]["agents"]] == [
        str(local_spool_dir(run_dir, k)) for k in range(2)
    ]
    assert (run_dir / "requests.parquet.broken").is_file()
    assert pq.read_table(run_dir / "requests.parquet").num_rows == 300
    # the spool files were dropped, and their folders
    assert not (run_dir / SPOOL_FOLDER).exists()
    assert "300 after" in res.output and "100 with no record" in res.output
    # the run directory is whole again: histograms and the report too
    assert (run_dir / "histograms.json").is_file() and (run_dir / "report.html").is_file()


def test_collect_of_a_complete_run_uses_the_planned_period(tmp_path: Path) -> None:
    run_dir = _spool_run(tmp_path, cut=[400, 400], finished=True)
    report = uvloop.run(collect_run(run_dir, keep=True))
    assert report.records_after == 400
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["duration_s"] == DURATION_S - WARMUP_S and s["offered_rps"] == pytest.approx(RATE)
    assert s["requests"]["no_record"] == 0 and all(a["state"] == "done" for a in s["agents"])
    assert (local_spool_dir(run_dir, 0) / "r1" / "slot-0.bin").is_file()  # kept


def test_normal_run_counts_the_schedule(tmp_path: Path) -> None:
    """A normal run's summary too: requests.scheduled is the schedule's count, and an
    agent lost mid-run leaves its unrecorded arrivals counted as no_record."""
    plan = plan_from_dict(_plan_doc())
    agg = Aggregator(2, int(WARMUP_S * 1e9))
    idx, t = global_schedule(plan).all()
    for k in range(2):
        buf = RecordBuffer(len(idx))
        for i, ti in zip(idx.tolist(), t.tolist(), strict=True):
            if i % 2 == k and (k == 0 or i < 250):  # agent 1 lost after 2.5 s
                buf.append(i, ti, ti + 10_000, ti + 2_000_000, rc.OK, 10, 10, 1, 0)
        block = buf.take(["1"])
        assert block is not None
        agg.ingest(k, block)
    infos = [AgentInfo(index=k, address=a.address) for k, a in enumerate(plan.agents)]
    infos[1].state = "missing"
    s = build_summary(plan, "r", agg, infos, DURATION_S - WARMUP_S, 400)
    add_schedule_counts(s, count_schedule(plan))
    assert s["requests"]["scheduled"] == 300 and s["requests"]["recorded"] == 225
    assert s["requests"]["no_record"] == 75 == s["agents"][1]["no_record"]
    assert s["agents"][0]["no_record"] == 0
    assert any("75 of 400 scheduled requests have no record" in r for r in s["verdict"]["reasons"])


# ---------------------------------------------------------------- recovered records vetted
def _rogue_batch() -> tuple[pb.RunEvent, dict[str, int]]:
    """Agent 0's bad records, one kind each (its slice: the even indices), and the
    faults they should be counted under."""
    buf = RecordBuffer(16)
    ms = 1_000_000
    buf.append(2, 20 * ms, 20 * ms + 10, 22 * ms, rc.OK, 10, 10, 1, 0)  # dup of a good one
    buf.append(4, 40 * ms, 40 * ms + 10, 42 * ms, rc.OK, 10, 10, 1, 0)  # dup again
    buf.append(3, 30 * ms, 30 * ms + 10, 32 * ms, rc.OK, 10, 10, 1, 0)  # agent 1's index
    buf.append(10**9, 30 * ms, 30 * ms + 10, 32 * ms, rc.OK, 10, 10, 1, 0)  # past the schedule
    buf.append(6, 60 * ms, 60 * ms + 10, 62 * ms, 999, 10, 10, 1, 0)  # unknown code
    buf.append(8, 80 * ms, 80 * ms + 10, 70 * ms, rc.OK, 10, 10, 1, 0)  # done before sent
    buf.append(12, -5, 10, 20, rc.OK, 10, 10, 1, 0)  # intended before the start
    buf.append(14, 140 * ms, 140 * ms, 10**18, rc.OK, 10, 10, 1, 0)  # done past the horizon
    block = buf.take(["1"])
    assert block is not None
    want = {
        "duplicate index": 2,
        "index outside its slice": 2,
        "unknown status code": 1,
        "bad clock": 3,
    }
    return pb.RunEvent(timings=block.to_proto()), want


def test_collect_vets_spooled_records_as_a_live_run(tmp_path: Path) -> None:
    """A spool with bad and duplicated records (a rogue or broken agent 0): `collect`
    drops and counts them per agent as a live run's AgentCheck does, agent 1's figures
    stay exact, requests.parquet holds no invalid row, a record both in the run
    directory and in the spool counts once (not a duplicate)."""
    from coordinator.rundir import RequestWriter
    from volley.spool import read_events

    # agent 0's spool ends with a rogue part: bad records, a malformed batch, a heartbeat
    # with NaN CPU
    rogue, want = _rogue_batch()
    bad = [
        rogue,
        pb.RunEvent(timings=pb.TimingBatch(count=3, index=b"\x00" * 5)),
        pb.RunEvent(status=pb.AgentStatus(cpu_percent=float("nan"), cpu_seconds=1e300)),
    ]
    run_dir = _spool_run(tmp_path, cut=[300, 300], extra={0: bad})
    # the run directory kept agent 0's first batch whole (the coordinator wrote it before
    # it died): exact copies of spooled records
    events = list(read_events(local_spool_dir(run_dir, 0), "r1", 0))
    first = next(rc.RecordBlock.from_proto(e.timings) for e in events if e.HasField("timings"))
    (run_dir / "requests.parquet").unlink()
    w = RequestWriter(run_dir / "requests.parquet")
    w.write(0, first.select(first.col("index") < 100))
    w.close()
    res = CliRunner().invoke(app, ["collect", str(run_dir)], env={"VOLLEY_TOKEN": ""})
    assert res.exit_code == 0, res.output
    s = json.loads((run_dir / "summary.json").read_text())
    a0, a1 = s["agents"]
    assert a0["invalid_records"] == sum(want.values()) == 8
    assert a0["faults"] == {**want, "malformed batch": 1, "bad status message": 1}
    assert a0["cpu_seconds"] == 0.0  # the NaN heartbeat was not read
    assert (a0["recorded"], a0["no_record"]) == (100, 50)  # 50 copies counted once
    assert (a1["recorded"], a1["no_record"]) == (100, 50) and a1["invalid_records"] == 0
    assert a1["faults"] == {}
    assert s["requests"]["error_codes"] == {"UNAVAILABLE": 20}  # not STATUS_999
    assert any("agent local-0: 8 invalid records dropped" in w for w in s["verdict"]["warnings"])
    t = pq.read_table(run_dir / "requests.parquet")
    assert t.num_rows == 300
    idx = np.asarray(t.column("index"))[np.asarray(t.column("agent")) == 0]
    assert len(set(idx.tolist())) == idx.size == 150 and (idx % 2 == 0).all()
    assert "dropped 8 invalid records" in res.output and "duplicate index: 2" in res.output


def test_collect_without_raw_records_stores_what_it_dropped(tmp_path: Path) -> None:
    """A run without raw records (a summary, no requests.parquet): collect writes the
    spools to recovered.parquet and keeps the dropped counts in summary.json, in the
    agents' rows (as a rebuilt summary does) and in the recovered block."""
    from coordinator.rundir import write_json

    rogue, want = _rogue_batch()
    run_dir = _spool_run(tmp_path, cut=[300, 300], extra={0: [rogue]})
    (run_dir / "requests.parquet").unlink()
    plan = plan_from_dict(_plan_doc())
    infos = [
        AgentInfo(index=k, address=a.address, id=f"local-{k}", workers=1, state="missing")
        for k, a in enumerate(plan.agents)
    ]
    old = build_summary(plan, "r1", Aggregator(2, int(WARMUP_S * 1e9)), infos, 3.0, 400)
    write_json(run_dir / "summary.json", old)
    res = CliRunner().invoke(app, ["collect", str(run_dir)], env={"VOLLEY_TOKEN": ""})
    assert res.exit_code == 0, res.output
    assert "dropped 8 invalid records" in res.output
    s = json.loads((run_dir / "summary.json").read_text())
    a0, a1 = s["agents"]
    assert a0["invalid_records"] == 8 and a0["faults"] == want
    assert a1["invalid_records"] == 0 and a1["faults"] == {}
    assert s["recovered"]["invalid_records"] == 8 and s["recovered"]["records"] == 300
    assert pq.read_table(run_dir / "recovered.parquet").num_rows == 300
