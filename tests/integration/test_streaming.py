"""Decoupled (streaming) models against the real Triton: the `tokens` model's known
truth (first delay, gap, count) measured back from the intended send time by two agents;
errors mid-stream, per-request timeouts, a server stall, SLOs on token latencies."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from agent.transports import make_transport
from coordinator.preflight import preflight
from coordinator.run import RunOptions, execute
from coordinator.sweep.capacity import CapacityInputs
from coordinator.sweep.runner import SweepSpec, SweepTarget, real_measure, run_sweep
from coordinator.sweep.search import Measure, SweepSettings
from tests.integration.test_reliability import _sleep_until, _wait_manifest
from tests.triton_fixture import TritonEndpoint
from volley import records as rc
from volley.plan import Plan, plan_from_dict
from volley.target import read_access
from volley.wire.payloads import build_payloads
from volley.wire.stream import drawn_values

FIRST_MS, GAP_MS, COUNT = 20.0, 5.0, 10
#: The start lead's floor, from the Run streams' opening. Worker processes of a fresh
#: agent take 1-3 s to be ready on a loaded 2-core host, but the two-phase start sends
#: the start instant only once every agent reports its workers ready (prepared), so the
#: floor no longer has to cover them: 1 s, as in the other tests.
START_LEAD_S = 1.0
#: The stall test times its stall from the call, so its start must be at a known instant
#: after it: a floor past any prepare time (1-3 s) fixes it there.
STALL_LEAD_S = 3.0


def _doc(
    triton: TritonEndpoint,
    first: float,
    gap: float,
    count: int,
    error_at: int = -1,
    protocol: str = "grpc",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "target": triton.http_url if protocol == "http" else triton.grpc_url,
        "protocol": protocol,
        "model": "tokens",
        "seed": 3,
        "name": "stream",
        "inputs": [
            {"name": "FIRST_MS", "source": "constant", "value": first},
            {"name": "GAP_MS", "source": "constant", "value": gap},
            {"name": "COUNT", "source": "constant", "value": count},
            {"name": "ERROR_AT", "source": "constant", "value": error_at},
        ],
        # a warm-up second: the first sends of a loaded host may be late and queue
        "load": {
            "mode": "open",
            "arrival": "constant",
            "rate": 10,
            "duration": "4s",
            "warmup": "1s",
        },
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }
    doc.update(extra)
    return doc


def _one_response_inputs(first_ms: float) -> list[Any]:
    """tritonclient gRPC inputs of the tokens model: one response after `first_ms`."""
    import tritonclient.grpc as tg

    inputs = []
    for name, dt, v in (
        ("FIRST_MS", "FP32", first_ms),
        ("GAP_MS", "FP32", 0.0),
        ("COUNT", "INT32", 1),
        ("ERROR_AT", "INT32", -1),
    ):
        x = tg.InferInput(name, [1], dt)
        x.set_data_from_numpy(np.array([v], np.float32 if dt == "FP32" else np.int32))
        inputs.append(x)
    return inputs


def _reference_ttft_ms(url: str, n: int = 12) -> list[float]:
    """TTFT of the same model and inputs timed by tritonclient's own streaming client
    (send to first response), one request at a time: what Triton adds to FIRST_MS."""
    import tritonclient.grpc as tg

    got: queue.Queue[float] = queue.Queue()

    def callback(result: Any, error: Any) -> None:
        if error is None and result.get_response().outputs:
            got.put(time.perf_counter())

    client = tg.InferenceServerClient(url)
    client.start_stream(callback=callback)
    inputs = _one_response_inputs(FIRST_MS)
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            client.async_stream_infer("tokens", inputs, request_id=str(i))
            out.append((got.get(timeout=10) - t0) * 1000)
            time.sleep(0.1)  # the same idle gap as the 10/s run
    finally:
        client.stop_stream()
        client.close()
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_two_agents_measure_the_known_stream(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path, protocol: str
) -> None:
    """First response 20 ms after the model takes the request, then one every 5 ms, ten
    of them: TTFT p50 within 1 ms of 20 ms plus Triton's own overhead (the TTFT of the
    same request with FIRST_MS 0, one at a time), ITL p50 within 0.5 ms of 5 ms, and the
    response counts exact; over gRPC ModelStreamInfer and HTTP generate_stream. An
    independent client (tritonclient's gRPC streaming one, whose callback thread adds
    its own hop) bounds the gRPC TTFT from above."""
    floor = await _floor_ttft_ms(triton_server, protocol)
    grpc = protocol == "grpc"
    before = _reference_ttft_ms(triton_server.grpc_url) if grpc else []
    doc = _doc(
        triton_server,
        FIRST_MS,
        GAP_MS,
        COUNT,
        protocol=protocol,
        slos=["itl_p99<30ms", "itl_p50<4ms", "ttft_p99<200ms"],
    )
    options = RunOptions(out_dir=tmp_path, start_lead_s=START_LEAD_S)
    result = await execute(plan_from_dict(doc), agent_pair, options)
    after = _reference_ttft_ms(triton_server.grpc_url) if grpc else []
    s = result.summary
    st = s["stream"]
    ok = s["requests"]["ok"]
    assert ok == s["requests"]["scheduled"] == 30 and s["requests"]["errors"] == 0
    assert all(a["ok"] > 0 for a in s["agents"])  # both agents drove it
    assert st["requests"] == ok
    assert st["responses"] == st["tokens"] == ok * COUNT
    assert st["responses_per_request"] == {"min": COUNT, "max": COUNT, "mean": COUNT}
    assert st["itl_samples"] == ok * (COUNT - 1)
    ref = float(np.median(before + after)) if grpc else float("nan")
    ttft, itl = st["ttft_ms"]["p50"], st["itl_ms"]["p50"]
    print(
        f"{protocol} tokens {FIRST_MS:g}/{GAP_MS:g} ms x{COUNT}: TTFT p50 {ttft:.3f} ms, ITL p50 "
        f"{itl:.3f} ms, TPOT p50 {st['tpot_ms']['p50']:.3f} ms, e2e p50 "
        f"{s['latency_ms']['p50']:.3f} ms; Triton's overhead (TTFT at FIRST_MS 0) "
        f"{floor:.3f} ms; tritonclient TTFT p50 {ref:.3f} ms"
    )
    assert ttft >= FIRST_MS
    # within 1 ms of the configuration plus Triton's own overhead; the overhead is
    # measured alone before the run and on a busy host reads high (3.1 ms once, against
    # 1.5-1.9 ms quiet), so a TTFT below FIRST_MS + overhead is not held against it
    # (over gRPC tritonclient's own TTFT in the same minutes is a second measure of the
    # overhead: the larger of the two is taken, as one read alone varies by ~1 ms here)
    overhead = max(floor, ref - FIRST_MS) if grpc else floor
    assert ttft - (FIRST_MS + overhead) <= 1.0
    if grpc:
        assert FIRST_MS <= ttft <= ref + 0.5
    assert abs(itl - GAP_MS) <= 0.5
    assert abs(st["tpot_ms"]["p50"] - GAP_MS) <= 0.5
    assert st["ttst_ms"]["p50"] >= ttft
    assert s["latency_ms"]["p50"] >= ttft + (COUNT - 1) * GAP_MS - 1.0
    # SLOs on ITL: the first holds, the second cannot (5 ms gaps): the run fails its SLOs
    slo = {r["slo"]: r for r in s["verdict"]["slo"]}
    assert slo["itl_p99<30ms"]["passed"] and not slo["itl_p50<4ms"]["passed"]
    assert not s["verdict"]["slo_passed"]
    # goodput: every request within the TTFT limit (ITL limits no single request)
    assert st["goodput"]["requests"] == ok and st["goodput"]["share"] == 1.0
    # the report charts TTFT/ITL and tokens/s over time
    page = (result.run_dir / "report.html").read_text()
    assert "tokens-over-time" in page and "TTFT (from intended)" in page
    # raw rows carry the streaming clocks; the merged histogram agrees with them
    raw = pq.read_table(result.run_dir / "requests.parquet")
    first = raw.column("first_ns").to_numpy()
    intended = raw.column("intended_ns").to_numpy()
    assert set(raw.column("responses").to_numpy().tolist()) == {COUNT}
    # (responses read in one go share a time: on a busy host a few gaps are 0)
    span = raw.column("last_ns").to_numpy() - first
    assert (span >= 0).all() and np.median(span) >= (COUNT - 1) * GAP_MS * 1e6 * 0.9
    measured = intended >= 1_000_000_000  # after the warm-up, as the summary
    ttfts = np.sort((first - intended)[measured])
    assert len(ttfts) == ok
    exact = ttfts[int(np.ceil(len(ttfts) / 2)) - 1] / 1e6
    assert abs(exact - ttft) <= 0.01 * exact


async def test_a_server_stall_shows_in_ttft(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """A 1 s request sent beside the load occupies the model's one instance: the
    requests scheduled meanwhile wait, and their TTFT from the intended time says so."""
    import tritonclient.grpc as tg

    def stall() -> None:
        # 1.5 s into the load, mid-measured-period (the warm-up is 1 s), timed from the
        # start instant the coordinator fixed (its preflight and prepare take a varying
        # while before it)
        _run_dir, manifest = _wait_manifest(tmp_path)
        _sleep_until(manifest["start_monotonic_ns"] + 1_500_000_000)
        client = tg.InferenceServerClient(triton_server.grpc_url)
        done = threading.Event()
        client.start_stream(callback=lambda result, error: done.set())
        client.async_stream_infer("tokens", _one_response_inputs(1000.0))
        done.wait(10)
        client.stop_stream()
        client.close()

    doc = _doc(triton_server, 1.0, 1.0, 3, slos=["ttft_p99<500ms"])
    doc["load"].update(rate=20)
    plan = plan_from_dict(doc)
    options = RunOptions(out_dir=tmp_path, start_lead_s=STALL_LEAD_S)
    thread = threading.Thread(target=stall)
    thread.start()
    try:
        result = await execute(plan, agent_pair, options)
    finally:
        thread.join()
    s = result.summary
    st = s["stream"]
    print(f"stall: TTFT p50 {st['ttft_ms']['p50']:.1f} ms, p99 {st['ttft_ms']['p99']:.1f} ms")
    assert s["requests"]["ok"] == 60
    assert st["ttft_ms"]["max"] >= 800.0  # the first request behind the stall waited ~1 s
    assert st["ttft_ms"]["p50"] < 100.0  # most were not behind it
    raw = pq.read_table(result.run_dir / "requests.parquet")
    ttft = (raw.column("first_ns").to_numpy() - raw.column("intended_ns").to_numpy()) / 1e6
    assert int((ttft > 300).sum()) >= 8  # about 14 arrivals fall in the first 0.7 s of it
    assert not s["verdict"]["slo_passed"]


async def _floor_ttft_ms(triton: TritonEndpoint, protocol: str, n: int = 15) -> float:
    """Triton's own overhead on a first response: TTFT p50 of requests with FIRST_MS 0,
    sent one at a time 0.1 s apart (the run's idle gap) by the agents' transport."""
    plan = await preflight(plan_from_dict(_doc(triton, 0.0, 0.0, 1, protocol=protocol)))
    pairs = await _send(plan, n, gap_s=0.1)
    ttft = [(note[0] - d[1]) / 1e6 for d, note in pairs]
    return float(np.median(ttft[2:]))  # the first ones warm the path up


async def _send(
    plan: Plan, n: int, wait_s: float = 10.0, gap_s: float | None = None
) -> list[tuple[tuple[int, ...], tuple[Any, ...]]]:
    """n requests through a fresh transport: (completion, streaming note) pairs. All at
    once, or (gap_s) one at a time, each answered (at most 5 s) before a gap_s pause."""
    access = read_access(plan).here
    payloads = build_payloads(plan, headers=access.headers)
    done: list[tuple[int, ...]] = []
    notes: list[tuple[Any, ...]] = []
    start = time.monotonic_ns()
    tp = make_transport(plan, payloads, lambda *a: done.append(a), time.monotonic_ns, start, access)
    tp.note_stream = lambda *a: notes.append(a)
    await tp.open()
    try:
        for i in range(n):
            tp.send(i, tp.now(), payloads.pick_one(i))
            if gap_s is not None:
                t0 = time.monotonic()
                while len(done) <= i and time.monotonic() - t0 < 5:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(gap_s)
        t0 = time.monotonic()
        while len(done) < n and time.monotonic() - t0 < wait_s:
            await asyncio.sleep(0.005)
            tp.sweep()
        assert len(done) == n and tp.in_flight == 0
    finally:
        tp.abort_all(rc.CANCELLED)
        await tp.close()
    return list(zip(done, notes, strict=True))


def _with_inputs(plan: Plan, **values: float) -> Plan:
    """The resolved plan with some constant inputs changed (after preflight's probe)."""
    inputs = tuple(
        dataclasses.replace(i, value=values[i.name]) if i.name in values else i for i in plan.inputs
    )
    return dataclasses.replace(plan, inputs=inputs)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_stream_errors_empty_streams_and_timeouts(
    triton_server: TritonEndpoint, protocol: str
) -> None:
    doc = _doc(triton_server, 1.0, 1.0, 4, protocol=protocol, timeout_s=0.3)
    plan = await preflight(plan_from_dict(doc))
    assert plan.stream.decoupled  # found in the model config
    # an error at response 2: two responses, then STREAM_ERROR; at 0, before any
    # response: UNKNOWN over gRPC, Triton's HTTP 400 over HTTP
    first_error = rc.UNKNOWN if protocol == "grpc" else rc.HTTP_ERROR_BASE + 400
    for error_at, status, n in ((2, rc.STREAM_ERROR, 2), (0, first_error, 0)):
        for (_k, _i, sent, done, code, _p, _b), (first, last, resp, tok, gaps) in await _send(
            _with_inputs(plan, ERROR_AT=error_at), 3
        ):
            assert (code, resp, tok, len(gaps)) == (status, n, n, max(n - 1, 0))
            assert (first >= sent and last <= done) if n else first == last == -1
    # no response with data: OK, the final flag alone ended it
    for (*_, code, _p, _b), (first, _last, resp, _t, _g) in await _send(
        _with_inputs(plan, COUNT=0), 3
    ):
        assert (code, resp, first) == (rc.OK, 0, -1)
    # request parameters pass through (the model caps COUNT at max_tokens)
    capped = dataclasses.replace(
        plan,
        stream=dataclasses.replace(
            plan.stream, parameters=(("max_tokens", 2), ("temperature", 0.5), ("stop", "x"))
        ),
    )
    for (*_, code, _p, _b), (_f, _l, resp, _t, _g) in await _send(capped, 2):
        assert (code, resp) == (rc.OK, 2)
    # past the 0.3 s timeout: DEADLINE_EXCEEDED with what had come; the stream goes on
    slow = _with_inputs(plan, FIRST_MS=100.0, GAP_MS=100.0, COUNT=6)
    for (*_, code, _p, _b), (_f, _l, resp, _t, _g) in await _send(slow, 1):
        assert code == rc.DEADLINE_EXCEEDED and 1 <= resp <= 3


async def test_sweep_on_a_ttft_slo_finds_the_knee(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """One instance serving FIRST_MS 10 + 4 gaps of 5 ms per request: at most ~1000 / 31
    requests/s; past it the queue grows and TTFT from the intended time with it, so a
    sweep on `ttft_p99<100ms` stops there (coarse steps: test time). One agent: ~35
    streams/s need no second one, and each step spawns one worker process, not two."""
    agents = agent_pair[:1]
    floor = await _floor_ttft_ms(triton_server, "grpc")
    expected = 1000.0 / (10.0 + 4 * 5.0 + floor)
    doc = _doc(triton_server, 10.0, 5.0, 5, slos=["ttft_p99<100ms"])
    doc["validity"] = {"min_requests": 20, "min_duration_s": 1}
    plan = plan_from_dict(doc)
    settings = SweepSettings(
        # 5 steps: room for one step measured again (a stall of the shared host can make
        # a step volley-limited) besides the 4 that bracket the knee
        start=16,
        growth=1.5,
        tolerance=0.1,
        max_steps=5,
        step_duration_s=2,
        warmup_s=1,
    )
    spec = SweepSpec(
        name="tokens",
        plan=plan,
        settings=settings,
        targets=[SweepTarget("one", triton_server.grpc_url)],
        capacity=CapacityInputs(1000, headroom=0.0),
        agents=agents,
        start_lead_s=START_LEAD_S,
    )
    spec.validate()

    def factory(t: SweepTarget, s: SweepSettings) -> Measure:
        return real_measure(spec, t, s, tmp_path / "sweep", agents, None)

    out_doc = await run_sweep(spec, tmp_path / "sweep", factory)
    target = out_doc["targets"][0]
    for s in target["steps"]:
        print(f"  step {s['load']:g} req/s: {s['kind']} {'; '.join(s['reasons'])[:100]}")
    out = target["outcome"]
    print(f"tokens sweep: max {target['max_rps']} req/s, expected ~{expected:.1f}; {out}")
    # every step records tokens/s (5 per request); the plan states tokens/s beside req/s
    for s in target["steps"]:
        if s["kind"] == "pass":
            assert s["tokens_per_request"] == 5.0, s
            assert s["tokens_per_s"] == pytest.approx(5 * s["throughput_rps"], rel=0.1), s
    cp = out_doc["capacity"]["one"]
    assert cp["tokens_per_request"] == 5.0, cp  # exact: every request streamed 5
    assert cp["max_tokens_per_s_per_replica"] == pytest.approx(
        cp["max_rps_per_replica"] * cp["tokens_per_request"], rel=1e-3
    )
    assert cp["required_tokens_per_s"] == pytest.approx(1000 * cp["tokens_per_request"], rel=1e-3)
    tps, rps = cp["max_tokens_per_s_per_replica"], cp["max_rps_per_replica"]
    print(f"capacity: {tps} tokens/s = {rps} req/s x {cp['tokens_per_request']}")
    page = (tmp_path / "sweep" / "sweep.html").read_text()
    assert "tokens/s</b>" in page and "<th>tokens/s</th>" in page
    # a server limit found (bracketed; 4-5 steps do not narrow it to 10 %)
    assert out["limited_by"] in ("server", "max-steps") and out["fail_load"] is not None, out
    assert target["max_rps"] < out["fail_load"]
    # the knee lies at the model's capacity: not above it (+20 %), and not far below; a
    # busy 2-core host slows the python backend itself (24 req/s was seen under a load
    # average of ~80, against ~31 quiet), so the lower bound is loose
    assert 0.6 * expected <= target["max_rps"] <= 1.2 * expected, (target["max_rps"], expected)
    assert any("ttft" in r for s in target["steps"] for r in s["reasons"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_max_tokens_drawn_per_request(triton_server: TritonEndpoint, protocol: str) -> None:
    """`max_tokens: uniform(2, 9)` drawn per payload: the model caps COUNT 64 at it, so
    each request's response count is its payload's drawn value, and together they cover
    the distribution."""
    doc = _doc(triton_server, 0.0, 0.2, 64, protocol=protocol)
    doc["stream"] = {"parameters": {"max_tokens": "uniform(2, 9)"}}
    doc["input_pool"] = {"payloads": 16}
    plan = await preflight(plan_from_dict(doc))
    assert plan.stream.decoupled and plan.stream.drawn == (("max_tokens", "2..9"),)
    payloads = build_payloads(plan)
    want = [dict(v)["max_tokens"] for v in drawn_values(plan.stream.drawn, 16, plan.seed)]
    got = await _send(plan, 48)
    counts = [
        (want[pidx], resp) for (_k, _i, _s, _d, code, pidx, _b), (_f, _l, resp, _t, _g) in got
    ]
    assert all(code == rc.OK for (_k, _i, _s, _d, code, _p, _b), _ in got)
    assert all(w == r for w, r in counts), counts  # each request capped at its own draw
    assert {r for _, r in counts} >= {2, 9} and len({r for _, r in counts}) >= 6
    assert len(payloads.wires) == 16
    mean = sum(r for _, r in counts) / len(counts)
    spread = sorted(Counter(r for _, r in counts).items())
    print(f"{protocol} max_tokens 2..9: responses per request {spread}, mean {mean:.2f}")
    assert 4.0 <= mean <= 7.0  # the distribution's mean is 5.5
