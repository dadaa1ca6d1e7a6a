"""DiMA-PG: its math against slow references, the decentralized outer step against a
single-process eq. 11, behaviour under message loss and re-sync, and what crosses the wire in a
real launch."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from p2pmarl.algos.base import Batch, copy_group_layout
from p2pmarl.algos.dimapg import (
    DiMAPG,
    DiMAPGConfig,
    MetaData,
    adapt,
    baseline_features,
    clip_rewards,
    discounted_returns,
    episode_steps,
    fit_linear_baseline,
    meta_gradient,
    policy_log_prob,
)
from p2pmarl.algos.gossip import MESSAGE_FIELDS, GossipConfig
from p2pmarl.algos.networks import CategoricalPolicy, flat_parameters, set_flat_parameters
from p2pmarl.algos.trpo import conjugate_gradient, make_categorical_fisher_vector_product
from p2pmarl.config import ConfigError, RunConfig
from p2pmarl.envs import env_spec
from p2pmarl.runtime import transport, world_link
from p2pmarl.runtime.codec import WORLD
from p2pmarl.runtime.faults import FaultSpec, FaultyTransport
from p2pmarl.runtime.launcher import launch
from p2pmarl.runtime.peers import PeerLink
from p2pmarl.runtime.reliable import RELIABLE_FIELDS
from p2pmarl.runtime.rundir import read_jsonl
from p2pmarl.runtime.transport import MemoryHub
from p2pmarl.topology import load_topology
from tests.test_privacy import WORLD_TO_AGENT, _recording_encoder

REPO = Path(__file__).resolve().parents[1]
N, K, T, EPISODE = 4, 4, 10, 5
RING4 = {i: [(i - 1) % N, (i + 1) % N] for i in range(N)}


# -- pure math against slow references ------------------------------------------------------------


def test_returns_steps_and_clipping_match_plain_loops():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(7, 3))
    dones = rng.random((7, 3)) < 0.3
    returns = discounted_returns(rewards, dones, 0.9)
    steps = episode_steps(dones)
    for k in range(3):
        for t in range(7):
            expected, discount = 0.0, 1.0
            for u in range(t, 7):
                expected += discount * rewards[u, k]
                discount *= 0.9
                if dones[u, k]:
                    break
            assert returns[t, k] == pytest.approx(expected)
            last_done = max([u for u in range(t) if dones[u, k]], default=-1)
            assert steps[t, k] == t - last_done - 1
    np.testing.assert_array_equal(clip_rewards(np.array([-3.0, 0.5, 2.0]), 1.0), [-1, 0.5, 1])
    np.testing.assert_array_equal(clip_rewards(np.array([-3.0]), 0.0), [-3.0])


def test_linear_baseline_is_the_ridge_solution():
    rng = np.random.default_rng(1)
    features = baseline_features(rng.normal(size=(50, 3)), rng.integers(0, 20, 50))
    assert features.shape == (50, 3 + 3 + 3 + 1)
    returns = rng.normal(size=50)
    weights = fit_linear_baseline(features, returns, 1e-5)
    reference = np.linalg.solve(features.T @ features + 1e-5 * np.eye(10), features.T @ returns)
    np.testing.assert_allclose(weights, reference)


def tiny_policy() -> CategoricalPolicy:
    torch.manual_seed(0)
    return CategoricalPolicy(3, (4,), (5,), nn.ReLU).double()


def tiny_data(seed: int = 0) -> MetaData:
    rng = np.random.default_rng(seed)

    def tensor(shape):
        return torch.from_numpy(rng.normal(size=shape))

    actions = torch.from_numpy(rng.integers(0, 4, 30))
    return MetaData(tensor((30, 3)), actions, tensor(30), tensor((20, 3)),
                    torch.from_numpy(rng.integers(0, 4, 20)), tensor(20), 2.0, -1.5, -2.0)


def test_adapt_takes_plain_gradient_steps():
    policy = tiny_policy()
    data = tiny_data()
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in policy.named_parameters()}
    adapted = adapt(policy, theta, data.pre_observations, data.pre_actions, data.pre_advantages,
                    2, 0.1, create_graph=False)
    manual = policy
    for _ in range(2):
        manual.zero_grad()
        log_prob = manual.log_prob(data.pre_observations, data.pre_actions[:, None])[0]
        (log_prob * data.pre_advantages).mean().backward()
        with torch.no_grad():
            for p in manual.parameters():
                p += 0.1 * p.grad
    for name, p in manual.named_parameters():
        torch.testing.assert_close(adapted[name].detach(), p.detach())


def meta_objective(policy, flat, data, steps, lr) -> float:
    """The scalar whose gradient eq. 14 is, evaluated without autograd tricks."""
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    theta, offset = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        theta[name] = flat[offset : offset + size].reshape(shape).clone().requires_grad_(True)
        offset += size
    adapted = adapt(policy, theta, data.pre_observations, data.pre_actions,
                    data.pre_advantages, steps, lr, create_graph=True)
    adapted_term = (policy_log_prob(policy, adapted, data.adapted_observations,
                                    data.adapted_actions) * data.adapted_advantages).sum()
    adapted_term = adapted_term / data.adapted_episodes  # per trajectory
    pre = policy_log_prob(policy, theta, data.pre_observations, data.pre_actions).sum()
    score = (data.adapted_return - data.score_baseline) * pre  # score of the whole batch
    return float((adapted_term + score).detach())


def test_meta_gradient_matches_finite_differences_and_first_order_drops_a_real_term():
    policy = tiny_policy()
    data = tiny_data()
    theta = {n: p.detach() for n, p in policy.named_parameters()}
    steps, lr = 2, 0.5
    gradient = meta_gradient(policy, theta, data, steps, lr)
    flat = flat_parameters(policy.parameters())
    numeric = torch.zeros_like(flat)
    h = 1e-6
    for index in range(flat.numel()):
        up, down = flat.clone(), flat.clone()
        up[index] += h
        down[index] -= h
        numeric[index] = (meta_objective(policy, up, data, steps, lr)
                          - meta_objective(policy, down, data, steps, lr)) / (2 * h)
    torch.testing.assert_close(gradient, numeric, atol=1e-6, rtol=1e-5)
    first_order = meta_gradient(policy, theta, data, steps, lr, first_order=True)
    assert (first_order - gradient).norm() > 1e-3 * gradient.norm()


def one_step_bandit() -> tuple[CategoricalPolicy, dict[str, torch.Tensor]]:
    """A one-observation, one-step problem small enough for exact expectations over actions."""
    policy = tiny_policy()
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.mul_(3)
    return policy, {name: p.detach() for name, p in policy.named_parameters()}


BANDIT_REWARDS = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
BANDIT_OBSERVATION = torch.tensor([[0.3, -1.2, 0.8]], dtype=torch.float64)


def bandit_probabilities(policy, parameters) -> torch.Tensor:
    actions = torch.arange(4)
    return policy_log_prob(policy, parameters, BANDIT_OBSERVATION.expand(4, 3), actions).exp()


def exact_eq_14_gradient(policy, theta, lr: float) -> torch.Tensor:
    """∇θ E_{a∼π_θ}[J(θ + α r_a ∇log π_θ(a))] with every expectation a sum over actions: the
    objective whose gradient eq. 14 is (one inner step on a one-sample batch)."""
    theta = {name: value.clone().requires_grad_(True) for name, value in theta.items()}
    probabilities = bandit_probabilities(policy, theta)
    objective = torch.zeros((), dtype=torch.float64)
    for action in range(4):
        adapted = adapt(policy, theta, BANDIT_OBSERVATION, torch.tensor([action]),
                        BANDIT_REWARDS[action : action + 1], 1, lr, create_graph=True)
        value = (bandit_probabilities(policy, adapted) * BANDIT_REWARDS).sum()
        objective = objective + probabilities[action] * value
    gradients = torch.autograd.grad(objective, list(theta.values()))
    return torch.cat([g.reshape(-1) for g in gradients])


def expected_meta_gradient(policy, theta, lr: float, **estimator) -> torch.Tensor:
    """E over the pre sample a ∼ π_θ of :func:`meta_gradient`, the adapted sample given as every
    action weighted by π_{θ_n} (so the adapted term is its exact expectation)."""
    probabilities = bandit_probabilities(policy, theta)
    expected = torch.zeros(sum(v.numel() for v in theta.values()), dtype=torch.float64)
    for action in range(4):
        pre_action, pre_reward = torch.tensor([action]), BANDIT_REWARDS[action : action + 1]
        adapted = adapt(policy, {n: v.clone().requires_grad_(True) for n, v in theta.items()},
                        BANDIT_OBSERVATION, pre_action, pre_reward, 1, lr, create_graph=False)
        weights = bandit_probabilities(policy, adapted).detach() * BANDIT_REWARDS
        data = MetaData(BANDIT_OBSERVATION, pre_action, pre_reward,
                        BANDIT_OBSERVATION.expand(4, 3), torch.arange(4), weights, 1.0,
                        float(weights.sum()), 0.0)
        expected += probabilities[action] * meta_gradient(policy, theta, data, 1, lr,
                                                          **estimator)
    return expected


def test_score_term_is_unbiased_and_lvc_matches_it_to_first_order_in_alpha():
    """Eq. 14 with its score term is exactly the gradient of its objective in expectation;
    without it (MAML) an O(α) part is missing; ProMP's LVC recovers that part, leaving O(α²)."""
    policy, theta = one_step_bandit()
    ratios = []
    for lr in (0.01, 0.001):
        exact = exact_eq_14_gradient(policy, theta, lr)
        score = expected_meta_gradient(policy, theta, lr)
        torch.testing.assert_close(score, exact, atol=1e-12, rtol=1e-10)
        maml_error = (expected_meta_gradient(policy, theta, lr, score_term=False) - exact).norm()
        lvc_error = (expected_meta_gradient(policy, theta, lr, score_estimator="lvc")
                     - exact).norm()
        assert maml_error > 0.3 * lr * exact.norm(), "the score term must matter here"
        ratios.append(float(lvc_error / maml_error))
    assert ratios[0] < 0.15, ratios
    assert ratios[1] < 0.15 * ratios[0], f"LVC's error must shrink like α², got {ratios}"


