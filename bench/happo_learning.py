"""HAPPO and HATRPO against I-TRPO, MATRPO and C-TRPO on spread-shared, N=3 ring, several seeds.

Every (seed, algorithm) is a real multi-process launch; the algorithms run interleaved (all
algorithms of seed 0, then of seed 1, ...), so machine load drifts over all of them alike. Prints
one JSON object (bench/common.emit): per algorithm the final team return (mean of the last 3
iterations) per seed, mean and spread, the ratios the issue's targets name, and the curves;
``--plot`` writes the learning-curve PNG.

    python -m bench.happo_learning --iterations 12 --steps 5000 --seeds 0 1 2 \
        --plot docs/happo_learning.png
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.common import RESULTS, emit, launch_failure, load_average, plot_seed_curves, topology
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

ALGORITHMS = ("happo", "hatrpo", "itrpo", "matrpo", "ctrpo")
COLOURS = {"happo": "tab:red", "hatrpo": "tab:purple", "itrpo": "tab:orange",
           "matrpo": "tab:blue", "ctrpo": "tab:green"}


def ablate_factor() -> None:
    """Make every HATRPO/HAPPO agent ignore the token: exp(S) is replaced by 1. The launcher
    forks the agent processes from this one, so they inherit the patch."""
    import torch

    from p2pmarl.algos import happo

    happo.hand_on_factor = lambda log_ratio_sum: torch.ones(len(log_ratio_sum))


def run_one(algo: str, seed: int, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=topology("ring3"), env="spread-shared", algo=algo, iterations=args.iterations,
        steps_per_iteration=args.steps, n_envs=10, episode_length=100, seed=seed,
        max_kl=args.max_kl, out=str(args.out / "runs"),
    ).validate()
    result = launch(config, show_progress=False)
    failure = launch_failure(result)
    curve = result.summary.get("team_return_curve", [])
    return {
        "algo": algo, "seed": seed, "status": "ok" if failure is None else failure,
        "curve": curve, "final": statistics.fmean(curve[-3:]) if curve else None,
        "first": statistics.fmean(curve[:3]) if curve else None,
        "wall_seconds": result.summary.get("wall_seconds"),
        "env_steps": result.summary.get("env_steps"), "run_dir": str(result.run_dir),
        "load_average": load_average(),
    }


def table(results: list[dict], algos: list[str]) -> dict:
    rows = {}
    for algo in algos:
        finals = [r["final"] for r in results if r["algo"] == algo and r["final"] is not None]
        if not finals:
            continue
        rows[algo] = {
            "final_per_seed": finals,
            "mean": statistics.fmean(finals),
            "stdev": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "first_mean": statistics.fmean(
                r["first"] for r in results if r["algo"] == algo and r["first"] is not None
            ),
            "wall_seconds": [r["wall_seconds"] for r in results if r["algo"] == algo],
        }
    return rows


def targets(rows: dict) -> dict:
    """HAPPO and HATRPO above I-TRPO; HAPPO within 5 % of C-TRPO (returns are negative)."""
    found = {}
    if "itrpo" in rows:
        for algo in ("happo", "hatrpo"):
            if algo in rows:
                found[f"{algo}_above_itrpo"] = rows[algo]["mean"] > rows["itrpo"]["mean"]
    if "happo" in rows and "ctrpo" in rows:
        gap = (rows["ctrpo"]["mean"] - rows["happo"]["mean"]) / abs(rows["ctrpo"]["mean"])
        found["happo_below_ctrpo_fraction"] = gap
        found["happo_within_5_percent_of_ctrpo"] = gap <= 0.05
    return found


def plot(results: list[dict], algos: list[str], path: Path) -> None:
    colours = {algo: COLOURS[algo] for algo in algos}
    plot_seed_curves(
        results, colours, "spread-shared N=3, ring3: mean over seeds (thin: single seeds)", path
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--out", type=Path, default=RESULTS / "happo_learning")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--max-kl", type=float, help="trust region for every algorithm run")
    parser.add_argument("--no-factor", action="store_true",
                        help="ablation: HATRPO/HAPPO use factor 1 (independent TRPO/PPO updates)")
    args = parser.parse_args()
    if args.no_factor:
        ablate_factor()
    results = []
    for seed in args.seeds:
        for algo in args.algos:
            results.append(run_one(algo, seed, args))
            print(f"{algo} seed {seed}: final {results[-1]['final']}", flush=True)
    rows = table(results, args.algos)
    if args.plot:
        plot(results, args.algos, args.plot)
    failed = [r for r in results if r["status"] != "ok"]
    return emit("happo_learning", {
        "status": "ok" if not failed else "failed",
        "env_steps_per_run": args.iterations * args.steps, "max_kl": args.max_kl,
        "no_factor": args.no_factor,
        "table": rows, "targets": targets(rows), "runs": results,
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
