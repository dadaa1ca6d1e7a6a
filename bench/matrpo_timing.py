"""Where a MATRPO training iteration spends its time, at the paper's settings for N=3.

M = 10,000 samples per iteration, 100 edge activations, 2×128 SELU, ring3, spread; reports
seconds per iteration (after the first) split into rollout, local update (GAE + value fit +
θ_old preparation) and the ADMM phase, and per activation the compute (θ step) and
communication (sending, and waiting for the partner's message) seconds. With ``--compare-schedules``
it instead runs ring6 in async and seeded mode at equal activation counts and reports the ADMM
phase wall-time ratio.

    python bench/matrpo_timing.py --iterations 3
    python bench/matrpo_timing.py --compare-schedules --steps 2000 --iterations 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _run(args: argparse.Namespace, topology: str, schedule: str, steps: int) -> RunDir:
    config = RunConfig(
        topology=str(REPO / topology), env="spread", algo="matrpo", iterations=args.iterations,
        steps_per_iteration=steps, n_envs=10, episode_length=100, seed=args.seed,
        admm_schedule=schedule, admm_iterations=args.activations, out=str(args.out),
        fisher_subsample=args.fisher_subsample,
    )
    result = launch(config, show_progress=False)
    if result.summary["status"] != "completed":
        raise SystemExit(f"run failed: {result.messages}")
    return RunDir(result.run_dir)


def _iteration_rows(run: RunDir, agent: int) -> list[dict]:
    return [r for r in read_jsonl(run.agent_metrics(agent)) if "iteration" in r][1:]


def timing(args: argparse.Namespace) -> dict:
    run = _run(args, "topologies/ring3.yaml", args.schedule, args.steps)
    per_agent = []
    for agent in range(3):
        rows = _iteration_rows(run, agent)
        records = [r for r in read_jsonl(run.agent_admm(agent)) if r["iteration"] > 0]
        compute = [r["compute_seconds"] for r in records]
        communication = [r["communication_seconds"] for r in records]
        per_agent.append({
            "agent": agent,
            "iteration_seconds": statistics.fmean(r["time/iteration_seconds"] for r in rows),
            "rollout_seconds": statistics.fmean(r["time/rollout_seconds"] for r in rows),
            "local_seconds": statistics.fmean(r["time/local_seconds"] for r in rows),
            "admm_phase_seconds": statistics.fmean(r["admm/phase_seconds"] for r in rows),
            "activations_per_iteration": len(records) / len(rows),
            "activation_compute_seconds": statistics.fmean(compute),
            "activation_communication_seconds": statistics.fmean(communication),
            "communication_share": sum(communication) / (sum(compute) + sum(communication)),
            "bytes_per_activation": statistics.fmean(r["bytes_sent"] for r in records),
        })
    return {"benchmark": "matrpo_timing", "steps_per_iteration": args.steps,
            "activations": args.activations, "run_dir": str(run.root), "agents": per_agent,
            "seconds_per_iteration": max(a["iteration_seconds"] for a in per_agent)}


def compare_schedules(args: argparse.Namespace) -> dict:
    phases = {}
    for schedule in ("seeded", "async", "seeded", "async"):
        run = _run(args, "topologies/ring6.yaml", schedule, args.steps)
        seconds = [
            max(r["admm/phase_seconds"] for r in _iteration_rows(run, agent))
            for agent in range(6)
        ]
        activations = sum(
            1 for agent in range(6) for r in read_jsonl(run.agent_admm(agent))
            if r["status"] == "committed"
        ) // 2
        phases.setdefault(schedule, []).append({"phase_seconds": max(seconds),
                                                "committed_activations": activations})
    seeded = statistics.fmean(p["phase_seconds"] for p in phases["seeded"])
    asynchronous = statistics.fmean(p["phase_seconds"] for p in phases["async"])
    return {"benchmark": "admm_schedules", "topology": "ring6", "runs": phases,
            "speedup_async_over_seeded": seeded / asynchronous}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--activations", type=int, default=None)
    parser.add_argument("--schedule", default="async")
    parser.add_argument("--fisher-subsample", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-schedules", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/matrpo_timing")
    args = parser.parse_args()
    result = compare_schedules(args) if args.compare_schedules else timing(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
