"""Trust-region numerics shared by I-TRPO, C-TRPO and MATRPO.

GAE (MATRPO eqs. (18)-(19)), the natural-gradient solve of TRPO (Schulman et al., 2015,
appendix C: conjugate gradient on Fisher-vector products, then a backtracking line search), a
generic trust-region step and the value fit. Nothing here knows about peers or the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import Batch
from p2pmarl.algos.networks import (
    Policy,
    ValueNet,
    flat_gradient,
    flat_parameters,
    set_flat_parameters,
)

FisherVectorProduct = Callable[[Tensor], Tensor]
"""v ↦ (H + damping·I)·v for the Hessian H of the mean KL at θ_old."""


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    last_values: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    lam: float,
    bootstrap_timeouts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimates and λ-returns over a (T, K) rollout.

    MATRPO eqs. (18)-(19) (Schulman et al., 2016): ε_t = r_t + γ V(o_{t+1}) − V(o_t) and
    A_t = Σ_l (γλ)^l ε_{t+l}, computed backwards as A_t = ε_t + γλ A_{t+1}. ``dones[t]`` means
    the episode ended with step t: there V(o_{t+1}) and A_{t+1} are dropped, so nothing is
    bootstrapped across an episode boundary. After the last row, ``last_values`` = V(o_T)
    bootstraps episodes still running.

    ``bootstrap_timeouts`` treats an episode end as a time-out rather than a terminal state
    (Pardo et al., 2018, "Time Limits in Reinforcement Learning"): the step that ended the
    episode gets γ·V(o_t) in place of γ·V(o_{t+1}) (the batch holds only the observation after
    the reset, not the one the truncated episode ended in; one step later it is nearly the same
    state), while λ-recursion still stops at the boundary. MPE episodes end only by their fixed
    horizon, which V(o) cannot see (o holds no time): treated as terminal, the last ~1/(1−γλ)
    steps of every episode get an advantage of about −V ≈ +130 on spread whatever the action,
    noise that swamps the ~1-per-step coverage signal (measured: C-TRPO −274 → −290 in 10
    iterations of 10k steps as terminal, −274 → −202 with time-out bootstrapping).

    Returns float32 advantages A and returns A + V, both (T, K).
    """
    rewards64 = np.asarray(rewards, dtype=np.float64)
    values64 = np.asarray(values, dtype=np.float64)
    ends = np.asarray(dones, dtype=np.float64)
    continues = 1.0 - ends
    next_values = np.concatenate([values64[1:], np.asarray(last_values, np.float64)[None]])
    next_values = next_values * continues
    if bootstrap_timeouts:
        next_values += values64 * ends
    deltas = rewards64 + gamma * next_values - values64
    advantages = np.empty_like(deltas)
    running = np.zeros(deltas.shape[1:], dtype=np.float64)
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * continues[t] * running
        advantages[t] = running
    return advantages.astype(np.float32), (advantages + values64).astype(np.float32)


ADVANTAGE_NORMALIZATIONS = ("own", "center", "none")
"""``own``: (A − mean A)/std A; ``center``: A − mean A; ``none``: raw A (own statistics only)."""


def normalize(advantages: np.ndarray, eps: float = 1e-8, mode: str = "own") -> np.ndarray:
    """(A − mean A) / (std A + eps) with the agent's own statistics (BRIEF: never pooled).

    ``mode="center"`` only subtracts the own mean, keeping the reward's scale: MATRPO's objective
    is the sum of the agents' advantages (eqs. (6)-(8)), and dividing each by its own std
    reweights the agents (on spread the collision-only agents' noise by ~30× against agent 0's
    coverage signal). The mean still matters: a TRPO step is invariant to the scale of A but not
    to its offset, whose score-function term Σ_m ∇log π is pure sampling noise (measured on
    spread, C-TRPO 10×10k: −274 → −273 uncentered, −202 centered). ``mode="none"``: raw A.
    """
    if mode == "none":
        return np.asarray(advantages, dtype=np.float32)
    centered = advantages - advantages.mean()
    if mode == "center":
        return centered.astype(np.float32)
    return (centered / (advantages.std() + eps)).astype(np.float32)


