"""Secrets stay where they are read, and unauthenticated callers cost an agent little.

Real agent processes (tests/agent_thread.py). A canary environment variable and file
exist on the agent's side only; plans that name them are sent straight to the agent,
as a token holder could, with the target pointed at a local listener that records
every byte it receives: the canaries never arrive. Secrets read by the coordinator,
and the agent operator's own `--header-secret`, do arrive at the target (through the
TLS-terminating proxy in front of Triton), and never in the run directory or a log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.agents import AgentClient, AgentError
from coordinator.run import RunOptions, execute
from tests.agent_thread import spawn_agent, stop_process
from tests.tls_proxy import TlsProxy, make_cert
from tests.triton_fixture import TritonEndpoint
from tests.unauth_flood import flood, rss_kib
from volley.plan import Plan, plan_from_dict
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc

TOKEN = "secrets-test-token-0123456789"
CANARY_ENV = "agent-side-canary-env-7f3a"
CANARY_FILE = "agent-side-canary-file-91c2"
COORD_SECRET = "coordinator-secret-5d8e"
AGENT_SECRET = "operator-secret-a4b6"
MD = (("authorization", f"Bearer {TOKEN}"),)


class Recorder:
    """A TCP listener on loopback that keeps every byte it is sent and never answers."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            while data := await reader.read(65536):
                self.seen += data
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def canary_agent(tmp_path: Path) -> Any:
    """An agent (token required) whose environment and disk hold canaries; returns
    (address, canary file, log path)."""
    canary = tmp_path / "agent-only" / "canary.txt"
    canary.parent.mkdir()
    canary.write_text(CANARY_FILE)
    proc, address, log = spawn_agent(
        tmp_path,
        "canary",
        env={"VOLLEY_TOKEN": TOKEN, "VOLLEY_CANARY": CANARY_ENV},
    )
    try:
        yield address, canary, log
    finally:
        stop_process(proc)


def _plan(target: str, **extra: Any) -> Plan:
    doc: dict[str, Any] = {
        "target": target,
        "model": "m",
        "protocol": "http",
        "load": {"rate": 20, "duration": "1s"},
        "timeout_s": "300ms",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
        "outputs": ["Y"],
    }
    doc.update(extra)
    return plan_from_dict(doc)


async def _run(address: str, req: pb.RunRequest) -> tuple[str, str]:
    """Send one Run as a token holder could; (final status code, details)."""
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            async for _ in pb_grpc.AgentControlStub(ch).Run(req, metadata=MD, timeout=20):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", ""


#: The transports added since (their plan fields): each gets its headers from the same
#: place, and must read nothing a plan names either.
NEWER_KINDS: dict[str, dict[str, Any]] = {
    "json service": {
        "protocol": "json",
        "json_service": {"path": "/predict", "template": '{"x": "$X"}'},
    },
    "generate (SSE)": {"stream": {"decoupled": True, "parameters": {"max_tokens": 4}}},
    "http sequence": {"sequence": {"length": "2"}},
}


def _request(plan: Plan, run_id: str = "secrets1", **fields: Any) -> pb.RunRequest:
    return pb.RunRequest(
        run_id=run_id,
        plan_json=plan.to_json(),
        start_at_agent_ns=time.monotonic_ns() + 300_000_000,
        keepalive_ms=0,
        **fields,
    )


async def test_plan_naming_agent_env_file_or_tls_is_refused(
    canary_agent: Any, recorder: Recorder
) -> None:
    address, canary, log = canary_agent
    target = recorder.address
    plans = [
        _plan(target, headers=[{"name": "x-leak", "env": "VOLLEY_CANARY"}]),
        _plan(target, headers=[{"name": "x-leak", "file": str(canary)}]),
        _plan(target, tls={"ca": str(canary)}),
        _plan(target, tls={"ca": str(canary), "cert": str(canary), "key": str(canary)}),
        *(
            _plan(target, headers=[{"name": "x-leak", where: leak}], **extra)
            for extra in NEWER_KINDS.values()
            for where, leak in (("env", "VOLLEY_CANARY"), ("file", str(canary)))
        ),
    ]
    for plan in plans:
        code, details = await _run(address, _request(plan))
        assert code == "INVALID_ARGUMENT", (code, details)
        assert "never reads" in details and "\n" not in details
        assert CANARY_FILE not in details and CANARY_ENV not in details
    # nothing was sent anywhere, the canaries least of all
    await asyncio.sleep(0.3)
    assert recorder.connections == 0 and not recorder.seen
    text = log.read_text()
    assert CANARY_ENV not in text and CANARY_FILE not in text


