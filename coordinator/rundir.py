"""The run directory: plan.yaml, summary.json, requests.parquet, timeseries.parquet, server.json.

Raw records are streamed to Parquet as batches arrive (never held in memory).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from coordinator.aggregate import Aggregator, Stats
from volley.plan import Plan
from volley.records import COLUMNS, RecordBlock, status_name

REQUEST_SCHEMA = pa.schema(
    [pa.field("agent", pa.uint16())]
    + [pa.field(name, pa.from_numpy_dtype(dt)) for name, dt in COLUMNS.items()]
    + [pa.field("input_shape", pa.dictionary(pa.int32(), pa.string()))]
)


def new_run_dir(base: Path, name: str, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    path = base / f"{stamp}-{safe}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{safe}-{n}"
    path.mkdir(parents=True)
    return path


def _column(values: npt.NDArray[np.generic]) -> pa.Array:
    """A contiguous numpy column as an Arrow array over the same memory, without nulls.
    `pa.array` converts the same values into the same array at ~6x the cost (~30 µs a
    column on this host), and its first call imports numpy.ma (30-100 ms in the middle of
    a run)."""
    arr = np.ascontiguousarray(values)
    if arr.dtype.kind not in "iu":  # Arrow packs booleans in bits: not this layout
        raise TypeError(f"requests.parquet column of dtype {arr.dtype}: integers only")
    return pa.Array.from_buffers(
        pa.from_numpy_dtype(arr.dtype), arr.size, [None, pa.py_buffer(arr)]
    )


class RequestWriter:
    """Streams raw records to requests.parquet (zstd, row groups as batches come)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = pq.ParquetWriter(
            str(path),
            REQUEST_SCHEMA,
            compression="zstd",
            # level 1: ~25% less CPU than 3 for the same size on timing columns (0.55 against
            # 0.7-0.8 µs a record, 10.4 against 10.5 bytes, s5 bench); the same rows either way
            compression_level=1,
            use_dictionary=[
                "input_shape",
                "agent",
                "worker",
                "status",
                "batch_size",
                "shape_id",
                "model_id",
            ],
        )
        #: blocks waiting for the next row group: one table is built per flush, not per
        #: block (~20 Arrow arrays a block cost ~0.4 ms, whatever its size)
        self._pending: list[tuple[int, RecordBlock]] = []
        self._rows = 0
        self.records = 0
        self._flushed = False

    def write(self, agent: int, block: RecordBlock) -> None:
        n = len(block)
        if n == 0:
            return
        self._pending.append((agent, block))
        self._rows += n
        self.records += n
        # bounded, few tiny tables; the first row group early, so the writer's buffers
        # (~8 MB) are taken at the start of a run, not in its middle
        due = 8 if not self._flushed else 64
        if self._rows >= 256_000 or len(self._pending) >= due:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        blocks = self._pending
        self._pending = []
        self._rows = 0
        self._flushed = True
        shapes: dict[str, int] = {}  # every block's input shapes, in one dictionary
        agents, shape_idx = [], []
        for agent, b in blocks:
            names = b.input_shapes or [""]
            remap = np.array([shapes.setdefault(x, len(shapes)) for x in names], np.int32)
            idx = np.minimum(b.columns["shape_id"].astype(np.int32), len(names) - 1)
            shape_idx.append(remap[idx])
            agents.append(np.full(len(b), agent, np.uint16))
        arrays: list[pa.Array] = [_column(np.concatenate(agents))]
        arrays += [
            _column(np.concatenate([b.columns[k] for _, b in blocks]).astype(dt, copy=False))
            for k, dt in COLUMNS.items()
        ]
        arrays.append(
            pa.DictionaryArray.from_arrays(
                _column(np.concatenate(shape_idx)), pa.array(list(shapes), pa.string())
            )
        )
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=REQUEST_SCHEMA))

    def close(self) -> None:
        self.flush()
        self._writer.close()


