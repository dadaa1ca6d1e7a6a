"""Environments by import path: PettingZoo Parallel envs the project did not write (mpe2's), and
small hand-made ones for spaces mpe2 lacks (Discrete observations, MultiDiscrete and Box
actions, agents that leave early, unsupported spaces)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv

from p2pmarl.envs import env_spec, make_env
from p2pmarl.envs.base import ActionSpace

REPO = Path(__file__).resolve().parents[1]
ADVERSARY = "mpe2.simple_adversary_v3:parallel_env"
SPEAKER = "mpe2.simple_speaker_listener_v4:parallel_env"
SPREAD = "mpe2.simple_spread_v3:parallel_env"
CONTINUOUS = json.dumps({"continuous_actions": True})


class ToyEnv(ParallelEnv):
    """Two agents: ``a`` sees Discrete(4) (its step count) and acts MultiDiscrete([3, 2]) with
    start 1; ``b`` sees a Box (2, 2) and acts in Box([-1, 0], [1, 4]). ``a`` leaves after
    ``a_leaves`` steps; the episode ends after ``length`` steps. Every step records the joint
    action it got in ``self.received``."""

    metadata: ClassVar[dict] = {"name": "toy_v0"}

    def __init__(self, a_leaves: int = 2, length: int = 4, observation: str = "ok") -> None:
        self.possible_agents = ["a", "b"]
        self.a_leaves, self.length = a_leaves, length
        self._observation = {
            "a": spaces.Discrete(4, start=0),
            "b": spaces.Box(-1.0, 1.0, (2, 2), np.float32),
        }
        if observation == "dict":
            self._observation["b"] = spaces.Dict({"x": spaces.Discrete(2)})
        self._action = {
            "a": spaces.MultiDiscrete([3, 2], start=[1, 1]),
            "b": spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32)),
        }
        if observation == "text":
            self._action["b"] = spaces.Text(5)
        self.received: list[dict] = []

    def observation_space(self, agent):
        return self._observation[agent]

    def action_space(self, agent):
        return self._action[agent]

    def _observe(self, agent):
        if agent == "a":
            return self.t % 4
        return np.full((2, 2), self.t / 10, np.float32)

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return {a: self._observe(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.received.append(actions)
        self.t += 1
        rewards = {a: 1.0 if a == "a" else 2.0 for a in self.agents}
        terminated = {a: a == "a" and self.t >= self.a_leaves for a in self.agents}
        truncated = {a: self.t >= self.length for a in self.agents}
        observations = {a: self._observe(a) for a in self.agents}
        self.agents = [a for a in self.agents if not (terminated[a] or truncated[a])]
        return observations, rewards, terminated, truncated, {a: {} for a in observations}


def toy_env(**kwargs) -> ToyEnv:
    return ToyEnv(**kwargs)


TOY = "tests.test_pettingzoo:toy_env"


def test_mpe2_specs_keep_per_agent_spaces():
    adversary = env_spec(ADVERSARY, 3)
    assert adversary.observation_sizes == (8, 10, 10)
    assert adversary.action_spaces == (ActionSpace.discrete(5),) * 3
    speaker = env_spec(SPEAKER, 2)
    assert speaker.observation_sizes == (3, 11) and speaker.action_sizes == (3, 5)
    spread = env_spec(SPREAD, 3, env_kwargs=CONTINUOUS)
    assert spread.action_spaces == (ActionSpace.box([0.0] * 5, [1.0] * 5),) * 3
    assert spread.joint_action_width == 15 and spread.action_dtype == np.float32
    assert adversary.action_dtype == np.int64 and adversary.joint_action_width == 3


def test_module_dot_attribute_form_and_agent_order():
    assert env_spec(SPEAKER.replace(":", "."), 2).name == SPEAKER.replace(":", ".")
    swapped = env_spec(SPEAKER, 2, agent_order="listener_0,speaker_0")
    assert swapped.observation_sizes == (11, 3) and swapped.action_sizes == (5, 3)
    with pytest.raises(ValueError, match="exactly once: speaker_0, listener_0"):
        env_spec(SPEAKER, 2, agent_order="listener_0,nobody")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (ADVERSARY, {"n_agents": 4}, r"has 3 agents \(adversary_0, agent_0, agent_1\) but N=4"),
        ("mpe2.no_such_module:parallel_env", {}, "cannot import module 'mpe2.no_such_module'"),
        ("mpe2.simple_spread_v3:nothing", {}, "has no attribute 'nothing'"),
        ("mpe2.simple_spread_v3:env", {}, "returned .*an AEC .*aec_to_parallel"),
        (SPREAD, {"env_kwargs": '{"N": '}, "env_kwargs .* is not valid JSON"),
        (SPREAD, {"env_kwargs": "[1]"}, "must be a JSON object"),
        (SPREAD, {"env_kwargs": '{"bogus": 1}'}, "bogus"),
        (TOY, {"env_kwargs": '{"observation": "dict"}'}, r"agent 'b'.*Dict\(.*\(Dict\) is not"),
        (TOY, {"env_kwargs": '{"observation": "text"}'}, r"agent 'b'.*\(Text\) is not supported"),
        ("spread", {"env_kwargs": "{}" + " "}, "only to an env given by import path"),
    ],
)
def test_unsupported_input_gets_a_named_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        env_spec(name, **kwargs)


def test_toy_env_observations_actions_and_an_agent_leaving_early():
    env = make_env(TOY, 2, episode_length=10)
    spec = env.spec
    assert spec.observation_sizes == (4, 4)
    assert spec.action_spaces[0] == ActionSpace.multi_discrete([3, 2])
    assert spec.action_columns(1) == slice(2, 4) and spec.action_dtype == np.float32
    observations = env.reset(seed=0)
    np.testing.assert_array_equal(observations[0], [1, 0, 0, 0])  # Discrete → one-hot
    observations, reward, done = env.step([2, 0, 5.0, -3.0])
    raw = env.parallel.received[-1]
    np.testing.assert_array_equal(raw["a"], [3, 1])  # start added
    np.testing.assert_array_equal(raw["b"], np.array([1.0, 0.0], np.float32))  # clipped
    np.testing.assert_array_equal(observations[0], [0, 1, 0, 0])
    np.testing.assert_allclose(observations[1], [0.1] * 4)
    assert reward.tolist() == [1.0, 2.0] and not done
    _, reward, done = env.step([0, 0, 0.0, 1.0])  # a terminates with this step
    assert reward.tolist() == [1.0, 2.0] and not done
    kept = env.step([0, 0, 0.0, 1.0])
    assert set(env.parallel.received[-1]) == {"b"}  # no action for the agent that left
    assert kept[1].tolist() == [0.0, 2.0]
    np.testing.assert_array_equal(kept[0][0], [0, 0, 1, 0])  # its last observation stays
    assert env.step([0, 0, 0.0, 1.0])[2]  # env.agents empty after step 4: the episode ends


def test_episode_length_ends_episodes_before_the_env_does():
    env = make_env(SPREAD, 3, episode_length=3, env_kwargs=CONTINUOUS)
    env.reset(seed=1)
    row = env.spec.fallback_joint_action(1)[0].tolist()
    assert [env.step(row)[2] for _ in range(3)] == [False, False, True]


def test_fallback_is_the_box_midpoint_and_zero_for_discrete_components():
    spec = env_spec(TOY, 2)
    np.testing.assert_array_equal(spec.fallback_joint_action(2), [[0, 0, 0.0, 2.0]] * 2)
    half_open = ActionSpace.box([0.0, -np.inf, -np.inf], [np.inf, 3.0, np.inf])
    np.testing.assert_array_equal(half_open.fallback(), [0.0, 3.0, 0.0])
    assert ActionSpace.discrete(5).invalid(np.array([[5]]))
    assert ActionSpace.discrete(5).invalid(np.array([[1.5]], np.float32))
    assert not ActionSpace.discrete(5).invalid(np.array([[4.0]], np.float32))
    assert half_open.invalid(np.array([[0.0, np.nan, 0.0]]))
    assert not half_open.invalid(np.array([[-9.0, 9.0, 0.0]]))  # clipped later, not refused


def p2pmarl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2pmarl", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO,
    )


TWO_NODES = "name: line2\ngenerator: line\nn: 2\n"


@pytest.mark.parametrize("algo", ["itrpo", "matrpo"])
@pytest.mark.parametrize(
    ("env", "kwargs", "nodes"),
    [(ADVERSARY, None, 3), (SPEAKER, None, 2), (SPREAD, CONTINUOUS, 3)],
    ids=["adversary", "speaker_listener", "spread_continuous"],
)
def test_one_training_iteration_on_an_env_we_did_not_write(
    no_leaked_processes, tmp_path, algo, env, kwargs, nodes
):
    out = no_leaked_processes
    topology = tmp_path / "line2.yaml"
    topology.write_text(TWO_NODES)
    args = [
        "launch", "--env", env, "--algo", algo, "--iterations", "1",
        "--topology", str(topology) if nodes == 2 else str(REPO / "topologies/ring3.yaml"),
        "--steps-per-iteration", "96", "--n-envs", "4", "--episode-length", "12",
        "--admm-iterations", "4", "--out", str(out), "--no-progress", "--json",
    ]
    if kwargs:
        args += ["--env-kwargs", kwargs]
    result = p2pmarl(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["env"] == env
    assert summary["n_agents"] == nodes and summary["env_steps"] == 96
    run = Path(summary["run_dir"]) if "run_dir" in summary else next(out.iterdir())
    for agent in range(nodes):
        rows = (run / f"agents/agent-{agent}/metrics.jsonl").read_text().splitlines()
        record = [json.loads(r) for r in rows if '"iteration"' in r][-1]
        assert record["rollout/episodes"] == 8  # 4 copies × 24 steps / 12
        assert record["train/kl"] > 0  # the policy moved
    if algo == "matrpo":
        assert (run / "agents/agent-0/admm.jsonl").read_text().count('"committed"') >= 1
