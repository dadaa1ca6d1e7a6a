"""``p2pmarl inspect`` and ``evaluate`` on one small real MATRPO run (built once per module)."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from p2pmarl.cli import main
from p2pmarl.config import RunConfig
from p2pmarl.evaluate import evaluate
from p2pmarl.inspection import SCHEMA, collect, format_report, write_plots
from p2pmarl.inspection.data import latest_session
from p2pmarl.runtime.launcher import launch
from tests.conftest import processes_mentioning

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 2
ADMM_ITERATIONS = 12
EDGES = ([0, 1], [0, 2], [1, 2])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Number = (int, float)
RUN_FIELDS: dict[str, Any] = {
    "algo": str, "env": str, "n_agents": int, "learners": int, "centralized": bool,
    "topology": str, "n_edges": int, "seed": int, "status": str, "iterations": int,
    "iterations_planned": int, "env_steps": int, "team_return": (*Number, type(None)),
    "team_return_curve": list, "wall_seconds": (*Number, type(None)),
}
EDGE_FIELDS: dict[str, Any] = {
    "edge": list, "activations": int, "aborted": int, "drops": int, "down_seconds": Number,
    "abort_reasons": dict, "split": int, "disagreement_last": Number,
    "disagreement_median": Number, "primal_last": Number, "dual_last": Number,
    "disagreement_by_iteration": list,
}
AGENT_FIELDS: dict[str, Any] = {
    "id": int, "iterations": int, "return_first": Number, "return_last": Number,
    "returns": list, "kl_mean": Number, "line_search_acceptance": Number, "activations": int,
    "aborted": int, "bytes_sent": int, "rejected": int,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-agent MATRPO run on a ring (about 5 s)."""
    out = tmp_path_factory.mktemp("inspect-runs")
    config = RunConfig(
        topology=str(REPO / "topologies/ring3.yaml"), env="spread", algo="matrpo",
        iterations=ITERATIONS, steps_per_iteration=200, n_envs=4, episode_length=25,
        admm_iterations=ADMM_ITERATIONS, out=str(out),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    return Path(result.run_dir)


def _check_fields(obj: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for key, kind in fields.items():
        assert key in obj, f"{where}: missing {key}"
        value = obj[key]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (
            f"{where}.{key} = {value!r} is not {kind}"
        )
        if isinstance(value, float):
            assert math.isfinite(value), f"{where}.{key} is not finite"


def _admm_records(run_dir: Path, agent: int) -> list[dict[str, Any]]:
    path = run_dir / f"agents/agent-{agent}/admm.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _copy_run(run_dir: Path, destination: Path) -> Path:
    return Path(shutil.copytree(run_dir, destination))


def test_launch_left_no_process_behind(run_dir: Path) -> None:
    pids = json.loads((run_dir / "pids.json").read_text())
    alive = [
        pid for pid in pids.values()
        if Path(f"/proc/{pid}").exists()
        and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    ]
    assert not alive
    assert not processes_mentioning(str(run_dir))


def test_report_mentions_every_edge_and_agent(run_dir: Path, capsys) -> None:
    text = format_report(collect(run_dir))
    for i, j in EDGES:
        assert f"{i}–{j}" in text
    assert "matrpo on spread" in text and "completed" in text
    assert "faults: none recorded" in text
    assert main(["inspect", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{i}–{j}" in printed for i, j in EDGES)
    assert "\x1b[" not in printed  # not a terminal: no colour codes


def test_json_output_follows_the_schema(run_dir: Path, capsys) -> None:
    assert main(["inspect", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == SCHEMA and data["run_dir"] == str(run_dir)
    _check_fields(data["run"], RUN_FIELDS, "run")
    assert (data["run"]["algo"], data["run"]["n_agents"], data["run"]["status"]) == (
        "matrpo", 3, "completed"
    )
    assert data["run"]["iterations"] == ITERATIONS
    assert [edge["edge"] for edge in data["edges"]] == list(EDGES)
    for edge in data["edges"]:
        _check_fields(edge, EDGE_FIELDS, f"edge {edge['edge']}")
        assert len(edge["disagreement_by_iteration"]) == ITERATIONS
        assert edge["down_seconds"] == 0.0 and edge["drops"] == edge["aborted"]
    assert [agent["id"] for agent in data["agents"]] == [0, 1, 2]
    for agent in data["agents"]:
        _check_fields(agent, AGENT_FIELDS, f"agent {agent['id']}")
        assert len(agent["returns"]) == ITERATIONS
        assert 0.0 <= agent["line_search_acceptance"] <= 1.0
    assert data["faults"] == []


def test_activations_per_edge_equal_the_records(run_dir: Path) -> None:
    data = collect(run_dir)
    for edge in data["edges"]:
        low, high = edge["edge"]
        for agent in (low, high):
            records = [r for r in _admm_records(run_dir, agent) if r["edge"] == edge["edge"]]
            statuses = Counter(r["status"] for r in records)
            assert edge["activations"] == statuses["committed"], (edge, agent)
            assert edge["aborted"] == statuses["aborted"], (edge, agent)
        # async budget: ⌈12 / 3⌉ committed activations per edge and iteration
        assert edge["activations"] == ITERATIONS * ADMM_ITERATIONS // len(EDGES)
        last = [r for r in _admm_records(run_dir, low) if r["edge"] == edge["edge"]][-1]
        assert edge["disagreement_last"] == pytest.approx(last["disagreement_rms"])


def test_plots_are_valid_pngs(run_dir: Path, tmp_path: Path, capsys) -> None:
    written = write_plots([run_dir], tmp_path / "plots")
    names = {path.name for path in written}
    assert {"residuals.png", "disagreement_heatmap.png", "learning_curves.png"} <= names
    assert f"topology-{run_dir.name}.png" in names
    for path in written:
        content = path.read_bytes()
        assert content[:8] == PNG_MAGIC and len(content) > 5_000, path
    assert main(["inspect", str(run_dir), "--plot", str(tmp_path / "cli")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "cli" / "residuals.png").read_bytes()[:8] == PNG_MAGIC


def test_runs_without_consensus_records_skip_residual_plots(run_dir: Path, tmp_path: Path) -> None:
    """Like an I-TRPO run: no admm.jsonl records; compared with the MATRPO run."""
    plain = _copy_run(run_dir, tmp_path / "no-admm")
    for agent in range(3):
        (plain / f"agents/agent-{agent}/admm.jsonl").write_text("")
    data = collect(plain)
    assert all(edge["activations"] == 0 and edge["disagreement_last"] is None
               for edge in data["edges"])
    assert "no ADMM activations" in format_report(data)
    solo = {p.name for p in write_plots([plain], tmp_path / "solo")}
    assert solo == {"learning_curves.png", "topology-no-admm.png"}
    both = {p.name for p in write_plots([run_dir, plain], tmp_path / "both")}
    assert {"residuals.png", "disagreement_heatmap.png", "learning_curves.png"} <= both


def test_fault_events_are_listed(run_dir: Path, tmp_path: Path) -> None:
    faulty = _copy_run(run_dir, tmp_path / "faulty")
    events = [{"time": 1.5, "kind": "drop", "edge": [0, 1]}, {"time": 2.0, "kind": "kill"}]
    (faulty / "faults.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    data = collect(faulty)
    assert data["faults"] == events
    assert "faults: 2 events" in format_report(data)


def test_evaluate_returns_finite_returns_and_writes_a_gif(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    gif = tmp_path / "episode.gif"
    result = evaluate(run_dir, episodes=2, gif=gif, seed=1)
    assert result["checkpoint_iteration"] == ITERATIONS
    assert [agent["id"] for agent in result["agents"]] == [0, 1, 2]
    assert all(math.isfinite(agent["return"]) for agent in result["agents"])
    assert result["team_return"] == pytest.approx(sum(a["return"] for a in result["agents"]))
    assert len(result["episode_returns"]) == 2
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with Image.open(gif) as image:
        assert image.n_frames > 1
    assert evaluate(run_dir, episodes=2, seed=1)["team_return"] == result["team_return"]


def test_evaluate_command_prints_json(run_dir: Path, capsys) -> None:
    assert main(["evaluate", str(run_dir), "--episodes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 1 and result["gif"] is None
    assert all(math.isfinite(agent["return"]) for agent in result["agents"])


def test_live_view_of_a_finished_run_exits(run_dir: Path, capsys) -> None:
    started = time.monotonic()
    code = main(["inspect", str(run_dir), "--live", "--interval", "0.2", "--max-seconds", "1"])
    assert code == 0 and time.monotonic() - started < 10
    assert "0–1" in capsys.readouterr().out


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main(["evaluate", str(missing), "--episodes", "1"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_evaluate_without_checkpoints_is_a_clear_error(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    bare = _copy_run(run_dir, tmp_path / "bare")
    for folder in bare.glob("agents/agent-*/checkpoints"):
        shutil.rmtree(folder)
    assert main(["evaluate", str(bare), "--episodes", "1"]) == 2
    error = capsys.readouterr().err
    assert str(bare) in error and "checkpoint" in error


def test_a_resume_supersedes_replayed_records() -> None:
    def record(iteration: int, activation: int, edge: tuple[int, int] = (0, 1)) -> dict:
        return {"iteration": iteration, "activation": activation, "edge": list(edge)}

    first = [record(0, 1), record(0, 2), record(1, 1), record(1, 2), record(2, 1)]
    resumed = [record(1, 1), record(1, 2), record(2, 1), record(2, 2)]
    kept = latest_session(first + resumed)
    assert [(r["iteration"], r["activation"]) for r in kept] == [
        (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)
    ]
    assert kept[2] is resumed[0]
    same_iteration = [record(2, 1), record(2, 2), record(2, 1)]
    assert latest_session(same_iteration) == [same_iteration[2]]
