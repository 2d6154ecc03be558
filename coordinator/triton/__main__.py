"""Manual smoke test: ``python -m coordinator.triton`` starts a CPU server on free ports."""

from __future__ import annotations

from coordinator.triton import TritonConfig, TritonServer

if __name__ == "__main__":  # pragma: no cover - manual smoke test
    with TritonServer(TritonConfig(http_port=0, grpc_port=0, metrics_port=0)) as _s:
        print(f"ready in {_s.startup_s:.2f}s: grpc {_s.grpc_url}, http {_s.http_url}")
