"""MATRPO vs I-TRPO vs C-TRPO (and FDMARL) on spread N=3 (ring3) over several seeds.

Runs every (algorithm, seed) as a real multi-process launch, one after the other (seed-major),
and prints one JSON object: per algorithm the final team return (mean of the last 3 iterations)
per seed, its mean and spread, and the learning curves; ``--plot`` writes the learning-curve PNG.
Every finished run is appended to ``<out>/runs.jsonl`` as it ends, so a cut run keeps what it
measured; ``--merge FILE ...`` re-reads such files (no run) to build one table and plot.

    python bench/compare.py --iterations 12 --steps 5000 --seeds 0 1 2 --plot docs/compare.png

Issue 13's comparison at the paper's budget (26 × 10k = 260k steps, four algorithms):

    python bench/compare.py --iterations 26 --steps 10000 --seeds 0 1 2 \
        --algos matrpo ctrpo itrpo fdmarl --plot docs/spread3_260k.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import plot_seed_curves
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ("matrpo", "itrpo", "ctrpo", "fdmarl")


def run_one(algo: str, seed: int, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=str(REPO / "topologies/ring3.yaml"), env="spread", algo=algo,
        iterations=args.iterations, steps_per_iteration=args.steps, n_envs=10,
        episode_length=100, seed=seed, out=str(args.out),
    )
    result = launch(config, show_progress=False)
    summary = result.summary
    curve = summary["team_return_curve"]
    return {
        "algo": algo, "seed": seed, "status": summary["status"], "curve": curve,
        "final": statistics.fmean(curve[-3:]), "wall_seconds": summary["wall_seconds"],
        "env_steps": summary["env_steps"], "run_dir": str(result.run_dir),
    }


def plot(results: list[dict], path: Path) -> None:
    colours = dict(zip(ALGORITHMS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    plot_seed_curves(results, colours, "spread N=3, ring3: mean over seeds (thin: single seeds)",
                     path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/compare")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--merge", type=Path, nargs="+", help="runs.jsonl files to tabulate")
    args = parser.parse_args()
    if args.merge:
        results = [json.loads(line) for path in args.merge
                   for line in path.read_text().splitlines() if line.strip()]
    else:
        results = []
        args.out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for algo in args.algos:
                results.append(run_one(algo, seed, args))
                with (args.out / "runs.jsonl").open("a") as log:
                    log.write(json.dumps(results[-1]) + "\n")
    table = {}
    for algo in ALGORITHMS:
        finals = [r["final"] for r in results if r["algo"] == algo]
        if not finals:
            continue
        table[algo] = {
            "final_per_seed": finals,
            "mean": statistics.fmean(finals),
            "stdev": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        }
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({"benchmark": "compare", "table": table, "runs": results}))


if __name__ == "__main__":
    main()
