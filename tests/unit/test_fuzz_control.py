"""Fuzzed control-plane messages: an agent answers garbage with a status code (never a
crash, never a load), and the coordinator's batch decoding refuses malformed batches
with a ValueError while anything it accepts aggregates without error."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, AgentLimits
from agent.server import AgentServer
from coordinator.aggregate import Aggregator
from coordinator.rundir import RequestWriter
from tests.agent_thread import agent_in_thread
from volley.records import COLUMNS, RecordBlock
from volley.v1 import control_pb2 as pb
from volley.version import PROTOCOL_VERSION

TOKEN = "fuzz-token-0123456789"
METHODS = {
    "Hello": False,
    "Ping": False,
    "Stop": False,
    "Run": True,
    "Collect": True,
}
#: What garbage may get back; anything else (UNKNOWN: an exception in our code) fails.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
}
PLAN = {
    "target": "127.0.0.1:8001",  # not on the fuzz agent's allowlist: never fired at
    "model": "add",
    "load": {"rate": 10, "duration": "1s"},
}


#: A plan as a coordinator sends it: resolved inputs (datatype, the model's dims).
RESOLVED: dict[str, Any] = {
    **PLAN,
    "max_batch_size": 8,
    "inputs": [
        {
            "name": "X",
            "datatype": "FP32",
            "shape": [1, 4],
            "source": "random",
            "model_dims": [-1, 4],
        }
    ],
}


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentServer, str]]:
    cfg = AgentConfig(
        listen="127.0.0.1:0",
        workers=1,
        agent_id="fuzz",
        limits=AgentLimits(allowed_targets=("127.0.0.1:1",), max_duration_s=1.0),
        spool_dir=str(tmp_path_factory.mktemp("spool")),
    )
    logging.getLogger("volley").setLevel(logging.ERROR)
    with agent_in_thread(cfg) as server:
        yield server, f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def channel(fuzz_agent: tuple[AgentServer, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_agent[1]) as ch:
        yield ch


def _call(ch: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    path = f"/volley.v1.AgentControl/{method}"
    try:
        if METHODS[method]:
            for _ in ch.unary_stream(path)(body, timeout=10):
                pass
        else:
            ch.unary_unary(path)(body, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(METHODS)), st.binary(max_size=512))
def test_random_bytes(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture, method: str, body: bytes
) -> None:
    assert _call(channel, method, body) in ALLOWED
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


ODD = st.one_of(
    st.sampled_from([10**400, -1, 2**64, 1.5, "4", None, [], "FP8", "BF16", "", "BYTES"]),
    st.integers(),
    st.text(max_size=8),
)


def _plan_json(data: st.DataObject) -> str:
    choice = data.draw(st.integers(0, 4))
    if choice == 4:  # a resolved plan (what coordinators send) with an odd input field
        doc = json.loads(json.dumps(RESOLVED))
        key = data.draw(st.sampled_from(["datatype", "shape", "model_dims", "value", "name"]))
        odd = data.draw(ODD)
        doc["inputs"][0][key] = data.draw(st.sampled_from([odd, [odd], [1, odd]]))
        return json.dumps(doc)
    if choice == 0:
        return data.draw(st.text(max_size=200))
    doc: dict[str, Any] = json.loads(json.dumps(PLAN))
    if choice == 1:
        doc["load"][data.draw(st.sampled_from(["rate", "duration", "mode", "arrival"]))] = (
            data.draw(st.one_of(st.integers(), st.text(max_size=5), st.floats(), st.none()))
        )
    elif choice == 2:
        doc["load"]["trace"] = {"times_ns": data.draw(st.lists(st.integers(), max_size=5))}
        doc["load"]["arrival"] = "trace"
    return json.dumps(doc)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_run_requests(
    channel: grpc.Channel,
    fuzz_agent: tuple[AgentServer, str],
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    req = pb.RunRequest(
        run_id=data.draw(st.text(max_size=70)),
        plan_json=_plan_json(data),
        agent_index=data.draw(st.integers(0, 2**32 - 1)),
        start_at_agent_ns=data.draw(st.integers(-(2**63), 2**63 - 1)),
        clock_offset_ns=data.draw(st.integers(-(2**63), 2**63 - 1)),
        workers=data.draw(st.integers(0, 2**32 - 1)),
        keepalive_ms=data.draw(st.integers(0, 2**32 - 1)),
    )
    assert _call(channel, "Run", req.SerializeToString()) in ALLOWED
    for method, msg in (
        ("Collect", pb.CollectRequest(run_id=req.run_id, discard=data.draw(st.booleans()))),
        ("Stop", pb.StopRequest(run_id=req.run_id, reason=data.draw(st.text(max_size=50)))),
        ("Ping", pb.PingRequest(run_id=req.run_id, coordinator_send_ns=req.clock_offset_ns)),
    ):
        assert _call(channel, method, msg.SerializeToString()) in ALLOWED
    assert fuzz_agent[0].service.session is None  # nothing ever started
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_agent_still_serves_and_refused_everything(fuzz_agent: tuple[AgentServer, str]) -> None:
    with grpc.insecure_channel(fuzz_agent[1]) as ch:
        hello = pb.HelloReply.FromString(
            ch.unary_unary("/volley.v1.AgentControl/Hello")(
                pb.HelloRequest(protocol_version=PROTOCOL_VERSION).SerializeToString(), timeout=5
            )
        )
    assert hello.agent_id == "fuzz" and not hello.busy


def test_spool_path_traversal_refused(tmp_path: Path, channel: grpc.Channel) -> None:
    for rid in ("../../etc", "/tmp", "..", "a/../../b"):
        code = _call(channel, "Collect", pb.CollectRequest(run_id=rid).SerializeToString())
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code = _call(
            channel, "Collect", pb.CollectRequest(run_id=rid, discard=True).SerializeToString()
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT


batch_fields = st.fixed_dictionaries(
    {
        "count": st.integers(0, 40),
        **{name: st.binary(max_size=400) for name in COLUMNS},
        "input_shapes": st.lists(st.text(max_size=10), max_size=3),
    }
)


@settings(max_examples=300, deadline=None)
@given(batch_fields, st.booleans(), st.data())
def test_coordinator_batches(
    tmp_path_factory: Any, raw: dict[str, Any], fit: bool, data: Any
) -> None:
    if fit:  # right lengths, random contents: must aggregate and write
        n = raw["count"]
        for name, dt in COLUMNS.items():
            raw[name] = data.draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    msg = pb.TimingBatch(**raw)
    msg = pb.TimingBatch.FromString(msg.SerializeToString())
    try:
        block = RecordBlock.from_proto(msg)
    except ValueError as exc:
        assert not fit and "timing batch" in str(exc)
        return
    agg = Aggregator(2, 10**9)
    with np.errstate(all="ignore"):
        agg.ingest(1, block)
        agg.total()
    w = RequestWriter(tmp_path_factory.mktemp("w") / "r.parquet")
    w.write(1, block)
    w.close()


# ---------------------------------------------------------------- plans an agent refuses
def _run_details(ch: grpc.Channel, plan_json: str) -> tuple[grpc.StatusCode, str]:
    req = pb.RunRequest(
        run_id="r1", plan_json=plan_json, start_at_agent_ns=time.monotonic_ns() + 10**9
    )
    try:
        for _ in ch.unary_stream("/volley.v1.AgentControl/Run")(
            req.SerializeToString(), timeout=10
        ):
            pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[no-any-return]
    return grpc.StatusCode.OK, ""


def _with_input(**fields: Any) -> str:
    doc: dict[str, Any] = json.loads(json.dumps(RESOLVED))
    doc["inputs"][0].update(fields)
    return json.dumps(doc)


def _json_service(template: str) -> str:
    doc: dict[str, Any] = json.loads(json.dumps(RESOLVED))
    doc.update(protocol="json", models=[], json_service={"path": "/p", "template": template})
    doc["inputs"] = [{"name": "X", "datatype": "FP32", "shape": [1, 4], "source": "random"}]
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("plan_json", "needle"),
    [
        (_with_input(model_dims=[10**400, 4]), "model_dims[0]"),
        (_with_input(model_dims=[-2, 4]), "model_dims[0]"),
        (_with_input(model_dims=[2**64, 4]), "model_dims[0]"),
        (_with_input(model_dims=["4", 4]), "model_dims[0]"),
        (_with_input(model_dims=[1.5, 4]), "model_dims[0]"),
        (_with_input(shape=[1, 10**400]), "shape[1]"),
        (_with_input(shape=[-1, 4]), "shape[0]"),
        (_with_input(shape=[2**64, 4]), "shape[0]"),
        (_with_input(shape=[1, 4.5]), "shape[1]"),
        (_with_input(datatype="FP8"), "datatype"),
        (_with_input(datatype=""), "no datatype"),
        (_with_input(value=2**64, source="constant"), "value"),
        (json.dumps({**RESOLVED, "seed": 10**400}), "plan.seed"),
        (json.dumps(RESOLVED)[:-1] + ', "seed": ' + "9" * 5000 + "}", "digits"),
        (json.dumps({**RESOLVED, "load": {"rate": 10**400}}), "load.rate"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        # newer fields: a JSON service template with NaN / out-of-range numbers (it is
        # written again per body as strict JSON), request parameters, sequences
        (_json_service('{"x": "$X", "a": NaN}'), "NaN has no JSON form"),
        (_json_service('{"x": "$X", "a": -1e999}'), "out of a double's range"),
        (json.dumps({**RESOLVED, "stream": {"parameters": [["n", 10**400]]}}), "parameters"),
        (json.dumps({**RESOLVED, "sequence": {"length": "0..nan"}}), "sequence.length"),
        (json.dumps({**RESOLVED, "connections": 2**64}), "connections"),
    ],
)
def test_bad_plans_are_invalid_argument(channel: grpc.Channel, plan_json: str, needle: str) -> None:
    code, details = _run_details(channel, plan_json)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("invalid plan: ") and needle in details, details
    assert len(details) < 1100 and "\n" not in details


def test_a_100kb_value_is_refused_with_a_short_message(channel: grpc.Channel) -> None:
    """A refusal quoting what the client sent still reaches it: the value is cut."""
    for doc in (
        {**RESOLVED, "load": {"rate": 10, "mode": "x" * 100_000}},
        {**RESOLVED, "y" * 100_000: 1},
        {**RESOLVED, "target": "h" * 100_000 + ":8001"},
    ):
        code, details = _run_details(channel, json.dumps(doc))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
        assert len(details) < 1100, len(details)


def test_a_long_refusal_is_cut_to_fit_the_trailer(tmp_path: Path) -> None:
    """A refusal from the agent's own limits that would not fit a gRPC trailer (here: an
    allowlist of 5000 targets, quoted whole) arrives cut, as PERMISSION_DENIED."""
    allowed = tuple(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8001" for i in range(5000))
    cfg = AgentConfig(
        listen="127.0.0.1:0",
        workers=1,
        agent_id="long",
        limits=AgentLimits(allowed_targets=allowed),
        spool_dir=str(tmp_path / "spool"),
    )
    with agent_in_thread(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        code, details = _run_details(ch, json.dumps(RESOLVED))
        assert server.service.session is None
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details[:200])
    assert details.startswith("agent refuses: target 127.0.0.1:8001 is not on")
    assert 100 < len(details) < 1100 and "characters)" in details
