"""MATRPO (Li & He): TRPO as a consensus problem over the communication graph, solved by
asynchronous ADMM in which neighbours exchange only log policy ratios.

Agent i's policy maps its own observation o^i to a distribution over every agent's action (N
categorical heads, π^i(a|o^i) = Π_n π^i(a^n|o^i)); it acts with head i. Its value net sees only
o^i and is fitted to its own reward. Per training iteration: own GAE (eqs. 18-19) centred with
its own mean (scales kept: the objective is the sum of the agents' advantages), value fit, then
the ADMM phase (:mod:`p2pmarl.algos.admm`) whose θ step is
:class:`TrustRegionSolver` (eq. 22), then θ_old ← θ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from p2pmarl.algos.admm import MESSAGE_KINDS, ADMMConfig, normalise_edges, run_admm_phase
from p2pmarl.algos.base import Batch, Peers
from p2pmarl.algos.itrpo import TRPOConfig, TrustRegionAgent
from p2pmarl.algos.networks import Policy, flat_gradient, flat_parameters
from p2pmarl.algos.trpo import (
    backtracking_line_search,
    make_categorical_fisher_vector_product,
    solve_conjugate_gradient,
)
from p2pmarl.envs.base import EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology

PAPER_TABLE_III = {3: (0.003, 1.0, 100), 6: (0.003, 1.0, 150), 8: (0.001, 5.0, 200),
                   12: (0.001, 5.0, 500)}
"""N → (δ/N, β, ADMM iterations) of the paper's Table III."""


def paper_defaults(n_agents: int) -> tuple[float, float, int]:
    """Table III values for N; other N take the row of the nearest paper N at or above it
    (N > 12 takes the N = 12 row)."""
    for size in sorted(PAPER_TABLE_III):
        if n_agents <= size:
            return PAPER_TABLE_III[size]
    return PAPER_TABLE_III[12]


@dataclass(frozen=True)
class MATRPOConfig:
    """MATRPO settings; ``trpo.max_kl`` is the per-agent trust region δ/N."""

    trpo: TRPOConfig = field(default_factory=lambda: TRPOConfig(max_kl=0.003))
    """GAE, value fit, CG and line-search settings (max_kl = δ/N; paper: 0.003 or 0.001)."""
    admm: ADMMConfig = field(default_factory=ADMMConfig)
    """β, activation budget and schedule of the consensus phase."""
    linearized_log_ratio: bool = False
    """Exchange J·(θ−θ_old) (eq. 22) instead of the true log ratio (reference implementation)."""
    theta_step: str = "kkt"
    """``kkt`` (default): the exact minimizer of the linearized augmented Lagrangian in the trust
    region (appendix eqs. (47)-(51) with the multiplier λ ≥ 0): the boundary step of eq. (22)
    when the trust region binds, else the interior step H⁻¹V/(|E(q)|β); ``boundary``: always
    the trust-region boundary step of eq. (22) as printed (which assumes λ* > 0 in eq. (50)).
    At the paper's N=3 settings on spread they differ in at most ~1 % of the activations."""

    def __post_init__(self) -> None:
        if self.theta_step not in ("kkt", "boundary"):
            raise ValueError(
                f"MATRPOConfig.theta_step={self.theta_step!r}: use 'kkt' or 'boundary'"
            )


