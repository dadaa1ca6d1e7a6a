"""A 16-agent MATRPO ring all on one host vs split over two network namespaces (issue 17).

Both runs use tcp + CURVE with the same seed and budget (``--iterations``, default 2; seeded
ADMM, 6 activations per edge; steps_per_iteration 64, n_envs 4, episode_length 8):

* ``local``: one ``p2pmarl launch`` inside namespace A, every agent on A's loopback;
* ``split``: ``p2pmarl launch --only world,0-7`` in namespace A (10.78.1.1) and
  ``--only 8-15`` in namespace B (10.78.1.2), joined by a veth pair, then ``p2pmarl merge``.

Reported per run: ``connected_s`` (the world's ``connected`` event: from the world's start until
every agent reached its neighbours and the world), ``wall_s`` (the command(s), Python start
included) and ``iteration_s`` (mean over iterations and agents of ``time/iteration_seconds``),
and the split / local ratios. Needs root and ``ip netns``; the namespaces are removed at the end.
Traffic stays on loopback and on the veth pair inside the namespaces this script makes.

    python -m bench.cluster [--iterations 2] [--out bench/results]

The last stdout line is one JSON object; it is also saved as ``<out>/cluster-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
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


def _ring(path: Path, hosts: list[str]) -> Path:
    lines = [f"name: ring{N}", "generator: ring", f"n: {N}", "addresses:"]
    lines += [f'  {a}: "{h}:{7201 + a}"' for a, h in enumerate(hosts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "p2pmarl", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"exit {process.returncode}: {err[-2000:]}")
    return out


def _measure(run: Path, wall: float) -> dict:
    connected = next(json.loads(line)["seconds"] for line in (run / "world.jsonl").open()
                     if '"connected"' in line)
    times = [json.loads(line)["time/iteration_seconds"]
             for path in run.glob("agents/agent-*/metrics.jsonl") for line in path.open()
             if '"iteration"' in line]
    summary = json.loads((run / "summary.json").read_text())
    return {"status": summary["status"], "connected_s": round(connected, 3),
            "wall_s": round(wall, 2), "iteration_s": round(sum(times) / len(times), 3),
            "team_return_curve": summary["team_return_curve"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
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
        started = time.monotonic()
        out = _check(_run(a, "launch", *common, "--topology", str(local_topology),
                          "--out", str(work / "local"), "--json"))
        local = _measure(Path(json.loads(out)["run_dir"]), time.monotonic() - started)
        split_topology = _ring(work / "ring-split.yaml", [A] * (N // 2) + [B] * (N // 2))
        keys = work / "keys"
        _check(_run(a, "keys", str(keys), "--topology", str(split_topology)))
        for host, part in (("a", f"world,0-{N // 2 - 1}"), ("b", f"{N // 2}-{N - 1}")):
            _check(_run(a, "keys", str(keys), "--topology", str(split_topology), "--only", part,
                        "--export", str(work / host)))
        launch = ["launch", *common, "--topology", str(split_topology), "--world-address",
                  f"{A}:7200"]
        started = time.monotonic()
        parts = [_run(a, *launch, "--run-dir", str(work / "a"), "--only", f"world,0-{N//2-1}"),
                 _run(b, *launch, "--run-dir", str(work / "b"), "--only", f"{N//2}-{N-1}")]
        for part in parts:
            _check(part)
        wall = time.monotonic() - started
        _check(_run(a, "merge", str(work / "merged"), str(work / "a"), str(work / "b")))
        split = _measure(work / "merged", wall)
    finally:
        _remove(namespaces)
    result = {
        "status": "ok" if local["status"] == split["status"] == "completed" else "failed",
        "n_agents": N, "iterations": args.iterations,
        "local": local, "split_2_namespaces": split,
        "ratio_split_over_local": {
            key: round(split[key] / local[key], 3) for key in ("connected_s", "wall_s",
                                                               "iteration_s")
        },
        "same_numbers": local["team_return_curve"] == split["team_return_curve"],
        "ray": "not measured: --engine ray is not implemented",
        "load_average": load_average(),
    }
    return emit("cluster", result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
