"""The committed control-plane code must match what `make proto` generates now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = _gen_module().generate(tmp_path)
    assert written, "protoc generated nothing"
    for fresh in written:
        committed = ROOT / "volley" / "v1" / fresh.name
        assert committed.exists(), f"{committed} missing: run `make proto`"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.relative_to(ROOT)} is stale: run `make proto` and commit"
        )


def test_stubs_are_typed() -> None:
    assert (ROOT / "volley" / "v1" / "control_pb2.pyi").exists()
    assert (ROOT / "volley" / "v1" / "control_pb2_grpc.pyi").exists()
