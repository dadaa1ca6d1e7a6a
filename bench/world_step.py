"""World step cost: the batched particle world vs the mpe2 loop vs VMAS, K copies of spread N=3.

One world step = what the world process does per rollout step for all K copies: step every copy
with a random joint action (auto-reset at episode end, 100-step episodes) and read each of the N
agents' (K, d) observation blocks. Measured through :class:`~p2pmarl.runtime.world.VectorWorld`
for ``env_backend="batched"`` and ``"mpe2"``, and, as an outside reference, VMAS's own
``simple_spread`` (torch on the CPU, one thread like the world process, Discrete(9) actions,
``env.step`` which returns observations and rewards; VMAS episodes do not end, so it never
resets). VMAS is optional: ``pip install -e .[bench]`` (or ``pip install --no-deps vmas`` plus its
small pure-Python imports, so that pip keeps the pinned torch); without it the result says
``"vmas": "not installed"``.

``--baseline DIR`` also times the batched world of another checkout (for example the code
before a change: ``git worktree add --detach DIR main``) in a worker process, so before and after
are measured side by side in the same rounds.

Every contender is timed once per round, the rounds alternate (``--rounds`` rounds, default 3)
at each K, and the best microseconds per step of each are reported, wall-clock and CPU time of
the process, with the ratios mpe2 / batched (targets: ≥ 20× at K=10, ≥ 100× at K=100) and
VMAS / batched (target: ≥ 5× at K ≤ 100).

Run from the repository root::

    python -m bench.world_step [--ks 10 100] [--rounds 3] [--seconds 1.0] [--baseline DIR]

The last stdout line is one JSON object; it is also saved as ``<out>/world_step-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
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
WORKER_HEADER = "from __future__ import annotations\n"
BASELINE_WORKER = """
import sys
import p2pmarl
from bench.world_step import world_stepper
print(p2pmarl.__file__, flush=True)
step = world_stepper("batched", int(sys.argv[1]))
for line in sys.stdin:
    print(*time_per_call(step, float(line)), flush=True)
"""
"""Times the batched world of the checkout it runs in, one request (seconds) per stdin line,
with this file's :func:`time_per_call` (its source is prepended); of the other checkout it uses
only ``world_stepper``, which every version of this file has."""

Timer = Callable[[float], tuple[float, float]]
"""Wall and CPU microseconds per step of one contender, timed over at least the given seconds."""


def time_per_call(step: Callable[[], None], seconds: float) -> tuple[float, float]:
    """Wall-clock and CPU (this process) microseconds per call of ``step``, over at least
    ``seconds`` (after 5 warm-up calls). On a loaded machine the CPU time leaves out the time
    the process waited for a core."""
    import time  # here: the baseline worker runs this function's source on its own

    for _ in range(5):
        step()
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            step()
        calls += 10
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall / calls * 1e6, cpu / calls * 1e6


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
    """VMAS's simple_spread with K = ``num_envs`` copies on the CPU, or None without vmas."""
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


class BaselineWorker:
    """The batched world of another checkout, timed in a worker process on request."""

    def __init__(self, directory: Path, k: int) -> None:
        environment = {**os.environ, "PYTHONPATH": str(directory)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER_HEADER + inspect.getsource(time_per_call)
             + BASELINE_WORKER, str(k)],
            cwd=directory, env=environment,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        module = self._reply()
        if not Path(module).resolve().is_relative_to(directory.resolve()):
            self.close()
            raise SystemExit(f"--baseline {directory}: the worker imported {module} instead")

    def time(self, seconds: float) -> tuple[float, float]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        wall, cpu = self._reply().split()
        return float(wall), float(cpu)

    def _reply(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.close()
            raise SystemExit("the baseline worker exited; see its error above")
        return line.strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure_k(k: int, rounds: int, seconds: float, baseline: Path | None) -> dict:
    """One row of the result: every contender at ``k`` copies, rounds alternated."""
    timers: dict[str, Timer] = {}
    for backend in ("batched", "mpe2"):
        step = world_stepper(backend, k)
        timers[backend] = lambda s, step=step: time_per_call(step, s)
    vmas_step = vmas_stepper(k)
    if vmas_step is not None:
        timers["vmas"] = lambda s: time_per_call(vmas_step, s)
    worker = BaselineWorker(baseline, k) if baseline is not None else None
    if worker is not None:
        timers["batched_baseline"] = worker.time
    times: dict[str, list[float]] = {name: [] for name in timers}
    cpu_times: dict[str, list[float]] = {name: [] for name in timers}
    try:
        for _ in range(rounds):
            for name, timer in timers.items():
                wall, cpu = timer(seconds)
                times[name].append(round(wall, 1))
                cpu_times[name].append(round(cpu, 1))
    finally:
        if worker is not None:
            worker.close()
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu_times.items()}
    row: dict = {"k": k, "us_per_step": times, "best_us_per_step": best,
                 "cpu_us_per_step": cpu_times, "best_cpu_us_per_step": best_cpu}
    row["mpe2_over_batched"] = round(best["mpe2"] / best["batched"], 1)
    row["mpe2_over_batched_cpu"] = round(best_cpu["mpe2"] / best_cpu["batched"], 1)
    row["mpe2_target"] = TARGETS["mpe2"].get(k)
    if "vmas" in best:
        row["vmas_over_batched"] = round(best["vmas"] / best["batched"], 1)
        row["vmas_over_batched_cpu"] = round(best_cpu["vmas"] / best_cpu["batched"], 1)
        row["vmas_target"] = TARGETS["vmas"] if k <= 100 else None
        row["vmas_env_steps_per_second"] = round(k / best["vmas"] * 1e6)
    else:
        row["vmas"] = "not installed"
    if "batched_baseline" in best:
        row["baseline_over_batched"] = round(best["batched_baseline"] / best["batched"], 2)
        row["baseline_over_batched_cpu"] = round(
            best_cpu["batched_baseline"] / best_cpu["batched"], 2
        )
        row["mpe2_over_batched_baseline"] = round(best["mpe2"] / best["batched_baseline"], 1)
        row["mpe2_over_batched_baseline_cpu"] = round(
            best_cpu["mpe2"] / best_cpu["batched_baseline"], 1
        )
    row["batched_env_steps_per_second"] = round(k / best["batched"] * 1e6)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout whose batched world is timed side by side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "bench" / "world_step.py").is_file():
        parser.error(f"--baseline {args.baseline}: no bench/world_step.py there (a checkout?)")
    load_before = load_average()
    rows = []
    for k in args.ks:
        rows.append(measure_k(k, args.rounds, args.seconds, args.baseline))
        print(f"K={k}: wall {rows[-1]['best_us_per_step']} cpu {rows[-1]['best_cpu_us_per_step']}",
              file=sys.stderr)
    result = {
        "status": "ok",
        "n_agents": N_AGENTS,
        "baseline": str(args.baseline) if args.baseline is not None else None,
        "rows": rows,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    return emit("world_step", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
