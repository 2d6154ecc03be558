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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from google.protobuf import text_format

__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_TRITON_HOME",
    "Device",
    "ModelState",
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

Device = Literal["cpu", "gpu"]

ENV_TRITON_HOME = "VOLLEY_TRITON_HOME"
DEFAULT_STATE_DIR = Path(".volley/triton")
TRITON_HOME_GLOB = ".venv-triton/lib/python3*/site-packages/pytriton/tritonserver"
STATE_FILE = "state.json"
LOG_FILE = "tritonserver.log"
RENDERED_DIR = "models"
_STUB = "triton_python_backend_stub"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_PORT_RETRIES = 3


class TritonSetupError(Exception):
    """Anything that stops a local tritonserver from being found, started, queried or
    stopped. ``str(exc)`` is one human-readable line; ``detail`` may hold a log excerpt."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


# --------------------------------------------------------------------------- locate


def _is_triton_home(path: Path) -> bool:
    return (path / "bin" / "tritonserver").is_file() and (path / "backends").is_dir()


def locate_triton_home(explicit: Path | None = None) -> Path:
    """Return the ``tritonserver`` directory (holding ``bin/tritonserver`` and ``backends/``).

    Order: ``explicit`` (``--triton-home``), env ``VOLLEY_TRITON_HOME``, then
    ``.venv-triton/lib/python3*/site-packages/pytriton/tritonserver`` under the current
    directory and under the repository root. Raises :class:`TritonSetupError`.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if _is_triton_home(path):
            return path.resolve()
        raise TritonSetupError(
            f"--triton-home {path} is not a tritonserver directory "
            "(expected bin/tritonserver and backends/ inside it)"
        )
    env = os.environ.get(ENV_TRITON_HOME)
    if env:
        path = Path(env).expanduser()
        if _is_triton_home(path):
            return path.resolve()
        raise TritonSetupError(
            f"{ENV_TRITON_HOME}={env} is not a tritonserver directory "
            "(expected bin/tritonserver and backends/ inside it)"
        )
    roots: list[Path] = []
    for root in (Path.cwd(), _REPO_ROOT):
        if root.resolve() not in roots:
            roots.append(root.resolve())
    for root in roots:
        for candidate in sorted(root.glob(TRITON_HOME_GLOB), reverse=True):
            if _is_triton_home(candidate):
                return candidate.resolve()
    looked = ", ".join(str(r / TRITON_HOME_GLOB) for r in roots)
    raise TritonSetupError(
        f"no tritonserver found (looked in {looked}); run `make` to create .venv-triton "
        f"(pip install nvidia-pytriton), or point {ENV_TRITON_HOME} / --triton-home at "
        "the pytriton/tritonserver directory"
    )


def _triton_python_bin(home: Path) -> Path | None:
    """The ``bin`` dir of the virtualenv that holds pytriton (its ``python`` has numpy)."""
    # <venv>/lib/python3.X/site-packages/pytriton/tritonserver -> <venv>/bin
    if len(home.parents) > 4:
        bin_dir = home.parents[4] / "bin"
        if (bin_dir / "python").exists() or (bin_dir / "python3").exists():
            return bin_dir
    return None


