"""Meta-MAPG's math (Kim et al., Theorem 1 eq. 6, Algorithms 1 and 3-4), in pure functions.

DiCE (Foerster et al., 2018c) turns log-probabilities into objectives whose every derivative is
a score-function estimate: :func:`magic_box`. The inner-loop update of eq. (4) is taken on a DiCE
objective with ``create_graph`` (:func:`inner_step`), so the adapted parameters φ_{ℓ+1} stay
differentiable functions of the meta-agent's initial parameters φ^i_0; :func:`meta_objective`
chains those updates over the Markov chain of joint policies and sums the DiCE objectives of the
chain's trajectories, so that one backward pass gives eq. (6): the current-policy term, the
own-learning term (through φ^i_ℓ) and the peer-learning term (through φ^{-i}_ℓ), each of which
can be switched off (Meta-PG, the no-own-learning ablation, REINFORCE).

Every batch is T×K: T = H steps of K trajectories; ``weights`` (K,) are 1/K for Monte-Carlo
samples, or the exact trajectory probabilities when a test enumerates every trajectory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PolicyFn = Callable[[Sequence[Tensor], Tensor], Tensor]
"""``policy(params, states)`` → log-probabilities (T, K, A) for int64 states (T, K)."""


def magic_box(x: Tensor) -> Tensor:
    """DiCE's 🞖(x) = exp(x − ⊥x): value 1, ∇🞖(x) = 🞖(x)∇x (Foerster et al., 2018c)."""
    return torch.exp(x - x.detach())


