"""I-TRPO vs MATRPO on mpe2's simple_spread with continuous actions, by import path (issue 16).

``--env mpe2.simple_spread_v3:parallel_env --env-kwargs '{"continuous_actions": true, ...}'``:
3 agents on ring3, Box(0, 1)^5 actions (diagonal Gaussian heads), mpe2's own shared reward
(local_ratio 0.5), 25-step episodes (mpe2's default max_cycles). Every (algorithm, seed) is a
real multi-process launch, run one after the other; prints one JSON object (final team return =
mean of the last 3 iterations, curves, wall time) and ``--plot`` writes the learning curves.

    python bench/continuous_spread.py --iterations 15 --steps 5000 --seeds 0 1 2 \
        --plot docs/continuous_spread.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, emit, load_average, plot_seed_curves, topology
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

ENV = "mpe2.simple_spread_v3:parallel_env"
EPISODE_LENGTH = 25
ENV_KWARGS = json.dumps({"continuous_actions": True, "max_cycles": EPISODE_LENGTH})
ALGORITHMS = ("matrpo", "itrpo")


def run_one(algo: str, seed: int, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=topology("ring3"), env=ENV, env_kwargs=ENV_KWARGS, algo=algo,
        iterations=args.iterations, steps_per_iteration=args.steps, n_envs=10,
        episode_length=EPISODE_LENGTH, seed=seed, out=str(args.out / "runs"),
    ).validate()
    result = launch(config, show_progress=False)
    summary = result.summary
    curve = summary["team_return_curve"]
    record = {
        "algo": algo, "seed": seed, "status": summary["status"], "curve": curve,
        "final": statistics.fmean(curve[-3:]), "first": curve[0],
        "wall_seconds": summary["wall_seconds"], "env_steps": summary["env_steps"],
        "run_dir": str(result.run_dir),
    }
    print(json.dumps(record), flush=True)
    return record


def plot(results: list[dict], path: Path) -> None:
    colours = dict(zip(ALGORITHMS, ("tab:blue", "tab:orange"), strict=True))
    plot_seed_curves(results, colours, "continuous simple_spread N=3 (mpe2, by import path), ring3",
                     path, ylabel="team return (Σ over agents, per 25-step episode)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=RESULTS / "continuous_spread")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    results = [run_one(algo, seed, args) for seed in args.seeds for algo in args.algos]
    table = {}
    for algo in args.algos:
        finals = [r["final"] for r in results if r["algo"] == algo]
        table[algo] = {
            "final_per_seed": finals,
            "mean": statistics.fmean(finals),
            "stdev": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "first_mean": statistics.fmean(r["first"] for r in results if r["algo"] == algo),
        }
    if args.plot:
        plot(results, args.plot)
    raise SystemExit(emit("continuous_spread", {
        "status": "ok" if all(r["status"] == "completed" for r in results) else "failed",
        "iterations": args.iterations, "steps": args.steps, "seeds": args.seeds,
        "load_before": load_before, "load_after": load_average(), "table": table,
        "runs": results,
    }, args.out))


if __name__ == "__main__":
    main()
