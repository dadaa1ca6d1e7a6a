"""Inspect a run: consensus residuals per edge, learning per agent, faults; report and plots.

``collect(run_dir)`` reads a run directory into the JSON object documented in docs/inspect.md,
``format_report(data)`` renders it as a terminal report and ``write_plots(run_dirs, out_dir)``
draws the figures. ``p2pmarl inspect`` is the command-line front end.
"""

from __future__ import annotations

from p2pmarl.inspection.data import (
    SCHEMA,
    RunDirectoryError,
    RunRecords,
    collect,
    collect_records,
    load_run,
)
from p2pmarl.inspection.plots import write_plots
from p2pmarl.inspection.report import format_report, watch

__all__ = [
    "SCHEMA",
    "RunDirectoryError",
    "RunRecords",
    "collect",
    "collect_records",
    "format_report",
    "load_run",
    "watch",
    "write_plots",
]
