"""HATRPO and HAPPO (Kuba et al.) as peer-to-peer variants: agents update one after another in a
random order, handing on a token of compounded log ratios.

Every agent has its own policy π^i(a^i|o^i) (one head, its own action), its own critic V^i(o^i) on
its own reward, its own GAE and normalization: nothing is pooled. Per training iteration:

1. own GAE and value fit (:meth:`SequentialAgent.local_update`, shared with I-TRPO);
2. the token phase (:class:`~p2pmarl.algos.token.TokenRelay`): all agents derive the same order
   i_1..i_N; agent i_m receives from i_{m−1} the running sum S = Σ_{l<m} [log π_new^{i_l}(a^{i_l}|
   o^{i_l}) − log π_old^{i_l}(a^{i_l}|o^{i_l})] (one float32 per sample), weights its advantage by
   the factor exp(S) — the slides' M^{i_1:m}(s, a) = π_new^{i_1:m−1}/π_old^{i_1:m−1} · Â^{i_m} —
   updates, and sends S + its own log ratio on;
3. ``hatrpo``: maximize E[M^{i_1:m}·ratio] s.t. mean KL(π_old‖π) ≤ δ, one trust-region step of
   :func:`~p2pmarl.algos.trpo.trpo_step` (CG, Fisher-vector products, backtracking);
   ``happo``: PPO epochs on E[min(ratio·M, clip(ratio, 1 ± ε)·M)] with minibatches and Adam.

Â^{i_m} is agent i_m's own advantage: HAPPO's theory assumes one team reward, so the sound
setting is ``spread-shared`` (every agent's reward holds the shared coverage term) or
``treasure``'s bank rewards; on ``spread`` only agent 0 sees the coverage term, and the factor
then carries the other agents' policy change into updates whose advantage has nothing to say about
it (see docs/algorithm.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from p2pmarl.algos.adam import Adam
from p2pmarl.algos.base import Batch, Peers
from p2pmarl.algos.itrpo import TRPOConfig, TrustRegionAgent
from p2pmarl.algos.token import TOKEN, TOKEN_ACK, TokenConfig, TokenRelay, ring_sequence
from p2pmarl.algos.trpo import OnPolicyData
from p2pmarl.envs.base import EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology

HATRPO_MAX_KL = 0.005
"""HARL's tuned ``kl_threshold`` for MPE simple_spread (discrete), HATRPO's default δ."""


@dataclass(frozen=True)
class PPOConfig:
    """HAPPO's PPO step; defaults from HARL's tuned MPE simple_spread (discrete) configuration."""

    clip: float = 0.2
    """ε of clip(ratio, 1 − ε, 1 + ε); HARL ``clip_param`` 0.2; 0.1-0.3."""
    epochs: int = 5
    """Passes over the batch per update; HARL ``ppo_epoch`` 5; 1-15."""
    minibatches: int = 1
    """Minibatches per pass; HARL ``actor_num_mini_batch`` 1; 1-32."""
    lr: float = 5e-4
    """Adam learning rate of the policy; HARL ``lr`` 5e-4; 1e-4-1e-3."""
    adam_eps: float = 1e-5
    """Adam ε; HARL ``opti_eps`` 1e-5."""
    entropy_coef: float = 0.01
    """Weight of the mean entropy bonus; HARL ``entropy_coef`` 0.01; 0-0.05."""
    max_grad_norm: float = 10.0
    """Gradient norm clip per Adam step; HARL ``max_grad_norm`` 10."""

    def __post_init__(self) -> None:
        checks = {
            "clip": 0.0 < self.clip < 1.0,
            "epochs": self.epochs >= 1,
            "minibatches": self.minibatches >= 1,
            "lr": self.lr > 0.0,
            "adam_eps": self.adam_eps > 0.0,
            "entropy_coef": self.entropy_coef >= 0.0,
            "max_grad_norm": self.max_grad_norm > 0.0,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(
                    f"PPOConfig.{name}={getattr(self, name)!r} is out of range; see the field "
                    f"docstring in p2pmarl/algos/happo.py for sensible values"
                )


@dataclass(frozen=True)
class SequentialConfig:
    """Settings of a HATRPO or HAPPO agent; all agents of a run must use the same ``token``."""

    trpo: TRPOConfig = field(default_factory=lambda: TRPOConfig(max_kl=HATRPO_MAX_KL))
    """GAE, value fit and network settings (both), trust region δ = ``max_kl`` (HATRPO)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The PPO step (HAPPO)."""
    token: TokenConfig = field(default_factory=TokenConfig)
    """Order mode, hand-over timeout and shared seed of the token phase."""


def hand_on_factor(log_ratio_sum: np.ndarray) -> Tensor:
    """exp(S): the product over earlier agents of π_new/π_old at each sample's own actions."""
    return torch.from_numpy(np.exp(np.asarray(log_ratio_sum, dtype=np.float64)).astype(np.float32))


