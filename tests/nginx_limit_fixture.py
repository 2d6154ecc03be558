"""A real nginx (Debian's package) with few connections: `worker_connections`
WORKER_CONNECTIONS in one worker process, a gRPC proxy (`grpc_pass`) in front of the
session's Triton. nginx counts every connection against it (the listening socket, the
client connections, the upstream ones to Triton), and past it closes what it accepts
("worker_connections are not enough" in its error log)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import find_free_ports
from tests.nginx_fixture import _wait_listening
from tests.triton_fixture import TritonEndpoint, in_ci

WORKER_CONNECTIONS = 64
#: upstream connections nginx keeps to Triton (counted against worker_connections too)
UPSTREAM_KEEPALIVE = 4


@dataclass(frozen=True)
class LimitedNginx:
    grpc_url: str
    error_log: Path
    worker_connections: int


def _config(work: Path, triton: TritonEndpoint, port: int) -> str:
    temp = "\n".join(
        f"  {kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
http {{
  access_log off;
{temp}
  upstream triton_grpc {{ server {triton.grpc_url}; keepalive {UPSTREAM_KEEPALIVE}; }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://triton_grpc; }}
  }}
}}
"""


@pytest.fixture
def nginx_limited(triton_server: TritonEndpoint, tmp_path: Path) -> Iterator[LimitedNginx]:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if binary is None:
        if in_ci():
            pytest.fail("CI is set but nginx is not installed (make nginx)", pytrace=False)
        pytest.skip("nginx is not installed (make nginx)")
    work = tmp_path / "nginx-limited"
    work.mkdir()
    (port,) = find_free_ports(1)
    conf = work / "nginx.conf"
    conf.write_text(_config(work, triton_server, port))
    log = work / "error.log"
    proc = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(conf), "-e", str(log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc, log)
        yield LimitedNginx(f"127.0.0.1:{port}", log, WORKER_CONNECTIONS)
    finally:
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
