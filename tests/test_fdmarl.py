"""FDMARL (networked actor-critic, Zhang et al. 2018): consensus step, TD critic, real runs.

Agents of the consensus tests are threads over :class:`MemoryHub`; every join has a timeout so
a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pmarl.algos.base import Batch
from p2pmarl.algos.fdmarl import (
    CRITIC_FIELDS,
    CRITIC_KINDS,
    FDMARL,
    FDMARLConfig,
    consensus_step,
    counterfactual_advantage,
    td_targets,
)
from p2pmarl.algos.networks import flat_parameters
from p2pmarl.config import RunConfig
from p2pmarl.envs.base import EnvSpec
from p2pmarl.runtime import transport, world_link
from p2pmarl.runtime.codec import WORLD
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import RELIABLE_FIELDS
from p2pmarl.runtime.transport import MemoryHub
from p2pmarl.topology import load_topology, topology_from_spec
from tests.test_privacy import WORLD_TO_AGENT, _recording_encoder

REPO = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT = 60.0


def run_threads(bodies: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as error:
                errors.append(error)
        return run

    threads = [threading.Thread(target=guarded(body), daemon=True) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "a consensus thread hung"
    assert not errors, errors


def test_consensus_steps_converge_the_critics_to_their_average_on_a_fixed_graph():
    topology = load_topology(REPO / "topologies/er8.yaml")
    n = topology.n_agents
    rng = np.random.default_rng(3)
    vectors = {i: rng.normal(size=50).astype(np.float32) for i in range(n)}
    average = np.mean(list(vectors.values()), axis=0)
    initial = max(float(np.abs(v - average).max()) for v in vectors.values())
    hub = MemoryHub()
    links = {i: PeerLink(hub.transport(i, topology.neighbours(i)), iteration=0)
             for i in range(n)}
    errors: dict[int, list[float]] = {i: [] for i in range(n)}

    def agent(i: int) -> Callable[[], None]:
        def body() -> None:
            for epoch in range(60):  # one round per epoch, as FDMARL runs it
                vectors[i], missing = consensus_step(links[i], vectors[i], epoch, 1, 10.0)
                assert missing == 0
                errors[i].append(float(np.abs(vectors[i] - average).max()))
        return body

    run_threads([agent(i) for i in range(n)])
    assert np.allclose(np.mean(list(vectors.values()), axis=0), average, atol=1e-5)
    for i in range(n):
        assert errors[i][-1] < 1e-3 * initial < errors[i][0], errors[i]


def test_a_dead_or_silent_neighbour_never_hangs_a_consensus_step():
    topology = topology_from_spec({"generator": "path", "n": 3})  # 0 - 1 - 2
    hub = MemoryHub()
    links = {i: PeerLink(hub.transport(i, topology.neighbours(i)), iteration=0) for i in range(3)}
    vectors = {0: np.full(4, 4.0, np.float32), 1: np.ones(4, np.float32)}
    results: dict[int, tuple[np.ndarray, int]] = {}

    def agent(i: int, epoch: int, timeout: float) -> Callable[[], None]:
        def body() -> None:
            results[i] = consensus_step(links[i], vectors[i], epoch, 1, timeout)
        return body

    # Agent 2 is silent: agent 1 waits at most the timeout and keeps agent 2's share at home.
    started = time.monotonic()
    run_threads([agent(0, 0, 10.0), agent(1, 0, 0.5)])
    assert time.monotonic() - started < 8.0
    assert results[0][1] == 0 and results[1][1] == 1
    assert np.allclose(results[1][0], 1.0 + (4.0 - 1.0) / 3)  # c(1, 0) = 1/(1 + max(2, 1))
    assert np.allclose(results[0][0], 4.0 + (1.0 - 4.0) / 3)
    # Agent 2 reported down: no wait at all, nothing sent to it.
    hub.down.add(2)
    sent_before = len(links[1].sent_log)
    started = time.monotonic()
    run_threads([agent(0, 1, 30.0), agent(1, 1, 30.0)])
    assert time.monotonic() - started < 8.0 and results[1][1] == 0
    assert [receiver for receiver, _, _ in links[1].sent_log[sent_before:]] == [0]


def test_td_targets_match_a_loop():
    rng = np.random.default_rng(0)
    rewards, q = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    dones = rng.random((7, 3)) < 0.3
    for bootstrap in (True, False):
        targets, valid = td_targets(rewards, q, dones, 0.9, bootstrap)
        for t in range(7):
            for k in range(3):
                if dones[t, k]:
                    expected = rewards[t, k] + (0.9 * q[t, k] if bootstrap else 0.0)
                elif t + 1 < 7:
                    expected = rewards[t, k] + 0.9 * q[t + 1, k]
                else:
                    assert not valid[t, k]
                    continue
                assert valid[t, k] and targets[t, k] == pytest.approx(expected, rel=1e-5)


def test_counterfactual_advantage_has_zero_mean_under_the_policy():
    q = torch.tensor([[1.0, 3.0, 5.0]])
    probabilities = torch.tensor([[0.5, 0.25, 0.25]])
    values = [counterfactual_advantage(q, probabilities, torch.tensor([b])) for b in range(3)]
    assert float(values[2]) == pytest.approx(5.0 - 2.5)
    expected = sum(p * v for p, v in zip(probabilities[0], values, strict=True))
    assert float(expected) == pytest.approx(0.0)


CHAIN_LENGTH, CHAIN_GAMMA = 4, 0.9


def chain_batch(agent_id: int, reward: float, episodes: int = 16, copies: int = 8) -> Batch:
    """A deterministic chain s0 → s1 → ... → s3 → end, one-hot observations, reward each step."""
    steps = CHAIN_LENGTH * episodes
    states = np.tile(np.arange(CHAIN_LENGTH), episodes)
    observations = np.zeros((steps, copies, CHAIN_LENGTH), dtype=np.float32)
    observations[np.arange(steps), :, states] = 1.0
    dones = np.repeat((states == CHAIN_LENGTH - 1)[:, None], copies, axis=1)
    return Batch(
        agent_id=agent_id, observations=observations,
        joint_actions=np.zeros((steps, copies, 2), dtype=np.int64),
        rewards=np.full((steps, copies), reward, dtype=np.float32), dones=dones,
        last_observations=observations[0],
    )


def chain_values(reward: float) -> np.ndarray:
    """Q(s_k) = Σ_{j < L−k} γ^j r, the known values of the chain."""
    return np.array([reward * sum(CHAIN_GAMMA**j for j in range(CHAIN_LENGTH - k))
                     for k in range(CHAIN_LENGTH)])


def chain_agent(agent_id: int, topology, reward_scale: float = 1.0) -> FDMARL:
    spec = EnvSpec("chain", 2, (CHAIN_LENGTH,) * 2, (1, 1), CHAIN_LENGTH)
    config = FDMARLConfig(gamma=CHAIN_GAMMA, critic_lr=1e-2, critic_epochs=200,
                          critic_minibatch=128, hidden=(32,), episode_end="terminal",
                          reward_scale=reward_scale)
    return FDMARL(agent_id, spec, topology, config, seed=agent_id)


def critic_values(agent: FDMARL) -> np.ndarray:
    observations = torch.eye(CHAIN_LENGTH)
    with torch.no_grad():
        return agent.critic(observations, torch.zeros(CHAIN_LENGTH, 2, dtype=torch.int64)).numpy()


def test_td_critic_reaches_the_chain_values():
    topology = topology_from_spec({"generator": "path", "n": 2})
    agent = chain_agent(0, topology)
    batch = chain_batch(0, reward=1.0)
    observations, joint_actions = agent._tensors(batch)
    for _ in range(agent.config.critic_epochs):
        agent.td_epoch(batch, observations, joint_actions)
    assert np.allclose(critic_values(agent), chain_values(1.0), atol=0.05), critic_values(agent)


def consensus_chain(reward: float, reward_scale: float) -> tuple[list[FDMARL], dict]:
    """Agent 0 rewarded ``reward`` per step, agent 1 nothing; both run their peer phase
    (TD epochs, each followed by a consensus step) over an in-memory link."""
    topology = topology_from_spec({"generator": "path", "n": 2})
    hub = MemoryHub()
    agents = [chain_agent(i, topology, reward_scale) for i in range(2)]
    results: dict[int, dict[str, float]] = {}

    def body(i: int) -> Callable[[], None]:
        def run() -> None:
            link = PeerLink(hub.transport(i, topology.neighbours(i)), iteration=0)
            results[i] = agents[i].peer_phase(chain_batch(i, reward=reward * (1 - i)), link)
        return run

    run_threads([body(0), body(1)])
    assert results[0]["consensus/missing"] == 0 == results[1]["consensus/missing"]
    return agents, results


def test_consensus_critics_reach_the_values_of_the_average_reward():
    """Agent 0 is rewarded 1 per step, agent 1 nothing: after TD epochs with consensus both
    critics hold the values of the team-average reward 0.5, which neither agent observes."""
    agents, _ = consensus_chain(reward=1.0, reward_scale=1.0)
    for agent in agents:
        assert np.allclose(critic_values(agent), chain_values(0.5), atol=0.05), critic_values(agent)
    difference = flat_parameters(agents[0].critic.parameters()) - flat_parameters(
        agents[1].critic.parameters())
    assert float(difference.abs().max()) < 1e-2


def test_a_shared_reward_scale_keeps_consensus_exact_and_the_sgd_step_unclipped():
    """Rewards of spread's size (10 per step, agent 1 nothing) at the default gradient guard:
    unscaled, the TD gradient is clipped on most steps and the critics settle off the values of
    the team-average reward; with the shared scale c = 0.1 no step is clipped and both critics
    reach c times those values."""
    unscaled, unscaled_results = consensus_chain(reward=10.0, reward_scale=1.0)
    scaled, scaled_results = consensus_chain(reward=10.0, reward_scale=0.1)
    steps = 200 * 4  # epochs × minibatches of 128 in the 512-row chain batch
    for agent, results in zip(scaled, scaled_results.values(), strict=True):
        assert np.allclose(critic_values(agent), 0.1 * chain_values(5.0), atol=0.03), (
            critic_values(agent))
        assert results["train/critic_clipped_steps"] == 0
    assert unscaled_results[0]["train/critic_clipped_steps"] > 0.5 * steps
    assert not np.allclose(critic_values(unscaled[0]), chain_values(5.0), atol=0.3)
    with pytest.raises(ValueError, match="reward_scale"):
        FDMARLConfig(reward_scale=0.0)


def test_fdmarl_run_sends_only_critics_to_neighbours(tmp_path, monkeypatch, no_leaked_processes):
    """Real processes: FDMARL agents learn, and send each neighbour only critic parameters."""
    log = tmp_path / "wire.jsonl"
    encoder = _recording_encoder(log)
    monkeypatch.setattr(transport, "encode", encoder)
    monkeypatch.setattr(world_link, "encode", encoder)
    topology_file = REPO / "topologies/line4.yaml"
    config = RunConfig(
        topology=str(topology_file), env="spread", algo="fdmarl", iterations=2,
        steps_per_iteration=32, n_envs=4, episode_length=8, out=str(no_leaked_processes),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    assert all(np.isfinite(a["return"]) for a in result.summary["agents"])
    topology = load_topology(topology_file)
    critic_size = None
    critics = 0
    for row in map(json.loads, log.read_text().splitlines()):
        sender, receiver = row["sender"], row["receiver"]
        if sender == WORLD:
            assert set(row["keys"]) <= WORLD_TO_AGENT
        elif receiver != WORLD:
            assert receiver in topology.neighbours(sender), row
            assert row["kind"] in {"hello", "heartbeat", *CRITIC_KINDS}, row
            if row["kind"] in CRITIC_KINDS:
                critics += row["copy"] == [0, 0]  # first copies (a busy host may retransmit)
                assert set(row["keys"]) == CRITIC_FIELDS | RELIABLE_FIELDS
                assert critic_size in (None, row["shapes"]["value"])
                critic_size = row["shapes"]["value"]
    # 2 iterations × critic epochs (20 by default) × 1 round × 6 directed edges of line4
    assert critics == 2 * FDMARLConfig().critic_epochs * 6
    metrics = [json.loads(line) for line in
               (Path(result.summary["run_dir"]) / "agents/agent-1/metrics.jsonl")
               .read_text().splitlines() if '"iteration"' in line]
    assert [m["consensus/missing"] for m in metrics] == [0.0, 0.0]
