"""A 16-agent MATRPO ring: local launch vs split over two network namespaces vs ``--engine ray``
(issue 17); and the largest ring each launcher starts and runs for one iteration here.

All runs use tcp + CURVE with the same seed and budget (``--iterations``, default 2; seeded
ADMM, 6 activations per edge; steps_per_iteration 64, n_envs 4, episode_length 8):

* ``local``: one ``p2pmarl launch`` inside namespace A, every agent on A's loopback;
* ``split``: ``p2pmarl launch --only world,0-7`` in namespace A (10.78.1.1) and
  ``--only 8-15`` in namespace B (10.78.1.2), joined by a veth pair, then ``p2pmarl merge``;
* ``ray``: ``p2pmarl launch --engine ray`` in namespace A: a local single-node Ray instance
  started and stopped by the run, one actor per process (the "local simulated cluster").

Reported per run: ``startup_s`` (from the command's start until the world's ``connected`` event:
Python, Ray and actor start included), ``connected_s`` (the world's own count, from its start),
``wall_s`` (the command(s)), ``iteration_s`` (mean over iterations and agents of
``time/iteration_seconds``), the agents' median PSS and USS (MiB, sampled from /proc once
connected), and the split / local and ray / local ratios.

``--largest`` then searches, for the local launcher and for ``--engine ray``, the largest ring
(16, 32, 64, ... up to ``--max-agents``) that starts and completes one iteration (settings as
above, 2 activations per edge), within ``--search-seconds`` per launcher and while the next
size's estimated memory (the last size's total USS per process, scaled) fits in MemAvailable less
4 GiB (the machine is shared). What stopped each search is reported: it is a lower bound on the
real limit when the budget or the memory guard, not a failure, stopped it.

Needs root and ``ip netns``; the namespaces (and every process in them) are removed at the end.
Traffic stays on loopback and on the veth pair inside the namespaces this script makes.

    python -m bench.cluster [--iterations 2] [--largest] [--out bench/results]

The last stdout line is one JSON object; it is also saved as ``<out>/cluster-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    from bench.common import REPO, RESULTS, emit, load_average
except ModuleNotFoundError:
    from common import REPO, RESULTS, emit, load_average

N = 16
A, B = "10.78.1.1", "10.78.1.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _namespaces(tag: str) -> tuple[str, str]:
    a, b = f"{tag}a", f"{tag}b"
    for ns in (a, b):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("link", "add", f"{tag}ab", "type", "veth", "peer", "name", f"{tag}ba")
    for end, ns, address in ((f"{tag}ab", a, A), (f"{tag}ba", b, B)):
        _ip("link", "set", end, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", end)
        _ip("-n", ns, "link", "set", end, "up")
    return a, b


def _remove(namespaces: tuple[str, ...]) -> None:
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _ring(path: Path, hosts: list[str], n: int = N) -> Path:
    lines = [f"name: ring{n}", "generator: ring", f"n: {n}", "addresses:"]
    lines += [f'  {a}: "{h}:{7201 + a}"' for a, h in enumerate(hosts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "p2pmarl", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "token"})


def _check(process: subprocess.Popen, timeout: float = 900) -> str:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"exit {process.returncode}: {err[-2000:]}")
    return out


def _memory(pid: int) -> tuple[float, float] | None:
    """(PSS, USS) of a process in MiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: float(line.split()[1]) / 1024 for line in text.splitlines()[1:]}
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


class MemorySampler:
    """Samples the agents' PSS and USS once the run in ``out`` is connected (last sample kept)."""

    def __init__(self, out: Path) -> None:
        self.out, self.samples = out, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            for run in self.out.glob("*/pids.json") if self.out.exists() else []:
                world = run.parent / "world.jsonl"
                if not world.exists() or '"connected"' not in world.read_text():
                    continue
                with contextlib.suppress(ValueError, OSError):
                    pids = json.loads(run.read_text())
                    for name, pid in pids.items():
                        if name.startswith("agent") and (memory := _memory(pid)) is not None:
                            self.samples[name] = memory

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return {"agent_pss_mb": None, "agent_uss_mb": None, "sum_uss_mb": None}
        pss = [m[0] for m in self.samples.values()]
        uss = [m[1] for m in self.samples.values()]
        return {"agent_pss_mb": round(statistics.median(pss), 1),
                "agent_uss_mb": round(statistics.median(uss), 1),
                "sum_uss_mb": round(sum(uss), 1)}


def _measure(run: Path, wall: float, command_started: float) -> dict:
    connected = next(json.loads(line) for line in (run / "world.jsonl").open()
                     if '"connected"' in line)
    times = [json.loads(line)["time/iteration_seconds"]
             for path in run.glob("agents/agent-*/metrics.jsonl") for line in path.open()
             if '"iteration"' in line]
    summary = json.loads((run / "summary.json").read_text())
    return {"status": summary["status"],
            "startup_s": round(connected["unix_time"] - command_started, 3),
            "connected_s": round(connected["seconds"], 3),
            "wall_s": round(wall, 2), "iteration_s": round(sum(times) / len(times), 3),
            "team_return_curve": summary["team_return_curve"]}


def _one_launch(ns: str, args: list[str], out: Path, timeout: float = 900) -> dict:
    """One ``p2pmarl launch`` in namespace ``ns``: its measures and its agents' memory."""
    sampler = MemorySampler(out)
    started, wall_started = time.time(), time.monotonic()
    try:
        stdout = _check(_run(ns, "launch", *args, "--out", str(out), "--json"), timeout)
    finally:
        memory = sampler.stop()
    run = Path(json.loads(stdout)["run_dir"])
    return {**_measure(run, time.monotonic() - wall_started, started), **memory}


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) / 1024
    return 0.0