def clipped_surrogate_loss(
    log_prob: Tensor, old_log_prob: Tensor, weighted_advantage: Tensor, clip: float
) -> Tensor:
    """−E[min(ratio·M, clip(ratio, 1 − ε, 1 + ε)·M)], the slides' HAPPO objective, negated.

    ``weighted_advantage`` is M^{i_1:m} = exp(S)·Â^{i_m}, ratio = π_θ(a^i|o^i)/π_old(a^i|o^i).
    """
    ratio = torch.exp(log_prob - old_log_prob.detach())
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return -torch.min(ratio * weighted_advantage, clipped * weighted_advantage).mean()


class SequentialAgent(TrustRegionAgent):
    """What HATRPO and HAPPO share: own-head policy, own GAE and value fit, the token phase."""

    message_kinds: ClassVar[frozenset[str]] = frozenset({TOKEN, TOKEN_ACK})
    needs_connected_graph = True

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        edges: list[tuple[int, int]],
        config: SequentialConfig,
        seed: int,
    ) -> None:
        space = spec.action_spaces[agent_id]
        if space.kind != "discrete" or len(space.nvec) != 1:
            raise ValueError(
                f"{self.name} supports one Discrete action per agent; agent {agent_id} of "
                f"{spec.name!r} has {space} (use itrpo or matrpo for Box/MultiDiscrete actions)"
            )
        super().__init__(agent_id, spec, config.trpo, seed, heads=(space,), acting_head=0)
        self.settings = config
        self.relay = TokenRelay(agent_id, spec.n_agents, edges, config.token)
        self._data: OnPolicyData | None = None
        self._update_stats: dict[str, float] = {}

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> SequentialAgent:
        """HARL's MPE defaults, overridden by the run's max_kl, ppo_* and token settings."""
        settings = SequentialConfig(
            trpo=TRPOConfig(
                max_kl=config.max_kl or HATRPO_MAX_KL,
                fisher_subsample=config.fisher_subsample,
                advantage_normalization=config.advantage_normalization,
                episode_end=config.episode_end,
            ),
            ppo=PPOConfig(clip=config.ppo_clip, epochs=config.ppo_epochs,
                          minibatches=config.ppo_minibatches, lr=config.ppo_lr),
            token=TokenConfig(order=config.happo_order, hand_over_timeout=config.token_timeout,
                              seed=config.seed),
        )
        return cls(agent_id, spec, list(topology.edges), settings, seed)

    @classmethod
    def check_run(cls, topology: Topology, config: RunConfig) -> None:
        """``--happo-order ring`` needs a ring or path topology."""
        from p2pmarl.config import ConfigError

        if config.happo_order == "ring":
            try:
                ring_sequence(topology.n_agents, topology.edges)
            except ValueError as error:
                raise ConfigError(f"topology {config.topology}: {error}") from error

    @property
    def own_actions(self) -> Tensor:
        """a^i of every sample, int64 (M, 1)."""
        assert self._data is not None
        columns = self.spec.action_columns(self.agent_id)
        return self._data.joint_actions[:, columns.start : columns.stop]

    def local_update(self, batch: Batch) -> dict[str, float]:
        """Own GAE (eqs. 18-19) normalized with own statistics, and the value fit."""
        self._data = self.prepare(batch)
        value_loss = self.fit_value(self._data)
        return {
            "train/value_loss": value_loss,
            "train/advantage_std": self._data.raw_advantage_std,
        }

    def peer_phase(self, batch: Batch, peers: Peers) -> dict[str, float]:
        """Wait for the token, update with its factor, hand S + own log ratio on."""
        if self._data is None:
            raise RuntimeError("peer_phase called before local_update")
        stats = self.relay.run(peers, batch.fingerprint(), batch.n_samples, self.update_in_order)
        stats.update(self._update_stats)
        self._data = None
        return stats

    def update_in_order(self, log_ratio_sum: np.ndarray) -> np.ndarray:
        """This agent's turn in the order: the policy step with M = exp(S)·Â; returns its own
        log ratio log π_new(a^i|o^i) − log π_old(a^i|o^i), float32 (M,)."""
        data = self._data
        assert data is not None
        observations, actions = data.observations, self.own_actions
        with torch.no_grad():
            old_logits = self.policy(observations)
            old_log_prob = self.policy.log_prob_from_logits(old_logits, actions)[0]
        weighted = hand_on_factor(log_ratio_sum) * data.advantages
        self._update_stats = {
            **self.policy_update(observations, actions, weighted, old_logits, old_log_prob),
            "train/entropy": self.acting_entropy(old_logits),
        }
        with torch.no_grad():
            log_ratio = self.policy.log_prob(observations, actions)[0] - old_log_prob
            self._update_stats["train/kl"] = float(self.policy.kl(observations, old_logits))
        return log_ratio.numpy().astype(np.float32)

    def policy_update(
        self, observations: Tensor, actions: Tensor, weighted_advantage: Tensor,
        old_logits: Tensor, old_log_prob: Tensor,
    ) -> dict[str, float]:
        """The variant's policy step on M^{i_1:m} = ``weighted_advantage``; returns metrics."""
        raise NotImplementedError


