"""One learning-curve pair: the same seeded I-TRPO run on the batched world and on mpe2.

Launches the shared runtime benchmark run (:func:`bench.common.ring3_itrpo_config`: spread N=3,
ring3, M = 10,000 steps per iteration over 10 copies, 100-step episodes) for ``--iterations``
(default 6) with ``env_backend="batched"`` and then ``"mpe2"``, same seed. The batched world
replays mpe2's episodes bit for bit (tests/test_particles.py), so the two team-return curves are
expected to be identical, not merely statistically alike; reported are both curves, their
largest absolute difference and each run's mean rollout seconds. ``--plot PATH`` draws them.

Run from the repository root::

    python -m bench.backend_curves [--iterations 6] [--seed 0] [--plot docs/backend_curves.png]

The last stdout line is one JSON object; it is also saved as ``<out>/backend_curves-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, read_jsonl

try:
    from bench.common import RESULTS, emit, launch_failure, load_average, ring3_itrpo_config
except ModuleNotFoundError:  # run as ``python bench/NAME.py``
    from common import (  # type: ignore[no-redef]
        RESULTS,
        emit,
        launch_failure,
        load_average,
        ring3_itrpo_config,
    )


def run(backend: str, iterations: int, seed: int, out: Path) -> dict:
    config = dataclasses.replace(ring3_itrpo_config(iterations, seed, out), env_backend=backend)
    launched = launch(config.validate(), show_progress=False)
    rollouts = [
        e["rollout_seconds"]
        for e in read_jsonl(RunDir(launched.run_dir).world_events)
        if e.get("event") == "rollout"
    ]
    return {
        "backend": backend,
        "error": launch_failure(launched),
        "run_dir": str(launched.run_dir),
        "team_return_curve": launched.summary.get("team_return_curve") or [],
        "rollout_seconds": [round(s, 3) for s in rollouts],
        "wall_seconds": launched.summary.get("wall_seconds"),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    for row, style in zip(rows, ("-o", "--x"), strict=True):
        curve = row["team_return_curve"]
        steps = [10_000 * (i + 1) for i in range(len(curve))]
        axes.plot(steps, curve, style, label=f"env_backend={row['backend']}")
    axes.set_xlabel("environment steps")
    axes.set_ylabel("team return (I-TRPO, spread N=3)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = load_average()
    rows = [run(backend, args.iterations, args.seed, args.out) for backend in ("batched", "mpe2")]
    errors = [row["error"] for row in rows if row["error"]]
    result: dict = {
        "status": "ok" if not errors else "failed",
        "errors": errors,
        "runs": rows,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if not errors:
        a, b = (row["team_return_curve"] for row in rows)
        result["max_abs_difference"] = max(
            (abs(x - y) for x, y in zip(a, b, strict=True) if x is not None and y is not None),
            default=None,
        )
        result["identical"] = a == b
        if args.plot is not None:
            plot(rows, args.plot)
            result["plot"] = str(args.plot)
    return emit("backend_curves", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
