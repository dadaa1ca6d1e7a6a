"""MADDPG and Genetic MADDPG over real processes: what crosses each wire, evaluation, a crash.

Every frame any process encodes is recorded (the launcher forks its children from this test
process, as in tests/test_privacy.py). Tiny budgets: a few seconds per run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from p2pmarl.algos.genetic_maddpg import AGREE_FIELDS, GOSSIP_FIELDS
from p2pmarl.algos.maddpg import ROW_FIELDS
from p2pmarl.cli import main
from p2pmarl.config import RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.evaluate import evaluate
from p2pmarl.runtime import transport, world_link
from p2pmarl.runtime.codec import WORLD
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.reliable import RELIABLE_FIELDS
from p2pmarl.runtime.rundir import read_jsonl
from p2pmarl.topology import load_topology
from tests.test_privacy import AGENT_TO_WORLD, CONTROL, WORLD_TO_AGENT, _recording_encoder

REPO = Path(__file__).resolve().parents[1]
LINE4 = REPO / "topologies/line4.yaml"
K = 4


def _launch(algo: str, out: Path, monkeypatch, log: Path) -> Path:
    encoder = _recording_encoder(log)
    monkeypatch.setattr(transport, "encode", encoder)
    monkeypatch.setattr(world_link, "encode", encoder)
    config = RunConfig(
        topology=str(LINE4), env="tag", algo=algo, iterations=6, steps_per_iteration=100,
        n_envs=K, episode_length=25, maddpg_learning_starts=200, maddpg_batch_size=64,
        critic_sync_every=200, checkpoint_every=3, out=str(out),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    return Path(result.run_dir)


def _world_ping(row: dict) -> bool:
    """The world's liveness probe (empty body), sent while its ``ready`` gather waits longer
    than ``world_link.PROBE_INTERVAL``, which on a loaded machine it may."""
    return row["sender"] == WORLD and row["kind"] == "ping" and not row["keys"]


def _evaluate_with_gif(run: Path, gif: Path, capsys) -> dict:
    """``p2pmarl evaluate RUN --gif`` as the command line runs it; the JSON it printed, after
    checking the GIF (several frames) and that the library call gives the same returns."""
    from PIL import Image

    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "2", "--gif", str(gif), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gif"] == str(gif) and gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with Image.open(gif) as image:
        assert image.n_frames > 1
    assert evaluate(run, episodes=2)["agents"] == result["agents"]
    return result


def test_maddpg_sends_only_neighbour_rows_and_evaluates(tmp_path, monkeypatch, capsys,
                                                        no_leaked_processes):
    log = tmp_path / "wire.jsonl"
    run = _launch("maddpg", no_leaked_processes, monkeypatch, log)
    topology, spec = load_topology(LINE4), env_spec("tag", 4)
    rows_sent = 0
    for row in map(json.loads, log.read_text().splitlines()):
        sender, receiver = row["sender"], row["receiver"]
        if row["kind"] in ("step", "stop"):
            assert set(row["keys"]) <= WORLD_TO_AGENT
        elif _world_ping(row) or (row["kind"], tuple(row["keys"])) in AGENT_TO_WORLD:
            pass
        else:
            assert receiver in topology.neighbours(sender), row
            assert row["kind"] in CONTROL | {"maddpg_rows"}, row
            if row["kind"] == "maddpg_rows":
                rows_sent += row["copy"] == [0, 0]  # first copies (a busy host may re-send)
                assert set(row["keys"]) == set(ROW_FIELDS) | RELIABLE_FIELDS
                d = spec.observation_sizes[sender]
                assert row["shapes"] == {"obs": [64, d], "next_obs": [64, d],
                                         "next_action": [64, spec.action_sizes[sender]]}
    # 200 transitions stored after iteration 1: one update in each of iterations 1..5, one
    # message per update and edge end
    assert rows_sent == 5 * 2 * len(topology.graph.edges)
    metrics = read_jsonl(run / "agents/agent-1/metrics.jsonl")
    assert sum(m.get("maddpg/updates", 0) for m in metrics) == 5
    result = _evaluate_with_gif(run, tmp_path / "maddpg.gif", capsys)
    assert result["worker"] is None and {"predator_return", "prey_return"} <= set(result)
    assert np.isclose(result["predator_return"], result["agents"][0]["return"])


def test_genetic_workers_send_only_gossip_and_evaluate(tmp_path, monkeypatch, capsys,
                                                       no_leaked_processes):
    log = tmp_path / "wire.jsonl"
    run = _launch("genetic-maddpg", no_leaked_processes, monkeypatch, log)
    topology = load_topology(LINE4)
    kinds = set()
    for row in map(json.loads, log.read_text().splitlines()):
        sender, receiver = row["sender"], row["receiver"]
        assert row["kind"] != "step", "the world steps nothing for workers"
        if row["kind"] == "stop" or (row["kind"], tuple(row["keys"])) in AGENT_TO_WORLD:
            continue
        if _world_ping(row):
            continue
        assert receiver in topology.neighbours(sender), row
        kinds.add(row["kind"])
        if row["kind"] == "critic_gossip":
            assert set(row["keys"]) - RELIABLE_FIELDS <= set(GOSSIP_FIELDS)
        elif row["kind"] == "critic_winner":
            assert set(row["keys"]) == set(AGREE_FIELDS) | RELIABLE_FIELDS
        else:
            assert row["kind"] in CONTROL, row
    assert {"critic_gossip", "critic_winner"} <= kinds
    syncs = [r for w in range(4) for r in read_jsonl(run / f"agents/agent-{w}/admm.jsonl")]
    assert len(syncs) == 4 * 3  # 600 steps per worker, one sync per 200
    for sync in (1, 2, 3):
        winners = {r["winner"] for r in syncs if r["sync"] == sync}
        assert len(winners) == 1, f"workers disagree at sync {sync}: {winners}"
        best = max((r for r in syncs if r["sync"] == sync), key=lambda r: r["own_score"])
        assert winners == {best["winner"]}
    result = _evaluate_with_gif(run, tmp_path / "genetic.gif", capsys)
    assert result["worker"] in range(4) and len(result["agents"]) == 4
    assert {"predator_return", "prey_return"} <= set(result)


def test_crash_of_one_genetic_worker_the_others_finish(tmp_path, no_leaked_processes):
    spec = tmp_path / "crash.yaml"
    spec.write_text("crash:\n  - {agent: 2, at_iteration: 3}\n")
    ring4 = tmp_path / "ring4.yaml"
    ring4.write_text("generator: ring\nn: 4\n")
    args = [
        "--topology", str(ring4), "--env", "tag", "--algo", "genetic-maddpg",
        "--faults", str(spec), "--iterations", "8", "--steps-per-iteration", "100",
        "--n-envs", "4", "--episode-length", "25", "--maddpg-learning-starts", "200",
        "--maddpg-batch-size", "32", "--critic-sync-every", "200", "--checkpoint-every", "4",
        "--no-progress", "--json", "--out", str(no_leaked_processes),
    ]
    result = subprocess.run([sys.executable, "-m", "p2pmarl", "launch", *args],
                            capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["crashed_agents"] == [2]
    run = Path(summary["run_dir"])
    for worker in (0, 1, 3):
        metrics = read_jsonl(run / f"agents/agent-{worker}/metrics.jsonl")
        assert metrics[-1]["iteration"] == 7
        syncs = read_jsonl(run / f"agents/agent-{worker}/admm.jsonl")
        assert [s["sync"] for s in syncs] == [1, 2, 3, 4]
        after = [s for s in syncs if s["sync"] >= 3]  # syncs after the crash at step 300
        if worker in (1, 3):  # the dead worker's ring neighbours lose one partner
            assert all(s["missed_rounds"] > 0 and not s["missed"] for s in after), after
    assert summary["wall_seconds"] < 60
