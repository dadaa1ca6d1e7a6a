"""MADDPG on ``tag``: agent-per-process vs the single-process loop vs Genetic MADDPG (4 workers).

``speed``: env steps per second of the three, measured back to back (ratios are what count on a
shared machine), plus two single-process loops at once (what the machine's 2 vCPUs give two
CPU-bound processes: the ceiling of the genetic workers' speed-up); ``--world-link`` picks the
launched runs' world link (unix, the default, or zmq). ``curves``: predator return vs env
steps (per worker for the genetic variant) for a few seeds, and a plot. Usage::

    python -m bench.maddpg speed --steps 10000
    python -m bench.maddpg curves --steps 30000 --seeds 0 1 2 --plot docs/maddpg_tag.png
    python -m bench.maddpg curves --steps 60000 --seeds 1 --variants maddpg --original-code
    python -m bench.maddpg plot --results R0.json R1.json R2.json --plot docs/maddpg_tag.png

``--original-code`` trains with the original MADDPG code's learning rates and minibatch
(actor and critic lr 1e-2, batch 1024) instead of the report's appendix (1e-3 / 1e-4, 256).
``plot`` merges several ``curves`` results (e.g. seeds and variants run side by side).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, emit, launch_failure, load_average, topology

N_ENVS = 8
STEPS_PER_ITERATION = 100
EPISODE_LENGTH = 50


VARIANTS = ("single", "maddpg", "genetic4")
ORIGINAL_CODE = {"actor_lr": 1e-2, "critic_lr": 1e-2, "batch_size": 1024}
"""The original MADDPG code's settings that differ from the report's appendix."""


def single_process(steps: int, seed: int, settings: dict[str, Any] | None = None,
                   n_envs: int = N_ENVS) -> dict[str, Any]:
    """The plain MADDPG loop in this process: one lone worker, no runtime, no messages; it
    steps its copies with the same batched particle world as the runtime's world process."""
    import dataclasses

    import torch

    from p2pmarl.algos.genetic_maddpg import GeneticConfig, GeneticMADDPG
    from p2pmarl.algos.maddpg import MADDPGConfig

    torch.set_num_threads(1)
    config = dataclasses.replace(MADDPGConfig(), **(settings or {}))
    worker = GeneticMADDPG(0, "tag", EPISODE_LENGTH, None, config, GeneticConfig(), seed)
    T = -(-STEPS_PER_ITERATION // n_envs)
    curve, prey, done, started, cpu = [], [], 0, time.monotonic(), time.process_time()
    while done < steps:
        batch = worker.collect(T, n_envs)
        stats = worker.local_update(batch)
        done += batch.n_samples
        if "rollout/agent_returns" in stats:
            curve.append((done, stats["rollout/agent_returns"][0]))
            prey.append((done, stats["rollout/agent_returns"][-1]))
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu
    return {"env_steps": done, "seconds": seconds, "steps_per_second": done / seconds,
            "cpu_seconds": cpu, "cpu_ms_per_step": 1000 * cpu / done, "curve": curve,
            "prey_curves": [prey]}


def launched(algo: str, topology_name: str, steps: int, seed: int, out: Path,
             settings: dict[str, Any] | None = None, n_envs: int = N_ENVS,
             world_link: str = "unix") -> dict[str, Any]:
    """A real run; throughput = env steps of all learners / the slowest learner's training time
    (sum of its iteration times: start-up excluded, as for the single-process loop)."""
    settings = settings or {}
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.launcher import launch
    from p2pmarl.runtime.rundir import read_jsonl

    config = RunConfig(
        topology=topology(topology_name), env="tag", algo=algo,
        iterations=steps // STEPS_PER_ITERATION, steps_per_iteration=STEPS_PER_ITERATION,
        n_envs=n_envs, episode_length=EPISODE_LENGTH, seed=seed, out=str(out / "runs"),
        checkpoint_every=10**6, world_link=world_link, maddpg_actor_lr=settings.get("actor_lr"),
        maddpg_critic_lr=settings.get("critic_lr"), maddpg_batch_size=settings.get("batch_size"),
    ).validate()
    started, children = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = launch(config, show_progress=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    failure = launch_failure(result)
    if failure:
        raise RuntimeError(failure)
    run = Path(result.run_dir)
    learners = 4
    per_learner = [read_jsonl(run / f"agents/agent-{i}/metrics.jsonl") for i in range(learners)]
    rows = [[r for r in m if isinstance(r.get("iteration"), int)] for m in per_learner]
    training = max(sum(r["time/iteration_seconds"] for r in m) for m in rows)
    workers = algo == "genetic-maddpg"
    env_steps = rows[0][-1]["env_steps"] * (learners if workers else 1)
    curves = []
    for m in rows if workers else rows[:1]:
        curves.append([
            (r["env_steps"], r["rollout/agent_returns"][0] if workers else r["rollout/return"])
            for r in m if r.get("rollout/episodes")
        ])
    prey = [[(r["env_steps"], r["rollout/agent_returns"][-1] if workers else r["rollout/return"])
             for r in m if r.get("rollout/episodes")] for m in (rows if workers else rows[-1:])]
    syncs = [s for i in range(learners) for s in read_jsonl(run / f"agents/agent-{i}/admm.jsonl")
             if s.get("event") == "critic_sync"] if workers else []
    return {
        "run_dir": str(run), "env_steps": env_steps, "training_seconds": training,
        "wall_seconds": wall, "steps_per_second": env_steps / training,
        "steps_per_second_with_startup": env_steps / wall, "curves": curves, "prey_curves": prey,
        "syncs": _sync_summary(syncs), "bytes_sent": [m[-1]["net/bytes_sent"] for m in rows],
        "pss_mb": [m[-1]["sys/pss_mb"] for m in rows],
        "cpu_seconds": cpu, "cpu_ms_per_step": 1000 * cpu / env_steps,
    }


def _sync_summary(syncs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for number in sorted({s["sync"] for s in syncs}):
        these = [s for s in syncs if s["sync"] == number]
        out.append({
            "sync": number, "winners": sorted({s["winner"] for s in these}),
            "agreed": len({s["winner"] for s in these}) == 1,
            "true_best": max(these, key=lambda s: (s["own_score"], -s["winner"]))["winner"]
            if these else None,
            "rounds": max(s["rounds"] for s in these),
            "max_learned_at_round": max(s["learned_at_round"] for s in these),
            "missed": sum(s["missed"] for s in these),
            "bytes_sent": sum(s["bytes_sent"] for s in these),
            "seconds": max(s["seconds"] for s in these),
        })
    return out


def single_in_own_session(steps: int, seed: int, n_envs: int = N_ENVS) -> dict[str, Any]:
    """:func:`single_process` in a child process with its own session, as the runtime starts
    each world and agent process: with the kernel's autogroup scheduling (one CPU share per
    session) a loop left in the benchmark's session would get one share against the runtime's
    one per process, and on a loaded host almost no CPU."""
    code = ("import json, sys; from bench.maddpg import single_process; "
            f"print(json.dumps(single_process({int(steps)}, {int(seed)}, n_envs={int(n_envs)})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, start_new_session=True, cwd=Path(__file__).parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def concurrent_singles(copies: int, steps: int, n_envs: int) -> dict[str, Any]:
    """``copies`` independent single-process loops at once (seeds 0, 1, ...): their summed
    throughput is what this machine's cores give to that many CPU-bound processes, the ceiling
    of the genetic workers' speed-up (the hypervisor's vCPUs need not be whole cores)."""
    with ThreadPoolExecutor(copies) as pool:
        runs = list(pool.map(lambda seed: single_in_own_session(steps, seed, n_envs),
                             range(copies)))
    return {"copies": copies, "steps_per_second": sum(r["steps_per_second"] for r in runs),
            "each": [round(r["steps_per_second"], 1) for r in runs]}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    single = single_in_own_session(args.steps, seed=0, n_envs=args.n_envs)
    two = concurrent_singles(2, args.steps, args.n_envs)
    maddpg = launched("maddpg", "complete4", args.steps, 0, args.out, n_envs=args.n_envs,
                      world_link=args.world_link)
    genetic = launched("genetic-maddpg", "ring4", args.steps, 0, args.out, n_envs=args.n_envs,
                       world_link=args.world_link)
    for result in (single, maddpg, genetic):
        for key in ("curve", "curves", "prey_curves"):
            result.pop(key, None)
    return {
        "status": "ok", "load_average": load_average(), "n_envs": args.n_envs,
        "world_link": args.world_link,
        "single": single, "two_singles_at_once": two, "maddpg": maddpg,
        "genetic4": genetic,
        "ratio_agent_per_process": maddpg["steps_per_second"] / single["steps_per_second"],
        "ratio_agent_per_process_with_startup":
            maddpg["steps_per_second_with_startup"] / single["steps_per_second"],
        "ratio_genetic4_over_one": genetic["steps_per_second"] / single["steps_per_second"],
        "ratio_two_singles_at_once_over_one": two["steps_per_second"] / single["steps_per_second"],
        "ratio_genetic4_over_one_with_startup":
            genetic["steps_per_second_with_startup"] / single["steps_per_second"],
        "cpu_per_step_agent_per_process_over_single":
            maddpg["cpu_ms_per_step"] / single["cpu_ms_per_step"],
        "cpu_per_step_genetic4_over_single":
            genetic["cpu_ms_per_step"] / single["cpu_ms_per_step"],
    }


def curves(args: argparse.Namespace) -> dict[str, Any]:
    settings = ORIGINAL_CODE if args.original_code else {}
    results: dict[str, list[Any]] = {name: [] for name in args.variants}
    runners = {
        "single": lambda seed: single_process(args.steps, seed, settings),
        "maddpg": lambda seed: launched("maddpg", "complete4", args.steps, seed, args.out,
                                        settings),
        "genetic4": lambda seed: launched("genetic-maddpg", "ring4", args.steps, seed,
                                          args.out, settings),
    }
    for seed in args.seeds:
        for name in args.variants:
            results[name].append({"seed": seed, **runners[name](seed)})
    summary = {name: _final(name, runs) for name, runs in results.items()}
    if args.plot:
        _plot(results, Path(args.plot), args.steps)
    return {"status": "ok", "load_average": load_average(), "steps": args.steps,
            "seeds": args.seeds, "settings": settings, "final_predator_return": summary,
            "prey_return": _prey(results),
            "runs": results}


def merged(args: argparse.Namespace) -> dict[str, Any]:
    """The seeds of several ``curves`` results (same steps and settings) as one, and a plot."""
    records = [json.loads(Path(path).read_text()) for path in args.results]
    steps = {r["steps"] for r in records}
    settings = {json.dumps(r.get("settings", {}), sort_keys=True) for r in records}
    if len(steps) != 1 or len(settings) != 1:
        return {"status": "error", "error": f"results differ in steps {steps} or settings "
                                            f"{settings}; merge only like runs"}
    results = {name: [run for r in records for run in r["runs"].get(name, [])]
               for name in VARIANTS}
    results = {name: runs for name, runs in results.items() if runs}
    if args.plot:
        _plot(results, Path(args.plot), steps.pop() if len(steps) == 1 else 0)
    summary = {name: _final(name, runs) for name, runs in results.items()}
    return {"status": "ok", "steps": records[0]["steps"], "settings": records[0].get("settings"),
            "seeds": sorted({run["seed"] for runs in results.values() for run in runs}),
            "results": args.results,
            "final_predator_return": summary, "prey_return": _prey(results)}


def _prey(results: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Mean prey return over the last 20 % of steps per seed (genetic: mean of workers), where
    the curves carry per-agent returns (prey = agent 3)."""
    out: dict[str, list[float]] = {}
    for name, runs in results.items():
        values = []
        for run in runs:
            series = run.get("prey_curves") or []
            finals = [np.mean([r for s, r in c if s >= 0.8 * c[-1][0]]) for c in series if c]
            if finals:
                values.append(float(np.mean(finals)))
        out[name] = values
    return out


def _final(name: str, runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean predator return per episode over the last 20% of env steps, mean ± std over seeds
    (genetic: mean over its workers)."""
    finals = []
    for run in runs:
        series = [run["curve"]] if name == "single" else run["curves"]
        values = []
        for curve in series:
            if not curve:
                continue
            last = curve[-1][0]
            values.append(np.mean([r for s, r in curve if s >= 0.8 * last]))
        finals.append(float(np.mean(values)))
    return {"mean": float(np.mean(finals)), "std": float(np.std(finals)), "per_seed": finals}


def _binned(curve: list[tuple[int, float]], edges: np.ndarray) -> np.ndarray:
    steps = np.array([s for s, _ in curve])
    values = np.array([r for _, r in curve])
    return np.array([values[(steps > lo) & (steps <= hi)].mean()
                     if ((steps > lo) & (steps <= hi)).any() else np.nan
                     for lo, hi in itertools.pairwise(edges)])


def _plot(results: dict[str, list[Any]], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, steps, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    labels = {"single": "single-process MADDPG loop", "maddpg": "MADDPG, agent per process",
              "genetic4": "Genetic MADDPG, 4 workers on a ring (mean of workers)"}
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, runs in results.items():
        series = []
        for run in runs:
            curves_ = [run["curve"]] if name == "single" else run["curves"]
            series.append(np.nanmean([_binned(c, edges) for c in curves_ if c], axis=0))
        mean, std = np.nanmean(series, axis=0), np.nanstd(series, axis=0)
        axis.plot(centres, mean, label=labels[name])
        axis.fill_between(centres, mean - std, mean + std, alpha=0.2)
    axis.set_xlabel("env steps (per worker)")
    axis.set_ylabel("predator return per 50-step episode")
    axis.set_title(f"tag, 3 predators vs 1 prey (all trained), {len(next(iter(results.values())))}"
                   " seeds")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.maddpg")
    parser.add_argument("mode", choices=("speed", "curves", "plot"))
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per learner/worker")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--plot", help="curves: write the plot here (PNG)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--original-code", action="store_true",
                        help="curves: the original MADDPG code's lr 1e-2 and batch 1024")
    parser.add_argument("--n-envs", type=int, default=N_ENVS,
                        help="speed: env copies per learner (default 8)")
    parser.add_argument("--world-link", choices=("unix", "zmq"), default="unix",
                        help="speed: the launched runs' world link (default unix)")
    parser.add_argument("--results", nargs="+", help="plot: curves result files to merge")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="curves: which variants to run (default all three)")
    args = parser.parse_args(argv)
    if args.mode == "plot" and not args.results:
        parser.error("plot needs --results")
    modes = {"speed": speed, "curves": curves, "plot": merged}
    result = modes[args.mode](args)
    return emit(f"maddpg-{args.mode}", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
