"""Regenerate volley's control-plane code from proto/ (run: `make proto`).

Writes volley/v1/control_pb2.py, control_pb2_grpc.py and their typed stubs
(.pyi, from mypy-protobuf). tests/unit/test_proto_fresh.py regenerates into a
temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = ["volley/v1/control.proto"]


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Generate into out_dir (mirrors the package layout); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "volley" / "v1").glob("control_pb2*"))


def main() -> None:
    written = generate(ROOT)
    for p in written:
        print(p.relative_to(ROOT))


if __name__ == "__main__":
    main()
