"""Multi-agent MuJoCo (gymnasium-robotics' MaMuJoCo) through the PettingZoo adapter: the
``mamujoco:SCENARIO:AGENT_CONF`` shorthand and the import-path form, their spaces, episode ends,
errors, and one I-TRPO and one MATRPO iteration on HalfCheetah 2x3 as real launches.

The ``test`` extra installs gymnasium-robotics and mujoco, so these run in CI (no skip)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from p2pmarl.envs import env_spec, make_env
from p2pmarl.envs.base import ActionSpace
from p2pmarl.envs.pettingzoo import resolve_factory

REPO = Path(__file__).resolve().parents[1]
SHORT = "mamujoco:HalfCheetah:2x3"
IMPORT_PATH = "gymnasium_robotics.mamujoco_v1:parallel_env"
KWARGS = json.dumps({"scenario": "HalfCheetah", "agent_conf": "2x3"})


def test_halfcheetah_2x3_spaces_in_both_forms():
    spec = env_spec(SHORT, 2, 1000)
    assert spec.n_agents == 2 and spec.observation_sizes == (12, 12)
    assert spec.action_spaces == (ActionSpace.box([-1.0] * 3, [1.0] * 3),) * 2
    assert spec.action_dtype == np.float32 and spec.joint_action_width == 6
    np.testing.assert_array_equal(spec.fallback_joint_action(1), np.zeros((1, 6)))  # midpoint
    by_path = env_spec(IMPORT_PATH, 2, 1000, env_kwargs=KWARGS)
    assert by_path.action_spaces == spec.action_spaces
    assert by_path.observation_sizes == spec.observation_sizes
    assert env_spec("mamujoco:HalfCheetah:6x1", 6).observation_sizes == (9, 9, 8, 9, 9, 8)


def test_the_two_agents_drive_disjoint_joints_and_share_the_reward():
    env = make_env(SHORT, 2, 20)
    env.reset(seed=3)
    front_only = np.array([0, 0, 0, 1.0, -1.0, 1.0], np.float32)
    for _ in range(5):
        _, reward, _ = env.step(front_only)
    assert reward[0] == reward[1]  # MaMuJoCo gives every agent the robot's reward
    applied = env.parallel.single_agent_env.unwrapped.data.ctrl
    np.testing.assert_allclose(applied, [0, 0, 0, 1, -1, 1])  # agent 0 = back leg, 1 = front
    env.close()


def test_mujoco_warnings_go_to_the_log_not_to_a_file_in_the_working_folder(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="p2pmarl.envs.mamujoco"):
        make_env(SHORT, 2, 10).close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    if int(mujoco.__version__.split(".")[0]) >= 4:  # mujoco 4 warns about settotalmass
        assert "MuJoCo: compiler attribute 'settotalmass'" in caplog.text


@pytest.mark.parametrize(("length", "ends_at"), [(30, 30), (1000, 1000), (1200, 1000)])
def test_episodes_end_at_the_run_length_or_the_envs_own_1000_step_limit(length, ends_at):
    env = make_env(SHORT, 2, length)
    env.reset(seed=0)
    row = env.spec.fallback_joint_action(1)[0]
    steps = 1
    while not env.step(row)[2]:
        steps += 1
    assert steps == ends_at
    env.reset()  # the next episode starts without a seed: the env continues its stream
    assert not env.step(row)[2]
    env.close()


@pytest.mark.parametrize(
    ("name", "env_kwargs", "message"),
    [
        ("mamujoco:HalfCheetah:3x3", None, r"HalfCheetah has no agent_conf '3x3'.*2x3, 6x1"),
        ("mamujoco:Cheetah:2x3", None, r"unknown MaMuJoCo scenario 'Cheetah'.*HalfCheetah, Ant"),
        ("mamujoco:HalfCheetah", None, r"write mamujoco:SCENARIO:AGENT_CONF"),
        (SHORT, '{"agent_conf": "6x1"}', r"already sets scenario and agent_conf; remove agent_co"),
        (IMPORT_PATH, '{"scenario": "Ant", "agent_conf": "2x3"}', r"Ant has no agent_conf '2x3'"),
        (IMPORT_PATH, '{"scenario": "HalfCheetah"}', r"needs agent_conf in env_kwargs"),
        (IMPORT_PATH, KWARGS[:-1] + ', "bogus": 1}', r"failed: TypeError: .*bogus"),
    ],
)
def test_unknown_scenarios_and_agent_confs_get_a_named_error(name, env_kwargs, message):
    with pytest.raises(ValueError, match=message):
        env_spec(name, 2, env_kwargs=env_kwargs)


def test_an_attribute_bound_by_a_package_resolves_like_a_module():
    # gymnasium_robotics.mamujoco_v1 is no module of its own: the package's __init__ binds it
    factory = resolve_factory("gymnasium_robotics.mamujoco_v1:raw_parallel_env")
    assert factory.__name__ == "MultiAgentMujocoEnv"
    with pytest.raises(ValueError, match=r"cannot import module 'gymnasium_robotics\.nothing'"):
        resolve_factory("gymnasium_robotics.nothing:parallel_env")


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # import now fails
    raw = "gymnasium_robotics.mamujoco_v1:raw_parallel_env"  # the generic import-path route
    for name, env_kwargs in ((SHORT, None), (IMPORT_PATH, KWARGS), (raw, KWARGS)):
        with pytest.raises(ValueError, match=r"pip install -e '\.\[mujoco\]'"):
            env_spec(name, 2, env_kwargs=env_kwargs)


def test_a_wrong_topology_size_is_refused():
    with pytest.raises(ValueError, match=r"has 2 agents \(agent_0, agent_1\) but N=3"):
        env_spec(SHORT, 3)


@pytest.mark.parametrize(
    ("algo", "env", "env_kwargs"),
    [("itrpo", SHORT, None), ("matrpo", IMPORT_PATH, KWARGS)],
    ids=["itrpo-shorthand", "matrpo-import-path"],
)
def test_one_training_iteration_on_halfcheetah_2x3(no_leaked_processes, algo, env, env_kwargs):
    out = no_leaked_processes
    args = [
        sys.executable, "-m", "p2pmarl", "launch", "--env", env, "--algo", algo,
        "--iterations", "1", "--topology", str(REPO / "topologies/pair.yaml"),
        "--steps-per-iteration", "120", "--n-envs", "2", "--episode-length", "30",
        "--admm-iterations", "4", "--out", str(out), "--no-progress", "--json",
    ]
    if env_kwargs:
        args += ["--env-kwargs", env_kwargs]
    result = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["env"] == env
    assert summary["n_agents"] == 2 and summary["env_steps"] == 120
    run = Path(summary["run_dir"])
    for agent in range(2):
        rows = (run / f"agents/agent-{agent}/metrics.jsonl").read_text().splitlines()
        record = [json.loads(r) for r in rows if '"iteration"' in r][-1]
        assert record["rollout/episodes"] == 4  # 2 copies × 60 steps / 30
        assert record["train/kl"] > 0  # the Gaussian head moved
    returns = [a["return"] for a in summary["agents"]]
    assert returns[0] == pytest.approx(returns[1])  # the shared robot reward
    if algo == "matrpo":
        assert (run / "agents/agent-0/admm.jsonl").read_text().count('"committed"') >= 1
