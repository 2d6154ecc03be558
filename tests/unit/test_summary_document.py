"""summary.json against its description (coordinator/documents.py): a summary built from
a real Aggregator run of synthetic records has every described key, with the described
Python type, and no key the description lacks."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from coordinator.affinity import plan_affinity
from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.documents import Summary, SummaryError, load_summary
from coordinator.recovery import add_schedule_counts, count_schedule, find_outages
from coordinator.run import add_input_pool
from coordinator.run.start import start_block
from coordinator.slo import goodput_limits
from coordinator.stats.documents import ServerSummary
from coordinator.summary import AgentInfo, build_summary
from volley import inputs as vin
from volley import records as rc
from volley.conns import ConnFigures
from volley.plan import AgentSpec, Plan, plan_from_dict
from volley.records import RecordBlock, RecordBuffer
from volley.request import build_plan_pool

SHAPES = ["8x8x3", "16x16x3"]
#: Keys this test's writers do not produce: written by coordinator.run (failure
#: detection, recovery hint) and `volley collect`; mypy checks those literals. And
#: RequestCounts is shared: schedule_total is set on the top-level `requests` only.
NOT_EXERCISED = {
    "summary.sequences",  # tests/unit/test_sequence.py: its own summary, checked here
    "summary.warmup_requests.schedule_total",
    "summary.models[].requests.schedule_total",
    "summary.partial_agents",
    "summary.recovery",
    "summary.recovered",
    "summary.agents[].last_seen_s",
    "summary.agents[].lost_detected_s",
    "summary.agents[].silences",
    # set by the run (--duration auto) and when a warm-up is found (test_steady_state.py)
    "summary.auto_stop",
    "summary.steady_state",
    # an agent that started late (tests/unit/test_startup_verdict.py)
    "summary.agents[].startup",
    # the server block's optional figures (batch stats, instances, utilization) are
    # written by coordinator/stats (tests/unit/test_server_stats.py); its required keys
    # are still checked here
    "summary.server.",
    "summary.models[].server.",
}


def conform(value: object, tp: Any, path: str, seen: set[str]) -> list[str]:
    """Where `value` differs from annotation `tp` (empty: it conforms); adds the key
    paths it visited to `seen`."""
    if tp is Any:
        return []
    origin, args = get_origin(tp), get_args(tp)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a dict"]
        hints = get_type_hints(tp)
        errors = [f"{path}.{k}: not described in {tp.__name__}" for k in value if k not in hints]
        for key, sub in hints.items():
            p = f"{path}.{key}"
            if key in value:
                seen.add(re.sub(r"\[\d+\]", "[]", p))
                errors += conform(value[key], sub, p, seen)
            elif key in tp.__required_keys__:
                errors.append(f"{p}: missing")
        return errors
    if origin in (Union, types.UnionType):
        tried = []
        for alt in args:
            scratch: set[str] = set()
            errs = conform(value, alt, path, scratch)
            if not errs:
                seen |= scratch
                return []
            tried += errs
        return [f"{path}: {value!r} matches no member of {tp}: {tried}"]
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [e for i, v in enumerate(value) for e in conform(v, args[0], f"{path}[{i}]", seen)]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a dict"]
        return [
            e
            for k, v in value.items()
            for e in conform(k, args[0], f"{path} key", seen)
            + conform(v, args[1], f"{path}[{k!r}]", seen)
        ]
    if tp is type(None):
        return [] if value is None else [f"{path}: {value!r}, not None"]
    if tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:  # an int is a float to the type checker too
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{path}: the test does not know annotation {tp!r}")
    return [] if ok else [f"{path}: {value!r} is a {type(value).__name__}, not {tp.__name__}"]


def schema_paths(tp: Any, path: str) -> set[str]:
    """Every key path the description names (list items as `[]`)."""
    if is_typeddict(tp):
        out = set()
        for key, sub in get_type_hints(tp).items():
            out |= {f"{path}.{key}"} | schema_paths(sub, f"{path}.{key}")
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return schema_paths(args[0], f"{path}[]")
    if origin is dict:
        return schema_paths(args[1], f"{path}{{}}")
    if origin in (Union, types.UnionType):
        return set().union(*(schema_paths(a, path) for a in args))
    return set()


def _plan() -> Plan:
    return plan_from_dict(
        {
            "target": "127.0.0.1:1",
            "model": "m",
            "models": [{"name": "m", "weight": 3}, {"name": "n", "version": "2"}],
            "seed": 7,
            "load": {"rate": 100, "duration": "4s", "warmup": "1s"},
            "slos": ["p99<50ms", "service.p50<1s", "errors<1%", "throughput>=0.9*offered"],
        }
    )


def _block(agent: int, n: int) -> RecordBlock:
    """n arrivals 10 ms apart: two shapes, two models, three request sizes; agent 0 has
    an outage (1.0-2.0 s) and dropped arrivals, agent 1 sends 10% of its requests late
    and streams (three responses each)."""
    buf = RecordBuffer(n)
    for i in range(n):
        t = i * 10_000_000
        status, sent = rc.OK, t + 50_000
        if agent == 0 and 100 <= i < 200:
            status = rc.UNAVAILABLE
        elif agent == 0 and i % 50 == 7:
            status, sent = rc.DROPPED, -1
        elif agent == 1 and i % 10 == 3:
            sent = t + 2_000_000
        done = -1 if sent < 0 else sent + 1_000_000 + 5_000 * (i % 20)
        if agent == 1:  # streamed: three responses, 0.3 ms apart, before done
            buf.note_stream(sent + 200_000, sent + 800_000, 3, 3, [300_000, 300_000])
        buf.append(i, t, sent, done, status, (64, 200, 900)[i % 3], 32, 1, i % 2, i % 2)
    block = buf.take(SHAPES)
    assert block is not None
    return block


def _summary() -> Summary:
    plan = _plan()
    agg = Aggregator(2, warmup_ns=1_000_000_000, good=goodput_limits(plan.slos))
    for a in range(2):
        agg.ingest(a, _block(a, 400))
    infos = [
        AgentInfo(
            index=0,
            address="127.0.0.1:7001",
            id="a0",
            host="h0",
            workers=2,
            clock=ClockEstimate(120_000, uncertainty_ns=30_000, rtt_ns=60_000, samples=16),
            state="done",
            cpu_seconds=0.8,
            cpu_percent_peak=40.0,
        ),
        AgentInfo(index=1, address="127.0.0.1:7002", workers=1, state="missing", error="gone"),
    ]
    server: ServerSummary = {
        "available": True,
        "source": "triton 2.51.0",
        "model": "m",
        "queue_ms": 0.2,
        "compute_input_ms": 0.01,
        "compute_infer_ms": 1.1,
        "compute_output_ms": 0.01,
        "notes": [],
        "models": [
            {
                "name": "m",
                "version": "",
                "requests": 500,
                "failed": 0,
                "queue_ms": 0.2,
                "compute_input_ms": 0.01,
                "compute_infer_ms": 1.1,
                "compute_output_ms": 0.01,
                "request_ms": 1.4,
            }
        ],
    }
    infos[0].prepare_s, infos[0].start_margin_ms = 1.5, 40.0
    infos[0].conns = ConnFigures(wanted=4, held=3)  # connections: agents[] and the run's
    infos[0].conns.connected(400_000)
    summary = build_summary(plan, "r1", agg, infos, 3.0, 900, server=server)
    summary["start"] = start_block(infos, 45_000_000, summary)
    summary["affinity"] = plan_affinity([0, 1, 2], 1, 2).doc()
    two = plan.with_agents([AgentSpec("127.0.0.1:7001", 2), AgentSpec("127.0.0.1:7002", 1)])
    add_schedule_counts(summary, count_schedule(two))
    summary["outages"] = find_outages(agg)
    image = [("IMAGE", "UINT8", (-1, -1, 3))]
    pooled = vin.resolve_specs(
        plan_from_dict(
            {
                "target": "127.0.0.1:1",
                "model": "m",
                "load": {"rate": 10},
                "inputs": [{"name": "IMAGE", "shapes": SHAPES}],
            }
        ),
        image,
        0,
        "m",
    )
    add_input_pool(summary, build_plan_pool(pooled).describe(), infos)
    return summary


def test_summary_matches_its_description(tmp_path: Path) -> None:
    summary = _summary()
    seen: set[str] = set()
    assert conform(summary, Summary, "summary", seen) == []
    # every list the description types holds items here, and the optional keys were set
    missed = schema_paths(Summary, "summary") - seen
    assert {p for p in missed if not any(p.startswith(x) for x in NOT_EXERCISED)} == set()
    # written and read back (the one loader), it still conforms
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
    loaded = load_summary(tmp_path / "summary.json")
    assert loaded == summary
    assert conform(loaded, Summary, "summary", set()) == []


def test_drift_is_caught() -> None:
    summary: Any = _summary()
    del summary["latency_ms"]["p999"]
    summary["agents"][0]["workers"] = "2"
    summary["verdict"]["slo"][0]["passed"] = 1
    summary["surprise"] = 1
    errors = conform(summary, Summary, "summary", set())
    assert "summary.latency_ms.p999: missing" in errors
    assert any(e.startswith("summary.agents[0].workers: '2'") for e in errors)
    assert any(e.startswith("summary.verdict.slo[0].passed: 1") for e in errors)
    assert "summary.surprise: not described in Summary" in errors
    assert len(errors) == 4


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "is not a volley summary"),
        ('{"name": "x"}', "is not a volley summary"),
        ('{"requests": {}, "agents": {}}', "agents holds an object, not an array"),
        ('{"requests": {"sent": "x"}}', "requests.sent holds 'x', not an integer"),
        ('{"requests": {}}', "requests.scheduled is missing"),
    ],
)
def test_load_summary_refuses_malformed_files(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(SummaryError, match=re.escape(why)):
        load_summary(path)
    with pytest.raises(SummaryError, match="No such file"):
        load_summary(tmp_path / "absent.json")
