"""The coordinator's cheaper paths give the same figures as the general ones: small
histograms recorded and merged without numpy calls, a one-shape block's figures merged
into its shape's, requests.parquet built once per row group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from coordinator.aggregate import Aggregator, Stats
from coordinator.rundir import RequestWriter
from volley.histogram import LogHistogram
from volley.records import COLUMNS, RecordBlock


def _same(a: LogHistogram, b: LogHistogram) -> None:
    assert (a.count, a.total_ns, a.min_ns, a.max_ns, a.negatives) == (
        b.count,
        b.total_ns,
        b.min_ns,
        b.max_ns,
        b.negatives,
    )
    assert a.percentiles([50, 90, 99, 100]) == b.percentiles([50, 90, 99, 100])


def test_a_few_values_one_by_one_equal_the_vectorised_path() -> None:
    rng = np.random.default_rng(3)
    few, many = LogHistogram(), LogHistogram()
    values = np.concatenate([rng.integers(-5, 10**9, 200), [0, 999, 1000, 2**40]])
    for i in range(0, values.size, 7):  # 7 values at a time: the one-by-one path
        few.record_many(values[i : i + 7])
    many.record_many(values)  # > 16 values: vectorised
    _same(few, many)
    # merging small histograms (the list path) equals merging a large one
    merged = LogHistogram()
    for i in range(0, values.size, 3):
        h = LogHistogram()
        h.record_many(values[i : i + 3])
        merged.merge(h)
    _same(merged, many)


def _block(n: int, shapes: list[str], shape_id: int | None = None) -> RecordBlock:
    cols = {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}
    cols["index"][:] = np.arange(n)
    cols["intended_ns"][:] = np.arange(n) * 1_000_000
    cols["sent_ns"][:] = cols["intended_ns"] + 50_000
    cols["done_ns"][:] = cols["sent_ns"] + 1_000_000 + np.arange(n) * 1_000
    cols["req_bytes"][:] = 64
    cols["batch_size"][:] = 1
    cols["shape_id"][:] = np.arange(n) % len(shapes) if shape_id is None else shape_id
    return RecordBlock(cols, shapes)


def test_a_one_shape_block_merges_into_its_shape_like_the_masked_add() -> None:
    agg = Aggregator(1, 0)
    block = _block(50, ["1x4", "2x4"], shape_id=1)
    agg.ingest(0, block)
    want = Stats()
    want.add(block.columns)
    got = agg.by_shape["2x4"]
    assert "1x4" not in agg.by_shape
    assert (got.records, got.sent, got.ok) == (want.records, want.sent, want.ok)
    _same(got.latency, want.latency)
    # two shapes in a block: each gets its own records
    agg.ingest(0, _block(10, ["1x4", "2x4"]))
    assert agg.by_shape["1x4"].records == 5 and agg.by_shape["2x4"].records == 55


def test_requests_parquet_one_table_per_row_group(tmp_path: Path) -> None:
    w = RequestWriter(tmp_path / "requests.parquet")
    w.write(0, _block(3, ["a", "b"]))
    w.write(2, _block(2, ["c"]))
    w.close()
    t = pq.read_table(tmp_path / "requests.parquet")
    assert t.column("agent").to_pylist() == [0, 0, 0, 2, 2]
    assert t.column("input_shape").to_pylist() == ["a", "b", "a", "c", "c"]
    assert t.column("index").to_pylist() == [0, 1, 2, 0, 1]


def test_the_first_row_group_is_written_early_then_every_64_blocks(tmp_path: Path) -> None:
    """The writer's buffers are taken by its first row group: after 8 blocks, so at the
    start of a run (a one-off ~8 MB read as growth mid-run otherwise); then every 64."""
    path = tmp_path / "requests.parquet"
    w = RequestWriter(path)
    for i in range(8 + 64 + 3):
        w.write(0, _block(2, ["a"]))
        if i == 6:
            assert w._pending and not w._flushed  # 7 blocks: still waiting
    assert len(w._pending) == 3  # 8, then 64, were written
    w.close()
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [16, 128, 6]
