"""Where target secrets are read (volley/target.py): the coordinator reads a plan's
environment variables and files, an agent only its operator's --header-secret, and
never one a plan names; TLS material is used from memory."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.server import AgentServer
from coordinator.local import LocalAgents
from tests.tls_proxy import make_cert
from volley.plan import Plan, PlanError, plan_from_dict
from volley.target import (
    TargetAccess,
    access_for_run,
    client_ssl_context,
    read_access,
    read_header_secrets,
)

SECRET = "s3cret-value-for-tests"


def _plan(**extra: object) -> Plan:
    doc: dict[str, object] = {
        "target": "127.0.0.1:1",
        "model": "m",
        "load": {"rate": 1, "duration": "1s"},
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
        "outputs": ["Y"],
    }
    doc.update(extra)
    return plan_from_dict(doc)


def test_plan_header_sources() -> None:
    _plan(headers=[{"name": "a", "secret": "gw"}])
    _plan(headers=[{"name": "a", "secret": "gw", "env": "X"}])
    for bad, why in (
        ({"name": "a", "secret": "gw", "value": "v"}, "not value"),
        ({"name": "a", "secret": "no/slash"}, "secret"),
        ({"name": "a", "env": "X", "file": "f"}, "exactly one"),
        ({"name": "a"}, "exactly one"),
    ):
        with pytest.raises(PlanError, match=why):
            _plan(headers=[bad])


def test_coordinator_reads_env_files_and_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = make_cert(tmp_path)
    token = tmp_path / "token"
    token.write_text(f"x-file: {SECRET}-file\n")
    monkeypatch.setenv("VOLLEY_T_ENV", SECRET + "-env")
    plan = _plan(
        headers=[
            {"name": "X-Env", "env": "VOLLEY_T_ENV"},
            {"name": "x-file", "file": str(token)},
            {"name": "x-plain", "value": "plain"},
            {"name": "x-agent", "secret": "gw"},
            {"name": "x-both", "secret": "gw", "env": "VOLLEY_T_ENV"},
        ],
        tls={"ca": str(cert), "cert": str(cert), "key": str(key)},
    )
    got = read_access(plan)
    assert got.here.headers == (
        ("x-env", SECRET + "-env"),
        ("x-file", SECRET + "-file"),
        ("x-plain", "plain"),
        ("x-both", SECRET + "-env"),  # the coordinator's own copy (preflight, monitor)
    )
    # agents get the values they cannot have: nothing for plain values or their secrets
    assert got.agent_values == (
        ("X-Env", SECRET + "-env"),
        ("x-file", SECRET + "-file"),
        ("x-plain", ""),
        ("x-agent", ""),
        ("x-both", ""),
    )
    assert got.here.ca == cert.read_bytes() and got.here.key == key.read_bytes()
    assert SECRET not in repr(got) and b"PRIVATE" not in repr(got).encode()
    assert "x-env" in repr(got)
    with pytest.raises(PlanError, match="VOLLEY_NOT_SET_HERE"):
        read_access(_plan(headers=[{"name": "a", "env": "VOLLEY_NOT_SET_HERE"}]))
    with pytest.raises(PlanError, match=r"tls.ca .*missing.pem"):
        read_access(_plan(tls={"ca": str(tmp_path / "missing.pem")}))


def test_agent_never_reads_what_a_plan_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = tmp_path / "canary"
    canary.write_text(SECRET)
    monkeypatch.setenv("VOLLEY_T_CANARY", SECRET)
    for plan, field in (
        (_plan(headers=[{"name": "a", "env": "VOLLEY_T_CANARY"}]), "environment variable"),
        (_plan(headers=[{"name": "a", "file": str(canary)}]), "file"),
        (_plan(tls={"ca": str(canary)}), "plan.tls.ca"),
    ):
        with pytest.raises(PlanError, match="never reads") as ei:
            access_for_run(plan, [], b"", b"", b"", {})
        assert field in str(ei.value) and SECRET not in str(ei.value)
    # with the coordinator's values, those are used; the agent's env and file are not
    plan = _plan(
        headers=[
            {"name": "a", "env": "VOLLEY_T_CANARY"},
            {"name": "b", "file": str(canary)},
            {"name": "c", "value": "plain"},
            {"name": "d", "secret": "gw"},
        ],
        tls={"ca": str(canary)},
    )
    got = access_for_run(
        plan,
        [("a", "from-coord"), ("B", "from-coord-2"), ("c", ""), ("d", "")],
        b"CA",
        b"",
        b"",
        {"gw": "operator"},
    )
    assert got.headers == (
        ("a", "from-coord"),
        ("b", "from-coord-2"),
        ("c", "plain"),
        ("d", "operator"),
    )
    assert got.ca == b"CA"
    for values, why in (
        ([("a", "v")], "carries 1 header values"),
        ([("x", "v"), ("b", ""), ("c", ""), ("d", "")], "for header 'x'"),
        ([("a", "v\r\nx: y"), ("b", ""), ("c", ""), ("d", "")], "control characters"),
    ):
        with pytest.raises(PlanError, match=why):
            access_for_run(plan, values, b"CA", b"", b"", {"gw": "operator"})
    with pytest.raises(PlanError, match="no header secret 'gw'"):
        access_for_run(plan, [("a", ""), ("b", ""), ("c", ""), ("d", "")], b"CA", b"", b"", {})


def test_header_secrets_at_agent_start(tmp_path: Path) -> None:
    f = tmp_path / "gw"
    f.write_text(f"  {SECRET}\n")
    got = read_header_secrets([f"gw=file:{f}", "other=env:GW_VAR"], env={"GW_VAR": "v2"})
    assert got == {"gw": SECRET, "other": "v2"}
    for bad, why in (
        ("gw", "NAME=env:VAR"),
        ("gw=VAR", "NAME=env:VAR"),
        ("gw=http:x", "NAME=env:VAR"),
        ("g w=env:X", "a name is"),
        ("gw=env:NOPE", "NOPE is not set"),
        (f"gw=file:{tmp_path / 'none'}", "none"),
    ):
        with pytest.raises(PlanError, match=why):
            read_header_secrets([bad], env={})
    with pytest.raises(PlanError, match="given twice"):
        read_header_secrets(["a=env:X", "a=env:X"], env={"X": "1"})
    f.write_text("a\nb")
    with pytest.raises(PlanError, match="control characters") as ei:
        read_header_secrets([f"gw=file:{f}"], env={})
    assert "a\nb" not in str(ei.value)


def test_tls_context_from_memory(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls = _plan(tls={"ca": "x", "cert": "y", "key": "z"}).tls
    assert tls is not None
    ctx = client_ssl_context(
        tls, TargetAccess(ca=cert.read_bytes(), cert=cert.read_bytes(), key=key.read_bytes())
    )
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    names = [dict(x[0] for x in c["subject"]).get("commonName") for c in ctx.get_ca_certs()]
    assert "volley-test" in names
    with pytest.raises(PlanError, match=r"tls\.ca: not a usable PEM"):
        client_ssl_context(tls, TargetAccess(ca=b"-----BEGIN CERTIFICATE-----\nnope\n"))
    with pytest.raises(PlanError, match=r"tls\.cert/tls\.key") as ei:
        client_ssl_context(tls, TargetAccess(cert=cert.read_bytes(), key=b"not a key"))
    assert "\n" not in str(ei.value)


def test_local_agents_get_a_fresh_token_each() -> None:
    a, b = LocalAgents(1), LocalAgents(1)
    try:
        assert len(a.token) >= 32 and a.token != b.token
        assert a.security.token == a.token
        assert LocalAgents(1, token="given-token-123").token == "given-token-123"
    finally:
        a._tmp.cleanup()
        b._tmp.cleanup()


async def test_tokenless_agent_says_whom_it_trusts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="volley.agent")
    for token, warned in (("", True), ("a-token-for-this-test", False)):
        caplog.clear()
        server = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, token=token))
        await server.start()
        await server.stop(0.1)
        lines = [
            r.getMessage() for r in caplog.records if "trusts every local user" in r.getMessage()
        ]
        assert len(lines) == int(warned)
