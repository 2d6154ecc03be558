"""Session-scoped pytest fixture: one real tritonserver serving ``triton_models/``.

Use from ``tests/conftest.py``::

    from tests.triton_fixture import triton_server  # noqa: F401

The server binds 127.0.0.1 on free ports and is started once per test session
(~2-3 s). Without a tritonserver (see ``coordinator.triton.locate_triton_home``)
tests using it are skipped, unless env ``CI`` is set (``CI=true``), where that is a
failure instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.triton import (
    TritonConfig,
    TritonServer,
    TritonSetupError,
    locate_triton_home,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "triton_models"
STARTUP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class TritonEndpoint:
    """Where the session's tritonserver listens."""

    grpc_url: str  #: "127.0.0.1:PORT" (tritonclient.grpc / volley --target)
    http_url: str  #: "127.0.0.1:PORT" (tritonclient.http)
    metrics_url: str  #: "http://127.0.0.1:PORT/metrics" (Prometheus text)
    model_repository: Path  #: the source repository (triton_models/)
    served_repository: Path  #: the rendered copy the server actually loaded
    pid: int
    log_path: Path
    startup_s: float


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_triton_home() -> Path:
    """The tritonserver dir, or skip the test (fail it under CI) with the reason."""
    try:
        return locate_triton_home(None)
    except TritonSetupError as exc:
        if in_ci():
            pytest.fail(f"CI is set but no tritonserver is available: {exc}", pytrace=False)
        pytest.skip(f"no tritonserver available: {exc}")


class _Shared:
    """One server per test process, even if the fixture is registered more than once
    (e.g. imported by tests/conftest.py and by a test module): refcounted."""

    server: TritonServer | None = None
    endpoint: TritonEndpoint | None = None
    failure: str | None = None
    users = 0


IRIS_ONNX = MODEL_REPOSITORY / "iris" / "1" / "iris.onnx"


def _build_iris_model() -> None:
    """triton_models/iris runs iris.onnx, which `make install` trains; trained here when
    missing (a checkout where only part of `make install` ran), as make would."""
    if IRIS_ONNX.is_file():
        return
    python = REPO_ROOT / ".venv-mlserver" / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{IRIS_ONNX} is missing and so is .venv-mlserver: make install", pytrace=False)
    train = REPO_ROOT / "examples" / "iris_service" / "train.py"
    subprocess.run([str(python), str(train), str(IRIS_ONNX)], check=True, timeout=300)


def _acquire(tmp_path_factory: pytest.TempPathFactory) -> TritonEndpoint:
    if _Shared.failure is not None:
        pytest.fail(_Shared.failure, pytrace=False)
    if _Shared.endpoint is None:
        home = require_triton_home()
        _build_iris_model()
        cfg = TritonConfig(
            model_repository=MODEL_REPOSITORY,
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            device="cpu",
            state_dir=tmp_path_factory.mktemp("triton"),
            triton_home=home,
        )
        server = TritonServer(cfg)
        try:
            server.start(timeout_s=STARTUP_TIMEOUT_S)
        except TritonSetupError as exc:  # start() already killed it; the log stays in tmp
            _Shared.failure = f"tritonserver failed to start: {exc}\n{exc.detail}"
            pytest.fail(_Shared.failure, pytrace=False)
        assert server.pid is not None and server.served_repository is not None
        assert server.log_path is not None and server.startup_s is not None
        _Shared.server = server
        _Shared.endpoint = TritonEndpoint(
            grpc_url=server.grpc_url,
            http_url=server.http_url,
            metrics_url=server.metrics_url,
            model_repository=MODEL_REPOSITORY,
            served_repository=server.served_repository,
            pid=server.pid,
            log_path=server.log_path,
            startup_s=server.startup_s,
        )
    _Shared.users += 1
    return _Shared.endpoint


def _release() -> None:
    _Shared.users -= 1
    if _Shared.users <= 0 and _Shared.server is not None:
        server, _Shared.server, _Shared.endpoint = _Shared.server, None, None
        server.stop()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoint]:
    """ONE tritonserver with ``triton_models/`` on free loopback ports, for the session."""
    endpoint = _acquire(tmp_path_factory)
    try:
        yield endpoint
    finally:
        _release()


@pytest.fixture(scope="session")
def triton_sleep_x2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A second tritonserver serving only `sleep`, with 2 instances, for the session:
    the compare test (1 vs 2 instances) and the sweep's scaling check both measure it
    (the sleep model keeps no state; each run reads its own window of the statistics),
    so it starts once, not once per test."""
    cfg = TritonConfig(
        model_repository=MODEL_REPOSITORY,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        instances=2,
        models=["sleep"],
        state_dir=tmp_path_factory.mktemp("triton2"),
        triton_home=require_triton_home(),
    )
    server = TritonServer(cfg)
    server.start(timeout_s=STARTUP_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()
