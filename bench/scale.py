"""Scale: a 128-agent ring gets connected, a 64-agent ring completes one MATRPO iteration.

Two launches on ``spread`` (the batched world), one after the other, each with a sampler
thread that reads every child's VmHWM / Rss / Pss / USS (see :mod:`bench.memory`):

a. **connect**: I-TRPO on a ring of ``--connect-agents`` (default 128) agents with a tiny budget
   (1 iteration, steps_per_iteration 64, n_envs 2, episode_length 10); reported: the seconds
   from calling ``launch`` to the world's ``connected`` event (target ≤ 20 s), the wall time.
b. **iteration**: MATRPO on a ring of ``--iteration-agents`` (default 64) with the paper's
   Table III N=12 row for β and δ/N (β = 5, δ/N = 0.001), a small per-iteration budget
   (``--steps`` 640 over 16 copies, 100-step episodes; ``--admm-iterations`` 64 async
   activations) and 1 iteration; reported: completion, wall time, the agents' mean
   ``time/iteration_seconds``.

For both: the median and maximum Pss / USS / Rss over the agent processes, the world's, and the
sum of Pss over all processes (the run's real footprint). Targets: agent Pss ≤ 80 MB, USS ≤ 30 MB.
The machine has 2 cores: 129 processes share them, so these are feasibility numbers.

Run from the repository root::

    python -m bench.scale [--connect-agents 128] [--iteration-agents 64]

The last stdout line is one JSON object; it is also saved as ``<out>/scale-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, read_jsonl

try:
    from bench.common import RESULTS, emit, launch_failure, load_average
    from bench.memory import Sampler
except ModuleNotFoundError:  # run as ``python bench/NAME.py``
    from common import RESULTS, emit, launch_failure, load_average  # type: ignore[no-redef]
    from memory import Sampler  # type: ignore[no-redef]

TARGETS = {"connect_s": 20.0, "agent_pss_mb": 80.0, "agent_uss_mb": 30.0}


def ring_file(n: int, folder: Path) -> str:
    path = folder / f"ring{n}.yaml"
    path.write_text(f"name: ring{n}\ngenerator: ring\nn: {n}\n")
    return str(path)


def memory_summary(peaks: dict[str, dict[str, float]]) -> dict:
    agents = [v for name, v in peaks.items() if name.startswith("agent")]
    summary: dict = {"world": peaks.get("world"), "processes_sampled": len(peaks)}
    for key in ("pss_mb", "uss_mb", "rss_mb"):
        values = [a[key] for a in agents]
        if values:
            summary[f"agent_{key}_median"] = round(statistics.median(values), 1)
            summary[f"agent_{key}_max"] = round(max(values), 1)
    summary["total_pss_mb"] = round(sum(v["pss_mb"] for v in peaks.values()), 1)
    return summary


def measured_launch(config: RunConfig) -> dict:
    sampler = Sampler(0.5)
    sampler.start()
    before = time.time()
    try:
        result = launch(config.validate(), show_progress=False)
    finally:
        sampler.stop()
    run_dir = RunDir(result.run_dir)
    events = read_jsonl(run_dir.world_events)
    connected = next((e for e in events if e.get("event") == "connected"), None)
    row: dict = {
        "run_dir": str(result.run_dir),
        "error": launch_failure(result),
        "wall_s": round(time.time() - before, 2),
        "launch_to_connected_s": (
            round(connected["unix_time"] - before, 2) if connected is not None else None
        ),
        "memory": memory_summary(sampler.by_name(run_dir.root / "pids.json")),
    }
    seconds = []
    for metrics in sorted((run_dir.root / "agents").glob("agent-*/metrics.jsonl")):
        for line in metrics.read_text().splitlines():
            value = json.loads(line).get("time/iteration_seconds")
            if value is not None:
                seconds.append(value)
    if seconds:
        row["mean_agent_iteration_seconds"] = round(statistics.fmean(seconds), 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect-agents", type=int, default=128)
    parser.add_argument("--iteration-agents", type=int, default=64)
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--admm-iterations", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        common = {"env": "spread", "seed": 0, "out": str(args.out / "runs"), "iterations": 1}
        connect = measured_launch(RunConfig(
            topology=ring_file(args.connect_agents, Path(folder)), algo="itrpo",
            steps_per_iteration=64, n_envs=2, episode_length=10, **common,
        ))
        iteration = measured_launch(RunConfig(
            topology=ring_file(args.iteration_agents, Path(folder)), algo="matrpo",
            steps_per_iteration=args.steps, n_envs=16, episode_length=100, beta=5.0,
            max_kl=0.001, admm_iterations=args.admm_iterations, **common,
        ))
    errors = [row["error"] for row in (connect, iteration) if row["error"]]
    result = {
        "status": "ok" if not errors else "failed",
        "errors": errors,
        "connect": {"n_agents": args.connect_agents, **connect},
        "iteration": {
            "n_agents": args.iteration_agents, "steps_per_iteration": args.steps,
            "admm_iterations": args.admm_iterations, "beta": 5.0, "max_kl": 0.001, **iteration,
        },
        "targets": TARGETS,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    return emit("scale", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
