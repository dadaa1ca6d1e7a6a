"""World step cost: the batched particle world vs the mpe2 loop vs VMAS, K copies of spread N=3.

One world step = what the world process does per rollout step for all K copies: step every copy
with a random joint action (auto-reset at episode end) and read each of the N agents' (K, d)
observation blocks. Measured through :class:`~p2pmarl.runtime.world.VectorWorld` for
``env_backend="batched"`` and ``"mpe2"``, and, as an outside reference, VMAS's own
``simple_spread`` (torch on the CPU, one thread like the world process, Discrete(9) actions,
``env.step`` which returns observations and rewards; install with ``pip install -e .[bench]``).
The three are alternated in one run (``--rounds`` rounds, default 3) at each K; reported are the
best microseconds per step of each and the ratios mpe2 / batched and VMAS / batched (targets:
≥ 20× at K=10, ≥ 100× at K=100; ≥ 5× VMAS at K ≤ 100).

Run from the repository root::

    python -m bench.world_step [--ks 10 100] [--rounds 3] [--seconds 1.0]

The last stdout line is one JSON object; it is also saved as ``<out>/world_step-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p2pmarl.config import RunConfig
from p2pmarl.runtime.world import VectorWorld

try:
    from bench.common import RESULTS, emit, load_average
except ModuleNotFoundError:  # run as ``python bench/NAME.py``
    from common import RESULTS, emit, load_average  # type: ignore[no-redef]

N_AGENTS = 3
TARGETS = {"mpe2": {10: 20.0, 100: 100.0}, "vmas": 5.0}


def time_per_call(step: Callable[[], None], seconds: float) -> float:
    """Microseconds per call of ``step``, over at least ``seconds`` (after 5 warm-up calls)."""
    for _ in range(5):
        step()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            step()
        calls += 10
    return (time.perf_counter() - started) / calls * 1e6


def world_stepper(backend: str, k: int) -> Callable[[], None]:
    vector = VectorWorld(RunConfig(env="spread", n_envs=k, env_backend=backend), N_AGENTS, 0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, (64, k, N_AGENTS))
    rows = range(k)
    state = {"t": 0}

    def step() -> None:
        vector.step(rows, actions[state["t"] % 64])
        for agent in range(N_AGENTS):
            vector.agent_observations(agent, rows)
        state["t"] += 1

    return step


def vmas_stepper(k: int) -> Callable[[], None] | None:
    try:
        import torch
        import vmas
    except ImportError:
        return None
    torch.set_num_threads(1)
    env = vmas.make_env(
        "simple_spread", num_envs=k, device="cpu", continuous_actions=False,
        n_agents=N_AGENTS, seed=0,
    )
    env.reset()
    generator = torch.Generator().manual_seed(0)
    actions = [
        [torch.randint(0, 9, (k, 1), generator=generator) for _ in range(N_AGENTS)]
        for _ in range(64)
    ]
    state = {"t": 0}

    def step() -> None:
        env.step(actions[state["t"] % 64])
        state["t"] += 1

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = load_average()
    rows = []
    for k in args.ks:
        steppers = {"batched": world_stepper("batched", k), "mpe2": world_stepper("mpe2", k)}
        vmas_step = vmas_stepper(k)
        if vmas_step is not None:
            steppers["vmas"] = vmas_step
        times: dict[str, list[float]] = {name: [] for name in steppers}
        for _ in range(args.rounds):
            for name, step in steppers.items():
                times[name].append(round(time_per_call(step, args.seconds), 1))
        best = {name: min(values) for name, values in times.items()}
        row = {"k": k, "us_per_step": times, "best_us_per_step": best}
        row["mpe2_over_batched"] = round(best["mpe2"] / best["batched"], 1)
        row["mpe2_target"] = TARGETS["mpe2"].get(k)
        if "vmas" in best:
            row["vmas_over_batched"] = round(best["vmas"] / best["batched"], 1)
            row["vmas_env_steps_per_second"] = round(k / best["vmas"] * 1e6)
        row["batched_env_steps_per_second"] = round(k / best["batched"] * 1e6)
        rows.append(row)
    result = {
        "status": "ok",
        "n_agents": N_AGENTS,
        "rows": rows,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    return emit("world_step", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
