"""Triton's per-model statistics as typed cumulative counters, their deltas and means.

The one reader of `ModelStatistics` (the KServe v2 statistics extension): gRPC's
`ModelStatisticsResponse`, or the HTTP endpoint's JSON, which is read into the same
message first. Counters are per model and version, cumulative since the model loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from coordinator.stats.documents import BatchFigures, ModelFigures, WindowFigures


class StatisticsError(Exception):
    """Statistics could not be read; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Stat:
    """One `StatisticDuration`: how many, and their total time."""

    count: int = 0
    ns: int = 0

    def __add__(self, other: Stat) -> Stat:
        return Stat(self.count + other.count, self.ns + other.ns)

    def __sub__(self, other: Stat) -> Stat:
        return Stat(self.count - other.count, self.ns - other.ns)

    def mean_ms(self) -> float | None:
        return round(self.ns / self.count / 1e6, 4) if self.count > 0 else None


ZERO = Stat()


@dataclass(frozen=True, slots=True)
class BatchCounters:
    """Executions of one batch size."""

    compute_input: Stat = ZERO
    compute_infer: Stat = ZERO
    compute_output: Stat = ZERO

    def __add__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(
            self.compute_input + other.compute_input,
            self.compute_infer + other.compute_infer,
            self.compute_output + other.compute_output,
        )

    def __sub__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(
            self.compute_input - other.compute_input,
            self.compute_infer - other.compute_infer,
            self.compute_output - other.compute_output,
        )

    def empty(self) -> bool:
        return not (
            self.compute_input.count or self.compute_infer.count or self.compute_output.count
        )


