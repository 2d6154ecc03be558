"""The unauthenticated-memory attack, for tests and measurement: N concurrent calls
without the token, each carrying one large message, against an agent process; the
agent's peak RSS is read from /proc (VmHWM) before and after."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from volley.v1 import control_pb2 as pb


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """VmRSS or VmHWM (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def _one(address: str, message: bytes, timeout_s: float) -> str:
    """One call on its own connection; the message is sent as is (one copy for all)."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=options) as ch:
        call = ch.unary_stream("/volley.v1.AgentControl/Run")
        try:
            async for _ in call(message, timeout=timeout_s):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"


async def flood(
    address: str, calls: int = 8, size: int = 150 * 1024 * 1024, timeout_s: float = 20.0
) -> list[str]:
    """Run the attack (a RunRequest of about `size` bytes per call, no token); the
    status code each call ended with."""
    message = pb.RunRequest(run_id="x", plan_json="x" * size).SerializeToString()
    return list(await asyncio.gather(*(_one(address, message, timeout_s) for _ in range(calls))))


def main() -> None:  # pragma: no cover - a measuring tool: python -m tests.unauth_flood
    import argparse
    import tempfile

    from tests.agent_thread import spawn_agent, stop_process

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--mib", type=int, default=150)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        proc, address, _ = spawn_agent(
            Path(d), "flood", env={"VOLLEY_TOKEN": "flood-test-token-0123456789"}
        )
        try:
            before = rss_kib(proc.pid, "VmRSS")
            t0 = time.monotonic()
            codes = asyncio.run(flood(address, a.calls, a.mib * 1024 * 1024))
            took = time.monotonic() - t0
            peak = rss_kib(proc.pid)
            print(
                f"rss before {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
                f"growth {(peak - before) / 1024:.0f} MiB in {took:.1f}s; "
                f"codes {sorted(set(codes))}"
            )
        finally:
            stop_process(proc)


if __name__ == "__main__":  # pragma: no cover
    main()
