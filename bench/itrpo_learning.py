"""I-TRPO learning on ``spread`` with N=3: does the team return improve, and how long does it take.

Launches I-TRPO on ``topologies/ring3.yaml`` for 30 iterations of steps_per_iteration 10000
(n_envs 10, episode_length 100; the MATRPO paper's batch) with the seed given as the first
argument (default 0), through ``launch``, into ``--out``/runs (default ``bench/results/runs``).
Reports the first and last team return (Σ over agents of the mean own episode return), the
whole curve, the improvement (mean of the last 5 iterations minus mean of the first 5), wall
seconds, seconds per iteration (wall / iterations) and the per-iteration time split averaged
over agents and iterations (rollout, local learning, whole iteration, from ``metrics.jsonl``).

Run from the repository root (``python bench/itrpo_learning.py ...`` works too)::

    . .venv/bin/activate
    python -m bench.itrpo_learning [SEED] [--iterations 30] [--out bench/results]

The last stdout line is one JSON object; it is also saved as ``<out>/itrpo_learning-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir
from p2pmarl.runtime.summary import iteration_rows

try:
    from bench.common import (
        RESULTS,
        emit,
        launch_failure,
        load_average,
        ring3_itrpo_config,
    )
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import (  # type: ignore[no-redef]
        RESULTS,
        emit,
        launch_failure,
        load_average,
        ring3_itrpo_config,
    )

N_AGENTS = 3
WINDOW = 5
"""Iterations averaged at each end of the curve for the improvement."""


def mean_time(run_dir: RunDir, key: str) -> float | None:
    """Mean of ``key`` over every agent and iteration, or None if not recorded."""
    values = [
        row[key]
        for agent in range(N_AGENTS)
        for row in iteration_rows(run_dir, agent).values()
        if isinstance(row.get(key), int | float)
    ]
    return round(statistics.fmean(values), 3) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int, nargs="?", default=0)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = ring3_itrpo_config(args.iterations, args.seed, args.out)
    load_before = load_average()
    launched = launch(config, show_progress=False)
    error = launch_failure(launched)
    summary = launched.summary
    run_dir = RunDir(launched.run_dir)
    curve = summary.get("team_return_curve") or []
    known = [v for v in curve if v is not None]
    iterations = summary.get("iterations") or 0
    wall = summary.get("wall_seconds")
    result: dict = {
        "status": "ok" if error is None else "failed",
        "error": error,
        "run_dir": str(run_dir.root),
        "seed": args.seed,
        "config": {
            "topology": "topologies/ring3.yaml",
            "env": "spread",
            "algo": "itrpo",
            "iterations": config.iterations,
            "steps_per_iteration": config.steps_per_iteration,
            "n_envs": config.n_envs,
            "episode_length": config.episode_length,
        },
        "iterations_done": iterations,
        "env_steps": summary.get("env_steps"),
        "first_team_return": curve[0] if curve else None,
        "last_team_return": curve[-1] if curve else None,
        "team_return_curve": curve,
        "improvement": None,
        "wall_seconds": wall,
        "seconds_per_iteration": round(wall / iterations, 3) if wall and iterations else None,
        "mean_rollout_seconds": mean_time(run_dir, "time/rollout_seconds"),
        "mean_local_seconds": mean_time(run_dir, "time/local_seconds"),
        "mean_iteration_seconds": mean_time(run_dir, "time/iteration_seconds"),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if len(known) >= 2 * WINDOW:
        first = statistics.fmean(known[:WINDOW])
        last = statistics.fmean(known[-WINDOW:])
        result.update(
            {
                f"mean_first_{WINDOW}": round(first, 3),
                f"mean_last_{WINDOW}": round(last, 3),
                "improvement": round(last - first, 3),
            }
        )
    return emit("itrpo_learning", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
