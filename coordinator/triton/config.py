"""Settings of one local tritonserver, file names, and the one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Device = Literal["cpu", "gpu"]

ENV_TRITON_HOME = "VOLLEY_TRITON_HOME"
DEFAULT_STATE_DIR = Path(".volley/triton")
STATE_FILE = "state.json"
LOG_FILE = "tritonserver.log"
RENDERED_DIR = "models"


class TritonSetupError(Exception):
    """Anything that stops a local tritonserver from being found, started, queried or
    stopped. ``str(exc)`` is one human-readable line; ``detail`` may hold a log excerpt."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class TritonConfig:
    """How to run one local tritonserver. Port 0 means "pick a free port"."""

    model_repository: Path = Path("triton_models")
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    device: Device = "cpu"
    #: instance count per model (one instance_group); None keeps each config's own.
    instances: int | None = None
    #: True adds dynamic batching to models with max_batch_size > 0, False removes it,
    #: None keeps each config's own.
    dynamic_batching: bool | None = None
    #: serve only these models (None: every model in the repository).
    models: list[str] | None = None
    #: tritonserver stdout+stderr; default: inside the server's work/state dir.
    log_path: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    triton_home: Path | None = None
    bind_address: str = "127.0.0.1"
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
