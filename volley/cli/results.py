"""`volley report` outputs and `volley compare`: HTML reports and perf_analyzer CSV.

Mounted by volley/cli/app.py. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from volley.cli.common import fail


def report_outputs(run_dir: Path, html: bool, csv_out: Path | None) -> list[str]:
    """Re-render report.html and/or write the CSV; returns lines saying what was written."""
    from coordinator.report import ReportError, load_run, write_csv, write_report

    done: list[str] = []
    try:
        if html:
            done.append(f"re-rendered: {write_report(run_dir)}")
        if csv_out is not None:
            done.append(f"csv: {write_csv([load_run(run_dir)], csv_out)}")
    except ReportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror}")
    return done


def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Two or more run directories (the first is the baseline).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="HTML file to write (default: compare-<time>.html beside the runs)."),
    ] = None,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write one perf_analyzer-style CSV row per run."),
    ] = None,
) -> None:
    """Compare runs side by side (e.g. 1 vs 2 model instances, CPU vs GPU Triton)."""
    from coordinator.report import ReportError, write_compare, write_csv
    from coordinator.report.compare import comparison, labels

    if len(run_dirs) < 2:
        fail("compare needs at least two run directories")
    try:
        path, runs = write_compare(run_dirs, out)
        if csv_out is not None:
            write_csv(runs, csv_out)
    except ReportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror}")
    names = labels(runs)
    table = Table(title="volley compare (changes vs the first run)")
    table.add_column("figure")
    for n in names:
        table.add_column(n, justify="right")
    for n in names[1:]:
        table.add_column(f"Δ {n}", justify="right")
    for row in comparison(runs):
        cells = [
            "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
            for v in row["values"]
        ]
        changes = [
            "-" if d is None else f"{d:+.1%}" + {True: " *", False: " ≈", None: ""}[sig]
            for d, sig in zip(row["change_vs_first"], row["significant_vs_first"], strict=True)
        ]
        unit = f" ({row['unit']})" if row["unit"] else ""
        table.add_row(row["figure"] + unit, *cells, *changes)
    con = Console()
    con.print(table)
    con.print(
        "* beyond noise (the runs' confidence intervals do not overlap), ≈ within noise "
        "(they overlap)"
    )
    con.print(f"report: {path}")
    if csv_out is not None:
        con.print(f"csv: {csv_out}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<time>-<name>).")],
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json instead.")] = False,
    html: Annotated[bool, typer.Option(help="Re-render the run's report.html.")] = True,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Write perf_analyzer-style CSV (microseconds) to this file."),
    ] = None,
) -> None:
    """Show a finished run's results again (and re-render its report.html)."""
    from coordinator.documents import SummaryError, load_summary
    from volley.cli.console import print_summary

    path = run_dir / "summary.json"
    if not path.is_file():
        fail(f"{run_dir} is not a run directory (no summary.json)")
    try:
        summary = load_summary(path)
    except SummaryError as exc:
        fail(str(exc))
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary, run_dir)
    for line in report_outputs(run_dir, html, csv_out):
        typer.echo(line, err=json_)
