"""DiMA-PG (distributed multi-agent policy gradient; section 4.1, Algorithm 1) with no one in the
middle.

Every agent n holds a replica of the shared policy θ (two hidden layers of 100 ReLU units, as in
section 5.2) and, per training iteration:

1. rollout phase ``pre``: everyone acts with θ, giving τ^θ_n (eq. 6);
2. :meth:`DiMAPG.phase_update`: agent n adapts θ_n from θ with k REINFORCE steps on its own reward
   (eqs. 9-10, :func:`adapt`);
3. rollout phase ``adapted`` with N copy groups: in group n agent n acts with θ_n and every other
   agent with θ, giving τ^{θ,θ_n}_n (eq. 8) in the copies of group n;
4. :meth:`DiMAPG.local_update`: agent n's meta-gradient ∇θ L_n of eq. 14 (:func:`meta_gradient`:
   the adapted term differentiated through the adaptation by autograd, second-order term
   included unless ``first_order``; plus the score term on τ^θ_n);
5. :meth:`DiMAPG.peer_phase`: the network sum Σ_n ∇θ L_n of eq. 11 by gossip averaging
   (:mod:`p2pmarl.algos.gossip`), and the same outer step on every replica: REINFORCE
   θ ← θ + ε Σ_n ∇θ L_n, or a trust-region (TRPO) step whose direction, step size and line search
   are also formed by gossip (:meth:`DiMAPG._trpo_step`).

Replicas differ only by the gossip error. Each agent compares a random projection of its θ with
its neighbours' (``dimapg_sketch``, one reliable round of the runtime like every gossip round:
``Peers.exchange_round``) and records the disagreement; above ``resync_tolerance`` it
asks, in the next iteration's gradient gossip, for a re-synchronisation: every replica is then
replaced by the gossip average of the replicas (``dimapg_resync``). What crosses the wire:
gradients, natural-gradient directions, KL values and the θ sketch of the shared policy, and
parameters on re-sync, only to graph neighbours; never observations, rewards or advantages.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from p2pmarl.algos.base import AgentAlgorithm, Batch, Peers, RolloutPhase
from p2pmarl.algos.gossip import GossipConfig, GossipResult, average
from p2pmarl.algos.networks import (
    CategoricalPolicy,
    flat_parameters,
    sample_actions,
    set_flat_parameters,
)
from p2pmarl.algos.trpo import conjugate_gradient, make_categorical_fisher_vector_product
from p2pmarl.envs.base import EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology

logger = logging.getLogger(__name__)

PRE, ADAPTED = "pre", "adapted"
"""Names of the two rollout phases: everyone on θ; group n with agent n on θ_n."""
GRADIENT, DIRECTION, KL, RESYNC, SKETCH = (
    "dimapg_gradient", "dimapg_direction", "dimapg_kl", "dimapg_resync", "dimapg_sketch",
)
OUTER_STEPS = ("trpo", "reinforce")
SCORE_ESTIMATORS = ("score", "lvc")


@dataclass(frozen=True)
class DiMAPGConfig:
    """Settings of DiMA-PG (paper appendix C.2 defaults where it gives them)."""

    inner_steps: int = 3
    """k, REINFORCE steps adapting θ_n from θ (eq. 10); the paper finds 3 a good choice."""
    inner_lr: float = 0.01
    """α1 = α2, step size of the inner steps (appendix C.2: 0.01)."""
    outer: str = "trpo"
    """Outer step on θ: ``trpo`` (the paper's choice for cooperative navigation) or
    ``reinforce`` (θ ← θ + ε Σ_n ∇θ L_n, eq. 11, as for predator-prey)."""
    outer_lr: float = 0.05
    """ε of eq. 11 for the ``reinforce`` outer step (appendix C.2: 0.05)."""
    max_kl: float = 0.01
    """Trust region δ of the ``trpo`` outer step (network-mean KL on the agents' τ^θ)."""
    damping: float = 0.01
    """Fisher damping of the ``trpo`` outer step."""
    cg_iterations: int = 10
    """Conjugate-gradient iterations of each agent's natural-gradient solve."""
    max_backtracks: int = 10
    """Line-search fractions 1, 1/2, … tried by the ``trpo`` outer step."""
    accept_ratio: float = 1.5
    """The line search accepts a network-mean KL ≤ accept_ratio·δ."""
    fisher_subsample: int = 5
    """Fisher-vector products use every k-th sample of τ^θ_n."""
    first_order: bool = False
    """Drop the second-order term: differentiate the adapted term as if dθ_n/dθ = I
    (first-order MAML); the score term on τ^θ stays."""
    score_term: bool = True
    """Include eq. 14's second term E[L_n ∇θ log π_θ(τ^θ)] (the dependence of the adaptation's
    samples on θ). It is an unbiased but very noisy estimate (one scalar L_n − b times the score
    of the whole pre-adaptation batch); ``False`` keeps only the adapted term, as MAML does."""
    score_estimator: str = "lvc"
    """How the term for the adaptation samples' dependence on θ is estimated (when
    ``score_term``): ``score``, eq. 14's E[L_n ∇θ log π_θ(τ^θ)] as written (unbiased, one scalar
    L_n − b times the score of the whole pre batch: very noisy); ``lvc`` (default), ProMP's
    low-variance curvature estimator (Rothfuss et al., 2019, eq. 10): the inner steps
    differentiate mean(π_θ/⊥π_θ · A) instead of mean(log π_θ · A), same values and first
    derivatives, but the second derivative gains Σ_t ∇log π_t ∇log π_tᵀ A_t, so the term enters
    through the adaptation's Jacobian per step instead of per batch. It equals the score term's
    expectation to first order in α for one-step episodes and drops the cross-time products
    otherwise (biased, far lower variance); it needs the second-order term (not
    ``first_order``). On spread N = 3 eq. 14 learns with ``lvc`` and diverges with ``score``
    (docs/benchmarks.md, issue 10, session 23)."""
    score_baseline_decay: float = 0.9
    """b of the score term: exponential average (this decay) of the agent's L_n of the earlier
    iterations. It must not depend on the current τ^θ_n: the pre-adaptation return would make
    the term subtract the policy gradient of θ itself (docs/benchmarks.md, issue 10, session
    22). With no earlier L_n (first iteration) the score term is left out."""
    reward_clip: float = 1.0
    """Rewards are clipped to [−c, c] before any use (section 5.2.1: [−1, 1]); 0 turns it off."""
    gamma: float = 0.9
    """Discount of the REINFORCE returns. The paper does not state it; with Monte-Carlo
    returns over 200-step episodes rllab's 0.99 gave spread gradient estimates of random sign
    (docs/benchmarks.md, issue 10), 0.9 consistent ones."""
    hidden: tuple[int, ...] = (100, 100)
    """Hidden layers of the shared policy (section 5.2: two of 100 ReLU units)."""
    baseline_regularization: float = 1e-5
    """Ridge coefficient of the linear feature baseline (appendix C.2, rllab)."""
    gossip: GossipConfig = field(
        default_factory=lambda: GossipConfig(rounds=None, tolerance=1e-4, max_rounds=500)
    )
    """How the network sums are formed (method, rounds or tolerance, timeouts); the message
    kind is set per use."""
    resync_tolerance: float = 1e-3
    """Replica disagreement ‖θ_i − θ_j‖ (estimated from sketches) above which the replicas are
    re-synchronised by parameter averaging."""
    sketch_size: int = 64
    """Rows of the random projection of θ that neighbours compare each iteration."""

    def __post_init__(self) -> None:
        checks = {
            "inner_steps": self.inner_steps >= 0,
            "inner_lr": self.inner_lr >= 0,
            "outer": self.outer in OUTER_STEPS,
            "score_estimator": self.score_estimator in SCORE_ESTIMATORS,
            "outer_lr": self.outer_lr > 0,
            "max_kl": self.max_kl > 0,
            "damping": self.damping >= 0,
            "cg_iterations": self.cg_iterations >= 1,
            "max_backtracks": self.max_backtracks >= 1,
            "accept_ratio": self.accept_ratio >= 1,
            "fisher_subsample": self.fisher_subsample >= 1,
            "reward_clip": self.reward_clip >= 0,
            "gamma": 0 < self.gamma <= 1,
            "score_baseline_decay": 0 <= self.score_baseline_decay < 1,
            "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "baseline_regularization": self.baseline_regularization > 0,
            "resync_tolerance": self.resync_tolerance > 0,
            "sketch_size": self.sketch_size >= 1,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(
                    f"DiMAPGConfig.{name}={getattr(self, name)!r} is out of range; see the field "
                    f"docstring in p2pmarl/algos/dimapg.py"
                )


# -- pure math ------------------------------------------------------------------------------------


def clip_rewards(rewards: np.ndarray, bound: float) -> np.ndarray:
    """Rewards clipped to [−bound, bound] (section 5.2.1); unchanged for bound 0."""
    return rewards if bound <= 0 else np.clip(rewards, -bound, bound)


def episode_steps(dones: np.ndarray) -> np.ndarray:
    """Step index within the episode, (T, K): 0 at the batch start and after every done."""
    steps = np.zeros(dones.shape, dtype=np.int64)
    for t in range(1, dones.shape[0]):
        steps[t] = np.where(dones[t - 1], 0, steps[t - 1] + 1)
    return steps


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go G_t = r_t + γ G_{t+1} within each episode, (T, K); cut at the batch end."""
    returns = np.zeros(rewards.shape, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (~dones[t])
        returns[t] = running
    return returns


def baseline_features(observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """rllab's linear feature baseline features [o, o², t, t², t³, 1] with t = step/100."""
    o = np.clip(observations.astype(np.float64), -10, 10)
    t = (steps.astype(np.float64) / 100.0)[:, None]
    return np.concatenate([o, o**2, t, t**2, t**3, np.ones_like(t)], axis=1)


def fit_linear_baseline(
    features: np.ndarray, returns: np.ndarray, regularization: float
) -> np.ndarray:
    """Ridge regression weights of the returns on the features (raising the coefficient ×10
    until the solve is finite, as rllab does)."""
    gram = features.T @ features
    target = features.T @ returns
    for _ in range(5):
        try:
            weights = np.linalg.solve(gram + regularization * np.eye(len(gram)), target)
        except np.linalg.LinAlgError:
            weights = None
        if weights is not None and np.all(np.isfinite(weights)):
            return weights
        regularization *= 10
    return np.zeros(features.shape[1])


def reinforce_objective(log_prob: Tensor, advantages: Tensor) -> Tensor:
    """The REINFORCE estimate of L_n whose gradient is the policy gradient: mean(log π · A)."""
    return (log_prob * advantages).mean()


def lvc_objective(log_prob: Tensor, advantages: Tensor) -> Tensor:
    """ProMP's low-variance curvature surrogate mean(π/⊥π · A) (Rothfuss et al., 2019, eq. 10):
    the value and gradient of :func:`reinforce_objective` at the current parameters, and the
    Hessian mean((∇²log π + ∇log π ∇log π ᵀ)·A), which estimates ∇²E[R] per step."""
    return (torch.exp(log_prob - log_prob.detach()) * advantages).mean()


def policy_log_prob(
    policy: CategoricalPolicy, parameters: dict[str, Tensor], observations: Tensor,
    actions: Tensor,
) -> Tensor:
    """log π_parameters(a|o) of the single-head ``policy`` at other ``parameters``, (M,)."""
    logits = functional_call(policy, parameters, (observations,))
    return policy.log_prob_from_logits(logits, actions[:, None])[0]


def adapt(
    policy: CategoricalPolicy,
    theta: dict[str, Tensor],
    observations: Tensor,
    actions: Tensor,
    advantages: Tensor,
    steps: int,
    lr: float,
    create_graph: bool,
    lvc: bool = False,
) -> dict[str, Tensor]:
    """θ_n from θ by ``steps`` REINFORCE steps (eqs. 9-10): θ^[k] = θ^[k−1] + α ∇ L_n(θ^[k−1]).

    Every step uses τ^θ_n (the paper's eq. 10 samples at θ^[k−1]; reusing the batch is the
    usual MAML practice). With ``create_graph`` the result stays differentiable in θ, so the
    meta-gradient sees the adaptation's Jacobian (the second-order term); ``lvc`` differentiates
    :func:`lvc_objective` instead (same θ_n, ProMP's Jacobian).
    """
    surrogate = lvc_objective if lvc else reinforce_objective
    parameters = dict(theta)
    for _ in range(steps):
        objective = surrogate(
            policy_log_prob(policy, parameters, observations, actions), advantages
        )
        gradients = torch.autograd.grad(
            objective, list(parameters.values()), create_graph=create_graph
        )
        parameters = {
            name: value + lr * gradient
            for (name, value), gradient in zip(parameters.items(), gradients, strict=True)
        }
    return parameters


@dataclass(frozen=True)
class MetaData:
    """Agent n's two samples for eq. 14, as tensors."""

    pre_observations: Tensor
    """o^n on τ^θ_n, (M1, obs)."""
    pre_actions: Tensor
    """a^n on τ^θ_n, int64 (M1,)."""
    pre_advantages: Tensor
    """Standardized REINFORCE advantages on τ^θ_n (returns minus the linear baseline, then
    rllab's center_adv) for the inner steps, (M1,)."""
    adapted_observations: Tensor
    """o^n on τ^{θ,θ_n}_n (the copies of group n), (M2, obs)."""
    adapted_actions: Tensor
    """a^n there, int64 (M2,)."""
    adapted_advantages: Tensor
    """Advantages there in reward units (returns minus the linear baseline, centered), (M2,)."""
    adapted_episodes: float
    """Episodes in τ^{θ,θ_n}_n (steps / episode length): the adapted term is per trajectory."""
    adapted_return: float
    """L_n(θ, θ_n): mean episode return of τ^{θ,θ_n}_n."""
    score_baseline: float | None
    """b subtracted from L_n in the score term (independent of τ^θ_n); None leaves the score
    term out."""


def meta_gradient(
    policy: CategoricalPolicy,
    theta: dict[str, Tensor],
    data: MetaData,
    inner_steps: int,
    inner_lr: float,
    first_order: bool = False,
    score_term: bool = True,
    score_estimator: str = "score",
) -> Tensor:
    """∇θ L_n(θ, θ_n) of eq. 14 as one flat vector, both terms in reward units per trajectory.

    E[L_n ∇θ log π_{θ_n}(τ^{θ,θ_n})] is (1/episodes)·Σ_t ∇θ log π_{θ_n}(a_t|o_t)·A_t on
    τ^{θ,θ_n}_n (REINFORCE with a state baseline: A_t = G_t − b(o_t)), differentiated through
    θ_n = adapt(θ) (second-order term by autograd; ``first_order`` treats dθ_n/dθ as I).
    E[L_n ∇θ log π_θ(τ^θ)] is (L_n − b)·Σ_t ∇θ log π_θ(a_t|o_t) over the whole batch τ^θ_n (θ_n
    depends on all of its trajectories, so the score is the batch's: a sum, not a mean), with b
    a baseline that does not depend on τ^θ_n, so that E[b ∇ log π(τ^θ)] = 0;
    ``score_term=False`` or ``score_baseline`` None leaves it out. ``score_estimator="lvc"``
    replaces it by ProMP's low-variance curvature in the adaptation (:func:`lvc_objective`;
    needs the second-order term, so nothing of it is left with ``first_order``).
    """
    lvc = score_term and score_estimator == "lvc"
    theta = {name: value.detach().requires_grad_(True) for name, value in theta.items()}
    adapted = adapt(
        policy, theta, data.pre_observations, data.pre_actions, data.pre_advantages,
        inner_steps, inner_lr, create_graph=not first_order,
        lvc=lvc,
    )
    if first_order:
        adapted = {name: theta[name] + (adapted[name] - theta[name]).detach() for name in theta}
    adapted_term = reinforce_objective(
        policy_log_prob(policy, adapted, data.adapted_observations, data.adapted_actions),
        data.adapted_advantages,
    )
    adapted_term = adapted_term * (len(data.adapted_actions) / data.adapted_episodes)
    objective = adapted_term
    if score_term and not lvc and data.score_baseline is not None:
        pre_log_prob = policy_log_prob(policy, theta, data.pre_observations, data.pre_actions)
        objective = objective + (data.adapted_return - data.score_baseline) * pre_log_prob.sum()
    gradients = torch.autograd.grad(objective, list(theta.values()))
    return torch.cat([gradient.reshape(-1) for gradient in gradients]).detach()


def sketch_matrix(size: int, n_parameters: int, seed: int) -> np.ndarray:
    """Random projection R (size × P), entries N(0, 1/size): E‖R(θ_i − θ_j)‖² = ‖θ_i − θ_j‖²;
    the same on every agent (seeded by the run's root seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD1A]))
    return (rng.standard_normal((size, n_parameters)) / math.sqrt(size)).astype(np.float32)


# -- the agent ------------------------------------------------------------------------------------


class DiMAPG(AgentAlgorithm):
    """Agent n of DiMA-PG: a replica of the shared θ, its adapted θ_n, its own baseline."""

    name = "dimapg"
    message_kinds = frozenset({GRADIENT, DIRECTION, KL, RESYNC, SKETCH})
    needs_connected_graph = True

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        n_agents: int,
        config: DiMAPGConfig,
        seed: int,
        shared_seed: int,
    ) -> None:
        sizes = set(zip(spec.observation_sizes, spec.action_sizes, strict=True))
        if len(sizes) != 1:
            raise ValueError(
                f"DiMA-PG shares one policy among all agents, but {spec.name!r} gives them "
                f"different observation/action sizes {sorted(sizes)}; use spread or spread-shared"
            )
        if not 0 <= agent_id < spec.n_agents:
            raise ValueError(f"agent_id {agent_id} is not an agent of {spec.name!r}")
        self.agent_id = agent_id
        self.spec = spec
        self.n_agents = n_agents
        self.config = config
        observation_size, action_size = sizes.pop()
        torch.manual_seed(shared_seed)  # every replica starts from the same θ
        self.policy = CategoricalPolicy(observation_size, (action_size,), config.hidden, nn.ReLU)
        self.adapted = CategoricalPolicy(observation_size, (action_size,), config.hidden, nn.ReLU)
        self.adapted.load_state_dict(self.policy.state_dict())
        self.rng = np.random.default_rng(seed)
        self.names = [name for name, _ in self.policy.named_parameters()]
        n_parameters = sum(p.numel() for p in self.policy.parameters())
        self.sketch = sketch_matrix(config.sketch_size, n_parameters, shared_seed)
        self.resync_requested = False
        self.score_baseline: float | None = None
        """b of eq. 14's score term: exponential average of this agent's earlier L_n."""
        self._pre: dict[str, Any] | None = None
        self._gradient: Tensor | None = None

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> DiMAPG:
        """DiMA-PG with the run's ``dimapg_*`` settings; θ is seeded by the root seed."""
        gossip = GossipConfig(
            method=config.dimapg_gossip,
            rounds=config.dimapg_gossip_rounds,
            tolerance=None if config.dimapg_gossip_rounds else config.dimapg_gossip_tolerance,
            max_rounds=config.dimapg_gossip_max_rounds,
            round_timeout=config.dimapg_gossip_timeout,
        )
        settings = DiMAPGConfig(
            inner_steps=config.dimapg_inner_steps,
            inner_lr=config.dimapg_inner_lr,
            outer=config.dimapg_outer,
            outer_lr=config.dimapg_outer_lr,
            first_order=config.dimapg_first_order,
            score_term=not config.dimapg_no_score_term,
            score_estimator=config.dimapg_score_estimator,
            gamma=config.dimapg_gamma,
            reward_clip=config.dimapg_reward_clip,
            fisher_subsample=config.fisher_subsample,
            gossip=gossip,
            resync_tolerance=config.dimapg_resync_tolerance,
            **({} if config.max_kl is None else {"max_kl": config.max_kl}),
        )
        return cls(agent_id, spec, topology.n_agents, settings, seed, config.seed)

    @classmethod
    def rollout_phases(cls, config: RunConfig, n_agents: int) -> tuple[RolloutPhase, ...]:
        """``pre`` (everyone on θ, T = rollout length) and ``adapted`` (N copy groups; T =
        ``dimapg_adapted_steps`` or the rollout length). Needs K ≥ N copies."""
        adapted_steps = config.dimapg_adapted_steps or config.rollout_length
        return (
            RolloutPhase(PRE, config.rollout_length),
            RolloutPhase(ADAPTED, adapted_steps, copy_groups=n_agents),
        )

    # -- acting -----------------------------------------------------------------------------------
    @property
    def draws_row_by_row(self) -> bool:
        """True for :meth:`act` (one Gumbel draw); phases with copy groups act per chunk."""
        return True

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions with the shared θ."""
        return sample_actions(self.policy, observations, 0, self.rng, deterministic)

    def act_in_phase(
        self, observations: np.ndarray, phase: RolloutPhase, copy_groups: np.ndarray
    ) -> np.ndarray:
        """In copy group n (this agent's) act with θ_n, elsewhere with θ (eq. 8)."""
        actions = self.act(observations)
        own = copy_groups == self.agent_id
        if own.any():
            actions[own] = sample_actions(self.adapted, observations[own], 0, self.rng)
        return actions

    def act_adapted(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions with the adapted θ_n (Table 1's "using θ′_i")."""
        return sample_actions(self.adapted, observations, 0, self.rng, deterministic)

    # -- learning ---------------------------------------------------------------------------------
    def _samples(
        self, batch: Batch, columns: np.ndarray | None = None,
        fit_also: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Own observations, actions, advantages and the mean episode return of ``columns``.

        ``advantages`` are standardized (rllab's center_adv, for the inner steps);
        ``raw_advantages`` are in reward units, centered (for the adapted term of eq. 14). The
        linear baseline is fit on these samples and on ``fit_also`` (features, returns), the
        agent's own pre-adaptation samples: the adapted phase holds only K/N copies per agent,
        too few for the baseline's 2·obs + 4 weights (an in-sample fit on 1-2 episodes soaks
        up the returns and leaves noise).
        """
        if batch.agent_id != self.agent_id:
            raise ValueError(
                f"agent {self.agent_id} was given the batch of agent {batch.agent_id}; each "
                f"agent learns only from its own observations and rewards"
            )
        columns = np.arange(batch.rewards.shape[1]) if columns is None else columns
        rewards = clip_rewards(batch.rewards[:, columns], self.config.reward_clip)
        dones = batch.dones[:, columns]
        observations = batch.observations[:, columns].reshape(-1, batch.observations.shape[-1])
        steps = episode_steps(dones).reshape(-1)
        returns = discounted_returns(rewards, dones, self.config.gamma).reshape(-1)
        features = baseline_features(observations, steps)
        fit_features, fit_returns = features, returns
        if fit_also is not None:
            fit_features = np.concatenate([fit_also[0], features])
            fit_returns = np.concatenate([fit_also[1], returns])
        weights = fit_linear_baseline(
            fit_features, fit_returns, self.config.baseline_regularization
        )
        raw = returns - features @ weights
        # centered: without it the baseline's misfit mean adds a large random-sign term
        raw = raw - raw.mean()
        # rllab's center_adv (the paper's code base) also divides by the own batch's std
        advantages = raw / (raw.std() + 1e-8)
        return {
            "observations": torch.from_numpy(np.ascontiguousarray(observations)),
            "actions": torch.from_numpy(batch.joint_actions[:, columns, self.agent_id].reshape(-1)),
            "advantages": torch.from_numpy(advantages.astype(np.float32)),
            "raw_advantages": torch.from_numpy(raw.astype(np.float32)),
            "fit": (features, returns),
            "episodes": rewards.size / self.spec.episode_length,
            "return": float(rewards.mean()) * self.spec.episode_length,
        }

    def _theta(self) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.policy.named_parameters()}

    def phase_update(self, batch: Batch) -> dict[str, float]:
        """After ``pre``: adapt θ_n from θ on τ^θ_n (eq. 10) for the ``adapted`` phase."""
        self._pre = self._samples(batch)
        pre = self._pre
        theta = {name: value.clone().requires_grad_(True) for name, value in self._theta().items()}
        adapted = adapt(
            self.policy, theta, pre["observations"], pre["actions"], pre["advantages"],
            self.config.inner_steps, self.config.inner_lr, create_graph=False,
        )
        with torch.no_grad():
            for name, parameter in self.adapted.named_parameters():
                parameter.copy_(adapted[name])
        return {"dimapg/pre_return": pre["return"]}

    def local_update(self, batch: Batch) -> dict[str, float]:
        """After ``adapted``: agent n's meta-gradient ∇θ L_n (eq. 14) on its copy group."""
        if self._pre is None or batch.copy_groups is None:
            raise RuntimeError("DiMA-PG needs its two rollout phases (pre, then adapted)")
        columns = np.flatnonzero(batch.copy_groups == self.agent_id)
        pre = self._pre
        post = self._samples(batch, columns, fit_also=pre["fit"])
        data = MetaData(
            pre["observations"], pre["actions"], pre["advantages"], post["observations"],
            post["actions"], post["raw_advantages"], post["episodes"], post["return"],
            self.score_baseline,
        )
        self._gradient = meta_gradient(
            self.policy, self._theta(), data, self.config.inner_steps, self.config.inner_lr,
            self.config.first_order, self.config.score_term, self.config.score_estimator,
        )
        decay = self.config.score_baseline_decay
        self.score_baseline = post["return"] if self.score_baseline is None else (
            decay * self.score_baseline + (1 - decay) * post["return"]
        )
        return {
            "dimapg/adapted_return": post["return"],
            "dimapg/adaptation_gain": post["return"] - pre["return"],
            "dimapg/own_gradient_norm": float(self._gradient.norm()),
        }

    # -- the peer phase ---------------------------------------------------------------------------
    def _gossip(self, peers: Peers, vector: np.ndarray, kind: str) -> GossipResult:
        config = dataclasses.replace(self.config.gossip, kind=kind)
        result = average(peers, vector, config, network_size=self.n_agents)
        if self.record is not None:
            self.record({
                "event": "gossip", "iteration": peers.iteration, "kind": kind,
                "rounds": result.rounds, "missing": result.missing, "changes": result.changes,
                "disagreement": result.disagreement,
            })
        return result

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Σ_n ∇θ L_n by gossip (eq. 11), re-sync if asked, the outer step, replica check."""
        if self._gradient is None:
            raise RuntimeError("peer_phase before local_update")
        own = self._gradient.numpy().astype(np.float64)
        request = 1.0 if self.resync_requested else 0.0
        result = self._gossip(peers, np.append(own, request), GRADIENT)
        total = torch.from_numpy(self.n_agents * result.estimate[:-1]).float()
        stats: dict[str, float] = {
            "gossip/rounds": float(result.rounds),
            "gossip/missing": float(result.missing),
            "gossip/last_change": result.changes[-1] if result.changes else 0.0,
            "gossip/disagreement": result.disagreement[-1] if result.disagreement else 0.0,
            "train/grad_norm": float(total.norm()),
        }
        resync = result.estimate[-1] > 0.5 / self.n_agents
        if resync:
            self._resync(peers)
        stats["dimapg/resync"] = float(resync)
        if self.config.outer == "reinforce":
            theta = flat_parameters(self.policy.parameters())
            set_flat_parameters(self.policy.parameters(), theta + self.config.outer_lr * total)
        else:
            stats.update(self._trpo_step(total, peers))
        disagreement = self._replica_disagreement(peers)
        self.resync_requested = disagreement > self.config.resync_tolerance
        stats["dimapg/replica_disagreement"] = disagreement
        return stats

    def _trpo_step(self, total: Tensor, peers: Peers) -> dict[str, float]:
        """Trust-region outer step, identical on every replica up to the gossip error.

        Each agent solves s_n = H_n⁻¹ g (H_n: Fisher of π_θ on its own τ^θ_n, g = Σ_n ∇θ L_n);
        s = mean_n s_n by gossip; full step sqrt(2δ / gᵀs)·s; the network-mean KL of the
        fractions 1, ½, … of it by one gossip of a short vector; the first fraction with mean
        KL ≤ accept_ratio·δ is taken (TRPO appendix C, with network means for the agent's own).
        """
        assert self._pre is not None
        config = self.config
        observations = self._pre["observations"]
        fvp = make_categorical_fisher_vector_product(
            self.policy, observations[:: config.fisher_subsample], config.damping
        )
        own_direction = conjugate_gradient(fvp, total, config.cg_iterations)
        direction = torch.from_numpy(
            self._gossip(peers, own_direction.numpy().astype(np.float64), DIRECTION).estimate
        ).float()
        curvature = float(total.dot(direction))
        if not curvature > 0 or not math.isfinite(curvature):
            return {"train/step_fraction": 0.0, "train/kl": 0.0, "train/accepted": 0.0}
        full_step = math.sqrt(2 * config.max_kl / curvature) * direction
        theta_old = flat_parameters(self.policy.parameters())
        with torch.no_grad():
            old_logits = self.policy(observations)
        fractions = [0.5**b for b in range(config.max_backtracks)]
        own_kls = []
        for fraction in fractions:
            set_flat_parameters(self.policy.parameters(), theta_old + fraction * full_step)
            with torch.no_grad():
                own_kls.append(float(self.policy.kl(observations, old_logits)))
        kls = self._gossip(peers, np.array(own_kls), KL).estimate
        accepted = next(
            (b for b, kl in enumerate(kls) if kl <= config.accept_ratio * config.max_kl), None
        )
        fraction = 0.0 if accepted is None else fractions[accepted]
        set_flat_parameters(self.policy.parameters(), theta_old + fraction * full_step)
        return {
            "train/step_fraction": fraction,
            "train/kl": 0.0 if accepted is None else float(kls[accepted]),
            "train/accepted": float(accepted is not None),
            "train/expected_improvement": float(total.dot(fraction * full_step)),
        }

    def _resync(self, peers: Peers) -> None:
        """Every replica becomes the gossip average of the replicas (parameters cross the wire
        to neighbours, only here)."""
        theta = flat_parameters(self.policy.parameters()).numpy().astype(np.float64)
        mean = self._gossip(peers, theta, RESYNC).estimate
        set_flat_parameters(self.policy.parameters(), torch.from_numpy(mean).float())
        logger.info("agent %d: replicas re-synchronised at iteration %d",
                    self.agent_id, peers.iteration)

    def _replica_disagreement(self, peers: Peers) -> float:
        """max_j ‖R θ_i − R θ_j‖ over the neighbours heard (R: :func:`sketch_matrix`), an
        estimate of max_j ‖θ_i − θ_j‖."""
        own = self.sketch @ flat_parameters(self.policy.parameters()).numpy()
        down = peers.down()
        live = [j for j in peers.neighbours if j not in down]
        result = peers.exchange_round(
            SKETCH, {j: {"sketch": own} for j in live}, (peers.new_exchange(SKETCH),),
            deadline=time.monotonic() + self.config.gossip.round_timeout,
        )
        distances = []
        for message in result.messages.values():
            other = message.body.get("sketch")
            if isinstance(other, np.ndarray) and other.shape == own.shape:
                distances.append(float(np.linalg.norm(own - other)))
        return max(distances, default=0.0)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Shared and adapted policy, RNG state, the pending re-sync request."""
        return {
            "algorithm": self.name,
            "agent_id": self.agent_id,
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "adapted": self.adapted.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "resync_requested": self.resync_requested,
            "score_baseline": self.score_baseline,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same algorithm and agent)."""
        self.check_checkpoint_owner(state)
        self.policy.load_state_dict(state["policy"])
        self.adapted.load_state_dict(state["adapted"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.resync_requested = bool(state["resync_requested"])
        self.score_baseline = state.get("score_baseline")
