"""TRPO numerics against slow, obvious references, and I-TRPO on tiny problems."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.func import functional_call

from p2pmarl.algos.base import Batch
from p2pmarl.algos.itrpo import ITRPO, TRPOConfig
from p2pmarl.algos.networks import (
    CategoricalPolicy,
    NumpyForward,
    flat_parameters,
    mlp,
    sample_actions,
    set_flat_parameters,
)
from p2pmarl.algos.trpo import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    gae,
    make_categorical_fisher_vector_product,
    make_fisher_vector_product,
    normalize,
    surrogate_loss,
    trpo_step,
)
from p2pmarl.envs.base import EnvSpec

torch.set_num_threads(1)


def gae_loop(rewards, values, last_values, dones, gamma, lam):
    """Eqs. (18)-(19) one environment copy and one step at a time, in plain Python."""
    steps, copies = len(rewards), len(rewards[0])
    advantages = [[0.0] * copies for _ in range(steps)]
    for k in range(copies):
        following = 0.0
        for t in reversed(range(steps)):
            if dones[t][k]:
                next_value, following = 0.0, 0.0
            elif t == steps - 1:
                next_value = float(last_values[k])
            else:
                next_value = float(values[t + 1][k])
            delta = float(rewards[t][k]) + gamma * next_value - float(values[t][k])
            following = delta + gamma * lam * following
            advantages[t][k] = following
    return np.array(advantages)


@st.composite
def rollouts(draw):
    steps = draw(st.integers(1, 12))
    copies = draw(st.integers(1, 4))
    finite = st.floats(-10, 10, width=32)
    rewards = draw(hnp.arrays(np.float32, (steps, copies), elements=finite))
    values = draw(hnp.arrays(np.float32, (steps, copies), elements=finite))
    last_values = draw(hnp.arrays(np.float32, (copies,), elements=finite))
    dones = draw(hnp.arrays(np.bool_, (steps, copies)))
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return rewards, values, last_values, dones, gamma, lam


@settings(max_examples=60, deadline=None)
@given(rollouts())
def test_gae_matches_loop(rollout):
    rewards, values, last_values, dones, gamma, lam = rollout
    advantages, returns = gae(rewards, values, last_values, dones, gamma, lam)
    expected = gae_loop(rewards, values, last_values, dones, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-5, atol=1e-4)


def test_gae_with_done_in_the_middle_is_reward_to_go_per_episode():
    rewards = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    dones = np.array([[False], [True], [False], [False]])
    zeros = np.zeros_like(rewards)
    advantages, _ = gae(rewards, zeros, np.array([10.0]), dones, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(advantages[:, 0], [3.0, 2.0, 17.0, 14.0])


def test_normalize_uses_own_statistics():
    advantages = np.random.default_rng(0).normal(3.0, 5.0, size=1000)
    normalized = normalize(advantages)
    assert abs(normalized.mean()) < 1e-5
    assert abs(normalized.std() - 1.0) < 1e-4


def test_conjugate_gradient_matches_dense_solve():
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(12, 12, dtype=torch.float64, generator=generator)
    matrix = root @ root.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64, generator=generator)
    solution = conjugate_gradient(lambda v: matrix @ v, b, iterations=50, residual_tol=1e-24)
    torch.testing.assert_close(solution, torch.linalg.solve(matrix, b), rtol=1e-8, atol=1e-8)


def tiny_policy(head_sizes=(2,), seed=0):
    torch.manual_seed(seed)
    policy = CategoricalPolicy(3, head_sizes, hidden=(4,)).double()
    with torch.no_grad():
        policy.body[-1].weight.mul_(100.0)  # undo the near-uniform init: a non-trivial Fisher
    return policy


def explicit_kl_hessian(policy, observations, old_logits):
    names = [name for name, _ in policy.named_parameters()]
    shapes = [parameter.shape for parameter in policy.parameters()]

    def kl_of(theta):
        chunks = theta.split([math.prod(shape) for shape in shapes])
        parameters = {
            name: chunk.view(shape)
            for name, chunk, shape in zip(names, chunks, shapes, strict=True)
        }
        logits = functional_call(policy, parameters, (observations,))
        return policy.kl_from_logits(old_logits, logits)

    return torch.autograd.functional.hessian(kl_of, flat_parameters(policy.parameters()))


@pytest.mark.parametrize("head_sizes", [(2,), (2, 3)])
def test_fisher_vector_product_matches_explicit_kl_hessian(head_sizes):
    policy = tiny_policy(head_sizes)
    observations = torch.randn(7, 3, dtype=torch.float64)
    with torch.no_grad():
        old_logits = policy(observations)
    parameters = list(policy.parameters())
    # Away from θ_old too, to show it is the true Hessian and not only the Fisher.
    for shift in (0.0, 0.3):
        theta = flat_parameters(parameters)
        set_flat_parameters(parameters, theta + shift * torch.randn_like(theta))
        hessian = explicit_kl_hessian(policy, observations, old_logits)
        vector = torch.randn(hessian.shape[0], dtype=torch.float64)
        damping = 0.01
        expected = hessian @ vector + damping * vector
        product = fisher_vector_product(
            lambda: policy.kl(observations, old_logits), parameters, vector, damping
        )
        torch.testing.assert_close(product, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("head_sizes", [(2,), (2, 2), (2, 3)])
def test_categorical_fisher_matches_kl_hessian_at_theta_old(head_sizes):
    policy = tiny_policy(head_sizes)
    observations = torch.randn(7, 3, dtype=torch.float64)
    with torch.no_grad():
        old_logits = policy(observations)
    hessian = explicit_kl_hessian(policy, observations, old_logits)
    fvp = make_categorical_fisher_vector_product(policy, observations, damping=0.05)
    reused = make_fisher_vector_product(
        lambda: policy.kl(observations, old_logits), list(policy.parameters()), damping=0.05
    )
    for _ in range(3):  # products from one build can be taken repeatedly
        vector = torch.randn(hessian.shape[0], dtype=torch.float64)
        expected = hessian @ vector + 0.05 * vector
        torch.testing.assert_close(fvp(vector), expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(reused(vector), expected, rtol=1e-9, atol=1e-10)
    # The categorical product holds a snapshot of θ_old: still valid after the policy moved.
    theta_old = flat_parameters(policy.parameters())
    set_flat_parameters(policy.parameters(), theta_old + 0.5)
    torch.testing.assert_close(fvp(vector), expected, rtol=1e-9, atol=1e-10)


def test_line_search_accepts_full_step_when_good():
    result = backtracking_line_search(lambda f: (-f, 0.001 * f), 0.0, accept_kl=0.015)
    assert (result.fraction, result.steps) == (1.0, 1)


def test_line_search_halves_while_kl_too_big():
    result = backtracking_line_search(lambda f: (-f, 0.04 * f**2), 0.0, accept_kl=0.015)
    assert (result.fraction, result.steps) == (0.5, 2)
    result = backtracking_line_search(lambda f: (-f, 1.0 * f**2), 0.0, accept_kl=0.015)
    assert (result.fraction, result.steps) == (0.0625, 5)


def test_line_search_returns_zero_when_nothing_improves():
    result = backtracking_line_search(lambda f: (f, 0.0), 0.0, accept_kl=1.0, max_backtracks=7)
    assert (result.fraction, result.steps, result.loss) == (0.0, 7, 0.0)


def test_trpo_step_restores_theta_old_when_rejected():
    policy = tiny_policy()
    observations = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        old_logits = policy(observations)
    theta_old = flat_parameters(policy.parameters())
    stats = trpo_step(
        list(policy.parameters()),
        lambda: policy(observations).sum(),
        lambda: policy.kl(observations, old_logits),
        max_kl=0.01,
        line_search_loss_fn=lambda: torch.tensor(1.0, dtype=torch.float64),  # never lowers
    )
    assert not stats.accepted
    assert stats.line_search_steps == 10
    torch.testing.assert_close(flat_parameters(policy.parameters()), theta_old)


def test_log_prob_kl_entropy_for_mixed_heads():
    policy = tiny_policy((2, 3))
    observations = torch.randn(6, 3, dtype=torch.float64)
    actions = torch.stack([torch.randint(0, 2, (6,)), torch.randint(0, 3, (6,))], dim=1)
    with torch.no_grad():
        logits = policy(observations)
        log_prob = policy.log_prob(observations, actions)
    assert log_prob.shape == (2, 6)
    first, second = torch.log_softmax(logits[:, :2], -1), torch.log_softmax(logits[:, 2:], -1)
    torch.testing.assert_close(log_prob[0], first.gather(1, actions[:, :1]).squeeze(1))
    torch.testing.assert_close(log_prob[1], second.gather(1, actions[:, 1:]).squeeze(1))
    with torch.no_grad():
        assert float(policy.kl(observations, logits)) == pytest.approx(0.0, abs=1e-12)
        assert policy.entropy(observations).shape == (2, 6)


def test_initial_policy_is_near_uniform():
    policy = CategoricalPolicy(18, (5, 5, 5))
    entropy = policy.entropy(torch.randn(64, 18))
    assert torch.all(entropy > math.log(5) - 0.01)


def test_numpy_logits_follow_parameter_updates():
    policy = CategoricalPolicy(18, (5,))
    observations = np.random.default_rng(0).standard_normal((8, 18)).astype(np.float32)
    for _ in range(2):
        with torch.no_grad():
            expected = policy(torch.from_numpy(observations)).numpy()
        np.testing.assert_allclose(policy.numpy_logits(observations), expected, atol=1e-5)
        theta = flat_parameters(policy.parameters())
        set_flat_parameters(policy.parameters(), theta + 0.1 * torch.randn_like(theta))
    policy.body[0].weight.data = torch.randn(128, 18)  # storage replaced: views rebuilt
    with torch.no_grad():
        expected = policy(torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(policy.numpy_logits(observations), expected, atol=1e-5)


def test_numpy_forward_falls_back_for_other_activations():
    network = mlp(4, 3, hidden=(8,), activation=nn.GELU)
    observations = np.ones((2, 4), dtype=np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(NumpyForward(network)(observations), expected, atol=1e-6)


def test_sample_actions_follow_the_softmax():
    policy = CategoricalPolicy(2, (4,), hidden=(8,))
    with torch.no_grad():
        policy.body[-1].bias.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0]))
        policy.body[-1].weight.zero_()
    observations = np.zeros((20_000, 2), dtype=np.float32)
    actions = sample_actions(policy, observations, 0, np.random.default_rng(0))
    assert actions.dtype == np.int64
    frequencies = np.bincount(actions, minlength=4) / actions.size
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0]), 0).numpy()
    np.testing.assert_allclose(frequencies, expected, atol=0.015)
    mode = sample_actions(policy, observations[:3], 0, np.random.default_rng(0), True)
    np.testing.assert_array_equal(mode, [2, 2, 2])


SPEC = EnvSpec("synthetic", 2, (6, 6), (3, 3), 10)


def synthetic_batch(agent, steps=40, copies=4, seed=0, agent_id=0):
    """Rewards favour own action 2; the other agent acts uniformly."""
    rng = np.random.default_rng(seed)
    observations = rng.standard_normal((steps, copies, 6)).astype(np.float32)
    own = np.stack([agent.act(observations[t]) for t in range(steps)])
    joint = np.stack([own, rng.integers(0, 3, (steps, copies))], axis=-1)
    if agent_id == 1:
        joint = joint[..., ::-1]
    rewards = (own == 2).astype(np.float32) + 0.1 * observations[..., 0]
    dones = np.zeros((steps, copies), dtype=bool)
    dones[9::10] = True
    last = rng.standard_normal((copies, 6)).astype(np.float32)
    return Batch(agent_id, observations, np.ascontiguousarray(joint), rewards, dones, last)


def test_itrpo_update_improves_surrogate_within_trust_region():
    config = TRPOConfig()
    agent = ITRPO(0, SPEC, config, seed=3)
    batch = synthetic_batch(agent)
    data = agent.prepare(batch)
    actions = data.joint_actions[:, :1]
    with torch.no_grad():
        old_logits = agent.policy(data.observations)
        old_log_prob = agent.policy.log_prob_from_logits(old_logits, actions)
    metrics = agent.local_update(batch)
    with torch.no_grad():
        new_log_prob = agent.policy.log_prob(data.observations, actions)
        kl = float(agent.policy.kl(data.observations, old_logits))
        surrogate_before = -float(surrogate_loss(old_log_prob, old_log_prob, data.advantages))
        surrogate_after = -float(surrogate_loss(new_log_prob, old_log_prob, data.advantages))
    assert surrogate_after > surrogate_before
    assert 0.0 < kl <= config.accept_ratio * config.max_kl
    assert metrics["train/kl"] == pytest.approx(kl, rel=1e-4)
    assert metrics["train/surrogate_improvement"] > 0.0
    expected_keys = {"kl", "surrogate_improvement", "line_search_steps", "value_loss", "entropy"}
    assert {f"train/{key}" for key in expected_keys | {"grad_norm"}} <= set(metrics)
    assert all(isinstance(value, float) for value in metrics.values())


def test_itrpo_learns_from_its_own_action_column():
    agent = ITRPO(1, SPEC, TRPOConfig(), seed=0)
    metrics = agent.local_update(synthetic_batch(agent, agent_id=1))
    assert metrics["train/accepted"] == 1.0
    with pytest.raises(ValueError, match="batch of agent 0"):
        agent.local_update(synthetic_batch(agent, agent_id=0))


def test_state_dict_round_trip_reproduces_actions():
    agent = ITRPO(0, SPEC, TRPOConfig(), seed=1)
    agent.local_update(synthetic_batch(agent))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    observations = np.random.default_rng(5).standard_normal((8, 6)).astype(np.float32)
    expected = [agent.act(observations) for _ in range(5)]
    restored = ITRPO(0, SPEC, TRPOConfig(), seed=99)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    for actions in expected:
        np.testing.assert_array_equal(restored.act(observations), actions)
    with pytest.raises(ValueError, match="agent 0"):
        ITRPO(1, SPEC, TRPOConfig(), seed=0).load_state_dict(agent.state_dict())


def test_same_seed_same_initial_policy():
    observations = np.ones((4, 6), dtype=np.float32)
    first = ITRPO(0, SPEC, TRPOConfig(), seed=7).policy.numpy_logits(observations)
    second = ITRPO(0, SPEC, TRPOConfig(), seed=7).policy.numpy_logits(observations)
    np.testing.assert_array_equal(first, second)


def test_itrpo_bandit_increases_probability_of_rewarded_action():
    spec = EnvSpec("bandit", 1, (2,), (3,), 1)
    agent = ITRPO(0, spec, TRPOConfig(max_kl=0.02), seed=0)
    observations = np.ones((64, 8, 2), dtype=np.float32)

    def probability_of_action_2() -> float:
        with torch.no_grad():
            return float(torch.softmax(agent.policy(torch.ones(1, 2)), -1)[0, 2])

    before = probability_of_action_2()
    for _ in range(5):
        actions = np.stack([agent.act(observations[t]) for t in range(64)])
        rewards = (actions == 2).astype(np.float32)
        dones = np.ones((64, 8), dtype=bool)
        batch = Batch(0, observations, actions[..., None], rewards, dones, observations[0])
        agent.local_update(batch)
    after = probability_of_action_2()
    assert after > before + 0.3, (before, after)


@pytest.mark.parametrize(
    "field, value", [("gamma", 1.5), ("max_kl", 0.0), ("accept_ratio", 0.5), ("hidden", ())]
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        TRPOConfig(**{field: value})


def test_from_run_config_takes_the_runs_trust_region():
    from p2pmarl.config import RunConfig

    agent = ITRPO.from_run_config(1, SPEC, None, RunConfig(max_kl=0.004), seed=0)
    assert (agent.agent_id, agent.config.max_kl) == (1, 0.004)
    assert ITRPO.from_run_config(0, SPEC, None, RunConfig(), seed=0).config == TRPOConfig()


def test_minimal_adam_matches_torch_adam_step_for_step():
    from p2pmarl.algos.adam import Adam

    torch.manual_seed(0)
    mine, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    reference.load_state_dict(mine.state_dict())
    ours = Adam(mine.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for _ in range(25):
        inputs = torch.randn(8, 4)
        for net, optimizer in ((mine, ours), (reference, theirs)):
            optimizer.zero_grad()
            net(inputs).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(mine.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    restored = Adam(torch.nn.Linear(4, 3).parameters())
    restored.load_state_dict(ours.state_dict())
    assert restored.step_count == 25


def test_standardized_value_net_fits_large_returns_in_one_iteration():
    from p2pmarl.algos.adam import Adam
    from p2pmarl.algos.networks import ValueNet
    from p2pmarl.algos.trpo import fit_value

    torch.manual_seed(0)
    net = ValueNet(3, (16,))
    observations = torch.randn(512, 3)
    returns = -200 + 30 * observations[:, 0]
    loss = fit_value(net, Adam(net.parameters(), lr=1e-3), observations, returns, 5, 64,
                     np.random.default_rng(0))
    assert loss < 0.5  # standardized MSE: most of the variance explained in 5 epochs
    with torch.no_grad():
        assert float(torch.mean((net(observations) - returns) ** 2)) < 0.5 * 30**2


def test_gae_bootstraps_time_outs_with_the_last_value():
    """An episode end as a time-out (Pardo et al., 2018): γ·V(o_t) replaces the missing
    V(o_{t+1}) at the step that ended the episode, and the λ-recursion still stops there."""
    rewards = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    values = np.array([[5.0], [7.0], [11.0]], dtype=np.float32)
    dones = np.array([[False], [True], [False]])
    terminal, _ = gae(rewards, values, np.array([13.0]), dones, gamma=0.5, lam=1.0)
    timeout, returns = gae(rewards, values, np.array([13.0]), dones, 0.5, 1.0,
                           bootstrap_timeouts=True)
    np.testing.assert_allclose(timeout[1, 0], 2.0 + 0.5 * 7.0 - 7.0)
    np.testing.assert_allclose(timeout[0, 0], (1.0 + 0.5 * 7.0 - 5.0) + 0.5 * timeout[1, 0])
    np.testing.assert_allclose(timeout[2], terminal[2])
    np.testing.assert_allclose(terminal[1, 0], 2.0 - 7.0)
    np.testing.assert_allclose(returns, timeout + values)


def test_time_out_bootstrap_is_the_default():
    """Measured on spread (docs/benchmarks.md): terminal episode ends stall C-TRPO."""
    from p2pmarl.algos.itrpo import TRPOConfig
    from p2pmarl.config import RunConfig

    assert TRPOConfig().episode_end == "timeout"
    assert RunConfig().episode_end == "timeout"


def test_every_trust_region_algorithm_takes_the_runs_episode_end():
    from p2pmarl.algos.ctrpo import CTRPO
    from p2pmarl.algos.matrpo import MATRPO
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import topology_from_spec

    line = topology_from_spec({"generator": "line", "n": SPEC.n_agents})
    config = RunConfig(episode_end="terminal")
    for algorithm in (ITRPO, CTRPO, MATRPO):
        agent = algorithm.from_run_config(0, SPEC, line, config, seed=0)
        assert agent.config.episode_end == "terminal", algorithm.name


def test_center_keeps_the_scale_and_removes_the_own_mean():
    advantages = np.random.default_rng(0).normal(3.0, 5.0, size=1000)
    centered = normalize(advantages, mode="center")
    assert abs(centered.mean()) < 1e-4
    np.testing.assert_allclose(centered.std(), advantages.std(), rtol=1e-5)
    np.testing.assert_array_equal(normalize(advantages, mode="none"),
                                  advantages.astype(np.float32))


def test_matrpo_default_keeps_the_agents_advantage_scales_comparable():
    """MATRPO's objective is Σ_i A^i (eqs. (6)-(8)): dividing each agent's advantage by its own
    std would weigh a collision-only agent's noise as much as agent 0's coverage signal."""
    from p2pmarl.algos.matrpo import MATRPOConfig

    assert MATRPOConfig().trpo.advantage_normalization == "center"
    rng = np.random.default_rng(0)
    spreads = []
    for scale in (20.0, 0.5):
        batch = Batch(0, rng.normal(size=(50, 2, 6)).astype(np.float32),
                      rng.integers(0, 3, size=(50, 2, 2)),
                      (scale * rng.normal(size=(50, 2))).astype(np.float32),
                      np.zeros((50, 2), bool), rng.normal(size=(2, 6)).astype(np.float32))
        agent = ITRPO(0, SPEC, TRPOConfig(hidden=(8,)), seed=0)
        spreads.append(float(agent.prepare(batch).advantages.std()))
    assert spreads[0] > 10 * spreads[1]


def test_own_and_center_give_the_same_trpo_step():
    """The natural-gradient step and its line search are invariant to the scale of A."""
    rng = np.random.default_rng(0)
    batch = Batch(0, rng.normal(size=(40, 3, 6)).astype(np.float32),
                  rng.integers(0, 3, size=(40, 3, 2)), rng.normal(size=(40, 3)).astype(np.float32),
                  np.zeros((40, 3), bool), rng.normal(size=(3, 6)).astype(np.float32))
    steps = []
    for mode in ("own", "center"):
        agent = ITRPO(0, SPEC, TRPOConfig(hidden=(8,), advantage_normalization=mode), seed=0)
        before = flat_parameters(agent.policy.parameters())
        agent.local_update(batch)
        steps.append(flat_parameters(agent.policy.parameters()) - before)
    assert steps[0].norm() > 0
    # equal up to conjugate gradient's absolute stopping tolerance
    assert float((steps[0] - steps[1]).norm()) < 5e-2 * float(steps[0].norm())
