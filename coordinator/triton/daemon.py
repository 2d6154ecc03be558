"""A tritonserver that outlives the CLI call that started it, tracked by state.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.triton.config import (
    DEFAULT_STATE_DIR,
    LOG_FILE,
    RENDERED_DIR,
    STATE_FILE,
    TritonConfig,
    TritonSetupError,
)
from coordinator.triton.process import (
    ServerURLs,
    TritonServer,
    http_post_json,
    pid_alive,
    pid_is_tritonserver,
    probe_ready,
    terminate,
)

#: daemons started by this process: reaped by stop_daemon so they do not linger as
#: zombies (and their Popen objects are not garbage-collected while running).
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class TritonState(ServerURLs):
    """Contents of ``<state_dir>/state.json`` for a server started by :func:`start_daemon`."""

    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: str
    served_repository: str
    models: list[str]
    log_path: str
    started_at: str
    device: str
    instances: int | None
    dynamic_batching: bool | None
    triton_home: str
    startup_s: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TritonState:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ModelState:
    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class TritonStatus:
    running: bool
    ready: bool
    state: TritonState | None
    models: list[ModelState] = field(default_factory=list)
    #: why not running / not queryable, for humans ("" when all is well)
    message: str = ""


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _read_state(state_dir: Path) -> TritonState | None:
    path = _state_path(state_dir)
    if not path.is_file():
        return None
    try:
        return TritonState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise TritonSetupError(f"unreadable state file {path}: {exc}") from exc


def _write_state(state_dir: Path, state: TritonState) -> None:
    path = _state_path(state_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def _state_alive(state: TritonState) -> bool:
    return pid_alive(state.pid) and pid_is_tritonserver(state.pid)


def start_daemon(cfg: TritonConfig, timeout_s: float = 60.0) -> TritonState:
    """Start a tritonserver that outlives this process; record it in
    ``<cfg.state_dir>/state.json``. Fails if one is already running for that state dir."""
    state_dir = Path(cfg.state_dir)
    existing = _read_state(state_dir)
    if existing is not None and _state_alive(existing):
        raise TritonSetupError(
            f"tritonserver already running (pid {existing.pid}, grpc {existing.grpc_url}, "
            f"http {existing.http_url}); run `volley triton stop` first"
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TritonSetupError(f"cannot create state dir {state_dir}: {exc}") from exc
    _state_path(state_dir).unlink(missing_ok=True)
    if cfg.log_path is None:
        log = state_dir / LOG_FILE
        log.unlink(missing_ok=True)
        cfg = replace(cfg, log_path=log)
    server = TritonServer(cfg, work_dir=state_dir)
    server.start(timeout_s)
    proc = server.detach()
    _DETACHED[proc.pid] = proc
    assert server.triton_home is not None and server.log_path is not None
    state = TritonState(
        pid=proc.pid,
        host=server.host,
        http_port=server.http_port,
        grpc_port=server.grpc_port,
        metrics_port=server.metrics_port,
        model_repository=str(Path(cfg.model_repository).resolve()),
        served_repository=str((state_dir / RENDERED_DIR).resolve()),
        models=server.models,
        log_path=str(server.log_path.resolve()),
        started_at=server.started_at or "",
        device=cfg.device,
        instances=cfg.instances,
        dynamic_batching=cfg.dynamic_batching,
        triton_home=str(server.triton_home),
        startup_s=round(server.startup_s, 3) if server.startup_s is not None else None,
    )
    try:
        _write_state(state_dir, state)
    except OSError as exc:
        terminate(proc.pid, _DETACHED.pop(proc.pid), 10.0)
        raise TritonSetupError(f"cannot write {_state_path(state_dir)}: {exc}") from exc
    return state


def status(state_dir: Path = DEFAULT_STATE_DIR) -> TritonStatus:
    """Is the server recorded in ``state_dir`` running and ready, and its models' states
    (from POST /v2/repository/index)."""
    state = _read_state(Path(state_dir))
    if state is None:
        return TritonStatus(
            False, False, None, message=f"not started (no {STATE_FILE} in {state_dir})"
        )
    if not _state_alive(state):
        return TritonStatus(
            False,
            False,
            state,
            message=f"not running (pid {state.pid} has exited; see {state.log_path})",
        )
    ready = probe_ready(state.host, state.http_port)
    models: list[ModelState] = []
    message = "" if ready else "running but not ready"
    try:
        index = http_post_json(f"http://{state.host}:{state.http_port}/v2/repository/index", {})
        for entry in index or []:
            models.append(
                ModelState(
                    name=str(entry.get("name", "")),
                    version=str(entry.get("version", "")),
                    state=str(entry.get("state", "UNKNOWN")),
                    reason=str(entry.get("reason", "")),
                )
            )
    except (OSError, ValueError) as exc:
        message = f"running but repository index failed: {exc}"
    return TritonStatus(True, ready, state, models, message)


def stop_daemon(state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = 10.0) -> bool:
    """Stop the server recorded in ``state_dir`` (SIGTERM, SIGKILL after ``timeout_s``)
    and remove its state and rendered models. Returns False if none was running."""
    state_dir = Path(state_dir)
    state = _read_state(state_dir)
    if state is None:
        return False
    was_running = _state_alive(state)
    if was_running:
        terminate(state.pid, _DETACHED.pop(state.pid, None), timeout_s)
        if pid_alive(state.pid):
            raise TritonSetupError(f"could not stop tritonserver pid {state.pid}")
    else:
        proc = _DETACHED.pop(state.pid, None)
        if proc is not None:
            proc.poll()
    _state_path(state_dir).unlink(missing_ok=True)
    served = Path(state.served_repository)
    if served.name == RENDERED_DIR and served.parent.resolve() == state_dir.resolve():
        shutil.rmtree(served, ignore_errors=True)
    return was_running
