"""Find the tritonserver of the pytriton wheel and give its python backend a stub."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from coordinator.triton.config import ENV_TRITON_HOME, TritonSetupError

TRITON_HOME_GLOB = ".venv-triton/lib/python3*/site-packages/pytriton/tritonserver"
_STUB = "triton_python_backend_stub"
_REPO_ROOT = Path(__file__).resolve().parents[2]


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


def triton_python_bin(home: Path) -> Path | None:
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


def ensure_python_stub(home: Path, bin_dir: Path | None) -> None:
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
