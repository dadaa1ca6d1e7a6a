"""Scaling and sensitivity runs of the MATRPO paper (issue 13): spread N=6, treasure N=8.

``--study scaling``: MATRPO vs I-TRPO vs C-TRPO vs FDMARL on spread N=6 (ring6; paper Table
III: δ/N 0.003, β 1, 150 ADMM iterations) and treasure N=8 (ring8, 6 collectors + 2 deposits;
δ/N 0.001, β 5, 200 ADMM iterations). ``--study sensitivity``: MATRPO on spread N=6, one factor
at a time around Table III: δ/N ∈ {0.001, 0.003, 0.01}, β ∈ {0.1, 1, 10}, ADMM iterations ∈
{50, 150, 300}. Every run is a real multi-process launch; runs are interleaved seed-major.
Prints one JSON object with each run's team-return curve and final (mean of the last 3).

The paper-sized runs do not fit a shared 2-core machine (one MATRPO iteration of N=8 with 200
activations takes minutes there); a user with time runs, e.g.:

    python bench/scaling.py --study scaling --iterations 100 --steps 10000 --seeds 0 1 2
    python bench/scaling.py --study sensitivity --iterations 50 --steps 10000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, topology
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

TASKS = {
    "spread6": {"env": "spread", "topology": "ring6", "max_kl": 0.003, "beta": 1.0,
                "admm_iterations": 150},
    "treasure8": {"env": "treasure", "topology": "ring8", "max_kl": 0.001, "beta": 5.0,
                  "admm_iterations": 200},
}
"""Paper Table III settings per task (δ/N, β, ADMM iterations)."""
ALGORITHMS = ("matrpo", "itrpo", "ctrpo", "fdmarl")
SENSITIVITY = {
    "max_kl": (0.001, 0.003, 0.01),
    "beta": (0.1, 1.0, 10.0),
    "admm_iterations": (50, 150, 300),
}
"""MATRPO on spread N=6: each factor swept with the others at Table III."""


def plan(study: str) -> list[dict]:
    """The (label, overrides) of every run of a study, before seeds."""
    if study == "scaling":
        runs = []
        for task, settings in TASKS.items():
            for algo in ALGORITHMS:
                overrides = dict(settings, topology=topology(settings["topology"]), algo=algo)
                if algo == "ctrpo":  # C-TRPO's δ is the joint δ = N·(δ/N), its own default
                    overrides.pop("max_kl")
                runs.append({"label": f"{task}/{algo}", "overrides": overrides})
        return runs
    base = dict(TASKS["spread6"], topology=topology("ring6"), algo="matrpo")
    return [{"label": f"spread6/{factor}={value}", "overrides": dict(base, **{factor: value})}
            for factor, values in SENSITIVITY.items() for value in values]


def run_one(label: str, overrides: dict, seed: int, args: argparse.Namespace) -> dict:
    config = RunConfig(iterations=args.iterations, steps_per_iteration=args.steps, n_envs=10,
                       episode_length=100, seed=seed, out=str(args.out / "runs"),
                       **overrides).validate()
    summary = launch(config, show_progress=False).summary
    curve = summary["team_return_curve"]
    return {"label": label, "seed": seed, "status": summary["status"], "curve": curve,
            "final": statistics.fmean(curve[-3:]) if curve else None,
            "wall_seconds": summary["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("scaling", "sensitivity"), default="scaling")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling")
    args = parser.parse_args()
    todo = [p for p in plan(args.study) if not args.only or p["label"] in args.only]
    runs = [run_one(p["label"], p["overrides"], seed, args) for seed in args.seeds for p in todo]
    result = {"benchmark": "scaling", "study": args.study, "iterations": args.iterations,
              "steps_per_iteration": args.steps, "seeds": args.seeds, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.study}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
