"""Real multi-process runs: completion, Ctrl-C, a dying agent, resume, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import processes_mentioning

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--topology", str(REPO / "topologies/ring3.yaml"), "--env", "spread", "--algo", "itrpo",
    "--steps-per-iteration", "64", "--n-envs", "4", "--episode-length", "8", "--no-progress",
]


def p2pmarl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2pmarl", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO,
    )


def only_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_three_agent_launch_completes_and_leaves_a_run_directory(no_leaked_processes):
    out = no_leaked_processes
    result = p2pmarl("launch", *TINY, "--iterations", "2", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr + result.stdout
    run = only_run_dir(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["algo"], summary["env"], summary["n_agents"]) == ("itrpo", "spread", 3)
    assert summary["iterations"] == 2
    assert summary["env_steps"] == 2 * 64
    assert [a["id"] for a in summary["agents"]] == [0, 1, 2]
    assert all(isinstance(a["return"], float) for a in summary["agents"])
    assert summary["team_return"] == pytest.approx(sum(a["return"] for a in summary["agents"]))
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 3 and len(config["seeds"]["agents"]) == 3
    assert json.loads((run / "topology.json").read_text())["nodes"]
    for agent in range(3):
        rows = (run / f"agents/agent-{agent}/metrics.jsonl").read_text().splitlines()
        iterations = [json.loads(r) for r in rows if '"iteration"' in r]
        assert [r["iteration"] for r in iterations] == [0, 1]
        assert "train/kl" in iterations[-1]
        assert (run / f"agents/agent-{agent}/checkpoints/iter-000002.pt").exists()
    assert str(run) in result.stdout


def test_same_seed_same_numbers(no_leaked_processes):
    out = no_leaked_processes
    returns = []
    for name in ("a", "b"):
        result = p2pmarl("launch", *TINY, "--iterations", "2", "--seed", "5",
                         "--out", str(out / name), "--json")
        assert result.returncode == 0, result.stderr
        returns.append(json.loads(result.stdout)["team_return_curve"])
    assert returns[0] == returns[1]


def test_resume_continues_from_checkpoints(no_leaked_processes):
    out = no_leaked_processes
    first = p2pmarl("launch", *TINY, "--iterations", "2", "--checkpoint-every", "1",
                    "--out", str(out))
    assert first.returncode == 0, first.stderr
    run = only_run_dir(out)
    again = p2pmarl("launch", "--resume", str(run), "--iterations", "3", "--no-progress")
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["status"] == "completed"
    assert (run / "agents/agent-0/checkpoints/iter-000003.pt").exists()


def _start(out: Path, iterations: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "p2pmarl", "launch", *TINY, "--iterations", str(iterations),
         "--steps-per-iteration", "4000", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def _wait_for_rollout(out: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(out.glob("*/world.jsonl")) if out.exists() else []
        if runs and "connected" in runs[0].read_text():
            return runs[0].parent
        time.sleep(0.2)
    raise AssertionError("the run never connected")


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_stops_every_process_within_seconds(no_leaked_processes, inherited):
    """``ignored``: started as a shell without job control starts ``cmd &``, SIGINT ignored."""
    out = no_leaked_processes
    handler = signal.SIG_IGN if inherited == "ignored" else signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        launcher = _start(out, iterations=50)  # Popen keeps an ignored SIGINT ignored in the child
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        run = _wait_for_rollout(out)
        time.sleep(1.0)
        launcher.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = launcher.wait(timeout=15)
        assert time.monotonic() - started < 8
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert code == 130
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert _alive(json.loads((run / "pids.json").read_text()).values()) == []


def _alive(pids) -> list[int]:
    return [pid for pid in pids if pid in processes_mentioning("p2pmarl")]


def test_a_dying_agent_is_named_and_everything_stops(no_leaked_processes):
    out = no_leaked_processes
    launcher = _start(out, iterations=50)
    try:
        run = _wait_for_rollout(out)
        victim = json.loads((run / "pids.json").read_text())["agent 1"]
        os.kill(victim, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 1
    assert "agent 1 was killed by signal SIGKILL" in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_process"] == "agent 1"
    assert _alive(json.loads((run / "pids.json").read_text()).values()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--topology", "PAIR", "--env", "treasure"], "has 2 agents"),
        (["--topology", "missing.yaml"], "missing.yaml"),
        (["--algo", "nonsense"], "unknown algorithm 'nonsense'"),
        (["--iterations", "0"], "iterations must be ≥ 1"),
    ],
)
def test_bad_input_is_a_clear_error(args, expected, tmp_path):
    pair = tmp_path / "pair.yaml"
    pair.write_text("edges: [[0, 1]]\n")
    out = tmp_path / "runs"
    args = [str(pair) if a == "PAIR" else a for a in args]
    result = p2pmarl("launch", *TINY, "--out", str(out), *args, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr
    assert not out.exists()


def test_experiment_file_with_override(tmp_path, no_leaked_processes):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        f"topology: {REPO / 'topologies/ring3.yaml'}\nenv: spread\nalgo: itrpo\n"
        "iterations: 5\nsteps-per-iteration: 64\nn_envs: 4\nepisode_length: 8\n"
    )
    result = p2pmarl("launch", str(experiment), "--iterations", "1", "--out",
                     str(no_leaked_processes), "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["iterations"] == 1
    experiment.write_text("iterations: five\n")
    bad = p2pmarl("launch", str(experiment), "--out", str(no_leaked_processes))
    assert bad.returncode == 2 and "iterations must be int" in bad.stderr


@pytest.mark.parametrize("algo", ["matrpo", "ctrpo"])
def test_every_variant_trains_in_real_processes(algo, no_leaked_processes):
    out = no_leaked_processes
    result = p2pmarl("launch", *TINY, "--algo", algo, "--iterations", "2", "--admm-iterations",
                     "6", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["iterations"] == 2
    assert [a["id"] for a in summary["agents"]] == [0, 1, 2]
    assert all(isinstance(a["return"], float) for a in summary["agents"])
    run = Path(summary["run_dir"])
    if algo == "matrpo":
        records = [json.loads(line)
                   for line in (run / "agents/agent-1/admm.jsonl").read_text().splitlines()]
        assert {r["iteration"] for r in records} == {0, 1}
        assert all(np.isfinite(r["disagreement_rms"]) for r in records
                   if r["status"] == "committed")
    else:
        assert summary["centralized"] and not (run / "agents/agent-1").exists()


def test_seeded_matrpo_runs_are_identical(no_leaked_processes):
    """Same seeds + seeded ADMM schedule → the same numbers, across real processes."""
    out = no_leaked_processes
    strip = {"compute_seconds", "communication_seconds", "bytes_sent"}
    runs = []
    for name in ("a", "b"):
        result = p2pmarl("launch", *TINY, "--algo", "matrpo", "--admm-schedule", "seeded",
                         "--admm-iterations", "9", "--iterations", "2", "--seed", "4",
                         "--out", str(out / name), "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        run = Path(summary["run_dir"])
        records = [
            {k: v for k, v in json.loads(line).items() if k not in strip}
            for agent in range(3)
            for line in (run / f"agents/agent-{agent}/admm.jsonl").read_text().splitlines()
        ]
        runs.append((summary["team_return_curve"], records))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]
    assert all(r["status"] == "committed" for r in runs[0][1])


def test_topology_check_and_show_commands(tmp_path):
    check = p2pmarl("topology", "check", str(REPO / "topologies/ring6.yaml"), "--json")
    assert check.returncode == 0, check.stderr
    description = json.loads(check.stdout)
    assert (description["n_agents"], description["n_edges"], description["diameter"]) == (6, 6, 3)
    assert description["algebraic_connectivity"] == pytest.approx(1.0)
    text = p2pmarl("topology", "check", str(REPO / "topologies/er8.yaml"))
    assert text.returncode == 0 and "8" in text.stdout
    png = tmp_path / "ws12.png"
    show = p2pmarl("topology", "show", str(REPO / "topologies/ws12.yaml"), "--png", str(png))
    assert show.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("edges: [[0, 0], [0, 1]]\n")
    broken = p2pmarl("topology", "check", str(bad))
    assert broken.returncode == 2 and "bad.yaml" in broken.stderr
