"""Meta-MAPG's DiCE machinery (p2pmarl.algos.dice) against exact gradients of a tiny IPD.

The tiny game: IPD with horizon H = 2 and tabular policies for both agents; every one of the
4² joint trajectories is enumerated and weighted by its exact probability, so the DiCE
estimator's expectation is computed exactly and must equal the gradient of the exact
meta-value V_1(φ_0) = J^i(φ^i_1(φ_0), φ^{-i}_1(φ_0)) after one exact inner step of eq. (4),
taken by autograd on the closed-form expectation. Stated tolerance: 1e-5 absolute (float64).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from p2pmarl.algos.dice import (
    ChainStep,
    MetaGradientTerms,
    discounted_returns,
    gae_advantages,
    linear_feature_baseline,
    meta_objective,
    opponent_model,
    tabular_policy,
)
from p2pmarl.envs.matrix import IPD_PAYOFF, state_index

H, GAMMA, ALPHA, BETA = 2, 0.9, 0.7, 0.4
TOLERANCE = 1e-5
JOINT = list(itertools.product(range(2), repeat=2))
TRAJECTORIES = list(itertools.product(JOINT, repeat=H))  # 16 joint trajectories


def _arrays():
    states = np.zeros((H, len(TRAJECTORIES)), dtype=np.int64)
    own = np.zeros_like(states)
    peer = np.zeros_like(states)
    for k, trajectory in enumerate(TRAJECTORIES):
        state = 0
        for t, (a, b) in enumerate(trajectory):
            states[t, k], own[t, k], peer[t, k] = state, a, b
            state = state_index((a, b), 2)
    rewards = IPD_PAYOFF[own, peer]  # (H, K, 2)
    return torch.tensor(states), torch.tensor(own), torch.tensor(peer), rewards.astype(np.float64)


STATES, OWN, PEER, REWARDS = _arrays()


def _trajectory_probabilities(phi, psi):
    own_log = torch.log_softmax(phi[STATES], -1).gather(-1, OWN[..., None])[..., 0]
    peer_log = torch.log_softmax(psi[STATES], -1).gather(-1, PEER[..., None])[..., 0]
    return torch.exp((own_log + peer_log).sum(0))


def _value(phi, psi, agent):
    discounted = (GAMMA ** torch.arange(H, dtype=torch.float64))[:, None]
    returns = (discounted * torch.tensor(REWARDS[..., agent])).sum(0)
    return (_trajectory_probabilities(phi, psi) * returns).sum()


def _exact_gradient(phi0, psi0, own_learning=True, peer_learning=True):
    phi = phi0.clone().requires_grad_(True)
    psi = psi0.clone().requires_grad_(True)
    step_own = torch.autograd.grad(_value(phi, psi, 0), phi, create_graph=True)[0]
    peer_phi = phi if peer_learning else phi.detach()
    step_peer = torch.autograd.grad(_value(peer_phi, psi, 1), psi, create_graph=True)[0]
    phi1 = phi + ALPHA * (step_own if own_learning else step_own.detach())
    psi1 = psi + BETA * step_peer
    return torch.autograd.grad(_value(phi1, psi1, 0), phi)[0]


def _chain_step(phi, psi):
    weights = _trajectory_probabilities(phi, psi).detach()
    own_returns = discounted_returns(REWARDS[..., 0], GAMMA) * GAMMA ** np.arange(H)[:, None]
    peer_returns = discounted_returns(REWARDS[..., 1], GAMMA) * GAMMA ** np.arange(H)[:, None]
    return ChainStep(STATES, OWN, PEER, torch.tensor(own_returns), torch.tensor(peer_returns),
                     torch.tensor(own_returns), weights)


def _dice_gradient(phi0, psi0, terms):
    phi = phi0.clone().requires_grad_(True)
    with torch.no_grad():  # the values of the exact inner steps: where τ_φ1 is sampled from
        pass
    p = phi0.clone().requires_grad_(True)
    q = psi0.clone().requires_grad_(True)
    phi1 = p + ALPHA * torch.autograd.grad(_value(p, q, 0), p)[0]
    psi1 = q + BETA * torch.autograd.grad(_value(p, q, 1), q)[0]
    chain = [_chain_step(phi0, psi0), _chain_step(phi1.detach(), psi1.detach())]
    objective, path, _ = meta_objective(
        tabular_policy, [phi], tabular_policy, [[psi0], None], chain, ALPHA, BETA, terms
    )
    assert torch.allclose(path[1][0], phi1, atol=1e-10)  # the chain's values are the exact ones
    return torch.autograd.grad(objective, phi)[0]


@pytest.fixture
def parameters():
    generator = torch.Generator().manual_seed(3)
    phi0 = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    psi0 = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    return phi0, psi0


@pytest.mark.parametrize(("own", "peer"), [(True, True), (True, False), (False, True),
                                           (False, False)])
def test_dice_meta_gradient_matches_the_exact_gradient(parameters, own, peer):
    """Meta-MAPG (both terms), Meta-PG (no peer learning), no own learning, REINFORCE."""
    phi0, psi0 = parameters
    exact = _exact_gradient(phi0, psi0, own_learning=own, peer_learning=peer)
    estimate = _dice_gradient(phi0, psi0, MetaGradientTerms(own_learning=own, peer_learning=peer))
    assert float((estimate - exact).abs().max()) < TOLERANCE


def test_own_and_peer_learning_terms_are_each_nonzero_and_exact(parameters):
    phi0, psi0 = parameters
    full = _dice_gradient(phi0, psi0, MetaGradientTerms())
    peer_term = full - _dice_gradient(phi0, psi0, MetaGradientTerms(peer_learning=False))
    own_term = full - _dice_gradient(phi0, psi0, MetaGradientTerms(own_learning=False))
    exact_full = _exact_gradient(phi0, psi0)
    exact_peer = exact_full - _exact_gradient(phi0, psi0, peer_learning=False)
    exact_own = exact_full - _exact_gradient(phi0, psi0, own_learning=False)
    assert float(exact_peer.abs().max()) > 1e-3 and float(exact_own.abs().max()) > 1e-3
    assert float((peer_term - exact_peer).abs().max()) < TOLERANCE
    assert float((own_term - exact_own).abs().max()) < TOLERANCE


def test_opponent_model_recovers_a_tabular_peer():
    """Algorithm 4 on 64 trajectories of 150 steps of a known tabular peer (all 5 IPD states
    visited): max |P̂(C|s) − P(C|s)| < 0.03 (stated error)."""
    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 0.8, size=5)
    T, K = 150, 64
    states = np.zeros((T, K), dtype=np.int64)
    actions = np.zeros((T, K), dtype=np.int64)
    state = np.zeros(K, dtype=np.int64)
    for t in range(T):
        states[t] = state
        actions[t] = (rng.random(K) >= true[state]).astype(np.int64)  # 0 = C with P(C|s)
        other = rng.integers(0, 2, size=K)
        state = 1 + other * 2 + actions[t]
    logits = opponent_model(states, actions, 5, 2)
    recovered = np.exp(logits)[:, 0]
    assert np.abs(recovered - true).max() < 0.03


def test_linear_feature_baseline_fits_a_linear_return():
    T, K = 20, 4
    features = np.zeros((T, K, 3))
    features[..., 0] = 1.0
    returns = np.broadcast_to(2.0 + 0.5 * np.arange(T)[:, None] / 100.0, (T, K))
    baseline = linear_feature_baseline(features, returns)
    assert np.abs(baseline - returns).max() < 1e-3


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    rng = np.random.default_rng(1)
    rewards, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    advantages = gae_advantages(rewards, values, 0.9, 1.0)
    expected = (0.9 ** np.arange(6)[:, None]) * (discounted_returns(rewards, 0.9) - values)
    assert np.allclose(advantages, expected, atol=1e-5)


def test_gae_without_discount_weighting_leaves_out_gamma_to_the_t():
    rng = np.random.default_rng(2)
    rewards, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    weighted = gae_advantages(rewards, values, 0.9, 0.95)
    plain = gae_advantages(rewards, values, 0.9, 0.95, discount_weighted=False)
    assert np.allclose(weighted, (0.9 ** np.arange(6)[:, None]) * plain, atol=1e-5)


def test_gradient_of_a_learned_inner_rate_matches_the_exact_one(parameters):
    """Section 5's dynamic inner learning rate: d/dα^i_0 of the exact meta-value after one
    exact inner step equals the DiCE estimate through ``inner_lr=[α]`` (1e-5)."""
    phi0, psi0 = parameters
    alpha = torch.tensor(ALPHA, dtype=torch.float64, requires_grad=True)
    p = phi0.clone().requires_grad_(True)
    q = psi0.clone().requires_grad_(True)
    step_own = torch.autograd.grad(_value(p, q, 0), p, create_graph=True)[0]
    step_peer = torch.autograd.grad(_value(p, q, 1), q, create_graph=True)[0]
    exact = torch.autograd.grad(_value(p + alpha * step_own, q + BETA * step_peer, 0), alpha)[0]
    phi1 = (phi0 + ALPHA * step_own).detach()
    psi1 = (psi0 + BETA * step_peer).detach()
    chain = [_chain_step(phi0, psi0), _chain_step(phi1, psi1)]
    rate = torch.tensor(ALPHA, dtype=torch.float64, requires_grad=True)
    objective, _, _ = meta_objective(tabular_policy, [phi0.clone().requires_grad_(True)],
                                     tabular_policy, [[psi0], None], chain, [rate], BETA,
                                     MetaGradientTerms())
    estimate = torch.autograd.grad(objective, rate)[0]
    assert abs(float(exact)) > 1e-3
    assert abs(float(estimate - exact)) < TOLERANCE