def largest_ring(ns: str, work: Path, engine: list[str], budget: float, max_agents: int) -> dict:
    """The largest ring of 16, 32, 64, ... agents that completes one iteration (see module doc)."""
    tried, largest, stopped = [], None, f"reached --max-agents {max_agents}"
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    n, per_process_mb = 16, None
    while n <= max_agents:
        left = deadline - time.monotonic()
        if left < 30:
            stopped = f"search budget ({budget:.0f} s) spent"
            break
        if per_process_mb is not None and per_process_mb * (n + 1) > _available_mb() - 4096:
            stopped = (f"memory guard: {n} agents need about {per_process_mb * (n + 1):.0f} MiB, "
                       f"{_available_mb():.0f} MiB available (4 GiB kept free)")
            break
        args = ["--topology", str(_ring(work / f"ring{n}.yaml", ["127.0.0.1"] * n, n)),
                "--env", "spread", "--algo", "matrpo", "--admm-schedule", "seeded",
                "--admm-iterations", "2", "--steps-per-iteration", "64", "--n-envs", "4",
                "--episode-length", "8", "--iterations", "1", "--seed", "0", "--no-progress",
                "--connect-timeout", "300", *engine]
        try:
            result = _one_launch(ns, args, work / f"n{n}", timeout=left)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            _kill_launches(ns)
            tried.append({"n_agents": n, "error": str(error)[-400:]})
            stopped = f"{n} agents failed or ran past the budget"
            break
        tried.append({"n_agents": n, **{k: v for k, v in result.items()
                                        if k != "team_return_curve"}})
        if result["status"] != "completed":
            stopped = f"{n} agents: {result['status']}"
            break
        largest = n
        if result["sum_uss_mb"]:
            # Per process (agents and world), plus Ray's own processes counted in via USS/agent.
            per_process_mb = result["sum_uss_mb"] / n * 1.1
        n *= 2
    return {"largest_completed": largest, "stopped_by": stopped, "tried": tried}


def _kill_launches(ns: str) -> None:
    """Kill every process of namespace ``ns`` (a launch past its budget and all it started)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--largest", action="store_true",
                        help="also search the largest ring each launcher runs")
    parser.add_argument("--search-seconds", type=float, default=240.0,
                        help="time budget of each launcher's search")
    parser.add_argument("--max-agents", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_at_start = load_average()
    work = args.out / f"cluster-runs-{int(time.time())}"
    work.mkdir(parents=True)
    common = ["--env", "spread", "--algo", "matrpo", "--admm-schedule", "seeded",
              "--admm-iterations", "6", "--steps-per-iteration", "64", "--n-envs", "4",
              "--episode-length", "8", "--iterations", str(args.iterations), "--seed", "0",
              "--no-progress", "--connect-timeout", "180"]
    namespaces = _namespaces(f"p2pb{os.getpid() % 10000}")
    try:
        a, b = namespaces
        local_topology = _ring(work / "ring-local.yaml", ["127.0.0.1"] * N)
        local = _one_launch(a, [*common, "--topology", str(local_topology)], work / "local")
        # Ray picks its own addresses (127.0.0.1: namespace A has no default route).
        ray = _one_launch(a, [*common, "--topology", str(local_topology), "--engine", "ray"],
                          work / "ray")
        split_topology = _ring(work / "ring-split.yaml", [A] * (N // 2) + [B] * (N // 2))
        keys = work / "keys"
        _check(_run(a, "keys", str(keys), "--topology", str(split_topology)))
        for host, part in (("a", f"world,0-{N // 2 - 1}"), ("b", f"{N // 2}-{N - 1}")):
            _check(_run(a, "keys", str(keys), "--topology", str(split_topology), "--only", part,
                        "--export", str(work / host)))
        launch = ["launch", *common, "--topology", str(split_topology), "--world-address",
                  f"{A}:7200"]
        started, command_started = time.monotonic(), time.time()
        parts = [_run(a, *launch, "--run-dir", str(work / "a"), "--only", f"world,0-{N//2-1}"),
                 _run(b, *launch, "--run-dir", str(work / "b"), "--only", f"{N//2}-{N-1}")]
        for part in parts:
            _check(part)
        wall = time.monotonic() - started
        _check(_run(a, "merge", str(work / "merged"), str(work / "a"), str(work / "b")))
        split = _measure(work / "merged", wall, command_started)
        largest = {}
        if args.largest:
            for name, engine in (("local", []), ("ray", ["--engine", "ray"])):
                largest[name] = largest_ring(a, work / f"largest-{name}", engine,
                                             args.search_seconds, args.max_agents)
    finally:
        _remove(namespaces)
    keys = ("startup_s", "connected_s", "wall_s", "iteration_s")
    completed = local["status"] == split["status"] == ray["status"] == "completed"
    result = {
        "status": "ok" if completed else "failed",
        "n_agents": N, "iterations": args.iterations,
        "local": local, "split_2_namespaces": split, "ray": ray,
        "ratio_split_over_local": {key: round(split[key] / local[key], 3) for key in keys},
        "ratio_ray_over_local": {key: round(ray[key] / local[key], 3) for key in keys},
        "same_numbers": local["team_return_curve"] == split["team_return_curve"]
        == ray["team_return_curve"],
        "largest_ring": largest or "not searched (pass --largest)",
        "load_average": {"start": load_at_start, "end": load_average()},
    }
    return emit("cluster", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
