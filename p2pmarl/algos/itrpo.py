"""I-TRPO: every agent runs TRPO on its own observation and reward and sends nothing.

The MATRPO paper's independent baseline. :class:`TrustRegionAgent` holds what every
trust-region agent shares (policy with one or N heads, value net, GAE, value fit, checkpoints);
:class:`ITRPO` adds only its local policy step on its own action column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import AgentAlgorithm, Batch
from p2pmarl.algos.networks import ValueNet, draws_once_per_call, make_policy, sample_head
from p2pmarl.algos.trpo import (
    ADVANTAGE_NORMALIZATIONS,
    OnPolicyData,
    TRPOStats,
    fit_value,
    make_categorical_fisher_vector_product,
    prepare_on_policy_data,
    surrogate_loss,
    trpo_step,
)
from p2pmarl.envs.base import ActionSpace, EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology


@dataclass(frozen=True)
class TRPOConfig:
    """Settings of the trust-region policy step, GAE and the value fit (MATRPO Table III)."""

    gamma: float = 0.995
    """Discount γ of eq. (19); in (0, 1], 0.95-0.999 for 100-step MPE episodes."""
    lam: float = 0.95
    """GAE λ of eq. (18); in [0, 1], 0.9-0.99 trades bias (low) for variance (high)."""
    max_kl: float = 0.01
    """Trust-region radius δ on the mean KL(π_old‖π); 0.001-0.05 is typical."""
    damping: float = 0.01
    """Added to the Fisher-vector product, (H + damping·I)v; 1e-3-0.1."""
    cg_iterations: int = 10
    """Conjugate-gradient iterations per solve; 10-20 is enough for H⁻¹g."""
    max_backtracks: int = 10
    """Line-search halvings before the step is rejected; 5-15."""
    accept_ratio: float = 1.5
    """The line search accepts KL ≤ accept_ratio·max_kl; ≥ 1, usually 1.5."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layer widths of the policy and value networks (SELU); the paper uses two of 128."""
    value_lr: float = 1e-3
    """Adam learning rate of the value fit; 1e-4-3e-3."""
    value_epochs: int = 5
    """Passes over the batch per value fit; 1-10."""
    value_minibatch: int = 256
    """Samples per value-fit minibatch; 64-1024."""
    advantage_normalization: str = "center"
    """``center`` (default): subtract the agent's own batch mean, which keeps the reward scales
    of different agents comparable in MATRPO's consensus (agent 0 of spread is the only one
    rewarded for landmarks) without sharing any statistic; ``own``: also divide by the own
    standard deviation (BRIEF), which reweights the agents' terms of MATRPO's team objective;
    ``none``: raw advantages. A TRPO step is invariant to the scale of A, so for I-TRPO and
    C-TRPO ``own`` and ``center`` give the same step; see :func:`~p2pmarl.algos.trpo.normalize`
    for why the offset matters."""
    episode_end: str = "timeout"
    """``timeout``: an episode end is a time limit, GAE bootstraps there with V (Pardo et al.,
    2018; MPE episodes end only by their horizon); ``terminal``: nothing after the last step."""
    fisher_subsample: int = 5
    """Fisher-vector products use every k-th sample (1 = all; 5 as in OpenAI baselines' TRPO):
    CG dominates the cost and memory of a step, and the Fisher is a smooth average."""

    def __post_init__(self) -> None:
        checks = {
            "gamma": 0.0 < self.gamma <= 1.0,
            "lam": 0.0 <= self.lam <= 1.0,
            "max_kl": self.max_kl > 0.0,
            "damping": self.damping >= 0.0,
            "cg_iterations": self.cg_iterations >= 1,
            "max_backtracks": self.max_backtracks >= 1,
            "accept_ratio": self.accept_ratio >= 1.0,
            "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "value_lr": self.value_lr > 0.0,
            "value_epochs": self.value_epochs >= 0,
            "value_minibatch": self.value_minibatch >= 1,
            "fisher_subsample": self.fisher_subsample >= 1,
            "advantage_normalization": self.advantage_normalization in ADVANTAGE_NORMALIZATIONS,
            "episode_end": self.episode_end in ("timeout", "terminal"),
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(
                    f"TRPOConfig.{name}={getattr(self, name)!r} is out of range; see the field "
                    f"docstring in p2pmarl/algos/itrpo.py for sensible values"
                )


class TrustRegionAgent(AgentAlgorithm):
    """Shared state of the TRPO-family agents: networks, optimizer, RNG, GAE and value fit.

    The policy maps the agent's own observation o^i to one head per entry of ``heads`` (categorical
    for Discrete/MultiDiscrete, diagonal Gaussian for Box: :func:`make_policy`) and the agent acts
    with head ``acting_head`` (I-TRPO: one head, its own; MATRPO: N heads, acting
    with head i). Subclasses implement :meth:`local_update` (and :meth:`peer_phase`).
    """

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        config: TRPOConfig,
        seed: int,
        heads: Sequence[ActionSpace],
        acting_head: int,
    ) -> None:
        if not 0 <= agent_id < spec.n_agents:
            raise ValueError(
                f"agent_id {agent_id} is not an agent of {spec.name!r}, which has ids "
                f"0..{spec.n_agents - 1}"
            )
        self.agent_id = agent_id
        self.spec = spec
        self.config = config
        self.acting_head = acting_head
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        observation_size = spec.observation_sizes[agent_id]
        self.policy = make_policy(observation_size, heads, config.hidden)
        self.value_net = ValueNet(observation_size, config.hidden)
        self.value_optimizer = Adam(self.value_net.parameters(), lr=config.value_lr)

    @property
    def draws_row_by_row(self) -> bool:
        """One generator call per :meth:`act` unless the acting head is MultiDiscrete."""
        return draws_once_per_call(self.policy, self.acting_head)

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Own actions a^i ~ π^i(·|o^i) from the acting head: (K,) for a one-number action
        (int64 for Discrete), else (K, width) (Box: float32, unclipped)."""
        return sample_head(self.policy, observations, self.acting_head, self.rng, deterministic)

    def prepare(self, batch: Batch) -> OnPolicyData:
        """Own GAE (eqs. (18)-(19)) with the value net before this iteration's fit."""
        if batch.agent_id != self.agent_id:
            raise ValueError(
                f"agent {self.agent_id} was given the batch of agent {batch.agent_id}; each "
                f"agent learns only from its own observations and rewards"
            )
        return prepare_on_policy_data(
            batch, self.value_net, self.config.gamma, self.config.lam,
            normalization=self.config.advantage_normalization,
            bootstrap_timeouts=self.config.episode_end == "timeout",
        )

    def fit_value(self, data: OnPolicyData) -> float:
        """Fit V^i to own λ-returns (Adam, minibatches); returns the final MSE."""
        return fit_value(
            self.value_net,
            self.value_optimizer,
            data.observations,
            data.returns,
            self.config.value_epochs,
            self.config.value_minibatch,
            self.rng,
        )

    def policy_step(
        self, observations: Tensor, actions: Tensor, advantages: Tensor, joint: bool = False
    ) -> tuple[TRPOStats, Tensor]:
        """One TRPO step on the surrogate Σ_heads mean(exp(log_ratio)·A) (TRPO eq. (14)), or with
        ``joint`` on mean(exp(Σ_heads log_ratio)·A), the ratio of the product policy (C-TRPO).

        ``actions`` is (M, Σ head widths) (int64 (M, n_heads) for Discrete heads). Returns the
        step's statistics and the distribution parameters (logits) at θ_old.
        """
        with torch.no_grad():
            old_logits = self.policy(observations)
            old_log_prob = self.policy.log_prob_from_logits(old_logits, actions)
        if joint:
            old_log_prob = old_log_prob.sum(dim=0)

        def loss_fn() -> Tensor:
            log_prob = self.policy.log_prob(observations, actions)
            return surrogate_loss(log_prob.sum(dim=0) if joint else log_prob, old_log_prob,
                                  advantages)

        def kl_fn() -> Tensor:
            return self.policy.kl(observations, old_logits)

        stats = trpo_step(
            list(self.policy.parameters()),
            loss_fn,
            kl_fn,
            max_kl=self.config.max_kl,
            damping=self.config.damping,
            cg_iterations=self.config.cg_iterations,
            max_backtracks=self.config.max_backtracks,
            accept_ratio=self.config.accept_ratio,
            fvp=make_categorical_fisher_vector_product(
                self.policy, observations[:: self.config.fisher_subsample], self.config.damping
            ),
        )
        return stats, old_logits

    def acting_entropy(self, logits: Tensor) -> float:
        """Mean entropy of the acting head for the given logits."""
        with torch.no_grad():
            return float(self.policy.entropy_from_logits(logits)[self.acting_head].mean())

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer, torch and numpy RNG states and the config (torch.save-able)."""
        return {
            "algorithm": self.name,
            "agent_id": self.agent_id,
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "value_net": self.value_net.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same algorithm and agent)."""
        self.check_checkpoint_owner(state)
        self.policy.load_state_dict(state["policy"])
        self.value_net.load_state_dict(state["value_net"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]


class ITRPO(TrustRegionAgent):
    """Independent TRPO: own observation, own reward, own action, no peer messages."""

    name = "itrpo"

    def __init__(self, agent_id: int, spec: EnvSpec, config: TRPOConfig, seed: int) -> None:
        super().__init__(
            agent_id,
            spec,
            config,
            seed,
            heads=(spec.action_spaces[agent_id],),
            acting_head=0,
        )

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> ITRPO:
        """I-TRPO with the defaults of :class:`TRPOConfig` and the run's ``max_kl`` if set."""
        trpo = TRPOConfig(
            fisher_subsample=config.fisher_subsample,
            advantage_normalization=config.advantage_normalization,
            episode_end=config.episode_end,
        )
        if config.max_kl is not None:
            trpo = dataclasses.replace(trpo, max_kl=config.max_kl)
        return cls(agent_id, spec, trpo, seed)

    def local_update(self, batch: Batch) -> dict[str, float]:
        """GAE with own reward, own-statistics normalization, TRPO step on a^i, value fit."""
        data = self.prepare(batch)
        own_actions = data.joint_actions[:, self.spec.action_columns(self.agent_id)]
        stats, old_logits = self.policy_step(data.observations, own_actions, data.advantages)
        value_loss = self.fit_value(data)
        return {
            **stats.as_metrics(),
            "train/value_loss": value_loss,
            "train/entropy": self.acting_entropy(old_logits),
            "train/advantage_std": data.raw_advantage_std,
        }
