"""Helpers shared by the benchmark scripts: run configs, result files and the final JSON line.

Every benchmark prints exactly one JSON object as the last line of its stdout and also writes it
to ``<out>/<name>-<UTC timestamp>.json`` (``bench/results/`` by default, which git ignores).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
"""The repository root; topology paths are made absolute against it."""
RESULTS = REPO / "bench" / "results"
"""Default output folder for raw JSON results and the run directories benchmarks create."""


def topology(name: str) -> str:
    """Absolute path of ``topologies/<name>.yaml``, so a benchmark works from any folder."""
    return str(REPO / "topologies" / f"{name}.yaml")


def ring3_itrpo_config(iterations: int, seed: int, out: Path) -> Any:
    """The paper-sized I-TRPO run the runtime benchmarks share: spread N=3 on ring3,
    M = 10,000 steps per iteration over 10 copies, 100-step episodes."""
    from p2pmarl.config import RunConfig

    return RunConfig(
        topology=topology("ring3"),
        env="spread",
        algo="itrpo",
        iterations=iterations,
        steps_per_iteration=10000,
        n_envs=10,
        episode_length=100,
        seed=seed,
        out=str(out / "runs"),
    ).validate()


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the doc adds the human description)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def git_revision() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    except OSError:
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the shared machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def launcher_peak_rss_mb() -> float:
    """Peak RSS of this (the launcher's) process in MiB; ru_maxrss is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name: str, result: dict[str, Any], out: Path) -> int:
    """Add metadata, write ``result`` to ``out`` and print it as the last stdout line.

    Returns the process exit code: 0, or 1 when ``result["status"]`` is not ``"ok"``.
    """
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    record = {
        "benchmark": name,
        "utc": stamp,
        "argv": sys.argv,
        "git": git_revision(),
        "machine": machine(),
        **result,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)
    return 0 if record.get("status") == "ok" else 1


def launch_failure(result: Any) -> str | None:
    """None if the launch completed, else a description built from its summary and messages."""
    if result.exit_code == 0 and result.summary.get("status") == "completed":
        return None
    details = "\n".join(result.messages)
    return (
        f"launch ended with status {result.summary.get('status')!r}, exit code "
        f"{result.exit_code}, failed process {result.summary.get('failed_process')!r}; "
        f"run dir {result.run_dir}\n{details}"
    )


def plot_seed_curves(
    results: list[dict[str, Any]],
    colours: dict[str, str],
    title: str,
    path: Path,
    ylabel: str = "team return (Σ over agents, per episode)",
) -> None:
    """Learning curves per algorithm: one thin line per seed, a thick mean over seeds.

    ``results`` are bench rows with ``algo``, ``curve`` (team return per iteration) and
    ``env_steps`` (of the whole run); curves are cut to the shortest one of their algorithm.
    """
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for algo, colour in colours.items():
        rows = [r for r in results if r["algo"] == algo and r["curve"]]
        if not rows:
            continue
        length = min(len(r["curve"]) for r in rows)
        per_iteration = rows[0]["env_steps"] / len(rows[0]["curve"])
        steps = [(i + 1) * per_iteration for i in range(length)]
        for row in rows:
            axes.plot(steps, row["curve"][:length], color=colour, alpha=0.25, linewidth=0.8)
        mean = [statistics.fmean(r["curve"][i] for r in rows) for i in range(length)]
        label = algo + (" (centralized reference)" if algo == "ctrpo" else "")
        axes.plot(steps, mean, color=colour, linewidth=2, label=label)
    axes.set_xlabel("environment steps")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