async def test_agent_sends_the_coordinators_values_not_its_own(
    canary_agent: Any, recorder: Recorder
) -> None:
    address, canary, log = canary_agent
    target = recorder.address
    plan_headers = [
        {"name": "x-from-env", "env": "VOLLEY_CANARY"},
        {"name": "x-from-file", "file": str(canary)},
        {"name": "x-plain", "value": "plain-value"},
    ]
    plan = _plan(target, headers=plan_headers)
    values = [
        pb.HeaderValue(name="x-from-env", value=COORD_SECRET + "-env"),
        pb.HeaderValue(name="x-from-file", value=COORD_SECRET + "-file"),
        pb.HeaderValue(name="x-plain", value=""),
    ]
    code, details = await _run(address, _request(plan, headers=values))
    assert code == "OK", details
    seen = bytes(recorder.seen)
    assert recorder.connections >= 1
    assert f"x-from-env: {COORD_SECRET}-env".encode() in seen
    assert f"x-from-file: {COORD_SECRET}-file".encode() in seen
    assert b"x-plain: plain-value" in seen
    assert CANARY_ENV.encode() not in seen and CANARY_FILE.encode() not in seen
    # the newer transports: the coordinator's values too, never the agent's canaries
    for i, (kind, extra) in enumerate(NEWER_KINDS.items()):
        recorder.seen.clear()
        newer = _plan(target, headers=plan_headers, **extra)
        code, details = await _run(address, _request(newer, f"secrets-new{i}", headers=values))
        assert code == "OK", (kind, details)
        seen = bytes(recorder.seen)
        assert f"x-from-env: {COORD_SECRET}-env".encode() in seen, (kind, seen[:300])
        assert f"x-from-file: {COORD_SECRET}-file".encode() in seen, kind
        assert CANARY_ENV.encode() not in seen and CANARY_FILE.encode() not in seen, kind
    assert COORD_SECRET not in log.read_text()


async def test_unknown_agent_secret_is_refused(canary_agent: Any, recorder: Recorder) -> None:
    address, _, _ = canary_agent
    target = recorder.address
    plan = _plan(target, headers=[{"name": "x-gw", "secret": "nope"}])
    code, details = await _run(address, _request(plan, headers=[pb.HeaderValue(name="x-gw")]))
    assert code == "INVALID_ARGUMENT" and "no header secret 'nope'" in details
    assert recorder.connections == 0


async def test_large_plan_only_in_chunks_after_the_token(canary_agent: Any) -> None:
    address, _, _ = canary_agent
    # a 7 MB plan: larger than any message the agent accepts (4 MiB)
    times = list(range(0, 3600 * 10**9, 6_000_000))
    plan = _plan("127.0.0.1:1", load={"arrival": "trace", "trace": {"times_ns": times}})
    assert len(plan.to_json()) > 6 * 1024 * 1024
    code, details = await _run(address, _request(plan))
    assert code == "RESOURCE_EXHAUSTED", details  # inline: over the message limit
    anonymous = AgentClient(address)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await anonymous.upload_plan("big1", plan.to_json())
    # refused from the metadata, before a chunk is read (grpc.aio's client, still
    # writing when the call ends, may report that as INTERNAL)
    assert ei.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL)
    await anonymous.close()
    # with the token it goes in 1 MiB chunks, and the agent parses it: its own check
    # (the plan's slot is outside a one-agent split) proves the plan arrived whole
    client = AgentClient(address, security=ClientSecurity(token=TOKEN))
    req = _request(plan, agent_index=1)
    req.run_id = "big1"
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in client.run(req):
            pass
    await client.close()
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "outside the plan's 1 agents" in (ei.value.details() or "")


