"""The batched particle world (p2pmarl/envs/particles) against the mpe2 reference envs.

Equivalence: the same seeds and the same random action sequences give the same observations,
rewards and done flags as K mpe2-backed copies (``make_env``) over thousands of steps, episode
resets and (treasure) respawns included, to 1e-5 (in practice bit for bit). The episodes are
checked to contain the events the rewards count (collisions, catches, pickups, deliveries), so
the comparison cannot pass on empty episodes. The world's :class:`VectorWorld` gives the same
numbers on both backends, and the seeded golden runs of tests/test_golden.py reproduce their
recorded numbers on the batched backend too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.envs import make_env
from p2pmarl.envs.particles import SCENARIOS, make_batched
from p2pmarl.envs.particles.base import as_rows, observation_groups
from p2pmarl.runtime.world import VectorWorld
from p2pmarl.runtime.world_link import acting_chunks
from tests import test_golden

TOLERANCE = 1e-5
"""The issue's bound on |batched - mpe2| for observations and rewards."""


def _compare(name: str, n_agents: int | None, copies: int, steps: int, seed: int = 0) -> dict:
    """Step ``copies`` mpe2 copies and one batched world with the same seeds and actions.

    Returns the largest differences seen and event counts; fails at the first mismatch.
    """
    episode_length = 100
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(copies)]
    envs = [make_env(name, n_agents, episode_length) for _ in range(copies)]
    reference = [env.reset(s) for env, s in zip(envs, seeds, strict=True)]
    world = make_batched(name, n_agents, copies, episode_length)
    world.reset(seeds)
    n = world.spec.n_agents
    rows = range(copies)
    actions = np.random.default_rng(seed + 1).integers(0, 5, (steps, copies, n))
    worst = {"observation": 0.0, "reward": 0.0}
    nonzero_rewards = np.zeros(n, dtype=np.int64)
    resets = 0

    def check_observations(t: int) -> None:
        for i in range(n):
            expected = np.stack([obs[i] for obs in reference])
            got = world.observation(i, rows)
            assert got.dtype == np.float32 and got.shape == expected.shape
            error = float(np.abs(got - expected).max())
            assert error <= TOLERANCE, f"{name} step {t} agent {i}: observation differs by {error}"
            worst["observation"] = max(worst["observation"], error)

    check_observations(0)
    for t in range(steps):
        expected_rewards = np.empty((copies, n), dtype=np.float32)
        expected_dones = np.empty(copies, dtype=bool)
        for k, env in enumerate(envs):
            obs, expected_rewards[k], expected_dones[k] = env.step(actions[t, k].tolist())
            reference[k] = env.reset() if expected_dones[k] else obs
        rewards, dones = world.step(rows, actions[t])
        assert rewards.dtype == np.float32 and rewards.shape == (copies, n)
        np.testing.assert_array_equal(dones, expected_dones, err_msg=f"{name} step {t}")
        error = float(np.abs(rewards - expected_rewards).max())
        assert error <= TOLERANCE, f"{name} step {t}: rewards differ by {error}"
        worst["reward"] = max(worst["reward"], error)
        nonzero_rewards += (expected_rewards != 0).sum(axis=0)
        resets += int(dones.sum())
        check_observations(t + 1)
    return {**worst, "nonzero_rewards": nonzero_rewards, "resets": resets, "world": world}


def _assert_events_happened(name: str, result: dict) -> None:
    """The comparison covered what the rewards count, not only empty episodes."""
    nonzero = result["nonzero_rewards"]
    if name == "spread":  # agents 1.. are rewarded only when they collide
        assert nonzero[1:].min() > 0
    elif name == "tag":  # adversaries are rewarded only for catches
        assert nonzero[0] > 0
    elif name == "treasure":  # hunters only for collisions; banks' events checked below
        assert nonzero[:-2].min() > 0
    assert result["resets"] > 0


