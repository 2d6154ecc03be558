"""The coordinator's per-record path after s5-tree's cuts gives the same figures and the
same requests.parquet: histogram buckets by a search over the exact edges, a batch's own
histogram merged without a trim scan, Stats.add without masked copies when every record
succeeded, Arrow columns over the numpy memory."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from coordinator.aggregate import Aggregator, Stats, _keys
from coordinator.rundir import RequestWriter
from volley import histogram as hist
from volley import records as rc
from volley.histogram import LogHistogram
from volley.records import COLUMNS, RecordBlock


def test_bucket_index_agrees_with_the_scalar_one_at_every_exact_edge() -> None:
    edges = hist._EDGES[:-1].astype(np.int64)
    vals = np.concatenate(
        [edges - 1, edges, edges + 1, np.arange(0, 1002), [2**63 - 1, 2**63 - 2]]
    ).astype(np.int64)
    vals = vals[vals >= 0]
    got = hist._bucket_index(vals).tolist()
    want = [hist._bucket_index_scalar(int(v)) for v in vals.tolist()]
    assert got == want
    # each value lies in its bucket: E[k] <= v < E[k+1]
    k = np.array(got) - hist.LINEAR_LIMIT_NS
    log = vals >= hist.LINEAR_LIMIT_NS
    lo = hist._EDGES[k[log]]
    hi = hist._EDGES[k[log] + 1]
    assert bool((lo <= vals[log].astype(np.uint64)).all())
    assert bool((vals[log].astype(np.uint64) < hi).all())


def test_a_batch_histogram_merged_equals_one_histogram_of_every_value() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.lognormal(np.log(2e6), 1.0, n).astype(np.int64) for n in (40, 700, 3)]
    parts.append(np.array([-5, 0, 999, 1000], np.int64))
    whole = LogHistogram()
    whole.record_many(np.concatenate(parts))
    merged = LogHistogram()
    for p in parts:
        one = LogHistogram()
        one.record_many(p)
        merged.merge(one)
        merged.merge(LogHistogram())  # an empty one changes nothing
    assert merged == whole
    assert merged.to_dict() == whole.to_dict()


def _block(n: int, rng: np.random.Generator) -> RecordBlock:
    cols = {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}
    intended = np.cumsum(rng.integers(1, 10**6, n)).astype(np.int64)
    cols["index"][:] = np.arange(n)
    cols["intended_ns"][:] = intended
    cols["sent_ns"][:] = intended + rng.integers(0, 10**6, n)
    cols["done_ns"][:] = cols["sent_ns"] + rng.integers(10**5, 10**8, n)
    cols["req_bytes"][:] = rng.integers(1, 10**6, n)
    cols["resp_bytes"][:] = rng.integers(1, 10**6, n)
    for k, v in rc.STREAM_DEFAULTS.items():
        cols[k][:] = v
    return RecordBlock(cols, ["4"])


def _figures(st: Stats) -> tuple[object, ...]:
    return (
        st.records,
        st.sent,
        st.ok,
        st.errors,
        st.dropped,
        st.not_sent,
        st.late,
        st.req_bytes,
        st.resp_bytes,
        dict(st.error_codes),
        st.latency.to_dict(),
        st.service.to_dict(),
        st.lateness.to_dict(),
    )


def test_stats_of_an_all_ok_block_equal_those_of_its_parts() -> None:
    """The unmasked path (every record sent and OK) against the masked one, per part."""
    rng = np.random.default_rng(11)
    block = _block(300, rng)
    whole = Stats()
    whole.add(block.columns)
    parts = Stats()
    first = np.arange(300) < 120
    parts.add(block.columns, first)
    parts.add(block.columns, ~first)
    assert _figures(whole) == _figures(parts)
    # with errors, drops and never-sent records: the masked path, the same sums
    status = block.columns["status"]
    status[::7] = rc.UNAVAILABLE
    status[3::11] = rc.DROPPED
    block.columns["sent_ns"][3::11] = -1
    block.columns["done_ns"][3::11] = -1
    mixed = Stats()
    mixed.add(block.columns)
    split = Stats()
    split.add(block.columns, first)
    split.add(block.columns, ~first)
    assert _figures(mixed) == _figures(split)
    assert mixed.errors == int((status == rc.UNAVAILABLE).sum()) and mixed.dropped > 0
    assert mixed.sent == 300 - mixed.dropped


def test_window_keys_are_the_distinct_values() -> None:
    w = np.array([5, 5, 7, 7, 5], np.int64)
    assert _keys(w, 5, 7) == [5, 7]
    far = np.array([1, 40, 1, 9], np.int64)
    assert _keys(far, 1, 40) == [1, 9, 40]


def test_requests_parquet_holds_every_column_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    blocks = [_block(n, rng) for n in (5, 1, 9)]
    # the dtypes' extremes: sign and top bits survive the zero-copy columns
    b = blocks[0].columns
    b["seq_id"][:] = [0, 1, 2**63, 2**64 - 1, 12345]
    b["first_ns"][:] = [-1, 0, 2**62, -(2**63), 2**63 - 1]
    b["status"][:] = [0, 65535, rc.HTTP_ERROR_BASE + 503, 14, 1]
    path = tmp_path / "requests.parquet"
    w = RequestWriter(path)
    for i, blk in enumerate(blocks):
        w.write(i, blk)
    w.close()
    t = pq.read_table(path)
    for name, dt in COLUMNS.items():
        got = t.column(name).to_numpy()
        want = np.concatenate([blk.columns[name] for blk in blocks])
        assert got.dtype == dt.newbyteorder("=") and np.array_equal(got, want), name
    assert t.column("agent").to_pylist() == [0] * 5 + [1] + [2] * 9
    assert t.column("input_shape").to_pylist() == ["4"] * 15


def test_stats_merge_adds_every_count() -> None:
    """Stats.merge names its counts one by one: a count it forgot would stay 0 here."""
    other = Stats()
    counts = [
        f.name
        for f in dataclasses.fields(Stats)
        if f.type in ("int", int) and not f.name.startswith("responses_")
    ]
    assert len(counts) >= 14
    for i, name in enumerate(counts):
        setattr(other, name, i + 1)
    other.error_codes[14] = 2
    st = Stats()
    st.merge(other)
    st.merge(other)
    assert [getattr(st, n) for n in counts] == [2 * (i + 1) for i in range(len(counts))]
    assert st.error_codes == {14: 4}


def test_never_sent_is_isin_never_sent_for_every_code() -> None:
    codes = np.arange(1 << 16, dtype=np.uint16)
    assert np.array_equal(rc.never_sent(codes), np.isin(codes, rc.NEVER_SENT))
    assert int(rc.never_sent(codes).sum()) == len(rc.NEVER_SENT)


def _int_cols(blk: RecordBlock) -> dict[str, npt.NDArray[np.int64]]:
    """The block's columns, typed for arithmetic (they are integer arrays)."""
    return cast(dict[str, npt.NDArray[np.int64]], blk.columns)


