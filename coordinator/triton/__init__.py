"""Manage a local NVIDIA Triton Inference Server (``tritonserver``) process.

Two ways to use it:

* :class:`TritonServer` — a subprocess owned by the caller (tests, benchmarks):
  ``with TritonServer(TritonConfig(http_port=0, grpc_port=0, metrics_port=0)) as s: ...``
* :func:`start_daemon` / :func:`status` / :func:`stop_daemon` — a server that outlives
  the CLI invocation that started it, tracked by ``<state_dir>/state.json``
  (``volley triton start|status|stop``).

The server binary comes from the ``nvidia-pytriton`` wheel (``pytriton/tritonserver``),
found by :func:`locate_triton_home`. Models are never served from the source
repository directly: :func:`render_model_repository` copies it and rewrites each
``config.pbtxt`` (instance kind and count, dynamic batching), which is how CPU vs GPU
variants and instance counts are chosen without hand edits.

Everything listens on loopback only (``127.0.0.1``) unless ``TritonConfig.bind_address``
says otherwise.

Modules: ``config`` (TritonConfig, TritonSetupError, file names), ``home`` (finding
tritonserver, the python backend stub), ``repository`` (rendering), ``process``
(TritonServer), ``daemon`` (state.json, start/status/stop).
"""

from coordinator.triton.config import (
    DEFAULT_STATE_DIR,
    ENV_TRITON_HOME,
    LOG_FILE,
    RENDERED_DIR,
    STATE_FILE,
    Device,
    TritonConfig,
    TritonSetupError,
)
from coordinator.triton.daemon import (
    ModelState,
    TritonState,
    TritonStatus,
    start_daemon,
    status,
    stop_daemon,
)
from coordinator.triton.home import TRITON_HOME_GLOB, locate_triton_home
from coordinator.triton.process import ServerURLs, TritonServer, find_free_ports
from coordinator.triton.repository import render_model_repository

__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_TRITON_HOME",
    "LOG_FILE",
    "RENDERED_DIR",
    "STATE_FILE",
    "TRITON_HOME_GLOB",
    "Device",
    "ModelState",
    "ServerURLs",
    "TritonConfig",
    "TritonServer",
    "TritonSetupError",
    "TritonState",
    "TritonStatus",
    "find_free_ports",
    "locate_triton_home",
    "render_model_repository",
    "start_daemon",
    "status",
    "stop_daemon",
]
