"""A real nginx (Debian's package) with few connections: `worker_connections`
WORKER_CONNECTIONS in one worker process, a gRPC proxy (`grpc_pass`) in front of the
session's Triton. nginx counts every connection against it (the listening socket, the
client connections, the upstream ones to Triton), and past it closes what it accepts
("worker_connections are not enough" in its error log)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import find_free_ports
from tests.nginx_fixture import config_head, nginx_binary, serve_nginx
from tests.triton_fixture import TritonEndpoint

WORKER_CONNECTIONS = 64
#: upstream connections nginx keeps to Triton (counted against worker_connections too)
UPSTREAM_KEEPALIVE = 4


@dataclass(frozen=True)
class LimitedNginx:
    grpc_url: str
    error_log: Path
    worker_connections: int


def _config(work: Path, triton: TritonEndpoint, port: int) -> str:
    return (
        config_head(work, WORKER_CONNECTIONS)
        + f"""  upstream triton_grpc {{
    server {triton.grpc_url};
    keepalive {UPSTREAM_KEEPALIVE};
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://triton_grpc; }}
  }}
}}
"""
    )


@pytest.fixture
def nginx_limited(triton_server: TritonEndpoint, tmp_path: Path) -> Iterator[LimitedNginx]:
    nginx_binary()
    work = tmp_path / "nginx-limited"
    (port,) = find_free_ports(1)
    with serve_nginx(work, _config(work, triton_server, port), (port,)) as log:
        yield LimitedNginx(f"127.0.0.1:{port}", log, WORKER_CONNECTIONS)
