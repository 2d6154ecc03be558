"""Control-plane security: token auth (UNAUTHENTICATED, logged), TLS and mutual TLS,
loopback-only without authentication, token handling, `volley certs`."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.server import AgentServer
from coordinator.agents import AgentClient, AgentError
from tests.agent_thread import agent_in_thread
from volley.certs import CertError, generate_fleet
from volley.cli import app
from volley.security import (
    ClientSecurity,
    SecurityError,
    ServerTLS,
    check_listen,
    is_loopback_host,
    load_client_security,
    load_server_tls,
    read_token,
    token_ok,
)
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION

TOKEN = "s3cret-token-for-tests-0123456789"


def test_loopback_detection() -> None:
    for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback_host(h), h
    for h in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.1", "no-such-host.invalid"):
        assert not is_loopback_host(h), h


def test_non_loopback_listen_needs_token_or_mtls(tmp_path: Path) -> None:
    check_listen("127.0.0.1", "", None)
    with pytest.raises(SecurityError, match="not loopback"):
        check_listen("0.0.0.0", "", None)
    check_listen("0.0.0.0", TOKEN, None)
    paths = generate_fleet(tmp_path, ["agent.test"])
    server_only = load_server_tls(str(paths["agent.pem"]), str(paths["agent.key"]), None)
    with pytest.raises(SecurityError):  # TLS without client certs authenticates nobody
        check_listen("0.0.0.0", "", server_only)
    mutual = load_server_tls(str(paths["agent.pem"]), str(paths["agent.key"]), str(paths["ca.pem"]))
    assert mutual is not None and mutual.mutual
    check_listen("0.0.0.0", "", mutual)
    with pytest.raises(SecurityError):
        AgentServer(AgentConfig(listen="0.0.0.0:0"))


def test_read_token(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    assert read_token(str(f), env={}) == TOKEN
    assert read_token(None, env={"VOLLEY_TOKEN": TOKEN}) == TOKEN
    assert read_token(None, env={}) == ""
    for bad in ("", "short", "has space inside!", "tab\there-long-enough"):
        f.write_text(bad)
        with pytest.raises(SecurityError):
            read_token(str(f), env={})
    f.write_bytes("ünïcode-token-long".encode())
    with pytest.raises(SecurityError, match="ASCII"):
        read_token(str(f), env={})
    with pytest.raises(SecurityError, match="missing"):
        read_token(str(tmp_path / "missing"), env={})


def test_token_compare() -> None:
    assert token_ok([("authorization", f"Bearer {TOKEN}")], TOKEN) == (True, "")
    assert token_ok([], TOKEN) == (False, "no token")
    assert token_ok([("authorization", "Bearer nope")], TOKEN) == (False, "wrong token")
    assert not token_ok([("authorization", TOKEN)], TOKEN)[0]
    assert not token_ok([("authorization", f"Bearer {TOKEN}x")], TOKEN)[0]


def test_token_auth_end_to_end(caplog: pytest.LogCaptureFixture) -> None:
    cfg = AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="auth", token=TOKEN)
    caplog.set_level(logging.WARNING, logger="volley.agent.auth")
    with agent_in_thread(cfg) as server:
        addr = f"127.0.0.1:{server.port}"
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.AgentControlStub(ch)
            hello = pb.HelloRequest(protocol_version=PROTOCOL_VERSION)
            for md in ((), (("authorization", "Bearer wrong-token-123"),)):
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Hello(hello, metadata=md, timeout=5)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # a streaming method is refused too, before anything is parsed or started
            with pytest.raises(grpc.RpcError) as ei:
                list(stub.Run(pb.RunRequest(run_id="x", plan_json="{}"), timeout=5))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                list(stub.Collect(pb.CollectRequest(run_id="x"), timeout=5))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Hello(hello, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
            assert ok.agent_id == "auth"
        assert server.auth is not None and server.auth.refused == 4
    assert any("refused unauthenticated call" in r.getMessage() for r in caplog.records)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)  # never logged


async def test_coordinator_client_token_errors_are_one_line() -> None:
    cfg = AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="auth2", token=TOKEN)
    server = AgentServer(cfg)
    await server.start()
    try:
        addr = f"127.0.0.1:{server.port}"
        for sec in (ClientSecurity(), ClientSecurity(token="wrong-token-123")):
            client = AgentClient(addr, 3.0, sec)
            with pytest.raises(AgentError) as ei:
                await client.hello()
            await client.close()
            assert "authentication refused" in str(ei.value)
            assert "\n" not in str(ei.value)
        client = AgentClient(addr, 3.0, ClientSecurity(token=TOKEN))
        assert (await client.hello()).agent_id == "auth2"
        await client.close()
    finally:
        await server.stop(0.5)


async def test_mutual_tls(tmp_path: Path) -> None:
    good = generate_fleet(tmp_path / "good", ["agent.test"])
    other = generate_fleet(tmp_path / "other", ["agent.test"])
    tls = ServerTLS(
        good["agent.pem"].read_bytes(),
        good["agent.key"].read_bytes(),
        good["ca.pem"].read_bytes(),
    )
    server = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="tls", tls=tls))
    await server.start()
    addr = f"127.0.0.1:{server.port}"
    try:
        right = load_client_security(
            None, str(good["ca.pem"]), str(good["client.pem"]), str(good["client.key"]), env={}
        )
        client = AgentClient(addr, 3.0, right)
        assert (await client.hello()).agent_id == "tls"
        await client.close()
        wrong_client_cert = load_client_security(
            None, str(good["ca.pem"]), str(other["client.pem"]), str(other["client.key"]), env={}
        )
        no_client_cert = load_client_security(None, str(good["ca.pem"]), None, None, env={})
        wrong_ca = load_client_security(
            None, str(other["ca.pem"]), str(good["client.pem"]), str(good["client.key"]), env={}
        )
        plaintext = ClientSecurity()
        for sec in (wrong_client_cert, no_client_cert, wrong_ca, plaintext):
            client = AgentClient(addr, 1.5, sec)
            with pytest.raises(AgentError) as ei:
                await client.hello()
            await client.close()
            assert "\n" not in str(ei.value)
    finally:
        await server.stop(0.5)


def test_client_security_options(tmp_path: Path) -> None:
    paths = generate_fleet(tmp_path, [])
    with pytest.raises(SecurityError, match="--agent-tls-ca"):
        load_client_security(None, None, str(paths["client.pem"]), str(paths["client.key"]))
    with pytest.raises(SecurityError, match="both"):
        load_client_security(None, str(paths["ca.pem"]), str(paths["client.pem"]), None)
    with pytest.raises(SecurityError, match="PEM"):
        load_client_security(None, str(paths["token"]), None, None)
    with pytest.raises(SecurityError, match="--tls-client-ca"):
        load_server_tls(None, None, str(paths["ca.pem"]))


def test_certs_files_and_permissions(tmp_path: Path) -> None:
    from cryptography import x509

    paths = generate_fleet(tmp_path, ["agent-1.example", "10.1.2.3"], days=2)
    for name, p in paths.items():
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") or name == "token" else 0o644), name
    cert = x509.load_pem_x509_certificate(paths["agent.pem"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "agent-1.example" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} >= {"10.1.2.3", "127.0.0.1"}
    with pytest.raises(CertError, match="already"):
        generate_fleet(tmp_path, [])
    generate_fleet(tmp_path, [], force=True)
    with pytest.raises(CertError):
        generate_fleet(tmp_path / "x", ["bad host"])


def test_cli_agent_refusals_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    token = tmp_path / "token"
    token.write_text("short")
    cases = [
        (["--listen", "0.0.0.0:0"], "without authentication"),
        (["--listen", "127.0.0.1:0", "--token-file", str(tmp_path / "nope")], "--token-file"),
        (["--listen", "127.0.0.1:0", "--token-file", str(token)], "shorter"),
        (["--listen", "127.0.0.1:0", "--tls-cert", str(token)], "--tls-key"),
        (["--listen", "127.0.0.1:0", "--coordinator-grace", "0"], "grace"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, ["agent", *args], env={"VOLLEY_TOKEN": ""})
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert res.output.strip().count("\n") == 0, res.output


def test_cli_certs(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["certs", "--out", str(tmp_path), "--host", "10.0.0.7"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ca.pem").exists() and (tmp_path / "token").exists()
    res = CliRunner().invoke(app, ["certs", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "already" in res.output


def _server_settings(port: int) -> dict[int, int]:
    """The agent's HTTP/2 SETTINGS, read off a raw connection (no gRPC client)."""
    import socket
    import struct

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = b""
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = s.recv(4096)
            assert chunk, "connection closed before SETTINGS"
            data += chunk
    length, kind = int.from_bytes(data[:3], "big"), data[3]
    assert kind == 4  # the server's first frame is its SETTINGS
    body = data[9 : 9 + length]
    return dict(struct.unpack(">HI", body[i : i + 6]) for i in range(0, len(body), 6))


def test_an_agent_caps_streams_per_connection() -> None:
    """However many calls an unauthenticated client opens on one connection, the agent
    lets it hold at most MAX_STREAMS_PER_CONNECTION at once (HTTP/2 SETTINGS 0x3)."""
    from agent.server import MAX_STREAMS_PER_CONNECTION

    cfg = AgentConfig(listen="127.0.0.1:0", workers=1, token="a-token-for-this-test")
    with agent_in_thread(cfg) as server:
        settings = _server_settings(server.port)
    assert settings.get(3) == MAX_STREAMS_PER_CONNECTION == 16, settings