def test_lvc_adapts_to_the_same_policy_and_needs_the_second_order_term():
    policy, data = tiny_policy(), tiny_data()
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in policy.named_parameters()}
    plain = adapt(policy, theta, data.pre_observations, data.pre_actions, data.pre_advantages,
                  2, 0.1, create_graph=True)
    lvc = adapt(policy, theta, data.pre_observations, data.pre_actions, data.pre_advantages,
                2, 0.1, create_graph=True, lvc=True)
    for name in plain:
        torch.testing.assert_close(lvc[name], plain[name])
    theta = {n: p.detach() for n, p in policy.named_parameters()}
    no_score = meta_gradient(policy, theta, data, 2, 0.5, score_term=False)
    with_lvc = meta_gradient(policy, theta, data, 2, 0.5, score_estimator="lvc")
    assert (with_lvc - no_score).norm() > 1e-3 * no_score.norm()
    torch.testing.assert_close(  # first order: no Jacobian, so nothing of LVC is left
        meta_gradient(policy, theta, data, 2, 0.5, first_order=True, score_estimator="lvc"),
        meta_gradient(policy, theta, data, 2, 0.5, first_order=True, score_term=False))
    with pytest.raises(ValueError, match="score_estimator"):
        DiMAPGConfig(score_estimator="dice")
    ring3 = str(REPO / "topologies" / "ring3.yaml")
    with pytest.raises(ConfigError, match="dimapg_score_estimator must be 'score' or 'lvc'"):
        RunConfig(topology=ring3, algo="dimapg", dimapg_score_estimator="dice").validate()
    config = RunConfig(topology=ring3, env="spread-shared", algo="dimapg",
                       dimapg_score_estimator="lvc").validate()
    agent = DiMAPG.from_run_config(0, env_spec("spread-shared", 3, 25),
                                   load_topology(ring3), config, 0)
    assert agent.config.score_estimator == "lvc"


