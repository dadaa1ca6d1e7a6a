"""Rollout throughput of the multi-process runtime relative to a single-process loop.

Two measurements of environment transitions per second with the same environment and networks,
alternated in one run (a, b, a, b, ... for ``--rounds`` rounds, default 2):

a. **single process**: K=10 copies of ``make_env("spread", 3, 100)`` seeded as the world seeds
   them, three :class:`~p2pmarl.algos.itrpo.ITRPO` agents (default ``TRPOConfig``, seeds from
   ``process_seeds``); each step every agent calls ``act`` on its own (K, d) observation block,
   then every copy is stepped with its row of the joint action and reset when its episode ends
   (what the world's ``VectorWorld`` does). ``--single-steps`` (default 5000) timed steps after
   100 warm-up steps; transitions = steps · K. torch is limited to one thread, as in agents.
b. **multi-process**: ``launch`` of I-TRPO, ``topologies/ring3.yaml``, n_envs 10,
   steps_per_iteration 10000, ``--iterations`` 3 (world + 3 agent processes); transitions per
   second from the world's ``rollout`` events in ``world.jsonl``: (iterations − 1) · T · K over
   the summed ``rollout_seconds`` of every iteration but the first (warm-up). The learning
   between rollouts is not timed.

Reported: every measurement, the mean of each kind, the ratio of the means b/a and the ratio of
each round's pair. Target: b/a ≥ 1.0. The single-process loop uses one core; the runtime's four
processes can use both cores of a 2-core machine but pay for messaging on every step.

Run from the repository root (``python bench/throughput.py ...`` works too)::

    . .venv/bin/activate
    python -m bench.throughput [--rounds 2] [--single-steps 5000] [--iterations 3] [--seed 0]

The last stdout line is one JSON object; it is also saved as ``<out>/throughput-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from p2pmarl.algos.itrpo import ITRPO, TRPOConfig
from p2pmarl.envs import env_spec, make_env
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, process_seeds, read_jsonl

try:
    from bench.common import (
        RESULTS,
        emit,
        launch_failure,
        load_average,
        ring3_itrpo_config,
    )
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import (  # type: ignore[no-redef]
        RESULTS,
        emit,
        launch_failure,
        load_average,
        ring3_itrpo_config,
    )

N_AGENTS = 3
N_ENVS = 10
EPISODE_LENGTH = 100
WARMUP_STEPS = 100
TARGET_RATIO = 1.0


def single_process(steps: int, seed: int) -> dict:
    """Transitions per second of one process stepping K envs and acting for three agents."""
    torch.set_num_threads(1)
    spec = env_spec("spread", N_AGENTS, EPISODE_LENGTH)
    world_seed, agent_seeds = process_seeds(seed, N_AGENTS)
    envs = [make_env("spread", N_AGENTS, EPISODE_LENGTH) for _ in range(N_ENVS)]
    env_seeds = np.random.SeedSequence(world_seed).generate_state(N_ENVS)
    observations = [env.reset(int(s)) for env, s in zip(envs, env_seeds, strict=True)]
    agents = [ITRPO(i, spec, TRPOConfig(), agent_seeds[i]) for i in range(N_AGENTS)]
    joint = np.empty((N_ENVS, N_AGENTS), dtype=np.int64)

    def step() -> None:
        for i, agent in enumerate(agents):
            block = np.stack([obs[i] for obs in observations]).astype(np.float32, copy=False)
            joint[:, i] = agent.act(block)
        for k, env in enumerate(envs):
            next_observations, _, done = env.step(joint[k].tolist())
            observations[k] = env.reset() if done else next_observations

    for _ in range(WARMUP_STEPS):
        step()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    for env in envs:
        env.close()
    transitions = steps * N_ENVS
    return {
        "kind": "single_process",
        "transitions": transitions,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "transitions_per_second": round(transitions / wall, 1),
    }


def multi_process(iterations: int, seed: int, out: Path) -> dict:
    """Transitions per second of the world's rollouts in a real launch (first one skipped)."""
    config = ring3_itrpo_config(iterations, seed, out)
    launched = launch(config, show_progress=False)
    row: dict = {"kind": "multi_process", "run_dir": str(launched.run_dir)}
    error = launch_failure(launched)
    rollouts = [
        e for e in read_jsonl(RunDir(launched.run_dir).world_events) if e.get("event") == "rollout"
    ]
    timed = [e for e in rollouts if e["iteration"] > 0]
    if error is None and not timed:
        error = "world.jsonl has no rollout event after the first iteration"
    row["error"] = error
    if timed:
        seconds = sum(e["rollout_seconds"] for e in timed)
        transitions = len(timed) * config.rollout_length * config.n_envs
        row.update(
            {
                "transitions": transitions,
                "seconds": round(seconds, 3),
                "rollout_seconds_by_iteration": [round(e["rollout_seconds"], 3) for e in rollouts],
                "transitions_per_second": round(transitions / seconds, 1),
                "wall_seconds": launched.summary.get("wall_seconds"),
            }
        )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single-steps", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be ≥ 2: the first rollout is a warm-up")
    load_before = load_average()
    measurements = []
    for _ in range(args.rounds):
        measurements.append(single_process(args.single_steps, args.seed))
        measurements.append(multi_process(args.iterations, args.seed, args.out))
    single = [m for m in measurements if m["kind"] == "single_process"]
    multi = [m for m in measurements if m["kind"] == "multi_process"]
    errors = [m["error"] for m in multi if m.get("error")]
    result: dict = {
        "status": "ok" if not errors else "failed",
        "errors": errors,
        "order": [m["kind"] for m in measurements],
        "measurements": measurements,
        "n_agents": N_AGENTS,
        "n_envs": N_ENVS,
        "target_ratio": TARGET_RATIO,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if not errors:
        a = statistics.fmean(m["transitions_per_second"] for m in single)
        b = statistics.fmean(m["transitions_per_second"] for m in multi)
        result.update(
            {
                "single_process_tps": round(a, 1),
                "multi_process_tps": round(b, 1),
                "ratio": round(b / a, 3),
                "ratio_by_round": [
                    round(mb["transitions_per_second"] / ma["transitions_per_second"], 3)
                    for ma, mb in zip(single, multi, strict=True)
                ],
                "target_met": b / a >= TARGET_RATIO,
            }
        )
    return emit("throughput", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
