"""Peak resident memory of the agent processes in a 3-agent I-TRPO run with M = 10,000.

Launches I-TRPO on ``spread`` (N=3, ``topologies/ring3.yaml``, steps_per_iteration 10000, n_envs
10, episode_length 100, ``--iterations`` 5 by default) and reads ``sys/peak_rss_mb`` (the agent
process's VmHWM, recorded after every iteration) from each ``agents/agent-I/metrics.jsonl``. It
reports, per agent, the maximum over iterations, and the largest of them. Target: every agent
≤ 300 MB.

Also reported: the launcher's own peak RSS (``getrusage(RUSAGE_SELF)``; this script is the
launcher) and ``largest_child_peak_rss_mb`` (``getrusage(RUSAGE_CHILDREN)``: the peak RSS of the
largest reaped child, world or agent, which cannot be told apart). The world's own peak is not
recorded by the runtime, so a sampler thread in the launcher reads every child's
``/proc/PID/status`` (VmHWM) and ``/proc/PID/smaps_rollup`` (Rss, Pss, private pages) every
``--sample-interval`` seconds (default 0.5): ``sampled`` gives, per process (world included), the
last VmHWM seen (a lower bound of the true peak, missing at most the last interval) and the
largest Pss and USS (private clean + private dirty) seen. RSS counts pages shared copy-on-write
with the launcher that forked the process (torch and the rest of the imports), so the per-agent
RSS overstates what each agent adds and the sum over processes overstates the run's total; Pss
splits shared pages among the processes that map them and USS counts only the process's own.

Run from the repository root (``python bench/memory.py ...`` works too)::

    . .venv/bin/activate
    python -m bench.memory [--iterations 5] [--seed 0] [--out bench/results]

The last stdout line is one JSON object; it is also saved as ``<out>/memory-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
from pathlib import Path

from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import RunDir
from p2pmarl.runtime.summary import iteration_rows

try:
    from bench.common import (
        RESULTS,
        emit,
        launch_failure,
        launcher_peak_rss_mb,
        load_average,
        ring3_itrpo_config,
    )
except ModuleNotFoundError:  # run as ``python bench/NAME.py``: bench/ is on sys.path
    from common import (  # type: ignore[no-redef]
        RESULTS,
        emit,
        launch_failure,
        launcher_peak_rss_mb,
        load_average,
        ring3_itrpo_config,
    )

TARGET_MB = 300.0
N_AGENTS = 3


def child_pids() -> list[int]:
    """Direct children of this process (the launcher forks from its main thread)."""
    pid = os.getpid()
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory_of(pid: int) -> dict[str, float] | None:
    """VmHWM, Rss, Pss and USS of one process in MiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in status + rollup:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kib.setdefault(parts[0][:-1], int(parts[1]))
    return {
        "vm_hwm_mb": kib.get("VmHWM", 0) / 1024,
        "rss_mb": kib.get("Rss", 0) / 1024,
        "pss_mb": kib.get("Pss", 0) / 1024,
        "uss_mb": (kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) / 1024,
    }


class Sampler(threading.Thread):
    """Polls the children's memory while the launcher runs; keeps the largest values per pid."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, dict[str, float]] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            for pid in child_pids():
                now = memory_of(pid)
                if now is None:
                    continue
                peak = self.peaks.setdefault(pid, dict.fromkeys(now, 0.0))
                for key, value in now.items():
                    peak[key] = max(peak[key], value)
            self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def by_name(self, pids_file: Path) -> dict[str, dict[str, float]]:
        """Peaks keyed by process name (``world``, ``agent 0``, ...) from ``pids.json``."""
        try:
            names = json.loads(pids_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return {
            name: {k: round(v, 1) for k, v in self.peaks[pid].items()}
            for name, pid in names.items()
            if pid in self.peaks
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = ring3_itrpo_config(args.iterations, args.seed, args.out)
    load_before = load_average()
    launcher_before = launcher_peak_rss_mb()
    sampler = Sampler(args.sample_interval)
    sampler.start()
    try:
        launched = launch(config, show_progress=False)
    finally:
        sampler.stop()
    error = launch_failure(launched)
    run_dir = RunDir(launched.run_dir)
    agents = []
    for agent in range(N_AGENTS):
        rows = iteration_rows(run_dir, agent)
        peaks = [r["sys/peak_rss_mb"] for _, r in sorted(rows.items()) if "sys/peak_rss_mb" in r]
        agents.append(
            {
                "id": agent,
                "iterations": len(peaks),
                "peak_rss_mb": round(max(peaks), 1) if peaks else None,
                "peak_rss_mb_by_iteration": [round(p, 1) for p in peaks],
            }
        )
    measured = [a["peak_rss_mb"] for a in agents if a["peak_rss_mb"] is not None]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result: dict = {
        "status": "ok" if error is None and len(measured) == N_AGENTS else "failed",
        "error": error,
        "run_dir": str(run_dir.root),
        "config": {
            "topology": "topologies/ring3.yaml",
            "iterations": config.iterations,
            "steps_per_iteration": config.steps_per_iteration,
            "n_envs": config.n_envs,
            "episode_length": config.episode_length,
        },
        "agents": agents,
        "max_agent_peak_rss_mb": max(measured) if measured else None,
        "world_peak_rss_mb": None,
        "world_note": "not recorded by the runtime; see sampled['world']",
        "sampled": sampler.by_name(run_dir.pids),
        "sample_interval_s": args.sample_interval,
        "samples": sampler.samples,
        "largest_child_peak_rss_mb": round(children, 1),
        "launcher_peak_rss_mb_before_launch": round(launcher_before, 1),
        "launcher_peak_rss_mb": round(launcher_peak_rss_mb(), 1),
        "wall_seconds": launched.summary.get("wall_seconds"),
        "target_mb": TARGET_MB,
        "target_met": bool(measured) and len(measured) == N_AGENTS and max(measured) <= TARGET_MB,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if error is None and len(measured) != N_AGENTS:
        result["error"] = "some agent recorded no sys/peak_rss_mb in metrics.jsonl"
    return emit("memory", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