# -- agents on fixed batches ----------------------------------------------------------------------


def settings(**changes) -> DiMAPGConfig:
    gossip = GossipConfig(rounds=200, round_timeout=5.0)
    return dataclasses.replace(DiMAPGConfig(hidden=(16, 16), gossip=gossip), **changes)


def make_agents(config: DiMAPGConfig) -> list[DiMAPG]:
    spec = env_spec("spread-shared", N, EPISODE)
    return [DiMAPG(i, spec, N, config, seed=100 + i, shared_seed=7) for i in range(N)]


def fixed_batch(agent: int, phase: str, seed: int) -> Batch:
    rng = np.random.default_rng([seed, agent, phase == "adapted"])
    dones = np.zeros((T, K), dtype=bool)
    dones[EPISODE - 1 :: EPISODE] = True
    return Batch(
        agent_id=agent,
        observations=rng.normal(size=(T, K, 6 * N)).astype(np.float32),
        joint_actions=rng.integers(0, 5, (T, K, N)),
        rewards=rng.normal(size=(T, K)).astype(np.float32),
        dones=dones,
        last_observations=rng.normal(size=(K, 6 * N)).astype(np.float32),
        phase=phase,
        copy_groups=copy_group_layout(K, N, 0, 0, 1) if phase == "adapted" else None,
    )


