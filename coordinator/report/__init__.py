"""Reports people read: report.html of a run, the comparison of runs, perf_analyzer CSV.

All pages are self-contained: inline CSS and SVG charts drawn by `svg.py`, no script,
no external file or font, so they open offline and can be mailed as one file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from coordinator.report.data import ReportError, RunData, load_run

__all__ = [
    "ReportError",
    "RunData",
    "load_run",
    "write_compare",
    "write_csv",
    "write_report",
    "write_report_safely",
]

log = logging.getLogger("volley.report")

REPORT_FILE = "report.html"


def write_report(run_dir: Path) -> Path:
    """(Re-)render `report.html` in a run directory from its files."""
    from coordinator.report.html import render_run

    run = load_run(run_dir)
    path = run_dir / REPORT_FILE
    path.write_text(render_run(run), encoding="utf-8")
    return path


def write_report_safely(run_dir: Path) -> Path | None:
    """write_report() at the end of a run: a failure is logged, never loses the run."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # the results on disk matter more than their rendering
        log.warning("report.html not written (%s); re-try with: volley report %s", exc, run_dir)
        return None


def default_compare_path(run_dirs: list[Path]) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return run_dirs[0].resolve().parent / f"compare-{stamp}.html"


def write_compare(run_dirs: list[Path], out: Path | None = None) -> tuple[Path, list[RunData]]:
    from coordinator.report.compare import render_compare

    runs = [load_run(d) for d in run_dirs]
    path = out or default_compare_path(run_dirs)
    path.write_text(render_compare(runs), encoding="utf-8")
    return path, runs


def write_csv(runs: list[RunData], out: Path) -> Path:
    from coordinator.report.export import perf_analyzer_csv

    out.write_text(perf_analyzer_csv(runs))
    return out
