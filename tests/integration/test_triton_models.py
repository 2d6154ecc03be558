"""Real-server tests of triton_models/ and of `volley triton start|status|stop`.

Needs a tritonserver (see tests/triton_fixture.py): skipped without one, failed under CI.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from coordinator.triton import stop_daemon
from tests.triton_fixture import (
    MODEL_REPOSITORY,
    TritonEndpoint,
    require_triton_home,
    triton_server,
)
from volley.cli.triton import triton_app

# The fixture is imported so this module works with or without tests/conftest.py
# importing it too; either way the test process starts only one server (refcounted).
__all__ = ["triton_server"]

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def client(triton_server: TritonEndpoint) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield c
    c.close()


def _input(name: str, data: np.ndarray, dtype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(data.shape), dtype)
    inp.set_data_from_numpy(data)
    return inp


def test_server_and_models_ready(
    triton_server: TritonEndpoint, client: grpcclient.InferenceServerClient
) -> None:
    assert client.is_server_ready()
    for model in ("add", "sleep", "iris", "image"):
        assert client.is_model_ready(model), model
    assert triton_server.grpc_url.startswith("127.0.0.1:")
    assert triton_server.model_repository == MODEL_REPOSITORY


def test_add_sums(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.float32)
    b = np.full(16, 0.5, dtype=np.float32)
    result = client.infer("add", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")])
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == np.float32 and out.shape == (16,)
    np.testing.assert_array_equal(out, a + b)


def test_sleep_takes_the_delay(client: grpcclient.InferenceServerClient) -> None:
    delay_ms = 20.0
    inp = _input("DELAY_MS", np.array([delay_ms], dtype=np.float32), "FP32")
    client.infer("sleep", [inp])  # warm-up
    latencies = []
    for _ in range(7):
        t0 = time.perf_counter()
        result = client.infer("sleep", [inp])
        latencies.append((time.perf_counter() - t0) * 1000.0)
    np.testing.assert_array_equal(result.as_numpy("OUT"), [delay_ms])
    p50 = statistics.median(latencies)
    assert delay_ms - 0.5 <= p50 <= delay_ms + 15.0, latencies


def test_sleep_rejects_bad_delay(client: grpcclient.InferenceServerClient) -> None:
    inp = _input("DELAY_MS", np.array([-1.0], dtype=np.float32), "FP32")
    with pytest.raises(InferenceServerException, match="DELAY_MS"):
        client.infer("sleep", [inp])


def test_iris_batch_probabilities(client: grpcclient.InferenceServerClient) -> None:
    x = np.array(
        [
            [5.1, 3.5, 1.4, 0.2],  # setosa
            [4.9, 3.0, 1.4, 0.2],  # setosa
            [7.0, 3.2, 4.7, 1.4],  # versicolor
            [5.7, 2.8, 4.1, 1.3],  # versicolor
            [6.3, 3.3, 6.0, 2.5],  # virginica
            [6.5, 3.0, 5.8, 2.2],  # virginica
        ],
        dtype=np.float32,
    )
    probs = client.infer("iris", [_input("INPUT", x, "FP32")]).as_numpy("PROBABILITIES")
    assert probs.shape == (6, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    assert list(probs.argmax(axis=1)) == [0, 0, 1, 1, 2, 2]
    # a batch of one gives the same answer as inside the batch (to float32 rounding:
    # onnxruntime's batched kernels sum in another order)
    one = client.infer("iris", [_input("INPUT", x[4:5], "FP32")]).as_numpy("PROBABILITIES")
    np.testing.assert_allclose(one[0], probs[4], rtol=1e-5, atol=1e-7)


def test_image_variable_resolutions(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(0)
    outs = []
    for shape in [(48, 80, 3), (720, 1280, 3)]:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        logits = client.infer("image", [_input("IMAGE", img, "UINT8")]).as_numpy("LOGITS")
        assert logits.shape == (10,) and logits.dtype == np.float32
        assert np.isfinite(logits).all()
        outs.append(logits)
        again = client.infer("image", [_input("IMAGE", img, "UINT8")]).as_numpy("LOGITS")
        np.testing.assert_array_equal(again, logits)  # fixed weights: deterministic
    assert not np.array_equal(outs[0], outs[1])


def test_image_rejects_oversized(client: grpcclient.InferenceServerClient) -> None:
    img = np.zeros((4097, 4096, 3), dtype=np.uint8)  # 16,781,312 px > 16,777,216
    with pytest.raises(InferenceServerException, match="max_pixels"):
        client.infer("image", [_input("IMAGE", img, "UINT8")])
    # the model still serves normal images afterwards
    ok = np.zeros((32, 32, 3), dtype=np.uint8)
    assert client.infer("image", [_input("IMAGE", ok, "UINT8")]).as_numpy("LOGITS").shape == (10,)


def test_metrics_endpoint(triton_server: TritonEndpoint) -> None:
    import urllib.request

    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as resp:
        assert b"nv_inference_request_success" in resp.read()


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_start_status_stop(tmp_path: Path) -> None:
    require_triton_home()
    state_dir = tmp_path / "state"
    common = ["--state-dir", str(state_dir)]
    grpc_port = _free_port()
    start = [
        "start",
        "--model-repository",
        str(MODEL_REPOSITORY),
        "--http-port",
        "0",
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        "0",
        "--model",
        "add",
        "--model",
        "iris",
        "--instances",
        "2",
        "--no-dynamic-batching",
        *common,
    ]
    try:
        res = runner.invoke(triton_app, start)
        assert res.exit_code == 0, res.output
        assert f"127.0.0.1:{grpc_port}" in res.output
        assert "iris" in res.output and "READY" in res.output
        assert (state_dir / "state.json").is_file()

        res = runner.invoke(triton_app, ["status", *common])
        assert res.exit_code == 0, res.output
        assert "ready" in res.output and f"127.0.0.1:{grpc_port}" in res.output
        assert "add" in res.output and "READY" in res.output

        rendered = (state_dir / "models" / "iris" / "config.pbtxt").read_text()
        assert "count: 2" in rendered and "dynamic_batching" not in rendered.split("\n", 2)[2]

        c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert c.is_model_ready("add") and not c.is_model_ready("sleep")
        c.close()

        res = runner.invoke(triton_app, start)  # second start: one-line error, exit 2
        assert res.exit_code == 2
        assert "already running" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        res = runner.invoke(triton_app, ["stop", *common])
        stop_daemon(state_dir)  # no-op when the CLI already stopped it
    assert res.exit_code == 0, res.output
    assert "stopped" in res.output
    assert not (state_dir / "state.json").exists()

    res = runner.invoke(triton_app, ["status", *common])
    assert res.exit_code == 1 and "not started" in res.output
    res = runner.invoke(triton_app, ["stop", *common])
    assert res.exit_code == 0 and "not running" in res.output


def test_cli_bad_model_repository(tmp_path: Path) -> None:
    res = runner.invoke(
        triton_app,
        ["start", "--model-repository", str(tmp_path / "nope"), "--state-dir", str(tmp_path)],
    )
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and lines[0].startswith("volley: error:")
    assert "Traceback" not in res.output


def test_cli_start_failure_is_one_line(tmp_path: Path) -> None:
    require_triton_home()
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (broken / "1" / "model.py").write_text("raise RuntimeError('boom in model.py')\n")
    args = ["start", "--model-repository", str(tmp_path / "repo"), "--state-dir", str(tmp_path)]
    args += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    res = runner.invoke(triton_app, args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "boom in model.py" in lines[0], res.stderr
    assert not (tmp_path / "state.json").exists()


def test_cli_bad_triton_home_and_device(tmp_path: Path) -> None:
    res = runner.invoke(
        triton_app,
        [
            "start",
            "--model-repository",
            str(MODEL_REPOSITORY),
            "--triton-home",
            str(tmp_path),
            "--state-dir",
            str(tmp_path / "s"),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
    )
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--triton-home" in res.stderr
    res = runner.invoke(triton_app, ["start", "--device", "tpu", "--state-dir", str(tmp_path)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_cli_help() -> None:
    for args in (["--help"], ["start", "--help"], ["status", "--help"], ["stop", "--help"]):
        res = runner.invoke(triton_app, args)
        assert res.exit_code == 0 and "Usage" in res.output
    assert "--dynamic-batching" in runner.invoke(triton_app, ["start", "--help"]).output