def _count_treasure_events(monkeypatch) -> dict[str, int]:
    """Count the batched treasure world's post_step events while a comparison runs."""
    from p2pmarl.envs.particles.treasure import BatchedTreasure

    counts = {"pickups": 0, "deliveries": 0, "respawns": 0}
    after_physics, respawn = BatchedTreasure._after_physics, BatchedTreasure._respawn

    def counting_after_physics(self, rows):
        after_physics(self, rows)
        counts["pickups"] += int(self._pickups[rows].sum())
        counts["deliveries"] += int(self._delivered[rows].sum())

    def counting_respawn(self, rows, dead):
        counts["respawns"] += int(dead.sum())
        respawn(self, rows, dead)

    monkeypatch.setattr(BatchedTreasure, "_after_physics", counting_after_physics)
    monkeypatch.setattr(BatchedTreasure, "_respawn", counting_respawn)
    return counts


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_batched_world_matches_mpe2_step_for_step(name, monkeypatch):
    """5,000 steps x 3 copies per family: 150 episodes with resets, to 1e-5 (bit for bit)."""
    counts = _count_treasure_events(monkeypatch)
    result = _compare(name, None, copies=3, steps=5000)
    _assert_events_happened(name, result)
    if name == "treasure":  # every post_step event was compared
        assert min(counts.values()) > 0, counts
    assert result["observation"] == 0.0 and result["reward"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "n_agents"), [("spread", 6), ("treasure", 12), ("tag", 6)])
def test_batched_world_matches_mpe2_with_more_agents(name, n_agents):
    result = _compare(name, n_agents, copies=4, steps=5000, seed=2)
    assert result["observation"] == 0.0 and result["reward"] == 0.0


@pytest.mark.parametrize("backend", ["batched", "mpe2"])
def test_vector_world_backends_agree_over_groups_of_rows(backend):
    """VectorWorld steps any group of rows (here the agents' acting chunks); both backends give
    one answer."""
    config = RunConfig(env="tag", n_envs=5, episode_length=7)
    reference = VectorWorld(RunConfig(env="tag", n_envs=5, episode_length=7, env_backend="mpe2"),
                            4, seed=11)
    world = VectorWorld(RunConfig(**{**config.to_dict(), "env_backend": backend}), 4, seed=11)
    assert (world.batched is not None) == (backend == "batched")
    rng = np.random.default_rng(0)
    for _ in range(20):
        for rows in acting_chunks(5):
            actions = rng.integers(0, 5, (len(rows), 4))
            got, want = world.step(rows, actions), reference.step(rows, actions)
            np.testing.assert_array_equal(got.rewards, want.rewards)
            np.testing.assert_array_equal(got.dones, want.dones)
            for agent in range(4):
                observations = world.agent_observations(agent, rows)
                assert observations.flags.c_contiguous
                np.testing.assert_array_equal(
                    observations, reference.agent_observations(agent, rows)
                )
    world.close()
    reference.close()


def test_golden_runs_reproduce_their_numbers_on_the_batched_backend(tmp_path, monkeypatch):
    """One seeded I-TRPO run per backend: same return curve and parameters (the curve pair)."""
    monkeypatch.setattr(test_golden, "EXTRA", ["--env-backend", "batched"])
    golden = json.loads(test_golden.GOLDEN.read_text())["itrpo"]
    assert test_golden.seeded_numbers("itrpo", tmp_path / "runs") == golden


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ctrpo", "matrpo"])
def test_golden_runs_of_every_algorithm_on_the_batched_backend(algo, tmp_path, monkeypatch):
    monkeypatch.setattr(test_golden, "EXTRA", ["--env-backend", "batched"])
    golden = json.loads(test_golden.GOLDEN.read_text())[algo]
    assert test_golden.seeded_numbers(algo, tmp_path / "runs") == golden