def conjugate_gradient(
    fvp: FisherVectorProduct,
    b: Tensor,
    iterations: int = 10,
    residual_tol: float = 1e-10,
) -> Tensor:
    """Approximate solution of H x = b for symmetric positive definite H given only v ↦ Hv.

    TRPO (Schulman et al., 2015, appendix C) computes the search direction s = H⁻¹g this way,
    so H (the KL Hessian) is never formed; MATRPO eq. (22) uses the same H̄⁻¹V. Starts at x=0
    and stops after ``iterations`` or when the squared residual falls below ``residual_tol``.
    """
    return solve_conjugate_gradient(fvp, b, iterations, residual_tol=residual_tol)[0]


def solve_conjugate_gradient(
    fvp: FisherVectorProduct,
    b: Tensor,
    iterations: int,
    *,
    initial: Tensor | None = None,
    relative_tolerance: float = 0.0,
    residual_tol: float = 1e-10,
) -> tuple[Tensor, float]:
    """:func:`conjugate_gradient` from an ``initial`` guess; also returns ‖b − Hx‖/‖b‖.

    Stops after ``iterations``, or once the relative residual is at most ``relative_tolerance``
    (checked before every iteration, so a good warm start costs one product), or when the squared
    residual falls below ``residual_tol``.
    """
    x = torch.zeros_like(b) if initial is None else initial.clone()
    residual = b.clone() if initial is None else b - fvp(x)
    direction = residual.clone()
    residual_sq = residual.dot(residual)
    b_norm = float(b.norm()) or 1.0
    for _ in range(iterations):
        if residual_sq <= residual_tol or float(residual_sq.sqrt()) <= relative_tolerance * b_norm:
            break
        product = fvp(direction)
        alpha = residual_sq / direction.dot(product)
        x += alpha * direction
        residual -= alpha * product
        new_residual_sq = residual.dot(residual)
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x, float(residual_sq.sqrt()) / b_norm


def make_fisher_vector_product(
    kl_fn: Callable[[], Tensor],
    parameters: Sequence[Tensor],
    damping: float,
) -> FisherVectorProduct:
    """Build v ↦ (∇²_θ KL(π_old‖π_θ)|_θ + damping·I) v for the current parameters θ.

    The Hessian of the mean KL at θ = θ_old is the Fisher information matrix (TRPO, appendix
    C). ∇_θ KL is built once with ``create_graph=True``; each product is then one backward pass
    of gᵀv through that retained graph (Pearlmutter's double backward), so the ~10 conjugate
    gradient iterations of a solve share the forward pass. The graph holds the live parameters:
    the products fail once they are modified in place, so build a new one after a step (or use
    :func:`make_categorical_fisher_vector_product`, which holds a snapshot). Damping keeps the
    system well conditioned (the paper uses 0.01).
    """
    parameters = list(parameters)
    kl_gradient = flat_gradient(kl_fn(), parameters, create_graph=True)

    def fvp(vector: Tensor) -> Tensor:
        product = flat_gradient(kl_gradient.dot(vector), parameters, retain_graph=True)
        return product + damping * vector

    return fvp


