"""A real nginx (Debian's package, `make nginx`) in front of the session's Triton.

One nginx process per test, on free loopback ports, with a configuration written into
the test's temporary folder: a gRPC proxy (`grpc_pass`, HTTP/2 towards the client) and
an HTTP/1.1 proxy (`proxy_pass` with upstream keep-alive), both recycling client
connections after `keepalive_requests` requests, as a stock nginx does (GOAWAY for
HTTP/2, `Connection: close` for HTTP/1.1). Without nginx the test is skipped (failed
where `CI` is set).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import find_free_ports
from tests.triton_fixture import TritonEndpoint, in_ci

#: Requests per client connection before nginx recycles it (nginx's default is 1000).
KEEPALIVE_REQUESTS = 1000
#: The same for the HTTP/1.1 proxy: HTTP/1.1 has one request at a time per connection, so
#: a load of 2,000 req/s spreads over many connections, and each would serve fewer than
#: 1,000 requests in a short test; 10 makes every one of them recycle, however many the
#: pool grew to (a latency spike makes it open more).
HTTP_KEEPALIVE_REQUESTS = 10


@dataclass(frozen=True)
class NginxProxy:
    grpc_url: str  #: "127.0.0.1:PORT": grpc_pass to Triton's gRPC port
    http_url: str  #: "127.0.0.1:PORT": proxy_pass to Triton's HTTP port
    error_log: Path


def config_head(work: Path, worker_connections: int) -> str:
    """An nginx configuration up to the inside of its `http` block: one worker process,
    its files in `work`."""
    temp = "\n".join(
        f"  {kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # as root, nginx's workers would switch to `nobody`, who cannot use the test's folders
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
{temp}
"""


def _config(work: Path, triton: TritonEndpoint, grpc_port: int, http_port: int) -> str:
    return (
        config_head(work, 4096)
        + f"""  client_max_body_size 64m;
  upstream triton_grpc {{ server {triton.grpc_url}; keepalive 16; }}
  upstream triton_http {{ server {triton.http_url}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{grpc_port} http2;
    keepalive_requests {KEEPALIVE_REQUESTS};
    location / {{ grpc_pass grpc://triton_grpc; }}
  }}
  server {{
    listen 127.0.0.1:{http_port};
    keepalive_requests {HTTP_KEEPALIVE_REQUESTS};
    location / {{
      proxy_pass http://triton_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"nginx exited ({proc.returncode}): {text[-2000:]}", pytrace=False)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("nginx did not listen within 10 s", pytrace=False)


def nginx_binary() -> str:
    """Debian's nginx; the test is skipped without it (failed where `CI` is set)."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if binary is None:
        if in_ci():
            pytest.fail("CI is set but nginx is not installed (make nginx)", pytrace=False)
        pytest.skip("nginx is not installed (make nginx)")
    return binary


@contextmanager
def serve_nginx(work: Path, config: str, ports: Sequence[int]) -> Iterator[Path]:
    """nginx with `config` (written into `work`) until the block ends, once it listens on
    every one of `ports`; yields its error log."""
    binary = nginx_binary()
    work.mkdir()
    conf = work / "nginx.conf"
    conf.write_text(config)
    log = work / "error.log"
    proc = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(conf), "-e", str(log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for port in ports:
            _wait_listening(port, proc, log)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


@pytest.fixture
def nginx_proxy(triton_server: TritonEndpoint, tmp_path: Path) -> Iterator[NginxProxy]:
    """nginx proxying gRPC and HTTP to the session's Triton, stopped after the test."""
    nginx_binary()
    work = tmp_path / "nginx"
    grpc_port, http_port = find_free_ports(2)
    config = _config(work, triton_server, grpc_port, http_port)
    with serve_nginx(work, config, (grpc_port, http_port)) as log:
        yield NginxProxy(f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", log)
