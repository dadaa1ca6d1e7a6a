"""C-TRPO: one centralized TRPO policy over the joint observation driving all agents.

**Not decentralized**: an upper-bound reference for comparisons (MATRPO section VI-B). It runs as a
single learner process that receives every agent's observation and reward from the world and
answers with the joint action; the team reward Σ_i r^i is its reward. The policy has N categorical
heads on the concatenated observation (π(a|o) = Π_n π(a^n|o)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from p2pmarl.algos.base import Batch
from p2pmarl.algos.itrpo import TRPOConfig, TrustRegionAgent
from p2pmarl.algos.networks import CategoricalPolicy, sample_head
from p2pmarl.envs.base import EnvSpec

if TYPE_CHECKING:
    from p2pmarl.config import RunConfig
    from p2pmarl.topology import Topology


def centralized_spec(spec: EnvSpec) -> EnvSpec:
    """The one-learner view: observation = concatenation of all agents' observations."""
    return EnvSpec(
        name=spec.name,
        n_agents=spec.n_agents,
        observation_sizes=(sum(spec.observation_sizes),),
        action_sizes=spec.action_sizes,
        episode_length=spec.episode_length,
        action_spaces=spec.action_spaces,
    )


class CTRPO(TrustRegionAgent):
    """Centralized TRPO on the joint observation and the team reward (a reference, not P2P)."""

    name = "ctrpo"
    centralized: ClassVar[bool] = True

    def __init__(self, spec: EnvSpec, config: TRPOConfig, seed: int) -> None:
        joint = centralized_spec(spec)
        super().__init__(0, joint, config, seed, heads=spec.action_spaces, acting_head=0)

    @classmethod
    def from_run_config(
        cls, agent_id: int, spec: EnvSpec, topology: Topology, config: RunConfig, seed: int
    ) -> CTRPO:
        """δ = N·(δ/N) of the paper's Table III (the joint policy's trust region), or max_kl."""
        from p2pmarl.algos.matrpo import paper_defaults

        max_kl = config.max_kl or paper_defaults(spec.n_agents)[0] * spec.n_agents
        settings = TRPOConfig(
            max_kl=max_kl,
            fisher_subsample=config.fisher_subsample,
            advantage_normalization=config.advantage_normalization,
            episode_end=config.episode_end,
        )
        return cls(spec, settings, seed)

    @property
    def draws_row_by_row(self) -> bool:
        """False: one generator call per head per :meth:`act`."""
        return False

    def act(self, observations: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Joint action (K, W): one draw from every head (W = N for Discrete heads)."""
        heads = range(self.policy.n_heads)
        if isinstance(self.policy, CategoricalPolicy):
            return np.stack(
                [sample_head(self.policy, observations, h, self.rng, deterministic) for h in heads],
                axis=1,
            )
        draws = [
            sample_head(self.policy, observations, h, self.rng, deterministic).reshape(
                len(observations), -1
            )
            for h in heads
        ]
        if any(draw.dtype.kind == "f" for draw in draws):
            draws = [draw.astype(np.float32) for draw in draws]
        return np.concatenate(draws, axis=1)

    def local_update(self, batch: Batch) -> dict[str, float]:
        """GAE on the team reward, TRPO step on the joint surrogate E[exp(Σ_n ℓ_n)·A]."""
        data = self.prepare(batch)
        stats, _ = self.policy_step(
            data.observations, data.joint_actions, data.advantages, joint=True
        )
        return {
            **stats.as_metrics(),
            "train/value_loss": self.fit_value(data),
            "train/advantage_std": data.raw_advantage_std,
        }
