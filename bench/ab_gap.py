"""One-factor-at-a-time A/B runs for the sample-efficiency gap to the reference (issue 13).

Every factor switches ONE known difference between p2pmarl and the reference TensorFlow
implementation of MATRPO on our side; every (setting, seed) is a real multi-process launch of
spread N=3 on ring3, interleaved (seed-major) so that machine load hits all settings alike.
Prints one JSON object: per setting the final team return (mean of the last 3 iterations) per
seed, its mean, and the difference to the baseline.

Factors with a RunConfig switch today (name: overrides):

* ``baseline``          : today's defaults
* ``fisher_all``        : ``fisher_subsample=1`` (reference: CG on every 5th sample = ours)
* ``initial_dual_1``    : ``initial_dual=1.0`` (reference: y starts at 1; MATRPO only)
* ``terminal_ends``     : ``episode_end="terminal"`` (no time-out bootstrap in GAE)
* ``own_normalization`` : ``advantage_normalization="own"`` (own mean and std)

Not switchable yet (see docs/benchmarks.md, issue 13): the 14-d spread observation without the
always-zero communication channels, GAE across episode resets, pooled advantage normalization
(needs cross-agent statistics: a centralized leak, diagnostic only) and the value-fit learning
rate / epochs (fixed in TRPOConfig, not RunConfig fields).

The issue's full version (60k and 260k steps, several seeds):

    python bench/ab_gap.py --algo matrpo --iterations 26 --steps 10000 --seeds 0 1 2

A reduced run that fits a shared 2-core machine:

    python bench/ab_gap.py --algo matrpo --iterations 3 --steps 5000 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, topology
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

FACTORS: dict[str, dict[str, object]] = {
    "baseline": {},
    "fisher_all": {"fisher_subsample": 1},
    "initial_dual_1": {"initial_dual": 1.0},
    "terminal_ends": {"episode_end": "terminal"},
    "own_normalization": {"advantage_normalization": "own"},
}
"""Setting name → RunConfig overrides (one factor each)."""


def run_one(setting: str, seed: int, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=topology("ring3"), env="spread", algo=args.algo, iterations=args.iterations,
        steps_per_iteration=args.steps, n_envs=10, episode_length=100, seed=seed,
        out=str(args.out / "runs"), **FACTORS[setting],
    ).validate()
    summary = launch(config, show_progress=False).summary
    curve = summary["team_return_curve"]
    return {"setting": setting, "seed": seed, "status": summary["status"], "curve": curve,
            "final": statistics.fmean(curve[-3:]) if curve else None,
            "wall_seconds": summary["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="matrpo")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", default=list(FACTORS), choices=list(FACTORS))
    parser.add_argument("--out", type=Path, default=RESULTS / "ab_gap")
    args = parser.parse_args()
    runs = [run_one(setting, seed, args) for seed in args.seeds for setting in args.settings]
    table = {}
    for setting in args.settings:
        finals = [r["final"] for r in runs if r["setting"] == setting and r["final"] is not None]
        table[setting] = {"finals": finals, "mean": statistics.fmean(finals) if finals else None}
    base = table.get("baseline", {}).get("mean")
    for row in table.values():
        row["minus_baseline"] = None if base is None or row["mean"] is None else row["mean"] - base
    result = {"benchmark": "ab_gap", "algo": args.algo, "iterations": args.iterations,
              "steps_per_iteration": args.steps, "seeds": args.seeds, "table": table,
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ab_gap-{args.algo}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
