"""The contract between the world process and one environment copy.

The world holds K copies of a :class:`MultiAgentEnv` and steps them in lock-step. Agent ids are
0..N-1 in the environment's own agent order; rewards are the per-agent rewards of the variant
(the paper's Table I/II definitions for ``spread`` and ``treasure``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment that agents need before the first step."""

    name: str
    """Registered environment name (``spread``, ``treasure``, ...)."""
    n_agents: int
    """Number of agents N; must equal the topology's node count."""
    observation_sizes: tuple[int, ...]
    """Length of agent i's flat observation vector, per agent (sizes may differ)."""
    action_sizes: tuple[int, ...]
    """Number of discrete actions of agent i, per agent."""
    episode_length: int
    """Steps after which an episode is truncated (the paper uses 100)."""


class MultiAgentEnv(ABC):
    """One copy of a parallel multi-agent environment with integer agent ids."""

    spec: EnvSpec

    @abstractmethod
    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        """Start a new episode; returns one float32 observation per agent."""

    @abstractmethod
    def step(self, actions: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, bool]:
        """Apply one action per agent.

        Returns the next observations (one per agent), the float32 reward vector of shape (N,)
        and whether the episode ended (terminated or truncated) with this step.
        """

    def close(self) -> None:
        """Release renderer resources; the default has none."""