class HATRPO(SequentialAgent):
    """Heterogeneous-agent TRPO: a trust-region step on E[M^{i_1:m}·ratio], KL ≤ δ."""

    name = "hatrpo"

    def policy_update(
        self, observations: Tensor, actions: Tensor, weighted_advantage: Tensor,
        old_logits: Tensor, old_log_prob: Tensor,
    ) -> dict[str, float]:
        """``policy_step`` of I-TRPO with the factor-weighted advantage: its surrogate
        mean(exp(log_ratio)·A) is then the HATRPO objective E[ratio·M^{i_1:m}]."""
        stats, _ = self.policy_step(observations, actions, weighted_advantage)
        return stats.as_metrics()


class HAPPO(SequentialAgent):
    """Heterogeneous-agent PPO: Adam epochs on the clipped objective with M^{i_1:m}."""

    name = "happo"

    def __init__(
        self,
        agent_id: int,
        spec: EnvSpec,
        edges: list[tuple[int, int]],
        config: SequentialConfig,
        seed: int,
    ) -> None:
        super().__init__(agent_id, spec, edges, config, seed)
        self.policy_optimizer = Adam(
            self.policy.parameters(), lr=config.ppo.lr, eps=config.ppo.adam_eps
        )

    def policy_update(
        self, observations: Tensor, actions: Tensor, weighted_advantage: Tensor,
        old_logits: Tensor, old_log_prob: Tensor,
    ) -> dict[str, float]:
        """``epochs`` passes of ``minibatches`` Adam steps on :func:`clipped_surrogate_loss`
        minus ``entropy_coef``·entropy, gradient norm clipped (HARL's actor update)."""
        ppo = self.settings.ppo
        n_samples = observations.shape[0]
        size = -(-n_samples // ppo.minibatches)
        clipped_fraction, steps = 0.0, 0
        for _ in range(ppo.epochs):
            order = torch.from_numpy(self.rng.permutation(n_samples))
            for start in range(0, n_samples, size):
                index = order[start : start + size]
                logits = self.policy(observations[index])
                log_prob = self.policy.log_prob_from_logits(logits, actions[index])[0]
                loss = clipped_surrogate_loss(
                    log_prob, old_log_prob[index], weighted_advantage[index], ppo.clip
                )
                entropy = self.policy.entropy_from_logits(logits)[0].mean()
                self.policy_optimizer.zero_grad()
                (loss - ppo.entropy_coef * entropy).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), ppo.max_grad_norm)
                self.policy_optimizer.step()
                with torch.no_grad():
                    ratio = torch.exp(log_prob - old_log_prob[index])
                    clipped_fraction += float(((ratio - 1.0).abs() > ppo.clip).float().mean())
                steps += 1
        return {
            "train/clip_fraction": clipped_fraction / steps,
            "train/policy_loss": float(loss.detach()),
        }

    def state_dict(self) -> dict[str, Any]:
        """Also the policy's Adam state."""
        return {**super().state_dict(), "policy_optimizer": self.policy_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
