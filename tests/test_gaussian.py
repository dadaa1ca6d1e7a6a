"""ProductPolicy (Gaussian and MultiDiscrete heads) against torch.distributions and autograd, and
the trust-region agents on continuous and mixed action spaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from p2pmarl.algos.base import Batch
from p2pmarl.algos.itrpo import ITRPO, TRPOConfig
from p2pmarl.algos.matrpo import MATRPO, MATRPOConfig, TrustRegionSolver
from p2pmarl.algos.networks import (
    CategoricalPolicy,
    ProductPolicy,
    flat_parameters,
    make_policy,
    set_flat_parameters,
)
from p2pmarl.algos.trpo import make_categorical_fisher_vector_product, make_fisher_vector_product
from p2pmarl.envs.base import ActionSpace, EnvSpec

BOX = ActionSpace.box([-1.0, 0.0], [1.0, 4.0])
UNBOUNDED = ActionSpace.box([-np.inf], [np.inf])
MULTI = ActionSpace.multi_discrete([3, 2])
HEADS = (BOX, ActionSpace.discrete(3), MULTI, UNBOUNDED)


def tiny(heads=HEADS, seed=0) -> ProductPolicy:
    torch.manual_seed(seed)
    policy = ProductPolicy(3, heads, hidden=(5,)).double()
    with torch.no_grad():  # move away from the near-uniform start so every term matters
        for parameter in policy.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return policy


def reference_distributions(policy: ProductPolicy, observations: torch.Tensor):
    """Per head: a list of (torch distribution, action columns, is_gaussian)."""
    parameters = policy(observations)
    out = policy.body(observations)
    means, log_std = out[:, policy._mean_column], policy.log_std
    per_head: list[list] = [[] for _ in policy.heads]
    for head, column, first, choices in policy.categorical:
        per_head[head].append((Categorical(logits=parameters[:, first : first + choices]),
                               slice(column, column + 1), False))
    for g, head in enumerate(policy.gaussian_heads):
        centre, half = policy.centre[g], policy.half_width[g]
        column = int(policy._gaussian_column[g])
        normal = Normal(centre + half * means[:, g], half * torch.exp(log_std[g]))
        per_head[head].append((normal, slice(column, column + 1), True))
    return per_head


def sample_actions_for(policy: ProductPolicy, observations: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.concatenate(
        [policy.sample(observations, h, rng).astype(np.float64) for h in range(policy.n_heads)],
        axis=1,
    )


def test_log_prob_matches_torch_distributions_including_unclipped_samples():
    policy = tiny()
    observations = torch.randn(7, 3, dtype=torch.float64)
    actions = torch.from_numpy(sample_actions_for(policy.float(), observations.float().numpy()))
    policy = policy.double()
    actions[0, 0] = 3.5  # far outside the Box: the density of the unclipped value
    got = policy.log_prob(observations, actions)
    assert got.shape == (4, 7)
    for head, parts in enumerate(reference_distributions(policy, observations)):
        expected = sum(
            dist.log_prob(actions[:, cols].squeeze(-1) if gaussian
                          else actions[:, cols].squeeze(-1).long())
            for dist, cols, gaussian in parts
        )
        torch.testing.assert_close(got[head], expected)


def test_entropy_matches_torch_distributions():
    policy = tiny()
    observations = torch.randn(5, 3, dtype=torch.float64)
    got = policy.entropy(observations)
    for head, parts in enumerate(reference_distributions(policy, observations)):
        torch.testing.assert_close(got[head], sum(d.entropy() for d, _, _ in parts))


def test_kl_matches_torch_distributions():
    old, new = tiny(seed=0), tiny(seed=0)
    with torch.no_grad():
        for parameter in new.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    observations = torch.randn(6, 3, dtype=torch.float64)
    got = new.kl(observations, old(observations))
    expected = sum(
        kl_divergence(p, q).mean()
        for old_parts, new_parts in zip(
            reference_distributions(old, observations),
            reference_distributions(new, observations), strict=True,
        )
        for (p, _, _), (q, _, _) in zip(old_parts, new_parts, strict=True)
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(new.kl(observations, new(observations)), torch.zeros((),
                               dtype=torch.float64), atol=1e-12, rtol=0)


def explicit_kl_hessian(policy: ProductPolicy, observations: torch.Tensor) -> torch.Tensor:
    theta = flat_parameters(policy.parameters())
    old = policy(observations).detach()
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]

    def kl_of(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape))
            params[name] = flat[offset : offset + size].view(shape)
            offset += size
        parameters = torch.func.functional_call(policy, params, (observations,))
        return policy.kl_from_logits(old, parameters)

    return torch.autograd.functional.hessian(kl_of, theta)


@pytest.mark.parametrize("heads", [HEADS, (BOX,), (UNBOUNDED, BOX)])
def test_fisher_vector_products_match_the_explicit_kl_hessian(heads):
    policy = tiny(heads)
    observations = torch.randn(9, 3, dtype=torch.float64)
    hessian = explicit_kl_hessian(policy, observations)
    vector = torch.randn(hessian.shape[0], dtype=torch.float64)
    analytic = make_categorical_fisher_vector_product(policy, observations, damping=0.0)
    old = policy(observations).detach()
    autograd = make_fisher_vector_product(
        lambda: policy.kl(observations, old), list(policy.parameters()), damping=0.0
    )
    torch.testing.assert_close(analytic(vector), hessian @ vector)
    torch.testing.assert_close(autograd(vector), hessian @ vector)
    g = policy.n_gaussian  # log_std comes first in parameters(): the module's own parameter
    assert next(iter(policy.parameters())) is policy.log_std
    log_std_block = hessian[:g, :g]
    torch.testing.assert_close(log_std_block, 2.0 * torch.eye(policy.n_gaussian,
                                                              dtype=torch.float64))


def test_sampling_follows_the_gaussian_and_the_mode_is_the_mean():
    policy = ProductPolicy(2, (BOX,), hidden=(4,))
    observations = np.zeros((20000, 2), np.float32)
    draws = policy.sample(observations, 0, np.random.default_rng(0))
    assert draws.dtype == np.float32 and draws.shape == (20000, 2)
    with torch.no_grad():
        mean = policy.centre + policy.half_width * policy.body(torch.zeros(1, 2))[0]
        std = policy.half_width * torch.exp(policy.log_std)
    np.testing.assert_allclose(draws.mean(axis=0), mean.numpy(), atol=0.02)
    np.testing.assert_allclose(draws.std(axis=0), std.numpy(), rtol=0.03)
    mode = policy.sample(observations[:2], 0, np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(mode, np.tile(mean.numpy(), (2, 1)), rtol=1e-5)
    discrete = ProductPolicy(2, (MULTI,), hidden=(4,)).sample(
        observations[:50], 0, np.random.default_rng(0)
    )
    assert discrete.dtype == np.int64 and discrete.shape == (50, 2)
    assert discrete.min() >= 0 and (discrete.max(axis=0) < [3, 2]).all()


def test_make_policy_keeps_categorical_for_discrete_heads():
    assert isinstance(make_policy(4, (ActionSpace.discrete(5),) * 3), CategoricalPolicy)
    assert isinstance(make_policy(4, (MULTI,)), ProductPolicy)
    assert isinstance(make_policy(4, (ActionSpace.discrete(5), BOX)), ProductPolicy)


MIXED = EnvSpec(
    name="mixed", n_agents=3, observation_sizes=(4, 3, 5), action_sizes=(2, 5, 2),
    episode_length=10, action_spaces=(BOX, ActionSpace.discrete(5), MULTI),
)


def mixed_batch(agent: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    T, K = 12, 4
    joint = np.concatenate(
        [rng.uniform(-1.5, 1.5, (T, K, 2)), rng.integers(0, 5, (T, K, 1)),
         rng.integers(0, 2, (T, K, 2))], axis=2,
    ).astype(np.float32)
    size = MIXED.observation_sizes[agent]
    return Batch(
        agent_id=agent,
        observations=rng.standard_normal((T, K, size)).astype(np.float32),
        joint_actions=joint,
        rewards=rng.standard_normal((T, K)).astype(np.float32),
        dones=np.zeros((T, K), bool),
        last_observations=rng.standard_normal((K, size)).astype(np.float32),
    )


@pytest.mark.parametrize("agent", [0, 2])
def test_itrpo_takes_a_trust_region_step_on_its_own_columns(agent):
    learner = ITRPO(agent, MIXED, TRPOConfig(hidden=(8,)), seed=0)
    actions = learner.act(np.zeros((4, MIXED.observation_sizes[agent]), np.float32))
    assert actions.shape == (4, 2)
    before = flat_parameters(learner.policy.parameters())
    stats = learner.local_update(mixed_batch(agent))
    assert stats["train/accepted"] == 1.0 and 0 < stats["train/kl"] <= 1.5 * 0.01
    assert not torch.equal(before, flat_parameters(learner.policy.parameters()))


def test_matrpo_has_one_head_per_agent_with_mixed_kinds_and_proposes_log_ratios():
    learner = MATRPO(1, MIXED, [(0, 1), (1, 2)], MATRPOConfig(), seed=0)
    assert isinstance(learner.policy, ProductPolicy) and learner.policy.n_heads == 3
    assert learner.act(np.zeros((4, 3), np.float32)).shape == (4,)  # own head: Discrete(5)
    learner.local_update(mixed_batch(1))
    solver = learner._solver
    assert isinstance(solver, TrustRegionSolver)
    shape = tuple(solver.old_log_prob.shape)
    assert shape == (3, 48)
    log_ratio = solver.propose(np.zeros(shape, np.float32), np.zeros(shape, np.float32), 2)
    assert log_ratio.shape == shape and np.abs(log_ratio).max() > 0
    assert solver.last_stats()["kl"] <= 1.5 * 0.003


def test_set_flat_parameters_round_trips_the_log_std():
    policy = ProductPolicy(2, (BOX,), hidden=(3,))
    flat = flat_parameters(policy.parameters())
    set_flat_parameters(policy.parameters(), flat + 1.0)
    torch.testing.assert_close(policy.log_std.detach(), torch.full((2,), -0.5) + 1.0)
