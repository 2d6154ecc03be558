"""One tritonserver subprocess: launch, readiness, logs, stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from coordinator.triton.config import LOG_FILE, RENDERED_DIR, TritonConfig, TritonSetupError
from coordinator.triton.home import ensure_python_stub, locate_triton_home, triton_python_bin
from coordinator.triton.repository import render_model_repository

_PORT_RETRIES = 3


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


def connect_host(bind_address: str) -> str:
    return "127.0.0.1" if bind_address in ("0.0.0.0", "") else bind_address


def _http_get(url: str, timeout: float = 1.0) -> int:
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def http_post_json(url: str, body: Any, timeout: float = 2.0) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def probe_ready(host: str, http_port: int, timeout: float = 1.0) -> bool:
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


def pid_alive(pid: int) -> bool:
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


def pid_is_tritonserver(pid: int) -> bool:
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


def terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; reaps ``proc`` when given."""

    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not pid_alive(pid)

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


class _HostPorts(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def http_port(self) -> int: ...
    @property
    def grpc_port(self) -> int: ...
    @property
    def metrics_port(self) -> int: ...


class ServerURLs:
    """The gRPC, HTTP and metrics addresses of a server, from its host and ports
    (shared by :class:`TritonServer` and the daemon's ``TritonState``)."""

    @property
    def grpc_url(self: _HostPorts) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self: _HostPorts) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self: _HostPorts) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class TritonServer(ServerURLs):
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
        return connect_host(self.config.bind_address)

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
        return self.is_running() and probe_ready(self.host, self.http_port)

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
        bin_dir = triton_python_bin(home)
        ensure_python_stub(home, bin_dir)
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
        free = iter(find_free_ports(3, connect_host(cfg.bind_address)))
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
            if probe_ready(self.host, self.http_port, timeout=0.5):
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
            terminate(self._proc.pid, self._proc, timeout_s)
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