async def test_unauthenticated_large_messages_are_not_buffered(tmp_path: Path) -> None:
    """8 concurrent unauthenticated calls with 150 MiB messages: the agent grew by
    1.1-1.5 GiB when it buffered each message before refusing it."""
    proc, address, _ = spawn_agent(tmp_path, "flood", env={"VOLLEY_TOKEN": TOKEN})
    try:
        before = rss_kib(proc.pid, "VmRSS")
        codes = await asyncio.wait_for(flood(address, 8, 150 * 1024 * 1024, 25.0), 60)
        growth_mib = (rss_kib(proc.pid) - before) / 1024
        assert "OK" not in codes
        assert growth_mib < 400, f"agent grew by {growth_mib:.0f} MiB"
        client = AgentClient(address, security=ClientSecurity(token=TOKEN))
        assert (await client.hello()).agent_id == "flood"  # still serving
        await client.close()
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- through Triton
def _grep(root: Path, *needles: str) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            hits += [f"{f.name}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.triton
async def test_run_secrets_read_by_coordinator_reach_the_target(
    triton_server: TritonEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = make_cert(tmp_path)
    proxy = TlsProxy(triton_server.grpc_url, cert, key)
    target = await proxy.start()
    # relative paths: they exist in the coordinator's folder, not in the agent's
    coord_dir = tmp_path / "coordinator"
    coord_dir.mkdir()
    (coord_dir / "ca.pem").write_bytes(cert.read_bytes())
    (coord_dir / "gw-token").write_text(COORD_SECRET + "-file\n")
    monkeypatch.chdir(coord_dir)
    monkeypatch.setenv("VOLLEY_CANARY", COORD_SECRET + "-env")
    proc, address, log = spawn_agent(
        tmp_path,
        "tls",
        env={"VOLLEY_TOKEN": TOKEN, "VOLLEY_CANARY": CANARY_ENV, "VOLLEY_GW": AGENT_SECRET},
        args=["--header-secret", "gw=env:VOLLEY_GW"],
    )
    try:
        plan = plan_from_dict(
            {
                "target": target,
                "model": "add",
                "load": {"rate": 40, "duration": "1s"},
                "tls": {"ca": "ca.pem"},
                "headers": [
                    {"name": "authorization", "env": "VOLLEY_CANARY"},
                    {"name": "x-file", "file": "gw-token"},
                    {"name": "x-gw", "secret": "gw"},
                ],
                "validity": {"min_duration_s": 0.5, "min_requests": 10},
            }
        )
        opts = RunOptions(
            out_dir=tmp_path / "runs",
            start_lead_s=1.0,
            security=ClientSecurity(token=TOKEN),
            server_stats=False,
        )
        result = await execute(plan, [address], opts)
        ok = result.summary["requests"]["ok"]
        assert ok >= 30, result.summary["requests"]
        seen = bytes(proxy.seen)
        # every request of the agent carried them (preflight sends one or two)
        assert seen.count(f"{COORD_SECRET}-env".encode()) >= ok
        assert seen.count(f"{COORD_SECRET}-file".encode()) >= ok
        assert seen.count(AGENT_SECRET.encode()) >= ok  # the operator's, from the agent
        assert CANARY_ENV.encode() not in seen
        # never written, never logged
        needles = (COORD_SECRET, AGENT_SECRET, CANARY_ENV)
        assert _grep(result.run_dir, *needles) == []
        assert not [n for n in needles if n in log.read_text()]
        assert not [r for r in caplog.records if any(n in r.getMessage() for n in needles)]
        # a plan naming a secret the agent was not given is refused, in one line
        bad = plan_from_dict({**plan.to_dict(), "headers": [{"name": "x", "secret": "other"}]})
        with pytest.raises(AgentError, match="no header secret 'other'") as ei:
            await execute(bad, [address], opts)
        assert "\n" not in str(ei.value)
    finally:
        stop_process(proc)
        await proxy.stop()