def make_categorical_fisher_vector_product(
    policy: Policy,
    observations: Tensor,
    damping: float,
) -> FisherVectorProduct:
    """Build v ↦ (Jᵀ F_z J + damping·I) v for a :class:`CategoricalPolicy` at its current θ.

    TRPO (Schulman et al., 2015, appendix C.1) computes the Fisher analytically as Jᵀ F_z J,
    J = ∂logits/∂θ and F_z = (1/M)·blockdiag_{m,n}(diag p − p pᵀ) the Hessian of the mean KL
    (summed over heads) with respect to the logits. At θ = θ_old the gradient of the KL in the
    logits vanishes, so this equals the Hessian of :meth:`CategoricalPolicy.kl` exactly, as
    built by :func:`make_fisher_vector_product`, but costs about 40 % less: Jv is one backward
    pass through the retained graph of a vector-Jacobian product (the double-vjp trick) and Jᵀw
    one ordinary backward pass, instead of a double backward through the KL.

    The graph is built on a snapshot of θ, so the product stays valid while the policy's
    parameters move: MATRPO builds it once per ADMM phase at θ_old and reuses it for every
    θ step of the phase (each restarts from θ_old).

    The same holds for a :class:`~p2pmarl.algos.networks.ProductPolicy`: its "logits" are all
    distribution parameters (logits, Gaussian means μ and the state-independent log-std σ
    repeated on every row) and F_z is diagonal in μ (exp(−2σ)) and σ (2); J maps θ's σ vector
    to every row, so Jᵀ F_z J sums the rows' σ blocks, the Hessian of the mean KL in σ.
    """
    names = [name for name, _ in policy.named_parameters()]
    snapshot = [
        parameter.detach().clone().requires_grad_(True) for parameter in policy.parameters()
    ]
    logits = functional_call(policy, dict(zip(names, snapshot, strict=True)), (observations,))
    frozen_logits = logits.detach()
    scale = 1.0 / observations.shape[0]
    dual = torch.zeros_like(logits, requires_grad=True)
    transpose_product = flat_gradient((logits * dual).sum(), snapshot, create_graph=True)

    def fvp(vector: Tensor) -> Tensor:
        (tangent,) = torch.autograd.grad(transpose_product, dual, vector, retain_graph=True)
        weights = policy.logit_fisher_product(frozen_logits, tangent) * scale
        product = flat_gradient((logits * weights).sum(), snapshot, retain_graph=True)
        return product + damping * vector

    return fvp


