"""Pure tests of coordinator.triton: repository rendering, tritonserver lookup, addresses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from coordinator.triton import (
    ENV_TRITON_HOME,
    TritonConfig,
    TritonServer,
    TritonSetupError,
    TritonState,
    locate_triton_home,
    render_model_repository,
)
from coordinator.triton.home import _REPO_ROOT

SRC = Path(__file__).resolve().parents[2] / "triton_models"
MODELS = [
    "accumulator",
    "accumulator_str",
    "add",
    "bls",
    "image",
    "iris",
    "scale",
    "sleep",
    "tokens",
]
#: ensembles: no instances or batcher of their own, rendered untouched
ENSEMBLES = ["pipeline"]


def load(repo: Path, model: str) -> Any:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((repo / model / "config.pbtxt").read_text(), cfg)
    return cfg


def test_source_repository_is_cpu_single_instance() -> None:
    for model in MODELS:
        cfg = load(SRC, model)
        assert cfg.backend == "python"
        assert [(g.kind, g.count) for g in cfg.instance_group] == [
            (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
        ]
        assert (SRC / model / "1" / "model.py").is_file()
    assert load(SRC, "iris").HasField("dynamic_batching")
    assert not load(SRC, "sleep").HasField("dynamic_batching")


def test_render_gpu_and_instances(tmp_path: Path) -> None:
    before = {m: (SRC / m / "config.pbtxt").read_text() for m in MODELS}
    written = render_model_repository(SRC, tmp_path / "r", device="gpu", instances=2)
    assert sorted(written) == sorted(MODELS + ENSEMBLES)
    for model in ENSEMBLES:
        assert load(tmp_path / "r", model) == load(SRC, model)
    for model in MODELS:
        cfg = load(tmp_path / "r", model)
        assert [(g.kind, g.count) for g in cfg.instance_group] == [
            (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)
        ]
        assert (tmp_path / "r" / model / "1" / "model.py").is_file()
        assert (SRC / model / "config.pbtxt").read_text() == before[model]  # untouched
    # max_pixels parameter and the rest of the config survive the rewrite
    image = load(tmp_path / "r", "image")
    assert image.parameters["max_pixels"].string_value == "16777216"
    assert list(image.input[0].dims) == [-1, -1, 3]


def test_render_keeps_counts_and_switches_back_to_cpu(tmp_path: Path) -> None:
    render_model_repository(SRC, tmp_path / "gpu", device="gpu", instances=3)
    render_model_repository(tmp_path / "gpu", tmp_path / "cpu", device="cpu")
    cfg = load(tmp_path / "cpu", "add")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 3)
    ]


def test_render_dynamic_batching_toggle(tmp_path: Path) -> None:
    render_model_repository(SRC, tmp_path / "off", dynamic_batching=False)
    assert not load(tmp_path / "off", "iris").HasField("dynamic_batching")
    render_model_repository(tmp_path / "off", tmp_path / "on", dynamic_batching=True)
    assert load(tmp_path / "on", "iris").HasField("dynamic_batching")
    # max_batch_size 0 models cannot batch: left alone
    assert not load(tmp_path / "on", "sleep").HasField("dynamic_batching")
    render_model_repository(SRC, tmp_path / "keep", dynamic_batching=None)
    assert load(tmp_path / "keep", "iris").HasField("dynamic_batching")


def test_render_subset_and_errors(tmp_path: Path) -> None:
    assert render_model_repository(SRC, tmp_path / "s", models=["sleep"]) == ["sleep"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sleep"]
    # re-rendering replaces the destination
    render_model_repository(SRC, tmp_path / "s", models=["add"])
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["add"]
    with pytest.raises(TritonSetupError, match="nope"):
        render_model_repository(SRC, tmp_path / "x", models=["nope"])
    with pytest.raises(TritonSetupError, match="not a directory"):
        render_model_repository(tmp_path / "missing", tmp_path / "x")
    with pytest.raises(TritonSetupError, match="instances"):
        render_model_repository(SRC, tmp_path / "x", instances=0)


def test_locate_triton_home_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TritonSetupError, match="--triton-home"):
        locate_triton_home(tmp_path)
    monkeypatch.setenv(ENV_TRITON_HOME, str(tmp_path / "nowhere"))
    with pytest.raises(TritonSetupError, match=ENV_TRITON_HOME):
        locate_triton_home(None)
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "tritonserver").write_text("")
    (fake / "backends").mkdir()
    assert locate_triton_home(fake) == fake.resolve()
    monkeypatch.setenv(ENV_TRITON_HOME, str(fake))
    assert locate_triton_home(None) == fake.resolve()


def test_locate_triton_home_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TRITON_HOME, raising=False)
    home = tmp_path / ".venv-triton/lib/python3.11/site-packages/pytriton/tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").write_text("")
    (home / "backends").mkdir()
    monkeypatch.chdir(tmp_path)
    assert locate_triton_home(None) == home.resolve()


def test_repo_root_holds_the_repository() -> None:
    assert (_REPO_ROOT / "triton_models").is_dir() and (_REPO_ROOT / "pyproject.toml").is_file()


def test_server_and_state_urls_agree() -> None:
    server = TritonServer(
        TritonConfig(http_port=18000, grpc_port=18001, metrics_port=18002, bind_address="0.0.0.0")
    )
    state = TritonState(
        pid=1,
        host=server.host,
        http_port=18000,
        grpc_port=18001,
        metrics_port=18002,
        model_repository="",
        served_repository="",
        models=[],
        log_path="",
        started_at="",
        device="cpu",
        instances=None,
        dynamic_batching=None,
        triton_home="",
    )
    assert server.grpc_url == state.grpc_url == "127.0.0.1:18001"
    assert server.http_url == state.http_url == "127.0.0.1:18000"
    assert server.metrics_url == state.metrics_url == "http://127.0.0.1:18002/metrics"
