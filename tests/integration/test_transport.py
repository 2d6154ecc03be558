"""The agent's transports against the real Triton: gRPC unary and stream, HTTP; TLS
through a local TLS-terminating proxy, headers on the wire, per-request timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.transports import Transport, make_transport
from coordinator.preflight import PreflightError, preflight
from coordinator.stats.monitor import ServerMonitor, summary_block
from tests.tls_proxy import TlsProxy, make_cert
from tests.triton_fixture import TritonEndpoint
from volley import records as rc
from volley.plan import Plan, plan_from_dict
from volley.target import TargetAccess, read_access
from volley.wire.payloads import build_payloads

KINDS = ["unary", "stream", "http"]


def _plan(triton: TritonEndpoint, kind: str, **extra: Any) -> Plan:
    doc: dict[str, Any] = {
        "target": triton.http_url if kind == "http" else triton.grpc_url,
        "model": "add",
        "seed": 5,
        "load": {"rate": 10, "duration": "1s"},
        "protocol": "http" if kind == "http" else "grpc",
        "transport": "stream" if kind == "stream" else "unary",
    }
    doc.update(extra)
    return plan_from_dict(doc)


async def _send_all(plan: Plan, n: int, wait_s: float = 10.0) -> list[tuple[int, ...]]:
    """Send n requests through a fresh transport; return the completions."""
    resolved = await preflight(plan)
    access = read_access(resolved).here  # as the coordinator reads them for its agents
    payloads = build_payloads(resolved, 1, headers=access.headers)
    done: list[tuple[int, ...]] = []

    def complete(*args: int) -> None:
        done.append(args)

    start = time.monotonic_ns()
    tp: Transport = make_transport(resolved, payloads, complete, time.monotonic_ns, start, access)
    await tp.open()
    try:
        for i in range(n):
            tp.send(i, tp.now(), payloads.pick_one(i))
        t0 = time.monotonic()
        while len(done) < n and time.monotonic() - t0 < wait_s:
            await asyncio.sleep(0.01)
            tp.sweep()
        assert tp.in_flight == n - len(done)
    finally:
        tp.abort_all(rc.CANCELLED)
        await tp.close()
    return done


@pytest.mark.parametrize("kind", KINDS)
async def test_transport_sends_checked_requests(triton_server: TritonEndpoint, kind: str) -> None:
    done = await _send_all(_plan(triton_server, kind), 60)
    assert len(done) == 60
    assert sorted(d[0] for d in done) == list(range(60))  # every request answered once
    assert {d[4] for d in done} == {rc.OK}
    assert all(d[6] > 0 for d in done)  # response bytes
    assert all(0 <= d[2] <= d[3] for d in done)  # sent <= done


@pytest.mark.parametrize("kind", KINDS)
async def test_mixed_models_go_to_their_model(triton_server: TritonEndpoint, kind: str) -> None:
    plan = _plan(triton_server, kind, models=[{"name": "add", "weight": 1}, "iris"])
    resolved = await preflight(plan)
    assert [m.name for m in resolved.models] == ["add", "iris"]
    assert all(m.inputs and m.outputs for m in resolved.models)
    payloads = build_payloads(resolved, 1)
    done = await _send_all(plan, 40)
    models = {payloads.wires[d[5]].model_id for d in done}
    assert models == {0, 1}
    assert {d[4] for d in done} == {rc.OK}


@pytest.mark.parametrize("kind", KINDS)
async def test_timeout_is_deadline_exceeded_with_latency(
    triton_server: TritonEndpoint, kind: str
) -> None:
    plan = _plan(
        triton_server,
        kind,
        model="sleep",
        timeout_s="150ms",
        inputs=[{"name": "DELAY_MS", "source": "constant", "value": 600}],
    )
    done = await _send_all(plan, 2, wait_s=3.0)
    assert len(done) == 2
    for d in done:
        assert d[4] == rc.DEADLINE_EXCEEDED
        assert 140e6 <= d[3] - d[2] <= 1.5e9  # the time it took to give up is recorded


@pytest.mark.parametrize("kind", ["unary", "http"])
async def test_tls_proxy_with_bearer_header(
    triton_server: TritonEndpoint,
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = make_cert(tmp_path)
    upstream = triton_server.http_url if kind == "http" else triton_server.grpc_url
    proxy = TlsProxy(upstream, cert, key)
    address = await proxy.start()
    monkeypatch.setenv("VOLLEY_TEST_TOKEN", "Bearer s3cret-token")
    try:
        plan = _plan(
            triton_server,
            kind,
            target=address,
            tls={"ca": str(cert)},
            headers=[{"name": "authorization", "env": "VOLLEY_TEST_TOKEN"}],
        )
        done = await _send_all(plan, 20)
        assert {d[4] for d in done} == {rc.OK}
        assert proxy.connections >= 2  # preflight and the transport
        assert b"s3cret-token" in bytes(proxy.seen)  # the header reached the target
        assert "s3cret" not in plan.to_yaml()  # and never the plan
        # a client that does not trust the proxy's certificate is refused, in one line
        with pytest.raises(PreflightError, match=r"(?i)certificate|TLS"):
            await preflight(_plan(triton_server, kind, target=address, tls=True))
        # plain text to a TLS port fails cleanly too
        with pytest.raises(PreflightError):
            await preflight(_plan(triton_server, kind, target=address), timeout=2.0)
    finally:
        await proxy.stop()


async def test_mutual_tls(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    ccert, ckey = make_cert(tmp_path, "client")
    proxy = TlsProxy(triton_server.grpc_url, cert, key, client_ca=ccert)
    address = await proxy.start()
    try:
        tls = {"ca": str(cert), "cert": str(ccert), "key": str(ckey)}
        done = await _send_all(_plan(triton_server, "unary", target=address, tls=tls), 5)
        assert {d[4] for d in done} == {rc.OK}
        with pytest.raises(PreflightError):
            await preflight(
                _plan(triton_server, "unary", target=address, tls={"ca": str(cert)}), 2.0
            )
    finally:
        await proxy.stop()


async def test_missing_header_env_is_a_clear_error(triton_server: TritonEndpoint) -> None:
    plan = _plan(
        triton_server, "unary", headers=[{"name": "x-api-key", "env": "VOLLEY_NOT_SET_ANYWHERE"}]
    )
    with pytest.raises(PreflightError, match="VOLLEY_NOT_SET_ANYWHERE"):
        await preflight(plan)


async def test_unavailable_target_records_unavailable() -> None:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:1",
            "model": "m",
            "load": {"rate": 1, "duration": "1s"},
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
            "outputs": ["Y"],
        }
    )
    payloads = build_payloads(plan, 1)
    done: list[tuple[int, ...]] = []
    tp = make_transport(
        plan,
        payloads,
        lambda *a: done.append(a),
        time.monotonic_ns,
        time.monotonic_ns(),
        TargetAccess(),
    )
    await tp.open()
    for i in range(3):
        tp.send(i, 0, 0)
    deadline = time.monotonic() + 5.0
    while len(done) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [d[4] for d in done] == [rc.UNAVAILABLE] * 3
    assert tp.in_flight == 0
    # the refused connection attempts are counted apart from the requests
    assert tp.connect_errors >= 1 and tp.retried == tp.reconnects == 0
    await tp.close()


def test_cli_protocol_and_target_errors_are_one_line(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from volley.cli import app

    g, h = triton_server.grpc_url, triton_server.http_url
    cases = [
        (["--protocol", "http", "--target", g], "--protocol grpc"),
        (["--target", h], "--protocol http"),
        (["--target", g, "--header-env", "x-a=VOLLEY_NOPE_VAR"], "VOLLEY_NOPE_VAR"),
        (["--target", g, "--header-env", "bad"], "NAME=ENVVAR"),
        (["--target", g, "--tls-ca", str(tmp_path / "none.pem")], "none.pem"),
        (["--target", g, "--header-file", str(tmp_path / "none")], "--header-file"),
        (["--target", g, "--transport", "stream", "--protocol", "http"], "stream"),
        (["--target", g, "--compression", "lz4"], "compression"),
    ]
    runner = CliRunner()
    for args, needle in cases:
        res = runner.invoke(
            app, ["run", *args, "--model", "add", "--rate", "5", "--out", str(tmp_path)]
        )
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output


@pytest.mark.parametrize("kind", ["unary", "http"])
async def test_server_monitor_reads_through_the_plans_tls_and_headers(
    triton_server: TritonEndpoint,
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = make_cert(tmp_path)
    upstream = triton_server.http_url if kind == "http" else triton_server.grpc_url
    proxy = TlsProxy(upstream, cert, key)
    address = await proxy.start()
    monkeypatch.setenv("VOLLEY_TEST_TOKEN", "Bearer s3cret-token")
    try:
        plan = _plan(
            triton_server,
            kind,
            target=address,
            tls={"ca": str(cert)},
            headers=[{"name": "authorization", "env": "VOLLEY_TEST_TOKEN"}],
        )
        monitor = ServerMonitor.for_plan(plan, "off")
        await monitor.start(time.monotonic_ns(), 0.0)
        assert b"s3cret-token" in bytes(proxy.seen)  # only the monitor has spoken yet
        done = await _send_all(plan, 20)
        doc = await monitor.stop()
    finally:
        await proxy.stop()
    assert {d[4] for d in done} == {rc.OK}
    stats = doc["statistics"]
    assert stats["available"], stats["note"]
    measured = stats["measured"]
    assert measured is not None and measured["add"]["success"] >= 20
    assert doc["server"].get("name") == "triton" and doc["model_config"].get("name") == "add"
    assert summary_block(doc, 20)["available"]
