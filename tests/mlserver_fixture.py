"""A real MLServer (from PyPI, in its own `.venv-mlserver`, made by `make install`) as a
second KServe v2 implementation: the `add` model of tests/servers/mlserver over gRPC and
HTTP (JSON only: MLServer has neither Triton's binary tensor extension nor
ModelStreamInfer). One server per test module, on free loopback ports. Without the venv
the tests are skipped (failed where `CI` is set).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import find_free_ports
from tests.triton_fixture import REPO_ROOT, in_ci

MLSERVER = REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"
MODELS = REPO_ROOT / "tests" / "servers" / "mlserver"
STARTUP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class MLServerEndpoint:
    grpc_url: str
    http_url: str
    log_path: Path


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/add/ready", timeout=1.0) as r:
            return int(r.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerEndpoint]:
    if not MLSERVER.is_file():
        if in_ci():
            pytest.fail("CI is set but .venv-mlserver is missing (make install)", pytrace=False)
        pytest.skip(".venv-mlserver is missing (make install)")
    work = tmp_path_factory.mktemp("mlserver")
    shutil.copytree(MODELS, work / "models")
    grpc_port, http_port, metrics_port = find_free_ports(3)
    (work / "models" / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,  # inference in the server process: one less hop
                "debug": False,
            }
        )
    )
    log = work / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(work / "models")],
            cwd=work / "models",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    http_url = f"127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ready(http_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"MLServer did not become ready: {tail}", pytrace=False)
            time.sleep(0.2)
        yield MLServerEndpoint(f"127.0.0.1:{grpc_port}", http_url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
