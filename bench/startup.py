"""Startup time of a 24-agent run: from calling ``launch`` to every process being connected.

Launches I-TRPO on ``spread`` with N=24 agents on ``topologies/ring24.yaml`` with a tiny budget
(1 iteration, steps_per_iteration 48, n_envs 2, episode_length 10) ``--repeats`` times (default
3), one after the other. For each launch it reports

* ``launch_to_connected_s``: the world's ``connected`` event ``unix_time`` in ``world.jsonl``
  minus ``time.time()`` taken just before ``launch`` (run directory, forking 25 processes,
  socket setup, every agent reaching its neighbours and the world);
* ``world_connected_s``: the world's own ``seconds`` in that event (from the world's start);
* ``wall_s``: the whole launch, including the tiny iteration and shutdown;

and the medians (connect times over every launch that reached ``connected``, even if it failed
later; wall time over completed launches only). Target: median ``launch_to_connected_s`` ≤ 15 s.
``status`` is ``"ok"`` only if every launch completed; failures are listed per run.

Run from the repository root (``python bench/startup.py ...`` works too)::

    . .venv/bin/activate
    python -m bench.startup [--repeats 3] [--out bench/results]

The last stdout line is one JSON object; it is also saved as ``<out>/startup-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from p2pmarl.config import RunConfig
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir, read_jsonl

try:
    from bench.common import RESULTS, emit, launch_failure, load_average, topology
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import RESULTS, emit, launch_failure, load_average, topology

TARGET_SECONDS = 15.0


def one_launch(out: Path, seed: int) -> dict:
    """Launch once; the connect times, or the error if it failed."""
    config = RunConfig(
        topology=topology("ring24"),
        env="spread",
        algo="itrpo",
        iterations=1,
        steps_per_iteration=48,
        n_envs=2,
        episode_length=10,
        seed=seed,
        out=str(out / "runs"),
    ).validate()
    before = time.time()
    result = launch(config, show_progress=False)
    wall = time.time() - before
    error = launch_failure(result)
    events = read_jsonl(RunDir(result.run_dir).world_events)
    connected = next((e for e in events if e.get("event") == "connected"), None)
    row = {"run_dir": str(result.run_dir), "wall_s": round(wall, 3), "error": error}
    if connected is not None:
        row["launch_to_connected_s"] = round(connected["unix_time"] - before, 3)
        row["world_connected_s"] = round(connected["seconds"], 3)
    elif error is None:
        row["error"] = "world.jsonl has no 'connected' event"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = load_average()
    runs = [one_launch(args.out, args.seed + i) for i in range(args.repeats)]
    completed = [r for r in runs if r["error"] is None]
    connected = [r for r in runs if "launch_to_connected_s" in r]
    result: dict = {
        "status": "ok" if len(completed) == len(runs) else "failed",
        "n_agents": 24,
        "topology": "topologies/ring24.yaml",
        "runs": runs,
        "completed_runs": len(completed),
        "connected_runs": len(connected),
        "target_s": TARGET_SECONDS,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    # A launch that fails after the world's 'connected' event (e.g. at shutdown) still measured
    # its startup, so the connect medians use every run that connected; wall time only
    # completed ones (a failed shutdown adds the launcher's 30 s grace period).
    if connected:
        median = statistics.median(r["launch_to_connected_s"] for r in connected)
        result["median_launch_to_connected_s"] = round(median, 3)
        result["median_world_connected_s"] = round(
            statistics.median(r["world_connected_s"] for r in connected), 3
        )
        result["target_met"] = median <= TARGET_SECONDS and len(connected) == len(runs)
    if completed:
        result["median_wall_s"] = round(statistics.median(r["wall_s"] for r in completed), 3)
    return emit("startup", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
