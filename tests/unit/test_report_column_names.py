"""A timeseries.parquet whose column name is not UTF-8 (one flipped byte, as the CLI
fuzzer found) is an unreadable file for the report, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coordinator.report.data import ReportError, _timeseries


def test_a_column_name_that_is_not_utf8_is_a_report_error(tmp_path: Path) -> None:
    path = tmp_path / "timeseries.parquet"
    table = pa.table({"t_s": [0.0, 1.0], "agent": ["all", "all"], "ttft_p50_ms": [1.0, 2.0]})
    pq.write_table(table, str(path))
    assert len(_timeseries(path)) == 2
    raw = path.read_bytes()
    assert raw.count(b"ttft_p50_ms") >= 1
    path.write_bytes(raw.replace(b"ttft_p50_ms", b"\x80tft_p50_ms"))
    with pytest.raises(ReportError, match=r"timeseries\.parquet unreadable"):
        _timeseries(path)