def fisher_vector_product(
    kl_fn: Callable[[], Tensor],
    parameters: Sequence[Tensor],
    vector: Tensor,
    damping: float,
) -> Tensor:
    """(H + damping·I)·v once; for repeated products use :func:`make_fisher_vector_product`."""
    return make_fisher_vector_product(kl_fn, parameters, damping)(vector)


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of :func:`backtracking_line_search`."""

    fraction: float
    """Accepted fraction of the full step; 0 when no candidate was accepted."""
    steps: int
    """Candidates evaluated."""
    loss: float
    """Loss at the accepted step (the loss before the step when none was accepted)."""
    kl: float
    """Mean KL at the accepted step (0 when none was accepted)."""


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_before: float,
    accept_kl: float,
    max_backtracks: int = 10,
) -> LineSearchResult:
    """Try the step fractions 1, 1/2, 1/4, ... and accept the first that lowers the loss
    within the KL bound.

    TRPO (Schulman et al., 2015, appendix C) and MATRPO's θ step (eq. (22) with a line search):
    a candidate is accepted when its loss is below ``loss_before`` and its mean KL is at most
    ``accept_kl`` (the practical solve uses 1.5·δ). ``evaluate(fraction)`` sets the parameters
    to θ_old + fraction·full_step and returns (loss, kl) there; it is the caller's objective, so
    MATRPO passes its augmented Lagrangian (eq. (21)) and TRPO the negative surrogate. The
    parameters are left at the last candidate tried: restore θ_old when nothing is accepted.
    """
    for step in range(max_backtracks):
        fraction = 0.5**step
        loss, kl = evaluate(fraction)
        if math.isfinite(loss) and loss < loss_before and kl <= accept_kl:
            return LineSearchResult(fraction=fraction, steps=step + 1, loss=loss, kl=kl)
    return LineSearchResult(fraction=0.0, steps=max_backtracks, loss=loss_before, kl=0.0)


@dataclass(frozen=True)
class TRPOStats:
    """What one :func:`trpo_step` did."""

    kl: float
    """Mean KL(π_old‖π) after the step."""
    surrogate_improvement: float
    """Line-search loss before minus after (> 0 when a step was taken)."""
    expected_improvement: float
    """First-order prediction of the improvement for the full step, gᵀ·step."""
    line_search_steps: int
    """Candidates the line search evaluated."""
    step_fraction: float
    """Accepted fraction of the full natural-gradient step (0 if rejected)."""
    accepted: bool
    """Whether the parameters moved."""
    grad_norm: float
    """‖∇_θ loss‖ at θ_old."""

    def as_metrics(self, prefix: str = "train/") -> dict[str, float]:
        """Flat float metrics with namespaced keys (``train/kl``, ...)."""
        return {
            f"{prefix}kl": self.kl,
            f"{prefix}surrogate_improvement": self.surrogate_improvement,
            f"{prefix}expected_improvement": self.expected_improvement,
            f"{prefix}line_search_steps": float(self.line_search_steps),
            f"{prefix}step_fraction": self.step_fraction,
            f"{prefix}accepted": float(self.accepted),
            f"{prefix}grad_norm": self.grad_norm,
        }


def trpo_step(
    parameters: Sequence[Tensor],
    loss_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    *,
    max_kl: float,
    damping: float = 0.01,
    cg_iterations: int = 10,
    max_backtracks: int = 10,
    accept_ratio: float = 1.5,
    line_search_loss_fn: Callable[[], Tensor] | None = None,
    fvp: FisherVectorProduct | None = None,
) -> TRPOStats:
    """One trust-region step from the current parameters θ_old, in place.

    TRPO (Schulman et al., 2015, appendix C) / MATRPO eq. (22): g = −∇_θ loss at θ_old,
    s = H⁻¹g by conjugate gradient, full step sqrt(2δ / gᵀs)·s (the step that reaches
    ½ sᵀHs = δ), then a backtracking line search accepting KL ≤ accept_ratio·δ.

    ``loss_fn`` and ``kl_fn`` evaluate at the current parameters; ``kl_fn`` is
    KL(π_old‖π_θ) against frozen old logits. ``line_search_loss_fn`` (default ``loss_fn``) is the
    objective the line search must lower: MATRPO takes the gradient of its linear term but
    accepts on the augmented Lagrangian (eq. (21)). ``fvp`` passes a product built at the same
    θ_old, e.g. one :func:`make_categorical_fisher_vector_product` shared by the ADMM
    activations of a phase; by default one is built from ``kl_fn``. If no candidate is accepted
    the parameters are restored to θ_old.
    """
    parameters = list(parameters)
    search_loss_fn = loss_fn if line_search_loss_fn is None else line_search_loss_fn
    theta_old = flat_parameters(parameters)
    loss = loss_fn()
    gradient = -flat_gradient(loss, parameters)
    grad_norm = float(gradient.norm())
    if line_search_loss_fn is None:
        loss_before = float(loss.detach())
    else:
        with torch.no_grad():
            loss_before = float(search_loss_fn())
    rejected = TRPOStats(
        kl=0.0,
        surrogate_improvement=0.0,
        expected_improvement=0.0,
        line_search_steps=0,
        step_fraction=0.0,
        accepted=False,
        grad_norm=grad_norm,
    )
    if not grad_norm > 0.0 or not math.isfinite(grad_norm):
        return rejected
    if fvp is None:
        fvp = make_fisher_vector_product(kl_fn, parameters, damping)
    direction = conjugate_gradient(fvp, gradient, cg_iterations)
    curvature = float(gradient.dot(direction))
    if not curvature > 0.0 or not math.isfinite(curvature):
        return rejected
    full_step = math.sqrt(2.0 * max_kl / curvature) * direction

    def evaluate(fraction: float) -> tuple[float, float]:
        set_flat_parameters(parameters, theta_old + fraction * full_step)
        with torch.no_grad():
            return float(search_loss_fn()), float(kl_fn())

    result = backtracking_line_search(evaluate, loss_before, accept_ratio * max_kl, max_backtracks)
    if result.fraction == 0.0:
        set_flat_parameters(parameters, theta_old)
    return TRPOStats(
        kl=result.kl,
        surrogate_improvement=loss_before - result.loss,
        expected_improvement=float(gradient.dot(full_step)),
        line_search_steps=result.steps,
        step_fraction=result.fraction,
        accepted=result.fraction > 0.0,
        grad_norm=grad_norm,
    )


def surrogate_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor) -> Tensor:
    """−L(θ) = −(1/M) Σ_m exp(log_ratio_m)·A_m, the negated TRPO surrogate objective.

    log_ratio = log π_θ(a|o) − log π_θold(a|o) (MATRPO's ℓ); its gradient at θ_old is the
    policy gradient. ``log_prob`` is (M,) or (n_heads, M); heads are summed.
    """
    log_ratio = log_prob - old_log_prob.detach()
    return -(torch.exp(log_ratio) * advantages).mean(dim=-1).sum()


def fit_value(
    value_net: nn.Module,
    optimizer: Adam,
    observations: Tensor,
    returns: Tensor,
    epochs: int,
    minibatch_size: int,
    rng: np.random.Generator,
) -> float:
    """Regress V(o) on the λ-returns by minibatch Adam; returns the final full-batch MSE
    (in standardized units for a :class:`ValueNet`, whose statistics are updated first).

    The target of eq. (19)'s V is the return A + V_old (Schulman et al., 2016, section 5).
    ``rng`` shuffles the minibatches so the fit is reproducible from the agent's seed.
    """
    standardize = isinstance(value_net, ValueNet)
    if standardize:
        value_net.update_statistics(returns)
        returns = (returns - value_net.shift) / value_net.scale
    predict = value_net.standardized if standardize else value_net
    n_samples = observations.shape[0]
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n_samples))
        for start in range(0, n_samples, minibatch_size):
            index = order[start : start + minibatch_size]
            loss = torch.mean((predict(observations[index]) - returns[index]) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(torch.mean((predict(observations) - returns) ** 2))


@dataclass(frozen=True)
class OnPolicyData:
    """One agent's rollout flattened to M = T·K samples, with its own advantages."""

    observations: Tensor
    """Own observations o^i_m, float32 (M, obs_dim)."""
    joint_actions: Tensor
    """Joint actions a_m, (M, W): int64, or float32 when any action space is a Box (see
    :class:`~p2pmarl.algos.base.Batch`)."""
    advantages: Tensor
    """Own GAE advantages normalized with own statistics (:func:`normalize`), float32 (M,)."""
    returns: Tensor
    """λ-returns, the value-fit targets, float32 (M,)."""
    raw_advantage_std: float
    """Standard deviation of the advantages before normalization."""


def estimate_advantages(
    value_net: nn.Module,
    observations: np.ndarray,
    last_observations: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    lam: float,
    bootstrap_timeouts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """V(o) for a (T, K, obs) rollout and its bootstrap row in one forward pass, then :func:`gae`.

    Returns (advantages, returns), both (T, K), unnormalized.
    """
    steps, copies = rewards.shape
    stacked = np.concatenate(
        [observations.reshape(steps * copies, -1), last_observations.reshape(copies, -1)]
    )
    with torch.no_grad():
        values = value_net(torch.as_tensor(stacked, dtype=torch.float32)).numpy()
    return gae(
        rewards,
        values[: steps * copies].reshape(steps, copies),
        values[steps * copies :],
        dones,
        gamma,
        lam,
        bootstrap_timeouts,
    )


def prepare_on_policy_data(
    batch: Batch,
    value_net: nn.Module,
    gamma: float,
    lam: float,
    normalization: str = "own",
    bootstrap_timeouts: bool = False,
) -> OnPolicyData:
    """Agent i's own GAE (eqs. (18)-(19)) from its own reward, normalized with its own
    statistics (:func:`normalize`, ``mode=normalization``), and the batch flattened for the
    policy and value updates."""
    advantages, returns = estimate_advantages(
        value_net,
        batch.observations,
        batch.last_observations,
        batch.rewards,
        batch.dones,
        gamma,
        lam,
        bootstrap_timeouts,
    )
    observations = batch.observations.reshape(batch.n_samples, -1)
    joint_actions = batch.joint_actions.reshape(batch.n_samples, -1)
    integer = joint_actions.dtype.kind in "iu"  # float32 when any action space is a Box
    return OnPolicyData(
        observations=torch.as_tensor(observations, dtype=torch.float32),
        joint_actions=torch.as_tensor(
            joint_actions, dtype=torch.int64 if integer else torch.float32
        ),
        advantages=torch.from_numpy(
            normalize(advantages.reshape(-1), mode=normalization)
        ),
        returns=torch.from_numpy(returns.reshape(-1)),
        raw_advantage_std=float(advantages.std()),
    )
