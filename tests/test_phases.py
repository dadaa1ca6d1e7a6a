"""Runtime rollout phases and copy groups: an algorithm that declares several phases, and acts
with a different policy per copy group, sees exactly the declared layout in a real launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pmarl import algos
from p2pmarl.algos.base import AgentAlgorithm, Batch, RolloutPhase, copy_group_layout
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SHARED, OWN = 1, 2
"""Action a probe agent takes with the shared policy θ / its own adapted copy: the joint actions
in every agent's batch then show which policy each agent used in each copy."""


class PhaseProbe(AgentAlgorithm):
    """Acts 0 in phase ``first``; in phase ``second`` (N copy groups) agent n acts OWN in group
    n and SHARED elsewhere, the DiMA-PG layout. Records what it saw in its metrics."""

    name = "phaseprobe"

    def __init__(self, agent_id: int) -> None:
        self.agent_id = agent_id
        self.seen: list[dict[str, Any]] = []

    @classmethod
    def from_run_config(cls, agent_id, spec, topology, config, seed) -> PhaseProbe:
        return cls(agent_id)

    @classmethod
    def rollout_phases(cls, config: RunConfig, n_agents: int) -> tuple[RolloutPhase, ...]:
        return (RolloutPhase("first", 6), RolloutPhase("second", 4, copy_groups=n_agents))

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros(len(observations), dtype=np.int64)

    def act_in_phase(self, observations, phase, copy_groups) -> np.ndarray:
        assert phase.name == "second"
        return np.where(copy_groups == self.agent_id, OWN, SHARED).astype(np.int64)

    def _summary(self, batch: Batch) -> dict[str, Any]:
        return {
            "phase": batch.phase,
            "steps": int(batch.rewards.shape[0]),
            "joint_actions": batch.joint_actions[0].tolist(),
            "constant_in_time": bool((batch.joint_actions == batch.joint_actions[0]).all()),
            "copy_groups": None if batch.copy_groups is None else batch.copy_groups.tolist(),
        }

    def phase_update(self, batch: Batch) -> dict[str, float]:
        self.seen = [self._summary(batch)]
        return {}

    def local_update(self, batch: Batch) -> dict[str, Any]:
        self.seen.append(self._summary(batch))
        return {"probe/seen": self.seen}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_copy_group_layout_is_balanced_seeded_and_needs_k_at_least_g():
    layout = copy_group_layout(10, 3, seed=5, iteration=2, phase=1)
    assert sorted(np.bincount(layout).tolist()) == [3, 3, 4]
    np.testing.assert_array_equal(layout, copy_group_layout(10, 3, 5, 2, 1))
    others = [copy_group_layout(10, 3, 5, i, 1) for i in range(6)]
    assert any((o != layout).any() for o in others), "the layout should change with iteration"
    np.testing.assert_array_equal(copy_group_layout(4, 1, 0, 0, 0), np.zeros(4))
    assert sorted(copy_group_layout(3, 3, 0, 0, 0).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 4 environment copies"):
        copy_group_layout(3, 4, 0, 0, 0)
    with pytest.raises(ValueError, match="steps"):
        RolloutPhase("x", 0)


def test_the_default_is_one_phase_of_the_rollout_length():
    config = RunConfig(steps_per_iteration=100, n_envs=8)
    phases = algos.algorithm_class("itrpo").rollout_phases(config, 3)
    assert phases == (RolloutPhase("rollout", 13),)


def test_a_launch_runs_the_declared_phases_and_copy_groups(monkeypatch, no_leaked_processes):
    monkeypatch.setitem(algos.ALGORITHMS, "phaseprobe", (__name__, "PhaseProbe"))
    K, N, seed, iterations = 6, 3, 11, 2
    config = RunConfig(
        topology=str(REPO / "topologies/ring3.yaml"), env="spread", algo="phaseprobe",
        iterations=iterations, n_envs=K, episode_length=5, seed=seed,
        out=str(no_leaked_processes),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    assert result.summary["env_steps"] == iterations * (6 + 4) * K
    for agent in range(N):
        rows = [r for r in read_jsonl(result.run_dir / "agents" / f"agent-{agent}" /
                                      "metrics.jsonl") if "iteration" in r]
        assert [r["iteration"] for r in rows] == list(range(iterations))
        for row in rows:
            first, second = row["probe/seen"]
            assert (first["phase"], first["steps"], first["copy_groups"]) == ("first", 6, None)
            assert first["joint_actions"] == [[0] * N] * K and first["constant_in_time"]
            layout = copy_group_layout(K, N, seed, row["iteration"], 1)
            assert (second["phase"], second["steps"]) == ("second", 4)
            assert second["copy_groups"] == layout.tolist()
            expected = [[OWN if layout[k] == n else SHARED for n in range(N)] for k in range(K)]
            assert second["joint_actions"] == expected and second["constant_in_time"]


def test_too_few_copies_for_the_groups_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(algos.ALGORITHMS, "phaseprobe", (__name__, "PhaseProbe"))
    config = RunConfig(topology=str(REPO / "topologies/ring3.yaml"), env="spread",
                       algo="phaseprobe", n_envs=2, out=str(tmp_path))
    with pytest.raises(ConfigError, match="n_envs ≥ 3"):
        launch(config, show_progress=False)


def test_progress_counts_the_env_steps_of_every_phase(tmp_path):
    """The live progress shows env steps over all rollout phases of an iteration, not T·K."""
    from p2pmarl.algos import algorithm_class
    from p2pmarl.config import RunConfig
    from p2pmarl.runtime.progress import ProgressView
    from p2pmarl.runtime.rundir import RunDir

    config = RunConfig(algo="dimapg", env="spread-shared", n_envs=6, steps_per_iteration=600)
    phases = algorithm_class("dimapg").rollout_phases(config, 3)
    assert len(phases) > 1
    view = ProgressView(RunDir(tmp_path), config, 3, 0, enabled=False)
    assert view.steps_per_iteration == sum(p.steps for p in phases) * 6
    assert view.steps_per_iteration > config.rollout_length * config.n_envs
