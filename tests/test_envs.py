"""Tests for the environment registry and the spread / treasure / tag families.

Reward definitions are checked on hand-built states with known answers (MATRPO Table I,
Table II / eq. (23), mpe2 simple_tag); the wrappers are checked against the untouched mpe2
PettingZoo Parallel envs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from p2pmarl.envs import ENVIRONMENTS, env_spec, make_env
from p2pmarl.envs.spread import (
    SpreadEnv,
    collision_matrix,
    make_spread_parallel,
    spread_rewards,
    spread_shared_rewards,
)
from p2pmarl.envs.tag import TagEnv, make_tag_parallel, tag_boundary_penalty, tag_rewards
from p2pmarl.envs.treasure import (
    TreasureEnv,
    make_treasure_parallel,
    treasure_events,
    treasure_rewards,
)

NAMES = ("spread", "spread-shared", "treasure", "tag")


def _arr(*rows: tuple[float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def _random_actions(spec_n: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, (steps, spec_n))


# ---------------------------------------------------------------------------------------------
# spread: MATRPO Table I
# ---------------------------------------------------------------------------------------------

SPREAD_SIZES = np.full(3, 0.15)  # mpe2 simple_spread agent size
LANDMARKS = _arr((0.0, 1.0), (1.0, 1.0), (2.0, 3.0))  # closest agents at 1, 1, 3 -> sum 5


def test_spread_agent0_gets_landmark_distance_sum_others_nothing():
    agents = _arr((0.0, 0.0), (1.0, 0.0), (2.0, 0.0))
    r = spread_rewards(agents, LANDMARKS, SPREAD_SIZES)
    assert r.dtype == np.float32 and r.shape == (3,)
    np.testing.assert_allclose(r, [-5.0, 0.0, 0.0], atol=1e-6)


def test_spread_collision_indicator_for_colliding_pair_only():
    agents = _arr((0.0, 0.0), (0.2, 0.0), (2.0, 0.0))  # 0 and 1 overlap (0.2 < 0.3)
    r = spread_rewards(agents, LANDMARKS, SPREAD_SIZES)
    coverage = 1.0 + math.hypot(0.8, 1.0) + math.hypot(0.0, 3.0)
    np.testing.assert_allclose(r, [-coverage - 1.0, -1.0, 0.0], atol=1e-6)


def test_spread_collision_is_an_indicator_not_a_count():
    agents = _arr((0.0, 0.0), (0.05, 0.0), (0.0, 0.05))  # all three overlap each other
    r = spread_rewards(agents, LANDMARKS, SPREAD_SIZES)
    coverage = float(np.sum([min(np.linalg.norm(a - lm) for a in agents) for lm in LANDMARKS]))
    np.testing.assert_allclose(r, [-coverage - 1.0, -1.0, -1.0], atol=1e-6)
    # mpe2's shared variant counts collisions: local term -2 per agent
    shared = spread_shared_rewards(agents, LANDMARKS, SPREAD_SIZES)
    np.testing.assert_allclose(shared, 0.5 * -coverage + 0.5 * -2.0, atol=1e-6)


def test_collision_threshold_is_strict():
    touching = collision_matrix(_arr((0.0, 0.0), (0.25, 0.0)), np.array([0.125, 0.125]))
    assert not touching.any()  # d == size sum: no collision, as mpe2's `dist < dist_min`
    assert collision_matrix(_arr((0.0, 0.0), (0.24, 0.0)), np.array([0.125, 0.125]))[0, 1]


# ---------------------------------------------------------------------------------------------
# treasure: MATRPO Table II / eq. (23)
# ---------------------------------------------------------------------------------------------

HUNTER_SIZES = np.full(3, 0.05)  # mpe2 collector size


def test_treasure_events_collect():
    n, deliveries = treasure_events(
        np.array([-1, -1]),
        np.array([1, -1]),
        np.array([True, True]),
        np.array([False, True]),
        np.array([1, 0]),
        n_banks=2,
    )
    assert n == 1 and deliveries.tolist() == [0, 0]


def test_treasure_events_deposit():
    n, deliveries = treasure_events(
        np.array([0, 1, -1]),
        np.array([-1, 1, -1]),
        np.array([True]),
        np.array([True]),
        np.array([1]),
        n_banks=2,
    )
    assert n == 0 and deliveries.tolist() == [1, 0]


def test_treasure_events_pickup_and_delivery_in_one_step():
    # hunter 0 picks up a type-1 treasure and delivers it in the same mpe2 post_step
    n, deliveries = treasure_events(
        np.array([-1, -1]),
        np.array([-1, 0]),
        np.array([True, True]),
        np.array([False, False]),
        np.array([1, 0]),
        n_banks=2,
    )
    assert n == 2 and deliveries.tolist() == [0, 1]


def test_treasure_collect_reward_and_empty_hunter_min_distance():
    hunters = _arr((0.0, 0.0), (1.0, 0.0), (-3.0, 0.0))
    treasures = _arr((0.0, 0.5), (1.0, 0.1), (0.0, 0.2))
    empty = np.array([True, False, True])  # hunter 1 holds a treasure: its 0.1 is ignored
    alive = np.array([True, True, False])  # treasure 2 was just picked up: its 0.2 is ignored
    r = treasure_rewards(hunters, HUNTER_SIZES, empty, treasures, alive, 1, np.zeros(2, int))
    assert r.dtype == np.float32 and r.shape == (5,)
    np.testing.assert_allclose(r, [0, 0, 0, 5.0 - 0.05, 5.0 - 0.05], atol=1e-6)


def test_treasure_deposit_reward_is_an_indicator_per_bank():
    hunters = _arr((0.0, 0.0), (1.0, 0.0), (2.0, 0.0))
    treasures = _arr((0.0, 1.0))
    empty = np.ones(3, dtype=bool)
    alive = np.ones(1, dtype=bool)
    one = treasure_rewards(hunters, HUNTER_SIZES, empty, treasures, alive, 0, np.array([1, 0]))
    np.testing.assert_allclose(one[3:], 5.0 - 0.1, atol=1e-6)
    both = treasure_rewards(hunters, HUNTER_SIZES, empty, treasures, alive, 0, np.array([1, 1]))
    np.testing.assert_allclose(both[3:], 10.0 - 0.1, atol=1e-6)
    twice = treasure_rewards(hunters, HUNTER_SIZES, empty, treasures, alive, 0, np.array([2, 0]))
    np.testing.assert_allclose(twice[3:], 5.0 - 0.1, atol=1e-6)


def test_treasure_no_empty_hunter_means_no_distance_term():
    hunters = _arr((0.0, 0.0), (1.0, 0.0), (2.0, 0.0))
    full = np.zeros(3, dtype=bool)
    r = treasure_rewards(
        hunters, HUNTER_SIZES, full, _arr((5.0, 5.0)), np.array([True]), 0, np.zeros(2, int)
    )
    np.testing.assert_array_equal(r, np.zeros(5, dtype=np.float32))


def test_treasure_hunter_collision_penalty():
    hunters = _arr((0.0, 0.0), (0.05, 0.0), (2.0, 0.0))  # 0.05 < 0.05 + 0.05
    r = treasure_rewards(
        hunters,
        HUNTER_SIZES,
        np.zeros(3, bool),
        _arr((9.0, 9.0)),
        np.array([True]),
        0,
        np.zeros(2, int),
    )
    np.testing.assert_allclose(r, [-1.0, -1.0, 0.0, 0.0, 0.0])


def test_treasure_live_pickup_and_delivery_in_one_step():
    """On the real mpe2 world: hunter 0 sits on bank 0 and on a type-0 treasure."""
    env = TreasureEnv(n_agents=5, episode_length=10)  # 3 hunters, 2 banks, 3 treasures
    env.reset(seed=0)
    world = env.world
    spots = [(0.0, 0.0), (0.5, 0.5), (-0.5, 0.5), (0.0, 0.0), (0.8, -0.8)]  # h0 on bank 0
    for agent, spot in zip(world.agents, spots, strict=True):
        agent.state.p_pos = np.array(spot)
        agent.state.p_vel = np.zeros(2)
        agent.holding = None
    for lm, (spot, kind) in zip(
        world.landmarks, [((0.0, 0.0), 0), ((-0.9, -0.9), 1), ((0.9, 0.9), 1)], strict=True
    ):
        lm.state.p_pos, lm.type, lm.alive = np.array(spot), kind, True
    env._read_state(after_reset=True)
    _, r, _ = env.step([0] * 5)  # no-op: nothing moves
    scenario = env.raw.scenario
    assert scenario._cached_global_collecting == 5.0 and scenario._cached_global_deposit == 5.0
    nearest = min(
        np.linalg.norm(np.array(h) - np.array(t))
        for h in spots[:3]
        for t in [(-0.9, -0.9), (0.9, 0.9)]
    )
    np.testing.assert_allclose(r, [0, 0, 0] + [10.0 - 0.1 * nearest] * 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# tag: mpe2 simple_tag rewards
# ---------------------------------------------------------------------------------------------


def test_tag_rewards_hand_built():
    positions = _arr((0.0, 0.0), (0.1, 0.0), (-0.5, 0.0), (0.95, 1.2))
    sizes = np.array([0.075, 0.075, 0.075, 0.05])
    is_adv = np.array([True, True, True, False])
    r = tag_rewards(positions, sizes, is_adv)
    np.testing.assert_allclose(r[:3], 0.0)  # nobody touches the prey
    np.testing.assert_allclose(r[3], -(0.5 + math.exp(0.4)), rtol=1e-6)
    positions[3] = (0.05, 0.05)  # prey now touches adversaries 0 and 1
    r = tag_rewards(positions, sizes, is_adv)
    np.testing.assert_allclose(r, [20.0, 20.0, 20.0, -20.0])
    assert tag_boundary_penalty(_arr((3.0, 0.0)))[0] == 10.0


def test_tag_rewards_match_mpe2_on_live_state():
    par = make_tag_parallel(4, 25)
    par.reset(seed=1)
    raw = par.unwrapped
    world = raw.world
    spots = [(0.0, 0.0), (0.1, 0.0), (0.9, -0.95), (0.05, 0.05)]  # two catches
    for agent, spot in zip(world.agents, spots, strict=True):
        agent.state.p_pos = np.array(spot)
    positions = np.array(spots)
    sizes = np.array([a.size for a in world.agents])
    is_adv = np.array([a.adversary for a in world.agents])
    expected = [raw.scenario.reward(a, world) for a in world.agents]
    np.testing.assert_allclose(tag_rewards(positions, sizes, is_adv), expected, rtol=1e-6)
    assert expected[0] == 20.0


# ---------------------------------------------------------------------------------------------
# wrappers vs the untouched mpe2 Parallel envs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_cls", "kwargs"),
    [(SpreadEnv, {"shared": False}), (TreasureEnv, {}), (TagEnv, {})],
)
def test_fast_path_matches_parallel_api_path(env_cls, kwargs):
    n = {SpreadEnv: 3, TreasureEnv: 8, TagEnv: 4}[env_cls]
    fast = env_cls(n, 20, fast=True, **kwargs)
    ref = env_cls(n, 20, fast=False, **kwargs)
    actions = _random_actions(n, 40, seed=3)
    for obs_f, obs_r in zip(fast.reset(seed=4), ref.reset(seed=4), strict=True):
        np.testing.assert_array_equal(obs_f, obs_r)
    for t, a in enumerate(actions):
        of, rf, df = fast.step(a)
        orr, rr, dr = ref.step(a)
        assert df == dr == ((t + 1) % 20 == 0)
        np.testing.assert_array_equal(rf, rr)
        for x, y in zip(of, orr, strict=True):
            np.testing.assert_array_equal(x, y)
        if df:
            fast.reset()
            ref.reset()


@pytest.mark.parametrize(
    ("name", "make_ref"),
    [
        ("spread-shared", lambda: make_spread_parallel(3, 15)),
        ("tag", lambda: make_tag_parallel(4, 15)),
    ],
)
def test_env_rewards_match_mpe2(name, make_ref):
    env, ref = make_env(name, episode_length=15), make_ref()
    agents = ref.possible_agents
    obs = env.reset(seed=9)
    ref_obs, _ = ref.reset(seed=9)
    for a in _random_actions(len(agents), 15, seed=2):
        obs, r, done = env.step(a)
        ref_obs, ref_r, _, trunc, _ = ref.step(dict(zip(agents, map(int, a), strict=True)))
        np.testing.assert_allclose(r, [ref_r[k] for k in agents], rtol=1e-6, atol=1e-6)
        for x, k in zip(obs, agents, strict=True):
            np.testing.assert_array_equal(x, ref_obs[k])
        assert done == all(trunc.values())
    assert done


@pytest.mark.parametrize(
    "make_par",
    [
        lambda: make_spread_parallel(3, 25),
        lambda: make_treasure_parallel(8, 25),
        lambda: make_tag_parallel(4, 25),
    ],
)
def test_pettingzoo_parallel_api(make_par):
    parallel_api_test(make_par(), num_cycles=30)


# ---------------------------------------------------------------------------------------------
# contract: specs, shapes, dtypes, episode end, seeding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n"),
    [
        ("spread", None),
        ("spread", 6),
        ("spread-shared", 2),
        ("treasure", None),
        ("treasure", 12),
        ("treasure", 3),
        ("tag", None),
        ("tag", 2),
        ("tag", 6),
    ],
)
def test_reset_step_shapes_match_spec(name, n):
    spec = env_spec(name, n)
    env = make_env(name, n)
    assert env.spec == spec
    obs = env.reset(seed=0)
    assert tuple(o.shape[0] for o in obs) == spec.observation_sizes
    assert all(o.dtype == np.float32 and o.ndim == 1 for o in obs)
    obs, r, done = env.step([spec.action_sizes[0] - 1] * spec.n_agents)
    assert tuple(o.shape[0] for o in obs) == spec.observation_sizes
    assert all(o.dtype == np.float32 and o.ndim == 1 for o in obs)
    assert r.shape == (spec.n_agents,) and r.dtype == np.float32
    assert isinstance(done, bool) and not done
    env.close()


def test_defaults_and_unequal_observation_sizes():
    assert env_spec("spread").observation_sizes == (18, 18, 18)
    treasure = env_spec("treasure")
    assert treasure.n_agents == 8 and treasure.episode_length == 100
    assert treasure.observation_sizes == (86,) * 6 + (84,) * 2
    assert env_spec("treasure", 12).observation_sizes == (134,) * 10 + (132,) * 2
    assert env_spec("tag").observation_sizes == (16, 16, 16, 14)
    assert all(s == 5 for name in NAMES for s in env_spec(name).action_sizes)


@pytest.mark.parametrize("name", NAMES)
def test_episode_ends_at_episode_length(name):
    env = make_env(name, episode_length=7)
    env.reset(seed=1)
    dones = [env.step([0] * env.spec.n_agents)[2] for _ in range(7)]
    assert dones == [False] * 6 + [True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0] * env.spec.n_agents)
    env.reset()
    assert not env.step([0] * env.spec.n_agents)[2]


def _rollout(env, seed: int, episodes: int = 2) -> list[np.ndarray]:
    out = [np.concatenate(env.reset(seed=seed))]
    actions = _random_actions(env.spec.n_agents, env.spec.episode_length * episodes, seed=7)
    for a in actions:
        obs, r, done = env.step(a)
        out += [np.concatenate(obs), r]
        if done:
            out.append(np.concatenate(env.reset()))  # unseeded: continues the RNG stream
    return out


@pytest.mark.parametrize("name", NAMES)
def test_seeded_runs_are_reproducible(name):
    a = _rollout(make_env(name, episode_length=10), seed=5)
    b = _rollout(make_env(name, episode_length=10), seed=5)
    c = _rollout(make_env(name, episode_length=10), seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    env = make_env(name, episode_length=10)
    first = env.reset(seed=5)
    second = env.reset()  # the stream continues: a different start
    assert not all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def test_bad_actions_are_rejected():
    env = make_env("spread")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expected 3 actions"):
        env.step([0, 1])
    with pytest.raises(ValueError, match="actions must lie in"):
        env.step([0, 1, 5])


# ---------------------------------------------------------------------------------------------
# registry errors
# ---------------------------------------------------------------------------------------------


def test_registry_lists_names():
    assert set(NAMES) <= set(ENVIRONMENTS)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid names: .*spread.*treasure") as err:
        make_env("nope")
    assert "tag" in str(err.value)
    with pytest.raises(ValueError, match="unknown environment"):
        env_spec("spread_shared")


@pytest.mark.parametrize(
    ("name", "n", "hint"),
    [
        ("spread", 1, "N >= 2"),
        ("spread-shared", 0, "N >= 2"),
        ("treasure", 2, "2 banks"),
        ("tag", 1, "1 good agent"),
        ("spread", "3", "integer"),
        ("tag", True, "integer"),
    ],
)
def test_bad_agent_counts_are_explained(name, n, hint):
    with pytest.raises(ValueError, match=hint):
        env_spec(name, n)
    with pytest.raises(ValueError, match=hint):
        make_env(name, n)


def test_bad_episode_length():
    with pytest.raises(ValueError, match="episode_length"):
        env_spec("spread", 3, 0)


def test_numpy_integer_agent_count_is_accepted():
    assert env_spec("spread", np.int64(4)).n_agents == 4