def learn_locally(agents: list[DiMAPG], seed: int = 0) -> None:
    for agent in agents:
        agent.phase_update(fixed_batch(agent.agent_id, "pre", seed))
        agent.local_update(fixed_batch(agent.agent_id, "adapted", seed))


def run_peer_phases(agents: list[DiMAPG], drop: float = 0.0) -> dict[int, dict]:
    hub = MemoryHub()
    stats: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(agent: DiMAPG) -> None:
        link = hub.transport(agent.agent_id, RING4[agent.agent_id])
        if drop:
            link = FaultyTransport(link, FaultSpec(seed=3, drop=drop))
        try:
            stats[agent.agent_id] = agent.peer_phase(None, PeerLink(link))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    return stats


def thetas(agents: list[DiMAPG]) -> torch.Tensor:
    return torch.stack([flat_parameters(a.policy.parameters()) for a in agents])


def test_decentralized_reinforce_step_is_eq_11_in_one_process():
    agents = make_agents(settings(outer="reinforce", outer_lr=0.05))
    learn_locally(agents)
    before = flat_parameters(agents[0].policy.parameters())
    total = sum(a._gradient for a in agents)
    run_peer_phases(agents)
    expected = before + 0.05 * total
    for theta in thetas(agents):
        torch.testing.assert_close(theta, expected, atol=1e-5, rtol=1e-5)


def single_process_trpo(agents: list[DiMAPG]) -> torch.Tensor:
    """The same outer step computed with exact network means in one process."""
    config = agents[0].config
    total = sum(a._gradient for a in agents)
    directions = []
    for agent in agents:
        observations = agent._pre["observations"]
        fvp = make_categorical_fisher_vector_product(
            agent.policy, observations[:: config.fisher_subsample], config.damping)
        directions.append(conjugate_gradient(fvp, total, config.cg_iterations))
    direction = torch.stack(directions).mean(dim=0)
    full_step = (2 * config.max_kl / float(total.dot(direction))) ** 0.5 * direction
    policy = agents[0].policy
    theta_old = flat_parameters(policy.parameters())
    for b in range(config.max_backtracks):
        kls = []
        for agent in agents:
            observations = agent._pre["observations"]
            with torch.no_grad():
                set_flat_parameters(policy.parameters(), theta_old)
                old_logits = policy(observations)
                set_flat_parameters(policy.parameters(), theta_old + 0.5**b * full_step)
                kls.append(float(policy.kl(observations, old_logits)))
        set_flat_parameters(policy.parameters(), theta_old)
        if np.mean(kls) <= config.accept_ratio * config.max_kl:
            return theta_old + 0.5**b * full_step
    return theta_old


def test_decentralized_trpo_step_equals_the_single_process_step_once_gossip_converged():
    agents = make_agents(settings())
    learn_locally(agents)
    expected = single_process_trpo(agents)
    before = flat_parameters(agents[0].policy.parameters())
    stats = run_peer_phases(agents)
    assert (expected - before).norm() > 0, "the reference step must move θ"
    for theta in thetas(agents):
        torch.testing.assert_close(theta, expected, atol=1e-5, rtol=1e-4)
    for row in stats.values():
        assert row["train/accepted"] == 1.0
        assert row["dimapg/replica_disagreement"] < 1e-5
        assert row["gossip/rounds"] == 200