def dice_objective(log_probs: Tensor, advantages: Tensor, weights: Tensor) -> Tensor:
    """Σ_k w_k Σ_t (🞖(W_t) − 🞖(W_{t−1})) Â_t, W_t = Σ_{t'≤t} log π (stochastic nodes up to t).

    ``log_probs`` (T, K): the log-probabilities of every stochastic node of step t (for a joint
    objective both agents' actions); ``advantages`` (T, K), detached, already discounted
    (Â_t = γ^t A_t). Its gradient is Σ_t ∇log π_t Â_t, the policy gradient with a baseline;
    with Â_t = Σ_{t'≥t} γ^{t'} r_{t'} (no baseline) it differs from DiCE's Σ_t 🞖(W_t) γ^t r_t
    by a constant, so every derivative is DiCE's unbiased one; with a baseline the first
    derivative is unbiased and higher ones approximate (the "DiCE with baseline" of Mao et al.).
    """
    dependencies = torch.cumsum(log_probs, dim=0)
    previous = torch.cat([torch.zeros_like(dependencies[:1]), dependencies[:-1]], dim=0)
    per_step = (magic_box(dependencies) - magic_box(previous)) * advantages.detach()
    return (per_step.sum(dim=0) * weights).sum()


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = Σ_{t'≥t} γ^{t'−t} r_{t'} per trajectory, (T, K); no bootstrap (fixed horizon)."""
    returns = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def linear_feature_baseline(
    features: np.ndarray, returns: np.ndarray, regularization: float = 1e-5
) -> np.ndarray:
    """Duan et al. (2016a)'s linear feature baseline b(s_t, t), fit by ridge regression to the
    returns of this batch: features [s, s², t, t², t³, 1] with t scaled by 1/100. ``features``
    (T, K, d) float, ``returns`` (T, K); returns b, (T, K)."""
    T, K, _ = features.shape
    time = np.broadcast_to((np.arange(T) / 100.0)[:, None, None], (T, K, 1))
    s = np.clip(features, -10, 10)
    design = np.concatenate([s, s**2, time, time**2, time**3, np.ones((T, K, 1))], axis=2)
    flat = design.reshape(T * K, -1)
    target = returns.reshape(T * K)
    gram = flat.T @ flat
    for scale in (1.0, 10.0, 100.0, 1000.0):  # rllab: raise the ridge until it solves
        try:
            coefficients = np.linalg.solve(
                gram + regularization * scale * np.eye(len(gram)), flat.T @ target
            )
            break
        except np.linalg.LinAlgError:
            continue
    else:
        coefficients = np.zeros(flat.shape[1])
    return (flat @ coefficients).reshape(T, K)


def inner_advantages(
    features: np.ndarray, rewards: np.ndarray, gamma: float
) -> np.ndarray:
    """Â_t = γ^t (R_t − b(s_t, t)) of the inner-loop policy gradient (eq. 4) with the linear
    feature baseline (section 5, appendix C.2), float32 (T, K)."""
    returns = discounted_returns(rewards, gamma)
    baseline = linear_feature_baseline(features, returns)
    discount = gamma ** np.arange(len(rewards))[:, None]
    return (discount * (returns - baseline)).astype(np.float32)


def gae_advantages(
    rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float,
    discount_weighted: bool = True,
) -> np.ndarray:
    """Â_t = γ^t A^GAE_t (Schulman et al., 2016) for fixed-horizon trajectories (V after the last
    step is 0), from rewards and values (T, K); float32 (T, K). The meta-optimization's
    advantages (appendix C.2). ``discount_weighted=False`` leaves out the γ^t factor (Â_t =
    A^GAE_t): every step of τ weighs alike, as in the usual practical policy gradient."""
    T = len(rewards)
    advantages = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(T - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    if discount_weighted:
        advantages = gamma ** np.arange(T)[:, None] * advantages
    return advantages.astype(np.float32)


def action_log_probs(log_probs: Tensor, actions: Tensor) -> Tensor:
    """log π(a_t | s_t) (T, K) from the policy's (T, K, A) log-probabilities."""
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def inner_step(
    params: Sequence[Tensor], objective: Tensor, lr: float | Tensor, create_graph: bool
) -> list[Tensor]:
    """One inner-loop ascent step of eq. (4): φ + α ∇_φ objective. With ``create_graph`` the
    result stays a differentiable function of everything the objective depends on."""
    grads = torch.autograd.grad(objective, list(params), create_graph=create_graph,
                                retain_graph=True, allow_unused=True)
    return [p + lr * (torch.zeros_like(p) if g is None else g) for p, g in zip(params, grads,
                                                                                 strict=True)]


def tabular_policy(params: Sequence[Tensor], states: Tensor) -> Tensor:
    """A tabular policy: params[0] are logits (S, A); log π(·|s) for states (T, K)."""
    return torch.log_softmax(params[0][states], dim=-1)


def opponent_model(states: np.ndarray, actions: np.ndarray, n_states: int, n_actions: int,
                   prior: float = 0.5) -> np.ndarray:
    """Maximum-likelihood tabular peer (Algorithm 4, eq. 15) from its observed (state, action)
    pairs: logits log((n_{s,a} + c)/(n_s + cA)), the maximizer of Σ_t log π(a_t|s_t) with c
    pseudo-counts per action (c → 0 is the plain maximum likelihood; c keeps unseen states
    uniform and logits finite). Returns float32 (S, A)."""
    counts = np.full((n_states, n_actions), prior, dtype=np.float64)
    np.add.at(counts, (states.reshape(-1), actions.reshape(-1)), 1.0)
    return np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class ChainStep:
    """What the meta-agent keeps of chain step ℓ: K trajectories τ_φℓ under the joint policy."""

    states: Tensor
    """s_t, int64 (T, K)."""
    own_actions: Tensor
    """a^i_t, int64 (T, K)."""
    peer_actions: Tensor
    """a^{-i}_t, int64 (T, K)."""
    own_inner_advantages: Tensor
    """Â^i_t of the meta-agent's own inner update (linear baseline), float32 (T, K)."""
    peer_inner_advantages: Tensor
    """Â^{-i}_t of the peer's inner update from the peer's rewards (linear baseline)."""
    outer_advantages: Tensor
    """Â^i_t of the meta-objective (GAE with the learned value function)."""
    weights: Tensor
    """w_k, float32 (K,): 1/K, or trajectory probabilities in an enumeration."""


@dataclass(frozen=True)
class MetaGradientTerms:
    """Which terms of eq. (6) the meta-gradient keeps (the baselines are settings of these)."""

    own_learning: bool = True
    """∇_{φ_0} through the meta-agent's adapted parameters φ^i_{ℓ+1} (Meta-PG has it)."""
    peer_learning: bool = True
    """∇_{φ_0} through the peer's adapted parameters φ^{-i}_{ℓ+1} (Meta-MAPG only, Theorem 1)."""


def straight_through(value: Sequence[Tensor], leaf: Sequence[Tensor]) -> list[Tensor]:
    """Tensors equal to ``value`` whose gradient goes to ``leaf`` unchanged (∂/∂leaf = I): the
    current policy's gradient, evaluated at adapted parameters, without the own-learning term."""
    return [v.detach() + (p - p.detach()) for v, p in zip(value, leaf, strict=True)]


def meta_objective(
    policy: PolicyFn,
    initial: Sequence[Tensor],
    peer_policy: PolicyFn,
    peer_bases: Sequence[Sequence[Tensor] | None],
    chain: Sequence[ChainStep],
    inner_lr: float | Sequence[Tensor],
    peer_lr: float,
    terms: MetaGradientTerms,
    first_step_in_objective: bool = False,
) -> tuple[Tensor, list[list[Tensor]], list[list[Tensor]]]:
    """The meta-objective Σ_{ℓ=1}^{L} DiCE(τ_φℓ) over the chain, with φ^i_{ℓ+1} and φ^{-i}_{ℓ+1}
    computed by differentiable inner steps (Algorithm 1 line 7, Algorithm 3 lines 8-10).

    ``initial``: φ^i_0 (leaves requiring grad). ``peer_bases[ℓ]``: the value of the peer
    parameters that the peer's inner step from τ_φℓ starts from — the opponent model fitted on
    τ_φℓ (decentralized, Algorithm 3 line 8), whose gradient path is the chain's modelled
    φ^{-i}_ℓ — or None at every ℓ ≥ 1 for the centralized form, where the chain continues from
    the previous step's result (``peer_bases[0]`` is then the peer's true φ^{-i}_0). With a perfect
    opponent model both forms give the same objective and gradient.
    ``inner_lr``: the meta-agent's α^i, one number, or one (learned) rate α^i_ℓ per inner step
    as tensors, through which the objective is differentiable too (section 5's dynamic inner
    learning rates). Returns the objective and the parameters φ^i_ℓ and φ^{-i}_ℓ along the chain
    (ℓ = 0..L).
    ``first_step_in_objective`` adds DiCE(τ_φ0) itself (not part of eq. 2; used by tests).
    """
    own = list(initial)
    own_path = [own]
    peer = _peer_start(peer_bases[0], terms)
    peer_path = [peer]
    objective = torch.zeros(())
    for index, step in enumerate(chain):
        own_used = own if terms.own_learning else straight_through(own, initial)
        own_log = action_log_probs(policy(own_used, step.states), step.own_actions)
        peer_log = action_log_probs(peer_policy(peer, step.states), step.peer_actions)
        if not terms.peer_learning:
            peer_log = peer_log.detach()
        if index > 0 or first_step_in_objective:
            objective = objective + dice_objective(
                own_log + peer_log, step.outer_advantages, step.weights
            )
        if index + 1 == len(chain):
            break
        joint = own_log + peer_log
        rate = inner_lr if isinstance(inner_lr, int | float) else inner_lr[index]
        own = inner_step(
            own_used, dice_objective(joint, step.own_inner_advantages, step.weights), rate,
            create_graph=terms.own_learning,
        )
        if not terms.own_learning:
            own = [p.detach() for p in own]
        own_path.append(own)
        peer = _peer_update(peer_policy, peer, peer_bases, index, step, own_log, peer_lr, terms)
        peer_path.append(peer)
    return objective, own_path, peer_path


def _peer_start(base: Sequence[Tensor] | None, terms: MetaGradientTerms) -> list[Tensor]:
    if base is None:
        raise ValueError("peer_bases[0] must hold the peer's parameters for τ_φ0")
    return [p.detach().clone().requires_grad_(True) for p in base]


def _peer_update(
    peer_policy: PolicyFn,
    peer: list[Tensor],
    peer_bases: Sequence[Sequence[Tensor] | None],
    index: int,
    step: ChainStep,
    own_log: Tensor,
    peer_lr: float,
    terms: MetaGradientTerms,
) -> list[Tensor]:
    """φ^{-i}_{ℓ+1} = φ^{-i}_ℓ + α^{-i}∇ DiCE(τ_φℓ; peer's advantages) (eq. 4 for the peer), from
    the chain's own φ^{-i}_ℓ (centralized) or, decentralized, from the opponent model of τ_φℓ
    as its value with the chain's φ^{-i}_ℓ as its gradient path (:func:`straight_through`): the
    model says where the peer is, and the sequential dependence of φ^{-i}_{1:L} on φ^i_0 is kept
    (appendix B: "save the sequential dependencies between φ^i_0 and ... φ^{-i}_{1:L}")."""
    base = peer_bases[index]
    start = peer if base is None else straight_through(base, peer)
    if not start[0].requires_grad:
        start = [p.detach().clone().requires_grad_(True) for p in start]
    peer_log = action_log_probs(peer_policy(start, step.states), step.peer_actions)
    own_dependency = own_log if terms.peer_learning else own_log.detach()
    objective = dice_objective(own_dependency + peer_log, step.peer_inner_advantages,
                               step.weights)
    updated = inner_step(start, objective, peer_lr, create_graph=terms.peer_learning)
    return updated if terms.peer_learning else [p.detach().requires_grad_(True) for p in updated]
