"""The ipd and rps matrix games (Meta-MAPG Tables 1-2) and the peer personas (appendix E)."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from p2pmarl.algos.personas import make_personas, persona_index
from p2pmarl.envs import env_spec, make_env
from p2pmarl.envs.matrix import HORIZONS, MatrixGameParallelEnv


@pytest.mark.parametrize("game", ["ipd", "rps"])
def test_pettingzoo_parallel_api(game):
    parallel_api_test(MatrixGameParallelEnv(game), num_cycles=200)


@pytest.mark.parametrize(
    ("game", "joint", "rewards"),
    [
        ("ipd", (0, 0), (0.5, 0.5)), ("ipd", (0, 1), (-1.5, 1.5)),
        ("ipd", (1, 0), (1.5, -1.5)), ("ipd", (1, 1), (-0.5, -0.5)),
        ("rps", (0, 0), (0, 0)), ("rps", (0, 1), (-1, 1)), ("rps", (0, 2), (1, -1)),
        ("rps", (1, 0), (1, -1)), ("rps", (1, 2), (-1, 1)), ("rps", (2, 0), (-1, 1)),
        ("rps", (2, 1), (1, -1)), ("rps", (2, 2), (0, 0)),
    ],
)
def test_payoff_tables(game, joint, rewards):
    env = make_env(game, episode_length=HORIZONS[game])
    env.reset()
    _, reward, _ = env.step(list(joint))
    assert reward.tolist() == list(rewards)


@pytest.mark.parametrize(("game", "n_states"), [("ipd", 5), ("rps", 10)])
def test_state_is_the_last_joint_action_one_hot(game, n_states):
    env = make_env(game, episode_length=HORIZONS[game])
    observations = env.reset()
    assert env.spec.observation_sizes == (n_states, n_states)
    assert [o.tolist() for o in observations] == [np.eye(n_states)[0].tolist()] * 2
    n_actions = env.spec.action_sizes[0]
    rng = np.random.default_rng(0)
    for t in range(HORIZONS[game]):
        joint = rng.integers(0, n_actions, size=2).tolist()
        observations, _, done = env.step(joint)
        expected = 1 + joint[0] * n_actions + joint[1]
        assert all(int(np.argmax(o)) == expected and o.sum() == 1 for o in observations)
        assert done == (t + 1 == HORIZONS[game])


def test_matrix_games_need_two_agents():
    with pytest.raises(ValueError, match="exactly N = 2"):
        env_spec("ipd", 3)


def test_ipd_personas_appendix_e():
    personas = make_personas("ipd", seed=0)
    assert [len(personas.split(s)) for s in ("train", "val", "test")] == [400, 40, 40]
    everyone = np.concatenate([personas.train, personas.val, personas.test])
    cooperate = everyone[:, :, 0]
    assert np.allclose(everyone.sum(axis=2), 1.0)
    cooperating = (cooperate >= 0.5).all(axis=1)
    defecting = (cooperate <= 0.5).all(axis=1)
    assert (cooperating | defecting).all() and cooperating.sum() == defecting.sum() == 240
    again = make_personas("ipd", seed=0)
    assert np.array_equal(again.test, personas.test)
    assert not np.array_equal(make_personas("ipd", seed=1).test, personas.test)


def test_ipd_out_of_distribution_split_overlaps_training_less():
    out = make_personas("ipd", seed=0, distribution="out")
    assert [len(out.split(s)) for s in ("train", "val", "test")] == [400, 40, 40]

    def moderation(p):
        return np.abs(p[:, :, 0] - 0.5).mean(axis=1)

    assert moderation(out.test).max() <= moderation(out.train).min()


def test_rps_personas_appendix_e():
    personas = make_personas("rps", seed=0)
    assert [len(personas.split(s)) for s in ("train", "val", "test")] == [600, 60, 60]
    everyone = np.concatenate([personas.train, personas.val, personas.test])
    favourite = everyone.argmax(axis=2)
    assert (favourite == favourite[:, :1]).all()  # one favourite action per persona
    assert np.bincount(favourite[:, 0]).tolist() == [240, 240, 240]
    assert (everyone.max(axis=2) >= 1 / 3).all()


def test_persona_draw_is_seeded():
    assert persona_index(0, 3, 400) == persona_index(0, 3, 400)
    assert len({persona_index(0, i, 400) for i in range(50)}) > 30
