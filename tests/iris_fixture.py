"""The seed's plain JSON prediction service: FastAPI + uvicorn serving the iris ONNX model
(examples/iris_service: trained from scikit-learn's bundled iris data, exported with
skl2onnx, run by onnxruntime), from `.venv-mlserver`. The model is `make install`'s
triton_models/iris/1/iris.onnx, or trained here into the test's folder. One server per
test module."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import find_free_ports
from tests.triton_fixture import REPO_ROOT, in_ci

VENV = REPO_ROOT / ".venv-mlserver" / "bin"
SERVICE = REPO_ROOT / "examples" / "iris_service"
BUILT = REPO_ROOT / "triton_models" / "iris" / "1" / "iris.onnx"


@dataclass(frozen=True)
class IrisService:
    url: str  #: "127.0.0.1:PORT"
    model: Path


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/health", timeout=1.0) as r:
            return int(r.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def iris_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrisService]:
    if not (VENV / "uvicorn").is_file():
        if in_ci():
            pytest.fail("CI is set but .venv-mlserver is missing (make install)", pytrace=False)
        pytest.skip(".venv-mlserver is missing (make install)")
    work = tmp_path_factory.mktemp("iris")
    model = BUILT
    if not model.is_file():
        model = work / "iris.onnx"
        subprocess.run(
            [str(VENV / "python"), str(SERVICE / "train.py"), str(model)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    (port,) = find_free_ports(1)
    log = work / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(VENV / "uvicorn"),
                "--app-dir",
                str(SERVICE),
                "app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env={**os.environ, "IRIS_MODEL": str(model)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60.0
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"the iris service did not start: {tail}", pytrace=False)
            time.sleep(0.1)
        yield IrisService(url, model)
    finally:
        proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
