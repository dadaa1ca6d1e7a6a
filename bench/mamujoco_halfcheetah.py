"""I-TRPO vs MATRPO on 2-agent HalfCheetah (MaMuJoCo ``2x3``), one seed each (issue 16).

``--env mamujoco:HalfCheetah:2x3``: agent 0 drives the back leg, agent 1 the front leg (3 joints
each, Box(-1, 1)^3 actions, diagonal Gaussian heads), each observes its own 12 numbers
(``agent_obsk`` 1); both get the robot's reward (forward velocity − 0.1·‖a‖²). 1000-step episodes
(Gymnasium's HalfCheetah-v5 limit, a time limit: GAE bootstraps there), 10 copies, so every
iteration of 10,000 steps ends 10 episodes. Two agents on one edge (``line`` n=2); the
algorithms' shipped defaults otherwise (I-TRPO δ=0.01; MATRPO δ/N=0.003, β=1, 100 activations).
No observation normalization: each agent's networks see the raw observations.

Needs the ``mujoco`` extra. Every run is a real multi-process launch, one after the other;
prints one JSON object (episode return of the robot = each agent's return, curves, wall time)
and ``--plot`` writes the learning curves.

    python -m bench.mamujoco_halfcheetah --iterations 30 --steps 10000 \
        --plot docs/mamujoco_halfcheetah.png
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import RESULTS, emit, launch_failure, load_average, plot_seed_curves
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch

ENV = "mamujoco:HalfCheetah:2x3"
EPISODE_LENGTH = 1000
N_AGENTS = 2
ALGORITHMS = ("matrpo", "itrpo")
PAIR = "name: pair\ngenerator: line\nn: 2\n"


def run_one(algo: str, seed: int, topology: Path, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=str(topology), env=ENV, algo=algo, iterations=args.iterations,
        steps_per_iteration=args.steps, n_envs=args.n_envs, episode_length=EPISODE_LENGTH,
        seed=seed, out=str(args.out / "runs"),
    ).validate()
    result = launch(config, show_progress=False)
    summary = result.summary
    # every agent gets the robot's reward: the team return is N times the episode return
    curve = [value / N_AGENTS for value in summary.get("team_return_curve", [])]
    record = {
        "algo": algo, "seed": seed, "status": summary.get("status"),
        "failure": launch_failure(result), "curve": curve,
        "first": curve[0] if curve else None,
        "final": statistics.fmean(curve[-3:]) if curve else None,
        "best": max(curve) if curve else None,
        "wall_seconds": summary.get("wall_seconds"), "env_steps": summary.get("env_steps"),
        "run_dir": str(result.run_dir), "load_after": load_average(),
    }
    print({k: v for k, v in record.items() if k != "curve"}, flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=RESULTS / "mamujoco_halfcheetah")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        topology = Path(folder) / "pair.yaml"
        topology.write_text(PAIR)
        results = [run_one(algo, args.seed, topology, args) for algo in args.algos]
    if args.plot:
        colours = dict(zip(ALGORITHMS, ("tab:blue", "tab:orange"), strict=True))
        plot_seed_curves(
            results, colours, f"2-agent HalfCheetah (MaMuJoCo 2x3), seed {args.seed}",
            args.plot, ylabel="episode return (1000 steps, the robot's reward)",
        )
    raise SystemExit(emit("mamujoco_halfcheetah", {
        "status": "ok" if all(r["status"] == "completed" for r in results) else "failed",
        "env": ENV, "iterations": args.iterations, "steps": args.steps, "n_envs": args.n_envs,
        "episode_length": EPISODE_LENGTH, "seed": args.seed,
        "load_before": load_before, "load_after": load_average(),
        "table": {r["algo"]: {k: r[k] for k in ("first", "final", "best", "wall_seconds")}
                  for r in results},
        "runs": results,
    }, args.out))


if __name__ == "__main__":
    main()