def _stats_row(
    window: int, agent: str, st: Stats, achieved: int, window_s: float
) -> dict[str, Any]:
    lat = st.latency
    late = st.lateness
    return {
        "window": window,
        "t_s": float(window * window_s),
        "agent": agent,
        "offered": st.records,
        "sent": st.sent,
        "ok": st.ok,
        "errors": st.errors,
        #: errors by status code in this window, e.g. {"UNAVAILABLE": 12} (JSON text)
        "error_codes": json.dumps(
            {status_name(c): n for c, n in sorted(st.error_codes.items())}, sort_keys=False
        ),
        "dropped": st.dropped,
        "offered_rps": st.records / window_s,
        "achieved_rps": achieved / window_s,
        "latency_p50_ms": lat.percentile(50) / 1e6 if lat.count else None,
        "latency_p90_ms": lat.percentile(90) / 1e6 if lat.count else None,
        "latency_p95_ms": lat.percentile(95) / 1e6 if lat.count else None,
        "latency_p99_ms": lat.percentile(99) / 1e6 if lat.count else None,
        "latency_max_ms": lat.max_ns / 1e6 if lat.count else None,
        "service_p50_ms": st.service.percentile(50) / 1e6 if st.service.count else None,
        "service_p99_ms": st.service.percentile(99) / 1e6 if st.service.count else None,
        "lateness_p50_ms": late.percentile(50) / 1e6 if late.count else None,
        "lateness_p99_ms": late.percentile(99) / 1e6 if late.count else None,
        "late_fraction": st.late / late.count if late.count else 0.0,
        # streaming (decoupled) requests, null without any
        "ttft_p50_ms": st.ttft.percentile(50) / 1e6 if st.ttft.count else None,
        "ttft_p99_ms": st.ttft.percentile(99) / 1e6 if st.ttft.count else None,
        "itl_p50_ms": st.itl.percentile(50) / 1e6 if st.itl.count else None,
        "itl_p99_ms": st.itl.percentile(99) / 1e6 if st.itl.count else None,
        "tokens": st.tokens,
    }


def timeseries_rows(
    agg: Aggregator,
    agent_names: list[str],
    agent_cpu: dict[tuple[int, int], float] | None = None,
    windows: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per (1 s window, agent) plus an 'all' row per window (all windows, or
    the given ones)."""
    window_s = agg.window_ns / 1e9
    rows: list[dict[str, Any]] = []
    for w in agg.window_keys() if windows is None else windows:
        merged = Stats()
        achieved_all = 0
        for a, name in enumerate(agent_names):
            st = agg.windows.get((w, a))
            achieved = agg.completions.get((w, a), 0)
            achieved_all += achieved
            if st is None and not achieved:
                continue
            st = st or Stats()
            merged.merge(st)
            row = _stats_row(w, name, st, achieved, window_s)
            row["warmup"] = w * agg.window_ns < agg.warmup_ns
            row["agent_cpu_percent"] = (agent_cpu or {}).get((w, a))
            rows.append(row)
        row = _stats_row(w, "all", merged, achieved_all, window_s)
        row["warmup"] = w * agg.window_ns < agg.warmup_ns
        cpus = [(agent_cpu or {}).get((w, a)) for a in range(len(agent_names))]
        row["agent_cpu_percent"] = (
            sum(c for c in cpus if c is not None) if any(c is not None for c in cpus) else None
        )
        rows.append(row)
    return rows


def write_timeseries(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        table = pa.table({"window": pa.array([], pa.int64())})
    else:
        table = pa.Table.from_pylist(rows)
    pq.write_table(table, str(path), compression="zstd")


def _stream_histograms(st: Stats) -> dict[str, Any]:
    """The streaming histograms of a streamed run (none for a unary one)."""
    if not st.streamed:
        return {}
    return {
        "ttft": st.ttft.to_dict(),
        "ttst": st.ttst.to_dict(),
        "itl": st.itl.to_dict(),
        "tpot": st.tpot.to_dict(),
    }


def write_histograms(path: Path, agg: Aggregator, agent_names: list[str]) -> None:
    """histograms.json: the run's merged histograms (measured period), for the report's
    histogram and percentile curves and for merging runs later."""
    total = agg.total()
    doc = {
        "latency": total.latency.to_dict(),
        "service_time": total.service.to_dict(),
        "send_lateness": total.lateness.to_dict(),
        **_stream_histograms(total),
        "agents": {
            name: {
                "latency": t.measured.latency.to_dict(),
                "send_lateness": t.measured.lateness.to_dict(),
                **_stream_histograms(t.measured),
            }
            for name, t in zip(agent_names, agg.agents, strict=True)
        },
    }
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_plan(path: Path, plan: Plan) -> None:
    path.write_text(plan.to_yaml())