def _random_block(rng: np.random.Generator, n: int, start_ns: int) -> RecordBlock:
    blk = _block(n, rng)
    c = _int_cols(blk)
    c["intended_ns"][:] = start_ns + np.sort(rng.integers(0, 3 * 10**9, n))
    c["sent_ns"][:] = c["intended_ns"] + rng.integers(0, 10**7, n)
    c["done_ns"][:] = c["sent_ns"] + rng.integers(10**5, 2 * 10**9, n)
    if rng.random() < 0.5:  # a few payload sizes, shapes, models, errors, never-sent
        c["req_bytes"][:] = rng.choice([100, 3000, 70000], n)
        c["shape_id"][:] = rng.integers(0, 2, n)
        c["model_id"][:] = rng.integers(0, 2, n)
        c["status"][rng.random(n) < 0.2] = rc.UNAVAILABLE
        never = rng.random(n) < 0.1
        c["status"][never] = rc.DROPPED
        c["sent_ns"][never] = -1
        c["done_ns"][never] = -1
    return RecordBlock(blk.columns, ["1x4", "2x4"])


def test_ingest_equals_the_masked_adds_of_every_key() -> None:
    """Aggregator.ingest's shortcuts (one window, size, shape, model; all past the warm-up)
    against a reference that adds each key's records by a mask, block by block."""
    rng = np.random.default_rng(23)
    warmup = 2 * 10**9
    agg = Aggregator(2, warmup)
    ref_measured = [Stats(), Stats()]
    ref_warmup = [Stats(), Stats()]
    ref_windows: dict[tuple[int, int], Stats] = {}
    ref_sizes: dict[int, Stats] = {}
    ref_shapes: dict[str, Stats] = {}
    ref_models: dict[int, Stats] = {}
    ref_done: Counter[tuple[int, int]] = Counter()
    for i in range(40):
        agent = i % 2
        n = int(rng.choice([1, 5, 300]))
        blk = _random_block(rng, n, int(rng.integers(0, 6)) * 10**9)
        if i % 3 == 0:  # all within one window: the merge shortcuts
            c = _int_cols(blk)
            base = (i + 3) * 10**9
            c["intended_ns"][:] = base + np.sort(rng.integers(0, 10**8, n))
            sent = c["sent_ns"] >= 0
            c["sent_ns"][sent] = c["intended_ns"][sent] + 1000
            c["done_ns"][sent] = c["sent_ns"][sent] + 10**6
        agg.ingest(agent, blk)
        c = _int_cols(blk)
        cols = blk.columns
        measured = c["intended_ns"] >= warmup
        ref_measured[agent].add(cols, measured)
        ref_warmup[agent].add(cols, ~measured)
        win = c["intended_ns"] // agg.window_ns
        for w in np.unique(win).tolist():
            ref_windows.setdefault((w, agent), Stats()).add(cols, win == w)
        ok = c["status"] == rc.OK
        for w in (c["done_ns"][ok] // agg.window_ns).tolist():
            ref_done[(w, agent)] += 1
        was_sent = measured & (c["sent_ns"] >= 0)
        sizes = np.floor(np.log2(np.maximum(c["req_bytes"], 1))).astype(np.int64)
        for b in np.unique(sizes[was_sent]).tolist():
            ref_sizes.setdefault(b, Stats()).add(cols, was_sent & (sizes == b))
        for k in np.unique(c["shape_id"][was_sent]).tolist():
            sh = blk.input_shapes[k]
            ref_shapes.setdefault(sh, Stats()).add(cols, was_sent & (c["shape_id"] == k))
        for m in np.unique(c["model_id"][measured]).tolist():
            ref_models.setdefault(m, Stats()).add(cols, measured & (c["model_id"] == m))
    for a in (0, 1):
        assert _figures(agg.agents[a].measured) == _figures(ref_measured[a])
        assert _figures(agg.agents[a].warmup) == _figures(ref_warmup[a])
    for got, want in (
        (agg.windows, ref_windows),
        (agg.by_size, ref_sizes),
        (agg.by_shape, ref_shapes),
        (agg.by_model, ref_models),
    ):
        assert sorted(got) == sorted(want)
        for k in want:
            assert _figures(got[k]) == _figures(want[k]), k  # type: ignore[index]
    assert {k: v for k, v in agg.completions.items() if v} == dict(ref_done)