def _python_version(home: Path, bin_dir: Path | None) -> str | None:
    for part in reversed(home.parts):
        m = re.fullmatch(r"python(3\.\d+)", part)
        if m:
            return m.group(1)
    if bin_dir is not None:
        exe = bin_dir / "python" if (bin_dir / "python").exists() else bin_dir / "python3"
        try:
            out = subprocess.run(
                [str(exe), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def _ensure_python_stub(home: Path, bin_dir: Path | None) -> None:
    """Copy the python-backend stub for the triton env's Python into backends/python."""
    backend = home / "backends" / "python"
    if not backend.is_dir() or (backend / _STUB).exists():
        return
    version = _python_version(home, bin_dir)
    stubs = home / "python_backend_stubs"
    src = stubs / version / _STUB if version else None
    if src is None or not src.is_file():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise TritonSetupError(
            f"python backend stub missing: no {backend / _STUB} and no stub for Python "
            f"{version or '?'} under {stubs} (available: {', '.join(have) or 'none'})"
        )
    try:
        tmp = backend / f".{_STUB}.{os.getpid()}.tmp"
        shutil.copy2(src, tmp)
        os.replace(tmp, backend / _STUB)
    except OSError as exc:
        raise TritonSetupError(
            f"cannot copy python backend stub {src} into {backend}: {exc.strerror or exc}"
        ) from exc


# --------------------------------------------------------------------------- config


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


# --------------------------------------------------------------------------- render


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


# --------------------------------------------------------------------------- helpers


def find_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct currently-free TCP ports on ``host`` (racy by nature)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _connect_host(bind_address: str) -> str:
    return "127.0.0.1" if bind_address in ("0.0.0.0", "") else bind_address


def _http_get(url: str, timeout: float = 1.0) -> int:
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _http_post_json(url: str, body: Any, timeout: float = 2.0) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _probe_ready(host: str, http_port: int, timeout: float = 1.0) -> bool:
    try:
        return _http_get(f"http://{host}:{http_port}/v2/health/ready", timeout) == 200
    except (OSError, ValueError):
        return False


_HARMLESS = (
    "Failed to initialize NVML",
    "DCGM unable to start",
    "CudaDriverHelper has not been initialized",
    "Unable to allocate pinned system memory",
    "No server context available",
)


def _log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [ln for ln in text if not any(n in ln for n in _HARMLESS)]
    return "\n".join(kept[-lines:])


def _last_error_line(path: Path | None) -> str:
    """The most telling error line of the server log: a model's load failure first,
    then tritonserver's fatal ``error:`` line, then the last glog ``E…`` line."""
    lines = _log_tail(path, 300).splitlines()
    patterns = (
        r"failed to load '[^']*' version",
        r"^error: ",
        r"^E\d{4} ",
        r"(?i)error|failed|unable",
    )
    for pattern in patterns:
        for line in reversed(lines):
            if re.search(pattern, line):
                text = re.sub(r"^[EWI]\d{4} [\d:.]+ +\d+ \S+\] ", "", line.strip())
                # glog quotes the message and escapes its newlines: keep the first line
                text = " ".join(text.strip('"').split("\\n")[0].split())
                return text if len(text) <= 400 else text[:397] + "..."
    return ""


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_is_tritonserver(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell (no /proc): trust the state file
    return b"tritonserver" in cmdline


def _signal_group(pid: int, sig: int) -> None:
    """Signal the server's process group (it runs in its own session) or, failing
    that, the process itself."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


#: daemons started by this process: reaped by stop_daemon so they do not linger as
#: zombies (and their Popen objects are not garbage-collected while running).
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; reaps ``proc`` when given."""

    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not _pid_alive(pid)

    if gone():
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone():
            break
        time.sleep(0.05)
    else:
        _signal_group(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5.0
        while time.monotonic() < kill_deadline and not gone():
            time.sleep(0.05)
    # the python backend's stub processes share the session; make sure none survive
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)


# --------------------------------------------------------------------------- server


class TritonServer:
    """One tritonserver subprocess serving a rendered copy of ``config.model_repository``.

    ``work_dir`` holds the rendered models (``models/``) and, unless ``config.log_path``
    is set, the log. Without ``work_dir`` a fresh temporary directory under
    ``config.state_dir`` is used and removed by :meth:`stop` (kept when start fails,
    so the log can be read).
    """

    def __init__(self, config: TritonConfig, *, work_dir: Path | None = None) -> None:
        self.config = config
        self._work_dir = work_dir
        self._owns_work_dir = work_dir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0
        self.triton_home: Path | None = None
        self.http_port = config.http_port
        self.grpc_port = config.grpc_port
        self.metrics_port = config.metrics_port
        self.models: list[str] = []
        self.log_path: Path | None = config.log_path
        self.started_at: str | None = None
        self.startup_s: float | None = None

    # addresses -----------------------------------------------------------------
    @property
    def host(self) -> str:
        return _connect_host(self.config.bind_address)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def work_dir(self) -> Path | None:
        return self._work_dir

    @property
    def served_repository(self) -> Path | None:
        return self._work_dir / RENDERED_DIR if self._work_dir is not None else None

    # lifecycle -------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self) -> bool:
        """HTTP GET /v2/health/ready answered 200."""
        return self.is_running() and _probe_ready(self.host, self.http_port)

    def start(self, timeout_s: float = 60.0) -> None:
        """Render the models, launch tritonserver, wait until it is ready.

        Raises :class:`TritonSetupError` (with the log tail) if it exits or is not ready
        within ``timeout_s``; the process is stopped in that case.
        """
        if self._proc is not None:
            raise TritonSetupError("this TritonServer is already started")
        cfg = self.config
        home = locate_triton_home(cfg.triton_home)
        self.triton_home = home
        bin_dir = _triton_python_bin(home)
        _ensure_python_stub(home, bin_dir)
        try:
            if self._work_dir is None:
                Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
                self._work_dir = Path(tempfile.mkdtemp(prefix="server-", dir=cfg.state_dir))
            self._work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TritonSetupError(
                f"cannot create {self._work_dir or cfg.state_dir}: {exc}"
            ) from exc
        # absolute paths: tritonserver runs with the work dir as its cwd
        self._work_dir = work_dir = self._work_dir.resolve()
        self.models = render_model_repository(
            cfg.model_repository,
            work_dir / RENDERED_DIR,
            cfg.device,
            cfg.instances,
            cfg.dynamic_batching,
            cfg.models,
        )
        self.log_path = (
            Path(cfg.log_path).resolve() if cfg.log_path is not None else work_dir / LOG_FILE
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        auto_ports = 0 in (cfg.http_port, cfg.grpc_port, cfg.metrics_port)
        attempts = _PORT_RETRIES if auto_ports else 1
        t0 = time.monotonic()
        for attempt in range(attempts):
            self._pick_ports()
            self._launch(home, bin_dir, work_dir / RENDERED_DIR)
            try:
                self._wait_ready(t0 + timeout_s)
            except TritonSetupError:
                self._kill()
                if auto_ports and attempt + 1 < attempts and self._lost_picked_port_race():
                    continue
                raise
            except BaseException:  # KeyboardInterrupt etc.: never leave a server behind
                self._kill()
                raise
            break
        self.startup_s = time.monotonic() - t0
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def _lost_picked_port_race(self) -> bool:
        """Did this attempt fail because a port *we picked* was taken meanwhile?"""
        if self.log_path is None:
            return False
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        cfg = self.config
        picked = [
            port
            for port, asked in (
                (self.http_port, cfg.http_port),
                (self.grpc_port, cfg.grpc_port),
                (self.metrics_port, cfg.metrics_port),
            )
            if asked == 0
        ]
        for line in text.splitlines():
            if "in use" in line.lower() and any(f":{p}" in line for p in picked):
                return True
        return False

    def _pick_ports(self) -> None:
        cfg = self.config
        free = iter(find_free_ports(3, _connect_host(cfg.bind_address)))
        self.http_port = cfg.http_port or next(free)
        self.grpc_port = cfg.grpc_port or next(free)
        self.metrics_port = cfg.metrics_port or next(free)
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3:
            raise TritonSetupError(f"http, grpc and metrics ports must differ, got {ports}")

    def _launch(self, home: Path, bin_dir: Path | None, repo: Path) -> None:
        cfg = self.config
        addr = cfg.bind_address
        cmd = [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={home / 'backends'}",
            f"--http-address={addr}",
            f"--http-port={self.http_port}",
            f"--grpc-address={addr}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={addr}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={cfg.log_verbose}",
            *cfg.extra_args,
        ]
        if (home / "caches").is_dir():
            cmd.append(f"--cache-directory={home / 'caches'}")
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        if bin_dir is not None:
            env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        libs = home.parent.parent / "nvidia_pytriton.libs"
        if libs.is_dir():
            old = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = f"{old}{os.pathsep}{libs}" if old else str(libs)
        assert self.log_path is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _kill()
        log.write(f"\n# volley: {' '.join(cmd)}\n".encode())
        log.flush()
        self._log_offset = log.tell()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(repo.parent),
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise TritonSetupError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from exc
        self._log_file = log

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                why = _last_error_line(self.log_path)
                raise TritonSetupError(
                    f"tritonserver exited with code {code} during startup"
                    f"{': ' + why if why else ''} (log: {self.log_path})",
                    _log_tail(self.log_path),
                )
            if _probe_ready(self.host, self.http_port, timeout=0.5):
                return
            if time.monotonic() >= deadline:
                why = _last_error_line(self.log_path)
                raise TritonSetupError(
                    "tritonserver not ready within the startup timeout"
                    f"{' (last error: ' + why + ')' if why else ''} (log: {self.log_path})",
                    _log_tail(self.log_path),
                )
            time.sleep(0.05)

    def _kill(self, timeout_s: float = 10.0) -> None:
        if self._proc is not None:
            _terminate(self._proc.pid, self._proc, timeout_s)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def detach(self) -> subprocess.Popen[bytes]:
        """Give up ownership of the running process (it keeps running); returns it."""
        if self._proc is None:
            raise TritonSetupError("server is not running")
        proc = self._proc
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; removes an owned work dir."""
        self._kill(timeout_s)
        if self._owns_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- daemon


@dataclass
class TritonState:
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

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

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
    return _pid_alive(state.pid) and _pid_is_tritonserver(state.pid)


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
        _terminate(proc.pid, _DETACHED.pop(proc.pid), 10.0)
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
    ready = _probe_ready(state.host, state.http_port)
    models: list[ModelState] = []
    message = "" if ready else "running but not ready"
    try:
        index = _http_post_json(f"http://{state.host}:{state.http_port}/v2/repository/index", {})
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
        _terminate(state.pid, _DETACHED.pop(state.pid, None), timeout_s)
        if _pid_alive(state.pid):
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


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    with TritonServer(TritonConfig(http_port=0, grpc_port=0, metrics_port=0)) as _s:
        print(f"ready in {_s.startup_s:.2f}s: grpc {_s.grpc_url}, http {_s.http_url}")
    sys.exit(0)
