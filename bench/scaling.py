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

Every finished run is appended to ``<out>/<study>.jsonl`` as it ends; ``--merge FILE ...``
tabulates such files (and the JSON objects this script prints) without running, and ``--plot
PREFIX`` writes one learning-curve PNG per task, ``PREFIX_<task>.png``.
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
            "wall_seconds": summary["wall_seconds"], "env_steps": summary["env_steps"]}


def read_runs(paths: list[Path]) -> list[dict]:
    """Runs from ``.jsonl`` files (one run a line) or printed results (``{"runs": [...]}``)."""
    runs: list[dict] = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                runs.extend(row.get("runs", [row]))
    return runs


def plot(runs: list[dict], prefix: Path, steps_per_iteration: int) -> list[Path]:
    """One PNG per task: every algorithm's (or setting's) curve, mean over seeds."""
    from bench.common import plot_seed_curves

    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
    written = []
    for task in sorted({run["label"].split("/")[0] for run in runs}):
        rows = [dict(run, algo=run["label"].split("/", 1)[1],
                     env_steps=run.get("env_steps", steps_per_iteration * len(run["curve"])))
                for run in runs if run["label"].startswith(task + "/") and run["curve"]]
        names = list(dict.fromkeys(row["algo"] for row in rows))
        path = prefix.with_name(f"{prefix.name}_{task}.png")
        plot_seed_curves(rows, dict(zip(names, palette, strict=False)),
                         f"{task}: team return (thin: single seeds)", path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("scaling", "sensitivity"), default="scaling")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling")
    parser.add_argument("--merge", type=Path, nargs="+", help="result files to tabulate")
    parser.add_argument("--plot", type=Path, help="PNG prefix, one file per task")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        runs = read_runs(args.merge)
    else:
        todo = [p for p in plan(args.study) if not args.only or p["label"] in args.only]
        runs = []
        for seed in args.seeds:
            for run in todo:
                runs.append(run_one(run["label"], run["overrides"], seed, args))
                with (args.out / f"{args.study}.jsonl").open("a") as log:
                    log.write(json.dumps(runs[-1]) + "\n")
    result = {"benchmark": "scaling", "study": args.study, "iterations": args.iterations,
              "steps_per_iteration": args.steps, "seeds": args.seeds, "runs": runs}
    if not args.merge:
        (args.out / f"{args.study}.json").write_text(json.dumps(result, indent=1))
    if args.plot:
        result["plots"] = [str(path) for path in plot(runs, args.plot, args.steps)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