def test_message_loss_during_gossip_ends_in_bounded_time_with_the_error_recorded():
    config = settings(outer="reinforce",
                      gossip=GossipConfig(rounds=30, round_timeout=0.05))
    agents = make_agents(config)
    records: list[dict] = []
    for agent in agents:
        agent.record = records.append
    learn_locally(agents)
    total = sum(a._gradient for a in agents)
    expected = flat_parameters(agents[0].policy.parameters()) + 0.05 * total
    started = time.monotonic()
    stats = run_peer_phases(agents, drop=0.3)
    elapsed = time.monotonic() - started
    # one gradient gossip of 30 rounds ≤ 0.05 s each, plus one sketch wait of 0.05 s
    assert elapsed < 30 * 0.05 + 0.05 + 15
    assert sum(s["gossip/missing"] for s in stats.values()) > 0
    gossips = [r for r in records if r["kind"] == "dimapg_gradient"]
    assert len(gossips) == N and all(len(r["changes"]) == 30 for r in gossips)
    error = (thetas(agents) - expected).norm(dim=1).max()
    step = (0.05 * total).norm()
    # the first rounds end (0.05 s) before the first retransmission (0.25 s before any sample),
    # so their lost messages shift the mean a little; later rounds retransmit within the bound
    assert 0 < error < 0.5 * step, "lossy gossip leaves a small, nonzero error"
    recorded = [s["dimapg/replica_disagreement"] for s in stats.values()]
    assert max(recorded) < 1e-3 * float(step), "retransmitted rounds keep the replicas together"


def test_replicas_that_drifted_apart_are_resynchronised_by_averaging():
    agents = make_agents(settings(outer="reinforce"))
    learn_locally(agents)
    theta = flat_parameters(agents[2].policy.parameters())
    set_flat_parameters(agents[2].policy.parameters(), theta + 0.01)
    agents[2].resync_requested = True
    total = sum(a._gradient for a in agents)
    mean_before = thetas(agents).mean(dim=0)
    stats = run_peer_phases(agents)
    assert all(s["dimapg/resync"] == 1.0 for s in stats.values())
    for theta in thetas(agents):
        torch.testing.assert_close(theta, mean_before + 0.05 * total, atol=1e-5, rtol=1e-5)
    assert not any(a.resync_requested for a in agents)


def agent_meta_gradient(
    agent: DiMAPG, seed: int, baseline: float | None, **estimator
) -> tuple[torch.Tensor, float]:
    """:func:`meta_gradient` on the agent's pre samples and the adapted batch of ``seed``."""
    columns = np.flatnonzero(copy_group_layout(K, N, 0, 0, 1) == agent.agent_id)
    pre = agent._pre
    post = agent._samples(fixed_batch(agent.agent_id, "adapted", seed), columns,
                          fit_also=pre["fit"])
    data = MetaData(pre["observations"], pre["actions"], pre["advantages"],
                    post["observations"], post["actions"], post["raw_advantages"],
                    post["episodes"], post["return"], baseline)
    theta = {n: p.detach() for n, p in agent.policy.named_parameters()}
    return meta_gradient(agent.policy, theta, data, agent.config.inner_steps,
                         agent.config.inner_lr, **estimator), post["return"]


def test_agents_use_lvc_by_default():
    agent = make_agents(settings())[0]
    assert agent.config.score_estimator == "lvc" and agent.config.score_term
    agent.phase_update(fixed_batch(0, "pre", 0))
    agent.local_update(fixed_batch(0, "adapted", 0))
    expected, _ = agent_meta_gradient(agent, 0, None, score_estimator="lvc")
    torch.testing.assert_close(agent._gradient, expected)
    plain, _ = agent_meta_gradient(agent, 0, None, score_term=False)
    assert (expected - plain).norm() > 1e-4 * plain.norm(), "LVC changes the gradient"


def test_score_term_baseline_comes_only_from_earlier_iterations():
    """b of eq. 14's score term must not depend on the current τ^θ_n (session 22's fix: the
    pre-adaptation return made the term subtract θ's own policy gradient)."""
    agent = make_agents(settings(score_estimator="score"))[0]

    def expected_gradient(seed: int, baseline: float | None) -> torch.Tensor:
        return agent_meta_gradient(agent, seed, baseline)

    agent.phase_update(fixed_batch(0, "pre", 0))
    first, l0 = expected_gradient(0, None)  # no earlier L_n: no score term
    agent.local_update(fixed_batch(0, "adapted", 0))
    torch.testing.assert_close(agent._gradient, first)
    assert agent.score_baseline == pytest.approx(l0)
    agent.phase_update(fixed_batch(0, "pre", 1))
    second, l1 = expected_gradient(1, l0)
    without_score, _ = expected_gradient(1, None)
    agent.local_update(fixed_batch(0, "adapted", 1))
    torch.testing.assert_close(agent._gradient, second)
    assert (second - without_score).norm() > 1e-3 * second.norm(), "the score term is used"
    assert agent.score_baseline == pytest.approx(0.9 * l0 + 0.1 * l1)
    restored = make_agents(settings())[0]
    restored.load_state_dict(agent.state_dict())
    assert restored.score_baseline == agent.score_baseline