_NO_BATCH = BatchCounters()


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative statistics of one model version (or several summed)."""

    inference_count: int = 0
    execution_count: int = 0
    success: Stat = ZERO
    fail: Stat = ZERO
    queue: Stat = ZERO
    compute_input: Stat = ZERO
    compute_infer: Stat = ZERO
    compute_output: Stat = ZERO
    cache_hit: Stat = ZERO
    cache_miss: Stat = ZERO
    #: batch size -> executions of that size
    batches: Mapping[int, BatchCounters] = field(default_factory=dict)

    def __add__(self, other: Counters) -> Counters:
        batches = dict(self.batches)
        for size, b in other.batches.items():
            batches[size] = batches.get(size, _NO_BATCH) + b
        return Counters(
            self.inference_count + other.inference_count,
            self.execution_count + other.execution_count,
            self.success + other.success,
            self.fail + other.fail,
            self.queue + other.queue,
            self.compute_input + other.compute_input,
            self.compute_infer + other.compute_infer,
            self.compute_output + other.compute_output,
            self.cache_hit + other.cache_hit,
            self.cache_miss + other.cache_miss,
            batches,
        )

    def __sub__(self, before: Counters) -> Counters:
        """The delta since `before`; batch sizes without executions in it are left out."""
        batches = {
            size: d
            for size, b in self.batches.items()
            if not (d := b - before.batches.get(size, _NO_BATCH)).empty()
        }
        return Counters(
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            self.success - before.success,
            self.fail - before.fail,
            self.queue - before.queue,
            self.compute_input - before.compute_input,
            self.compute_infer - before.compute_infer,
            self.compute_output - before.compute_output,
            self.cache_hit - before.cache_hit,
            self.cache_miss - before.cache_miss,
            batches,
        )

    @property
    def active(self) -> bool:
        """Whether any request or execution is counted."""
        return bool(self.success.count or self.fail.count or self.execution_count)


#: (model, version) -> counters
Key = tuple[str, str]
Snapshot = dict[Key, Counters]

EMPTY = Counters()


# ---------------------------------------------------------------- parsing
def _stat(d: Any) -> Stat:
    return Stat(int(d.count), int(d.ns))


def parse(resp: service_pb2.ModelStatisticsResponse) -> Snapshot:
    """Counters of every model version in a statistics response."""
    out: Snapshot = {}
    for ms in resp.model_stats:
        st = ms.inference_stats
        batches: dict[int, BatchCounters] = {}
        for bs in ms.batch_stats:
            b = BatchCounters(
                _stat(bs.compute_input), _stat(bs.compute_infer), _stat(bs.compute_output)
            )
            size = int(bs.batch_size)
            batches[size] = batches.get(size, _NO_BATCH) + b
        c = Counters(
            inference_count=int(ms.inference_count),
            execution_count=int(ms.execution_count),
            success=_stat(st.success),
            fail=_stat(st.fail),
            queue=_stat(st.queue),
            compute_input=_stat(st.compute_input),
            compute_infer=_stat(st.compute_infer),
            compute_output=_stat(st.compute_output),
            cache_hit=_stat(st.cache_hit),
            cache_miss=_stat(st.cache_miss),
            batches=batches,
        )
        key = (str(ms.name), str(ms.version))
        out[key] = out[key] + c if key in out else c
    return out


def parse_json(doc: object) -> Snapshot:
    """The HTTP endpoint's answer (`GET /v2/models/stats`), decoded from JSON."""
    if not isinstance(doc, dict):
        raise StatisticsError("statistics: the answer is not a JSON object")
    try:
        resp = json_format.ParseDict(
            doc, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
        )
    except (json_format.ParseError, TypeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StatisticsError(f"statistics: malformed ({why})") from None
    return parse(resp)


# ---------------------------------------------------------------- deltas and sums
def delta(after: Snapshot, before: Snapshot) -> Snapshot:
    """Per model version, what `after` counts beyond `before` (versions of `after`)."""
    return {k: c - before.get(k, EMPTY) for k, c in after.items()}


def _sum(items: Iterable[Counters]) -> Counters:
    total = EMPTY
    for c in items:
        total = total + c
    return total


def by_model(snap: Snapshot) -> dict[str, Counters]:
    """Versions summed, models in the order they came."""
    groups: dict[str, list[Counters]] = {}
    for (name, _), c in snap.items():
        groups.setdefault(name, []).append(c)
    return {name: _sum(cs) for name, cs in groups.items()}


def by_version(snap: Snapshot) -> dict[str, dict[str, Counters]]:
    out: dict[str, dict[str, Counters]] = {}
    for (name, version), c in snap.items():
        out.setdefault(name, {})[version] = c
    return out


def select(snap: Snapshot, name: str, version: str = "") -> Counters | None:
    """One model's counters: one version, or all its versions summed (version "");
    None when the snapshot has no such model version."""
    if version:
        return snap.get((name, version))
    found = [c for (n, _), c in snap.items() if n == name]
    return _sum(found) if found else None


# ---------------------------------------------------------------- figures
def breakdown(c: Counters) -> ModelFigures:
    """Per-request means (ms) and counts of a delta."""
    parts = [s.mean_ms() for s in (c.queue, c.compute_input, c.compute_infer, c.compute_output)]
    request = c.success.mean_ms()
    known = [p for p in parts if p is not None]
    overhead = (
        round(request - sum(known), 4) if request is not None and len(known) == len(parts) else None
    )
    return {
        "success": c.success.count,
        "fail": c.fail.count,
        "inference_count": c.inference_count,
        "execution_count": c.execution_count,
        "avg_batch_size": (
            round(c.inference_count / c.execution_count, 3) if c.execution_count else None
        ),
        "request_ms": request,
        "queue_ms": parts[0],
        "compute_input_ms": parts[1],
        "compute_infer_ms": parts[2],
        "compute_output_ms": parts[3],
        "overhead_ms": overhead,
        "fail_ms": c.fail.mean_ms(),
        "cache_hit": c.cache_hit.count,
        "cache_miss": c.cache_miss.count,
        "batch_stats": [_batch(size, b) for size, b in sorted(c.batches.items())],
    }


def _batch(size: int, b: BatchCounters) -> BatchFigures:
    return {
        "batch_size": size,
        "executions": b.compute_infer.count,
        "compute_input_ms": b.compute_input.mean_ms(),
        "compute_infer_ms": b.compute_infer.mean_ms(),
        "compute_output_ms": b.compute_output.mean_ms(),
    }


def window_figures(c: Counters) -> WindowFigures:
    """The figures of one sampling window (a subset of `breakdown`)."""
    return {
        "success": c.success.count,
        "fail": c.fail.count,
        "execution_count": c.execution_count,
        "request_ms": c.success.mean_ms(),
        "queue_ms": c.queue.mean_ms(),
        "compute_input_ms": c.compute_input.mean_ms(),
        "compute_infer_ms": c.compute_infer.mean_ms(),
        "compute_output_ms": c.compute_output.mean_ms(),
    }


def figures(snap: Snapshot) -> dict[str, ModelFigures]:
    """Per model (versions summed), the models with requests."""
    return {m: breakdown(c) for m, c in by_model(snap).items() if c.active}


def version_figures(snap: Snapshot) -> dict[str, dict[str, ModelFigures]]:
    """Per model and version, the versions with requests."""
    out: dict[str, dict[str, ModelFigures]] = {}
    for m, versions in by_version(snap).items():
        rows = {v: breakdown(c) for v, c in versions.items() if c.active}
        if rows:
            out[m] = rows
    return out
