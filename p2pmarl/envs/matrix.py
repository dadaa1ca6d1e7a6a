"""Iterated two-player matrix games of Meta-MAPG (Kim et al.): prisoner's dilemma and
rock-paper-scissors, on the PettingZoo Parallel API and as :class:`MultiAgentEnv`.

Registered names ``ipd`` (Table 1, horizon H = 150, Table 3) and ``rps`` (Table 2, H = 50,
Table 4). Exactly two agents. State s_0 = 0 and s_t = a_{t−1} (the last joint action): state
index ``1 + a^0·A + a^1``, so IPD has 1 + 2² = 5 states and RPS 1 + 3² = 10. Both agents observe
the same state, one-hot (float32). Rewards are the payoff-table entries of the joint action; an
episode is truncated after H steps. The payoff tables are public game rules: a learner may
compute its peer's reward from the joint action it observes (Meta-MAPG's peer-learning term).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from p2pmarl.envs.base import EnvSpec, MultiAgentEnv

N_AGENTS = 2
MIN_AGENTS = 2
N_AGENTS_RULE = "matrix games (ipd, rps) need exactly N = 2 agents"

IPD_PAYOFF = np.array(
    [
        [[0.5, 0.5], [-1.5, 1.5]],
        [[1.5, -1.5], [-0.5, -0.5]],
    ],
    dtype=np.float32,
)
"""Meta-MAPG Table 1: ``IPD_PAYOFF[a^0, a^1] = (r^0, r^1)``; 0 = (C)ooperate, 1 = (D)efect."""
RPS_PAYOFF = np.array(
    [
        [[0.0, 0.0], [-1.0, 1.0], [1.0, -1.0]],
        [[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]],
        [[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]],
    ],
    dtype=np.float32,
)
"""Meta-MAPG Table 2: ``RPS_PAYOFF[a^0, a^1]``; actions 0 = (R)ock, 1 = (P)aper, 2 = (S)cissors."""

PAYOFFS = {"ipd": IPD_PAYOFF, "rps": RPS_PAYOFF}
HORIZONS = {"ipd": 150, "rps": 50}
"""Episode horizon H of Tables 3 (IPD) and 4 (RPS)."""
ACTION_NAMES = {"ipd": ("C", "D"), "rps": ("R", "P", "S")}


def payoff(game: str) -> np.ndarray:
    """Payoff table of ``game`` (``ipd`` or ``rps``), float32 (A, A, 2)."""
    if game not in PAYOFFS:
        raise ValueError(f"unknown matrix game {game!r}; valid: {', '.join(sorted(PAYOFFS))}")
    return PAYOFFS[game]


def n_states(game: str) -> int:
    """1 + A²: the initial state and one state per joint action."""
    actions = payoff(game).shape[0]
    return 1 + actions * actions


def state_index(actions: Sequence[int] | np.ndarray, n_actions: int) -> np.ndarray | int:
    """s_{t+1} = 1 + a^0·A + a^1 for the joint action a_t (works on arrays (..., 2))."""
    joint = np.asarray(actions)
    index = 1 + joint[..., 0] * n_actions + joint[..., 1]
    return int(index) if index.ndim == 0 else index


def one_hot(index: int, size: int) -> np.ndarray:
    vector = np.zeros(size, dtype=np.float32)
    vector[index] = 1.0
    return vector


class MatrixGameParallelEnv(ParallelEnv):
    """PettingZoo Parallel env of an iterated matrix game (agents ``player_0``, ``player_1``)."""

    metadata: ClassVar[dict[str, Any]] = {"name": "matrix_game_v0", "render_modes": []}

    def __init__(self, game: str = "ipd", horizon: int | None = None) -> None:
        self.game = game
        self.table = payoff(game)
        self.n_actions = self.table.shape[0]
        self.n_states = n_states(game)
        self.horizon = HORIZONS[game] if horizon is None else int(horizon)
        if self.horizon < 1:
            raise ValueError(f"{game}: horizon must be ≥ 1, got {self.horizon}")
        self.possible_agents = [f"player_{i}" for i in range(N_AGENTS)]
        self.agents: list[str] = []
        self.state_id = 0
        self.t = 0

    @functools.cache  # noqa: B019 - PettingZoo's documented pattern
    def observation_space(self, agent: str) -> spaces.Space:
        return spaces.Box(0.0, 1.0, shape=(self.n_states,), dtype=np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent: str) -> spaces.Space:
        return spaces.Discrete(self.n_actions)

    def _observations(self) -> dict[str, np.ndarray]:
        return {a: one_hot(self.state_id, self.n_states) for a in self.agents}

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        self.agents = list(self.possible_agents)
        self.state_id = 0
        self.t = 0
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        joint = [int(actions[a]) for a in self.possible_agents]
        for agent, action in zip(self.possible_agents, joint, strict=True):
            if not 0 <= action < self.n_actions:
                raise ValueError(
                    f"{self.game}: action {action} of {agent} is outside 0..{self.n_actions - 1}"
                )
        reward = self.table[joint[0], joint[1]]
        self.state_id = state_index(joint, self.n_actions)
        self.t += 1
        truncated = self.t >= self.horizon
        observations = self._observations()
        rewards = {a: float(reward[i]) for i, a in enumerate(self.possible_agents)}
        terminations = {a: False for a in self.agents}
        truncations = {a: truncated for a in self.agents}
        infos: dict[str, dict] = {a: {} for a in self.agents}
        if truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def close(self) -> None:
        pass


class MatrixGame(MultiAgentEnv):
    """The project's wrapper: integer agent ids 0, 1 in PettingZoo's agent order."""

    def __init__(self, game: str, n_agents: int, episode_length: int) -> None:
        if n_agents != N_AGENTS:
            raise ValueError(f"{game}: n_agents={n_agents} is not allowed; {N_AGENTS_RULE}")
        self.env = MatrixGameParallelEnv(game, episode_length)
        self.spec = matrix_spec(game, n_agents, episode_length)

    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        observations, _ = self.env.reset(seed=seed)
        return [observations[a] for a in self.env.possible_agents]

    def step(self, actions: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, bool]:
        names = self.env.possible_agents
        observations, rewards, _, truncations, _ = self.env.step(
            dict(zip(names, actions, strict=True))
        )
        reward = np.array([rewards[a] for a in names], dtype=np.float32)
        return [observations[a] for a in names], reward, bool(truncations[names[0]])


def matrix_spec(game: str, n_agents: int, episode_length: int) -> EnvSpec:
    if n_agents != N_AGENTS:
        raise ValueError(f"{game}: n_agents={n_agents} is not allowed; {N_AGENTS_RULE}")
    actions = payoff(game).shape[0]
    return EnvSpec(game, N_AGENTS, (n_states(game),) * N_AGENTS, (actions,) * N_AGENTS,
                   episode_length)


def make_ipd(n_agents: int, episode_length: int) -> MatrixGame:
    return MatrixGame("ipd", n_agents, episode_length)


def make_rps(n_agents: int, episode_length: int) -> MatrixGame:
    return MatrixGame("rps", n_agents, episode_length)