def test_bad_input_names_the_value_and_the_fix():
    world = make_batched("spread", 3, 2)
    with pytest.raises(RuntimeError, match="reset"):
        world.step(range(2), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="need 2 seeds"):
        world.reset([1])
    world.reset([1, 2])
    with pytest.raises(ValueError, match="shape"):
        world.step(range(2), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, "):
        world.step(range(2), np.full((2, 3), 5))
    before = world.positions.copy()
    for bad in (np.full((2, 3), -1), np.full((2, 3), -1, dtype=np.int8),
                np.full((2, 3), 5, dtype=np.uint8)):
        with pytest.raises(ValueError, match=r"\[0, "):
            world.step(range(2), bad)
    np.testing.assert_array_equal(world.positions, before)  # a refused step changes nothing
    world.step(range(2), np.ones((2, 3), dtype=np.uint8))  # any integer type
    with pytest.raises(ValueError, match="integer"):
        world.step(range(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="contiguous"):
        as_rows(range(0, 2, 2), 2)
    with pytest.raises(ValueError, match="batched environments"):
        make_batched("ipd", 2, 1)
    with pytest.raises(ValueError, match="N >= 2"):
        make_batched("spread", 1, 1)
    with pytest.raises(ConfigError, match="env_backend"):
        RunConfig(env_backend="vmas").validate()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_reset_starts_over_from_the_seeds(name):
    """A second reset(seeds) replays the first episode exactly, whatever was drawn before
    (spread draws its episode starts ahead: those of the old generators are dropped)."""
    world = make_batched(name, None, 3, 5)
    fresh = make_batched(name, None, 3, 5)
    n = world.spec.n_agents
    actions = np.random.default_rng(0).integers(0, 5, (40, 3, n))
    world.reset([7, 8, 9])
    for t in range(23):  # several episodes and a part of one
        world.step(range(3), actions[t])
    world.reset([1, 2, 3])
    fresh.reset([1, 2, 3])
    for t in range(12):
        got, want = world.step(range(3), actions[t]), fresh.step(range(3), actions[t])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        for agent in range(n):
            np.testing.assert_array_equal(
                world.observation(agent, range(3)), fresh.observation(agent, range(3))
            )


def test_observation_groups_are_runs_of_equal_sizes():
    assert observation_groups((86, 86, 84, 84)) == [(0, 2), (2, 4)]
    assert observation_groups((18,) * 3) == [(0, 3)]
    assert observation_groups((16, 16, 16, 14)) == [(0, 3), (3, 4)]


@pytest.mark.parametrize("scheme", ["unix", "ipc"])
def test_connect_gather_does_not_lose_an_agent_that_connects_late(tmp_path, scheme):
    """Found at 128 agents: probing during the connect gather marked agents not connected yet
    as lost. The connect gather now sends no probes (``probe=False``), and a probe that fails
    for an agent never heard from does not count it lost either (issue 17): both gather it."""
    import threading
    import time

    import zmq

    from p2pmarl.runtime.world_link import PROBE_INTERVAL, WorldClient, WorldServer

    def late_ready(endpoint: str, context: zmq.Context) -> None:
        time.sleep(PROBE_INTERVAL * 2)
        client = WorldClient(endpoint, 0, context)
        client.send("ready", 0, {})
        time.sleep(0.5)
        client.close()

    for probe in (False, True):
        context = zmq.Context()
        endpoint = f"{scheme}://{tmp_path}/world-{probe}.sock"
        server = WorldServer(endpoint, 1, context)
        thread = threading.Thread(target=late_ready, args=(endpoint, context))
        thread.start()
        try:
            received = server.gather("ready", 0, 5.0, probe=probe)
        finally:
            thread.join()
            server.close()
            context.destroy(linger=0)
        assert 0 in received, f"probe={probe}: the late agent was not gathered"
        assert 0 not in server.lost, f"probe={probe}: the late agent was marked lost"


@pytest.mark.parametrize("scheme", ["unix", "ipc"])
def test_world_client_arrived_keeps_the_message_for_receive_and_skips_pings(tmp_path, scheme):
    """``WorldClient.arrived`` (the end of the runtime's post-phase linger) looks without
    waiting, ignores liveness pings, and keeps what it took for the next ``receive``."""
    import time

    import zmq

    from p2pmarl.runtime.world_link import PING, WorldClient, WorldServer

    context = zmq.Context()
    endpoint = f"{scheme}://{tmp_path}/world.sock"
    server = WorldServer(endpoint, 1, context)
    client = WorldClient(endpoint, 0, context)
    try:
        client.send("ready", 0, {})
        assert 0 in server.gather("ready", 0, 5.0, probe=False)
        assert not client.arrived()
        server.send(0, PING, 0, {})
        server.send(0, "step", 1, {"t": 0})
        deadline = time.monotonic() + 5.0
        while not client.arrived():
            assert time.monotonic() < deadline, "the step never showed as arrived"
            time.sleep(0.001)
        assert client.arrived()  # still there: taken once, kept
        message = client.receive(frozenset({"step"}), 1.0)
        assert (message.kind, message.round, message.body["t"]) == ("step", 1, 0)
        assert not client.arrived()
    finally:
        client.close()
        server.close()
        context.destroy(linger=0)
