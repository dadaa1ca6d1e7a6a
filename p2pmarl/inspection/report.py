"""The terminal report of ``p2pmarl inspect`` and its live view.

:func:`report_renderable` builds rich tables from the object :func:`~p2pmarl.inspection.collect`
returns; :func:`format_report` renders them to plain text (box-drawing tables, no colour codes),
which is also what is printed when stdout is not a terminal. :func:`watch` refreshes the report
until every run has finished, a time limit passes or the user presses Ctrl-C.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

REPORT_WIDTH = 110
"""Columns of the plain-text report."""
MAX_FAULT_LINES = 20
"""Fault events listed in the report (all of them are in ``--json``)."""
FINISHED = frozenset({"completed", "failed", "interrupted", "incomplete"})
"""Statuses after which a run's files no longer change."""


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def headline(data: dict[str, Any]) -> str:
    """One line: what ran, how far it got, the team return trend."""
    run = data["run"]
    curve = [v for v in run["team_return_curve"] if v is not None]
    trend = f"{curve[0]:.2f} → {curve[-1]:.2f}" if curve else "n/a (no finished episodes)"
    shape = "centralized reference" if run["centralized"] else f"{run['n_edges']} edges"
    return (
        f"{data['run_dir']}\n"
        f"{run['algo']} on {run['env']}: {run['n_agents']} agents, topology {run['topology']} "
        f"({shape}), seed {run['seed']}; status {run['status']}, iteration "
        f"{run['iterations']}/{run['iterations_planned']}, {run['env_steps']} env steps; "
        f"team return {trend}"
    )


def edge_table(data: dict[str, Any]) -> RenderableType:
    """Per-edge consensus table, or a line saying why there is none."""
    run, edges = data["run"], data["edges"]
    if not any(edge["activations"] or edge["aborted"] for edge in edges):
        why = "a centralized reference" if run["centralized"] else f"{run['algo']} records none"
        return Text(f"consensus: no ADMM activations ({why})")
    table = Table(title="consensus per edge (residuals are RMS over N×M log ratios)")
    for name in ("edge", "activations", "aborted", "drops", "down s", "disagreement last",
                 "disagreement median", "primal last", "dual last"):
        table.add_column(name, justify="left" if name == "edge" else "right")
    for edge in edges:
        i, j = edge["edge"]
        table.add_row(
            f"{i}–{j}",
            str(edge["activations"]),
            str(edge["aborted"]),
            str(edge["drops"]),
            f"{edge['down_seconds']:.1f}",
            _number(edge["disagreement_last"], ".3e"),
            _number(edge["disagreement_median"], ".3e"),
            _number(edge["primal_last"], ".3e"),
            _number(edge["dual_last"], ".3e"),
        )
    return table


def agent_table(data: dict[str, Any]) -> RenderableType:
    """Per-agent learning and traffic table."""
    label = "learner" if data["run"]["centralized"] else "agent"
    table = Table(title=f"per {label}")
    for name in (label, "iterations", "return first → last", "mean KL", "line search accepted",
                 "activations", "bytes sent", "rejected"):
        table.add_column(name, justify="left" if name == label else "right")
    for agent in data["agents"]:
        table.add_row(
            str(agent["id"]),
            str(agent["iterations"]),
            f"{_number(agent['return_first'], '.2f')} → {_number(agent['return_last'], '.2f')}",
            _number(agent["kl_mean"], ".2e"),
            _share(agent["line_search_acceptance"]),
            str(agent["activations"]),
            _bytes(agent["bytes_sent"]),
            _number(agent["rejected"], "d"),
        )
    return table


def fault_lines(data: dict[str, Any]) -> RenderableType:
    faults = data["faults"]
    if not faults:
        return Text("faults: none recorded")
    lines = [f"faults: {len(faults)} events"]
    lines += [f"  {json.dumps(event, sort_keys=True)}" for event in faults[:MAX_FAULT_LINES]]
    if len(faults) > MAX_FAULT_LINES:
        lines.append(f"  … {len(faults) - MAX_FAULT_LINES} more (see --json)")
    return Text("\n".join(lines))


def report_renderable(data: dict[str, Any]) -> RenderableType:
    """The report of one run as rich renderables."""
    return Group(
        Text(headline(data), style="bold"), edge_table(data), agent_table(data), fault_lines(data)
    )


def reports_renderable(reports: Sequence[dict[str, Any]]) -> RenderableType:
    """Reports of several runs, one after the other."""
    parts: list[RenderableType] = []
    for index, data in enumerate(reports):
        if index:
            parts.append(Text(""))
        parts.append(report_renderable(data))
    return Group(*parts)


def format_report(
    data: dict[str, Any] | Sequence[dict[str, Any]], width: int = REPORT_WIDTH
) -> str:
    """The report of one run (or several) as plain text: tables, no colour codes."""
    reports = [data] if isinstance(data, dict) else list(data)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(reports_renderable(reports))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def all_finished(reports: Sequence[dict[str, Any]]) -> bool:
    return all(data["run"]["status"] in FINISHED for data in reports)


def watch(
    refresh: Callable[[], list[dict[str, Any]]],
    interval: float,
    max_seconds: float | None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Show ``refresh()``'s reports every ``interval`` s until every run has finished (its
    summary.json is written), ``max_seconds`` passed or Ctrl-C; returns the last reports.

    On a terminal the report is redrawn in place (rich.live); otherwise it is printed once per
    interval, separated by a line with the time.
    """
    console = console or Console()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    reports = refresh()
    try:
        if console.is_terminal:
            _watch_live(refresh, reports, interval, deadline, console)
        else:
            _watch_plain(refresh, reports, interval, deadline, console)
    except KeyboardInterrupt:
        pass
    return reports


def _keep_going(reports: list[dict[str, Any]], deadline: float | None) -> bool:
    return not all_finished(reports) and (deadline is None or time.monotonic() < deadline)


def _sleep(interval: float, deadline: float | None) -> None:
    left = interval if deadline is None else min(interval, deadline - time.monotonic())
    time.sleep(max(0.0, left))


def _watch_live(
    refresh: Callable[[], list[dict[str, Any]]],
    reports: list[dict[str, Any]],
    interval: float,
    deadline: float | None,
    console: Console,
) -> None:
    from rich.live import Live

    with Live(reports_renderable(reports), console=console, auto_refresh=False) as live:
        while _keep_going(reports, deadline):
            _sleep(interval, deadline)
            reports[:] = refresh()
            live.update(reports_renderable(reports), refresh=True)


def _watch_plain(
    refresh: Callable[[], list[dict[str, Any]]],
    reports: list[dict[str, Any]],
    interval: float,
    deadline: float | None,
    console: Console,
) -> None:
    console.file.write(format_report(reports))
    console.file.flush()
    while _keep_going(reports, deadline):
        _sleep(interval, deadline)
        reports[:] = refresh()
        console.file.write(f"\n--- {time.strftime('%H:%M:%S')} ---\n" + format_report(reports))
        console.file.flush()
