"""``--tensorboard`` and ``inspect --tensorboard``: event files read back to the JSONL numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmarl.runtime.rundir import RunDir

pytest.importorskip(
    "tensorboardX", reason="the optional tensorboard extra (tensorboardX) is not installed"
)

from p2pmarl.runtime.tensorboard import export_run, read_scalars

REPO = Path(__file__).resolve().parents[1]


def p2pmarl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2pmarl", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO,
    )


def iteration_records(run: Path, agent: int) -> list[dict]:
    lines = (run / f"agents/agent-{agent}/metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"iteration"' in line]


def test_a_run_with_tensorboard_writes_every_agents_scalars(no_leaked_processes):
    out = no_leaked_processes
    result = p2pmarl(
        "launch", "--topology", str(REPO / "topologies/ring3.yaml"), "--algo", "matrpo",
        "--steps-per-iteration", "64", "--n-envs", "4", "--episode-length", "8",
        "--iterations", "2", "--admm-iterations", "6", "--tensorboard", "--no-progress",
        "--out", str(out),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    run = next(out.iterdir())
    for agent in range(3):
        found = read_scalars(run / f"tensorboard/agent-{agent}")
        records = iteration_records(run, agent)
        for key in ("rollout/return", "train/kl", "train/value_loss", "net/bytes_sent"):
            assert found[key] == [
                (r["iteration"], pytest.approx(r[key], rel=1e-6)) for r in records
            ], key
        edges = {tag.split("/")[1] for tag in found if tag.startswith("admm/edge-")}
        assert edges and all(edge.startswith("edge-") for edge in edges)
        committed = [
            json.loads(line) for line in
            (run / f"agents/agent-{agent}/admm.jsonl").read_text().splitlines()
            if '"committed"' in line
        ]
        total = sum(len(found[f"admm/{edge}/disagreement"]) for edge in edges)
        assert total == len(committed)
        first = committed[0]
        tag = f"admm/edge-{first['edge'][0]}-{first['edge'][1]}/dual"
        assert found[tag][0] == (0, pytest.approx(first["dual_rms"], rel=1e-6))
    live = read_scalars(run / "tensorboard")

    converted = p2pmarl("inspect", str(run), "--tensorboard")
    assert converted.returncode == 0, converted.stderr
    assert f"wrote {run / 'tensorboard'}" in converted.stdout
    assert read_scalars(run / "tensorboard") == live  # replaced, not appended to


def test_lists_and_fault_counters_become_scalars(tmp_path):
    run = RunDir(tmp_path / "run")
    run.agent_metrics(0).parent.mkdir(parents=True)
    records = [
        {"event": "connected", "connect/seconds": 0.1},
        {"iteration": 0, "rollout/return": None, "faults/dropped": 3,
         "rollout/agent_returns": [-1.0, -2.5], "status": "x"},
        {"iteration": 1, "rollout/return": -4.0, "faults/dropped": 5},
    ]
    run.agent_metrics(0).write_text("".join(json.dumps(r) + "\n" for r in records) + '{"iter')
    found = read_scalars(export_run(run.root))
    assert found["faults/dropped"] == [(0, 3.0), (1, 5.0)]
    assert found["rollout/agent_returns/1"] == [(0, -2.5)]
    assert found["rollout/return"] == [(1, -4.0)]  # None and the unfinished line are skipped
    assert "status" not in found and "connect/seconds" not in found
