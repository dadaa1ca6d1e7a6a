"""Rollout throughput of the multi-process runtime relative to a single-process loop.

Three measurements of environment transitions per second with the same environment and
networks, alternated in one run (a, a', b, a, a', b, ... for ``--rounds`` rounds, default 2):

a. **single process on mpe2**: a ``VectorWorld`` with ``env_backend="mpe2"`` (K=10 copies of
   ``make_env("spread", 3, 100)`` stepped one by one, seeded as the world seeds them), three
   :class:`~p2pmarl.algos.itrpo.ITRPO` agents (default ``TRPOConfig``, seeds from
   ``process_seeds``); each step every agent calls ``act`` on its own (K, d) observation block,
   then the copies are stepped with the joint action and reset when their episode ends.
   ``--single-steps`` (default 5000) timed steps after 100 warm-up steps; transitions = steps · K.
   torch is limited to one thread, as in agents.
a'. **single process on the batched world**: the same with ``env_backend="batched"``.
b. **multi-process**: ``launch`` of I-TRPO, ``topologies/ring3.yaml``, n_envs 10,
   steps_per_iteration 10000, ``--iterations`` 3 (world + 3 agent processes); transitions per
   second from the world's ``rollout`` events in ``world.jsonl``: (iterations − 1) · T · K over
   the summed ``rollout_seconds`` of every iteration but the first (warm-up). The learning
   between rollouts is not timed.

Reported: every measurement, the mean of each kind, the ratios of the means b/a (target ≥ 3,
issue 15; it was 0.62 with the mpe2 world) and b/a' (target ≥ 1.0) and the per-round b/a. The
multi-process run uses the default backend (batched). The single-process loop uses one core;
the runtime's four processes can use both cores of a 2-core machine but pay for messaging on
every step.

With ``--zmq-link`` every round also runs b with ``world_link`` zmq (this code, the ZeroMQ world
link instead of the Unix socket; ``ratio_unix_to_zmq_link``).

With ``--baseline DIR`` (a checkout of an earlier commit, e.g. ``git worktree add --detach
/tmp/base COMMIT``) every round also runs b in that checkout (``baseline_multi_process``, a
subprocess of this interpreter with ``DIR`` first on ``sys.path``), so a change to the runtime is
measured before and after side by side; ``ratio_to_baseline`` = b ÷ baseline b.

Run from the repository root (``python bench/throughput.py ...`` works too)::

    . .venv/bin/activate
    python -m bench.throughput [--rounds 2] [--single-steps 5000] [--iterations 3] [--seed 0]
                               [--zmq-link] [--baseline DIR]

The last stdout line is one JSON object; it is also saved as ``<out>/throughput-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from p2pmarl.algos.itrpo import ITRPO, TRPOConfig
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, process_seeds, read_jsonl
from p2pmarl.runtime.world import VectorWorld

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
TARGET_RATIO = 3.0
"""Issue 15: multi-process (batched world) ÷ single process on mpe2 (was 1.0 before)."""
TARGET_RATIO_BATCHED = 1.0
"""Issue 15: multi-process ÷ single process on the batched world."""


def single_process(steps: int, seed: int, backend: str = "mpe2") -> dict:
    """Transitions per second of one process stepping K envs and acting for three agents.

    ``backend`` as ``env_backend``: ``mpe2`` (K ``make_env`` copies stepped one by one, the
    world's loop before issue 15) or ``batched`` (the batched particle world).
    """
    torch.set_num_threads(1)
    spec = env_spec("spread", N_AGENTS, EPISODE_LENGTH)
    world_seed, agent_seeds = process_seeds(seed, N_AGENTS)
    vector = VectorWorld(
        RunConfig(env="spread", n_envs=N_ENVS, episode_length=EPISODE_LENGTH, env_backend=backend),
        N_AGENTS,
        world_seed,
    )
    agents = [ITRPO(i, spec, TRPOConfig(), agent_seeds[i]) for i in range(N_AGENTS)]
    joint = np.empty((N_ENVS, N_AGENTS), dtype=np.int64)
    rows = range(N_ENVS)

    def step() -> None:
        for i, agent in enumerate(agents):
            joint[:, i] = agent.act(vector.agent_observations(i, rows))
        vector.step(rows, joint)

    for _ in range(WARMUP_STEPS):
        step()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    vector.close()
    transitions = steps * N_ENVS
    return {
        "kind": f"single_process_{backend}",
        "transitions": transitions,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "transitions_per_second": round(transitions / wall, 1),
    }


def multi_process(iterations: int, seed: int, out: Path, world_link: str = "unix") -> dict:
    """Transitions per second of the world's rollouts in a real launch (first one skipped);
    ``world_link`` zmq gives the kind ``multi_process_zmq``."""
    config = dataclasses.replace(ring3_itrpo_config(iterations, seed, out), world_link=world_link)
    launched = launch(config, show_progress=False)
    kind = "multi_process" if world_link == "unix" else f"multi_process_{world_link}"
    row: dict = {"kind": kind, "run_dir": str(launched.run_dir)}
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


BASELINE_SCRIPT = """
import json, sys
from pathlib import Path
from bench.common import ring3_itrpo_config
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, read_jsonl
config = ring3_itrpo_config(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
launched = launch(config, show_progress=False)
rollouts = [e for e in read_jsonl(RunDir(launched.run_dir).world_events)
            if e.get("event") == "rollout" and e["iteration"] > 0]
print(json.dumps({"status": launched.summary.get("status"), "run_dir": str(launched.run_dir),
                  "steps": config.rollout_length * config.n_envs,
                  "seconds": [e["rollout_seconds"] for e in rollouts]}))
"""


def baseline_multi_process(checkout: Path, iterations: int, seed: int, out: Path) -> dict:
    """b measured with the code of another checkout (the same launch, in a subprocess)."""
    result = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, str(iterations), str(seed), str(out)],
        cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True, text=True, timeout=1800,
    )
    row: dict = {"kind": "baseline_multi_process", "checkout": str(checkout)}
    try:
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        row["error"] = f"baseline run failed: {result.stderr[-500:]}"
        return row
    if measured["status"] != "completed" or not measured["seconds"]:
        row["error"] = f"baseline run {measured['run_dir']} did not complete"
        return row
    seconds = sum(measured["seconds"])
    transitions = len(measured["seconds"]) * measured["steps"]
    row.update({"run_dir": measured["run_dir"], "transitions": transitions,
                "seconds": round(seconds, 3),
                "transitions_per_second": round(transitions / seconds, 1)})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single-steps", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of an earlier commit: also measure b with its code")
    parser.add_argument("--zmq-link", action="store_true",
                        help="also measure b with this code's ZeroMQ world link (world_link zmq)")
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be ≥ 2: the first rollout is a warm-up")
    load_before = load_average()
    measurements = []
    for _ in range(args.rounds):
        measurements.append(single_process(args.single_steps, args.seed, "mpe2"))
        measurements.append(single_process(args.single_steps, args.seed, "batched"))
        measurements.append(multi_process(args.iterations, args.seed, args.out))
        if args.zmq_link:
            measurements.append(multi_process(args.iterations, args.seed, args.out, "zmq"))
        if args.baseline is not None:
            measurements.append(
                baseline_multi_process(args.baseline, args.iterations, args.seed, args.out)
            )
    single = [m for m in measurements if m["kind"] == "single_process_mpe2"]
    single_batched = [m for m in measurements if m["kind"] == "single_process_batched"]
    multi = [m for m in measurements if m["kind"] == "multi_process"]
    baseline = [m for m in measurements if m["kind"] == "baseline_multi_process"]
    zmq_link = [m for m in measurements if m["kind"] == "multi_process_zmq"]
    errors = [m["error"] for m in multi + baseline + zmq_link if m.get("error")]
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
        a_batched = statistics.fmean(m["transitions_per_second"] for m in single_batched)
        b = statistics.fmean(m["transitions_per_second"] for m in multi)
        result.update(
            {
                "single_process_tps": round(a, 1),
                "single_process_batched_tps": round(a_batched, 1),
                "multi_process_tps": round(b, 1),
                "ratio": round(b / a, 3),
                "ratio_vs_batched_single": round(b / a_batched, 3),
                "target_ratio_vs_batched_single": TARGET_RATIO_BATCHED,
                "target_met_vs_batched_single": b / a_batched >= TARGET_RATIO_BATCHED,
                "ratio_by_round": [
                    round(mb["transitions_per_second"] / ma["transitions_per_second"], 3)
                    for ma, mb in zip(single, multi, strict=True)
                ],
                "target_met": b / a >= TARGET_RATIO,
            }
        )
        if zmq_link:
            b_zmq = statistics.fmean(m["transitions_per_second"] for m in zmq_link)
            result.update({"multi_process_zmq_tps": round(b_zmq, 1),
                           "ratio_unix_to_zmq_link": round(b / b_zmq, 3)})
        if baseline:
            b_old = statistics.fmean(m["transitions_per_second"] for m in baseline)
            result.update({"baseline_checkout": str(args.baseline),
                           "baseline_multi_process_tps": round(b_old, 1),
                           "ratio_to_baseline": round(b / b_old, 3)})
    return emit("throughput", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