class TrustRegionSolver:
    """The θ step of one activation (eq. 22), a :class:`~p2pmarl.algos.admm.LocalSolver`.

    Everything that depends only on θ_old (old log-probs, the Fisher-vector product, the
    advantage) is computed once per ADMM phase; each activation restarts from θ_old:
    u_n = A − Σ_e C_e y_e^n + β Σ_e C_e z_e^n, g = ∇_θ (1/M) Σ_{n,m} u_{n,m} ℓ_{n,m}(θ)|θ_old,
    s = H⁻¹g (CG), full step sqrt(2(δ/N)/gᵀs)·s, backtracking on agent q's augmented Lagrangian
    (its share of eq. 21) with KL ≤ accept_ratio·δ/N.
    """

    def __init__(
        self,
        policy: Policy,
        observations: Tensor,
        joint_actions: Tensor,
        advantages: Tensor,
        config: MATRPOConfig,
    ) -> None:
        self.policy = policy
        self.observations = observations
        self.actions = joint_actions
        self.advantages = advantages
        self.config = config
        self.beta = config.admm.beta
        self.max_kl = config.trpo.max_kl
        self.parameters = list(policy.parameters())
        self.names = [name for name, _ in policy.named_parameters()]
        with torch.no_grad():
            self.old_logits = policy(observations)
            self.old_log_prob = policy.log_prob_from_logits(self.old_logits, joint_actions)
        self.theta_old = flat_parameters(self.parameters)
        every = config.trpo.fisher_subsample
        self.fvp = make_categorical_fisher_vector_product(
            policy, observations[::every], config.trpo.damping
        )
        self.score = self._score_function()
        self.theta = self.theta_old.clone()
        self._pending: Tensor | None = None
        self._stats: dict[str, float] = {}
        self._jacobian_transpose: Tensor | None = None
        self._last_direction: Tensor | None = None
        self._cold_residual = 0.0
        self._probe: Tensor | None = None

    def _score_function(self) -> Callable[[Tensor], Tensor]:
        """u ↦ ∇_θ (1/M) Σ_{n,m} u_{n,m} log π_θ(a^n_m|o_m) at θ_old, sharing one forward pass."""
        log_prob = self.policy.log_prob_from_logits(self.policy(self.observations), self.actions)
        scale = 1.0 / self.observations.shape[0]

        def score(u: Tensor) -> Tensor:
            return flat_gradient((log_prob * u).sum() * scale, self.parameters, retain_graph=True)

        return score

    # -- LocalSolver -----------------------------------------------------------------------------
    def propose(self, dual_sum: np.ndarray, estimate_sum: np.ndarray, degree: int) -> np.ndarray:
        """θ step from θ_old for the current duals/estimates; returns ℓ^q (N×M float32)."""
        dual = torch.from_numpy(np.asarray(dual_sum, dtype=np.float32))
        estimate = torch.from_numpy(np.asarray(estimate_sum, dtype=np.float32))
        u = self.advantages.unsqueeze(0) - dual + self.beta * estimate
        gradient = self.score(u)
        theta, log_ratio, stats = self._trust_region_step(gradient, dual, estimate, degree)
        self._pending = theta
        self._stats = stats
        if self.config.linearized_log_ratio:
            log_ratio = self._linearized_log_ratio(theta)
        return log_ratio.numpy().astype(np.float32, copy=False)

    def accept(self) -> None:
        if self._pending is not None:
            self.theta = self._pending
        self._pending = None

    def reject(self) -> None:
        self._pending = None

    def last_stats(self) -> dict[str, float]:
        return dict(self._stats)

    # -- the trust-region step -------------------------------------------------------------------
    def _trust_region_step(
        self, gradient: Tensor, dual: Tensor, estimate: Tensor, degree: int
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        zero = torch.zeros_like(self.old_log_prob)
        before = self.augmented_lagrangian(zero, dual, estimate, degree)
        stats = {"lagrangian_before": before, "kl": 0.0, "line_search_steps": 0.0,
                 "step_fraction": 0.0}
        direction = self._search_direction(gradient)
        curvature = float(gradient.dot(direction))
        if not (curvature > 0 and math.isfinite(curvature)):
            return self.theta_old, zero, {**stats, "lagrangian": before}
        full_step = self.step_length(curvature, degree) * direction
        evaluated: dict[float, tuple[Tensor, Tensor]] = {}

        def evaluate(fraction: float) -> tuple[float, float]:
            theta = self.theta_old + fraction * full_step
            log_ratio, kl = self._log_ratio_and_kl(theta)
            evaluated[fraction] = (theta, log_ratio)
            return self.augmented_lagrangian(log_ratio, dual, estimate, degree), kl

        result = backtracking_line_search(
            evaluate, before, self.config.trpo.accept_ratio * self.max_kl,
            self.config.trpo.max_backtracks,
        )
        stats.update(lagrangian=result.loss, kl=result.kl, line_search_steps=float(result.steps),
                     step_fraction=result.fraction)
        if result.fraction == 0.0:
            return self.theta_old, zero, stats
        theta, log_ratio = evaluated[result.fraction]
        return theta, log_ratio, stats

    def step_length(self, curvature: float, degree: int) -> float:
        """Length of the θ step along s = H⁻¹V, given the curvature Vᵀs and |E(q)| = degree.

        Appendix eqs. (47)-(51): the linearized augmented Lagrangian is minimized in the trust
        region at x = s/(λ* + |E(q)|β) with λ* = sqrt(Vᵀs/(2δ/N)) − |E(q)|β (eq. (50)). Eq. (22)
        is the case λ* > 0 (the boundary step sqrt(2(δ/N)/Vᵀs)); when λ* would be negative the
        KKT multiplier is 0 and the minimizer is the interior step s/(|E(q)|β): the penalty
        β/2‖C ℓ − z‖² already holds θ closer to θ_old than the trust region does. With
        ``theta_step="boundary"`` (eq. (22) as printed) the step always goes to the boundary
        and the line search only halves it until the Lagrangian decreases.
        """
        boundary = math.sqrt(2.0 * self.max_kl / curvature)
        if self.config.theta_step == "boundary" or degree < 1:
            return boundary
        return min(boundary, 1.0 / (degree * self.beta))

    def _search_direction(self, gradient: Tensor) -> Tensor:
        """s ≈ H⁻¹g by conjugate gradient, warm-started within the phase.

        H is fixed for the whole phase (θ_old is), and g changes little between activations, so
        every solve after the first starts from the previous direction and stops as soon as its
        relative residual is no worse than that of the phase's first, cold, ``cg_iterations``
        solve: the same accuracy for typically 1-3 products instead of 10.
        """
        iterations = self.config.trpo.cg_iterations
        if self._last_direction is None:
            direction, self._cold_residual = solve_conjugate_gradient(
                self.fvp, gradient, iterations
            )
        else:
            direction, _ = solve_conjugate_gradient(
                self.fvp, gradient, iterations, initial=self._last_direction,
                relative_tolerance=self._cold_residual,
            )
        self._last_direction = direction
        return direction

    def _log_ratio_and_kl(self, theta: Tensor) -> tuple[Tensor, float]:
        with torch.no_grad():
            logits = functional_call(self.policy, self._unflatten(theta), (self.observations,))
            log_ratio = self.policy.log_prob_from_logits(logits, self.actions) - self.old_log_prob
            kl = float(self.policy.kl_from_logits(self.old_logits, logits))
        return log_ratio, kl

    def augmented_lagrangian(
        self, log_ratio: Tensor, dual: Tensor, estimate: Tensor, degree: int
    ) -> float:
        """Agent q's share of eq. (21), up to terms that do not depend on θ^q.

        −(1/M) Σ_m A_m exp(Σ_n ℓ_{n,m}) (the importance-ratio surrogate, whose gradient at θ_old
        is the paper's linear term) + (1/M) Σ_{n,m} [ℓ·(Σ_e C_e y_e − β Σ_e C_e z_e)
        + (β·|E(q)|/2) ℓ²]; expanding Σ_e y_eᵀ(C_e ℓ − z_e) + (β/2)‖C_e ℓ − z_e‖² with C_e² = 1.
        """
        samples = log_ratio.shape[-1]
        surrogate = (self.advantages * torch.exp(log_ratio.sum(dim=0))).sum()
        penalty = (log_ratio * (dual - self.beta * estimate)).sum()
        quadratic = 0.5 * self.beta * degree * (log_ratio * log_ratio).sum()
        return float((-surrogate + penalty + quadratic) / samples)

    def _linearized_log_ratio(self, theta: Tensor) -> Tensor:
        """J·(θ − θ_old): the first-order log ratio of eq. (22).

        J v is the derivative in w of the vector-Jacobian product (Jᵀw)·v (the double-vjp trick),
        built once per phase; forward-mode AD is avoided because its state is process-global.
        """
        if self._jacobian_transpose is None:
            log_prob = self.policy.log_prob_from_logits(
                self.policy(self.observations), self.actions
            )
            self._probe = torch.zeros_like(log_prob, requires_grad=True)
            self._jacobian_transpose = flat_gradient(
                (log_prob * self._probe).sum(), self.parameters, create_graph=True
            )
        (product,) = torch.autograd.grad(
            self._jacobian_transpose, self._probe, theta - self.theta_old, retain_graph=True
        )
        return product.detach()

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        params, offset = {}, 0
        for name, parameter in zip(self.names, self.parameters, strict=True):
            size = parameter.numel()
            params[name] = flat[offset : offset + size].view_as(parameter)
            offset += size
        return params


class MATRPO(TrustRegionAgent):
    """Multi-agent TRPO: N-head joint-policy model, consensus on log ratios with neighbours."""

    name = "matrpo"
    message_kinds: ClassVar[frozenset[str]] = frozenset(MESSAGE_KINDS)
    needs_connected_graph = True

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        edges: list[tuple[int, int]],
        config: MATRPOConfig,
        seed: int,
    ) -> None:
        super().__init__(
            agent_id, spec, config.trpo, seed, heads=spec.action_spaces, acting_head=agent_id
        )
        self.edges = normalise_edges(edges)
        self.matrpo = config
        self._solver: TrustRegionSolver | None = None

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> MATRPO:
        """Paper Table III defaults for N, overridden by the run's max_kl/beta/admm_iterations."""
        max_kl, beta, budget = paper_defaults(spec.n_agents)
        settings = MATRPOConfig(
            trpo=TRPOConfig(
                max_kl=config.max_kl or max_kl,
                fisher_subsample=config.fisher_subsample,
                advantage_normalization=config.advantage_normalization,
                episode_end=config.episode_end,
            ),
            admm=ADMMConfig(
                beta=config.beta or beta,
                budget=config.admm_iterations or budget,
                schedule=config.admm_schedule,
                seed=config.seed,
                initial_dual=config.initial_dual,
                message_timeout=config.admm_message_timeout,
                phase_timeout=config.phase_timeout,
                retransmissions=config.admm_retransmissions,
            ),
            linearized_log_ratio=config.linearized_log_ratio,
            theta_step=config.theta_step,
        )
        return cls(agent_id, spec, list(topology.edges), settings, seed)

    def local_update(self, batch: Batch) -> dict[str, float]:
        """Own GAE and value fit; prepares the θ step's θ_old quantities for the ADMM phase."""
        data = self.prepare(batch)
        value_loss = self.fit_value(data)
        self._solver = TrustRegionSolver(
            self.policy, data.observations, data.joint_actions, data.advantages, self.matrpo
        )
        return {
            "train/value_loss": value_loss,
            "train/entropy": self.acting_entropy(self._solver.old_logits),
            "train/advantage_std": data.raw_advantage_std,
        }

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """The ADMM phase (Algorithm 1's inner loop); afterwards θ_old ← θ."""
        solver = self._solver
        if solver is None:
            raise RuntimeError("peer_phase called before local_update")
        stats = run_admm_phase(
            peers, solver, self.edges, tuple(solver.old_log_prob.shape), self.matrpo.admm,
            batch.fingerprint(), self.record,
        )
        with torch.no_grad():
            offset = 0
            for parameter in solver.parameters:
                size = parameter.numel()
                parameter.copy_(solver.theta[offset : offset + size].view_as(parameter))
                offset += size
            logits = self.policy(solver.observations)
            stats["train/kl"] = float(self.policy.kl_from_logits(solver.old_logits, logits))
        self._solver = None
        return stats