def test_adapted_advantages_use_a_baseline_fit_on_pre_and_adapted_samples():
    agent = make_agents(settings())[0]
    pre = agent._samples(fixed_batch(0, "pre", 0))
    columns = np.flatnonzero(copy_group_layout(K, N, 0, 0, 1) == 0)
    post = agent._samples(fixed_batch(0, "adapted", 0), columns, fit_also=pre["fit"])
    features = np.concatenate([pre["fit"][0], post["fit"][0]])
    returns = np.concatenate([pre["fit"][1], post["fit"][1]])
    weights = fit_linear_baseline(features, returns, agent.config.baseline_regularization)
    raw = post["fit"][1] - post["fit"][0] @ weights
    np.testing.assert_allclose(post["raw_advantages"], raw - raw.mean(), rtol=1e-4, atol=1e-4)
    own_only = agent._samples(fixed_batch(0, "adapted", 0), columns)
    assert not np.allclose(own_only["raw_advantages"], post["raw_advantages"], atol=1e-3)
    assert post["episodes"] == len(columns) * T / EPISODE


def test_agents_with_different_observation_sizes_are_refused():
    spec = env_spec("treasure", 8, 10)
    with pytest.raises(ValueError, match="shares one policy"):
        DiMAPG(0, spec, 8, DiMAPGConfig(), 0, 0)


# -- a real launch: smoke test and what crosses the wire -------------------------------------------


def test_launch_sends_only_gradients_and_sketches_to_neighbours(
    tmp_path, monkeypatch, no_leaked_processes
):
    log = tmp_path / "wire.jsonl"
    encoder = _recording_encoder(log)
    monkeypatch.setattr(transport, "encode", encoder)
    monkeypatch.setattr(world_link, "encode", encoder)
    topology_file = REPO / "topologies/line4.yaml"
    config = RunConfig(
        topology=str(topology_file), env="spread-shared", algo="dimapg", iterations=2,
        steps_per_iteration=40, n_envs=K, episode_length=5, dimapg_gossip_rounds=20,
        out=str(no_leaked_processes),
    )
    result = launch(config, show_progress=False)
    assert result.summary["status"] == "completed", result.messages
    topology = load_topology(topology_file)
    n_parameters = sum(p.numel() for p in make_agents(DiMAPGConfig())[0].policy.parameters())
    sizes = {"dimapg_gradient": n_parameters + 1, "dimapg_direction": n_parameters,
             "dimapg_resync": n_parameters, "dimapg_kl": DiMAPGConfig().max_backtracks,
             "dimapg_sketch": DiMAPGConfig().sketch_size}
    kinds = set()
    for row in map(json.loads, log.read_text().splitlines()):
        if WORLD in (row["sender"], row["receiver"]):
            if row["sender"] == WORLD and row["kind"] == "step":
                assert set(row["keys"]) <= WORLD_TO_AGENT
            continue
        assert row["receiver"] in topology.neighbours(row["sender"]), row
        if row["kind"] in {"hello", "heartbeat"}:
            continue
        kinds.add(row["kind"])
        assert row["kind"] in DiMAPG.message_kinds, row
        vectors = {key: shape for key, shape in row["shapes"].items()}
        assert set(row["keys"]) >= RELIABLE_FIELDS, row  # every exchange is reliable
        if row["kind"] == "dimapg_sketch":
            assert set(row["keys"]) - RELIABLE_FIELDS == {"sketch"}
        else:
            assert set(row["keys"]) - RELIABLE_FIELDS <= MESSAGE_FIELDS, row
        assert all(shape == [sizes[row["kind"]]] for shape in vectors.values()), row
    assert {"dimapg_gradient", "dimapg_direction", "dimapg_kl", "dimapg_sketch"} <= kinds
    rows = [r for r in read_jsonl(result.run_dir / "agents/agent-1/metrics.jsonl")
            if "iteration" in r]
    assert len(rows) == 2
    for key in ("dimapg/replica_disagreement", "gossip/rounds", "phase/pre/return",
                "dimapg/adapted_return", "train/step_fraction"):
        assert key in rows[-1], key
