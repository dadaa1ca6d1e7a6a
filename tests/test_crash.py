"""Agent crashes (fault spec ``crash``) in real multi-process MATRPO runs on ring3.

Each run takes a few seconds. The ADMM message timeout is set to 20 s: had a neighbour waited
on the dead agent instead of seeing its link lost, the run would take far longer than it does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from p2pmarl.runtime.rundir import read_jsonl
from p2pmarl.runtime.world_link import PROBE_INTERVAL

REPO = Path(__file__).resolve().parents[1]
RING3 = REPO / "topologies/ring3.yaml"
MESSAGE_TIMEOUT = 20.0
DETECTION_BOUND = PROBE_INTERVAL + 1.0
"""Seconds from the crash until the world has noticed (docs/faults.md states the bound)."""


def launch_with_crashes(out: Path, crash_yaml: str, iterations: int) -> dict[str, Any]:
    spec = out.parent / "crash.yaml"
    spec.write_text(crash_yaml)
    args = [
        "--topology", str(RING3), "--env", "spread", "--algo", "matrpo",
        "--faults", str(spec), "--iterations", str(iterations), "--steps-per-iteration", "200",
        "--n-envs", "4", "--episode-length", "25", "--admm-iterations", "12",
        "--admm-message-timeout", str(MESSAGE_TIMEOUT), "--checkpoint-every", "1",
        "--no-progress", "--json", "--out", str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "p2pmarl", "launch", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed", summary
    assert summary["wall_seconds"] < MESSAGE_TIMEOUT, "someone waited out a message timeout"
    return summary


def world_events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(run / "world.jsonl") if e.get("event") == kind]


def fault_events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(run / "faults.jsonl") if e.get("event") == kind]


def iterations_reported(run: Path, agent: int) -> list[int]:
    rows = read_jsonl(run / f"agents/agent-{agent}/metrics.jsonl")
    return [r["iteration"] for r in rows if isinstance(r.get("iteration"), int)]


def admm_edges(run: Path, agent: int, iteration: int) -> set[tuple[int, int]]:
    records = read_jsonl(run / f"agents/agent-{agent}/admm.jsonl")
    return {tuple(r["edge"]) for r in records
            if r["iteration"] == iteration and r["status"] == "committed"}


def test_sigkill_of_one_agent_the_others_finish(no_leaked_processes: Path) -> None:
    summary = launch_with_crashes(
        no_leaked_processes, "crash: [{agent: 2, at_iteration: 1}]\n", iterations=3
    )
    run = Path(summary["run_dir"])
    assert summary["crashed_agents"] == [2]
    assert summary["faults"]["crash"] == 1 and summary["faults"]["restart"] == 0
    assert iterations_reported(run, 2) == [0]
    assert iterations_reported(run, 0) == iterations_reported(run, 1) == [0, 1, 2]
    crash = fault_events(run, "crash")[0]
    lost = world_events(run, "agent_lost")
    # noticed while waiting for iteration 0's end or in iteration 1's rollout, by timing
    assert [e["agent"] for e in lost] == [2] and lost[0]["iteration"] in (0, 1)
    assert lost[0]["unix_time"] - crash["time"] < DETECTION_BOUND
    for iteration in (1, 2):  # the survivors go on with the one edge they still have
        assert admm_edges(run, 0, iteration) == admm_edges(run, 1, iteration) == {(0, 1)}
    assert summary["agents"][2]["return"] is None
    assert len(summary["team_return_curve"]) == 3


def test_crash_and_restart_the_agent_rejoins_and_its_edges_resume(
    no_leaked_processes: Path,
) -> None:
    summary = launch_with_crashes(
        no_leaked_processes, "crash: [{agent: 1, at_iteration: 2, restart: true}]\n", iterations=5
    )
    run = Path(summary["run_dir"])
    assert summary["crashed_agents"] == [1]
    assert summary["faults"]["crash"] == 1 and summary["faults"]["restart"] == 1
    assert fault_events(run, "restart")[0]["checkpoint_iteration"] == 2
    back = world_events(run, "agent_rejoined")
    assert [e["agent"] for e in back] == [1]
    rejoined_at = back[0]["iteration"] + 1  # welcomed between iterations
    rows = read_jsonl(run / "agents/agent-1/metrics.jsonl")
    rejoin = [r for r in rows if r.get("event") == "rejoined"]
    assert rejoin and rejoin[0]["joins_at"] == rejoined_at
    assert rejoin[0]["checkpoint_iteration"] == 2
    assert iterations_reported(run, 1) == [0, 1, *range(rejoined_at, 5)]
    assert rejoined_at < 5
    for iteration in range(rejoined_at, 5):
        assert admm_edges(run, 1, iteration) == {(0, 1), (1, 2)}
        assert (0, 1) in admm_edges(run, 0, iteration)
    assert summary["agents"][1]["return"] is not None


def test_crash_by_the_clock_is_executed_by_the_launcher(no_leaked_processes: Path) -> None:
    summary = launch_with_crashes(
        no_leaked_processes, "crash: [{agent: 0, at_seconds: 1.5, restart: true}]\n",
        iterations=12,
    )
    run = Path(summary["run_dir"])
    crash = fault_events(run, "crash")
    assert len(crash) == 1 and crash[0]["agent"] == 0 and crash[0]["at_seconds"] == 1.5
    assert 1.5 <= crash[0]["elapsed"] < 1.5 + 1.0
    assert [e["agent"] for e in world_events(run, "agent_rejoined")] == [0]
    assert summary["iterations"] == 12 and summary["agents"][0]["return"] is not None
