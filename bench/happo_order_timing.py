"""Token order timing on a ring of 6: ``--happo-order random`` against ``ring``.

One real launch per (algorithm, order), spread-shared, one seed. Per iteration, from the agents'
``token/*`` metrics: the sequential updates (Σ over agents of ``token/update_seconds``), the
token's hand-over time beyond them (the gaps between one agent's update end and the next one's
update start, summed along the order: message latency, relays and polling), the iteration's wall
time and the hops per token. Target (issue 9): with ``ring`` order the hand-over time is ≤ 10 % of
the iteration.

    python -m bench.happo_order_timing --iterations 5 --steps 5000
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, emit, launch_failure, load_average, topology
from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch


def iteration_rows(run_dir: Path) -> list[list[dict]]:
    """rows[k] = every agent's metrics row of iteration k."""
    per_agent = []
    for agent_dir in sorted((run_dir / "agents").iterdir()):
        lines = (agent_dir / "metrics.jsonl").read_text().splitlines()
        per_agent.append([row for row in map(json.loads, lines) if "iteration" in row])
    return [list(rows) for rows in zip(*per_agent, strict=True)]


def split_iteration(rows: list[dict]) -> dict:
    """Update time, hand-over time beyond the updates, iteration time and hops of one iteration."""
    in_order = sorted(rows, key=lambda row: row["token/position"])
    updates = sum(row["token/update_seconds"] for row in in_order)
    gaps = sum(
        later["token/update_started_unix"] - earlier["token/update_ended_unix"]
        for earlier, later in itertools.pairwise(in_order)
    )
    iteration = max(row["time/iteration_seconds"] for row in rows)
    hops = [row["token/hops"] for row in in_order[1:]]
    return {
        "iteration_seconds": iteration,
        "updates_seconds": updates,
        "hand_over_seconds": gaps,
        "hand_over_fraction": gaps / iteration,
        "hops_mean": statistics.fmean(hops),
        "hops_max": max(hops),
        "relayed": sum(row["token/relayed"] for row in rows),
        "lost": sum(row["token/lost"] for row in rows),
        "wait_seconds_mean": statistics.fmean(row["token/wait_seconds"] for row in rows),
    }


def run_one(algo: str, order: str, args: argparse.Namespace) -> dict:
    config = RunConfig(
        topology=topology("ring6"), env="spread-shared", algo=algo, iterations=args.iterations,
        steps_per_iteration=args.steps, n_envs=10, episode_length=100, seed=args.seed,
        happo_order=order, out=str(args.out / "runs"),
    ).validate()
    result = launch(config, show_progress=False)
    failure = launch_failure(result)
    if failure is not None:
        return {"algo": algo, "order": order, "status": failure}
    iterations = [split_iteration(rows) for rows in iteration_rows(result.run_dir)]
    measured = iterations[1:]  # the first iteration warms up torch
    summary = {
        key: statistics.fmean(it[key] for it in measured)
        for key in ("iteration_seconds", "updates_seconds", "hand_over_seconds",
                    "hand_over_fraction", "hops_mean", "wait_seconds_mean")
    }
    return {"algo": algo, "order": order, "status": "ok", "summary": summary,
            "iterations": iterations, "run_dir": str(result.run_dir),
            "load_average": load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algos", nargs="+", default=["happo", "hatrpo"])
    parser.add_argument("--out", type=Path, default=RESULTS / "happo_order_timing")
    args = parser.parse_args()
    results = [run_one(algo, order, args) for algo in args.algos for order in ("random", "ring")]
    for result in results:
        if result["status"] == "ok":
            print(result["algo"], result["order"],
                  {k: round(v, 4) for k, v in result["summary"].items()}, flush=True)
    ok = all(r["status"] == "ok" for r in results)
    return emit("happo_order_timing", {
        "status": "ok" if ok else "failed",
        "target_ring_hand_over_fraction_at_most": 0.10,
        "met": ok and all(r["summary"]["hand_over_fraction"] <= 0.10
                          for r in results if r["order"] == "ring"),
        "runs": results,
    }, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
