"""Figures of ``p2pmarl inspect --plot DIR``: residuals, disagreement heat map, learning curves,
topology coloured by final disagreement.

Files written into ``DIR`` (see docs/inspect.md):

* ``residuals.png`` — disagreement, primal and dual residual RMS against the activation index of
  each edge (log scale); skipped when no run has ADMM records (I-TRPO, C-TRPO);
* ``disagreement_heatmap.png`` — edges × training iteration, the last disagreement of each phase;
  skipped likewise;
* ``learning_curves.png`` — team return and every agent's own return per iteration;
* ``topology-<run>.png`` — the graph with edges coloured by their final disagreement.

With several runs the curves are overlaid, labelled by run directory name. Figures use
matplotlib's Agg canvas directly (no pyplot, no display, global backend untouched).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2pmarl.inspection.data import (
    RunRecords,
    collect_records,
    committed,
    edge_activations,
    load_run,
)
from p2pmarl.topology import draw_topology

RESIDUALS = (
    ("disagreement_rms", "disagreement RMS(ℓ^i − ℓ^j)"),
    ("primal_rms", "primal residual RMS"),
    ("dual_rms", "dual residual RMS"),
)
LINE_STYLES = ("-", "--", ":", "-.")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path)
    return path


def _positive(values: list[Any]) -> np.ndarray:
    """Floats with missing and non-positive values as NaN (gaps on a log axis)."""
    array = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    array[~(array > 0)] = np.nan
    return array


def _run_labels(runs: Sequence[RunRecords]) -> list[str]:
    """Directory names, made unique with a counter where two runs share one."""
    labels: list[str] = []
    for run in runs:
        label, count = run.name, 2
        while label in labels:
            label, count = f"{run.name}#{count}", count + 1
        labels.append(label)
    return labels


def plot_residuals(runs: Sequence[RunRecords], labels: Sequence[str], path: Path) -> Path | None:
    """(a) residuals against activation index per edge; None when no run has ADMM records."""
    consensus = [(run, label) for run, label in zip(runs, labels, strict=True) if run.has_consensus]
    if not consensus:
        return None
    figure = _figure(12, 4)
    axes = figure.subplots(1, len(RESIDUALS))
    for run_index, (run, label) in enumerate(consensus):
        style = LINE_STYLES[run_index % len(LINE_STYLES)]
        for edge_index, edge in enumerate(run.topology.edges):
            rows = committed(edge_activations(run, edge))
            name = f"{edge[0]}–{edge[1]}" if len(consensus) == 1 else f"{label} {edge[0]}–{edge[1]}"
            for ax, (key, _) in zip(axes, RESIDUALS, strict=True):
                ax.plot(_positive([r.get(key) for r in rows]), style, color=f"C{edge_index % 10}",
                        marker=".", markersize=3, linewidth=1, label=name)
        if len(consensus) == 1:
            _mark_iterations(axes, run)
    for ax, (_, title) in zip(axes, RESIDUALS, strict=True):
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("activation index of the edge")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, title="edge", title_fontsize=7)
    return _save(figure, path)


def _mark_iterations(axes: Sequence[Any], run: RunRecords) -> None:
    """Dotted vertical lines where a training iteration (a new ADMM phase) starts, first edge."""
    if not run.topology.edges:
        return
    rows = committed(edge_activations(run, run.topology.edges[0]))
    starts = [k for k in range(1, len(rows)) if rows[k]["iteration"] != rows[k - 1]["iteration"]]
    for ax in axes:
        for start in starts:
            ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=0.8)


def plot_heatmap(
    reports: Sequence[dict[str, Any]], labels: Sequence[str], path: Path
) -> Path | None:
    """(b) edges × iteration heat map of the last disagreement of each phase (log colours)."""
    from matplotlib.colors import LogNorm

    shown = [
        (data, label) for data, label in zip(reports, labels, strict=True)
        if any(edge["activations"] for edge in data["edges"])
    ]
    if not shown:
        return None
    matrices = [
        _positive([v for edge in data["edges"] for v in edge["disagreement_by_iteration"]])
        .reshape(len(data["edges"]), -1)
        for data, _ in shown
    ]
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices])
    norm = LogNorm(finite.min(), finite.max()) if finite.size else None
    figure = _figure(8, 1.2 + sum(0.35 * m.shape[0] + 0.9 for m in matrices))
    axes = figure.subplots(len(shown), 1, squeeze=False)[:, 0]
    image = None
    for ax, (data, label), matrix in zip(axes, shown, matrices, strict=True):
        image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="viridis", norm=norm,
                          interpolation="nearest")
        ax.set_yticks(range(matrix.shape[0]), [f"{i}–{j}" for i, j in
                                              (edge["edge"] for edge in data["edges"])])
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_xlabel("training iteration")
        ax.set_ylabel("edge")
        ax.set_title(label, fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(axes), label="last disagreement RMS of the phase")
    return _save(figure, path)


def plot_learning_curves(
    runs: Sequence[RunRecords], reports: Sequence[dict[str, Any]], labels: Sequence[str],
    path: Path,
) -> Path:
    """(c) team return per run (left) and every agent's own return (right)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(12, 4.5)
    team_ax, agent_ax = figure.subplots(1, 2)
    for run_index, (data, label) in enumerate(zip(reports, labels, strict=True)):
        curve = _floats(data["run"]["team_return_curve"])
        team_ax.plot(curve, color=f"C{run_index % 10}", marker="o", markersize=3, label=label)
        style = LINE_STYLES[run_index % len(LINE_STYLES)]
        for agent in data["agents"]:
            name = f"agent {agent['id']}" if len(runs) == 1 else f"{label} agent {agent['id']}"
            agent_ax.plot(_floats(agent["returns"]), style, color=f"C{agent['id'] % 10}",
                          marker=".", markersize=3, label=name)
    team_ax.set_title("team return Σ_i mean own episode return", fontsize=10)
    agent_ax.set_title("own return per agent", fontsize=10)
    for ax in (team_ax, agent_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(figure, path)


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def plot_topology(run: RunRecords, data: dict[str, Any], path: Path) -> Path:
    """(d) the graph, edges coloured by final disagreement (grey where there is none)."""
    values = {
        tuple(edge["edge"]): edge["disagreement_last"]
        for edge in data["edges"]
        if edge["disagreement_last"] is not None
    }
    title = f"{run.name}: final disagreement per edge" if values else f"{run.name} (no consensus)"
    return draw_topology(run.topology, path, edge_values=values or None, title=title,
                         value_label="final disagreement RMS")


def write_plots(
    run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write the figures for ``run_dirs`` into ``out_dir`` (created); return their paths."""
    runs = [load_run(path) for path in run_dirs]
    reports = [collect_records(run) for run in runs]
    labels = _run_labels(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_residuals(runs, labels, out / "residuals.png"),
        plot_heatmap(reports, labels, out / "disagreement_heatmap.png"),
        plot_learning_curves(runs, reports, labels, out / "learning_curves.png"),
    ]
    for run, data, label in zip(runs, reports, labels, strict=True):
        written.append(plot_topology(run, data, out / f"topology-{_file_name(label)}.png"))
    return [path for path in written if path is not None]


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
