"""Render a model repository for one server: configs rewritten for cpu/gpu, instances,
dynamic batching."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from coordinator.triton.config import Device, TritonSetupError


def _model_dirs(src: Path) -> list[Path]:
    return sorted(
        p
        for p in src.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != "__pycache__"
    )


def render_model_repository(
    src: Path,
    dst: Path,
    device: Device = "cpu",
    instances: int | None = None,
    dynamic_batching: bool | None = None,
    models: list[str] | None = None,
) -> list[str]:
    """Copy model repository ``src`` to ``dst`` (replacing it) and rewrite every
    ``config.pbtxt``; returns the names of the models written.

    * every ``instance_group`` gets ``kind`` KIND_CPU/KIND_GPU (``gpus`` is dropped for
      CPU); with ``instances`` set, the groups are replaced by one group of that count;
    * ``dynamic_batching=True`` adds ``dynamic_batching {}`` to models that can batch
      (``max_batch_size > 0``, no sequence batcher), ``False`` removes it, ``None``
      leaves it as written.
    """
    from tritonclient.grpc import model_config_pb2  # heavy import, keep it lazy

    src = Path(src)
    dst = Path(dst)
    if device not in ("cpu", "gpu"):
        raise TritonSetupError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if instances is not None and instances < 1:
        raise TritonSetupError(f"instances must be >= 1, got {instances}")
    if not src.is_dir():
        raise TritonSetupError(f"model repository {src} is not a directory")
    available = {p.name: p for p in _model_dirs(src)}
    if models is not None:
        missing = [m for m in models if m not in available]
        if missing:
            raise TritonSetupError(
                f"model(s) {', '.join(missing)} not in {src} "
                f"(has: {', '.join(sorted(available)) or 'nothing'})"
            )
        chosen = [available[m] for m in models]
    else:
        chosen = list(available.values())
    if not chosen:
        raise TritonSetupError(f"model repository {src} holds no model directories")
    if dst.resolve() == src.resolve():
        raise TritonSetupError(f"refusing to render {src} onto itself")

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    kind = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if device == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    written: list[str] = []
    for model_dir in chosen:
        out = dst / model_dir.name
        shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cfg_path = out / "config.pbtxt"
        written.append(model_dir.name)
        if not cfg_path.is_file():
            continue  # Triton may auto-complete it; nothing to rewrite
        cfg: Any = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(cfg_path.read_text(), cfg)
        except text_format.ParseError as exc:
            raise TritonSetupError(f"cannot parse {model_dir / 'config.pbtxt'}: {exc}") from exc
        if cfg.platform == "ensemble":
            continue  # no instances or batcher of its own: its steps have them
        if instances is not None:
            del cfg.instance_group[:]
            cfg.instance_group.add(count=instances, kind=kind)
        else:
            if not cfg.instance_group:
                cfg.instance_group.add(count=1)
            for group in cfg.instance_group:
                group.kind = kind
                if device == "cpu":
                    del group.gpus[:]
        if dynamic_batching is True:
            scheduling = cfg.WhichOneof("scheduling_choice")
            if cfg.max_batch_size > 0 and scheduling is None:
                cfg.dynamic_batching.SetInParent()
        elif dynamic_batching is False and cfg.HasField("dynamic_batching"):
            cfg.ClearField("dynamic_batching")
        header = (
            f"# Rendered by volley from {model_dir / 'config.pbtxt'} "
            f"(device={device}, instances={instances}, dynamic_batching={dynamic_batching}).\n"
            "# Do not edit: edit the source and re-render.\n"
        )
        cfg_path.write_text(header + text_format.MessageToString(cfg))
    return written
